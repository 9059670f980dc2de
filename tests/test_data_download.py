"""Official download (data/cached_challenge_fineweb.py) against local stand-ins for the hub; no network.

Three stand-ins: StandIn replaces download_file (copies from a local folder, can fail part-way);
FAKE_HUB is a small huggingface_hub package whose hf_hub_download serves a local folder through a
cache laid out like the real one (used in-process, and on sys.path of subprocesses to play an old
0.23 release); the offline test then reads that cache with the real huggingface_hub."""
import hashlib
import importlib.util
import json
import os
import re
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
DEFAULT_REPO = "willdepueoai/parameter-golf"
KEVCLARK = "kevclark/parameter-golf"


def shard(tokens):
    return struct.pack("<256i", 20240520, 1, len(tokens), *[0] * 253) + struct.pack(f"<{len(tokens)}H", *tokens)


def make_remote(root: Path, prefix="datasets"):
    """A folder laid out like the published dataset repo willdepueoai/parameter-golf."""
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
    write_tree(base, files)
    return files


def make_kevclark(root: Path, variants=("sp4096", "sp8192"), manifest_lists=("sp4096", "sp8192"), vocab_files=True):
    """kevclark/parameter-golf as the records use it: sp4096 (143 train shards) and sp8192 (128)."""
    files, datasets, tokenizers = {}, [], []
    for variant in variants:
        vocab, n_train = {"sp4096": (4096, 143), "sp8192": (8192, 128)}[variant]
        name = f"fineweb10B_{variant}"
        files[f"datasets/{name}/fineweb_val_000000.bin"] = shard([1, vocab - 1, 5])
        for i in range(n_train):
            files[f"datasets/{name}/fineweb_train_{i:06d}.bin"] = shard([1, i % vocab])
        files[f"tokenizers/fineweb_{vocab}_bpe.model"] = f"sp{vocab} model".encode()
        if vocab_files:
            files[f"tokenizers/fineweb_{vocab}_bpe.vocab"] = f"sp{vocab} vocab".encode()
        if variant in (manifest_lists or ()):
            datasets.append({"name": name, "tokenizer_name": f"sp_bpe_{vocab}",
                             "stats": {"files_train": n_train, "files_val": 1}})
            tokenizers.append({"name": f"sp_bpe_{vocab}", "kind": "sentencepiece_bpe", "vocab_size": vocab,
                               "model_path": f"tokenizers/fineweb_{vocab}_bpe.model",
                               "vocab_path": f"tokenizers/fineweb_{vocab}_bpe.vocab"})
    if manifest_lists is not None:
        files["manifest.json"] = json.dumps({"datasets": datasets, "tokenizers": tokenizers}).encode()
    write_tree(root / "datasets", files)
    return files


def write_tree(base: Path, files: dict):
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)


