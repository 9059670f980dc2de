#!/usr/bin/env python3
"""Build a dataset in the challenge's shard format from local text, with no download.

    python3 data/build_dataset.py                          # built-in corpus -> datasets/sample_sp1024
    python3 data/build_dataset.py notes.txt web.jsonl --vocab-size 512 --name mytext_sp512
    python3 data/build_dataset.py --vocab-size 8192 --caseops  # -> datasets/sample_sp8192_caseops
    python3 data/build_dataset.py --verify data/datasets/fineweb10B_sp1024

Sources are .txt files (one document per file, or per paragraph with --split-paragraphs)
and .jsonl files with a "text" field per line. With no sources the documentation topics
bundled with CPython (pydoc_data.topics) are used, one document per paragraph.
The first documents form the validation split. A SentencePiece BPE tokenizer is trained
on the train split with the challenge's settings (or reused with --tokenizer), and every
document is written as BOS + its tokens into fineweb_{val,train}_NNNNNN.bin shards, next
to a manifest.json with counts and sha256 of every file and a tokenizer.sha256 naming the
tokenizer (sha256sum format). Same inputs, same bytes. The built-in corpus reaches vocab
sizes up to ~15,000 (1024, 4096 and 8192 each build in about a second).

--caseops rewrites every document with the lossless CaseOps case transform (data/caseops.py)
before the tokenizer is trained and the text encoded; the tokenizer gets the four operators as
user-defined pieces, and each val shard gets a byte sidecar fineweb_val_bytes_NNNNNN.bin (same
format, one uint16 per token: the bytes of the original text it stands for; 0 for BOS).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm

SCRIPT_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPT_DIR))
_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ written into data/
import caseops  # noqa: E402  (data/caseops.py)
from cached_challenge_fineweb import field_problems  # noqa: E402  (shared JSON field checks)
sys.dont_write_bytecode = _bytecode

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAGIC = 20240520
VERSION = 1
MAX_VOCAB = 1 << 16  # token ids are stored as uint16
MIN_TRAINED_VOCAB = 4 + 256  # pad/bos/eos/unk + one piece per byte (byte fallback)
UNK_ID = 3  # the challenge's tokenizers: pad 0, bos 1, eos 2, unk 3
SHA256_FILE = "tokenizer.sha256"
BYTE_PIECES = tuple(f"<0x{b:02X}>" for b in range(256))
DEFAULT_VOCAB = 1024
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SHARD_TOKENS = 100_000_000
ENCODE_BATCH_DOCS = 512
PROGRESS_EVERY_S = 2.0
MIN_CASEOPS_VOCAB = MIN_TRAINED_VOCAB + len(caseops.OPERATORS)  # + the operators' user-defined pieces
SHARD_NAME_RE = re.compile(r"fineweb_(val|train|val_bytes)_(\d{6})\.bin")
SHA256_HEX = (re.compile(r"[0-9a-f]{64}"), "64 lowercase hex digits")
COUNT = (0, 2**62)
# Every field --verify reads from a builder manifest.json, with its kind and range.
MANIFEST_SCHEMA = [
    ("", dict, None), ("format", dict, None), ("format.bos_id", int, (0, MAX_VOCAB - 1)),
    ("tokenizer", dict, None), ("tokenizer.vocab_size", int, (1, MAX_VOCAB)), ("tokenizer.sha256", str, SHA256_HEX),
    ("tokenizer.model_path", str, None), ("splits", dict, None), ("splits.val", dict, None),
    ("splits.train", dict, None), *[(f"splits.{split}.{key}", int, COUNT) for split in ("val", "train")
                                    for key in ("tokens", "docs")],
    ("splits.val.bytes?", int, COUNT), ("files", dict, None), ("files.*", dict, None),
    ("files.*.tokens", int, (0, 2**31 - 1)), ("files.*.sha256", str, SHA256_HEX),
    ("text_transform?", str, {"none", caseops.NAME}),
]
# ... and from a downloaded data/manifest.json: the top level, the dataset's entry, its tokenizer's entry.
OFFICIAL_TOP_SCHEMA = [("", dict, None), ("datasets?", list, None), ("tokenizers?", list, None)]
OFFICIAL_ENTRY_SCHEMA = [("tokenizer_name?", str, None), ("stats", dict, None), ("stats.files_val", int, COUNT),
                         ("stats.tokens_val", int, COUNT), ("stats.files_train", int, COUNT),
                         ("val_bytes_glob?", str, None)]
OFFICIAL_TOKENIZER_SCHEMA = [("vocab_size?", int, (1, MAX_VOCAB)), ("text_transform?", str, None)]
# The challenge's tokenizer settings; one thread keeps training deterministic.
TRAINER_SETTINGS = dict(
    model_type="bpe", character_coverage=0.999, byte_fallback=True, split_digits=True,
    normalization_rule_name="nmt_nfkc", add_dummy_prefix=False, pad_id=0, bos_id=1, eos_id=2,
    unk_id=3, hard_vocab_limit=False, num_threads=1,
)


class UserError(Exception):
    """A problem the user can fix: reported as one line, without a traceback."""


# ---------------------------------------------------------------- sources

def paragraphs(text: str) -> list[str]:
    """Split on blank lines; strip each part and drop empty ones."""
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def source_documents(source: str | None, split: bool, digest=None):
    """Yield the documents of one source (None = built-in corpus), feeding its raw bytes to digest."""
    if source is None:
        try:
            from pydoc_data.topics import topics
        except ImportError:
            raise UserError("this Python has no pydoc_data module; pass .txt or .jsonl files instead")
        for key in sorted(topics):
            if digest:
                digest.update(topics[key].encode())
            yield from paragraphs(topics[key])
    elif source.endswith(".jsonl"):
        with open(source, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if digest:
                    digest.update(line)
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    text = None
                if not isinstance(text, str):
                    raise UserError(f'{source}:{lineno}: expected a JSON object with a string "text" field')
                if text.strip():
                    yield text
    else:
        raw = Path(source).read_bytes()
        if digest:
            digest.update(raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{source}: not UTF-8 text ({e})")
        if split:
            yield from paragraphs(text)
        elif text.strip():
            yield text


def all_documents(sources: list[str], split: bool):
    """Yield the documents of every source in order (the built-in corpus when sources is empty)."""
    for source in sources or [None]:
        yield from source_documents(source, split)


def scan_sources(sources: list[str], split: bool) -> tuple[int, list[dict]]:
    """Check every source parses; return the document count and each source's path and sha256."""
    total, described = 0, []
    for source in sources or [None]:
        digest = hashlib.sha256()
        total += sum(1 for _ in source_documents(source, split, digest))
        described.append({"path": source or "pydoc_data.topics", "sha256": digest.hexdigest()})
    return total, described


