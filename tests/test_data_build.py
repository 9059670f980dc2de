"""Offline dataset builder and verifier (data/build_dataset.py). Its bad-input cases (tests/cases_data_scripts.py)
run in the project-wide table, tests/test_bad_inputs.py."""
import hashlib
import importlib.util
import io
import json
import random
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data" / "build_dataset.py"
spec = importlib.util.spec_from_file_location("build_dataset", SCRIPT)
bd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bd)
cases_spec = importlib.util.spec_from_file_location("cases_data_scripts", REPO / "tests" / "cases_data_scripts.py")
cases = importlib.util.module_from_spec(cases_spec)
cases_spec.loader.exec_module(cases)

VOCAB = 384
VAL_DOCS = 12
SHARD_TOKENS = 1000
WORDS = ("the quick brown fox jumps over a lazy dog while model tokens stream into shards of "
         "training data; golf parameter byte piece window value café naïve Ｆｕｌｌ ① 2024 3.14 x=42").split()
LITERAL_DOC = "Hello   world\n\nＦｕｌｌ ①\tend  "


def make_docs(n=160, seed=0):
    rng = random.Random(seed)
    docs = [LITERAL_DOC]
    for i in range(n - 1):
        paras = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))) for _ in range(rng.randint(1, 3))]
        docs.append(("\n\n" if i % 2 else "\n").join(paras) + ("  \n" if i % 3 else ""))
    return docs


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


def build(*args):
    return bd.main([str(a) for a in args])


def read_shard(path):
    raw = path.read_bytes()
    magic, version, count = struct.unpack_from("<3i", raw)
    assert (magic, version) == (20240520, 1)
    return list(struct.unpack_from(f"<{count}H", raw, 1024))


def split_stream(folder, split):
    return [t for f in sorted(folder.glob(f"fineweb_{split}_[0-9]*.bin")) for t in read_shard(f)]


def documents_of(stream):
    """Token lists between BOS markers."""
    assert stream[0] == 1
    docs = []
    for t in stream:
        if t == 1:
            docs.append([])
        else:
            docs[-1].append(t)
    return docs


def snapshot(*folders):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    docs = make_docs()
    return docs, write_jsonl(tmp_path_factory.mktemp("src") / "docs.jsonl", docs)