class StandIn:
    """Replaces download_file: copies from remote/<repo id>/, can fail part-way or be offline."""

    def __init__(self, root: Path):
        self.root, self.calls, self.repos, self.fail_on, self.offline = root, [], [], None, False

    def __call__(self, repo_id, remote_path, destination):
        self.calls.append(remote_path)
        self.repos.append(repo_id)
        if self.offline:
            raise ConnectionError("Network is unreachable")
        source = self.root / repo_id / remote_path
        if not source.is_file():
            raise dl.MissingRemoteFile(f"it does not exist in dataset repo {repo_id}")
        data = source.read_bytes()
        if self.fail_on and remote_path.endswith(self.fail_on):
            destination.write_bytes(data[: len(data) // 2])
            raise ConnectionError("connection reset by peer")
        destination.write_bytes(data)
        return source


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.delenv("MATCHED_FINEWEB_REPO_ID", raising=False)
    monkeypatch.delenv("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", raising=False)
    stand_in = StandIn(tmp_path / "remote")
    stand_in.base = stand_in.root / DEFAULT_REPO  # the default repository's root
    stand_in.files = make_remote(stand_in.base)
    stand_in.data = tmp_path / "data"
    monkeypatch.setattr(dl, "download_file", stand_in)
    monkeypatch.setattr(dl, "DATA_DIR", stand_in.data)
    return stand_in


def local_files(data: Path):
    return {p.relative_to(data).as_posix(): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


def shard_paths(split, n, name=SP):
    return [f"datasets/{name}/fineweb_{split}_{i:06d}.bin" for i in range(n)]


def progress_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if re.match(r"  \d+/\d+ shards, ", line)]


def sha_line(data: bytes, name: str) -> bytes:
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode()


def without_sha(files: dict) -> dict:
    return {p: d for p, d in files.items() if not p.endswith("/tokenizer.sha256")}


def test_downloads_val_first_train_shards_and_tokenizer(hub, capsys):
    assert dl.main(["--variant", "sp1024", "--train-shards", "2"]) == 0
    expected = ["manifest.json", *shard_paths("val", 2), *shard_paths("train", 2),
                "tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_1024_bpe.vocab"]
    assert hub.calls == ["datasets/" + p for p in expected]
    assert set(hub.repos) == {DEFAULT_REPO}
    model = hub.files["tokenizers/fineweb_1024_bpe.model"]
    assert local_files(hub.data) == {**{p: hub.files[p] for p in expected},
                                     f"datasets/{SP}/tokenizer.sha256": sha_line(model, "fineweb_1024_bpe.model")}
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"{SP} from {DEFAULT_REPO} (per the manifest of {DEFAULT_REPO}): 2 val + 2 train shards, "
                      f"4 to fetch")
    data_dir = hub.data / "datasets" / SP
    tokenizer = hub.data / "tokenizers" / "fineweb_1024_bpe.model"
    assert out[-2] == (f"6 file(s) fetched, 0 already complete; {data_dir / 'tokenizer.sha256'}: "
                       f"{hashlib.sha256(model).hexdigest()[:16]}... fineweb_1024_bpe.model")
    assert out[-1] == f"DATA_PATH={data_dir} TOKENIZER_PATH={tokenizer} VOCAB_SIZE=1024"


def test_second_run_skips_complete_files(hub, capsys):
    assert dl.main(["--train-shards", "3"]) == 0
    before = local_files(hub.data)
    hub.calls.clear()
    assert dl.main(["--train-shards", "3"]) == 0
    assert hub.calls == [] and local_files(hub.data) == before
    assert "0 file(s) fetched, 7 already complete" in capsys.readouterr().out


def test_interrupted_download_leaves_no_partial_file_and_resumes(hub, capsys):
    hub.fail_on = "fineweb_train_000001.bin"
    assert dl.main(["--train-shards", "3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: could not download datasets/datasets/{SP}/fineweb_train_000001.bin: "
                          f"connection reset by peer; rerun the same command to resume")
    present = local_files(hub.data)
    assert sorted(present) == sorted(["manifest.json", *shard_paths("val", 2), *shard_paths("train", 1)])
    assert all(present[p] == hub.files[p] for p in present)

    hub.fail_on, hub.calls = None, []
    assert dl.main(["--train-shards", "3"]) == 0
    assert hub.calls == ["datasets/" + p for p in shard_paths("train", 3)[1:]] + [
        "datasets/tokenizers/fineweb_1024_bpe.model", "datasets/tokenizers/fineweb_1024_bpe.vocab"]
    files = without_sha(local_files(hub.data))
    assert files == {p: hub.files[p] for p in files} and len(files) == 8


def test_truncated_shard_and_stale_part_file_are_replaced(hub):
    val = hub.data / "datasets" / SP / "fineweb_val_000000.bin"
    val.parent.mkdir(parents=True)
    val.write_bytes(hub.files[f"datasets/{SP}/fineweb_val_000000.bin"][:-2])  # e.g. an aborted manual copy
    val.with_name(val.name + ".part").write_bytes(b"junk from a killed run")
    assert dl.main(["--train-shards", "0"]) == 0
    assert f"datasets/datasets/{SP}/fineweb_val_000000.bin" in hub.calls
    files = without_sha(local_files(hub.data))
    assert files == {p: hub.files[p] for p in files}
    assert not list(hub.data.rglob("*.part")) and not list(hub.data.rglob(".*"))


@pytest.mark.parametrize("variant", ["sp", "foo", "byte256", "sp01", "SP1024", ""])
def test_unknown_variant(hub, capsys, variant):
    assert dl.main(["--variant", variant]) == 2
    assert capsys.readouterr().err == (
        f"error: unknown --variant {variant!r}: use sp<VOCAB> (e.g. sp1024, sp8192), sp8192_caseops or byte260\n")
    assert hub.calls == [] and not hub.data.exists()


def test_too_many_shards(hub, capsys):
    assert dl.main(["--variant", "sp1024", "--train-shards", "5"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --train-shards 5 requested but {SP} has only 3 train shards (per the manifest of {DEFAULT_REPO}); "
        f"use --train-shards 3 or less")
    assert hub.calls == ["datasets/manifest.json"]


def test_manifest_without_the_dataset_is_refetched_then_refused(hub, capsys):
    hub.data.mkdir()
    (hub.data / "manifest.json").write_text(json.dumps({"datasets": [], "tokenizers": []}))  # stale local copy
    assert dl.main(["--variant", "sp2048"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: the manifest has no dataset fineweb10B_sp2048 (it has: {SP}, fineweb10B_byte260)")
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
    assert local_files(hub.data) == {**{p: hub.files[p] for p in expected},
                                     "datasets/fineweb10B_byte260/tokenizer.sha256":
                                         sha_line(b"{}", "fineweb_pure_byte_260.json")}


@pytest.mark.parametrize("prefix", ["mirror/v2", ""])
def test_remote_root_prefix_override(hub, monkeypatch, prefix):
    shutil.rmtree(hub.base)
    make_remote(hub.base, prefix)
    monkeypatch.setenv("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", prefix)
    assert dl.main(["--train-shards", "1"]) == 0
    assert hub.calls[0] == (f"{prefix}/manifest.json" if prefix else "manifest.json")
    assert (hub.data / "datasets" / SP / "fineweb_train_000000.bin").is_file()


def test_unsafe_manifest_path_is_refused(hub, capsys):
    manifest = json.loads(hub.files["manifest.json"])
    manifest["tokenizers"][0]["vocab_path"] = "../../outside.vocab"
    (hub.base / "datasets" / "manifest.json").write_text(json.dumps(manifest))
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


# ---------------------------------------------------------------- shard counts, --skip-manifest, variants

@pytest.mark.parametrize("argv, shards", [
    (["3"], 3), (["--train-shards", "2"], 2), (["2", "--train-shards", "2"], 2), ([], 3), (["0"], 0)])
def test_positional_train_shard_count_as_upstream(hub, monkeypatch, argv, shards):
    monkeypatch.setattr(dl, "DEFAULT_TRAIN_SHARDS", 3)
    assert dl.main(["--variant", "sp1024", *argv]) == 0
    assert sorted(p.name for p in (hub.data / "datasets" / SP).glob("fineweb_train_*")) == [
        f"fineweb_train_{i:06d}.bin" for i in range(shards)]


@pytest.mark.parametrize("argv, message", [
    (["3", "--train-shards", "2"], "the train shard count is given twice and disagrees: 3 (positional) and "
                                   "--train-shards 2; give it once"),
    (["--train-shards", "-1"], "argument --train-shards: -1 is out of range: give 0 to 1,000,000"),
    (["-1"], "argument N: -1 is out of range"),
    (["--train-shards", "1000001"], "argument --train-shards: 1000001 is out of range"),
    (["--train-shards", "ten"], "argument --train-shards: 'ten' is not a whole number"),
    (["1", "2"], "unrecognized arguments: 2"),
])
def test_bad_counts_one_line_exit_2(hub, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        dl.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.endswith("(see --help)\n")
    assert hub.calls == [] and not hub.data.exists()


def test_skip_manifest_uses_the_local_manifest_without_fetching_it(hub):
    assert dl.main(["--train-shards", "1"]) == 0
    (hub.data / "datasets" / SP / "fineweb_train_000000.bin").unlink()
    hub.calls.clear()
    assert dl.main(["--train-shards", "2", "--skip-manifest"]) == 0
    assert hub.calls == ["datasets/" + p for p in shard_paths("train", 2)]


@pytest.mark.parametrize("local, state", [(None, "is missing"), (b"{not json", "is not a readable manifest"),
                                          (b'{"datasets": []}', f"does not list {SP}")])
def test_skip_manifest_without_a_usable_local_manifest_is_refused_like_upstream(hub, capsys, local, state):
    if local is not None:
        hub.data.mkdir()
        (hub.data / "manifest.json").write_bytes(local)
    before = local_files(hub.data) if hub.data.exists() else {}
    assert dl.main(["--variant", "sp1024", "--skip-manifest"]) == 2
    assert capsys.readouterr().err == (
        f"error: --skip-manifest: {hub.data / 'manifest.json'} {state}; drop --skip-manifest to download "
        f"the manifest of {DEFAULT_REPO}\n")
    assert hub.calls == [] and (local_files(hub.data) if hub.data.exists() else {}) == before


def kevclark_files(variant, n_train, vocab_file=True):
    vocab = variant[2:]
    name = f"fineweb10B_{variant}"
    return [*shard_paths("val", 1, name), *shard_paths("train", n_train, name), f"tokenizers/fineweb_{vocab}_bpe.model",
            *([f"tokenizers/fineweb_{vocab}_bpe.vocab"] if vocab_file else [])]


def test_sp8192_comes_from_kevclark_without_any_setting(hub, capsys):
    files = make_kevclark(hub.root / KEVCLARK)
    hub.data.mkdir()
    (hub.data / "manifest.json").write_bytes(hub.files["manifest.json"])  # the default repo's, without sp8192
    assert dl.main(["--variant", "sp8192", "--train-shards", "2"]) == 0
    expected = kevclark_files("sp8192", 2)
    assert hub.calls == ["datasets/manifest.json"] + ["datasets/" + p for p in expected]
    assert set(hub.repos) == {KEVCLARK}
    got = local_files(hub.data)
    assert got["manifest.json"] == files["manifest.json"]
    assert got["datasets/fineweb10B_sp8192/tokenizer.sha256"] == sha_line(b"sp8192 model", "fineweb_8192_bpe.model")
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        "datasets/fineweb10B_sp8192 TOKENIZER_PATH=" + str(hub.data / "tokenizers" / "fineweb_8192_bpe.model")
        + " VOCAB_SIZE=8192")


def test_skip_manifest_sp8192_uses_the_builtin_table(hub, monkeypatch, capsys):
    """MATCHED_FINEWEB_REPO_ID=kevclark/parameter-golf ... --variant sp8192 --skip-manifest on a fresh clone."""
    make_kevclark(hub.root / KEVCLARK)
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", KEVCLARK)
    monkeypatch.setattr(dl, "DEFAULT_TRAIN_SHARDS", 4)
    assert dl.main(["--variant", "sp8192", "--skip-manifest"]) == 0
    assert hub.calls == ["datasets/" + p for p in kevclark_files("sp8192", 4)]
    assert not (hub.data / "manifest.json").exists()
    out = capsys.readouterr().out
    assert ("fineweb10B_sp8192 from kevclark/parameter-golf (per the built-in table): 1 val + 4 train shards, "
            "5 to fetch") in out
    assert dl.main(["--variant", "sp8192", "--skip-manifest", "--train-shards", "129"]) == 2
    assert capsys.readouterr().err == ("error: --train-shards 129 requested but fineweb10B_sp8192 has only 128 train "
                                       "shards (per the built-in table); use --train-shards 128 or less\n")


def test_builtin_table_covers_a_manifest_without_the_variant_and_a_missing_vocab(hub, capsys):
    """kevclark's manifest listing only sp8192 (uploads may overwrite it): sp4096 still downloads."""
    make_kevclark(hub.root / KEVCLARK, manifest_lists=("sp8192",), vocab_files=False)
    assert dl.main(["--variant", "sp4096", "--train-shards", "143"]) == 0
    assert hub.calls == ["datasets/manifest.json"] + ["datasets/" + p for p in kevclark_files("sp4096", 143)]
    assert len(list((hub.data / "datasets" / "fineweb10B_sp4096").glob("fineweb_train_*.bin"))) == 143
    assert ", tokenizers/fineweb_4096_bpe.vocab not in the repository;" in capsys.readouterr().out


def test_kevclark_without_any_manifest(hub):
    make_kevclark(hub.root / KEVCLARK, manifest_lists=None)
    assert dl.main(["--variant", "sp4096", "--train-shards", "1"]) == 0
    assert hub.calls[0] == "datasets/manifest.json" and len(hub.calls) == 5
    assert not (hub.data / "manifest.json").exists()


def test_explicit_repo_always_wins(hub, monkeypatch, capsys):
    make_kevclark(hub.root / KEVCLARK)
    make_remote(hub.root / "someone" / "mirror")
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "someone/mirror")
    assert dl.main(["--train-shards", "1"]) == 0
    assert set(hub.repos) == {"someone/mirror"}
    hub.repos.clear()
    assert dl.main(["--variant", "sp8192"]) == 2  # the mirror does not offer it; no fallback to kevclark
    assert capsys.readouterr().err.strip() == (
        f"error: the manifest has no dataset fineweb10B_sp8192 (it has: {SP}, fineweb10B_byte260)")
    assert set(hub.repos) == {"someone/mirror"}


@pytest.mark.parametrize("name, value, message", [
    ("MATCHED_FINEWEB_REPO_ID", "parameter-golf", "MATCHED_FINEWEB_REPO_ID='parameter-golf' is not a Hugging Face"),
    ("MATCHED_FINEWEB_REPO_ID", "", "MATCHED_FINEWEB_REPO_ID='' is not a Hugging Face repo id"),
    ("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", "../up", "MATCHED_FINEWEB_REMOTE_ROOT_PREFIX='../up' must be a folder"),
])
def test_bad_settings(hub, monkeypatch, capsys, name, value, message):
    monkeypatch.setenv(name, value)
    assert dl.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert hub.calls == [] and not hub.data.exists()


# ---------------------------------------------------------------- progress

def test_progress_lines_count_shards_to_fetch_with_rate_and_eta(hub, monkeypatch, capsys):
    assert dl.main(["--train-shards", "1"]) == 0  # val 0-1 and train 0 now complete
    capsys.readouterr()
    ticks = iter([100.0, 102.0, 104.0])
    monkeypatch.setattr(dl, "clock", lambda: next(ticks))
    assert dl.main(["--train-shards", "3"]) == 0
    lines = progress_lines(capsys.readouterr().out)
    sizes = [len(hub.files[p]) for p in shard_paths("train", 3)[1:]]
    assert lines == [
        f"  1/2 shards, {sizes[0] / 1e6 / 2:.1f} MB/s, ETA 0m02s  fineweb_train_000001.bin",
        f"  2/2 shards, {sum(sizes) / 1e6 / 4:.1f} MB/s, ETA 0m00s  fineweb_train_000002.bin",
    ]
    assert [dl.duration(s) for s in (0, 59.6, 61, 3599, 3600, 7322)] == ["0m00s", "1m00s", "1m01s", "59m59s",
                                                                         "1h00m", "2h02m"]


def test_progress_rate_in_megabytes(monkeypatch, capsys):
    ticks = iter([0.0, 4.0, 8.0, 12.0])
    monkeypatch.setattr(dl, "clock", lambda: next(ticks))
    progress = dl.Progress(10)
    for i in range(3):
        progress.shard(f"s{i}", 200_000_000)
    assert capsys.readouterr().out.splitlines() == [
        "  1/10 shards, 50.0 MB/s, ETA 0m36s  s0", "  2/10 shards, 50.0 MB/s, ETA 0m32s  s1",
        "  3/10 shards, 50.0 MB/s, ETA 0m28s  s2"]


# ---------------------------------------------------------------- tokenizer.sha256

def test_tokenizer_sha256_is_rewritten_when_the_tokenizer_changes(hub):
    assert dl.main(["--train-shards", "0"]) == 0
    record = hub.data / "datasets" / SP / "tokenizer.sha256"
    model = hub.data / "tokenizers" / "fineweb_1024_bpe.model"
    assert record.read_bytes() == sha_line(b"model bytes", "fineweb_1024_bpe.model")
    model.unlink()
    model.write_bytes(b"another tokenizer found in place")
    assert dl.main(["--train-shards", "0"]) == 0
    assert record.read_bytes() == sha_line(b"another tokenizer found in place", "fineweb_1024_bpe.model")
    assert sorted(p.name for p in record.parent.iterdir()) == ["fineweb_val_000000.bin", "fineweb_val_000001.bin",
                                                               "tokenizer.sha256"]
    if shutil.which("sha256sum"):  # the file is in sha256sum's own format
        check = subprocess.run(["sha256sum", "--check", str(record)], cwd=model.parent, capture_output=True, text=True)
        assert check.returncode == 0 and check.stdout.strip() == "fineweb_1024_bpe.model: OK"


def test_tokenizer_sha256_write_is_atomic(hub, monkeypatch):
    assert dl.main(["--train-shards", "0"]) == 0
    record = hub.data / "datasets" / SP / "tokenizer.sha256"
    before = record.read_bytes()
    (hub.data / "tokenizers" / "fineweb_1024_bpe.model").write_bytes(b"changed")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(dl.os, "replace", failing_replace)
    assert dl.main(["--train-shards", "0"]) == 1
    assert record.read_bytes() == before
    assert sorted(p.name for p in record.parent.iterdir()) == ["fineweb_val_000000.bin", "fineweb_val_000001.bin",
                                                               "tokenizer.sha256"]


# ---------------------------------------------------------------- a stand-in huggingface_hub package

FAKE_HUB = r'''
"""Stand-in for huggingface_hub: serves $FAKE_HUB_REMOTE/<owner>/<name>/ through a cache laid out like
the real one ($HF_HUB_CACHE/datasets--<owner>--<name>/{blobs,refs/main,snapshots/<commit>/...}), and
logs each request ("download"/"cache" repo path) to $FAKE_HUB_LOG."""
import hashlib
import os
from pathlib import Path

__version__ = os.environ.get("FAKE_HUB_VERSION", "0.23.0")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class EntryNotFoundError(Exception):
    pass


class LocalEntryNotFoundError(EntryNotFoundError, FileNotFoundError):
    pass


class RepositoryNotFoundError(Exception):
    pass


def hf_hub_download(repo_id, filename, *, subfolder=None, repo_type=None, **unexpected):
    assert repo_type == "dataset" and not unexpected, unexpected  # no local_dir: the standard cache
    relative = f"{subfolder}/{filename}" if subfolder else filename
    storage = Path(os.environ["HF_HUB_CACHE"]) / ("datasets--" + repo_id.replace("/", "--"))
    pointer = storage / "snapshots" / COMMIT / relative

    def log(what):
        with open(os.environ["FAKE_HUB_LOG"], "a") as f:
            f.write(f"{what} {repo_id} {relative}\n")

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        if pointer.exists():
            log("cache")
            return str(pointer)
        raise LocalEntryNotFoundError("outgoing traffic has been disabled")
    repo = Path(os.environ["FAKE_HUB_REMOTE"]) / repo_id
    if not repo.is_dir():
        raise RepositoryNotFoundError(repo_id)
    source = repo / relative
    if not source.is_file():
        raise EntryNotFoundError(relative)
    data = source.read_bytes()
    blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
    if pointer.exists() and pointer.resolve() == blob:
        log("cache")
        return str(pointer)
    log("download")
    blob.parent.mkdir(parents=True, exist_ok=True)
    incomplete = blob.with_name(blob.name + ".incomplete")
    incomplete.write_bytes(data)
    os.replace(incomplete, blob)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.unlink(missing_ok=True)
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(COMMIT)
    return str(pointer)
'''
UTILS_OF_FAKE_HUB = "from huggingface_hub import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError\n"
ERRORS_0_23 = "class OfflineModeIsEnabled(ConnectionError):\n    pass\n"  # 0.23/0.24: errors.py without those classes


def install_fake_hub(where: Path, errors_module=None, utils=True) -> Path:
    """A huggingface_hub package under where/ (put where on PYTHONPATH)."""
    package = where / "huggingface_hub"
    (package / "utils").mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_HUB)
    (package / "utils" / "__init__.py").write_text(UTILS_OF_FAKE_HUB if utils else "")
    if errors_module is not None:
        (package / "errors.py").write_text(errors_module)
    return where


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """In-process: the script's hub is FAKE_HUB; remote under tmp/remote, cache under tmp/cache."""
    spec = importlib.util.spec_from_file_location("fake_huggingface_hub", install_fake_hub(tmp_path / "fake")
                                                  / "huggingface_hub" / "__init__.py")
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    for name in ("MATCHED_FINEWEB_REPO_ID", "MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    env = fake_hub_env(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(dl, "_HUB", (fake.hf_hub_download, fake.EntryNotFoundError, fake.LocalEntryNotFoundError,
                                     fake.RepositoryNotFoundError))
    monkeypatch.setattr(dl, "DATA_DIR", tmp_path / "data")
    fake.files = make_remote(tmp_path / "remote" / DEFAULT_REPO)
    fake.log, fake.cache, fake.data = Path(env["FAKE_HUB_LOG"]), Path(env["HF_HUB_CACHE"]), tmp_path / "data"
    return fake


def fake_hub_env(tmp_path: Path) -> dict:
    return {"FAKE_HUB_REMOTE": str(tmp_path / "remote"), "HF_HUB_CACHE": str(tmp_path / "cache"),
            "FAKE_HUB_LOG": str(tmp_path / "hub.log")}


def hub_log(path: Path) -> list[str]:
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


def test_files_come_from_the_hf_cache_as_hard_links(fake_hub):
    assert dl.main(["--train-shards", "2"]) == 0
    log = hub_log(fake_hub.log)
    assert log[0] == f"download {DEFAULT_REPO} datasets/manifest.json" and len(log) == 7
    assert all(line.startswith("download ") for line in log)
    storage = fake_hub.cache / "datasets--willdepueoai--parameter-golf"
    for rel in ("manifest.json", f"datasets/{SP}/fineweb_train_000001.bin", "tokenizers/fineweb_1024_bpe.model"):
        local = fake_hub.data / rel
        blob = storage / "blobs" / hashlib.sha256(fake_hub.files[rel]).hexdigest()
        assert local.read_bytes() == fake_hub.files[rel]
        assert not local.is_symlink() and os.path.samefile(local, blob)  # a hard link, not a copy or a symlink

    # a second clone of the repo: nothing downloaded again, everything comes from the cache
    second = fake_hub.data.parent / "clone2" / "data"
    dl.DATA_DIR = second
    assert dl.main(["--train-shards", "2"]) == 0
    log = hub_log(fake_hub.log)
    assert len(log) == 7 and all(line.startswith("cache ") for line in log)
    assert local_files(second) == local_files(fake_hub.data)


def test_copies_when_hard_links_fail(fake_hub, monkeypatch):
    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(dl.os, "link", no_link)
    assert dl.main(["--train-shards", "1"]) == 0
    model = fake_hub.data / "tokenizers" / "fineweb_1024_bpe.model"
    assert model.read_bytes() == b"model bytes" and model.stat().st_nlink == 1


def test_offline_mode_uses_the_cache_and_names_what_is_missing(fake_hub, monkeypatch, capsys):
    assert dl.main(["--train-shards", "1"]) == 0
    hub_log(fake_hub.log)
    shutil.rmtree(fake_hub.data)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert dl.main(["--train-shards", "1"]) == 0
    assert len(hub_log(fake_hub.log)) == 6  # manifest, 2 val, 1 train, model, vocab: all from the cache
    capsys.readouterr()
    assert dl.main(["--train-shards", "2"]) == 1
    assert capsys.readouterr().err == (
        f"error: could not download datasets/datasets/{SP}/fineweb_train_000001.bin: it is not in the Hugging Face "
        f"cache and HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE to download it; rerun the same command to resume "
        f"(complete files are kept)\n")


def test_missing_file_and_missing_repo_messages(fake_hub, monkeypatch, capsys):
    (Path(os.environ["FAKE_HUB_REMOTE"]) / DEFAULT_REPO / "datasets" / "tokenizers" / "fineweb_1024_bpe.vocab").unlink()
    assert dl.main(["--train-shards", "0"]) == 1
    assert ("could not download datasets/tokenizers/fineweb_1024_bpe.vocab: it does not exist in dataset repo "
            f"{DEFAULT_REPO}") in capsys.readouterr().err
    assert not (fake_hub.data / "tokenizers" / "fineweb_1024_bpe.vocab").exists()
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "nobody/nothing")
    shutil.rmtree(fake_hub.data)
    assert dl.main([]) == 1
    assert ("could not download datasets/manifest.json: dataset repo nobody/nothing not found (check "
            "MATCHED_FINEWEB_REPO_ID)") in capsys.readouterr().err


def test_corrupt_cached_file_names_the_cache_entry(fake_hub, capsys):
    remote_shard = Path(os.environ["FAKE_HUB_REMOTE"]) / DEFAULT_REPO / "datasets" / "datasets" / SP / \
        "fineweb_val_000001.bin"
    remote_shard.write_bytes(remote_shard.read_bytes()[:-1])  # the file itself is broken
    assert dl.main(["--train-shards", "0"]) == 1
    err = capsys.readouterr().err
    assert f"datasets/datasets/{SP}/fineweb_val_000001.bin arrived incomplete or corrupt; delete " in err
    assert "from the Hugging Face cache and rerun" in err
    assert not (fake_hub.data / "datasets" / SP / "fineweb_val_000001.bin").exists()
    assert not list(fake_hub.data.rglob("*.part"))


def test_missing_hub_package_is_one_line_exit_2(hub, monkeypatch, capsys):
    monkeypatch.setattr(dl, "_HUB", None)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    assert dl.main([]) == 2
    assert capsys.readouterr().err == "error: huggingface_hub is not installed: pip install -r requirements.txt\n"
    assert not hub.data.exists()


# ---------------------------------------------------------------- subprocesses: old hub, published command lines

def script_copy(tmp_path: Path) -> Path:
    """The script in tmp/clone/data/, so that it writes tmp/clone/data/... (its data folder is its own folder)."""
    target = tmp_path / "clone" / "data" / SCRIPT.name
    target.parent.mkdir(parents=True)
    shutil.copy(SCRIPT, target)
    return target


def run_script(tmp_path, args, hub_dir=None, **env):
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("MATCHED_FINEWEB_", "HF_")) and k != "PYTHONPATH"}
    environ.update(fake_hub_env(tmp_path), **env)
    if hub_dir is not None:
        environ["PYTHONPATH"] = str(hub_dir)
    script = tmp_path / "clone" / "data" / SCRIPT.name
    if not script.exists():
        script_copy(tmp_path)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=environ,
                          cwd=tmp_path / "clone", timeout=120)


