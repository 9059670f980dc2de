"""Every bad input, one table: settings (each out of its allowed range), paths, shards, tokenizers,
artifacts, checkpoints, memory, and the helper scripts' arguments. Each case must exit with its
status, name the culprit in one line, print no traceback and leave every file as it was."""
import json
import math
import os
import re
import struct
import subprocess
import sys
import zlib
from dataclasses import asdict, fields

import numpy as np
import pytest
import sentencepiece as spm
import torch
import zstandard

import train_gpt as tg
import cases_data_scripts
import cases_records
from conftest import ROOT, TINY

# ---------------------------------------------------------------- settings, generated from their ranges


def out_of_range(f) -> list[str]:
    """Values just outside a setting's allowed values, plus non-finite ones for numbers."""
    allowed = f.metadata["allowed"]
    if f.type == "bool":
        return ["maybe"]
    if allowed == "N|Ns":
        return ["1.5", "-1", "infs", "0s"]
    if allowed == "name":
        return ["../escape", "a/b", ".hidden"]
    if "|" in allowed:
        return ["bogus"]
    if allowed[0] not in "[(":
        return []
    lo_side, lo, hi, hi_side = re.fullmatch(r"([\[(])(.+), (.+)([\])])", allowed).groups()
    lo, hi, step = float(lo), float(hi), 1 if f.type == "int" else 1e-3
    values = ["1e400", "nan"] + (["inf", "-inf"] if f.type == "float" else [])
    if math.isfinite(lo):
        values.append(repr(lo if lo_side == "(" else lo - step))
    if math.isfinite(hi):
        values.append(repr(hi if hi_side == ")" else hi + step))
    return [v.removesuffix(".0") if f.type == "int" else v for v in values]


SETTING_CASES = [(f"{f.name.upper()}={v}", {f.name.upper(): v}, None, f.name.upper())
                 for f in fields(tg.Config) for v in out_of_range(f)]

# ---------------------------------------------------------------- files the cases damage or put in place


def write_shard(path, tokens, magic=20240520, version=1, declared=None):
    header = np.zeros(256, "<i4")
    header[:3] = magic, version, len(tokens) if declared is None else declared
    path.write_bytes(header.tobytes() + np.asarray(tokens, "<u2").tobytes())


VAL, TRAIN = "data/fineweb_val_000000.bin", "data/fineweb_train_000000.bin"


def tiny_config():
    return tg.Config(**{f.name: tg.parse_setting(f.type, TINY[f.name.upper()])
                        for f in fields(tg.Config) if f.name.upper() in TINY})


def artifact_bytes(**header_changes) -> bytes:
    """A valid artifact of the tiny model, with header fields replaced (checksum recomputed)."""
    cfg = tiny_config()
    torch.manual_seed(0)
    blob = tg.pack_artifact(tg.quantise_state(tg.GPT(cfg).state_dict(), cfg), cfg, {k: getattr(cfg, k) for k in tg.SCORE_FIELDS})
    return reheader(blob, **header_changes) if header_changes else blob


def reheader(blob: bytes, edit=None, body=None, **changes) -> bytes:
    head = len(tg.ARTIFACT_MAGIC) + 10
    size = struct.unpack_from("<I", blob, head - 8)[0]
    header = json.loads(zlib.decompress(blob[head:head + size]))
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = header
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[int(last) if last.isdigit() else last] = value
    if edit:
        edit(header)
    text = json.dumps(header).encode()
    packed = zlib.compress(text)
    out = blob[:len(tg.ARTIFACT_MAGIC) + 2] + struct.pack("<II", len(packed), len(text)) + packed + (
        body if body is not None else blob[head + size:-32])
    return out + tg.hashlib.sha256(out).digest()


def ans_artifact(damage) -> bytes:
    """An ANS-coded artifact whose first stream is damaged by `damage` (checksum recomputed)."""
    cfg = tg.Config(**{**tiny_config().__dict__, "compressor": "ans"})
    torch.manual_seed(0)
    blob = tg.pack_artifact(tg.quantise_state(tg.GPT(cfg).state_dict(), cfg), cfg, {k: getattr(cfg, k) for k in tg.SCORE_FIELDS})
    head = len(tg.ARTIFACT_MAGIC) + 10
    size = struct.unpack_from("<I", blob, head - 8)[0]
    streams = json.loads(zlib.decompress(blob[head:head + size]))["streams"]
    i = next(i for i, st in enumerate(streams) if st["codec"] == "ans")
    at = head + size + sum(st["size"] for st in streams[:i])
    stream = damage(blob[at:at + streams[i]["size"]])
    return reheader(blob, body=blob[head + size:at] + stream + blob[at + streams[i]["size"]:-32],
                    **{f"streams__{i}__size": len(stream)})