# ---------------------------------------------------------------- tokenizer

def train_tokenizer(documents, vocab_size: int, reserved: bool = False) -> bytes:
    """Train the challenge's SentencePiece BPE on documents (fed line by line); return the model bytes.
    reserved: the CaseOps operators are user-defined pieces (ids 4-7, always one token each)."""
    sentences = (line for doc in documents for line in doc.splitlines() if line.strip())
    model = io.BytesIO()
    extra = {"user_defined_symbols": list(caseops.OPERATORS)} if reserved else {}
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=sentences, model_writer=model,
                                       vocab_size=vocab_size, minloglevel=2, **TRAINER_SETTINGS, **extra)
    except RuntimeError as e:
        needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
        if needed:
            raise UserError(f"--vocab-size {vocab_size} is too small for this text: it needs at least "
                            f"{needed[1]} (4 special ids, 256 byte pieces{', 4 CaseOps operators' if reserved else ''}"
                            f" and its characters)")
        raise UserError(f"SentencePiece could not train a tokenizer on this text: {e}")
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    problem = tokenizer_problem(sp) or (caseops.reserved_pieces_problem(sp) if reserved else None)
    if problem:  # the challenge's settings guarantee byte fallback and ids 1/2: a bug if not
        raise RuntimeError(f"the trained tokenizer is unusable: {problem}")
    reached = sp.vocab_size()
    if reached < vocab_size:
        raise UserError(f"--vocab-size {vocab_size} cannot be reached on this text: SentencePiece stopped "
                        f"at {reached} pieces; use --vocab-size {reached} or less, or give more text")
    return model.getvalue()


def tokenizer_problem(sp: spm.SentencePieceProcessor) -> str | None:
    """Why sp cannot write challenge shards, or None: every byte must have its <0xNN> piece
    (so any text encodes without <unk>) and BOS/EOS must be ids 1/2."""
    missing = [p for p in BYTE_PIECES if not sp.is_byte(sp.piece_to_id(p))]
    if missing:
        return (f"it cannot represent every byte: {len(missing)} of the 256 byte pieces <0x00>..<0xFF> are "
                f"missing (e.g. {missing[0]}), so text outside its pieces would become <unk>; "
                f"use a tokenizer trained with byte_fallback=True")
    if (sp.bos_id(), sp.eos_id()) != (1, 2):
        return (f"its BOS/EOS ids are {sp.bos_id()}/{sp.eos_id()} but the challenge's shards and trainer use 1/2; "
                f"use a tokenizer trained with bos_id=1 eos_id=2")
    return None


def sha256_line(model: bytes, file_name: str) -> bytes:
    """The tokenizer.sha256 record: '<64 hex>  <file name>' and a newline, as sha256sum writes it."""
    return f"{hashlib.sha256(model).hexdigest()}  {file_name}\n".encode()