@pytest.mark.parametrize("errors_module", [None, ERRORS_0_23], ids=["no-errors-module", "errors-of-0.23"])
def test_old_hub_layout_imports_and_downloads(tmp_path, errors_module):
    """huggingface_hub 0.23/0.24: the error classes are in huggingface_hub.utils only."""
    files = make_remote(tmp_path / "remote" / DEFAULT_REPO)
    hub_dir = install_fake_hub(tmp_path / "oldhub", errors_module)
    run = run_script(tmp_path, ["--variant", "sp1024", "--train-shards", "1"], hub_dir)
    assert run.returncode == 0, run.stderr
    data = tmp_path / "clone" / "data"
    assert (data / "datasets" / SP / "fineweb_train_000000.bin").read_bytes() == files[
        f"datasets/{SP}/fineweb_train_000000.bin"]
    assert len(hub_log(tmp_path / "hub.log")) == 6


def test_hub_without_the_error_classes_is_refused(tmp_path):
    hub_dir = install_fake_hub(tmp_path / "oddhub", ERRORS_0_23, utils=False)
    make_remote(tmp_path / "remote" / DEFAULT_REPO)
    run = run_script(tmp_path, [], hub_dir, FAKE_HUB_VERSION="0.1.0")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == ("error: huggingface_hub 0.1.0 lacks hf_hub_download or its error classes; "
                          "pip install -U 'huggingface_hub>=0.23'\n")
    assert sorted(p.name for p in (tmp_path / "clone" / "data").iterdir()) == [SCRIPT.name]