def huge_frame(blob: bytes) -> bytes:
    """Stream 0 replaced by a tiny zstd frame that declares 1 TiB of content; checksum valid."""
    frame = bytearray(zstandard.ZstdCompressor().compress(b"x" * 64))
    params = zstandard.get_frame_parameters(bytes(frame))
    assert params.content_size == 64
    # rewrite the frame header with an 8-byte content size field of 1 TiB
    fhd = frame[4]
    single, fcs_flag = (fhd >> 5) & 1, fhd >> 6
    fcs_len = {0: single, 1: 2, 2: 4, 3: 8}[fcs_flag]
    start = 5 + (0 if single else 1)
    new_fhd = (fhd & 0x3F) | (3 << 6)
    frame = frame[:4] + bytes([new_fhd]) + frame[5:start] + struct.pack("<Q", 1 << 40) + frame[start + fcs_len:]
    assert zstandard.frame_content_size(bytes(frame)) == 1 << 40
    head = len(tg.ARTIFACT_MAGIC) + 10
    size = struct.unpack_from("<I", blob, head - 8)[0]
    first = json.loads(zlib.decompress(blob[head:head + size]))["streams"][0]["size"]
    return reheader(blob, body=bytes(frame) + blob[head + size + first:-32], streams__0__size=len(frame))


def shift_array(header, by: int) -> None:
    """Move the second array of the first stream holding two by `by` bytes (its bytes stay in bounds)."""
    arrays = [a for t in header["tensors"] for a in t["arrays"].values()]
    stream = next(s for s in range(len(header["streams"])) if sum(a[0] == s for a in arrays) >= 2)
    second = sorted((a for a in arrays if a[0] == stream), key=lambda a: a[1])[1]
    second[1] += by


def save(ws, name, data):
    (ws / name).write_bytes(data)


