#!/usr/bin/env python3
"""Turn finished train_gpt.py runs (one log per seed) into a submission folder.

    python3 records/make_submission.py logs/s1.txt logs/s2.txt logs/s3.txt \\
        --author "Ada L." --github-id ada --name Int6Bigram \\
        --blurb "10L int6 + BigramHash" --track 10min_16mb --compare-loss 1.93

It reads every log (header, periodic and final lines) and the run's summary: the
logs/<RUN_ID>.json the log names on its `summary:` line, or, in logs written before
that file existed, the log's `summary_json:` line. It prints one verdict line per check,
then writes records/track_<track>/<date>_<name>/ or refuses with the reasons.
Exit status: 0 written (or --check-only passed), 1 refused by a check, 2 a bad argument
or unusable input file (one line each, nothing written).
See records/README.md for the workflow and what each check means.
"""
from __future__ import annotations

import argparse
import ast
import base64
import datetime as dt
import hashlib
import inspect
import json
import lzma
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

PROG = "make_submission.py"
SIZE_CAP = 16_000_000
TIME_LIMIT_S = 600.0
MIN_GAIN_NATS = 0.005
ALPHA = 0.01
TRACKS = ("10min_16mb", "non_record_16mb")
RECORD_TRACK = "10min_16mb"
# Settings allowed to differ between the seeds of one submission.
PER_RUN_SETTINGS = frozenset({
    "SEED", "RUN_ID", "DATA_PATH", "TOKENIZER_PATH", "ARTIFACT_PATH",
    "CHECKPOINT_PATH", "CHECKPOINT_EVERY", "RESUME_FROM",
})
# Optional keys of newer summaries: package versions, a string or null (null = not installed).
VERSION_KEYS = ("cuda", "flash_attn", "numpy", "sentencepiece", "zstandard")
# The challenge's name for the final score; train_gpt.py's last log line repeats its own score under it.
OFFICIAL_LINE = "final_int8_zlib_roundtrip_exact"
NOT_SCORE_LINES = frozenset({"final_prequant_exact", "final_roundtrip_exact", OFFICIAL_LINE})
PACK_HEAD = b'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("'
PACK_TAIL = b'")))\n'
PLOT_KEY = "parameter_golf_plot"  # PNG text chunk holding what the plot shows, as JSON
ROOT = Path(__file__).resolve().parent.parent
LOG_FIX = "give the logs/<RUN_ID>.txt files that train_gpt.py wrote, one per seed"


class InputError(Exception):
    """A bad argument or an unusable input file: one line per message, exit 2, nothing written."""

    def __init__(self, *messages: str):
        super().__init__(*messages)
        self.messages = list(messages)

    def __str__(self):
        return "; ".join(self.messages)


# ----------------------------------------------------------------------------- field schemas
# Every field the tool uses, of a run summary or of a log line, is checked against a Field by
# check_fields() before anything reads it; fields the tool does not use (newer train_gpt.py
# versions add some) are accepted as they are.
MAX_BYTES = 10 ** 12                 # any byte count: artifact, code, total
MAX_SUMMARY_BYTES = 4 * 2 ** 20      # a run summary is a few kB
MAX_LOG_BYTES = 256 * 2 ** 20        # 20,000 steps, every one printed, make about 3 MB
MAX_LINE_CHARS = 2 ** 20             # the longest line: an old log's summary_json line, a few kB
TEXT = r"[^\x00-\x1f\x7f-\x9f\ud800-\udfff]+"
TEXT_WHAT = "one line of text (not empty, no control characters)"


@dataclass(frozen=True)
class Field:
    """What one field must be. kind: "int", "float" (finite; an integer is accepted too),
    "bool", "str" or "object". lo, hi: the closed range of a number. choices: the values a str
    may take. pattern: a regular expression a str, or every key of an object, must match in
    full; `what` names it in a problem. fields: an object's own schema (Field by key; keys not
    in it are not checked); values: what each value of an object must be. optional: may be
    absent; null: may be null (None). unit: a suffix a log line prints after a number ("ms")."""
    kind: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    pattern: str | None = None
    what: str = ""
    optional: bool = False
    null: bool = False
    fields: dict | None = None
    values: Field | None = None
    unit: str = ""


EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "object": "an object"}