def test_published_command_lines(tmp_path):
    """The reproduction commands of the public records, unchanged, on a fresh clone."""
    make_remote(tmp_path / "remote" / DEFAULT_REPO)
    make_kevclark(tmp_path / "remote" / KEVCLARK)
    hub_dir = install_fake_hub(tmp_path / "hub", "from huggingface_hub import *\n")
    data = tmp_path / "clone" / "data"

    def trains(name):
        return len(list((data / "datasets" / name).glob("fineweb_train_*.bin")))

    # MATCHED_FINEWEB_REPO_ID=kevclark/parameter-golf python3 data/cached_challenge_fineweb.py \
    #     --variant sp8192 --skip-manifest
    run = run_script(tmp_path, ["--variant", "sp8192", "--skip-manifest"], hub_dir, MATCHED_FINEWEB_REPO_ID=KEVCLARK)
    assert run.returncode == 0, run.stderr
    assert trains("fineweb10B_sp8192") == 80 and not (data / "manifest.json").exists()
    assert all("manifest.json" not in line for line in hub_log(tmp_path / "hub.log"))
    assert run.stdout.splitlines()[-1] == ("DATA_PATH=data/datasets/fineweb10B_sp8192 "
                                           "TOKENIZER_PATH=data/tokenizers/fineweb_8192_bpe.model VOCAB_SIZE=8192")
    progress = progress_lines(run.stdout)
    assert len(progress) == 81 and progress[-1].startswith("  81/81 shards, ")

    # rm -f data/manifest.json; MATCHED_FINEWEB_REPO_ID=kevclark/parameter-golf ... --variant sp4096 --train-shards 143
    run = run_script(tmp_path, ["--variant", "sp4096", "--train-shards", "143"], hub_dir,
                     MATCHED_FINEWEB_REPO_ID=KEVCLARK)
    assert run.returncode == 0, run.stderr
    assert trains("fineweb10B_sp4096") == 143
    assert json.loads((data / "manifest.json").read_text())["datasets"][0]["name"] == "fineweb10B_sp4096"

    # --variant sp8192 --train-shards 128 (no setting: the built-in table picks kevclark) and the positional form
    run = run_script(tmp_path, ["--variant", "sp8192", "--train-shards", "128"], hub_dir)
    assert run.returncode == 0, run.stderr and trains("fineweb10B_sp8192") == 128
    run = run_script(tmp_path, ["--variant", "sp1024", "2"], hub_dir)
    assert run.returncode == 0, run.stderr
    assert trains(SP) == 2
    sha = (data / "datasets" / "fineweb10B_sp8192" / "tokenizer.sha256").read_text()
    assert sha == f"{hashlib.sha256(b'sp8192 model').hexdigest()}  fineweb_8192_bpe.model\n"
    assert not list(data.rglob("*.part")) and not list(data.rglob(".*"))