def checkpoint_of(ws, name, cfg_changes=None, model_cfg_changes=None, **fields):
    """A complete checkpoint of the workspace's run, as train() writes it, with `fields` replaced (a callable gets the
    field's value and returns the new one; tg.__name__ as a value removes the field)."""
    cfg = tg.config_from_env()[0]  # the workspace's settings
    model_cfg = tg.Config(**{**asdict(cfg), **(model_cfg_changes or {})})
    model = tg.GPT(model_cfg)
    optimizers = tg.build_optimizers(model, model_cfg, tg.Runtime(0, 1, torch.device("cpu"), None, None))
    files = tg.find_shards(str(ws / "data"), "train")
    state = dict(model=model.state_dict(), optimizers=[o.state_dict() for o in optimizers], config={
        **asdict(cfg), **(cfg_changes or {})}, loader=dict(file_idx=0, pos=0), swa=dict(sums=None, count=0), ema=None,
        step=0, training_ms=0.0, looping=False, rng=torch.get_rng_state(),
        data=[[f.name, (f.stat().st_size - 1024) // 2] for f in files])
    for key, value in fields.items():
        state[key] = value(state[key]) if callable(value) else value
        if value == tg.__name__:
            del state[key]
    torch.save(state, ws / name) if "format" in state else tg.save_checkpoint(ws / name, state)


def train_tokenizer(ws, name, **settings):
    tokens = np.asarray(tg.open_shard(ws / TRAIN))
    docs = np.split(tokens, np.flatnonzero(tokens == tg.BOS_ID)[1:])
    texts = spm.SentencePieceProcessor(model_file=str(ws / "tok.model")).decode([d[1:].tolist() for d in docs])
    (ws / "corpus.txt").write_text("\n".join(t.replace("\n", " ") for t in texts))
    base = dict(model_type="bpe", vocab_size=1024, character_coverage=0.999, byte_fallback=True, split_digits=True,
                normalization_rule_name="nmt_nfkc", add_dummy_prefix=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                hard_vocab_limit=False, num_threads=1, input_sentence_size=0, shuffle_input_sentence=False)
    spm.SentencePieceTrainer.train(input=str(ws / "corpus.txt"), model_prefix=str(ws / name), **{**base, **settings})
    (ws / "corpus.txt").unlink()
    (ws / f"{name}.vocab").unlink()


def other_tokenizer(ws, keep_record=True):
    """A different 1024-piece tokenizer (trained on the train split with a different merge budget)."""
    train_tokenizer(ws, "other", split_digits=False, max_sentencepiece_length=4)
    assert (ws / "other.model").read_bytes() != (ws / "tok.model").read_bytes()
    if not keep_record:
        (ws / "data" / "tokenizer.sha256").unlink()
        (ws / "data" / "manifest.json").unlink()


# (id, environment, setup(ws) or None, the culprit's name or a message fragment)
FILE_CASES = [
    # paths
    ("CHECKPOINT_PATH is a folder", dict(CHECKPOINT_EVERY="1", CHECKPOINT_PATH="ck"), lambda ws: (ws / "ck").mkdir(),
     "CHECKPOINT_PATH=ck already exists (a folder)"),
    ("CHECKPOINT_PATH is not a checkpoint", dict(CHECKPOINT_EVERY="1", CHECKPOINT_PATH="notes.txt"),
     lambda ws: save(ws, "notes.txt", b"my notes"), "CHECKPOINT_PATH=notes.txt already exists"),
    ("ARTIFACT_PATH is a folder", dict(ARTIFACT_PATH="art"), lambda ws: (ws / "art").mkdir(),
     "ARTIFACT_PATH=art already exists (a folder)"),
    ("RESUME_FROM is a folder", dict(RESUME_FROM="ck"), lambda ws: (ws / "ck").mkdir(), "RESUME_FROM=ck is a folder"),
    ("RESUME_FROM missing", dict(RESUME_FROM="none.pt"), None, "RESUME_FROM=none.pt does not exist"),
    ("TOKENIZER_PATH is a folder", dict(TOKENIZER_PATH="data"), None, "TOKENIZER_PATH=data is a folder"),
    ("TOKENIZER_PATH missing", dict(TOKENIZER_PATH="missing.model"), None, "TOKENIZER_PATH=missing.model does not exist"),
    ("DATA_PATH is a file", dict(DATA_PATH="tok.model"), None, "DATA_PATH=tok.model is a file"),
    ("DATA_PATH missing", dict(DATA_PATH="nowhere"), lambda ws: (ws / "data" / "tokenizer.sha256").unlink(),
     "no fineweb_val_*.bin shards in DATA_PATH=nowhere"),
    ("EVAL_ONLY without ARTIFACT_PATH", dict(EVAL_ONLY="1"), None, "EVAL_ONLY=1 needs ARTIFACT_PATH"),
    ("EVAL_ONLY with RESUME_FROM", dict(EVAL_ONLY="1", ARTIFACT_PATH="a.ptz", RESUME_FROM="x.pt"),
     lambda ws: save(ws, "a.ptz", artifact_bytes()), "EVAL_ONLY and RESUME_FROM cannot be combined"),
    # shards
    ("shard is a folder", {}, lambda ws: (ws / "data" / "fineweb_val_000001.bin").mkdir(),
     "fineweb_val_000001.bin: a folder where a shard file is expected"),
    ("empty shard file", {}, lambda ws: save(ws, VAL, b""), "shorter than the 1024-byte header"),
    ("shard declares 0 tokens", {}, lambda ws: write_shard(ws / VAL, []), "the header declares 0 tokens"),
    ("truncated shard", {}, lambda ws: save(ws, VAL, (ws / VAL).read_bytes()[:-100]), "truncated or corrupted"),
    ("shard magic", {}, lambda ws: write_shard(ws / VAL, [1, 5, 6], magic=12345), "magic 12345 is not 20240520"),
    ("shard version", {}, lambda ws: write_shard(ws / VAL, [1, 5, 6], version=2), "shard version 2 is not supported"),
    ("val shorter than a window", {}, lambda ws: write_shard(ws / VAL, [1] + [7] * 99),
     "validation split has 100 tokens, fewer than one eval window of 129"),
    ("val ids beyond the vocab", {}, lambda ws: write_shard(ws / VAL, [1] + [2000] * 500),
     "token id 2000 >= VOCAB_SIZE=1024"),
    ("train ids beyond the vocab", {}, lambda ws: write_shard(ws / TRAIN, [1] + [1500] * 500),
     "token id 1500 >= VOCAB_SIZE=1024"),
    ("train shard header count", {}, lambda ws: write_shard(ws / "data/fineweb_train_000001.bin", [1, 2], declared=7),
     "header declares 7 tokens"),
    ("unknown tokens in val", {}, lambda ws: write_shard(ws / VAL, [1, 5, 3, 6] * 600),
     "hold 600 <unk> tokens (id 3)"),
    # tokenizers
    ("tokenizer not a model", {}, lambda ws: save(ws, "tok.model", b"not a model"), "is not a SentencePiece model"),
    ("tokenizer of another size", dict(VOCAB_SIZE="512"), None, "VOCAB_SIZE=512 but the tokenizer"),
    ("same-size tokenizer, recorded sha256", dict(TOKENIZER_PATH="other.model"), other_tokenizer,
     "TOKENIZER_PATH=other.model (sha256"),
    ("same-size tokenizer, re-encode audit", dict(TOKENIZER_PATH="other.model"),
     lambda ws: other_tokenizer(ws, keep_record=False), "validation documents re-encode to their ids with TOKENIZER_PATH=other.model"),
    ("tokenizer without byte fallback", dict(TOKENIZER_PATH="nobytes.model"),
     lambda ws: train_tokenizer(ws, "nobytes", byte_fallback=False), "nobytes.model: the tokenizer has no byte fallback"),
    ("tokenizer with other BOS/EOS", dict(TOKENIZER_PATH="ids.model"),
     lambda ws: train_tokenizer(ws, "ids", bos_id=2, eos_id=1), "ids.model: BOS/EOS ids are 2/1"),
    # sizes that cannot fit
    ("model too wide", dict(MODEL_DIM="262144", NUM_HEADS="1024", NUM_KV_HEADS="1024"), None,
     "needs an estimated"),
    ("eval batch too large", dict(EVAL_BATCH_SEQS="1048576"), None, "lower EVAL_BATCH_SEQS"),
    ("token batch too large", dict(TRAIN_BATCH_TOKENS=str(2 ** 40), MICRO_BATCHES="1"), None, "lower TRAIN_BATCH_TOKENS"),
    # checkpoints
    ("checkpoint: plain tensors", dict(RESUME_FROM="plain.pt"), lambda ws: torch.save({"w": torch.ones(3)}, ws / "plain.pt"),
     "RESUME_FROM=plain.pt is not a train_gpt.py checkpoint"),
    ("checkpoint: a bare tensor", dict(RESUME_FROM="plain.pt"), lambda ws: torch.save(torch.ones(3), ws / "plain.pt"),
     "RESUME_FROM=plain.pt is not a train_gpt.py checkpoint"),
    ("checkpoint: garbage", dict(RESUME_FROM="junk.pt"), lambda ws: save(ws, "junk.pt", b"\x00junk" * 99),
     "RESUME_FROM=junk.pt is not a train_gpt.py checkpoint: it cannot be read as plain tensors"),
    ("checkpoint: other settings", dict(RESUME_FROM="ck.pt"), lambda ws: checkpoint_of(ws, "ck.pt", dict(num_layers=5)),
     "RESUME_FROM=ck.pt was made with other settings"),
    ("checkpoint: other tensors", dict(RESUME_FROM="ck.pt"),
     lambda ws: checkpoint_of(ws, "ck.pt", model_cfg_changes=dict(bigram_dim=8)), "holds tensors of another model shape"),
    *[(f"checkpoint: {name}", dict(RESUME_FROM="ck.pt"), (lambda kw: lambda ws: checkpoint_of(ws, "ck.pt", **kw))(kw),
       message) for name, kw, message in [
        ("a field missing", dict(loader=tg.__name__), "RESUME_FROM=ck.pt: field 'loader' is missing"),
        ("the step as text", dict(step="3"), "field 'step' is str '3', expected int"),
        ("a negative step", dict(step=-1), "field 'step' = '-1' is out of range"),
        ("a non-finite time", dict(training_ms=float("nan")), "field 'training_ms' is float 'nan'"),
        ("a loader field missing", dict(loader={"pos": 0}), "RESUME_FROM=ck.pt: loader: field 'file_idx' is missing"),
        ("a data position past the shard", dict(loader=dict(file_idx=0, pos=10 ** 9)), "is past the end of the training"),
        ("a shard index past the shards", dict(loader=dict(file_idx=7, pos=0)), "is past the end of the training"),
        ("other training shards", dict(data=lambda d: d + [["fineweb_train_000001.bin", 5]]), "made on other training"),
        ("an EMA of a run without one", dict(ema=lambda _: tg.GPT(tiny_config()).state_dict()), "field 'ema'"),
        ("an SWA sum of another shape", dict(swa=dict(count=2, sums={"w": torch.ones(2)})), "EMA or SWA average"),
        ("a step past ITERATIONS", dict(step=10 ** 6), "beyond ITERATIONS=2"),
        ("optimiser state of another model", dict(optimizers=lambda o: [o[1], o[0]]), "its optimiser state does not fit"),
        ("an older format", dict(format="train_gpt-checkpoint-1"), "format 'train_gpt-checkpoint-1'"),
        ("non-finite weights", dict(model=lambda m: {k: v * float("nan") for k, v in m.items()}), "non-finite weights"),
    ]],
    ("CHECKPOINT_PATH under a file", dict(CHECKPOINT_EVERY="1", CHECKPOINT_PATH="notes.txt/run/ck.pt"),
     lambda ws: save(ws, "notes.txt", b"my notes"), "cannot write CHECKPOINT_PATH=notes.txt/run/ck.pt: notes.txt is a file"),
    ("ARTIFACT_PATH under a file", dict(ARTIFACT_PATH="notes.txt/a.ptz"), lambda ws: save(ws, "notes.txt", b"my notes"),
     "cannot write ARTIFACT_PATH=notes.txt/a.ptz: notes.txt is a file"),
    # the tokenizer record and CaseOps' byte sidecar
    ("tokenizer.sha256 not one record", {}, lambda ws: save(ws, "data/tokenizer.sha256", b"abc  tok.model\n"),
     "tokenizer.sha256 is not one line"),
    ("manifest tokenizer entry of another kind", {}, lambda ws: (
        (ws / "data" / "tokenizer.sha256").unlink(), save(ws, "data/manifest.json", b'{"tokenizer": "tok.model"}')),
     "manifest.json: tokenizer is str, not a mapping"),
    ("manifest tokenizer sha256 not hex", {}, lambda ws: ((ws / "data" / "tokenizer.sha256").unlink(), save(
        ws, "data/manifest.json", b'{"tokenizer": {"sha256": "xyz", "model_path": "t.model"}}')),
     "field 'sha256' = 'xyz' is out of range"),
    ("CaseOps switch on plain data", dict(CASEOPS_ENABLED="1"), None, "CASEOPS_ENABLED=1 but TOKENIZER_PATH="),
    ("a byte sidecar next to plain data", {}, lambda ws: save(ws, "data/fineweb_val_bytes_000000.bin",
                                                              (ws / VAL).read_bytes()), "it is CaseOps data; set CASEOPS_ENABLED=1"),

    # artifacts (EVAL_ONLY)
    *[(f"artifact: {name}", dict(EVAL_ONLY="1", ARTIFACT_PATH="a.ptz"), (lambda make: lambda ws: save(ws, "a.ptz", make()))(make),
       message) for name, make, message in [
        ("flipped header byte", lambda: (lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:])(artifact_bytes()), "checksum mismatch"),
        ("flipped payload byte", lambda: (lambda b: b[:-40] + bytes([b[-40] ^ 1]) + b[-39:])(artifact_bytes()), "checksum mismatch"),
        ("truncated", lambda: artifact_bytes()[:-10], "checksum mismatch"),
        ("empty", lambda: b"", "not an artifact written by train_gpt.py"),
        ("a pickle", lambda: __import__("pickle").dumps({"w": 1}), "not an artifact written by train_gpt.py"),
        ("older version", lambda: artifact_bytes()[:8] + struct.pack("<H", 1) + artifact_bytes()[10:], "artifact format version 1"),
        ("1 TiB zstd frame", lambda: huge_frame(artifact_bytes()), "the zstd frame declares 1099511627776 bytes"),
        ("stream raw size beyond the ceiling", lambda: artifact_bytes(streams__0__raw=1 << 40), "size outside"),
        ("unknown codec", lambda: artifact_bytes(streams__0__codec="lrzip"), "unknown codec"),
        ("stream sizes disagree", lambda: artifact_bytes(streams__0__size=5), "the streams declare"),
        ("header declaring 1 GiB", lambda: (lambda b: b[:14] + struct.pack("<I", 1 << 30) + b[18:-32] + tg.hashlib.sha256(
            b[:14] + struct.pack("<I", 1 << 30) + b[18:-32]).digest())(artifact_bytes()), "the header declares 1073741824 bytes"),
        ("LQER rank beyond the matrix", lambda: reheader(artifact_bytes(), edit=lambda h: next(
            t for t in h["tensors"] if t["kind"] == "q").update(lqer=[10**6, 64])), "bad LQER rank/group"),
        ("stream decodes to other bytes", lambda: artifact_bytes(streams__0__crc32=12345), "the header declares"),
        ("ANS histogram of another size", lambda: ans_artifact(lambda b: b[:3] + (7).to_bytes(4, "little") + b[7:]),
         "cannot be decompressed (malformed ANS stream: its histogram does not hold the declared size)"),
        ("header not JSON", lambda: reheader(artifact_bytes(), edit=lambda h: h.clear()), "malformed header"),
        ("model field missing", lambda: reheader(artifact_bytes(), edit=lambda h: h["model"].pop("num_layers")), "num_layers"),
        ("model field of a wrong type", lambda: artifact_bytes(model__num_layers="2"), "model.num_layers='2' is not a int"),
        ("model field out of range", lambda: artifact_bytes(model__num_heads=0), "NUM_HEADS=0 is out of range"),
        ("model shapes inconsistent", lambda: artifact_bytes(model__num_heads=3), "MODEL_DIM=64 is not divisible by NUM_HEADS=3"),
        ("score field out of range", lambda: artifact_bytes(score__eval_stride=-1), "EVAL_STRIDE=-1 is out of range"),
        ("unknown score field", lambda: artifact_bytes(score__eval_magic=1), "malformed header"),
        ("negative shape", lambda: artifact_bytes(tensors__0__shape=[-4, 64]), "bad name or shape"),
        ("unknown tensor kind", lambda: artifact_bytes(tensors__0__kind="int3"), "unknown kind"),
        ("array past the stream", lambda: artifact_bytes(tensors__0__arrays__data__1=1 << 30), "out of bounds"),
        ("array of a wrong count", lambda: artifact_bytes(tensors__0__arrays__data__3=7), "out of bounds"),
        ("tensors of another model", lambda: artifact_bytes(model__smear_gate=False), "its tensors do not match"),
        ("an array shifted by one byte", lambda: reheader(artifact_bytes(), edit=lambda h: shift_array(h, 1)),
         "arrays overlap or leave a gap"),
        ("an array moved back by one byte", lambda: reheader(artifact_bytes(), edit=lambda h: shift_array(h, -1)),
         "arrays overlap or leave a gap"),
    ]],
    ("artifact is a folder", dict(EVAL_ONLY="1", ARTIFACT_PATH="art"), lambda ws: (ws / "art").mkdir(), "art: a folder"),
]


def snapshot(root):
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------- the helper scripts' cases

def tree(folder) -> dict:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def listing(folder) -> dict:
    """Names, sizes and modification times (data/ may hold gigabytes of shards: no reading)."""
    return {p.relative_to(folder).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def run_data_case(case, tmp, sample: str):
    """tests/cases_data_scripts.py: run from the repo root; {tmp} and {sample} substituted."""
    def fill(text):
        return text.replace("{tmp}", str(tmp)).replace("{sample}", sample)
    if case.get("setup"):
        getattr(cases_data_scripts, case["setup"])(tmp)
    before, repo_data = tree(tmp), listing(ROOT / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MATCHED_FINEWEB_", "HF_"))}
    env["HF_HUB_OFFLINE"] = "1"  # a guard: no case may reach the network
    env.update({k: fill(v) for k, v in case.get("env", {}).items()})
    run = subprocess.run([sys.executable, case["script"], *map(fill, case["args"])], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    return run, fill(case["message"]), tree(tmp) == before and listing(ROOT / "data") == repo_data


def run_records_case(case, tmp):
    """tests/cases_records.py: run from tmp with a valid log made first; {tmp} and {log} substituted."""
    log = cases_records.make_valid_log(tmp)
    if case.get("setup"):
        getattr(cases_records, case["setup"])(tmp)
    (tmp / "systmp").mkdir()
    before = tree(tmp)
    args = [a.replace("{tmp}", str(tmp)).replace("{log}", str(log)) for a in case["args"]]
    run = subprocess.run([sys.executable, str(ROOT / "records" / "make_submission.py"), *args], cwd=tmp,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp / "systmp")})
    return run, case["message"], tree(tmp) == before


# ---------------------------------------------------------------- one table, one test

CASES = ([("train_gpt.py", *c) for c in SETTING_CASES + FILE_CASES]
         + [(c["script"], c["id"], c, None, c["message"]) for c in cases_data_scripts.CASES]
         + [("records/make_submission.py", c["id"], c, None, c["message"]) for c in cases_records.CASES])


@pytest.mark.parametrize("script, case_id, env, setup, culprit", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(workspace, sample_data, tmp_path, monkeypatch, capsys,
                                                             script, case_id, env, setup, culprit):
    if script != "train_gpt.py":  # `env` holds the helper script's case
        (tmp_path / "case").mkdir()
        if script.startswith("records"):
            proc, message, untouched = run_records_case(env, tmp_path / "case")
        else:
            proc, message, untouched = run_data_case(env, tmp_path / "case", sample_data[0])
        assert proc.returncode == env["code"], proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert untouched, "something was written"
        return
    if setup:
        setup(workspace)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = snapshot(workspace)
    status = tg.main()
    out, err = capsys.readouterr()
    assert status == 2, (status, err)
    assert err.startswith("train_gpt.py: ") and culprit in err and "Traceback" not in err + out, err
    assert snapshot(workspace) == before, "something was written"


def test_every_readme_setting_has_an_out_of_range_case():
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \|", (tg.Path(__file__).parents[1] / "README.md").read_text(), re.M)
    covered = {c[3] for c in SETTING_CASES} | {k for c in FILE_CASES for k in c[1]}
    assert set(rows) == set(tg.ENV_NAMES) and set(rows) <= covered, set(rows) - covered
    assert len(CASES) >= 60 and {c[0] for c in CASES} == {"train_gpt.py", "data/build_dataset.py",
                                                          "data/cached_challenge_fineweb.py", "records/make_submission.py"}


def test_a_non_finite_score_fails_the_run_and_says_so(workspace, monkeypatch, capsys):
    """Weights that give NaN losses (an fp16 scale set to NaN): exit 1, no score line, the log ends with why."""
    cfg = tiny_config()
    torch.manual_seed(0)
    state = tg.GPT(cfg).state_dict()
    state["blocks.0.attn_scale"] = torch.full_like(state["blocks.0.attn_scale"], float("nan"))
    (workspace / "nan.ptz").write_bytes(tg.pack_artifact(tg.quantise_state(state, cfg), cfg,
                                                         {k: getattr(cfg, k) for k in tg.SCORE_FIELDS}))
    monkeypatch.setenv("EVAL_ONLY", "1")
    monkeypatch.setenv("ARTIFACT_PATH", "nan.ptz")
    assert tg.main() == 1
    err = capsys.readouterr().err
    assert "evaluation error: the score is not finite" in err and "Traceback" not in err
    log = (workspace / "logs" / "bad_eval.txt").read_text()
    assert "final_sliding_exact" not in log and "final_int8_zlib" not in log
    assert log.splitlines()[-1].startswith("run failed: evaluation error: the score is not finite")


def test_the_checkpoint_the_table_damages_is_accepted_whole(workspace, monkeypatch):
    """The refusals above are each one field away from a checkpoint that resumes: so they test the checks."""
    checkpoint_of(workspace, "ck.pt")
    monkeypatch.setenv("RESUME_FROM", "ck.pt")
    assert tg.main() == 0
    assert "resumed from ck.pt at step 0" in (workspace / "logs" / "bad.txt").read_text()
