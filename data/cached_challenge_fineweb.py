#!/usr/bin/env python3
"""Download the challenge's tokenized FineWeb export from the Hugging Face Hub.

    python3 data/cached_challenge_fineweb.py --variant sp1024 --train-shards 10
    python3 data/cached_challenge_fineweb.py --variant sp8192 --train-shards 128
    python3 data/cached_challenge_fineweb.py --variant sp1024 10      # upstream's positional count

Fetches every validation shard, the first N train shards and the variant's tokenizer into
data/datasets/<dataset>/ and data/tokenizers/ (next to this script, whatever the working
directory). Files go through the standard Hugging Face cache (HF_HOME / HF_HUB_CACHE) and
are hard-linked (or copied) from there, so nothing is downloaded twice and HF_HUB_OFFLINE=1
works once the files are cached. Complete files are skipped; a file appears under its
final name only once complete, so an interrupted run resumes when run again. The
tokenizer's sha256 is written to data/datasets/<dataset>/tokenizer.sha256.

Where from: the repository's manifest.json (local copy data/manifest.json, fetched when it
does not list the variant). sp1024 and byte260 come from willdepueoai/parameter-golf;
sp4096 and sp8192 from kevclark/parameter-golf, as the public records download them (a
built-in table stands in when no manifest lists them). MATCHED_FINEWEB_REPO_ID (the
repository, always wins) and MATCHED_FINEWEB_REMOTE_ROOT_PREFIX (its folder, default
"datasets") override.

CaseOps (--variant sp8192_caseops, or the records' sp8192_lossless_caps_caseops_v1_reserved):
the records' case-transformed sp8192 data from romeerp/parameter-golf-caseops-v1. Its byte
sidecar is recomputed from the val tokens (fineweb_val_bytes_NNNNNN.bin: the bytes of the
decoded original text per token, as data/build_dataset.py --caseops writes it); the published
one, which counts raw input bytes, is kept as published_val_bytes_NNNNNN.bin for comparison.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import posixpath
import re
import shutil
import struct
import sys
import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
DEFAULT_REMOTE_PREFIX = "datasets"
DEFAULT_TRAIN_SHARDS = 80
MAX_TRAIN_SHARDS = 1_000_000  # shard names carry 6 digits
DOCS_FILES = ("docs_selected.jsonl", "docs_selected.source_manifest.json")
HEADER_BYTES = 1024
MAGIC, VERSION = 20240520, 1
SHA256_FILE = "tokenizer.sha256"
REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")

# Tokenizations published outside the default repository, as the public records fetch them
# (MATCHED_FINEWEB_REPO_ID=kevclark/parameter-golf). Used to pick the repository when
# MATCHED_FINEWEB_REPO_ID is unset, and as the manifest entry when no manifest lists the
# dataset (e.g. --skip-manifest without a local data/manifest.json). Counts are those the
# records' logs show: one val shard (40.5M sp8192 tokens < 100M per shard), 143 / 128 train
# shards. The layout is that of the challenge's exporter (fineweb_<V>_bpe.model + .vocab).
# The CaseOps export (records/.../2026-04-18_PR1626_CaseOps_Taper): one val shard (47.9M tokens) with its
# byte sidecar, 80 train shards (the records' logs: train_shards: 80), tokenizer fineweb_8192_bpe_<suffix>.
CASEOPS_VARIANT = "sp8192_lossless_caps_caseops_v1_reserved"
BUILTIN_VARIANTS = {
    "sp4096": {"repo_id": "kevclark/parameter-golf", "vocab_size": 4096, "files_val": 1, "files_train": 143},
    "sp8192": {"repo_id": "kevclark/parameter-golf", "vocab_size": 8192, "files_val": 1, "files_train": 128},
    CASEOPS_VARIANT: {"repo_id": "romeerp/parameter-golf-caseops-v1", "vocab_size": 8192, "files_val": 1,
                      "files_train": 80, "caseops": True},
}
VARIANT_ALIASES = {"sp8192_caseops": CASEOPS_VARIANT}
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
clock = time.monotonic


class UserError(Exception):
    """Wrong flags or settings, or a variant the repository does not offer (exit 2)."""


class DownloadError(Exception):
    """The hub could not deliver a file (exit 1); rerunning resumes."""


class MissingRemoteFile(DownloadError):
    """The repository has no such file."""


# ---------------------------------------------------------------- checking parsed JSON

JSON_KINDS = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
              bool: "a boolean", type(None): "null"}
_MISSING = object()


def _values(node, parts: list[str], shown: str):
    """(shown path, value or _MISSING) of every field parts names under node; nothing under a wrong parent."""
    if not parts:
        yield shown, node
        return
    part, rest = parts[0], parts[1:]
    if not isinstance(node, dict):
        return
    if part == "*":
        for key, value in node.items():
            yield from _values(value, rest, f"{shown}.{key}" if shown else key)
        return
    name = part.removesuffix("[]")
    path = f"{shown}.{name}" if shown else name
    value = node.get(name, _MISSING)
    if part.endswith("[]"):
        for i, item in enumerate(value if isinstance(value, list) else []):
            yield from _values(item, rest, f"{path}[{i}]")
    elif value is not _MISSING or not rest:
        yield from _values(value, rest, path)


def field_problems(data, schema, where: str, prefix: str = "") -> list[str]:
    """One line per field of parsed JSON data that is missing or of the wrong kind or range.

    schema: rows (path, kind, allowed). path: keys joined by '.', '*' for every value of an object,
    'key[]' for every item of a list, '' for data itself, a final '?' when the field may be absent.
    kind: dict, list, str or int (a boolean is no integer). allowed: None, (low, high) for an int,
    a set of strings, or (compiled pattern, what it means) for a string. A field under a missing or
    wrong-kind parent is not checked: its parent is reported."""
    problems = []
    for path, kind, allowed in schema:
        optional = path.endswith("?")
        parts = [p for p in path.removesuffix("?").split(".") if p]
        for shown, value in _values(data, parts, prefix):
            field = f"field {shown} " if shown else ""
            if value is _MISSING:
                if not optional:
                    problems.append(f"{where}: {field}is missing")
                continue
            actual = type(value) if type(value) in JSON_KINDS else float
            if actual is not kind:
                problems.append(f"{where}: {field}is {JSON_KINDS[actual]}, expected {JSON_KINDS[kind]}")
            elif isinstance(allowed, tuple) and kind is int and not allowed[0] <= value <= allowed[1]:
                problems.append(f"{where}: {field}is {value}, expected {allowed[0]} to {allowed[1]}")
            elif isinstance(allowed, (set, frozenset)) and value not in allowed:
                choices = ", ".join(map(repr, sorted(allowed)))
                problems.append(f"{where}: {field}is {value!r}, expected one of {choices}")
            elif isinstance(allowed, tuple) and kind is str and not allowed[0].fullmatch(value):
                problems.append(f"{where}: {field}is {value[:40]!r}, expected {allowed[1]}")
    return problems


SHARD_COUNT = (0, MAX_TRAIN_SHARDS)
TOP_SCHEMA = [("", dict, None), ("datasets?", list, None), ("tokenizers?", list, None)]
ENTRY_SCHEMA = [("tokenizer_name", str, None), ("stats", dict, None), ("stats.files_val", int, SHARD_COUNT),
                ("stats.files_train", int, SHARD_COUNT), ("val_bytes_glob?", str, None)]
TOKENIZER_SCHEMA = [("model_path?", str, None), ("vocab_path?", str, None), ("path?", str, None),
                    ("optional?", list, None), ("optional[]", str, None), ("vocab_size?", int, (1, 1 << 16))]


def refuse_malformed(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}; fix or delete that manifest")


# ---------------------------------------------------------------- the hub

_HUB = None


def hub_api():
    """hf_hub_download and the error classes, on every huggingface_hub from 0.23 on.

    The classes live in huggingface_hub.errors from 0.25 (0.23/0.24 already have an errors
    module, without them) and in huggingface_hub.utils on every version so far."""
    global _HUB
    if _HUB is None:
        try:
            import huggingface_hub
        except ImportError:
            raise UserError("huggingface_hub is not installed: pip install -r requirements.txt")
        names = ("EntryNotFoundError", "LocalEntryNotFoundError", "RepositoryNotFoundError")
        found = {}
        for module in ("huggingface_hub.errors", "huggingface_hub.utils"):
            try:
                mod = __import__(module, fromlist=list(names))
            except ImportError:
                continue
            found = {n: getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)}
            if len(found) == len(names):
                break
        download = getattr(huggingface_hub, "hf_hub_download", None)
        if len(found) != len(names) or download is None:
            version = getattr(huggingface_hub, "__version__", "?")
            raise UserError(f"huggingface_hub {version} lacks hf_hub_download or its error classes; "
                            f"pip install -U 'huggingface_hub>=0.23'")
        _HUB = (download, found["EntryNotFoundError"], found["LocalEntryNotFoundError"],
                found["RepositoryNotFoundError"])
    return _HUB


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in TRUE_VALUES


def download_file(repo_id: str, remote_path: str, destination: Path) -> Path:
    """Put remote_path of dataset repo repo_id at destination through the Hugging Face cache.

    The file lands in the cache (complete or not at all, the hub's own guarantee), then is
    hard-linked to destination, or copied where linking fails. Returns the cached file.
    The only network access."""
    hf_hub_download, EntryNotFound, LocalEntryNotFound, RepositoryNotFound = hub_api()
    subfolder, filename = posixpath.split(remote_path)
    try:
        cached = hf_hub_download(repo_id=repo_id, filename=filename, subfolder=subfolder or None,
                                 repo_type="dataset")
    except LocalEntryNotFound:
        if offline():
            raise DownloadError("it is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                                "unset HF_HUB_OFFLINE to download it")
        raise DownloadError("cannot reach the Hugging Face Hub (no network?) and it is not in the cache")
    except EntryNotFound:
        raise MissingRemoteFile(f"it does not exist in dataset repo {repo_id}")
    except RepositoryNotFound:
        raise DownloadError(f"dataset repo {repo_id} not found (check MATCHED_FINEWEB_REPO_ID)")
    except Exception as e:  # network failures of the HTTP client arrive with many types
        raise DownloadError(f"{type(e).__name__}: {e}")
    source = Path(cached).resolve(strict=True)  # snapshot entries are symlinks to blobs
    destination.unlink(missing_ok=True)
    try:
        os.link(source, destination)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(source, destination)
    return source


# ---------------------------------------------------------------- local files

def is_complete_shard(path: Path) -> bool:
    """A shard is complete when its header is valid and its size is 1024 + 2 * token count."""
    try:
        with open(path, "rb") as f:
            magic, version, count = struct.unpack("<3i", f.read(12))
        return magic == MAGIC and version == VERSION and path.stat().st_size == HEADER_BYTES + 2 * count
    except (OSError, struct.error):
        return False


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_atomic(path: Path, text: str) -> None:
    write_atomic_bytes(path, text.encode())


def write_atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def record_tokenizer_sha256(folder: Path, tokenizer: Path) -> str:
    """Write folder/tokenizer.sha256 ('<hex>  <file name>', sha256sum format) unless it already says so."""
    line = f"{sha256_of(tokenizer)}  {tokenizer.name}\n"
    target = folder / SHA256_FILE
    try:
        current = target.read_text()
    except OSError:
        current = None
    if current != line:
        write_atomic(target, line)
    return line.split()[0]


def shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- what to fetch

def canonical(variant: str) -> str:
    """The variant's published name (sp8192_caseops -> sp8192_lossless_caps_caseops_v1_reserved)."""
    return VARIANT_ALIASES.get(variant, variant)


def dataset_name(variant: str) -> str:
    variant = canonical(variant)
    if variant not in ("byte260", CASEOPS_VARIANT) and not re.fullmatch(r"sp[1-9]\d*", variant):
        raise UserError(f"unknown --variant {variant!r}: use sp<VOCAB> (e.g. sp1024, sp8192), sp8192_caseops "
                        f"or byte260")
    return f"fineweb10B_{variant}"


def find(entries, name: str):
    """The entry named name of a manifest list (anything but a list holds none)."""
    return next((e for e in (entries if isinstance(entries, list) else []) if isinstance(e, dict)
                 and e.get("name") == name), None)


def local_path(data_dir: Path, relative: str) -> Path:
    """Where a manifest path (relative to the remote root) lives locally; refuses paths leaving data_dir."""
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts or not parts:
        raise DownloadError(f"the manifest lists an unsafe path {relative!r}")
    return data_dir.joinpath(*parts)


def builtin_manifest(variant: str) -> dict:
    """A manifest holding only the built-in entry of variant (sp4096, sp8192, the CaseOps sp8192)."""
    known = BUILTIN_VARIANTS[variant]
    vocab = known["vocab_size"]
    suffix = variant.removeprefix(f"sp{vocab}")  # "_lossless_caps_caseops_v1_reserved" or ""
    stem = f"fineweb_{vocab}_bpe{suffix}"
    tokenizer = {"name": f"sp_bpe_{vocab}{suffix}", "kind": "sentencepiece_bpe", "vocab_size": vocab,
                 "model_path": f"tokenizers/{stem}.model", "vocab_path": f"tokenizers/{stem}.vocab",
                 "optional": ["vocab_path"]}
    dataset = {"name": dataset_name(variant), "tokenizer_name": tokenizer["name"],
               "stats": {"files_val": known["files_val"], "files_train": known["files_train"]}}
    if known.get("caseops"):
        dataset["val_bytes_glob"] = f"datasets/{dataset['name']}/fineweb_val_bytes_*.bin"
    return {"datasets": [dataset], "tokenizers": [tokenizer]}


def load_entry(data_dir: Path, repo_id: str, remote, variant: str, skip_manifest: bool) -> tuple[dict, dict, str]:
    """(manifest, dataset entry, where the entry came from).

    data/manifest.json when it lists the dataset; otherwise the repository's manifest.json
    (not with --skip-manifest, like upstream); otherwise the built-in table for sp4096/sp8192
    from their repository."""
    name = dataset_name(variant)
    path = data_dir / "manifest.json"
    manifest = read_json(path)
    top_problems = field_problems(manifest, TOP_SCHEMA, shown(path)) if manifest is not None else []
    manifest = manifest if manifest is not None and not top_problems else None
    entry = find(manifest and manifest.get("datasets"), name)
    if entry is not None:
        return manifest, entry, shown(path)
    table = None  # the built-in entry, for sp4096/sp8192 from their repository only
    if variant in BUILTIN_VARIANTS and BUILTIN_VARIANTS[variant]["repo_id"] == repo_id:
        fallback = builtin_manifest(variant)
        table = (fallback, fallback["datasets"][0], "the built-in table")
    if skip_manifest:
        if table:
            return table
        state = ("is missing" if not path.exists() else f"is malformed ({top_problems[0].split(': ', 1)[1]})"
                 if top_problems else "is not a readable manifest" if manifest is None else f"does not list {name}")
        raise UserError(f"--skip-manifest: {shown(path)} {state}; drop --skip-manifest to download "
                        f"the manifest of {repo_id}")
    try:
        fetch(repo_id, remote("manifest.json"), path, lambda p: isinstance(read_json(p), dict), force=True)
    except MissingRemoteFile:
        if table:
            return table
        raise DownloadError(f"dataset repo {repo_id} has no {remote('manifest.json')}")
    manifest = read_json(path)
    refuse_malformed(field_problems(manifest, TOP_SCHEMA, f"the manifest of {repo_id}"))
    entry = find(manifest.get("datasets"), name)
    if entry is None:
        if table:
            return table
        names = ", ".join(str(d.get("name")) for d in manifest.get("datasets", []) if isinstance(d, dict))
        raise UserError(f"the manifest has no dataset {name} (it has: {names or 'none'})")
    return manifest, entry, f"the manifest of {repo_id}"


def plan(manifest: dict, entry: dict, train_shards: int, with_docs: bool, source: str):
    """(shard paths, [(other path, optional)], tokenizer entry), paths relative to the remote root."""
    name = entry["name"]
    index = manifest["datasets"].index(entry)
    refuse_malformed(field_problems(entry, ENTRY_SCHEMA, source, f"datasets[{index}]"))
    files_val, files_train = entry["stats"]["files_val"], entry["stats"]["files_train"]
    if train_shards > files_train:
        raise UserError(f"--train-shards {train_shards} requested but {name} has only {files_train} train "
                        f"shards (per {source}); use --train-shards {files_train} or less")
    tokenizer = find(manifest.get("tokenizers"), entry.get("tokenizer_name"))
    if tokenizer is None:
        raise UserError(f"{source} has no tokenizer {entry.get('tokenizer_name')!r} for {name}; fix or delete "
                        f"that manifest")
    index = manifest["tokenizers"].index(tokenizer)
    refuse_malformed(field_problems(tokenizer, TOKENIZER_SCHEMA, source, f"tokenizers[{index}]"))
    optional = tokenizer.get("optional", [])
    tokenizer_files = [(tokenizer[k], k in optional) for k in ("model_path", "vocab_path", "path") if tokenizer.get(k)]
    if not tokenizer_files:
        raise UserError(f"{source} gives no file for tokenizer {tokenizer['name']!r} (no model_path, vocab_path or "
                        f"path); fix or delete that manifest")
    shards = [f"datasets/{name}/fineweb_val_{i:06d}.bin" for i in range(files_val)]
    shards += [f"datasets/{name}/fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    docs = [(p, False) for p in DOCS_FILES] if with_docs else []
    return shards, tokenizer_files + docs, tokenizer


# ---------------------------------------------------------------- fetching

def fetch(repo_id: str, remote_path: str, local: Path, complete, force: bool = False) -> int:
    """Bring remote_path to local unless complete(local) (and not force); return its size, or 0 when skipped."""
    if not force and complete(local):
        return 0
    hub_api()  # a missing or unusable huggingface_hub is reported before anything is written
    local.parent.mkdir(parents=True, exist_ok=True)
    part = local.with_name(local.name + ".part")
    try:
        try:
            source = download_file(repo_id, remote_path, part)
        except MissingRemoteFile as e:
            raise MissingRemoteFile(f"could not download {remote_path}: {e}")
        except (DownloadError, OSError) as e:
            raise DownloadError(f"could not download {remote_path}: {e}")
        if not complete(part):
            raise DownloadError(f"{remote_path} arrived incomplete or corrupt; delete {source} "
                                f"from the Hugging Face cache and rerun")
        size = part.stat().st_size
        os.replace(part, local)
    finally:
        part.unlink(missing_ok=True)
    return max(size, 1)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """One line per shard: 'k/N shards, MB/s, ETA' over the shards that need fetching."""

    def __init__(self, total: int):
        self.total, self.done, self.bytes, self.start = total, 0, 0, clock()

    def shard(self, name: str, size: int) -> None:
        self.done += 1
        self.bytes += size
        elapsed = max(clock() - self.start, 1e-9)
        eta = elapsed / self.done * (self.total - self.done)
        print(f"  {self.done}/{self.total} shards, {self.bytes / 1e6 / elapsed:.1f} MB/s, ETA {duration(eta)}"
              f"  {name}", flush=True)


def environment() -> tuple[str | None, str]:
    """(MATCHED_FINEWEB_REPO_ID or None, remote prefix), checked."""
    repo_id = os.environ.get("MATCHED_FINEWEB_REPO_ID")
    if repo_id is not None and not (REPO_ID_RE.fullmatch(repo_id) and len(repo_id) <= 96):
        raise UserError(f"MATCHED_FINEWEB_REPO_ID={repo_id!r} is not a Hugging Face repo id: use owner/name "
                        f"(e.g. kevclark/parameter-golf) or unset it")
    prefix = os.environ.get("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", DEFAULT_REMOTE_PREFIX).strip("/")
    if ".." in prefix.split("/") or "\\" in prefix:
        raise UserError(f"MATCHED_FINEWEB_REMOTE_ROOT_PREFIX={prefix!r} must be a folder inside the repository "
                        f"(e.g. datasets, or empty for its root)")
    return repo_id, prefix


def import_caseops():
    """data/caseops.py (numpy, sentencepiece), checked before anything is downloaded."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ written into data/
    try:
        import caseops
        import sentencepiece  # noqa: F401
    except ImportError as e:
        raise UserError(f"the CaseOps variant recomputes its byte sidecar and needs {e.name}: "
                        f"pip install -r requirements.txt")
    finally:
        sys.dont_write_bytecode = bytecode
    return caseops


def shard_file(values) -> bytes:
    header = struct.pack("<256i", MAGIC, VERSION, len(values), *[0] * 253)
    return header + values.astype("<u2").tobytes()


def recompute_sidecars(caseops, folder: Path, model: Path, files_val: int) -> str:
    """Write fineweb_val_bytes_NNNNNN.bin from the val tokens with caseops.stream_sidecar (the builder's
    code): per token, the bytes of the decoded original text. Returns a line comparing the totals."""
    import numpy as np
    import sentencepiece as spm
    try:
        sp = spm.SentencePieceProcessor(model_file=str(model))
    except (RuntimeError, OSError) as e:
        raise DownloadError(f"{model} is not a SentencePiece model ({e}); delete it and rerun")
    shards = [np.fromfile(folder / f"fineweb_val_{i:06d}.bin", dtype="<u2", offset=HEADER_BYTES)
              for i in range(files_val)]
    try:
        sidecar = caseops.stream_sidecar(sp, np.concatenate(shards) if shards else np.zeros(0, np.uint16),
                                         sp.bos_id())
    except ValueError as e:
        raise DownloadError(f"cannot compute the byte sidecar: {e}; the val shards do not match {model.name}")
    written, start = 0, 0
    for i, tokens in enumerate(shards):
        data = shard_file(sidecar[start:start + len(tokens)])
        start += len(tokens)
        target = folder / f"fineweb_val_bytes_{i:06d}.bin"
        if not target.is_file() or target.read_bytes() != data:
            write_atomic_bytes(target, data)
            written += 1
    ours = int(sidecar.sum(dtype=np.int64))
    line = (f"byte sidecar: {ours:,} bytes over {len(sidecar):,} val tokens, recomputed from the tokens "
            f"({written} file(s) written, fineweb_val_bytes_*.bin)")
    published = [folder / f"published_val_bytes_{i:06d}.bin" for i in range(files_val)]
    if published and all(is_complete_shard(p) for p in published):
        values = [np.fromfile(p, dtype="<u2", offset=HEADER_BYTES) for p in published]
        theirs = sum(int(v.sum(dtype=np.int64)) for v in values)
        change = f"{(theirs - ours) / ours:+.4%}" if ours else "n/a"
        line += f"; the published sidecar counts {theirs:,} raw input bytes ({change})"
        if [len(v) for v in values] != [len(t) for t in shards]:
            line += f" but has {sum(map(len, values)):,} entries, not one per val token"
    return line


def run(variant: str, train_shards: int, with_docs: bool, data_dir: Path, skip_manifest: bool = False) -> None:
    name = dataset_name(variant)
    variant = canonical(variant)
    env_repo, prefix = environment()
    repo_id = env_repo or BUILTIN_VARIANTS.get(variant, {}).get("repo_id", DEFAULT_REPO_ID)
    caseops = import_caseops() if BUILTIN_VARIANTS.get(variant, {}).get("caseops") else None

    def remote(relative: str) -> str:
        return posixpath.join(prefix, relative) if prefix else relative

    manifest, entry, source = load_entry(data_dir, repo_id, remote, variant, skip_manifest)
    shards, others, tokenizer = plan(manifest, entry, train_shards, with_docs, source)
    shard_jobs = [(p, local_path(data_dir, p)) for p in shards]
    other_jobs = [(p, local_path(data_dir, p), opt) for p, opt in others]
    todo = [(p, local) for p, local in shard_jobs if not is_complete_shard(local)]
    print(f"{name} from {repo_id} (per {source}): {len(shards) - train_shards} val + {train_shards} train shards, "
          f"{len(todo)} to fetch", flush=True)
    fetched = 0
    progress = Progress(len(todo))
    for remote_path, local in todo:
        size = fetch(repo_id, remote(remote_path), local, is_complete_shard, force=True)
        progress.shard(local.name, size)
        fetched += 1
    folder = data_dir / "datasets" / name
    files_val = len(shards) - train_shards
    if caseops:  # the published sidecar, under a name the trainer's fineweb_val_bytes_*.bin does not match
        other_jobs += [(f"datasets/{name}/fineweb_val_bytes_{i:06d}.bin",
                        folder / f"published_val_bytes_{i:06d}.bin", True) for i in range(files_val)]
    skipped_optional = []
    for remote_path, local, optional in other_jobs:
        complete = is_complete_shard if local.name.startswith("published_val_bytes_") else Path.is_file
        try:
            fetched += bool(fetch(repo_id, remote(remote_path), local, complete))
        except MissingRemoteFile:
            if not optional:
                raise
            skipped_optional.append(remote_path)
    folder.mkdir(parents=True, exist_ok=True)
    model = other_jobs[0][1]
    digest = record_tokenizer_sha256(folder, model)
    total = len(shard_jobs) + len(other_jobs) - len(skipped_optional)
    print(f"{fetched} file(s) fetched, {total - fetched} already complete"
          + (f", {', '.join(skipped_optional)} not in the repository" if skipped_optional else "")
          + f"; {shown(folder / SHA256_FILE)}: {digest[:16]}... {model.name}")
    if caseops:
        print(recompute_sidecars(caseops, folder, model, files_val), flush=True)
    print(f"DATA_PATH={shown(folder)} TOKENIZER_PATH={shown(model)} VOCAB_SIZE={tokenizer.get('vocab_size', '?')}")


# ---------------------------------------------------------------- command line

class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def train_shard_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if not 0 <= value <= MAX_TRAIN_SHARDS:
        raise argparse.ArgumentTypeError(f"{value} is out of range: give 0 to {MAX_TRAIN_SHARDS:,} "
                                         f"(each shard is 100M tokens, 200 MB)")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_shards_positional", nargs="?", type=train_shard_count, metavar="N",
                   help="same as --train-shards N (the form some published commands use)")
    p.add_argument("--variant", default="sp1024",
                   help="sp<VOCAB> (sp1024, sp4096, sp8192, ...), byte260, or sp8192_caseops (alias of the records' "
                        f"{CASEOPS_VARIANT}: CaseOps text, byte sidecar recomputed) (default sp1024)")
    p.add_argument("--train-shards", type=train_shard_count, metavar="N",
                   help=f"how many train shards to fetch, from the first (default {DEFAULT_TRAIN_SHARDS}; "
                        f"100M tokens, 200 MB each)")
    p.add_argument("--skip-manifest", action="store_true",
                   help="never download manifest.json: use data/manifest.json, or for sp4096/sp8192 the "
                        "built-in table when it does not list them")
    p.add_argument("--with-docs", action="store_true",
                   help="also fetch the raw documents (docs_selected.jsonl) and their source manifest")
    args = p.parse_args(argv)
    positional, flag = args.train_shards_positional, args.train_shards
    if positional is not None and flag is not None and positional != flag:
        p.error(f"the train shard count is given twice and disagrees: {positional} (positional) and "
                f"--train-shards {flag}; give it once")
    args.train_shards = next((v for v in (positional, flag) if v is not None), DEFAULT_TRAIN_SHARDS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args.variant, args.train_shards, args.with_docs, DATA_DIR, args.skip_manifest)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DownloadError, OSError) as e:
        print(f"error: {e}; rerun the same command to resume (complete files are kept)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume; complete files are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    if not sys.stderr.isatty():  # the hub's per-file bars would flood logs; ours prints one line per shard
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    sys.exit(main())
