"""Official download (data/cached_challenge_fineweb.py) against a local stand-in for the hub; no network."""
import importlib.util
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data" / "cached_challenge_fineweb.py"
spec = importlib.util.spec_from_file_location("cached_challenge_fineweb", SCRIPT)
dl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dl)

SP = "fineweb10B_sp1024"


def shard(tokens):
    return struct.pack("<256i", 20240520, 1, len(tokens), *[0] * 253) + struct.pack(f"<{len(tokens)}H", *tokens)


def make_remote(root: Path, prefix="datasets"):
    """A folder laid out like the published dataset repo."""
    base = root / prefix if prefix else root
    files = {
        f"datasets/{SP}/fineweb_val_000000.bin": shard([1, 7, 8, 9, 1, 10]),
        f"datasets/{SP}/fineweb_val_000001.bin": shard([1, 11]),
        **{f"datasets/{SP}/fineweb_train_{i:06d}.bin": shard([1] + [100 + i] * (50 + i)) for i in range(3)},
        "datasets/fineweb10B_byte260/fineweb_val_000000.bin": shard([1, 200, 201]),
        "datasets/fineweb10B_byte260/fineweb_train_000000.bin": shard([1, 202]),
        "tokenizers/fineweb_1024_bpe.model": b"model bytes",
        "tokenizers/fineweb_1024_bpe.vocab": b"<pad>\t0\n",
        "tokenizers/fineweb_pure_byte_260.json": b"{}",
        "docs_selected.jsonl": b'{"text": "a document"}\n',
        "docs_selected.source_manifest.json": b"{}",
    }
    manifest = {
        "datasets": [
            {"name": SP, "tokenizer_name": "sp_bpe_1024",
             "stats": {"files_train": 3, "files_val": 2, "tokens_val": 8, "docs_val": 3}},
            {"name": "fineweb10B_byte260", "tokenizer_name": "pure_byte_260",
             "stats": {"files_train": 1, "files_val": 1, "tokens_val": 3}},
        ],
        "tokenizers": [
            {"name": "sp_bpe_1024", "kind": "sentencepiece_bpe", "vocab_size": 1024,
             "model_path": "tokenizers/fineweb_1024_bpe.model", "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"},
            {"name": "pure_byte_260", "kind": "byte", "vocab_size": 260,
             "path": "tokenizers/fineweb_pure_byte_260.json"},
        ],
    }
    files["manifest.json"] = json.dumps(manifest).encode()
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    return files