def _shown(value) -> str:
    """A value as JSON writes it (NaN, null, "text"), cut to 40 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # not JSON, or an integer of more digits than str() writes
        text = repr(value) if not isinstance(value, int) else f"<an integer of {value.bit_length()} bits>"
    return text if len(text) <= 40 else text[:37] + "..."


def _bound(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def check_value(value, spec: Field, name: str) -> list[str]:
    """The problems of one value against its Field ([] when it is fine); each names `name`."""
    if value is None and spec.null:
        return []
    shown = f"{name}={_shown(value)}"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {"int": isinstance(value, int) and number, "float": number, "bool": isinstance(value, bool),
          "str": isinstance(value, str), "object": isinstance(value, dict)}[spec.kind]
    if not ok:
        return [f"{shown} is not {EXPECTED[spec.kind]}" + (" or null" if spec.null else "")]
    if spec.kind == "float" and isinstance(value, float) and not math.isfinite(value):
        return [f"{shown} is not a finite number"]
    if number and spec.lo is not None and not spec.lo <= value <= spec.hi:  # exact for any integer
        return [f"{shown} is not in [{_bound(spec.lo)}, {_bound(spec.hi)}]"]
    if spec.kind == "str":
        if spec.choices and value not in spec.choices:
            return [f"{shown} is not one of {', '.join(map(_shown, spec.choices))}"]
        if spec.pattern and not re.fullmatch(spec.pattern, value):
            return [f"{shown} is not {spec.what}"]
    problems = []
    if spec.kind == "object":
        for key, item in value.items():
            if spec.pattern and not re.fullmatch(spec.pattern, key):
                problems.append(f"{name} has the key {_shown(key)}, which is not {spec.what}")
            elif spec.values is not None:
                problems += check_value(item, spec.values, f"{name}.{key}")
        if spec.fields:
            problems += check_fields(value, spec.fields, name)
    return problems


def check_fields(record: dict, schema: dict, name: str = "") -> list[str]:
    """The problems of `record` (a summary or a log line's fields) against `schema` (field name ->
    Field), in the schema's order: one "lacks a, b" for the required fields that are absent, then
    one problem per bad field, e.g. 'val_bpb="1.2" is not a number'. [] when every field the
    schema names is fine; keys it does not name are not looked at. `name` prefixes nested fields."""
    if not isinstance(record, dict):
        return [f"{name or 'it'}={_shown(record)} is not an object"]
    missing = [key for key, spec in schema.items() if not spec.optional and key not in record]
    problems = [f"{name + ' ' if name else ''}lacks {', '.join(missing)}"] if missing else []
    for key, spec in schema.items():
        if key in record:
            problems += check_value(record[key], spec, f"{name}.{key}" if name else key)
    return problems


def _from_text(text: str, spec: Field):
    """A log line's field as the value its Field expects, or the text itself when it is not one
    (check_value then says what is wrong with it)."""
    if spec.kind not in ("int", "float"):
        return text
    digits = text[: -len(spec.unit)] if spec.unit and text.endswith(spec.unit) else text
    try:
        if spec.kind == "int" and re.fullmatch(r"[+-]?[0-9]+", digits):
            return int(digits)
        if spec.kind == "float" and "_" not in digits and digits.isascii():
            return float(digits)
    except ValueError:  # e.g. more digits than int() converts
        pass
    return text


def _problem_list(problems: list[str], most: int = 6) -> str:
    shown = "; ".join(problems[:most])
    return shown + (f"; and {len(problems) - most} more" if len(problems) > most else "")


_TEXT = Field("str", pattern=TEXT, what=TEXT_WHAT)
_VERSION = Field("str", pattern=r"[0-9A-Za-z][0-9A-Za-z.+!_-]{0,99}",
                 what="a version (e.g. 2.1.3 or 2.6.0+cu128)")
_HEX = Field("str", pattern=r"[0-9a-f]{64}", what="a sha256 (64 lowercase hex digits)")
_BYTES = Field("int", 1, MAX_BYTES)
_SECONDS = Field("float", 0, 1e8)
_LOSS = Field("float", 0, 1e6)  # nats or bits per byte; >= 0, finite
_SETTINGS = Field("object", pattern=r"[A-Za-z_][A-Za-z0-9_]{0,99}", what="a setting name")
# The run summary (logs/<RUN_ID>.json, or an old log's summary_json line): what the tool reads.
SUMMARY_SCHEMA = {
    "run_id": _TEXT, "mode": Field("str", choices=("train", "eval_only")),
    "seed": Field("int", 0, 2 ** 32 - 1), "code_sha256": _HEX, "code_bytes": _BYTES,
    "config": replace(_SETTINGS, fields={"VOCAB_SIZE": Field("int", 2, 65536, optional=True)}),
    "non_default": _SETTINGS, "launch": _TEXT, "world_size": Field("int", 1, 2 ** 20),
    "device": _TEXT, "device_name": _TEXT, "hardware": _TEXT, "python": _VERSION, "torch": _VERSION,
    **{key: replace(_VERSION, optional=True, null=True) for key in VERSION_KEYS},
    "compressor_packages": Field("object", pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}",
                                 what="a package name", values=replace(_VERSION, null=True),
                                 optional=True, null=True),
    "steps": Field("int", 0, 10 ** 9), "step_avg_ms": Field("float", 0, 1e9),
    "train_time_s": _SECONDS, "stop_reason": _TEXT,
    "prequant_val_loss": _LOSS, "prequant_val_bpb": _LOSS,
    "roundtrip_val_loss": _LOSS, "roundtrip_val_bpb": _LOSS, "val_loss": _LOSS, "val_bpb": _LOSS,
    "eval_stride": Field("int", 1, 2 ** 20), "eval_seq_len": Field("int", 0, 2 ** 20),
    "val_tokens": Field("int", 1, 10 ** 13), "val_full": Field("bool"),
    "eval_time_s": _SECONDS, "total_eval_time_s": _SECONDS,
    "artifact_bytes": _BYTES, "code_bytes_counted": replace(_BYTES, optional=True),
    "bytes_total": _BYTES, "size_cap": _BYTES, "over_cap": Field("bool"),
}
# The log lines the tool reads (by kind, see _line_fields) and their fields it uses.
LINE_SCHEMAS = {
    "train_gpt": {"run_id": _TEXT},
    "code": {"sha256": _HEX, "bytes": _BYTES},
    "versions": {key: replace(_VERSION, optional=True) for key in ("numpy", "sentencepiece", "zstandard")},
    "device": {"attention": Field("str", pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}",
                                  what="a kernel name (e.g. fa3)", optional=True)},
    "model_params": {"params": Field("int", 1, 10 ** 13)},
    "peak memory": {"allocated": Field("float", 0, 1e9, unit="MiB"),
                    "reserved": Field("float", 0, 1e9, unit="MiB")},
    "Total submission size": {"bytes": _BYTES},
    "summary:": {"file": Field("str", pattern=TEXT, what="a file name")},
    "step": {"step": Field("int", 0, 10 ** 9), "train_loss": replace(_LOSS, optional=True),
             "val_bpb": replace(_LOSS, optional=True)},
    "final_*_exact": {"val_loss": _LOSS, "val_bpb": _LOSS,
                      "eval_time": Field("float", 0, 1e11, unit="ms", optional=True),
                      "stride": Field("int", 1, 2 ** 20, optional=True)},
    "final_size": {"artifact_bytes": _BYTES, "code_bytes": _BYTES, "total_bytes": _BYTES,
                   "cap": _BYTES, "status": Field("str", choices=("ok", "OVER_CAP"))},
}
LINE_FIX = ("train_gpt.py writes each line once and never edits one: restore the log from the "
            "run, or rerun")


# ----------------------------------------------------------------------------- parsing
@dataclass
class Run:
    path: Path
    summary: dict
    summary_path: Path | None = None   # the summary .json file; None: the log's summary_json line
    summary_ref: str | None = None     # what the log's `summary:` line names
    summary_line: dict | None = None   # the summary_json line's object, when the .json was read instead
    headers: list = field(default_factory=list)       # [{"run_id":..,"mode":..}]
    code_headers: list = field(default_factory=list)  # [{"sha256":..,"bytes":..}]
    finals: dict = field(default_factory=dict)        # "final_sliding_exact" -> fields
    final_order: list = field(default_factory=list)   # names of the final_* lines, in log order
    final_lines: dict = field(default_factory=dict)   # final line name -> its line numbers
    train_loss: dict = field(default_factory=dict)    # step -> train_loss
    val_bpb: dict = field(default_factory=dict)       # step -> val_bpb (periodic)
    versions: dict = field(default_factory=dict)      # the `versions` header line
    attention: str | None = None                      # the `device ... attention:` header field
    model_params: int | None = None
    peak_memory: dict | None = None                   # {"allocated_mib":.., "reserved_mib":..}
    total_size: int | None = None                     # `Total submission size: N bytes`
    last_line: str = ""

    @property
    def seed(self) -> int:
        return self.summary["seed"]

    @property
    def new_format(self) -> bool:
        """Written by a train_gpt.py that keeps the summary in a .json file."""
        return self.summary_ref is not None or self.summary_path is not None


def _fields(tokens) -> dict:
    """'key:value' tokens -> {key: value}; tokens without ':' are skipped."""
    out = {}
    for tok in tokens:
        key, sep, value = tok.partition(":")
        if sep:
            out[key] = value
    return out


def _after(tokens, word: str) -> dict:
    """{word without ':': the token after `word`}, or {} when `word` is not followed by one."""
    i = tokens.index(word) if word in tokens else len(tokens)
    return {word.rstrip(":"): tokens[i + 1]} if i + 1 < len(tokens) else {}


def _line_fields(line: str, tokens: list) -> tuple[str, str, dict] | None:
    """(kind, label, {field: text}) of a line the tool reads, None for any other line."""
    head = tokens[0]
    if head == "train_gpt":
        return "train_gpt", "header", _fields(tokens[1:])
    if head == "code" and len(tokens) >= 2 and tokens[1].startswith("sha256:"):
        return "code", "code", _fields(tokens[1:])
    if head in ("versions", "device"):
        return head, head, _fields(tokens[1:])
    if head.startswith("model_params:"):
        return "model_params", "model_params", {"params": head.split(":", 1)[1]}
    if head == "model" and len(tokens) >= 2 and tokens[1].startswith("params:"):
        return "model_params", "model params", {"params": tokens[1].split(":", 1)[1]}
    if line.startswith("peak memory allocated:"):
        return "peak memory", "peak memory", {**_after(tokens, "allocated:"), **_after(tokens, "reserved:")}
    if line.startswith("Total submission size:"):
        return "Total submission size", "Total submission size", ({"bytes": tokens[3]}
                                                                   if len(tokens) > 3 else {})
    if head == "summary:":
        return "summary:", "summary:", {"file": line[len("summary:"):].strip()}
    if head.startswith("step:"):
        found = _fields(tokens)
        found["step"] = found["step"].split("/")[0]
        return "step", "step", found
    if head.startswith("final_") and head.endswith("_exact"):
        return "final_*_exact", head, _fields(tokens[1:])
    if head == "final_size":
        return "final_size", head, _fields(tokens[1:])
    return None


def _log_lines(fh, path: Path):
    """(number, line) of each line, stripped; refuses a line too long to be train_gpt.py's."""
    number = 0
    while raw := fh.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(raw) > MAX_LINE_CHARS and not raw.endswith("\n"):
            raise InputError(f"log {path}: line {number} is longer than {MAX_LINE_CHARS:,} characters, "
                             f"more than any line train_gpt.py writes; {LOG_FIX}")
        yield number, raw.strip()


def _read_lines(run: Run) -> str | None:
    """Fill `run` from the log's lines, each line the tool reads checked against its schema in
    LINE_SCHEMAS (InputError at the first bad one); returns the text of the last summary_json
    line. A header line starts a new attempt (a resumed run appends to its log): only the last
    attempt's final lines count."""
    summary_text = None
    with open(run.path, encoding="utf-8", errors="replace") as fh:
        for number, line in _log_lines(fh, run.path):
            tokens = line.split()
            if not tokens:
                continue
            run.last_line = line
            if line.startswith("summary_json:"):
                summary_text = line[len("summary_json:"):].strip()
                continue
            found = _line_fields(line, tokens)
            if found is None:
                continue  # a line the tool does not read: newer train_gpt.py versions add some
            kind, label, raw = found
            schema = LINE_SCHEMAS[kind]
            f = {key: _from_text(text, schema[key]) if key in schema else text for key, text in raw.items()}
            problems = check_fields(f, schema)
            if problems:
                raise InputError(f"log {run.path}: line {number}, {label}: {_problem_list(problems)}; "
                                 f"{LINE_FIX}")
            if kind == "train_gpt":
                run.headers.append(f)
                run.finals, run.final_order, run.final_lines, run.total_size = {}, [], {}, None
            elif kind == "code":
                run.code_headers.append({"sha256": f["sha256"], "bytes": f["bytes"]})
            elif kind == "versions":
                run.versions.update(f)
            elif kind == "device" and "attention" in f:
                run.attention = f["attention"]
            elif kind == "model_params":
                run.model_params = f["params"]
            elif kind == "peak memory":
                run.peak_memory = {"allocated_mib": f["allocated"], "reserved_mib": f["reserved"]}
            elif kind == "Total submission size":
                run.total_size = f["bytes"]
                run.final_lines.setdefault(kind, []).append(number)
            elif kind == "summary:":
                run.summary_ref = f["file"]
            elif kind == "step":
                if "train_loss" in f:
                    run.train_loss[f["step"]] = f["train_loss"]
                if "val_bpb" in f:
                    run.val_bpb[f["step"]] = f["val_bpb"]
            else:  # final_*_exact, final_size
                run.finals[label] = f
                run.final_order.append(label)
                run.final_lines.setdefault(label, []).append(number)
    return summary_text


def _exists(path: Path) -> bool:
    try:
        return path.exists() or path.is_symlink()
    except (OSError, ValueError):  # e.g. a name too long
        return False


def _summary_file(log: Path, ref: str | None) -> Path | None:
    """The summary .json of a log: the file its `summary:` line names, looked for next to the
    log, then where the line says (when absolute), else <log stem>.json next to the log."""
    candidates = []
    if ref:
        named = Path(ref)
        candidates.append(log.parent / named.name)
        if named.is_absolute():
            candidates.append(named)
    candidates.append(log.with_suffix(".json"))
    for c in candidates:
        if c != log and _exists(c):
            return c
    return None


def _unique_keys(pairs) -> dict:
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"the key {_shown(key)} appears twice")
        obj[key] = value
    return obj


def load_json(text: str):
    """json.loads that refuses an object with a key twice (ValueError), as an edited file may have."""
    return json.loads(text, object_pairs_hook=_unique_keys)


JSON_KINDS = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
              bool: "true or false", type(None): "null"}


def _json_object(text: str, where: str, fix: str) -> dict:
    try:
        obj = load_json(text)
    except (ValueError, RecursionError) as e:
        raise InputError(f"{where} is not valid JSON ({str(e)[:120]}); {fix}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where} is not a JSON object (it is {JSON_KINDS.get(type(obj), 'a value')}); "
                         f"{fix}")
    return obj