def test_offline_with_the_real_huggingface_hub(tmp_path):
    """Files cached by a first (online, stand-in) run are served offline by the real huggingface_hub."""
    pytest.importorskip("huggingface_hub")
    files = make_remote(tmp_path / "remote" / DEFAULT_REPO)
    run = run_script(tmp_path, ["--train-shards", "2"], install_fake_hub(tmp_path / "hub", None))
    assert run.returncode == 0, run.stderr
    shutil.rmtree(tmp_path / "clone" / "data" / "datasets")
    shutil.rmtree(tmp_path / "clone" / "data" / "tokenizers")
    (tmp_path / "clone" / "data" / "manifest.json").unlink()
    shutil.rmtree(tmp_path / "remote")  # nothing left to download from
    run = run_script(tmp_path, ["--train-shards", "2"], HF_HUB_OFFLINE="1")
    assert run.returncode == 0, run.stderr
    data = tmp_path / "clone" / "data"
    for rel in ("manifest.json", f"datasets/{SP}/fineweb_train_000001.bin", "tokenizers/fineweb_1024_bpe.vocab"):
        assert (data / rel).read_bytes() == files[rel] and (data / rel).stat().st_nlink == 2
    run = run_script(tmp_path, ["--train-shards", "3"], HF_HUB_OFFLINE="1")
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"error: could not download datasets/datasets/{SP}/fineweb_train_000002.bin: it is "
                                 f"not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    assert not (data / "datasets" / SP / "fineweb_train_000002.bin").exists()