@pytest.fixture(scope="session")
def built(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("out")
    assert build(corpus[1], "--output-root", root, "--vocab-size", VOCAB, "--val-docs", VAL_DOCS,
                 "--shard-tokens", SHARD_TOKENS, "--name", "tiny_sp384") == 0
    folder = root / "datasets" / "tiny_sp384"
    return root, folder, json.loads((folder / "manifest.json").read_text())


def test_writes_expected_files(built):
    root, folder, manifest = built
    assert (root / "tokenizers" / "tiny_384_bpe.model").is_file()
    assert (root / "tokenizers" / "tiny_384_bpe.vocab").read_text().splitlines()[:4] == [
        "<pad>\t0", "<s>\t0", "</s>\t0", "<unk>\t0"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(manifest["files"]) + ["manifest.json", "tokenizer.sha256"]
    assert manifest["splits"]["val"]["files"] == ["fineweb_val_000000.bin"]
    train = manifest["splits"]["train"]["files"]
    assert len(train) > 3 and train == [f"fineweb_train_{i:06d}.bin" for i in range(len(train))]
    assert not list(root.rglob(".*")), "temporary files left behind"


def test_header_and_layout_byte_by_byte(built):
    _, folder, manifest = built
    for name, info in manifest["files"].items():
        raw = (folder / name).read_bytes()
        n = info["tokens"]
        assert raw[:4] == b"\x88\xd8\x34\x01"  # 20240520 little-endian
        assert raw[4:8] == b"\x01\x00\x00\x00"
        assert raw[8:12] == n.to_bytes(4, "little")
        assert raw[12:1024] == bytes(1012)
        assert len(raw) == 1024 + 2 * n
    first = (folder / "fineweb_val_000000.bin").read_bytes()
    assert first[1024:1026] == b"\x01\x00"  # the stream opens with BOS as uint16 LE


def test_shards_hold_shard_tokens_and_docs_span_them(built):
    _, folder, manifest = built
    train = manifest["splits"]["train"]["files"]
    counts = [manifest["files"][f]["tokens"] for f in train]
    assert counts[:-1] == [SHARD_TOKENS] * (len(counts) - 1) and 0 < counts[-1] <= SHARD_TOKENS
    assert sum(counts) == manifest["splits"]["train"]["tokens"]
    assert any(read_shard(folder / f)[0] != 1 for f in train[1:]), "expected a document spanning two shards"


def test_bos_before_every_document_and_nowhere_else(built, corpus):
    _, folder, manifest = built
    for split, n_docs in (("val", VAL_DOCS), ("train", len(corpus[0]) - VAL_DOCS)):
        stream = split_stream(folder, split)
        assert stream[0] == 1 and stream[-1] != 1
        assert stream.count(1) == n_docs == manifest["splits"][split]["docs"]
        assert all(documents_of(stream)), "a document with no tokens"
        assert len(stream) == manifest["splits"][split]["tokens"]


def test_decoding_each_document_gives_its_normalised_text(built, corpus):
    root, folder, _ = built
    sp = spm.SentencePieceProcessor(model_file=str(root / "tokenizers" / "tiny_384_bpe.model"))
    decoded = [sp.decode(d) for split in ("val", "train") for d in documents_of(split_stream(folder, split))]
    assert len(decoded) == len(corpus[0])
    for text, got in zip(corpus[0], decoded):
        # normalize() runs only the model's normaliser (no pieces), so this is an independent check
        assert got == sp.normalize(text).replace("\u2581", " ")
    assert decoded[0] == "Hello world Full 1 end"  # NFKC, whitespace collapsed, first doc is in val


def test_manifest_counts_hashes_and_tokenizer(built, corpus):
    root, folder, manifest = built
    for name, info in manifest["files"].items():
        assert info["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    model = (folder / manifest["tokenizer"]["model_path"]).resolve()
    assert model == (root / "tokenizers" / "tiny_384_bpe.model").resolve()
    assert manifest["tokenizer"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert manifest["tokenizer"]["vocab_size"] == VOCAB == sp.vocab_size()
    assert manifest["build"]["sources"] == [{"path": str(corpus[1]),
                                             "sha256": hashlib.sha256(corpus[1].read_bytes()).hexdigest()}]
    assert manifest["format"]["bos_id"] == 1
    assert manifest["splits"]["val"]["docs"] + manifest["splits"]["train"]["docs"] == len(corpus[0])


def test_trained_tokenizer_has_challenge_settings(built):
    sp = spm.SentencePieceProcessor(model_file=str(built[0] / "tokenizers" / "tiny_384_bpe.model"))
    assert [sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()] == [0, 1, 2, 3]
    assert sp.id_to_piece(4) == "<0x00>" and sp.is_byte(4)  # byte fallback pieces follow the specials
    assert sp.encode("2024") == [sp.piece_to_id(c) for c in "2024"]  # split_digits
    assert not sp.id_to_piece(sp.encode("fox")[0]).startswith("\u2581")  # no dummy prefix
    assert sp.id_to_piece(sp.encode("a fox")[1]).startswith("\u2581")


def test_same_inputs_give_byte_identical_outputs(built, corpus, tmp_path):
    root, folder, _ = built
    assert build(corpus[1], "--output-root", tmp_path, "--vocab-size", VOCAB, "--val-docs", VAL_DOCS,
                 "--shard-tokens", SHARD_TOKENS, "--name", "tiny_sp384") == 0
    assert snapshot(tmp_path) == snapshot(root)
    # rebuilding the same dataset in place needs no --overwrite and changes nothing
    assert build(corpus[1], "--output-root", tmp_path, "--vocab-size", VOCAB, "--val-docs", VAL_DOCS,
                 "--shard-tokens", SHARD_TOKENS, "--name", "tiny_sp384") == 0
    assert snapshot(tmp_path) == snapshot(root)


def test_reusing_a_tokenizer_gives_the_same_shards(built, corpus, tmp_path):
    root, folder, manifest = built
    model = root / "tokenizers" / "tiny_384_bpe.model"
    assert build(corpus[1], "--output-root", tmp_path, "--tokenizer", model, "--val-docs", VAL_DOCS,
                 "--shard-tokens", SHARD_TOKENS, "--name", "reuse") == 0
    out = tmp_path / "datasets" / "reuse"
    reused = json.loads((out / "manifest.json").read_text())
    assert reused["files"] == manifest["files"]
    assert reused["build"]["tokenizer"] == {"path": str(model), "sha256": manifest["tokenizer"]["sha256"]}
    assert (out / reused["tokenizer"]["model_path"]).resolve() == model.resolve()
    assert not (tmp_path / "tokenizers").exists()


def test_txt_sources_one_document_per_file_or_per_paragraph(built, tmp_path):
    model = built[0] / "tokenizers" / "tiny_384_bpe.model"
    a = tmp_path / "a.txt"
    a.write_text("first paragraph of a\n\n\nsecond of a\n  \nthird of a\n", encoding="utf-8")
    b = tmp_path / "b.txt"
    b.write_text("only paragraph of b", encoding="utf-8")
    common = ["--output-root", tmp_path / "out", "--tokenizer", model, "--val-docs", 1]
    assert build(a, b, *common, "--name", "files") == 0
    assert build(a, b, *common, "--name", "paras", "--split-paragraphs") == 0
    sp = spm.SentencePieceProcessor(model_file=str(model))

    def texts(name):
        folder = tmp_path / "out" / "datasets" / name
        return [sp.decode(d) for s in ("val", "train") for d in documents_of(split_stream(folder, s))]

    assert texts("files") == ["first paragraph of a second of a third of a", "only paragraph of b"]
    assert texts("paras") == ["first paragraph of a", "second of a", "third of a", "only paragraph of b"]


def test_no_arguments_builds_the_pydoc_sample(tmp_path, capsys, monkeypatch):
    from pydoc_data.topics import topics
    monkeypatch.chdir(tmp_path)
    n_docs = sum(len(bd.paragraphs(topics[k])) for k in topics)
    assert 2000 < n_docs < 4000
    assert build("--output-root", tmp_path) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "datasets" / "sample_sp1024"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["splits"]["val"]["docs"] == n_docs // 10
    assert manifest["splits"]["train"]["docs"] == n_docs - n_docs // 10
    assert manifest["tokenizer"]["vocab_size"] == 1024
    assert (tmp_path / "tokenizers" / "sample_1024_bpe.model").is_file()
    assert (tmp_path / "tokenizers" / "sample_1024_bpe.vocab").is_file()
    assert ("DATA_PATH=datasets/sample_sp1024 TOKENIZER_PATH=tokenizers/sample_1024_bpe.model VOCAB_SIZE=1024"
            in out.splitlines())
    assert bd.main(["--verify", str(folder)]) == 0


# ---------------------------------------------------------------- refusals

def refused(capsys, *args):
    """Run a build that must be refused; return its one-line message."""
    assert build(*args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:]
    return lines[-1]


def test_refuses_empty_input(tmp_path, capsys):
    empty_txt = tmp_path / "empty.txt"
    empty_txt.write_text("  \n\n")
    blank_jsonl = write_jsonl(tmp_path / "blank.jsonl", ["", "   \n"])
    err = refused(capsys, empty_txt, blank_jsonl, "--output-root", tmp_path / "out")
    assert "holds no documents" in err
    assert not (tmp_path / "out").exists()


def test_refuses_a_vocab_the_text_cannot_reach(tmp_path, capsys):
    src = write_jsonl(tmp_path / "small.jsonl", make_docs(20))
    err = refused(capsys, src, "--output-root", tmp_path / "out", "--vocab-size", 4000)
    assert "--vocab-size 4000 cannot be reached on this text: SentencePiece stopped at" in err
    err = refused(capsys, src, "--output-root", tmp_path / "out", "--vocab-size", 270)
    assert "--vocab-size 270 is too small for this text: it needs at least" in err
    assert not (tmp_path / "out").exists()


def test_refuses_ids_that_do_not_fit_uint16(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build(corpus[1], "--output-root", tmp_path, "--vocab-size", 70000)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: --vocab-size 70000 is out of range: give 260 (4 special ids + 256 byte pieces) to 65536 "
        "(ids are stored as uint16) (see --help)\n")
    assert not list(tmp_path.iterdir())


def test_refuses_to_replace_a_different_dataset(built, corpus, tmp_path, capsys):
    model = built[0] / "tokenizers" / "tiny_384_bpe.model"
    args = [corpus[1], "--output-root", tmp_path, "--tokenizer", model, "--name", "d"]
    assert build(*args, "--val-docs", 5) == 0
    before = snapshot(tmp_path)
    err = refused(capsys, *args, "--val-docs", 6)
    assert err.endswith("datasets/d already holds a different dataset (differs in: val_docs); "
                        "pass --overwrite to replace it or --name to build elsewhere")
    assert snapshot(tmp_path) == before
    assert build(*args, "--val-docs", 6, "--overwrite") == 0
    assert json.loads((tmp_path / "datasets" / "d" / "manifest.json").read_text())["splits"]["val"]["docs"] == 6
    foreign = tmp_path / "datasets" / "foreign"
    foreign.mkdir()
    (foreign / "fineweb_val_000000.bin").write_bytes(b"x")
    assert "already holds files this script did not build" in refused(capsys, *args[:-1], "foreign")


def test_refuses_to_replace_a_different_tokenizer(corpus, tmp_path, capsys):
    common = [corpus[1], "--output-root", tmp_path, "--vocab-size", VOCAB]
    assert build(*common, "--name", "t_sp384", "--val-docs", 5) == 0  # writes tokenizers/t_384_bpe.model
    before = snapshot(tmp_path)
    err = refused(capsys, *common, "--name", "t", "--val-docs", 9)  # same tokenizer name, other train docs
    assert err.endswith("tokenizers/t_384_bpe.model already holds a different tokenizer; "
                        "pass --overwrite to replace it or --name to build elsewhere")
    assert snapshot(tmp_path) == before


def test_progress_on_long_inputs(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bd, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(bd, "ENCODE_BATCH_DOCS", 50)
    assert build(corpus[1], "--output-root", tmp_path, "--vocab-size", VOCAB) == 0
    progress = [line for line in capsys.readouterr().err.splitlines() if "docs/s" in line]
    assert [line.split()[0] for line in progress] == ["16", "66", "116", "160"]  # 16 val docs, then train
    assert progress[-1].endswith("tokens written")


def test_failed_build_leaves_the_old_dataset_untouched(built, corpus, tmp_path, monkeypatch, capsys):
    model = built[0] / "tokenizers" / "tiny_384_bpe.model"
    args = [corpus[1], "--output-root", tmp_path, "--tokenizer", model, "--name", "d", "--shard-tokens", 500]
    assert build(*args, "--val-docs", 5) == 0
    before = snapshot(tmp_path)
    real = bd.write_atomic

    def failing(path, data):
        if path.name == "manifest.json":
            raise OSError("disk full")
        return real(path, data)

    monkeypatch.setattr(bd, "write_atomic", failing)
    assert build(*args, "--val-docs", 7, "--overwrite") == 1
    assert capsys.readouterr().err == "error: disk full\n"
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == ["d"]


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\nnot json\n', "bad.jsonl:2: expected a JSON object with a string \"text\" field"),
    ('{"body": "no text field"}\n', "bad.jsonl:1: expected a JSON object"),
    ('{"text": 5}\n', "bad.jsonl:1: expected a JSON object"),
])
def test_refuses_malformed_jsonl(tmp_path, capsys, content, message):
    src = tmp_path / "bad.jsonl"
    src.write_text(content)
    assert message in refused(capsys, src, "--output-root", tmp_path / "out")


def test_refuses_bad_splits_and_mismatched_vocab(built, corpus, tmp_path, capsys):
    model = built[0] / "tokenizers" / "tiny_384_bpe.model"
    err = refused(capsys, corpus[1], "--output-root", tmp_path, "--tokenizer", model, "--val-docs", 500)
    assert "500 validation documents leave none for training (the input has 160)" in err
    err = refused(capsys, corpus[1], "--output-root", tmp_path, "--tokenizer", model, "--vocab-size", 512)
    assert "--vocab-size 512 does not match" in err
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a model")
    err = refused(capsys, corpus[1], "--output-root", tmp_path, "--tokenizer", garbage)
    assert err == f"error: --tokenizer {garbage} is not a SentencePiece .model file"


@pytest.mark.parametrize("args, message", [
    (["missing.txt"], "source missing.txt does not exist"),
    (["notes.md"], "only .txt and .jsonl files are supported"),
    (["--val-fraction", "1.5"], "--val-fraction 1.5 must be between 0 and 1"),
    (["--shard-tokens", "0"], "--shard-tokens 0 is out of range: give 1 to 2147483647"),
    (["--val-docs", "3", "--val-fraction", "0.2"], "not allowed with argument"),
    (["--name", "../escape"], "--name '../escape' must be a plain folder name"),
])
def test_rejects_bad_flags(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        bd.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.endswith(" (see --help)\n")


def test_cli_help_and_user_errors_without_traceback(tmp_path):
    help_run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0 and "--vocab-size" in help_run.stdout and "--verify" in help_run.stdout
    assert "--caseops" in help_run.stdout and "fineweb_val_bytes_NNNNNN.bin" in help_run.stdout
    corpus = tmp_path / "c.txt"
    corpus.write_text("one\n\ntwo\n\nthree")
    run = subprocess.run([sys.executable, str(SCRIPT), str(corpus), "--split-paragraphs", "--val-docs", "3",
                          "--output-root", str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr == (
        "error: 3 validation documents leave none for training (the input has 3); lower --val-docs/--val-fraction "
        "or give more text\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


# ---------------------------------------------------------------- verify

def verify(folder, capsys, *extra):
    rc = bd.main(["--verify", str(folder), *extra])
    return rc, capsys.readouterr().out.strip().splitlines()


def test_verify_accepts_a_fresh_build(built, capsys):
    rc, lines = verify(built[1], capsys)
    assert rc == 0 and len(lines) == 1 and lines[0].startswith("OK ")
    assert "ids < 384" in lines[0] and "manifest.json (sha256, counts)" in lines[0]


def shard(tokens):
    return struct.pack("<256i", 20240520, 1, len(tokens), *[0] * 253) + struct.pack(f"<{len(tokens)}H", *tokens)


def test_verify_reports_each_problem_by_file(built, tmp_path, capsys):
    folder = tmp_path / "d"
    shutil.copytree(built[1], folder)
    raw = bytearray((folder / "fineweb_train_000000.bin").read_bytes())
    assert raw[2000:2002] != b"\x05\x00"
    raw[2000:2002] = b"\x05\x00"  # a different, still valid token
    (folder / "fineweb_train_000000.bin").write_bytes(bytes(raw))
    (folder / "fineweb_train_000001.bin").write_bytes((folder / "fineweb_train_000001.bin").read_bytes()[:-2])
    (folder / "fineweb_train_000002.bin").unlink()
    (folder / "fineweb_train_000003.bin").write_bytes(shard([1, 5, 383, 384, 7]))
    (folder / "fineweb_train_999999.bin").write_bytes(shard([1, 2]))
    rc, lines = verify(folder, capsys)
    assert rc == 1 and lines[-1] == f"FAILED: {len(lines) - 1} problem(s) in {folder}"
    expected = [
        "fineweb_train_000000.bin: token count or sha256 differs from manifest.json",
        "fineweb_train_000001.bin: header says",
        "fineweb_train_000003.bin: token id 384 >= vocab size 384",
        "fineweb_train_000003.bin: token count or sha256 differs from manifest.json",
        "fineweb_train_999999.bin: not listed in manifest.json",
        "fineweb_train_000002.bin: listed in manifest.json but missing",
        "train split:",
    ]
    assert len(lines) - 1 == len(expected)
    for line, start in zip(lines, expected):
        assert line.startswith(start), (line, start)
    (folder / "fineweb_val_000000.bin").write_bytes(b"\x00" * 1100)
    rc, lines = verify(folder, capsys)
    assert "fineweb_val_000000.bin: header magic/version 0/0, expected 20240520/1" in lines


def test_verify_official_download_against_its_stats(tmp_path, capsys):
    folder = tmp_path / "datasets" / "fineweb10B_sp1024"
    folder.mkdir(parents=True)
    (folder / "fineweb_val_000000.bin").write_bytes(shard([1, 9, 9, 1, 1023]))
    (folder / "fineweb_train_000000.bin").write_bytes(shard([1, 4]))
    stats = {"files_train": 80, "files_val": 1, "tokens_val": 5}
    top = {"datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_1024", "stats": stats}],
           "tokenizers": [{"name": "sp_1024", "vocab_size": 1024}]}
    (tmp_path / "manifest.json").write_text(json.dumps(top))
    rc, lines = verify(folder, capsys)
    assert rc == 0 and "checked against data/manifest.json stats" in lines[0] and "ids < 1024" in lines[0]
    stats["tokens_val"] = 6
    (tmp_path / "manifest.json").write_text(json.dumps(top))
    rc, lines = verify(folder, capsys)
    assert rc == 1
    assert lines[0] == "val split: 1 shards / 5 tokens found, data/manifest.json says 1 shards / 6 tokens"


def test_verify_without_manifest_checks_headers_and_given_vocab(tmp_path, capsys):
    (tmp_path / "fineweb_val_000000.bin").write_bytes(shard([1, 300]))
    rc, lines = verify(tmp_path, capsys)
    assert rc == 0 and "no manifest (headers only)" in lines[0]
    rc, lines = verify(tmp_path, capsys, "--vocab-size", "256")
    assert rc == 1 and lines[0] == "fineweb_val_000000.bin: token id 300 >= vocab size 256"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert verify(empty, capsys)[0] == 1


# ---------------------------------------------------------------- vocab 4096 / 8192 sample, tokenizer.sha256

@pytest.mark.parametrize("vocab", [4096, 8192])
def test_builtin_sample_at_the_frontier_vocab_sizes(tmp_path, capsys, vocab):
    started = time.monotonic()
    assert build("--vocab-size", vocab, "--output-root", tmp_path / "a") == 0
    elapsed = time.monotonic() - started
    assert elapsed < 30, f"building sample_sp{vocab} took {elapsed:.1f}s"
    folder = tmp_path / "a" / "datasets" / f"sample_sp{vocab}"
    model = tmp_path / "a" / "tokenizers" / f"sample_{vocab}_bpe.model"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.vocab_size() == vocab and bd.tokenizer_problem(sp) is None
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == vocab
    assert max(max(split_stream(folder, s)) for s in ("val", "train")) >= vocab // 2  # the upper ids are used
    assert (folder / "tokenizer.sha256").read_text() == (
        f"{hashlib.sha256(model.read_bytes()).hexdigest()}  sample_{vocab}_bpe.model\n")
    assert (f"DATA_PATH={folder} TOKENIZER_PATH={model} VOCAB_SIZE={vocab}"
            in capsys.readouterr().out.splitlines())
    assert build("--vocab-size", vocab, "--output-root", tmp_path / "b") == 0  # deterministic
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
    assert bd.main(["--verify", str(folder)]) == 0


def test_tokenizer_sha256_names_the_tokenizer_in_sha256sum_format(built):
    root, folder, manifest = built
    model = root / "tokenizers" / "tiny_384_bpe.model"
    assert (folder / "tokenizer.sha256").read_bytes() == (
        manifest["tokenizer"]["sha256"].encode() + b"  tiny_384_bpe.model\n")
    assert manifest["tokenizer"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "--check", str(folder / "tokenizer.sha256")], cwd=model.parent,
                               capture_output=True, text=True)
        assert check.returncode == 0 and check.stdout == "tiny_384_bpe.model: OK\n"


def test_reused_tokenizer_is_named_in_tokenizer_sha256(built, corpus, tmp_path):
    model = tmp_path / "renamed.model"
    shutil.copy(built[0] / "tokenizers" / "tiny_384_bpe.model", model)
    assert build(corpus[1], "--output-root", tmp_path, "--tokenizer", model, "--val-docs", VAL_DOCS, "--name", "r") == 0
    assert (tmp_path / "datasets" / "r" / "tokenizer.sha256").read_text() == (
        f"{hashlib.sha256(model.read_bytes()).hexdigest()}  renamed.model\n")


# ---------------------------------------------------------------- tokenizer refusals

def small_model(path, **settings):
    text = [line for doc in make_docs(60) for line in doc.splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, model_type="bpe", vocab_size=300,
                                   hard_vocab_limit=False, num_threads=1, minloglevel=2, **settings)
    path.write_bytes(model.getvalue())
    return path


def test_refuses_a_tokenizer_without_byte_fallback(corpus, tmp_path, capsys):
    model = small_model(tmp_path / "nobytes.model", byte_fallback=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3)
    err = refused(capsys, corpus[1], "--output-root", tmp_path / "out", "--tokenizer", model)
    assert err == (f"error: --tokenizer {model}: it cannot represent every byte: 256 of the 256 byte pieces "
                   f"<0x00>..<0xFF> are missing (e.g. <0x00>), so text outside its pieces would become <unk>; "
                   f"use a tokenizer trained with byte_fallback=True")
    assert not (tmp_path / "out").exists()


def test_refuses_a_tokenizer_with_other_bos_eos_ids(corpus, tmp_path, capsys):
    model = small_model(tmp_path / "ids.model", byte_fallback=True, unk_id=0, bos_id=2, eos_id=3)
    err = refused(capsys, corpus[1], "--output-root", tmp_path / "out", "--tokenizer", model)
    assert err == (f"error: --tokenizer {model}: its BOS/EOS ids are 2/3 but the challenge's shards and trainer "
                   f"use 1/2; use a tokenizer trained with bos_id=1 eos_id=2")
    no_eos = small_model(tmp_path / "noeos.model", byte_fallback=True, pad_id=0, bos_id=1, eos_id=-1, unk_id=3)
    assert "its BOS/EOS ids are 1/-1" in refused(capsys, corpus[1], "--output-root", tmp_path / "out",
                                                 "--tokenizer", no_eos)
    assert not (tmp_path / "out").exists()


def test_a_trained_tokenizer_is_checked_too(corpus, monkeypatch):
    """The challenge's settings always give byte pieces and ids 1/2; the builder does not take it on trust."""
    docs = make_docs(40)
    assert bd.tokenizer_problem(spm.SentencePieceProcessor(model_proto=bd.train_tokenizer(iter(docs), 384))) is None
    monkeypatch.setitem(bd.TRAINER_SETTINGS, "byte_fallback", False)
    with pytest.raises(RuntimeError, match="the trained tokenizer is unusable: it cannot represent every byte"):
        bd.train_tokenizer(iter(docs), 384)


# ---------------------------------------------------------------- verify: <unk>, tokenizer.sha256

def test_verify_reports_unknown_tokens(built, tmp_path, capsys):
    (tmp_path / "fineweb_val_000000.bin").write_bytes(shard([1, 3, 50, 3, 1, 3]))
    rc, lines = verify(tmp_path, capsys)
    assert rc == 1 and lines[0] == (
        "fineweb_val_000000.bin: 3 unknown token(s) (<unk>, id 3): the tokenizer that wrote it could not represent "
        "some text (no byte fallback?); rebuild with one that has it")
    folder = tmp_path / "d"
    shutil.copytree(built[1], folder)
    raw = bytearray((folder / "fineweb_train_000001.bin").read_bytes())
    raw[1100:1102] = b"\x03\x00"
    (folder / "fineweb_train_000001.bin").write_bytes(bytes(raw))
    rc, lines = verify(folder, capsys)
    assert rc == 1 and lines[0].startswith("fineweb_train_000001.bin: 1 unknown token(s) (<unk>, id 3)")


def test_verify_checks_tokenizer_sha256(built, tmp_path, capsys):
    root, _, manifest = built
    shutil.copytree(root, tmp_path / "r")
    folder = tmp_path / "r" / "datasets" / "tiny_sp384"
    rc, lines = verify(folder, capsys)
    assert rc == 0 and lines[0].endswith("; tokenizer.sha256 matches tiny_384_bpe.model")
    model = tmp_path / "r" / "tokenizers" / "tiny_384_bpe.model"
    model.write_bytes(model.read_bytes() + b"\0")  # the tokenizer was replaced after the build
    rc, lines = verify(folder, capsys)
    actual = hashlib.sha256(model.read_bytes()).hexdigest()
    assert rc == 1 and lines[:-1] == [
        f"tokenizer.sha256: {model} has sha256 {actual[:16]}..., not the recorded "
        f"{manifest['tokenizer']['sha256'][:16]}... (the tokenizer was replaced; these shards need the one they "
        f"were written with)"]
    (folder / "tokenizer.sha256").write_text("abc  tiny_384_bpe.model\n")
    rc, lines = verify(folder, capsys)
    assert rc == 1 and lines[0] == "tokenizer.sha256: not one line '<64 hex digits>  <tokenizer file name>'"


def test_verify_checks_tokenizer_sha256_of_a_download(tmp_path, capsys):
    folder = tmp_path / "datasets" / "fineweb10B_sp8192"
    folder.mkdir(parents=True)
    (folder / "fineweb_val_000000.bin").write_bytes(shard([1, 8191]))
    (tmp_path / "tokenizers").mkdir()
    (tmp_path / "tokenizers" / "fineweb_8192_bpe.model").write_bytes(b"model")
    (folder / "tokenizer.sha256").write_text(f"{hashlib.sha256(b'model').hexdigest()}  fineweb_8192_bpe.model\n")
    rc, lines = verify(folder, capsys)
    assert rc == 0 and lines[0].endswith("no manifest (headers only); tokenizer.sha256 matches fineweb_8192_bpe.model")
    (tmp_path / "tokenizers" / "fineweb_8192_bpe.model").write_bytes(b"other")
    rc, lines = verify(folder, capsys)
    assert rc == 1 and lines[0].startswith("tokenizer.sha256: ") and "not the recorded" in lines[0]


# ---------------------------------------------------------------- --caseops

caseops = bd.caseops
CASED_WORDS = WORDS + "The NASA iPhone McDonald's OpenAI HTTPServer Straße Ωμέγα \ue001 \ue004\ue002 \ue000".split()


def make_cased_docs(n=160, seed=7):
    rng = random.Random(seed)
    return [" ".join(rng.choice(CASED_WORDS) for _ in range(rng.randint(4, 50))) + rng.choice(["", ".", "\n\nEnd."])
            for _ in range(n)]


@pytest.fixture(scope="session")
def cased_corpus(tmp_path_factory):
    docs = make_cased_docs()
    return docs, write_jsonl(tmp_path_factory.mktemp("cased_src") / "cased.jsonl", docs)


CASED_ARGS = ["--vocab-size", 400, "--val-docs", 30, "--shard-tokens", 400, "--caseops"]


@pytest.fixture(scope="session")
def cased_built(cased_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("cased_out")
    assert build(cased_corpus[1], "--output-root", root, *CASED_ARGS) == 0
    folder = root / "datasets" / "custom_sp400_caseops"
    return root, folder, json.loads((folder / "manifest.json").read_text())


def read_values(path):
    return np.fromfile(path, dtype="<u2", offset=1024)


def test_caseops_names_manifest_and_sidecar_files(cased_built):
    root, folder, manifest = cased_built
    model = root / "tokenizers" / "custom_400_caseops_bpe.model"
    assert model.is_file() and (root / "tokenizers" / "custom_400_caseops_bpe.vocab").is_file()
    assert manifest["text_transform"] == "caseops_v1" and manifest["build"]["text_transform"] == "caseops_v1"
    val = manifest["splits"]["val"]
    assert len(val["files"]) > 1, "the sidecar must be cut like the val shards"
    assert val["byte_files"] == [f"fineweb_val_bytes_{i:06d}.bin" for i in range(len(val["files"]))]
    assert sorted(p.name for p in folder.glob("fineweb_val_bytes_*")) == val["byte_files"]
    total = 0
    for shard, sidecar in zip(val["files"], val["byte_files"]):
        tokens, raw = read_values(folder / shard), (folder / sidecar).read_bytes()
        assert raw[:12] == struct.pack("<3i", 20240520, 1, len(tokens)) and raw[12:1024] == bytes(1012)
        assert manifest["files"][sidecar] == {"tokens": len(tokens), "sha256": hashlib.sha256(raw).hexdigest()}
        counts = read_values(folder / sidecar)
        assert len(counts) == len(tokens) and not counts[tokens == 1].any()
        assert (counts[tokens > 7] > 0).all()  # every token but BOS and the operators stands for some bytes
        total += int(counts.sum())
    assert val["bytes"] == total
    assert "byte_files" not in manifest["splits"]["train"]
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert caseops.reserved_pieces_problem(sp) is None and [sp.id_to_piece(i) for i in range(4, 8)] == list(
        caseops.OPERATORS)


def test_caseops_sidecar_per_document_and_decoded_text(cased_built, cased_corpus):
    root, folder, manifest = cased_built
    sp = spm.SentencePieceProcessor(model_file=str(root / "tokenizers" / "custom_400_caseops_bpe.model"))
    tokens = np.array(split_stream(folder, "val"))
    counts = np.concatenate([read_values(folder / f) for f in manifest["splits"]["val"]["byte_files"]])
    starts = list(np.flatnonzero(tokens == 1)) + [len(tokens)]
    assert len(starts) - 1 == 30
    for k, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        ids = tokens[a + 1:b].tolist()
        assert counts[a + 1:b].tolist() == caseops.byte_sidecar(sp, ids).tolist()
        original = cased_corpus[0][k]
        assert not re.search("[A-Z]", sp.decode(ids).replace("Full", ""))  # NFKC made Ｆｕｌｌ ASCII
        assert caseops.decode(sp.decode(ids)) == sp.normalize(original).replace("\u2581", " ")
        assert int(counts[a + 1:b].sum()) == len(sp.normalize(original).replace("\u2581", " ").encode())


def test_caseops_build_is_deterministic_and_reuses_its_tokenizer(cased_built, cased_corpus, tmp_path):
    root, folder, manifest = cased_built
    assert build(cased_corpus[1], "--output-root", tmp_path / "again", *CASED_ARGS) == 0
    assert snapshot(tmp_path / "again") == snapshot(root)
    model = root / "tokenizers" / "custom_400_caseops_bpe.model"
    assert build(cased_corpus[1], "--output-root", tmp_path, "--tokenizer", model, "--val-docs", 30,
                 "--shard-tokens", 400, "--caseops", "--name", "reuse") == 0
    assert json.loads((tmp_path / "datasets" / "reuse" / "manifest.json").read_text())["files"] == manifest["files"]


def test_plain_build_records_no_transform(built):
    assert built[2]["text_transform"] == "none" and "text_transform" not in built[2]["build"]
    assert "bytes" not in built[2]["splits"]["val"] and not list(built[1].glob("fineweb_val_bytes_*"))


def test_caseops_refuses_a_tokenizer_without_reserved_pieces(built, cased_corpus, tmp_path, capsys):
    model = built[0] / "tokenizers" / "tiny_384_bpe.model"
    err = refused(capsys, cased_corpus[1], "--output-root", tmp_path / "out", "--tokenizer", model, "--caseops")
    assert err == (f"error: --tokenizer {model}: it lacks user-defined pieces for the CaseOps operators U+E001 "
                   f"(TITLE), U+E002 (ALLCAPS), U+E003 (CAPNEXT), U+E004 (ESC); use a tokenizer trained on CaseOps "
                   f"text with them as user_defined_symbols (data/build_dataset.py --caseops)")
    assert not (tmp_path / "out").exists()


def test_caseops_default_names_on_the_builtin_corpus(tmp_path, capsys):
    assert build("--output-root", tmp_path, "--caseops") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (f"DATA_PATH={tmp_path}/datasets/sample_sp1024_caseops TOKENIZER_PATH={tmp_path}/tokenizers/"
                       f"sample_1024_caseops_bpe.model VOCAB_SIZE=1024")
    assert any(line.startswith("  CaseOps text; val byte sidecar: ") for line in out)
    assert bd.tokenizer_file_stem("mine", 512, True) == "mine_512_caseops_bpe"
    assert bd.tokenizer_file_stem("sample_sp512", 512) == "sample_512_bpe"


def copy_root(root, tmp_path):
    shutil.copytree(root, tmp_path / "r")
    return tmp_path / "r" / "datasets" / "custom_sp400_caseops"


def test_verify_checks_the_byte_sidecars(cased_built, tmp_path, capsys):
    folder = copy_root(cased_built[0], tmp_path)
    rc, lines = verify(folder, capsys)
    assert rc == 0 and lines[0].endswith("; byte sidecars: %s bytes, per-document sums match the decoded text "
                                         "(30 documents)" % f"{cased_built[2]['splits']['val']['bytes']:,}")
    (folder / "fineweb_val_bytes_000001.bin").unlink()
    rc, lines = verify(folder, capsys)
    assert rc == 1 and lines[:-1] == [
        "fineweb_val_bytes_000001.bin: listed in manifest.json but missing",
        "fineweb_val_bytes_000001.bin: missing (CaseOps data needs a byte sidecar for each val shard)"]


@pytest.mark.parametrize("damage, expected", [
    ("one count", "val document 2 (token "),
    ("bos", "fineweb_val_bytes_000000.bin: 1 BOS position(s) with a nonzero byte count"),
    ("short", "fineweb_val_bytes_000000.bin: 399 entries, but fineweb_val_000000.bin has 400 tokens"),
    ("orphan", "fineweb_val_bytes_000099.bin: a byte sidecar without its val shard fineweb_val_000099.bin"),
])
def test_verify_without_manifest_finds_caseops_by_its_tokenizer(cased_built, tmp_path, capsys, damage, expected):
    folder = copy_root(cased_built[0], tmp_path)
    (folder / "manifest.json").unlink()  # as downloaded: the tokenizer (tokenizer.sha256) says CaseOps
    rc, lines = verify(folder, capsys)
    assert rc == 0 and "no manifest (headers only)" in lines[0] and "per-document sums match" in lines[0]
    sidecar = folder / "fineweb_val_bytes_000000.bin"
    values = read_values(sidecar).copy()
    tokens = read_values(folder / "fineweb_val_000000.bin")
    if damage == "one count":
        doc_start = np.flatnonzero(tokens == 1)[2]
        values[doc_start + 1] += 1
    elif damage == "bos":
        values[0] = 3
    elif damage == "short":
        values = values[:-1]
    sidecar.write_bytes(shard(values.tolist()))
    if damage == "orphan":
        (folder / "fineweb_val_bytes_000099.bin").write_bytes(shard([0, 1]))
    rc, lines = verify(folder, capsys)
    assert rc == 1 and lines[0].startswith(expected) and len(lines) == 2, lines


def test_verify_refuses_sidecars_in_plain_data_and_missing_ones_in_caseops_downloads(built, cased_built, tmp_path,
                                                                                     capsys):
    plain = tmp_path / "plain"
    shutil.copytree(built[1], plain)
    (plain / "fineweb_val_bytes_000000.bin").write_bytes(shard([0] * built[2]["files"]["fineweb_val_000000.bin"]
                                                               ["tokens"]))
    rc, lines = verify(plain, capsys)
    assert rc == 1 and lines[:-1] == ["fineweb_val_bytes_000000.bin: not listed in manifest.json",
                                      "fineweb_val_bytes_000000.bin: a byte sidecar, but the dataset is not CaseOps "
                                      "text"]
    folder = copy_root(cased_built[0], tmp_path)
    (folder / "manifest.json").unlink()
    for sidecar in folder.glob("fineweb_val_bytes_*"):
        sidecar.unlink()
    rc, lines = verify(folder, capsys)
    assert rc == 1 and lines[0] == "fineweb_val_bytes_000000.bin: missing (CaseOps data needs a byte sidecar for " \
                                   "each val shard)"


# ---------------------------------------------------------------- --verify on foreign manifests (issue 21)

def set_at(path, value):
    def mutate(manifest):
        *parents, last = path.split("/")
        node = manifest
        for key in parents:
            node = node[int(key) if isinstance(node, list) else key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
        return manifest
    return mutate


FOREIGN = [
    (lambda m: [m], "manifest.json: is a list, expected an object"),
    (set_at("files", ["fineweb_val_000000.bin"]), "manifest.json: field files is a list, expected an object"),
    (set_at("tokenizer", "tiny_384_bpe.model"), "manifest.json: field tokenizer is a string, expected an object"),
    (set_at("files/fineweb_val_000000.bin/tokens", "12"),
     "manifest.json: field files.fineweb_val_000000.bin.tokens is a string, expected an integer"),
    (set_at("files/fineweb_val_000000.bin", None),
     "manifest.json: field files.fineweb_val_000000.bin is null, expected an object"),
    (set_at("splits", KeyError), "manifest.json: field splits is missing"),
    (set_at("splits/val", KeyError), "manifest.json: field splits.val is missing"),
    (set_at("splits/train/docs", 3.5), "manifest.json: field splits.train.docs is a number, expected an integer"),
    (set_at("splits/val/tokens", -1), "manifest.json: field splits.val.tokens is -1, expected 0 to"),
    (set_at("tokenizer/vocab_size", 0), "manifest.json: field tokenizer.vocab_size is 0, expected 1 to 65536"),
    (set_at("tokenizer/vocab_size", True), "manifest.json: field tokenizer.vocab_size is a boolean, expected an "
                                           "integer"),
    (set_at("tokenizer/sha256", "abc"), "manifest.json: field tokenizer.sha256 is 'abc', expected 64 lowercase hex"),
    (set_at("tokenizer/model_path", 5), "manifest.json: field tokenizer.model_path is an integer, expected a string"),
    (set_at("format", KeyError), "manifest.json: field format is missing"),
    (set_at("format/bos_id", 70000), "manifest.json: field format.bos_id is 70000, expected 0 to 65535"),
    (set_at("text_transform", "rot13"), "manifest.json: field text_transform is 'rot13', expected one of "
                                        "'caseops_v1', 'none'"),
    (lambda m: "{not json", "manifest.json: not readable as JSON"),
]


@pytest.mark.parametrize("mutate, expected", FOREIGN, ids=[f"foreign-{i}" for i in range(len(FOREIGN))])
def test_verify_reports_a_foreign_manifest_without_crashing(built, tmp_path, capsys, mutate, expected):
    folder = tmp_path / "d"
    shutil.copytree(built[1], folder)
    changed = mutate(json.loads((folder / "manifest.json").read_text()))
    (folder / "manifest.json").write_text(changed if isinstance(changed, str) else json.dumps(changed))
    rc, lines = verify(folder, capsys)
    assert rc == 1 and lines[-1] == f"FAILED: {len(lines) - 1} problem(s) in {folder}"
    assert [line for line in lines if line.startswith("manifest.json")] == [lines[0]]
    assert lines[0].startswith(expected), lines


OFFICIAL = {"datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_1024",
                          "stats": {"files_train": 80, "files_val": 1, "tokens_val": 3}}],
            "tokenizers": [{"name": "sp_1024", "vocab_size": 1024}]}


@pytest.mark.parametrize("mutate, expected", [
    (lambda m: [m], "data/manifest.json: is a list, expected an object"),
    (set_at("datasets", {"fineweb10B_sp1024": {}}), "data/manifest.json: field datasets is an object, expected a list"),
    (set_at("datasets/0/stats", [1, 3]),
     "data/manifest.json: field datasets[0].stats is a list, expected an object"),
    (lambda m: m["datasets"][0]["stats"].update(files_val="1") or m,
     "data/manifest.json: field datasets[0].stats.files_val is a string, expected an integer"),
    (lambda m: m["datasets"][0]["stats"].pop("tokens_val") and m,
     "data/manifest.json: field datasets[0].stats.tokens_val is missing"),
    (lambda m: m["tokenizers"][0].update(vocab_size="1024") or m,
     "data/manifest.json: field tokenizers[0].vocab_size is a string, expected an integer"),
])
def test_verify_reports_a_malformed_downloaded_manifest(tmp_path, capsys, mutate, expected):
    folder = tmp_path / "datasets" / "fineweb10B_sp1024"
    folder.mkdir(parents=True)
    (folder / "fineweb_val_000000.bin").write_bytes(shard([1, 9, 9]))
    (tmp_path / "manifest.json").write_text(json.dumps(OFFICIAL))
    assert verify(folder, capsys)[0] == 0
    (tmp_path / "manifest.json").write_text(json.dumps(mutate(json.loads(json.dumps(OFFICIAL)))))
    rc, lines = verify(folder, capsys)
    assert rc == 1 and lines == [expected, f"FAILED: 1 problem(s) in {folder}"]


def test_field_problems_schema_forms():
    schema = [("", dict, None), ("a", int, (1, 5)), ("b?", str, {"x", "y"}), ("c", list, None), ("c[]", dict, None),
              ("c[].d", str, (re.compile("[a-z]+"), "lowercase letters")), ("e?", dict, None), ("e.*", int, None)]
    assert bd.field_problems({"a": 3, "c": [{"d": "ok"}], "e": {"k": 1}}, schema, "m") == []
    assert bd.field_problems({"a": 9, "b": "z", "c": [{"d": "OK"}, 5, {}], "e": {"k": "1"}}, schema, "m") == [
        "m: field a is 9, expected 1 to 5", "m: field b is 'z', expected one of 'x', 'y'",
        "m: field c[1] is an integer, expected an object", "m: field c[0].d is 'OK', expected lowercase letters",
        "m: field c[2].d is missing", "m: field e.k is a string, expected an integer"]
    assert bd.field_problems(None, schema, "m") == ["m: is null, expected an object"]
    assert bd.field_problems({"c": "x"}, schema, "m", "p") == ["m: field p.a is missing",
                                                               "m: field p.c is a string, expected a list"]