def vocab_text(sp: spm.SentencePieceProcessor) -> str:
    """The .vocab companion of a model: one 'piece<TAB>score' line per id."""
    return "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))


def tokenizer_file_stem(name: str, vocab_size: int, reserved: bool = False) -> str:
    """Trained tokenizer name for dataset `name`: sample_sp1024 -> sample_1024_bpe; with CaseOps
    sample_sp8192_caseops -> sample_8192_caseops_bpe (mine -> mine_8192_caseops_bpe)."""
    base = (name.removesuffix("_caseops") if reserved else name).removesuffix(f"_sp{vocab_size}")
    return f"{base}_{vocab_size}{'_caseops' if reserved else ''}_bpe"


# ---------------------------------------------------------------- shards

def write_atomic(path: Path, data: bytes) -> str:
    """Write data under a temporary name in path's folder, then rename; return its sha256."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


def shard_bytes(tokens: np.ndarray) -> bytes:
    """Header (256 little-endian int32: magic, version, count) followed by uint16 LE tokens."""
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, len(tokens))
    return header.tobytes() + tokens.astype("<u2", copy=False).tobytes()


class ShardWriter:
    """Cuts one split's token stream into fineweb_<split>_NNNNNN.bin files of shard_tokens tokens."""

    def __init__(self, folder: Path, split: str, shard_tokens: int):
        self.folder, self.split, self.shard_tokens = folder, split, shard_tokens
        self.chunks: list[np.ndarray] = []
        self.pending = 0
        self.files: dict[str, dict] = {}

    def add(self, tokens: np.ndarray) -> None:
        self.chunks.append(tokens)
        self.pending += len(tokens)
        while self.pending >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> None:
        if self.pending:
            self._flush(self.pending)

    def _flush(self, count: int) -> None:
        stream = np.concatenate(self.chunks)
        self.chunks, self.pending = [stream[count:]], len(stream) - count
        name = f"fineweb_{self.split}_{len(self.files):06d}.bin"
        self.files[name] = {"tokens": count, "sha256": write_atomic(self.folder / name, shard_bytes(stream[:count]))}


