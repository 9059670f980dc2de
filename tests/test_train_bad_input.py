"""Bad input beyond the table of tests/test_bad_inputs.py: messages that name the fix, outputs that
already exist, unwritable folders, over-cap runs, DRY_RUN."""
import struct

import numpy as np

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


def test_missing_data_message_names_the_commands_that_fetch_it(workspace, capsys, monkeypatch):
    monkeypatch.setenv("DATA_PATH", str(workspace / "nowhere"))
    fails_with(capsys, "python3 data/cached_challenge_fineweb.py --variant sp1024 --train-shards 10")


def test_unwritable_log_folder_is_refused(workspace, capsys):
    (workspace / "logs").write_text("a file where the log folder should be")
    fails_with(capsys, "cannot write the log logs/bad.txt: logs is a file, not a folder")
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
    (workspace / "model.ptz").write_bytes(tg.ARTIFACT_MAGIC + struct.pack("<HII", tg.ARTIFACT_VERSION, 7, 7) + b"garbage")
    monkeypatch.setenv("EVAL_ONLY", "1")
    monkeypatch.setenv("ARTIFACT_PATH", "model.ptz")
    fails_with(capsys, "model.ptz: checksum mismatch: the file is truncated or corrupted")
    assert outputs(workspace) == ["model.ptz"]


def test_over_the_size_cap_is_an_error_line_and_a_nonzero_exit(workspace, capsys, monkeypatch):
    monkeypatch.setattr(tg, "SIZE_CAP_BYTES", 50_000)
    assert tg.main() == 3
    out = capsys.readouterr().out
    assert "status:OVER_CAP" in out and "error: total" in out and "over the 50000-byte cap" in out
    assert '"over_cap": true' in (workspace / "logs" / "bad.json").read_text()


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
    assert "train_gpt run_id: mode:dry_run recipe:classic" in out and "  NUM_LAYERS=12" in out
    assert out.strip().endswith(f"model_params:{sum(p.numel() for p in tg.GPT(tg.Config()).parameters())}")
    assert "memory_estimate train:" in out and "attention:matmul kernels:fused on cpu" in out
    assert list(tmp_path.iterdir()) == []
