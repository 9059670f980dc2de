#!/usr/bin/env python3
"""Download the challenge's tokenized FineWeb export from the Hugging Face Hub.

    python3 data/cached_challenge_fineweb.py --variant sp1024 --train-shards 10

Reads the published manifest.json, then fetches every validation shard, the first
--train-shards train shards and the variant's tokenizer files into
data/datasets/<dataset>/ and data/tokenizers/ (next to this script, whatever the working
directory). Complete files are skipped, so an interrupted run resumes when run again;
each file is downloaded under a temporary name and renamed only once complete.
Repository and folder: MATCHED_FINEWEB_REPO_ID and MATCHED_FINEWEB_REMOTE_ROOT_PREFIX.
"""
from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import shutil
import struct
import sys
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
DEFAULT_REMOTE_PREFIX = "datasets"
DEFAULT_TRAIN_SHARDS = 80
DOCS_FILES = ("docs_selected.jsonl", "docs_selected.source_manifest.json")
HEADER_BYTES = 1024
MAGIC, VERSION = 20240520, 1


class UserError(Exception):
    """Wrong flags or a variant the manifest does not offer (exit 2)."""


class DownloadError(Exception):
    """The hub could not deliver a file (exit 1); rerunning resumes."""


def download_file(remote_path: str, destination: Path) -> None:
    """Fetch remote_path (relative to the dataset repo root) to destination. The only network access."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise DownloadError("huggingface_hub is not installed: pip install -r requirements.txt")
    repo_id = os.environ.get("MATCHED_FINEWEB_REPO_ID", DEFAULT_REPO_ID)
    subfolder, filename = posixpath.split(remote_path)
    staging = destination.with_name(f".{destination.name}.hf")  # same filesystem, so the rename is atomic
    try:
        fetched = hf_hub_download(repo_id=repo_id, filename=filename, subfolder=subfolder or None,
                                  repo_type="dataset", local_dir=staging)
        os.replace(fetched, destination)
    except LocalEntryNotFoundError:
        raise DownloadError("cannot reach the Hugging Face Hub (no network?)")
    except EntryNotFoundError:
        raise DownloadError(f"it does not exist in dataset repo {repo_id}")
    except RepositoryNotFoundError:
        raise DownloadError(f"dataset repo {repo_id} not found (check MATCHED_FINEWEB_REPO_ID)")
    except Exception as e:  # network failures of the HTTP client arrive with many types
        raise DownloadError(f"{type(e).__name__}: {e}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def fetch(remote_path: str, local: Path, complete, force: bool = False) -> bool:
    """Download remote_path to local unless complete(local) (and not force); return whether it downloaded."""
    if not force and complete(local):
        return False
    local.parent.mkdir(parents=True, exist_ok=True)
    part = local.with_name(local.name + ".part")
    print(f"downloading {remote_path}", flush=True)
    try:
        try:
            download_file(remote_path, part)
        except (DownloadError, OSError) as e:
            raise DownloadError(f"could not download {remote_path}: {e}")
        if not complete(part):
            raise DownloadError(f"{remote_path} arrived incomplete or corrupt")
        os.replace(part, local)
    finally:
        part.unlink(missing_ok=True)
    return True


def dataset_name(variant: str) -> str:
    if variant != "byte260" and not re.fullmatch(r"sp[1-9]\d*", variant):
        raise UserError(f"unknown variant {variant!r}: use sp<VOCAB> (e.g. sp1024) or byte260")
    return f"fineweb10B_{variant}"


def find(entries, name: str):
    return next((e for e in entries or [] if isinstance(e, dict) and e.get("name") == name), None)


def local_path(data_dir: Path, relative: str) -> Path:
    """Where a manifest path (relative to the remote root) lives locally; refuses paths leaving data_dir."""
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts or not parts:
        raise DownloadError(f"the manifest lists an unsafe path {relative!r}")
    return data_dir.joinpath(*parts)


def load_manifest(data_dir: Path, remote, name: str) -> tuple[dict, dict]:
    """The manifest and the entry of dataset name; fetches a fresh manifest if the local one lacks it."""
    path = data_dir / "manifest.json"
    manifest = read_json(path)
    if find(isinstance(manifest, dict) and manifest.get("datasets"), name) is None:
        fetch(remote("manifest.json"), path, lambda p: isinstance(read_json(p), dict), force=True)
        manifest = read_json(path)
    entry = find(manifest.get("datasets"), name)
    if entry is None:
        names = ", ".join(str(d.get("name")) for d in manifest.get("datasets", []) if isinstance(d, dict))
        raise UserError(f"the manifest has no dataset {name} (it has: {names or 'none'})")
    return manifest, entry


def plan(manifest: dict, entry: dict, train_shards: int, with_docs: bool) -> tuple[list[str], list[str], dict]:
    """(shard paths, other file paths relative to the remote root, tokenizer entry); the model comes first."""
    name, stats = entry["name"], entry.get("stats", {})
    files_val, files_train = stats.get("files_val"), stats.get("files_train")
    if not isinstance(files_val, int) or not isinstance(files_train, int):
        raise DownloadError(f"the manifest gives no files_val/files_train stats for {name}")
    if train_shards > files_train:
        raise UserError(f"--train-shards {train_shards} requested but {name} has only {files_train} train shards")
    tokenizer = find(manifest.get("tokenizers"), entry.get("tokenizer_name"))
    if tokenizer is None:
        raise DownloadError(f"the manifest has no tokenizer {entry.get('tokenizer_name')!r} for {name}")
    tokenizer_files = [tokenizer[k] for k in ("model_path", "vocab_path", "path") if tokenizer.get(k)]
    if not tokenizer_files:
        raise DownloadError(f"the manifest gives no file for tokenizer {tokenizer['name']!r}")
    shards = [f"datasets/{name}/fineweb_val_{i:06d}.bin" for i in range(files_val)]
    shards += [f"datasets/{name}/fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    return shards, tokenizer_files + (list(DOCS_FILES) if with_docs else []), tokenizer


def shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run(variant: str, train_shards: int, with_docs: bool, data_dir: Path) -> None:
    name = dataset_name(variant)
    prefix = os.environ.get("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", DEFAULT_REMOTE_PREFIX).strip("/")

    def remote(relative: str) -> str:
        return posixpath.join(prefix, relative) if prefix else relative

    manifest, entry = load_manifest(data_dir, remote, name)
    shards, others, tokenizer = plan(manifest, entry, train_shards, with_docs)
    jobs = [(p, local_path(data_dir, p), is_complete_shard) for p in shards]
    jobs += [(p, local_path(data_dir, p), Path.is_file) for p in others]
    fetched = sum(fetch(remote(p), local, complete) for p, local, complete in jobs)
    print(f"{fetched} file(s) downloaded, {len(jobs) - fetched} already complete: "
          f"{len(shards) - train_shards} val + {train_shards} train shards of {name}")
    print(f"DATA_PATH={shown(data_dir / 'datasets' / name)} TOKENIZER_PATH={shown(local_path(data_dir, others[0]))} "
          f"VOCAB_SIZE={tokenizer.get('vocab_size', '?')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="sp1024", help="sp<VOCAB> (e.g. sp1024) or byte260 (default sp1024)")
    p.add_argument("--train-shards", type=int, default=DEFAULT_TRAIN_SHARDS, metavar="N",
                   help=f"how many train shards to fetch, from the first (default {DEFAULT_TRAIN_SHARDS}; "
                        f"100M tokens, 200 MB each)")
    p.add_argument("--with-docs", action="store_true",
                   help="also fetch the raw documents (docs_selected.jsonl) and their source manifest")
    args = p.parse_args(argv)
    if args.train_shards < 0:
        p.error("--train-shards must be 0 or more")
    try:
        run(args.variant, args.train_shards, args.with_docs, DATA_DIR)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DownloadError, OSError) as e:
        print(f"error: {e}\nCheck the network and rerun the same command: complete files are kept.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume; complete files are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