def _check_file(path: Path, what: str, kind: str, limit: int, bigger_than: str, fix: str) -> None:
    """Refuse (InputError) `path` unless it is a regular file of at most `limit` bytes."""
    if path.is_dir():
        raise InputError(f"{what} is a directory, not a {kind}; {fix}")
    if not path.is_file():
        raise InputError(f"{what} is not a regular file; {fix}")
    if (size := path.stat().st_size) > limit:
        raise InputError(f"{what} is {size:,} bytes, more than {bigger_than}; {fix}")


def _read_summary(json_path: Path, where: str, fix: str) -> str:
    """The text of a summary file, refused when it is not a file, not UTF-8 or too large."""
    try:
        _check_file(json_path, where, "file", MAX_SUMMARY_BYTES,
                    f"a run summary can be ({MAX_SUMMARY_BYTES:,} at most; it holds a few kB)", fix)
        with open(json_path, "rb") as fh:
            data = fh.read(MAX_SUMMARY_BYTES + 1)
        if len(data) > MAX_SUMMARY_BYTES:
            raise InputError(f"{where} is more than {MAX_SUMMARY_BYTES:,} bytes, more than a run "
                             f"summary can be; {fix}")
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{where} is not UTF-8 text; {fix}") from None
    except OSError as e:
        raise InputError(f"{where} cannot be read ({e.strerror or e}); {fix}") from None


def parse_log(path) -> Run:
    """Parse one train_gpt.py log and its summary, every field the tool uses checked against
    LINE_SCHEMAS and SUMMARY_SCHEMA. Raises InputError if it cannot be packaged."""
    path = Path(path)
    what = f"log {path}"
    try:
        if not path.exists():
            raise InputError(f"{what} does not exist; {LOG_FIX}")
        _check_file(path, what, "log file", MAX_LOG_BYTES, f"any train_gpt.py log ({MAX_LOG_BYTES:,} at most)",
                    LOG_FIX)
        run = Run(path=path, summary={})
        summary_text = _read_lines(run)
    except OSError as e:
        raise InputError(f"{what} cannot be read ({e.strerror or e}); check its permissions") from None
    if not run.headers:
        raise InputError(f"{what} is not a train_gpt.py log (no 'train_gpt run_id:... mode:...' "
                         f"header line); {LOG_FIX}")
    json_path = _summary_file(path, run.summary_ref)
    if json_path is not None:
        where = f"summary {json_path} (of log {path})"
        fix = "it is the .json train_gpt.py writes when the run ends: restore it, or rerun"
        summary = _json_object(_read_summary(json_path, where, fix), where, fix)
        run.summary_path = json_path
        if summary_text is not None:
            try:
                run.summary_line = load_json(summary_text)
            except (ValueError, RecursionError):
                run.summary_line = {"(not valid JSON)": summary_text[:40]}
    elif summary_text is not None:
        where = f"log {path}: its summary_json line"
        fix = "it is written when the run ends: restore the log, or rerun"
        summary = _json_object(summary_text, where, fix)
    elif run.summary_ref:
        raise InputError(f"{what} names its summary {run.summary_ref} (on its 'summary:' line) but "
                         f"neither {path.parent / Path(run.summary_ref).name} nor "
                         f"{path.with_suffix('.json')} exists; copy that .json next to the log")
    else:
        raise InputError(f"{what} has no summary (no 'summary: <file>.json' line, no "
                         f"{path.with_suffix('.json').name} next to it, no 'summary_json:' line): "
                         "the run did not finish (it died or is still running); package finished runs")
    if summary.get("mode") == "eval_only":  # before the fields: an EVAL_ONLY summary has no training figures
        raise InputError(f"{what} is an EVAL_ONLY run (mode eval_only); package the training runs' "
                         "logs (logs/<RUN_ID>.txt, mode train)")
    problems = check_fields(summary, SUMMARY_SCHEMA)
    if problems:
        raise InputError(f"{where}: {_problem_list(problems)}; {fix}")
    logged_id = run.headers[-1]["run_id"]
    if summary["run_id"] != logged_id:
        raise InputError(f"{where} is of run_id {summary['run_id']!r} but the log's header says "
                         f"run_id:{logged_id}: it belongs to another run; {fix}")
    run.summary = summary
    return run


def _same(a, b) -> bool:
    """Equal to the printed 8 decimals."""
    return a is not None and b is not None and abs(a - b) <= 1e-8


def score_line(run: Run) -> str | None:
    """The log's own final score line: the last final_*_exact line (other than the pre-quant,
    round-trip and official alias lines) that prints the summary's val_loss and val_bpb."""
    s = run.summary
    ok = [n for n in run.final_order if n.endswith("_exact") and n not in NOT_SCORE_LINES
          and _same(run.finals[n].get("val_loss"), s["val_loss"])
          and _same(run.finals[n].get("val_bpb"), s["val_bpb"])]
    return ok[-1] if ok else None


def consistency_problems(run: Run) -> list[str]:
    """Where the log's printed lines disagree with its summary."""
    s, problems = run.summary, []
    for h in run.code_headers:
        if (h["sha256"], h["bytes"]) != (s["code_sha256"], s["code_bytes"]):
            problems.append(f"header code sha256:{h['sha256'][:12]} bytes:{h['bytes']} "
                            f"!= summary {s['code_sha256'][:12]} {s['code_bytes']}")
    if not run.code_headers:
        problems.append("no 'code sha256:' header line")
    for name, numbers in run.final_lines.items():
        if len(numbers) > 1:
            problems.append(f"{name} appears {len(numbers)} times (lines {', '.join(map(str, numbers))}); "
                            "a finished run prints it once")
    for name, loss_key, bpb_key in (("final_prequant_exact", "prequant_val_loss", "prequant_val_bpb"),
                                    ("final_roundtrip_exact", "roundtrip_val_loss", "roundtrip_val_bpb")):
        f = run.finals.get(name)
        if f is None:
            problems.append(f"no {name} line")
            continue
        for field_, key in (("val_loss", loss_key), ("val_bpb", bpb_key)):
            if not _same(f.get(field_), s[key]):
                problems.append(f"{name} {field_}:{f.get(field_)} != summary {key} {s[key]}")
    name = score_line(run)
    if name is None:
        shown = [n for n in run.final_order if n.endswith("_exact") and n not in NOT_SCORE_LINES]
        if not shown:
            problems.append("no final score line (final_sliding_exact or another final_*_exact)")
        else:
            f = run.finals[shown[-1]]
            problems.append(f"{shown[-1]} val_loss:{f.get('val_loss')} val_bpb:{f.get('val_bpb')} "
                            f"!= summary val_loss {s['val_loss']} val_bpb {s['val_bpb']}")
    elif name == "final_sliding_exact":
        f = run.finals[name]
        if abs(f.get("eval_time", -1e9) / 1000 - s["eval_time_s"]) > 0.0015:
            problems.append(f"{name} eval_time:{f.get('eval_time')}ms != summary "
                            f"eval_time_s {s['eval_time_s']}")
        if f.get("stride") != s["eval_stride"]:
            problems.append(f"{name} stride:{f.get('stride')} != summary eval_stride "
                            f"{s['eval_stride']}")
    alias = run.finals.get(OFFICIAL_LINE)
    if alias is None:
        if run.new_format:
            problems.append(f"no {OFFICIAL_LINE} line (the official score line that ends a "
                            "finished log)")
    else:
        for field_ in ("val_loss", "val_bpb"):
            if not _same(alias.get(field_), s[field_]):
                problems.append(f"{OFFICIAL_LINE} {field_}:{alias.get(field_)} != summary "
                                f"{field_} {s[field_]}")
        if not run.last_line.startswith(OFFICIAL_LINE + " "):
            problems.append(f"{OFFICIAL_LINE} is not the last line of the log")
    f = run.finals.get("final_size")
    if f is None:
        problems.append("no final_size line")
    else:
        counted = "code_bytes_counted" if "code_bytes_counted" in s else "code_bytes"  # CODE_BYTES=packed counts less
        pairs = (("artifact_bytes", "artifact_bytes"), ("code_bytes", counted),
                 ("total_bytes", "bytes_total"), ("cap", "size_cap"))
        for field_, key in pairs:
            if f.get(field_) != s[key]:
                problems.append(f"final_size {field_}:{f.get(field_)} != summary {key} {s[key]}")
        if f.get("status") != ("OVER_CAP" if s["over_cap"] else "ok"):
            problems.append(f"final_size status:{f.get('status')} but summary over_cap "
                            f"{s['over_cap']}")
    if run.total_size is not None and run.total_size != s["bytes_total"]:
        problems.append(f"'Total submission size: {run.total_size} bytes' != summary bytes_total "
                        f"{s['bytes_total']}")
    if run.summary_line is not None and run.summary_line != s:
        problems.append(f"the summary_json line differs from {run.summary_path.name}")
    if s["bytes_total"] != s.get("code_bytes_counted", s["code_bytes"]) + s["artifact_bytes"]:
        problems.append(f"bytes_total {s['bytes_total']} != code bytes + artifact_bytes")
    if s["size_cap"] != SIZE_CAP:
        problems.append(f"size_cap {s['size_cap']} != {SIZE_CAP}")
    return problems