def test_cli_help(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert run.returncode == 0
    assert all(flag in run.stdout for flag in ("--variant", "--train-shards", "--with-docs", "--skip-manifest",
                                               "kevclark/parameter-golf", "HF_HUB_OFFLINE", "tokenizer.sha256",
                                               "sp8192_caseops", "romeerp/parameter-golf-caseops-v1",
                                               "published_val_bytes_NNNNNN.bin"))


# ---------------------------------------------------------------- malformed manifests (issue 21)

def malform(mutate):
    def apply(manifest):
        mutate(manifest)
        return manifest
    return apply


@pytest.mark.parametrize("mutate, message", [
    (malform(lambda m: m.update(datasets={SP: {}})), "field datasets is an object, expected a list"),
    (malform(lambda m: m.update(datasets=5)), "field datasets is an integer, expected a list"),
    (malform(lambda m: m.update(tokenizers="sp_bpe_1024")), "field tokenizers is a string, expected a list"),
    (malform(lambda m: m["datasets"][0].update(stats=[3, 2])), "field datasets[0].stats is a list, expected an object"),
    (malform(lambda m: m["datasets"][0]["stats"].update(files_val="2")),
     "field datasets[0].stats.files_val is a string, expected an integer"),
    (malform(lambda m: m["datasets"][0]["stats"].update(files_val=True)),
     "field datasets[0].stats.files_val is a boolean, expected an integer"),
    (malform(lambda m: m["datasets"][0]["stats"].pop("files_train")), "field datasets[0].stats.files_train is missing"),
    (malform(lambda m: m["datasets"][0]["stats"].update(files_train=-1)),
     "field datasets[0].stats.files_train is -1, expected 0 to 1000000"),
    (malform(lambda m: m["datasets"][0].pop("tokenizer_name")), "field datasets[0].tokenizer_name is missing"),
    (malform(lambda m: m["tokenizers"][0].update(model_path=5)),
     "field tokenizers[0].model_path is an integer, expected a string"),
    (malform(lambda m: m["tokenizers"][0].update(optional="vocab_path")),
     "field tokenizers[0].optional is a string, expected a list"),
    (malform(lambda m: m["tokenizers"].pop(0)), "has no tokenizer 'sp_bpe_1024' for fineweb10B_sp1024"),
    (malform(lambda m: [m["tokenizers"][0].pop(k) for k in ("model_path", "vocab_path")]),
     "gives no file for tokenizer 'sp_bpe_1024'"),
])
def test_a_malformed_repository_manifest_is_one_line_exit_2(hub, capsys, mutate, message):
    manifest = mutate(json.loads(hub.files["manifest.json"]))
    (hub.base / "datasets" / "manifest.json").write_text(json.dumps(manifest))
    assert dl.main(["--train-shards", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and message in err, err
    assert err.startswith(f"error: the manifest of {DEFAULT_REPO}: ") or "has no tokenizer" in err or "gives no" in err
    assert hub.calls == ["datasets/manifest.json"]  # nothing else fetched
    assert sorted(local_files(hub.data)) == ["manifest.json"]


def test_a_malformed_local_manifest_is_refetched_or_refused(hub, capsys):
    hub.data.mkdir()
    (hub.data / "manifest.json").write_text(json.dumps({"datasets": 5}))  # unusable: the repository's replaces it
    assert dl.main(["--train-shards", "1"]) == 0
    assert hub.calls[0] == "datasets/manifest.json"
    assert dl.main(["--train-shards", "1", "--skip-manifest"]) == 0  # the fetched one is fine
    (hub.data / "manifest.json").write_text(json.dumps({"datasets": 5}))
    capsys.readouterr()
    assert dl.main(["--train-shards", "1", "--skip-manifest"]) == 2
    assert capsys.readouterr().err == (
        f"error: --skip-manifest: {hub.data / 'manifest.json'} is malformed (field datasets is an integer, expected "
        f"a list); drop --skip-manifest to download the manifest of {DEFAULT_REPO}\n")
    local = json.loads(hub.files["manifest.json"])
    local["datasets"][0]["stats"]["files_val"] = "2"
    (hub.data / "manifest.json").write_text(json.dumps(local))
    assert dl.main(["--train-shards", "1"]) == 2  # it lists the dataset: used as it is, and refused
    assert capsys.readouterr().err == (
        f"error: {hub.data / 'manifest.json'}: field datasets[0].stats.files_val is a string, expected an integer; "
        f"fix or delete that manifest\n")


# ---------------------------------------------------------------- CaseOps (sp8192_caseops)

ROMEERP = "romeerp/parameter-golf-caseops-v1"
CASEOPS = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
CASEOPS_MODEL = "tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
bd_spec = importlib.util.spec_from_file_location("build_dataset", REPO / "data" / "build_dataset.py")
bd = importlib.util.module_from_spec(bd_spec)
bd_spec.loader.exec_module(bd)


@pytest.fixture(scope="module")
def caseops_build(tmp_path_factory):
    """A small CaseOps dataset built locally: (folder with two val shards, its tokenizer)."""
    import random
    rng = random.Random(3)
    words = "The NASA iPhone McDonald's OpenAI Straße café Ｆｕｌｌ the a of model token byte \ue001 \ue004".split()
    root = tmp_path_factory.mktemp("caseops")
    src = root / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(3, 40)))}) + "\n"
                           for _ in range(200)))
    assert bd.main([str(src), "--output-root", str(root), "--vocab-size", "300", "--val-docs", "40",
                    "--shard-tokens", "600", "--caseops", "--name", "c"]) == 0
    return root / "datasets" / "c", root / "tokenizers" / "c_300_caseops_bpe.model"