class Progress:
    """Prints documents/s and tokens written to stderr every few seconds (silent on short inputs)."""

    def __init__(self):
        self.start = self.last = time.monotonic()
        self.docs = self.tokens = 0

    def update(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            print(f"  {self.docs:,} docs ({self.docs / (now - self.start):,.0f} docs/s), "
                  f"{self.tokens:,} tokens written", file=sys.stderr, flush=True)


def encode_split(sp, documents, writer: ShardWriter, progress: Progress, sidecar: ShardWriter | None = None) -> int:
    """Write BOS + tokens of every document (and to sidecar its byte counts); return the number of documents."""
    bos, count = sp.bos_id(), 0
    while batch := list(itertools.islice(documents, ENCODE_BATCH_DOCS)):
        stream: list[int] = []
        for ids in sp.encode(batch):
            stream.append(bos)
            stream.extend(ids)
        tokens = np.array(stream, dtype=np.uint16)
        writer.add(tokens)
        if sidecar is not None:
            sidecar.add(caseops.stream_sidecar(sp, tokens, bos))
        progress.update(len(batch), len(stream))
        count += len(batch)
    writer.close()
    if sidecar is not None:
        sidecar.close()
    return count


# ---------------------------------------------------------------- build

def shown(path: Path) -> str:
    """path relative to the working directory when inside it, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_destination(folder: Path, build: dict, overwrite: bool) -> None:
    """Refuse to replace a folder holding a different dataset unless --overwrite."""
    if overwrite or not folder.exists():
        return
    if not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder; remove it or choose another --name")
    if not any(folder.iterdir()):
        return
    old = read_json(folder / "manifest.json")
    old = old.get("build") if isinstance(old, dict) else None
    if old == build:
        return
    if isinstance(old, dict):
        differs = ", ".join(sorted(k for k in build.keys() | old.keys() if build.get(k) != old.get(k)))
        what = f"a different dataset (differs in: {differs})"
    else:
        what = "files this script did not build"
    raise UserError(f"{folder} already holds {what}; pass --overwrite to replace it or --name to build elsewhere")


def resolve_val_docs(args, total: int) -> int:
    if total == 0:
        raise UserError("the input holds no documents (all sources are empty); give non-empty .txt/.jsonl files")
    n_val = args.val_docs if args.val_docs is not None else max(1, int(total * args.val_fraction))
    if n_val >= total:
        raise UserError(f"{n_val} validation documents leave none for training (the input has {total}); "
                        f"lower --val-docs/--val-fraction or give more text")
    return n_val


def load_tokenizer(path: str, vocab_size: int | None, reserved: bool = False) -> bytes:
    """The bytes of a reusable SentencePiece model given with --tokenizer (reserved: for CaseOps text)."""
    model = Path(path).read_bytes()
    try:
        sp = spm.SentencePieceProcessor(model_proto=model)
    except RuntimeError:
        raise UserError(f"--tokenizer {path} is not a SentencePiece .model file")
    if vocab_size is not None and vocab_size != sp.vocab_size():
        raise UserError(f"--vocab-size {vocab_size} does not match {path} ({sp.vocab_size()} pieces); "
                        f"drop --vocab-size")
    problem = tokenizer_problem(sp) or (caseops.reserved_pieces_problem(sp) if reserved else None)
    if problem:
        raise UserError(f"--tokenizer {path}: {problem}")
    return model


def write_shards(folder: Path, sp, documents, n_val: int, shard_tokens: int,
                 sidecars: bool = False) -> tuple[dict, dict]:
    """Encode the first n_val documents into val shards (with byte sidecars if asked) and the rest into
    train shards; return (splits, files)."""
    progress = Progress()
    splits, files = {}, {}
    for split, n_docs in (("val", n_val), ("train", None)):
        writer = ShardWriter(folder, split, shard_tokens)
        sidecar = ShardWriter(folder, "val_bytes", shard_tokens) if sidecars and split == "val" else None
        written = encode_split(sp, itertools.islice(documents, n_docs), writer, progress, sidecar)
        splits[split] = {"docs": written, "tokens": sum(f["tokens"] for f in writer.files.values()),
                         "files": sorted(writer.files)}
        files.update(writer.files)
        if sidecar is not None:
            total = sum(int(np.fromfile(folder / f, dtype="<u2", offset=HEADER_BYTES).sum(dtype=np.int64))
                        for f in sidecar.files)
            splits[split].update(bytes=total, byte_files=sorted(sidecar.files))
            files.update(sidecar.files)
    return splits, files


def replace_folder(new: Path, final: Path) -> None:
    """Put the complete folder `new` in place of `final` (old contents are never mixed with new)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        new.rename(final)
        shutil.rmtree(old)
    else:
        new.rename(final)


def build(args) -> None:
    started = time.monotonic()
    total, sources = scan_sources(args.sources, args.split_paragraphs)
    n_val = resolve_val_docs(args, total)
    if args.tokenizer:
        model = load_tokenizer(args.tokenizer, args.vocab_size, args.caseops)
        vocab_size = spm.SentencePieceProcessor(model_proto=model).vocab_size()
        tokenizer_source = {"path": args.tokenizer, "sha256": hashlib.sha256(model).hexdigest()}
    else:
        vocab_size, tokenizer_source = args.vocab_size or DEFAULT_VOCAB, "trained"
    if vocab_size > MAX_VOCAB:
        raise UserError(f"vocab size {vocab_size} gives token ids that do not fit uint16 shards (max {MAX_VOCAB})")

    suffix = "_caseops" if args.caseops else ""
    name = args.name or f"{'custom' if args.sources else 'sample'}_sp{vocab_size}{suffix}"
    root = Path(args.output_root)
    final = root / "datasets" / name
    build_params = {"sources": sources, "split_paragraphs": args.split_paragraphs, "val_docs": n_val,
                    "shard_tokens": args.shard_tokens, "vocab_size": vocab_size, "tokenizer": tokenizer_source}
    if args.caseops:  # absent for plain text, so that manifests of earlier builds still match
        build_params["text_transform"] = caseops.NAME
    check_destination(final, build_params, args.overwrite)

    def documents():
        docs = all_documents(args.sources, args.split_paragraphs)
        return map(caseops.encode, docs) if args.caseops else docs

    if args.tokenizer:
        model_path = Path(args.tokenizer)
    else:
        print(f"training a {vocab_size}-piece tokenizer on {total - n_val:,} train documents"
              f"{' (CaseOps text)' if args.caseops else ''}", flush=True)
        model = train_tokenizer(itertools.islice(documents(), n_val, None), vocab_size, args.caseops)
        model_path = root / "tokenizers" / f"{tokenizer_file_stem(name, vocab_size, args.caseops)}.model"
        if model_path.exists() and model_path.read_bytes() != model and not args.overwrite:
            raise UserError(f"{model_path} already holds a different tokenizer; pass --overwrite to replace it "
                            f"or --name to build elsewhere")
    sp = spm.SentencePieceProcessor(model_proto=model)

    partial = final.with_name(f".{name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        splits, files = write_shards(partial, sp, documents(), n_val, args.shard_tokens, args.caseops)
        manifest = {
            "format": {"header_int32": HEADER_INTS, "magic": MAGIC, "version": VERSION,
                       "dtype": "uint16", "bos_id": sp.bos_id(), "layout": "BOS + tokens per document"},
            "name": name,
            "text_transform": caseops.NAME if args.caseops else "none",
            "build": build_params,
            "tokenizer": {"model_path": os.path.relpath(model_path, final), "vocab_size": vocab_size,
                          "sha256": hashlib.sha256(model).hexdigest()},
            "splits": splits,
            "files": files,
        }
        write_atomic(partial / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
        write_atomic(partial / SHA256_FILE, sha256_line(model, model_path.name))
        if not args.tokenizer:
            model_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(model_path, model)
            write_atomic(model_path.with_suffix(".vocab"), vocab_text(sp).encode())
        replace_folder(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)

    print(f"built {shown(final)} in {time.monotonic() - started:.1f}s")
    for split, info in splits.items():
        print(f"  {split:5s} {info['docs']:>9,} docs {info['tokens']:>13,} tokens  {len(info['files'])} shard(s)")
    if args.caseops:
        print(f"  CaseOps text; val byte sidecar: {splits['val']['bytes']:,} bytes of original text in "
              f"{len(splits['val']['byte_files'])} file(s)")
    print(f"  tokenizer {shown(model_path)} ({vocab_size} pieces, {'reused' if args.tokenizer else 'trained'})")
    print(f"DATA_PATH={shown(final)} TOKENIZER_PATH={shown(model_path)} VOCAB_SIZE={vocab_size}")


# ---------------------------------------------------------------- verify

def official_entry(folder: Path, problems: list[str]) -> tuple[dict | None, dict]:
    """The dataset entry of folder in a downloaded data/manifest.json and its tokenizer's entry;
    malformed fields become problems (and no entry)."""
    top = read_json(folder.parent.parent / "manifest.json")
    if top is None:
        return None, {}
    where = "data/manifest.json"
    if bad := field_problems(top, OFFICIAL_TOP_SCHEMA, where):
        problems += bad
        return None, {}
    datasets = top.get("datasets", [])
    index = next((i for i, d in enumerate(datasets) if isinstance(d, dict) and d.get("name") == folder.name), None)
    if index is None:
        return None, {}
    entry = datasets[index]
    bad = field_problems(entry, OFFICIAL_ENTRY_SCHEMA, where, f"datasets[{index}]")
    tokenizers = top.get("tokenizers", [])
    tok_index = next((i for i, t in enumerate(tokenizers) if isinstance(t, dict)
                      and t.get("name") == entry.get("tokenizer_name")), None)
    tok = tokenizers[tok_index] if tok_index is not None else {}
    bad += field_problems(tok, OFFICIAL_TOKENIZER_SCHEMA, where, f"tokenizers[{tok_index}]")
    problems += bad
    return (None, {}) if bad else (entry, tok)


def read_manifest(folder: Path, problems: list[str]) -> dict | None:
    """folder/manifest.json when it is a builder manifest with every field verify reads; else None
    (a manifest.json that is unreadable or malformed is a problem)."""
    path = folder / "manifest.json"
    if not path.exists():
        return None
    manifest = read_json(path)
    if manifest is None:
        problems.append("manifest.json: not readable as JSON")
        return None
    bad = field_problems(manifest, MANIFEST_SCHEMA, "manifest.json")
    problems += bad
    return None if bad else manifest


def verify(folder: Path, vocab_size: int | None) -> tuple[list[str], str]:
    """Check every shard in folder against its header, the vocab and any manifest; return (problems, summary)."""
    problems: list[str] = []
    manifest = read_manifest(folder, problems)
    official, official_tok = (None, {}) if (folder / "manifest.json").exists() else official_entry(folder, problems)
    bound = vocab_size or (manifest["tokenizer"]["vocab_size"] if manifest else official_tok.get("vocab_size"))
    listed = manifest["files"] if manifest else {}
    bos_id = manifest["format"]["bos_id"] if manifest else 1
    shards = {"val": 0, "train": 0}
    tokens = {"val": 0, "train": 0}
    docs = {"val": 0, "train": 0}
    val_ids, sidecars = {}, {}
    paths = sorted(folder.glob("fineweb_*.bin"))
    if not paths:
        problems.append(f"{folder}: no fineweb_*.bin shards")
    for path in paths:
        name = path.name
        match = SHARD_NAME_RE.fullmatch(name)
        if not match:
            problems.append(f"{name}: not a fineweb_{{val,train}}_NNNNNN.bin or fineweb_val_bytes_NNNNNN.bin name")
            continue
        data = path.read_bytes()
        if len(data) < HEADER_BYTES:
            problems.append(f"{name}: {len(data)} bytes, shorter than the {HEADER_BYTES}-byte header")
            continue
        magic, version, count = (int(v) for v in np.frombuffer(data, dtype="<i4", count=3))
        if magic != MAGIC or version != VERSION:
            problems.append(f"{name}: header magic/version {magic}/{version}, expected {MAGIC}/{VERSION}")
            continue
        if count < 0 or len(data) != HEADER_BYTES + 2 * count:
            problems.append(f"{name}: header says {count} tokens ({HEADER_BYTES + 2 * count} bytes) "
                            f"but the file has {len(data)} bytes (truncated or corrupt)")
            continue
        values = np.frombuffer(data, dtype="<u2", offset=HEADER_BYTES)
        split, index = match[1], int(match[2])
        if split == "val_bytes":
            sidecars[index] = values
        else:
            if bound and count and int(values.max()) >= bound:
                problems.append(f"{name}: token id {int(values.max())} >= vocab size {bound}")
            unknown = int(np.count_nonzero(values == UNK_ID))
            if unknown:
                problems.append(f"{name}: {unknown} unknown token(s) (<unk>, id {UNK_ID}): the tokenizer that wrote "
                                f"it could not represent some text (no byte fallback?); rebuild with one that has it")
            shards[split] += 1
            tokens[split] += count
            docs[split] += int(np.count_nonzero(values == bos_id))
            if split == "val":
                val_ids[index] = values
        if manifest:
            entry = listed.get(name)
            if entry is None:
                problems.append(f"{name}: not listed in manifest.json")
            elif entry != {"tokens": count, "sha256": hashlib.sha256(data).hexdigest()}:
                problems.append(f"{name}: token count or sha256 differs from manifest.json")
    if manifest:
        problems += [f"{name}: listed in manifest.json but missing" for name in listed if not (folder / name).exists()]
        for split in ("val", "train"):
            info = manifest["splits"][split]
            if tokens[split] != info["tokens"] or docs[split] != info["docs"]:
                problems.append(f"{split} split: {tokens[split]} tokens / {docs[split]} BOS found, manifest.json "
                                f"says {info['tokens']} tokens / {info['docs']} documents")
        against = "manifest.json (sha256, counts)"
    elif official:
        stats = official["stats"]
        if shards["val"] != stats["files_val"] or tokens["val"] != stats["tokens_val"]:
            problems.append(f"val split: {shards['val']} shards / {tokens['val']} tokens found, data/manifest.json "
                            f"says {stats['files_val']} shards / {stats['tokens_val']} tokens")
        if shards["train"] > stats["files_train"]:
            problems.append(f"train split: {shards['train']} shards found, more than the "
                            f"{stats['files_train']} of data/manifest.json")
        against = "data/manifest.json stats"
    else:
        against = "no manifest (headers only)"
    sha_note, model = check_tokenizer_sha256(folder, manifest, problems)
    sp = load_model(model)
    if manifest:
        transform = manifest.get("text_transform", "none")
    elif sp is not None:
        transform = "none" if caseops.reserved_pieces_problem(sp) else caseops.NAME
    elif official and ("val_bytes_glob" in official or "caseops" in str(official_tok.get("text_transform", ""))):
        transform = caseops.NAME
    else:
        transform = None  # unknown: sidecars are checked if present
    notes = [sha_note]
    if sidecars or transform == caseops.NAME:
        notes.append(check_sidecars(val_ids, sidecars, transform, sp, bos_id, manifest, problems))
    summary = (f"OK {folder}: val {tokens['val']:,} tokens in {shards['val']} shard(s), train {tokens['train']:,} "
               f"tokens in {shards['train']} shard(s); ids < {bound or '? (vocab unknown)'}; checked against {against}"
               f"; {'; '.join(n for n in notes if n)}")
    return problems, summary


def load_model(path: Path | None):
    try:
        return spm.SentencePieceProcessor(model_file=str(path)) if path else None
    except (RuntimeError, OSError):
        return None


def check_sidecars(val_ids: dict, sidecars: dict, transform: str | None, sp, bos_id: int, manifest: dict | None,
                   problems: list[str]) -> str:
    """Byte sidecars: one per val shard iff CaseOps, the shard's count, 0 at BOS, and per document the sum
    equals the bytes of its decoded, inverse-transformed text when the tokenizer is at hand. Returns a note."""
    if transform == "none":
        problems += [f"fineweb_val_bytes_{i:06d}.bin: a byte sidecar, but the dataset is not CaseOps text"
                     for i in sorted(sidecars)]
        return ""
    before = len(problems)
    for i in sorted(val_ids.keys() | sidecars.keys()):
        name = f"fineweb_val_bytes_{i:06d}.bin"
        if i not in sidecars:
            problems.append(f"{name}: missing (CaseOps data needs a byte sidecar for each val shard)")
        elif i not in val_ids:
            problems.append(f"{name}: a byte sidecar without its val shard fineweb_val_{i:06d}.bin")
        elif len(sidecars[i]) != len(val_ids[i]):
            problems.append(f"{name}: {len(sidecars[i])} entries, but fineweb_val_{i:06d}.bin has {len(val_ids[i])} "
                            f"tokens")
        elif nonzero := int(np.count_nonzero(sidecars[i][val_ids[i] == bos_id])):
            problems.append(f"{name}: {nonzero} BOS position(s) with a nonzero byte count")
    if len(problems) > before or not sidecars:
        return ""
    ids = np.concatenate([val_ids[i] for i in sorted(val_ids)])
    counts = np.concatenate([sidecars[i] for i in sorted(sidecars)]).astype(np.int64)
    total = int(counts.sum())
    if manifest and manifest["splits"]["val"].get("bytes", total) != total:
        problems.append(f"val byte sidecars: they sum to {total:,} bytes, manifest.json says "
                        f"{manifest['splits']['val']['bytes']:,}")
    if sp is None:
        return f"byte sidecars: {total:,} bytes (tokenizer not found: per-document sums not checked)"
    starts = np.flatnonzero(ids == bos_id)
    bounds = list(zip(starts.tolist(), [*starts[1:].tolist(), len(ids)]))
    sums = np.add.reduceat(counts, starts) if len(starts) else np.zeros(0, np.int64)
    wrong, inexact = [], 0
    for lo in range(0, len(bounds), ENCODE_BATCH_DOCS):
        batch = bounds[lo:lo + ENCODE_BATCH_DOCS]
        for k, text in enumerate(sp.decode([ids[a + 1:b].tolist() for a, b in batch])):
            try:
                original = caseops.decode(text)
            except caseops.CaseOpsError:
                inexact += 1
                original = caseops.decode(text, strict=False)
            if len(original.encode()) != sums[lo + k]:
                wrong.append((lo + k, int(sums[lo + k]), len(original.encode())))
    problems += [f"val document {d} (token {bounds[d][0]}): its byte sidecar sums to {got}, its decoded original "
                 f"text has {want} bytes" for d, got, want in wrong[:5]]
    if len(wrong) > 5:
        problems.append(f"... and {len(wrong) - 5} more val documents whose byte sidecar sum is wrong")
    exact = f", {inexact} of them not exact CaseOps after normalisation" if inexact else ""
    return (f"byte sidecars: {total:,} bytes, per-document sums match the decoded text "
            f"({len(bounds):,} documents{exact})")


def check_tokenizer_sha256(folder: Path, manifest: dict | None, problems: list[str]) -> tuple[str, Path | None]:
    """Check folder/tokenizer.sha256 (format, the manifest's record, the tokenizer file when found); return a
    note and the tokenizer when found and matching."""
    record = folder / SHA256_FILE
    if not record.is_file():
        if manifest:
            model = Path(os.path.normpath(folder / manifest["tokenizer"]["model_path"]))
            if model.is_file() and hashlib.sha256(model.read_bytes()).hexdigest() == manifest["tokenizer"]["sha256"]:
                return f"no {SHA256_FILE}", model
        return f"no {SHA256_FILE}", None
    match = re.fullmatch(r"([0-9a-f]{64})  ([^/\n]+)\n?", record.read_text(errors="replace"))
    if not match:
        problems.append(f"{SHA256_FILE}: not one line '<64 hex digits>  <tokenizer file name>'")
        return "", None
    digest, name = match.groups()
    if manifest:
        recorded = manifest["tokenizer"]["sha256"]
        if recorded != digest:
            problems.append(f"{SHA256_FILE}: says {digest[:16]}... but manifest.json records {str(recorded)[:16]}...")
        model = Path(os.path.normpath(folder / manifest["tokenizer"]["model_path"]))
    else:
        model = folder.parent.parent / "tokenizers" / name  # the downloaded layout
    if model.name != name or not model.is_file():
        return f"{SHA256_FILE} names {name} (not found to compare)", None
    actual = hashlib.sha256(model.read_bytes()).hexdigest()
    if actual != digest:
        problems.append(f"{SHA256_FILE}: {model} has sha256 {actual[:16]}..., not the recorded {digest[:16]}... "
                        f"(the tokenizer was replaced; these shards need the one they were written with)")
        return "", None
    return f"{SHA256_FILE} matches {name}", model


def verify_command(folder: Path, vocab_size: int | None) -> int:
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(f"--verify {folder} {what}; pass a dataset folder such as data/datasets/sample_sp1024")
    problems, summary = verify(folder, vocab_size)
    for problem in problems:
        print(problem)
    if problems:
        print(f"FAILED: {len(problems)} problem(s) in {folder}")
        return 1
    print(summary)
    return 0


# ---------------------------------------------------------------- command line

class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help=".txt or .jsonl files (default: the pydoc_data.topics corpus bundled with Python)")
    p.add_argument("--vocab-size", type=int, metavar="V",
                   help=f"size of the tokenizer to train, {MIN_TRAINED_VOCAB} to {MAX_VOCAB} "
                        f"(default {DEFAULT_VOCAB}); with --verify: the id bound")
    p.add_argument("--tokenizer", metavar="MODEL",
                   help="reuse this SentencePiece .model instead of training one (needs byte fallback, BOS 1, EOS 2)")
    p.add_argument("--name", help="dataset folder name (default sample_sp<V>, or custom_sp<V> when SOURCEs are given)")
    p.add_argument("--output-root", default=str(SCRIPT_DIR), metavar="DIR",
                   help="writes DIR/datasets/<name>/ and DIR/tokenizers/ (default: this script's folder)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-docs", type=int, metavar="N", help="the first N documents form the validation split")
    val.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, metavar="F",
                     help=f"the first F of the documents form the validation split (default {DEFAULT_VAL_FRACTION})")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, metavar="N",
                   help=f"tokens per shard file (default {DEFAULT_SHARD_TOKENS:_})")
    p.add_argument("--split-paragraphs", action="store_true",
                   help=".txt files: one document per blank-line-separated paragraph (default: one per file)")
    p.add_argument("--overwrite", action="store_true", help="replace an output folder holding a different dataset")
    p.add_argument("--caseops", action="store_true",
                   help="rewrite the text with the lossless CaseOps case transform (data/caseops.py) before training "
                        "and encoding; the tokenizer reserves its 4 operators; val shards get byte sidecars "
                        "fineweb_val_bytes_NNNNNN.bin; default names end in _caseops (sample_sp<V>_caseops, "
                        "tokenizer sample_<V>_caseops_bpe.model)")
    p.add_argument("--verify", metavar="DIR",
                   help="check a dataset folder (headers, token ids, <unk> tokens, manifest sha256 and counts, "
                        "tokenizer.sha256, CaseOps byte sidecars) and exit")
    args = p.parse_args(argv)
    if args.verify is not None:
        if args.sources:
            p.error(f"--verify takes no SOURCE arguments (got {' '.join(args.sources)})")
        if args.caseops:
            p.error("--verify takes no --caseops: whether a dataset is CaseOps is read from its manifest.json "
                    "or tokenizer")
        if args.vocab_size is not None and not 1 <= args.vocab_size <= MAX_VOCAB:
            p.error(f"--vocab-size {args.vocab_size} is out of range: give 1 to {MAX_VOCAB} (the bound token ids "
                    f"must stay under)")
        return args
    for source in args.sources:
        path = Path(source)
        if path.is_dir():
            p.error(f"source {source} is a folder; give the .txt/.jsonl files in it (e.g. {source}/*.txt)")
        if not source.endswith((".txt", ".jsonl")):
            p.error(f"source {source}: only .txt and .jsonl files are supported")
        if not path.is_file():
            p.error(f"source {source} does not exist")
    if args.name is not None and (Path(args.name).name != args.name or args.name in ("", ".", "..")):
        p.error(f"--name {args.name!r} must be a plain folder name (no /, not . or ..)")
    if args.tokenizer is not None and not Path(args.tokenizer).is_file():
        what = "is a folder" if Path(args.tokenizer).is_dir() else "does not exist"
        p.error(f"--tokenizer {args.tokenizer} {what}; give a SentencePiece .model file")
    if args.vocab_size is not None and not MIN_TRAINED_VOCAB <= args.vocab_size <= MAX_VOCAB:
        p.error(f"--vocab-size {args.vocab_size} is out of range: give {MIN_TRAINED_VOCAB} (4 special ids + 256 "
                f"byte pieces) to {MAX_VOCAB} (ids are stored as uint16)")
    if args.caseops and args.vocab_size is not None and args.vocab_size < MIN_CASEOPS_VOCAB:
        p.error(f"--vocab-size {args.vocab_size} is out of range with --caseops: give {MIN_CASEOPS_VOCAB} (4 special "
                f"ids + 256 byte pieces + 4 CaseOps operators) to {MAX_VOCAB}")
    if args.val_docs is not None and args.val_docs < 1:
        p.error(f"--val-docs {args.val_docs} must be at least 1")
    if not 0 < args.val_fraction < 1:
        p.error(f"--val-fraction {args.val_fraction} must be between 0 and 1 (exclusive), e.g. 0.1")
    if not 1 <= args.shard_tokens < 2**31:
        p.error(f"--shard-tokens {args.shard_tokens} is out of range: give 1 to 2147483647 "
                f"(the header count is an int32)")
    root = Path(args.output_root)
    for path in (root, root / "datasets", root / "tokenizers"):
        if path.exists() and not path.is_dir():
            p.error(f"--output-root {args.output_root}: {path} is a file, not a folder; "
                    f"remove it or choose another --output-root")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.verify is not None:
            return verify_command(Path(args.verify), args.vocab_size)
        build(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a disk full, a permission: nothing half-written is left under a final name
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