# ----------------------------------------------------------------------------- statistics
def mean_std(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n-1); std is None for a single run."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def significance(losses, compare_loss: float, min_gain=MIN_GAIN_NATS, alpha=ALPHA) -> dict:
    """One-sided one-sample t-test of H1: mean(compare_loss - loss) > min_gain."""
    gains = [compare_loss - x for x in losses]
    out = {"compare_val_loss": compare_loss, "min_gain_nats": min_gain, "alpha": alpha,
           "n": len(gains), "mean_gain_nats": statistics.fmean(gains),
           "t_statistic": None, "df": len(gains) - 1, "p_value": None, "passed": False,
           "note": ""}
    if len(gains) < 2:
        out["note"] = "needs at least 2 seeds"
        return out
    if statistics.stdev(gains) < 1e-12:
        out["note"] = "all seeds have the same val_loss; the t-test is undefined"
        return out
    try:
        from scipy import stats
    except ImportError:
        raise InputError("scipy is not installed; --compare-loss needs it for the t-test: "
                         "pip install scipy (or leave out --compare-loss)") from None
    res = stats.ttest_1samp(gains, popmean=min_gain, alternative="greater")
    out["t_statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    out["passed"] = out["p_value"] < alpha
    return out


# ----------------------------------------------------------------------------- versions
def run_versions(run: Run) -> dict:
    """Package versions of a run: the summary's keys, else the log's `versions` line.
    A key is absent when neither logged it; None means "not installed" (e.g. no CUDA)."""
    s = run.summary
    v = {k: run.versions[k] for k in ("numpy", "sentencepiece", "zstandard") if run.versions.get(k)}
    v.update(python=s["python"], torch=s["torch"])
    for key in VERSION_KEYS:
        if key in s:
            v[key] = s[key]
    for name, version in sorted((s.get("compressor_packages") or {}).items()):
        v[f"pkg:{name}"] = version
    if run.attention:
        v["attention"] = run.attention
    return v


def _torch_lines(torch: str, cuda) -> list[str]:
    public, _, local = torch.partition("+")
    if local and re.fullmatch(r"cu\d+|cpu|rocm[0-9.]+|xpu", local):
        return [f"# torch {torch} comes from the PyTorch index",
                f"--extra-index-url https://download.pytorch.org/whl/{local}", f"torch=={torch}"]
    if local:
        release = re.match(r"\d+(?:\.\d+)*", public)
        return [f"# the runs used torch {torch}, a vendor build (e.g. a container's) that pip cannot "
                "install; the nearest release:", f"torch=={release.group(0) if release else public}"]
    return [f"torch=={torch}" + (f"  # its CUDA {cuda} build" if cuda else "")]


def requirements_txt(runs: list[Run]) -> str:
    """requirements.txt pinning what the first run used (the `versions` check compares runs)."""
    v = run_versions(runs[0])
    cuda = v.get("cuda")
    lines = ["# The exact package versions of the runs in this folder, as their logs report them.",
             f"# Python {v['python']}; CUDA {cuda if cuda else ('none' if 'cuda' in v else 'not logged')}."
             " Install: pip install -r requirements.txt"]
    lines += _torch_lines(v["torch"], cuda)
    for name in ("numpy", "sentencepiece", "zstandard"):
        lines.append(f"{name}=={v[name]}" if v.get(name) else f"{name}  # version not in the logs")
    flash, attention = v.get("flash_attn"), v.get("attention")
    if flash:
        if attention == "fa3":
            lines.append(f"# FlashAttention 3 ({flash}) is built from source: see README.md, Setup")
        elif attention in ("sdpa", "matmul"):
            lines.append(f"# flash-attn {flash} was installed but unused (attention: {attention})")
        else:
            lines.append(f"flash-attn=={flash}  # compiles against torch: pip install "
                         f"flash-attn=={flash} --no-build-isolation")
    for key, version in v.items():
        if key.startswith("pkg:"):
            name = key[4:]
            lines.append(f"{name}=={version}" if version else f"{name}  # version not logged")
    return "\n".join(lines) + "\n"


def _version_text(v: dict) -> str:
    parts = [f"python {v['python']}", f"torch {v['torch']}"]
    if "cuda" in v:
        parts.append(f"CUDA {v['cuda'] or 'none'}")
    if "flash_attn" in v:
        parts.append(f"flash_attn {v['flash_attn'] or 'none'}")
    parts += [f"{k[4:] if k.startswith('pkg:') else k} {val}" for k, val in v.items()
              if k not in ("python", "torch", "cuda", "flash_attn") and val]
    return ", ".join(parts)


def versions_check(runs: list[Run]) -> "Check":
    per = [run_versions(r) for r in runs]
    keys = sorted({k for v in per for k in v})
    differ = [f"{k} ({', '.join(f'seed {r.seed}: {v.get(k)}' for r, v in zip(runs, per))})"
              for k in keys if len({str(v.get(k)) for v in per}) > 1]
    missing = [k for k in ("numpy", "sentencepiece", "zstandard", "cuda") if k not in per[0]]
    note = f"; not in the logs: {', '.join(missing)}" if missing else ""
    if differ:
        return Check("versions", "WARN", "runs differ: " + "; ".join(differ) +
                     f"; requirements.txt pins seed {runs[0].seed}'s{note}", blocking=False)
    return Check("versions", "PASS", f"all {len(runs)} runs: {_version_text(per[0])}{note}",
                 blocking=False)


# ----------------------------------------------------------------------------- packing
def pack_source(src: bytes) -> bytes:
    """A self-extracting script that exec()s `src` at module level."""
    blobs = [lzma.compress(src, format=lzma.FORMAT_ALONE, preset=9 | lzma.PRESET_EXTREME),
             lzma.compress(src, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE,
                           preset=9 | lzma.PRESET_EXTREME)]
    return PACK_HEAD + base64.b85encode(min(blobs, key=len)) + PACK_TAIL


def unpack_source(packed: bytes) -> bytes:
    m = re.search(rb'b85decode\("([^"]*)"\)', packed)
    if not m:
        raise ValueError("not a packed script")
    return lzma.decompress(base64.b85decode(m.group(1)))


# python-minifier settings that keep every name another module, the environment-variable
# configuration (dataclass fields) or a keyword call can see: no global renaming, class
# attribute annotations kept, asserts and `if __debug__` kept, no literal hoisting (it makes
# the compressed script larger). Local names are shortened; comments, docstrings (unless the
# code reads __doc__), other annotations, `pass` and `return None` go.
MINIFY_OPTIONS = dict(rename_globals=False, rename_locals=True, hoist_literals=False,
                      remove_literal_statements=True, remove_asserts=False, remove_debug=False,
                      combine_imports=True, remove_pass=True, remove_object_base=True,
                      convert_posargs_to_args=True, remove_explicit_return_none=True,
                      remove_builtin_exception_brackets=True, constant_folding=True,
                      preserve_shebang=True)


def _interface(tree: ast.Module) -> set[str]:
    """Names a module exposes: its top-level bindings and each top-level class's attributes."""
    names = set()

    def targets(node):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, (ast.Tuple, ast.List)):
            for elt in node.elts:
                yield from targets(elt)

    def walk(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(prefix + node.name)
            elif isinstance(node, ast.ClassDef):
                names.add(prefix + node.name)
                if not prefix:
                    walk(node.body, node.name + ".")
            elif isinstance(node, ast.Assign):
                names.update(prefix + n for t in node.targets for n in targets(t))
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                names.update(prefix + n for n in targets(node.target))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update(prefix + (a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                for part in ("body", "orelse", "finalbody"):
                    walk(getattr(node, part, []), prefix)
                for h in getattr(node, "handlers", []):
                    walk(h.body, prefix)
    walk(tree.body, "")
    return names


def minify_source(src: bytes) -> tuple[bytes | None, str]:
    """(minified source or None, what happened). None when python-minifier is missing or
    fails, or when its output would drop a module-level name or class attribute."""
    try:
        import python_minifier
    except ImportError:
        return None, ("python-minifier is not installed (pip install python-minifier): "
                      "packing the source without minifying it")
    try:
        from importlib.metadata import version
        tool = f"python-minifier {version('python-minifier')}"
    except Exception:
        tool = "python-minifier"
    try:
        text = src.decode("utf-8")
        keep_docs = bool(re.search(r"__doc__|getdoc\b", text))
        options = {**MINIFY_OPTIONS, "remove_literal_statements": not keep_docs}
        params = inspect.signature(python_minifier.minify).parameters
        if hasattr(python_minifier, "RemoveAnnotationsOptions"):
            options["remove_annotations"] = python_minifier.RemoveAnnotationsOptions(
                remove_variable_annotations=True, remove_return_annotations=True,
                remove_argument_annotations=True, remove_class_attribute_annotations=False)
        else:  # an old release would also strip the annotations dataclasses need
            options["remove_annotations"] = False
        missing = [k for k in ("rename_globals", "remove_asserts", "remove_debug") if k not in params]
        if missing:
            return None, f"{tool} lacks the options {', '.join(missing)}: packing unminified"
        out = python_minifier.minify(text, **{k: v for k, v in options.items() if k in params})
        lost = _interface(ast.parse(text)) - _interface(ast.parse(out))
    except Exception as e:  # any failure of an optional tool: ship the plain source
        return None, f"{tool} failed ({type(e).__name__}: {str(e)[:80]}): packing unminified"
    if lost:
        return None, (f"{tool} dropped {', '.join(sorted(lost)[:5])}: packing unminified")
    return out.encode("utf-8"), (f"{tool}: {len(src):,} -> {len(out.encode()):,} bytes"
                                 + ("; docstrings kept (the code reads __doc__)" if keep_docs else ""))


def launch_env(launch: str) -> dict:
    """The NAME=value assignments at the start of a launch command."""
    env = {}
    try:
        tokens = shlex.split(launch)
    except ValueError:  # unbalanced quotes: fall back to plain words
        tokens = launch.split()
    for tok in tokens:
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", tok, re.S)
        if not m:
            break
        env[m.group(1)] = m.group(2)
    return env


def dry_run_outputs(scripts: list[bytes], env: dict, timeout=300) -> list[subprocess.CompletedProcess]:
    """Run each script as <tmp>/train_gpt.py with DRY_RUN=1 (same path, cwd, env)."""
    env = {**os.environ, **env, "DRY_RUN": "1", "RUN_ID": "pack_check",
           "PYTHONHASHSEED": "0"}
    results = []
    with tempfile.TemporaryDirectory() as d:
        script, cwd = Path(d) / "train_gpt.py", Path(d) / "cwd"
        for src in scripts:
            shutil.rmtree(cwd, ignore_errors=True)
            cwd.mkdir()
            script.write_bytes(src)
            results.append(subprocess.run([sys.executable, str(script)], cwd=cwd, env=env,
                                          capture_output=True, text=True, timeout=timeout))
    return results


def check_packed(original: bytes, packed: bytes, env: dict,
                 payload: bytes | None = None) -> tuple[bool, str]:
    """Does `packed` decompress to `payload` (the original, or its minified form) and print the
    same DRY_RUN output as the original?"""
    payload = original if payload is None else payload
    what = "the original bytes" if payload == original else "the minified source"
    try:
        if unpack_source(packed) != payload:
            return False, f"the packed script does not decompress to {what}"
    except (ValueError, lzma.LZMAError) as e:
        return False, f"the packed script cannot be decompressed ({e})"
    try:
        orig, pack = dry_run_outputs([original, packed], env)
    except subprocess.TimeoutExpired:
        return False, "DRY_RUN=1 timed out"
    for label, p in (("original", orig), ("packed", pack)):
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or [""])[-1]
            return False, f"DRY_RUN=1 of the {label} script exited {p.returncode}: {tail}"

    def keep(text):
        return [ln for ln in text.splitlines() if not ln.startswith("code ")]
    a, b = keep(orig.stdout), keep(pack.stdout)
    if not any(ln.startswith("config:") for ln in a):
        return False, "DRY_RUN=1 printed no 'config:' block"
    if a != b:
        diff = next(f"{x!r} vs {y!r}" for x, y in zip(a + [""], b + [""]) if x != y)
        return False, f"DRY_RUN=1 output differs: {diff}"
    return True, (f"decompresses to {'the logged code' if payload == original else 'its minified form'}"
                  f"; DRY_RUN=1 prints the same {len(a)} lines")


# ----------------------------------------------------------------------------- checks
@dataclass
class Check:
    name: str
    status: str          # PASS | FAIL | WARN | INFO
    detail: str
    blocking: bool = True  # a blocking FAIL refuses the folder

    def line(self) -> str:
        return f"[{self.status}] {self.name}: {self.detail}"


def _show(path: Path) -> str:
    """A path relative to the working directory when it is below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _seeds(runs, pred) -> str:
    return ", ".join(f"seed {r.seed}" for r in runs if pred(r))


def check_runs(runs: list[Run], track: str, code: bytes, code_path: Path,
               shipped_code_bytes: int, allow_over_cap: bool) -> list[Check]:
    record = track == RECORD_TRACK
    checks = []

    bad = {r.seed: consistency_problems(r) for r in runs}
    bad = {k: v for k, v in bad.items() if v}
    checks.append(Check("log_consistency", "FAIL" if bad else "PASS",
                        "; ".join(f"seed {k}: {', '.join(v)}" for k, v in bad.items())
                        or f"header and final lines of all {len(runs)} logs agree with their summaries"))

    versions = {(r.summary["code_sha256"], r.summary["code_bytes"]) for r in runs}
    if len(versions) == 1:
        sha, n = next(iter(versions))
        checks.append(Check("same_code", "PASS", f"all {len(runs)} runs: code sha256 "
                            f"{sha[:16]}, {n:,} bytes"))
    else:
        checks.append(Check("same_code", "FAIL", f"{len(versions)} code versions: " + ", ".join(
            f"seed {r.seed}={r.summary['code_sha256'][:12]}" for r in runs)))

    def settings(r):
        cfg = {k: v for k, v in r.summary["config"].items() if k not in PER_RUN_SETTINGS}
        cfg["(world_size)"] = r.summary["world_size"]
        return cfg
    first = settings(runs[0])
    diffs = []
    for r in runs[1:]:
        other = settings(r)
        for key in sorted(set(first) | set(other)):
            if first.get(key, "<unset>") != other.get(key, "<unset>"):
                diffs.append(f"{key} (seed {runs[0].seed}: {first.get(key, '<unset>')}, "
                             f"seed {r.seed}: {other.get(key, '<unset>')})")
    checks.append(Check("same_settings", "FAIL" if diffs else "PASS",
                        "differ: " + "; ".join(diffs) if diffs else
                        f"all runs share {len(first) - 1} settings and world_size "
                        f"(ignoring {', '.join(sorted(PER_RUN_SETTINGS))})"))

    seeds = [r.seed for r in runs]
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    checks.append(Check("distinct_seeds", "FAIL" if dup else "PASS",
                        f"seed(s) {dup} appear more than once" if dup else
                        f"seeds {', '.join(map(str, seeds))}"))

    sha = runs[0].summary["code_sha256"]
    if hashlib.sha256(code).hexdigest() != sha or len(code) != runs[0].summary["code_bytes"]:
        checks.append(Check("shipped_code", "FAIL", f"{_show(code_path)} has sha256 "
                            f"{hashlib.sha256(code).hexdigest()[:16]} ({len(code):,} bytes), "
                            f"the logs were made by {sha[:16]} "
                            f"({runs[0].summary['code_bytes']:,} bytes)"))
    else:
        checks.append(Check("shipped_code", "PASS", f"{_show(code_path)} is the logged code "
                            f"(sha256 {sha[:16]})"))

    totals = {r.seed: r.summary["artifact_bytes"] + shipped_code_bytes for r in runs}
    over = {s: t for s, t in totals.items() if t > SIZE_CAP}
    if not over:
        worst = max(totals.values())
        checks.append(Check("size_cap", "PASS", f"max total {worst:,} bytes (artifact + "
                            f"{shipped_code_bytes:,} code) <= {SIZE_CAP:,}; "
                            f"headroom {SIZE_CAP - worst:,}"))
    else:
        text = ", ".join(f"seed {s}: {t:,} (+{t - SIZE_CAP:,})" for s, t in over.items())
        if allow_over_cap and not record:
            checks.append(Check("size_cap", "WARN", f"over {SIZE_CAP:,}: {text}; allowed by "
                                "--allow-over-cap, flagged in the README"))
        else:
            hint = ("--allow-over-cap is not accepted on the record track" if record
                    and allow_over_cap else "refused")
            checks.append(Check("size_cap", "FAIL", f"over {SIZE_CAP:,}: {text} ({hint})"))

    soft = "FAIL" if record else "INFO"
    for name, key, what in (("train_time", "train_time_s", "training"),
                            ("eval_time", "total_eval_time_s", "evaluation")):
        worst = max(r.summary[key] for r in runs)
        ok = worst <= TIME_LIMIT_S
        checks.append(Check(name, "PASS" if ok else soft,
                            f"max {what} {worst:.1f} s {'<=' if ok else '>'} "
                            f"{TIME_LIMIT_S:.0f} s" + ("" if record else
                            " (limit binds the 10min_16mb track only)")))

    def on_h100s(r):
        s = r.summary
        return s["world_size"] == 8 and s["device"] == "cuda" and "H100" in s["device_name"]
    hw = "; ".join(sorted({r.summary["hardware"] for r in runs}))
    ok = all(on_h100s(r) for r in runs)
    checks.append(Check("hardware", "PASS" if ok else soft, (f"8x H100: {hw}" if ok else
                        f"not 8x H100 ({_seeds(runs, lambda r: not on_h100s(r))}): {hw}")
                        + ("" if record else " (informational on this track)")))

    partial = _seeds(runs, lambda r: not r.summary["val_full"])
    checks.append(Check("full_validation", ("FAIL" if record else "WARN") if partial else "PASS",
                        f"VAL_MAX_TOKENS truncated the validation split ({partial}): "
                        "the score is unofficial" if partial else
                        f"whole validation split scored ({runs[0].summary['val_tokens']:,} tokens)"))
    checks.append(versions_check(runs))
    return checks


# ----------------------------------------------------------------------------- outputs
def _limits(values) -> list[float] | None:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.01, 1e-3)
    return [lo - pad, hi + pad]


def plot_curves(runs: list[Run], png: Path, compare_bpb: float | None = None) -> dict:
    """Train loss and val_bpb against step; returns what was plotted, which is also stored as
    JSON in the PNG's text chunk PLOT_KEY (read it back with png_text)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    last = max([r.summary["steps"] for r in runs] + [max(r.train_loss, default=0) for r in runs]
               + [max(r.val_bpb, default=0) for r in runs])
    clip = int(0.1 * last)  # the first 10% of steps do not set the y-limits
    meta = {"clip_from_step": clip, "x_max": last,
            "train_loss": {"series": [], "ylim": None},
            "val_bpb": {"series": [], "finals": [], "compare_bpb": compare_bpb, "ylim": None}}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    train_all, train_late, bpb_all, bpb_late = [], [], [], []
    for i, r in enumerate(runs):
        color, label = f"C{i % 10}", f"seed {r.seed}"
        steps = sorted(r.train_loss)
        ax1.plot(steps, [r.train_loss[s] for s in steps], lw=1, color=color, label=label)
        train_all += [r.train_loss[s] for s in steps]
        train_late += [r.train_loss[s] for s in steps if s >= clip]
        meta["train_loss"]["series"].append({"name": label, "points": len(steps)})
        steps = sorted(r.val_bpb)
        ax2.plot(steps, [r.val_bpb[s] for s in steps], marker="o", ms=3, lw=1, color=color,
                 label=f"{label} (periodic, unquantised)")
        bpb_all += [r.val_bpb[s] for s in steps]
        bpb_late += [r.val_bpb[s] for s in steps if s >= clip]
        meta["val_bpb"]["series"].append({"name": label, "points": len(steps)})
        final, at = r.summary["val_bpb"], r.summary["steps"]
        ax2.plot([at], [final], ls="none", marker="*", ms=13, color=color, mec="black", mew=0.6,
                 label=f"{label} final {final:.5f}")
        ax2.annotate(f"{final:.5f}", (at, final), textcoords="offset points",
                     xytext=(-8, 6 + 11 * i), ha="right", fontsize=7, color=color)
        meta["val_bpb"]["finals"].append({"name": label, "step": at, "val_bpb": final,
                                          "line": score_line(r)})
    finals = [r.summary["val_bpb"] for r in runs]
    if compare_bpb is not None:
        ax2.axhline(compare_bpb, color="black", ls="--", lw=1,
                    label=f"record to beat {compare_bpb:.5f}")
    extra = finals + ([compare_bpb] if compare_bpb is not None else [])
    ylims = (_limits(train_late) or _limits(train_all),
             _limits((bpb_late or bpb_all) + extra))
    for ax, ylim, key in ((ax1, ylims[0], "train_loss"), (ax2, ylims[1], "val_bpb")):
        if ylim:
            ax.set_ylim(*ylim)
            meta[key]["ylim"] = ylim
        ax.set_xlim(-0.02 * max(last, 1), 1.04 * max(last, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set(xlabel="step", ylabel="train loss (nats)", title="train loss")
    ax2.set(xlabel="step", ylabel="val_bpb",
            title="val_bpb: periodic (unquantised); final score (star)")
    cpu = any(r.summary["device"] != "cuda" for r in runs)
    fig.suptitle(runs[0].summary["hardware"] + (" - CPU smoke run" if cpu else "")
                 + (f"; y-axes scaled to steps >= {clip} (the first 10% left out)" if clip else ""),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100, metadata={PLOT_KEY: json.dumps(meta, sort_keys=True)})
    plt.close(fig)
    return meta


def png_text(path) -> dict:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG file: {keyword: text}."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    out, pos = {}, 8
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        body, pos = data[pos + 8:pos + 8 + length], pos + 12 + length
        key, _, rest = body.partition(b"\0")
        if kind == b"tEXt":
            out[key.decode("latin-1")] = rest.decode("latin-1")
        elif kind == b"zTXt":
            out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            compressed, text = rest[0], rest[2:].split(b"\0", 2)[-1]
            out[key.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode("utf-8")
        elif kind == b"IEND":
            break
    return out


def _f8(x) -> str:
    return "n/a" if x is None else f"{x:.8f}"


def _json_versions(run: Run) -> dict:
    v = run_versions(run)
    out = {k: val for k, val in v.items() if not k.startswith("pkg:") and k != "attention"}
    packages = {k[4:]: val for k, val in v.items() if k.startswith("pkg:")}
    if packages:
        out["compressor_packages"] = packages
    return out


def build_submission(args, runs, checks, sig, code_bytes, pack: dict) -> dict:
    s0 = runs[0].summary
    loss_mean, loss_std = mean_std(r.summary["val_loss"] for r in runs)
    bpb_mean, bpb_std = mean_std(r.summary["val_bpb"] for r in runs)
    per_seed = ("val_loss", "val_bpb", "artifact_bytes", "steps", "step_avg_ms", "eval_time_s",
                "prequant_val_loss", "prequant_val_bpb", "roundtrip_val_loss",
                "roundtrip_val_bpb", "train_time_s", "total_eval_time_s", "stop_reason",
                "val_tokens", "val_full", "run_id")

    def extra(r):
        peak = r.peak_memory or {}
        return {"bytes_total": r.summary["artifact_bytes"] + code_bytes,
                "score_line": score_line(r), "log": f"train_seed{r.seed}.log",
                "summary_file": f"train_seed{r.seed}.json" if r.summary_path else None,
                "peak_memory_allocated_mib": peak.get("allocated_mib"),
                "peak_memory_reserved_mib": peak.get("reserved_mib")}
    sub = {
        "author": args.author, "github_id": args.github_id, "name": args.name,
        "blurb": args.blurb, "date": args.date, "track": args.track,
        "val_loss": loss_mean, "val_bpb": bpb_mean,
        "val_loss_std": loss_std, "val_bpb_std": bpb_std,
        "bytes_total": max(r.summary["artifact_bytes"] + code_bytes for r in runs),
        "bytes_code": code_bytes,
        "seeds": [r.seed for r in runs],
        "seed_results": {str(r.seed): {**{k: r.summary[k] for k in per_seed}, **extra(r)}
                         for r in runs},
        "hardware": "; ".join(sorted({r.summary["hardware"] for r in runs})),
        "device": s0["device"],
        "pytorch_version": "; ".join(sorted({r.summary["torch"] for r in runs})),
        "python_version": "; ".join(sorted({r.summary["python"] for r in runs})),
        "versions": _json_versions(runs[0]),
        "attention": runs[0].attention,
        "model_params": runs[0].model_params,
        "code_sha256": s0["code_sha256"],
        "code_packed": pack["packed"],
        "code_minified": pack["minified"],
        "minifier": pack["minifier"],
        "bytes_code_unpacked": s0["code_bytes"],
        "bytes_code_minified": pack["minified_bytes"],
        "eval_stride": s0["eval_stride"], "eval_seq_len": s0["eval_seq_len"],
        "launch": [r.summary["launch"] for r in runs],
        "non_default": s0["non_default"],
        "compare_val_loss": args.compare_loss, "compare_val_bpb": args.compare_bpb,
        "val_bpb_delta": None if args.compare_bpb is None else bpb_mean - args.compare_bpb,
        "significance": sig,
        "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in checks],
    }
    return sub


FA3_BUILD = ("git clone https://github.com/Dao-AILab/flash-attention && "
             "cd flash-attention/hopper && python setup.py install")


def setup_section(runs: list[Run]) -> list[str]:
    v = run_versions(runs[0])
    vocab = runs[0].summary["config"].get("VOCAB_SIZE", 1024)
    try:
        vocab = int(vocab)
    except (TypeError, ValueError):
        pass
    cuda = v.get("cuda")
    pins = [f"torch {v['torch']}" + (f" for CUDA {cuda}" if cuda else "")]
    pins += [f"{k} {v[k]}" for k in ("numpy", "sentencepiece", "zstandard", "flash_attn") if v.get(k)]
    pins += [f"{k[4:]} {val}" for k, val in v.items() if k.startswith("pkg:") and val]
    repo = "MATCHED_FINEWEB_REPO_ID=kevclark/parameter-golf " if vocab in (4096, 8192) else ""
    flash, attention = v.get("flash_attn"), v.get("attention")
    if attention == "fa3":
        note = ("the runs used FlashAttention 3 (`flash_attn_interface`, Hopper GPUs only"
                + (f", {flash}" if flash else "") + "), which is not on PyPI: build it with "
                f"`{FA3_BUILD}`. Without it train_gpt.py falls back to FlashAttention 2, then to "
                "PyTorch SDPA, which are slower, so fewer steps fit in the time.")
    elif attention == "fa2":
        note = ("the runs used FlashAttention 2 (`flash_attn`" + (f" {flash}" if flash else "")
                + "): `pip install flash-attn" + (f"=={flash}" if flash else "")
                + " --no-build-isolation` (it compiles against the installed torch). Without it "
                "train_gpt.py uses PyTorch SDPA, which is slower.")
    elif attention == "sdpa":
        note = "not needed: the runs used PyTorch's scaled_dot_product_attention (SDPA)."
    elif attention == "matmul":
        note = "not needed: the runs used train_gpt.py's own matmul attention (plain PyTorch ops; CPU bf16 default)."
    else:
        note = ("the logs do not say which attention kernel ran; train_gpt.py takes FlashAttention 3, "
                "else FlashAttention 2, else PyTorch SDPA, whichever is installed (`ATTN_BACKEND`)."
                + (f" flash_attn {flash} was installed." if flash else ""))
    return ["## Setup", "",
            f"1. Python {v['python']} with the exact package versions of these runs "
            f"({', '.join(pins)}):", "",
            "   ```bash", "   pip install -r requirements.txt", "   ```", "",
            f"2. The data: the FineWeb export tokenized with the {vocab}-token SentencePiece "
            f"vocabulary (`sp{vocab}`). From the root of the challenge repository:", "",
            "   ```bash", f"   {repo}python3 data/cached_challenge_fineweb.py --variant sp{vocab}",
            "   ```", "",
            "   It needs `huggingface_hub` and ends by printing the `DATA_PATH` and "
            "`TOKENIZER_PATH` to use.", "",
            f"3. FlashAttention: {note}", "",
            "4. Run from inside this folder, one command per seed, as logged (where a command "
            "does not set `DATA_PATH` and `TOKENIZER_PATH`, or sets the author's paths, put the "
            "ones step 2 printed in front):", "",
            "   ```bash"] + [f"   {r.summary['launch']}" for r in runs] + ["   ```"]


def build_readme(args, runs, checks, sub, notes: str, plot: dict | None = None) -> str:
    s0 = runs[0].summary
    by = {c.name: c for c in checks}
    out = [f"# {args.name}", "", args.blurb, "",
           f"- Track: `{args.track}`",
           f"- Author: {args.author} (@{args.github_id}), {args.date}",
           f"- Hardware: {sub['hardware']}; PyTorch {sub['pytorch_version']}, "
           f"Python {sub['python_version']}"]
    if sub["model_params"]:
        out.append(f"- Model: {sub['model_params']:,} parameters")
    peaks = [r.peak_memory for r in runs if r.peak_memory]
    if peaks:
        out.append(f"- Peak memory per process (max over seeds): "
                   f"{max(p['allocated_mib'] for p in peaks):,.0f} MiB allocated, "
                   f"{max(p['reserved_mib'] for p in peaks):,.0f} MiB reserved")
    flags = []
    if any(r.summary["device"] != "cuda" for r in runs):
        flags.append("**CPU smoke run.** These figures come from a CPU run, not from "
                     "8x H100; they test the pipeline and are not a competitive score.")
    if by["size_cap"].status == "WARN":
        flags.append(f"**Over the size cap.** {by['size_cap'].detail}. This folder is not a "
                     "valid submission under the 16,000,000-byte rule.")
    if by["full_validation"].status != "PASS":
        flags.append(f"**Partial validation.** {by['full_validation'].detail}.")
    if flags:
        out += [""] + [f"> {f}" for f in flags]

    out += ["", "## Results", "",
            "| seed | steps | step avg (ms) | train (s) | eval (s) | pre-quant val_bpb "
            "| round-trip val_bpb | val_loss | val_bpb | artifact bytes | total bytes |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        s = r.summary
        out.append(f"| {s['seed']} | {s['steps']} | {s['step_avg_ms']:.2f} | "
                   f"{s['train_time_s']:.1f} | {s['total_eval_time_s']:.1f} | "
                   f"{s['prequant_val_bpb']:.8f} | {s['roundtrip_val_bpb']:.8f} | "
                   f"{s['val_loss']:.8f} | {s['val_bpb']:.8f} | {s['artifact_bytes']:,} | "
                   f"{sub['seed_results'][str(s['seed'])]['bytes_total']:,} |")
    out.append(f"| **mean** | | | | | | | **{sub['val_loss']:.8f}** | **{sub['val_bpb']:.8f}** "
               f"| | **{sub['bytes_total']:,}** (max) |")
    out.append(f"| **std** | | | | | | | {_f8(sub['val_loss_std'])} | {_f8(sub['val_bpb_std'])} "
               "| | |")
    lines = sorted({score_line(r) or "?" for r in runs})
    if lines == ["final_sliding_exact"]:
        how = (f"the sliding-window evaluation (stride {s0['eval_stride']}, sequence length "
               f"{s0['eval_seq_len']}) of the weights decompressed from the artifact")
    else:
        how = "the " + " / ".join(f"`{n}`" for n in lines) + " line of each log"
    official = all(r.last_line.startswith(OFFICIAL_LINE + " ") for r in runs)
    out += ["", f"val_bpb = {sub['val_bpb']:.8f} ± {_f8(sub['val_bpb_std'])} (mean ± sample "
            f"std over {len(runs)} seed(s)). The score is {how}"
            + (f", repeated by the log's last line, `{OFFICIAL_LINE}`, the challenge's name "
               "for the final score" if official else "")
            + "; eval (s) is all evaluation after training; total bytes = artifact + the "
            f"shipped `train_gpt.py`, {sub['bytes_code']:,} bytes"
            + (f" (packed; {sub['bytes_code_unpacked']:,} unpacked)" if sub["code_packed"] else "")
            + "."]

    sig = sub["significance"]
    if sig is not None or args.compare_bpb is not None:
        out += ["", "## Against the record to beat", ""]
    if args.compare_bpb is not None:
        out.append(f"- val_bpb {sub['val_bpb']:.8f} vs {args.compare_bpb:.8f}: "
                   f"delta {sub['val_bpb_delta']:+.8f}")
    if sig is not None:
        out.append(f"- {by['significance'].line()}")
        out.append(f"- Test: one-sided one-sample t-test that the mean val_loss gain over "
                   f"{sig['compare_val_loss']:.8f} exceeds {sig['min_gain_nats']} nats; "
                   f"a record claim needs p < {sig['alpha']}.")

    clip = (plot or {}).get("clip_from_step", 0)
    out += ["", "## Training curves", "", "![training curves](train_curves.png)", "",
            "Left: train loss. Right: val_bpb of the periodic evaluations (unquantised weights) "
            "and, as a star, each seed's final score (after quantisation)"
            + (f"; the dashed line is the record to beat, {args.compare_bpb:.5f}"
               if args.compare_bpb is not None else "")
            + (f". The y-axes are scaled to the steps from {clip:,} on (the first 10%), so the "
               "first steps do not crush the scale." if clip else "."), ""]
    out += setup_section(runs)
    nd = {k: v for k, v in s0["non_default"].items() if k not in PER_RUN_SETTINGS}
    out += ["", "## Settings", ""]
    if nd:
        out += ["Non-default settings (besides the per-run ones such as SEED):", "",
                "| setting | value |", "|---|---|"]
        out += [f"| `{k}` | `{json.dumps(v)}` |" for k, v in sorted(nd.items())]
    else:
        out.append("All settings are the script's defaults (besides per-run ones such as SEED).")
    if sub["code_packed"]:
        how = (f"minified by {sub['minifier']} (comments, docstrings and annotations removed, "
               f"local names shortened: {sub['bytes_code_minified']:,} bytes), then "
               if sub["code_minified"] else "")
        out += ["", f"`train_gpt.py` is packed: the logged source ({sub['bytes_code_unpacked']:,} "
                f"bytes, sha256 `{sub['code_sha256'][:16]}...`), {how}compressed with lzma and "
                f"base85-encoded ({sub['bytes_code']:,} bytes). It runs like the original (checked "
                "with `DRY_RUN=1`). To read the "
                + ("minified " if sub["code_minified"] else "") + "source: `python3 -c \"import "
                "lzma,base64;t=open('train_gpt.py').read();"
                "print(lzma.decompress(base64.b85decode(t.split(chr(34))[1])).decode())\"`"]
    out += ["", "## Techniques", "", notes.strip() or args.blurb, "",
            "## Checks", "", "Written by `records/make_submission.py`:", "", "```"]
    out += [c.line() for c in checks] + ["```", "", "## Files", "",
            f"- `train_gpt.py`: the code that produced the logs (sha256 "
            f"`{sub['code_sha256']}`{', packed' if sub['code_packed'] else ''})",
            "- `requirements.txt`: the exact package versions of the runs (see Setup)",
            "- `submission.json`: summary, per-seed results, check verdicts"]
    for r in runs:
        name = score_line(r) or "final score"
        if r.last_line.startswith(OFFICIAL_LINE + " "):
            what = (f"its last line, `{r.last_line}`, is the final score in the challenge's "
                    f"official format (the figures of its `{name}` line)")
        else:
            what = (f"its final score is its `{name}` line (the log predates the official "
                    f"`{OFFICIAL_LINE}` last line)")
        out.append(f"- `train_seed{r.seed}.log`: the log of seed {r.seed} (run "
                   f"`{r.summary['run_id']}`, written as `{r.path.name}`); {what}")
        if r.summary_path:
            out.append(f"- `train_seed{r.seed}.json`: the summary of seed {r.seed}'s run (the "
                       f"`{r.summary_path.name}` named by the log's `summary:` line)")
    out += ["- `train_curves.png`: train loss and val_bpb against step, with the final scores", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- arguments
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block: main() prints it and exits 2
        raise InputError(f"{message} (see --help)")


def _number(flag: str, what: str, example: str):
    def convert(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            x = None
        if x is None or not math.isfinite(x) or x <= 0:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not allowed: give {what} as a finite number > 0, e.g. {flag} {example}")
        return x
    return convert


def _date(text: str) -> str:
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError
        dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date as YYYY-MM-DD; use e.g. "
                                         f"--date {dt.date.today().isoformat()}") from None
    return text


def _text(flag: str, example: str):
    def convert(text: str) -> str:
        value = text.strip()
        if not value:
            raise argparse.ArgumentTypeError(f"{text!r} is empty; give e.g. {flag} {example}")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise argparse.ArgumentTypeError(f"{value[:40]!r} holds a line break or control "
                                             f"character; give one line, e.g. {flag} {example}")
        return value
    return convert


def _name(text: str) -> str:
    value = _text("--name", "Int6Bigram")(text)
    bad = [s for s in ("/", "\\", "..") if s in value]
    if bad:
        raise argparse.ArgumentTypeError(
            f"{value!r} contains {' and '.join(repr(b) for b in bad)}: the name also names the "
            "folder under --records-dir, so it may not hold '/', '\\' or '..'; e.g. --name Int6Bigram")
    if len(value) > 100:
        raise argparse.ArgumentTypeError(f"{value[:20]!r}... has {len(value)} characters; "
                                         "keep it to 100 or fewer, e.g. --name Int6Bigram")
    if not _slug(value):
        raise argparse.ArgumentTypeError(f"{value!r} has no letter or digit for the folder name; "
                                         "e.g. --name Int6Bigram")
    return value


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")


def _github_id(text: str) -> str:
    value = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,37}[A-Za-z0-9])?", value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a GitHub user name (letters, digits and "
                                         "inner hyphens, at most 39, no '@'); e.g. --github-id ada")
    return value


def parse_args(argv):
    p = _Parser(
        prog=PROG,
        description="Check finished train_gpt.py runs and write "
                    "records/track_<track>/<date>_<name>/ for submission. Exit status: 0 written, "
                    "1 refused by a check, 2 bad argument or input file.")
    p.add_argument("logs", nargs="+", type=Path, help="train_gpt.py logs, one per seed")
    p.add_argument("--author", required=True, type=_text("--author", '"Ada L."'),
                   help="author's name")
    p.add_argument("--github-id", required=True, type=_github_id, help="author's GitHub id")
    p.add_argument("--name", required=True, type=_name,
                   help="short name (also the folder name; no '/', '\\' or '..')")
    p.add_argument("--blurb", required=True, type=_text("--blurb", '"10L int6 + BigramHash"'),
                   help="one or two sentences on what it does")
    p.add_argument("--track", required=True, choices=TRACKS)
    p.add_argument("--compare-loss", metavar="NATS",
                   type=_number("--compare-loss", "the record's val_loss in nats", "1.9300"),
                   help="val_loss of the record to beat: runs the significance t-test")
    p.add_argument("--compare-bpb", metavar="BPB",
                   type=_number("--compare-bpb", "the record's val_bpb", "1.1428"),
                   help="val_bpb of the record to beat: reports the difference, drawn on the plot")
    p.add_argument("--code", type=Path, default=ROOT / "train_gpt.py",
                   help="the train_gpt.py the logs were made with (default: %(default)s)")
    p.add_argument("--notes", type=Path, metavar="FILE",
                   help="markdown for the README's Techniques section (default: the blurb)")
    p.add_argument("--records-dir", type=Path, default=ROOT / "records",
                   help="where track_<track>/ folders live (default: %(default)s)")
    p.add_argument("--date", type=_date, default=dt.date.today().isoformat(),
                   help="YYYY-MM-DD for the folder and submission.json (default: today)")
    p.add_argument("--pack-code", action="store_true",
                   help="ship train_gpt.py minified (python-minifier, if installed) and as an "
                        "lzma+base85 self-extracting script")
    p.add_argument("--no-minify", action="store_true",
                   help="with --pack-code: pack the source as it is, without minifying it")
    p.add_argument("--allow-over-cap", action="store_true",
                   help="non_record_16mb only: package runs over 16,000,000 bytes (flagged)")
    p.add_argument("--check-only", action="store_true",
                   help="print the verdicts and write nothing")
    args = p.parse_args(argv)
    if args.no_minify and not args.pack_code:
        p.error("argument --no-minify: it only changes --pack-code; add --pack-code or leave "
                "out --no-minify")
    args.slug = _slug(args.name)
    return args


def _input_file(path: Path, flag: str, what: str) -> bytes:
    fix = f"give {what}"
    if not path.exists():
        raise InputError(f"argument {flag}: {path} does not exist; {fix}")
    if path.is_dir():
        raise InputError(f"argument {flag}: {path} is a directory; {fix}")
    if not path.is_file():
        raise InputError(f"argument {flag}: {path} is not a regular file; {fix}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"argument {flag}: {path} cannot be read ({e.strerror or e}); "
                         "check its permissions") from None


def target_of(args) -> Path:
    return args.records_dir / f"track_{args.track}" / f"{args.date}_{args.slug}"


def check_paths(args) -> None:
    """--code, --notes, --records-dir and the destination; reads the code and notes."""
    args.code_bytes = _input_file(args.code, "--code", "the train_gpt.py that produced the logs")
    if not args.code_bytes:
        raise InputError(f"argument --code: {args.code} is empty; give the train_gpt.py that "
                         "produced the logs")
    args.notes_text = ""
    if args.notes is not None:
        data = _input_file(args.notes, "--notes", "a markdown file for the Techniques section")
        try:
            args.notes_text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"argument --notes: {args.notes} is not UTF-8 text; give a markdown "
                             "file") from None
    records = args.records_dir
    if records.exists() and not records.is_dir():
        raise InputError(f"argument --records-dir: {records} is a file, not a folder; give the "
                         "folder that holds (or will hold) the track_*/ folders")
    existing = next((p for p in [records, *records.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise InputError(f"argument --records-dir: {records} cannot be created because "
                         f"{existing} is a file; give a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"argument --records-dir: {existing} is not writable; give a folder "
                         "you can write to")
    track_dir = records / f"track_{args.track}"
    if track_dir.exists() and not track_dir.is_dir():
        raise InputError(f"argument --records-dir: {track_dir} is a file, not a folder; move it "
                         "away or give another --records-dir")
    target = target_of(args)
    if os.path.lexists(target):
        raise InputError(f"destination {target} already exists and is never overwritten; choose "
                         "another --name or --date, or move that folder away")


def read_logs(paths: list[Path]) -> list[Run]:
    runs, errors, seen = [], [], {}
    for path in paths:
        try:
            key = path.resolve()
        except (OSError, RuntimeError):
            key = path
        if key in seen:
            errors.append(f"log {path} is given twice (as {seen[key]} too); give each seed's "
                          "log once")
            continue
        seen[key] = path
        try:
            runs.append(parse_log(path))
        except InputError as e:
            errors += e.messages
    if errors:
        raise InputError(*errors)
    return runs


def _need(module: str, why: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise InputError(f"{module} is not installed; {why}: pip install {module} "
                         "(or pip install -r requirements.txt)") from None


def _make_dirs(path: Path, created: list) -> None:
    """mkdir -p, appending each folder it creates to `created` (outermost first)."""
    for p in [p for p in [path, *path.parents] if not p.exists()][::-1]:
        p.mkdir()
        created.append(p)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    try:
        return run(argv)
    except InputError as e:
        for message in e.messages:
            print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        return 130


def refuse(reasons) -> int:
    for reason in reasons:
        print(f"REFUSED: {reason}", file=sys.stderr)
    return 1


def pack_code(code: bytes, runs: list[Run], minify: bool) -> tuple[bytes, dict, list[Check]]:
    """(bytes to ship, what was done, verdicts) for --pack-code."""
    info = {"packed": False, "minified": False, "minifier": None, "minified_bytes": None}
    checks = []
    payload = code
    if not minify:
        checks.append(Check("minify", "INFO", "--no-minify: packing the source as it is",
                            blocking=False))
    else:
        minified, note = minify_source(code)
        if minified is None:
            print(f"warning: {note}", file=sys.stderr)
            checks.append(Check("minify", "WARN", note, blocking=False))
        else:
            payload = minified
            checks.append(Check("minify", "PASS", note, blocking=False))
            info.update(minifier=note.split(":")[0], minified_bytes=len(minified))
    packed = pack_source(payload)
    if len(packed) >= len(code):
        checks.append(Check("pack_code", "INFO", f"packing would not save bytes ({len(code):,} -> "
                            f"{len(packed):,}); shipping the original", blocking=False))
        return code, {**info, "minifier": None, "minified_bytes": None}, checks
    env = launch_env(runs[0].summary["launch"])
    env.pop("RESUME_FROM", None)  # a dry run must not look for a checkpoint
    ok, detail = check_packed(code, packed, env, payload)
    checks.append(Check("pack_code", "PASS" if ok else "FAIL",
                        f"train_gpt.py {len(code):,} -> {len(packed):,} bytes (saves "
                        f"{len(code) - len(packed):,}"
                        + (f"; minified {len(payload):,}" if payload != code else "")
                        + f"); {detail}"))
    if not ok:
        return code, {**info, "minifier": None, "minified_bytes": None}, checks
    return packed, {**info, "packed": True, "minified": payload != code}, checks


def run(argv=None) -> int:
    args = parse_args(argv)
    check_paths(args)
    runs = read_logs(args.logs)
    if args.compare_loss is not None:
        _need("scipy", "--compare-loss needs it for the t-test")
    if not args.check_only:
        _need("matplotlib", "it draws train_curves.png")
    for r in runs:
        s = r.summary
        print(f"run {s['run_id']} seed {s['seed']}: {s['steps']} steps, {s['train_time_s']:.1f} s "
              f"train, val_loss {s['val_loss']:.8f} val_bpb {s['val_bpb']:.8f}, "
              f"{s['bytes_total']:,} bytes, {s['hardware']}")

    code = args.code_bytes
    shipped, pack = code, {"packed": False, "minified": False, "minifier": None,
                           "minified_bytes": None}
    pack_checks = []
    if args.pack_code:
        shipped, pack, pack_checks = pack_code(code, runs, minify=not args.no_minify)
    checks = check_runs(runs, args.track, code, args.code, len(shipped), args.allow_over_cap)
    checks += pack_checks

    sig = None
    if args.compare_loss is not None:
        sig = significance([r.summary["val_loss"] for r in runs], args.compare_loss)
        detail = (f"mean val_loss gain {sig['mean_gain_nats']:+.5f} nats over "
                  f"{args.compare_loss:.5f} (need > {MIN_GAIN_NATS})")
        if sig["p_value"] is None:
            detail += f"; {sig['note']}"
        else:
            detail += (f"; t={sig['t_statistic']:.3f} df={sig['df']} one-sided "
                       f"p={sig['p_value']:.2e} {'<' if sig['passed'] else '>='} {ALPHA}")
        checks.append(Check("significance", "PASS" if sig["passed"] else "FAIL", detail,
                            blocking=False))
    for c in checks:
        print(c.line())
    loss_mean, loss_std = mean_std(r.summary["val_loss"] for r in runs)
    bpb_mean, bpb_std = mean_std(r.summary["val_bpb"] for r in runs)
    print(f"mean over {len(runs)} seed(s): val_loss {loss_mean:.8f} (std {_f8(loss_std)}), "
          f"val_bpb {bpb_mean:.8f} (std {_f8(bpb_std)})")

    target = target_of(args)
    reasons = [f"check {c.name} failed: {c.detail}" for c in checks
               if c.status == "FAIL" and c.blocking]
    if reasons:
        return refuse(reasons)
    if args.check_only:
        print(f"check only: would write {target}")
        return 0

    sub = build_submission(args, runs, checks, sig, len(shipped), pack)
    created, tmp, done = [], None, False
    try:
        _make_dirs(target.parent, created)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        (tmp / "train_gpt.py").write_bytes(shipped)
        for r in runs:
            shutil.copyfile(r.path, tmp / f"train_seed{r.seed}.log")
            if r.summary_path:
                shutil.copyfile(r.summary_path, tmp / f"train_seed{r.seed}.json")
        plot = plot_curves(runs, tmp / "train_curves.png", args.compare_bpb)
        (tmp / "requirements.txt").write_text(requirements_txt(runs), encoding="utf-8")
        (tmp / "submission.json").write_text(json.dumps(sub, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(build_readme(args, runs, checks, sub, args.notes_text, plot),
                                       encoding="utf-8")
        if os.path.lexists(target):
            raise InputError(f"destination {target} appeared while writing; it is never "
                             "overwritten: choose another --name or --date")
        os.rename(tmp, target)
        done = True
    except OSError as e:
        raise InputError(f"cannot write {target} ({e.strerror or e}); nothing was written: check "
                         "--records-dir and free space") from None
    finally:
        if not done:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            for d in reversed(created):
                try:
                    d.rmdir()
                except OSError:
                    pass
    print(f"wrote {target}: " + ", ".join(sorted(p.name for p in target.iterdir())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