def make_romeerp(root: Path, build, published=True, n_train=2):
    """romeerp/parameter-golf-caseops-v1 as the records use it, holding the local CaseOps build."""
    folder, model = build
    manifest = json.loads((folder / "manifest.json").read_text())
    val = manifest["splits"]["val"]["files"]
    files = {f"datasets/{CASEOPS}/{name}": (folder / name).read_bytes() for name in val}
    for i in range(n_train):
        files[f"datasets/{CASEOPS}/fineweb_train_{i:06d}.bin"] = shard([1, 20 + i, 21])
    if published:  # raw-byte counts: here ours plus one per non-BOS token, to tell them apart
        for name in manifest["splits"]["val"]["byte_files"]:
            raw = bytearray((folder / name).read_bytes())
            values = struct.unpack_from(f"<{(len(raw) - 1024) // 2}H", raw, 1024)
            tokens = struct.unpack_from(f"<{len(values)}H", (folder / name.replace("_bytes", "")).read_bytes(), 1024)
            raw[1024:] = struct.pack(f"<{len(values)}H", *[v + (t != 1) for v, t in zip(values, tokens)])
            files[f"datasets/{CASEOPS}/{name}"] = bytes(raw)
    files[CASEOPS_MODEL] = model.read_bytes()
    files[CASEOPS_MODEL.replace(".model", ".vocab")] = model.with_suffix(".vocab").read_bytes()
    tokenizer = {"name": "sp_bpe_8192_lossless_caps_caseops_v1_reserved", "kind": "sentencepiece_bpe",
                 "vocab_size": 300, "model_path": CASEOPS_MODEL,
                 "vocab_path": CASEOPS_MODEL.replace(".model", ".vocab"),
                 "text_transform": "lossless_caps_caseops_v1", "optional": ["vocab_path"]}
    dataset = {"name": CASEOPS, "tokenizer_name": tokenizer["name"], "val_bytes_glob": f"datasets/{CASEOPS}/"
               "fineweb_val_bytes_*.bin", "stats": {"files_val": len(val), "files_train": n_train,
                                                    "tokens_val": manifest["splits"]["val"]["tokens"]}}
    files["manifest.json"] = json.dumps({"datasets": [dataset], "tokenizers": [tokenizer]}).encode()
    write_tree(root / ROMEERP / "datasets", files)
    return files