class StandIn:
    """Replaces download_file: copies from a local folder, can fail part-way or be offline."""

    def __init__(self, root: Path):
        self.root, self.calls, self.fail_on, self.offline = root, [], None, False

    def __call__(self, remote_path, destination):
        self.calls.append(remote_path)
        if self.offline:
            raise ConnectionError("Network is unreachable")
        data = (self.root / remote_path).read_bytes()
        if self.fail_on and remote_path.endswith(self.fail_on):
            destination.write_bytes(data[: len(data) // 2])
            raise ConnectionError("connection reset by peer")
        destination.write_bytes(data)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.delenv("MATCHED_FINEWEB_REPO_ID", raising=False)
    monkeypatch.delenv("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", raising=False)
    stand_in = StandIn(tmp_path / "remote")
    stand_in.files = make_remote(stand_in.root)
    stand_in.data = tmp_path / "data"
    monkeypatch.setattr(dl, "download_file", stand_in)
    monkeypatch.setattr(dl, "DATA_DIR", stand_in.data)
    return stand_in


def local_files(data: Path):
    return {p.relative_to(data).as_posix(): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


def shard_paths(split, n, name=SP):
    return [f"datasets/{name}/fineweb_{split}_{i:06d}.bin" for i in range(n)]


def test_downloads_val_first_train_shards_and_tokenizer(hub, capsys):
    assert dl.main(["--variant", "sp1024", "--train-shards", "2"]) == 0
    expected = ["manifest.json", *shard_paths("val", 2), *shard_paths("train", 2),
                "tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_1024_bpe.vocab"]
    assert hub.calls == ["datasets/" + p for p in expected]
    assert local_files(hub.data) == {p: hub.files[p] for p in expected}
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == f"6 file(s) downloaded, 0 already complete: 2 val + 2 train shards of {SP}"
    data_dir = hub.data / "datasets" / SP
    tokenizer = hub.data / "tokenizers" / "fineweb_1024_bpe.model"
    assert out[-1] == f"DATA_PATH={data_dir} TOKENIZER_PATH={tokenizer} VOCAB_SIZE=1024"


def test_second_run_skips_complete_files(hub, capsys):
    assert dl.main(["--train-shards", "3"]) == 0
    before = local_files(hub.data)
    hub.calls.clear()
    assert dl.main(["--train-shards", "3"]) == 0
    assert hub.calls == [] and local_files(hub.data) == before
    assert "0 file(s) downloaded, 7 already complete" in capsys.readouterr().out


def test_interrupted_download_leaves_no_partial_file_and_resumes(hub, capsys):
    hub.fail_on = "fineweb_train_000001.bin"
    assert dl.main(["--train-shards", "3"]) == 1
    err = capsys.readouterr().err
    assert f"could not download datasets/datasets/{SP}/fineweb_train_000001.bin: connection reset by peer" in err
    assert "rerun the same command" in err and "Traceback" not in err
    present = local_files(hub.data)
    assert sorted(present) == sorted(["manifest.json", *shard_paths("val", 2), *shard_paths("train", 1)])
    assert all(present[p] == hub.files[p] for p in present)

    hub.fail_on, hub.calls = None, []
    assert dl.main(["--train-shards", "3"]) == 0
    assert hub.calls == ["datasets/" + p for p in shard_paths("train", 3)[1:]] + [
        "datasets/tokenizers/fineweb_1024_bpe.model", "datasets/tokenizers/fineweb_1024_bpe.vocab"]
    assert local_files(hub.data) == {p: hub.files[p] for p in local_files(hub.data)}
    assert len(local_files(hub.data)) == 8


def test_truncated_shard_and_stale_part_file_are_replaced(hub):
    val = hub.data / "datasets" / SP / "fineweb_val_000000.bin"
    val.parent.mkdir(parents=True)
    val.write_bytes(hub.files[f"datasets/{SP}/fineweb_val_000000.bin"][:-2])  # e.g. an aborted manual copy
    val.with_name(val.name + ".part").write_bytes(b"junk from a killed run")
    assert dl.main(["--train-shards", "0"]) == 0
    assert f"datasets/datasets/{SP}/fineweb_val_000000.bin" in hub.calls
    assert local_files(hub.data) == {p: hub.files[p] for p in local_files(hub.data)}
    assert not list(hub.data.rglob("*.part"))


@pytest.mark.parametrize("variant", ["sp", "foo", "byte256", "sp01", "SP1024"])
def test_unknown_variant(hub, capsys, variant):
    assert dl.main(["--variant", variant]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: unknown variant {variant!r}: use sp<VOCAB> (e.g. sp1024) or byte260")
    assert hub.calls == []


def test_too_many_shards(hub, capsys):
    assert dl.main(["--variant", "sp1024", "--train-shards", "5"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --train-shards 5 requested but {SP} has only 3 train shards")
    assert hub.calls == ["datasets/manifest.json"]


def test_manifest_without_the_dataset_is_refetched_then_refused(hub, capsys):
    hub.data.mkdir()
    (hub.data / "manifest.json").write_text(json.dumps({"datasets": [], "tokenizers": []}))  # stale local copy
    assert dl.main(["--variant", "sp4096"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: the manifest has no dataset fineweb10B_sp4096 (it has: {SP}, fineweb10B_byte260)")
    assert hub.calls == ["datasets/manifest.json"]
    assert local_files(hub.data) == {"manifest.json": hub.files["manifest.json"]}


def test_no_network(hub, capsys):
    hub.offline = True
    assert dl.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not download datasets/manifest.json: Network is unreachable")
    assert "Traceback" not in err
    assert local_files(hub.data) == {}


def test_with_docs_and_byte260(hub):
    assert dl.main(["--variant", "byte260", "--train-shards", "1", "--with-docs"]) == 0
    expected = ["manifest.json", *shard_paths("val", 1, "fineweb10B_byte260"),
                *shard_paths("train", 1, "fineweb10B_byte260"), "tokenizers/fineweb_pure_byte_260.json",
                "docs_selected.jsonl", "docs_selected.source_manifest.json"]
    assert local_files(hub.data) == {p: hub.files[p] for p in expected}


@pytest.mark.parametrize("prefix", ["mirror/v2", ""])
def test_remote_root_prefix_override(hub, monkeypatch, prefix):
    shutil.rmtree(hub.root)
    make_remote(hub.root, prefix)
    monkeypatch.setenv("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", prefix)
    assert dl.main(["--train-shards", "1"]) == 0
    assert hub.calls[0] == (f"{prefix}/manifest.json" if prefix else "manifest.json")
    assert (hub.data / "datasets" / SP / "fineweb_train_000000.bin").is_file()


def test_unsafe_manifest_path_is_refused(hub, capsys):
    manifest = json.loads(hub.files["manifest.json"])
    manifest["tokenizers"][0]["vocab_path"] = "../../outside.vocab"
    (hub.root / "datasets" / "manifest.json").write_text(json.dumps(manifest))
    assert dl.main(["--train-shards", "0"]) == 1
    assert "the manifest lists an unsafe path '../../outside.vocab'" in capsys.readouterr().err
    assert hub.calls == ["datasets/manifest.json"]  # refused before fetching anything else
    assert not (hub.data.parent / "outside.vocab").exists()


def test_downloaded_dataset_passes_the_verifier(hub, capsys):
    assert dl.main(["--train-shards", "3"]) == 0
    verifier = REPO / "data" / "build_dataset.py"
    run = subprocess.run([sys.executable, str(verifier), "--verify", str(hub.data / "datasets" / SP)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "val 8 tokens in 2 shard(s)" in run.stdout and "data/manifest.json stats" in run.stdout


# ---------------------------------------------------------------- the real download_file, hub mocked

def test_download_file_calls_hf_hub_download_and_renames(tmp_path, monkeypatch):
    import huggingface_hub
    seen = {}

    def fake_hf_hub_download(repo_id, filename, *, subfolder=None, repo_type=None, local_dir=None):
        seen.update(repo_id=repo_id, filename=filename, subfolder=subfolder, repo_type=repo_type)
        target = Path(local_dir) / subfolder / filename
        target.parent.mkdir(parents=True)
        target.write_bytes(b"payload")
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "someone/mirror")
    destination = tmp_path / "fineweb_val_000000.bin.part"
    dl.download_file(f"datasets/datasets/{SP}/fineweb_val_000000.bin", destination)
    assert seen == {"repo_id": "someone/mirror", "filename": "fineweb_val_000000.bin",
                    "subfolder": f"datasets/datasets/{SP}", "repo_type": "dataset"}
    assert destination.read_bytes() == b"payload"
    assert [p.name for p in tmp_path.iterdir()] == [destination.name]  # staging folder removed


def test_download_file_reports_an_unreachable_hub(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, local_dir=None, **kwargs):
        Path(local_dir).mkdir()
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(dl.DownloadError, match=r"cannot reach the Hugging Face Hub \(no network\?\)"):
        dl.download_file("datasets/manifest.json", tmp_path / "manifest.json.part")
    assert list(tmp_path.iterdir()) == []


def test_cli_help():
    run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert run.returncode == 0
    assert all(flag in run.stdout for flag in ("--variant", "--train-shards", "--with-docs"))
