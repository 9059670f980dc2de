"""Bad input, proven: each malformed input stops the trainer with one clear message, exit code 2,
and nothing written (no log, no artifact) or overwritten."""
import shutil

import numpy as np
import pytest

import train_gpt as tg


def fails_with(capsys, message, code=2):
    status = tg.main()
    err = capsys.readouterr().err
    assert status == code and err.startswith("train_gpt.py: ") and message in err, err


def outputs(root):
    return sorted(p.name for p in root.rglob("*") if p.suffix in (".txt", ".ptz", ".pt"))


def write_shard(path, tokens, magic=20240520, version=1, declared=None):
    header = np.zeros(256, "<i4")
    header[:3] = magic, version, len(tokens) if declared is None else declared
    path.write_bytes(header.tobytes() + np.asarray(tokens, "<u2").tobytes())


VAL = "fineweb_val_000000.bin"
TRAIN = "fineweb_train_000000.bin"


@pytest.mark.parametrize("damage, message", [
    (lambda d: shutil.rmtree(d), "no fineweb_val_*.bin shards in DATA_PATH="),
    (lambda d: (d / TRAIN).unlink(), "no fineweb_train_*.bin shards in DATA_PATH="),
    (lambda d: (d / VAL).write_bytes(b""), f"{VAL}: 0 bytes, shorter than the 1024-byte header"),
    (lambda d: write_shard(d / VAL, []), f"{VAL}: the header declares 0 tokens: an empty shard"),
    (lambda d: (d / VAL).write_bytes((d / VAL).read_bytes()[:-100]), "truncated or corrupted, re-download or rebuild it"),
    (lambda d: write_shard(d / VAL, [1, 5, 6], magic=12345), f"{VAL}: magic 12345 is not 20240520"),
    (lambda d: write_shard(d / VAL, [1, 5, 6], version=2), f"{VAL}: shard version 2 is not supported"),
    (lambda d: write_shard(d / VAL, [1] + [7] * 99), "validation split has 100 tokens, fewer than one eval window of 129"),
    (lambda d: write_shard(d / VAL, [1] + [2000] * 500), f"{VAL}: token id 2000 >= VOCAB_SIZE=1024"),
    (lambda d: write_shard(d / TRAIN, [1] + [1500] * 500), f"{TRAIN}: token id 1500 >= VOCAB_SIZE=1024"),
    (lambda d: write_shard(d / "fineweb_train_000001.bin", [1, 2], declared=7), "header declares 7 tokens"),
])
def test_malformed_data_is_refused_before_anything_is_written(workspace, capsys, damage, message):
    damage(workspace / "data")
    fails_with(capsys, message)
    assert outputs(workspace) == [] and not (workspace / "logs").exists()


def test_missing_data_message_names_the_commands_that_fetch_it(workspace, capsys, monkeypatch):
    monkeypatch.setenv("DATA_PATH", str(workspace / "nowhere"))
    fails_with(capsys, "python3 data/cached_challenge_fineweb.py --variant sp1024 --train-shards 10")


@pytest.mark.parametrize("setting, value, message", [
    ("VOCAB_SIZE", "512", "VOCAB_SIZE=512 but the tokenizer"),
    ("TOKENIZER_PATH", "missing.model", "TOKENIZER_PATH=missing.model does not exist"),
    ("NUM_HEADS", "5", "MODEL_DIM=64 is not divisible by NUM_HEADS=5"),
    ("ATTN_BACKEND", "fa3", "ATTN_BACKEND=fa3 is not available on this machine (cpu)"),
    ("RESUME_FROM", "checkpoints/none.pt", "RESUME_FROM=checkpoints/none.pt does not exist"),
])
def test_bad_settings_are_refused(workspace, capsys, monkeypatch, setting, value, message):
    monkeypatch.setenv(setting, value)
    fails_with(capsys, message)
    assert outputs(workspace) == []


def test_a_file_that_is_not_a_tokenizer_is_refused(workspace, capsys):
    (workspace / "tok.model").write_bytes(b"not a model")
    fails_with(capsys, "is not a SentencePiece model")


def test_unwritable_log_folder_is_refused(workspace, capsys):
    (workspace / "logs").write_text("a file where the log folder should be")
    fails_with(capsys, "cannot write the log or artifact")
    assert (workspace / "logs").read_text() == "a file where the log folder should be"


def test_existing_log_and_artifact_are_never_overwritten(workspace, capsys, monkeypatch):
    (workspace / "logs").mkdir()
    (workspace / "logs" / "bad.txt").write_text("an earlier run")
    fails_with(capsys, "log logs/bad.txt already exists: choose another RUN_ID")
    assert (workspace / "logs" / "bad.txt").read_text() == "an earlier run"
    (workspace / "model.ptz").write_bytes(b"precious")
    monkeypatch.setenv("RUN_ID", "fresh")
    monkeypatch.setenv("ARTIFACT_PATH", "model.ptz")
    fails_with(capsys, "ARTIFACT_PATH=model.ptz already exists: refusing to overwrite it")
    assert (workspace / "model.ptz").read_bytes() == b"precious" and not (workspace / "logs" / "fresh.txt").exists()


def test_eval_only_with_a_damaged_artifact_names_the_file(workspace, capsys, monkeypatch):
    (workspace / "model.ptz").write_bytes(tg.ARTIFACT_MAGIC + b"\x01\x00garbage")
    monkeypatch.setenv("EVAL_ONLY", "1")
    monkeypatch.setenv("ARTIFACT_PATH", "model.ptz")
    fails_with(capsys, "model.ptz: truncated or corrupted")
    assert outputs(workspace) == ["model.ptz"]


def test_over_the_size_cap_is_an_error_line_and_a_nonzero_exit(workspace, capsys, monkeypatch):
    monkeypatch.setattr(tg, "SIZE_CAP_BYTES", 50_000)
    assert tg.main() == 3
    out = capsys.readouterr().out
    assert "status:OVER_CAP" in out and "error: total" in out and "over the 50000-byte cap" in out
    assert '"over_cap": true' in out.splitlines()[-1]


def test_misspelled_setting_is_warned_in_the_log(workspace, capsys, monkeypatch):
    monkeypatch.setenv("NUM_LAYER", "3")
    assert tg.main() == 0
    log = (workspace / "logs" / "bad.txt").read_text()
    assert "warning: NUM_LAYER is not a setting and is ignored; did you mean NUM_LAYERS?" in log


def test_dry_run_validates_and_prints_without_touching_data(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRY_RUN", "1")
    monkeypatch.setenv("DATA_PATH", str(tmp_path / "nowhere"))
    assert tg.main() == 0
    out = capsys.readouterr().out
    assert "train_gpt run_id: mode:dry_run" in out and "  NUM_LAYERS=12" in out
    assert out.strip().endswith(f"model params:{sum(p.numel() for p in tg.GPT(tg.Config()).parameters())}")
    assert list(tmp_path.iterdir()) == []