@pytest.mark.parametrize("variant", ["sp8192_caseops", "sp8192_lossless_caps_caseops_v1_reserved"])
def test_caseops_download_recomputes_the_byte_sidecar(hub, capsys, caseops_build, variant):
    files = make_romeerp(hub.root, caseops_build)
    assert dl.main(["--variant", variant, "--train-shards", "1"]) == 0
    assert set(hub.repos) == {ROMEERP}
    folder = hub.data / "datasets" / CASEOPS
    built = caseops_build[0]
    names = sorted(p.name for p in built.glob("fineweb_val_bytes_*"))
    assert len(names) > 1
    for name in names:  # the builder's bytes exactly: the same code path
        assert (folder / name).read_bytes() == (built / name).read_bytes()
        published = (folder / name.replace("fineweb_val_bytes_", "published_val_bytes_")).read_bytes()
        assert published == files[f"datasets/{CASEOPS}/{name}"]
    manifest = json.loads((built / "manifest.json").read_text())
    ours, tokens = manifest["splits"]["val"]["bytes"], manifest["splits"]["val"]["tokens"]
    theirs = ours + tokens - manifest["splits"]["val"]["docs"]
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == (f"byte sidecar: {ours:,} bytes over {tokens:,} val tokens, recomputed from the tokens "
                       f"({len(names)} file(s) written, fineweb_val_bytes_*.bin); the published sidecar counts "
                       f"{theirs:,} raw input bytes ({(theirs - ours) / ours:+.4%})")
    assert out[-1] == f"DATA_PATH={folder} TOKENIZER_PATH={hub.data / CASEOPS_MODEL} VOCAB_SIZE=300"
    run = subprocess.run([sys.executable, str(REPO / "data" / "build_dataset.py"), "--verify", str(folder)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    assert "data/manifest.json stats" in run.stdout and f"byte sidecars: {ours:,} bytes, per-document sums match" \
        in run.stdout
    hub.calls.clear()  # a second run fetches nothing and rewrites nothing
    assert dl.main(["--variant", variant, "--train-shards", "1"]) == 0
    assert hub.calls == [] and "(0 file(s) written" in capsys.readouterr().out
    (folder / names[1]).write_bytes(shard([0, 1]))  # a damaged sidecar is rewritten
    assert dl.main(["--variant", variant, "--train-shards", "1"]) == 0
    assert (folder / names[1]).read_bytes() == (built / names[1]).read_bytes()


def test_caseops_builtin_table_and_no_published_sidecar(hub, monkeypatch, capsys, caseops_build, tmp_path):
    """The record's command: MATCHED_FINEWEB_REPO_ID=romeerp/... --variant ..._reserved --skip-manifest."""
    build = tmp_path / "one"
    assert bd.main([str(caseops_build[0].parent.parent / "docs.jsonl"), "--output-root", str(build), "--vocab-size",
                    "300", "--val-docs", "40", "--caseops", "--name", "c"]) == 0  # one val shard, as published
    make_romeerp(hub.root, (build / "datasets" / "c", build / "tokenizers" / "c_300_caseops_bpe.model"),
                 published=False, n_train=3)
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", ROMEERP)
    monkeypatch.setattr(dl, "DEFAULT_TRAIN_SHARDS", 3)
    assert dl.main(["--variant", "sp8192_lossless_caps_caseops_v1_reserved", "--skip-manifest"]) == 0
    out = capsys.readouterr().out
    assert f"{CASEOPS} from {ROMEERP} (per the built-in table): 1 val + 3 train shards" in out
    assert f", datasets/{CASEOPS}/fineweb_val_bytes_000000.bin not in the repository;" in out
    assert "byte sidecar: " in out and "published" not in out.split("byte sidecar: ")[1].splitlines()[0]
    folder = hub.data / "datasets" / CASEOPS
    assert (folder / "fineweb_val_bytes_000000.bin").read_bytes() == (
        build / "datasets" / "c" / "fineweb_val_bytes_000000.bin").read_bytes()
    assert dl.main(["--variant", "sp8192_caseops", "--skip-manifest", "--train-shards", "81"]) == 2
    assert "has only 80 train shards (per the built-in table)" in capsys.readouterr().err


def test_caseops_without_sentencepiece_is_refused_before_any_download(hub, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    monkeypatch.delitem(sys.modules, "caseops", raising=False)
    assert dl.main(["--variant", "sp8192_caseops"]) == 2
    assert capsys.readouterr().err == ("error: the CaseOps variant recomputes its byte sidecar and needs "
                                       "sentencepiece: pip install -r requirements.txt\n")
    assert hub.calls == [] and not hub.data.exists()
