#!/usr/bin/env python3
"""Turn finished train_gpt.py runs (one log per seed) into a submission folder.

    python3 records/make_submission.py logs/s1.txt logs/s2.txt logs/s3.txt \\
        --author "Ada L." --github-id ada --name Int6Bigram \\
        --blurb "10L int6 + BigramHash" --track 10min_16mb --compare-loss 1.93

It reads the `summary_json:` line (and the header, periodic and final lines)
of every log, prints one verdict line per check, then writes
records/track_<track>/<date>_<name>/ or refuses with the reasons.
See records/README.md for the workflow and what each check means.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
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
from dataclasses import dataclass, field
from pathlib import Path

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
# Keys of summary_json and the type each must have (int also accepted for float).
SUMMARY_KEYS = {
    "run_id": str, "mode": str, "seed": int, "code_sha256": str, "code_bytes": int,
    "config": dict, "non_default": dict, "launch": str, "world_size": int,
    "device": str, "device_name": str, "hardware": str, "python": str, "torch": str,
    "steps": int, "step_avg_ms": float, "train_time_s": float, "stop_reason": str,
    "prequant_val_loss": float, "prequant_val_bpb": float,
    "roundtrip_val_loss": float, "roundtrip_val_bpb": float,
    "val_loss": float, "val_bpb": float, "eval_stride": int, "eval_seq_len": int,
    "val_tokens": int, "val_full": bool, "eval_time_s": float,
    "total_eval_time_s": float, "artifact_bytes": int, "bytes_total": int,
    "size_cap": int, "over_cap": bool, "artifact_path": str,
}
PACK_HEAD = b'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("'
PACK_TAIL = b'")))\n'
ROOT = Path(__file__).resolve().parent.parent


class Refusal(Exception):
    """A reason not to write the folder."""


# ----------------------------------------------------------------------------- parsing
@dataclass
class Run:
    path: Path
    summary: dict
    headers: list = field(default_factory=list)       # [{"run_id":..,"mode":..}]
    code_headers: list = field(default_factory=list)  # [{"sha256":..,"bytes":..}]
    finals: dict = field(default_factory=dict)        # "final_sliding_exact" -> fields
    train_loss: dict = field(default_factory=dict)    # step -> train_loss
    val_bpb: dict = field(default_factory=dict)       # step -> val_bpb (periodic)

    @property
    def seed(self) -> int:
        return self.summary["seed"]


def _fields(tokens) -> dict:
    """'key:value' tokens -> {key: value}; tokens without ':' are skipped."""
    out = {}
    for tok in tokens:
        key, sep, value = tok.partition(":")
        if sep:
            out[key] = value
    return out


def _num(text: str) -> float:
    for unit in ("ms", "%"):
        if text.endswith(unit):
            text = text[: -len(unit)]
    return float(text)


def parse_log(path) -> Run:
    """Parse one train_gpt.py log. Raises Refusal if it cannot be packaged."""
    path = Path(path)
    if not path.is_file():
        raise Refusal(f"log {path}: file not found")
    summary_text = None
    run = Run(path=path, summary={})
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        tokens = line.split()
        if not tokens:
            continue
        head = tokens[0]
        try:
            if line.startswith("summary_json:"):
                summary_text = line[len("summary_json:"):].strip()
            elif head == "train_gpt":
                run.headers.append(_fields(tokens[1:]))
            elif head == "code" and len(tokens) >= 3 and tokens[1].startswith("sha256:"):
                f = _fields(tokens[1:])
                run.code_headers.append({"sha256": f["sha256"], "bytes": int(f["bytes"])})
            elif head.startswith("step:"):
                f = _fields(tokens)
                step = int(f["step"].split("/")[0])
                if "train_loss" in f:
                    run.train_loss[step] = _num(f["train_loss"])
                if "val_bpb" in f:
                    run.val_bpb[step] = _num(f["val_bpb"])
            elif head.startswith("final_"):
                run.finals[head] = {k: _num(v) if k != "status" else v
                                    for k, v in _fields(tokens[1:]).items()}
        except (KeyError, ValueError):
            continue  # a line that only looks like ours; the summary is what counts
    if summary_text is None:
        raise Refusal(f"log {path}: no summary_json line - the run is truncated "
                      "(it died or is still running)")
    try:
        summary = json.loads(summary_text)
    except json.JSONDecodeError as e:
        raise Refusal(f"log {path}: summary_json is not valid JSON ({e})") from None
    if not isinstance(summary, dict):
        raise Refusal(f"log {path}: summary_json is not a JSON object")
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise Refusal(f"log {path}: summary_json lacks {', '.join(missing)}")
    for key, typ in SUMMARY_KEYS.items():
        value = summary[key]
        ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
        if typ is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise Refusal(f"log {path}: summary_json {key}={value!r} is not {typ.__name__}")
    if summary["mode"] != "train":
        raise Refusal(f"log {path}: mode is {summary['mode']!r}; only training runs "
                      "(mode 'train') can be packaged")
    run.summary = summary
    return run


def consistency_problems(run: Run) -> list[str]:
    """Where the log's printed lines disagree with its summary_json."""
    s, problems = run.summary, []
    for h in run.code_headers:
        if (h["sha256"], h["bytes"]) != (s["code_sha256"], s["code_bytes"]):
            problems.append(f"header code sha256:{h['sha256'][:12]} bytes:{h['bytes']} "
                            f"!= summary {s['code_sha256'][:12]} {s['code_bytes']}")
    if not run.code_headers:
        problems.append("no 'code sha256:' header line")
    expected = {
        "final_prequant_exact": ("prequant_val_loss", "prequant_val_bpb", None),
        "final_roundtrip_exact": ("roundtrip_val_loss", "roundtrip_val_bpb", None),
        "final_sliding_exact": ("val_loss", "val_bpb", "eval_time_s"),
    }
    for name, (loss_key, bpb_key, time_key) in expected.items():
        f = run.finals.get(name)
        if f is None:
            problems.append(f"no {name} line")
            continue
        for field_, key in (("val_loss", loss_key), ("val_bpb", bpb_key)):
            if field_ not in f or abs(f[field_] - s[key]) > 1e-8:  # printed with 8 decimals
                problems.append(f"{name} {field_}:{f.get(field_)} != summary {key} {s[key]}")
        if time_key and abs(f.get("eval_time", -1e9) / 1000 - s[time_key]) > 0.0015:
            problems.append(f"{name} eval_time:{f.get('eval_time')}ms != summary "
                            f"{time_key} {s[time_key]}")
        if name == "final_sliding_exact" and f.get("stride") != s["eval_stride"]:
            problems.append(f"{name} stride:{f.get('stride')} != summary eval_stride "
                            f"{s['eval_stride']}")
    f = run.finals.get("final_size")
    if f is None:
        problems.append("no final_size line")
    else:
        pairs = (("artifact_bytes", "artifact_bytes"), ("code_bytes", "code_bytes"),
                 ("total_bytes", "bytes_total"), ("cap", "size_cap"))
        for field_, key in pairs:
            if f.get(field_) != s[key]:
                problems.append(f"final_size {field_}:{f.get(field_)} != summary {key} {s[key]}")
        if f.get("status") != ("OVER_CAP" if s["over_cap"] else "ok"):
            problems.append(f"final_size status:{f.get('status')} but summary over_cap "
                            f"{s['over_cap']}")
    if s["bytes_total"] != s["code_bytes"] + s["artifact_bytes"]:
        problems.append(f"bytes_total {s['bytes_total']} != code_bytes + artifact_bytes")
    for key in ("val_loss", "val_bpb", "roundtrip_val_bpb", "prequant_val_bpb"):
        if not math.isfinite(s[key]):
            problems.append(f"{key} is {s[key]}")
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
        raise SystemExit("make_submission: scipy is needed for --compare-loss "
                         "(pip install scipy)") from None
    res = stats.ttest_1samp(gains, popmean=min_gain, alternative="greater")
    out["t_statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    out["passed"] = out["p_value"] < alpha
    return out


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


def check_packed(original: bytes, packed: bytes, env: dict) -> tuple[bool, str]:
    """Does `packed` decompress to `original` and print the same DRY_RUN output?"""
    try:
        if unpack_source(packed) != original:
            return False, "the packed script does not decompress to the original bytes"
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
    return True, f"decompresses to the logged code; DRY_RUN=1 prints the same {len(a)} lines"


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


def check_runs(runs: list[Run], track: str, code: bytes | None, code_path: Path,
               shipped_code_bytes: int, allow_over_cap: bool) -> list[Check]:
    record = track == RECORD_TRACK
    checks = []

    bad = {r.seed: consistency_problems(r) for r in runs}
    bad = {k: v for k, v in bad.items() if v}
    checks.append(Check("log_consistency", "FAIL" if bad else "PASS",
                        "; ".join(f"seed {k}: {', '.join(v)}" for k, v in bad.items())
                        or f"header and final lines of all {len(runs)} logs agree with summary_json"))

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
    if code is None:
        checks.append(Check("shipped_code", "FAIL", f"{_show(code_path)} not found (see --code)"))
    elif hashlib.sha256(code).hexdigest() != sha or len(code) != runs[0].summary["code_bytes"]:
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
    return checks


# ----------------------------------------------------------------------------- outputs
def plot_curves(runs: list[Run], png: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("make_submission: matplotlib is needed for the training-curve "
                         "plot (pip install matplotlib)") from None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        steps = sorted(r.train_loss)
        ax1.plot(steps, [r.train_loss[s] for s in steps], lw=1, label=f"seed {r.seed}")
        steps = sorted(r.val_bpb)
        ax2.plot(steps, [r.val_bpb[s] for s in steps], marker="o", ms=3, lw=1,
                 label=f"seed {r.seed}")
    ax1.set(xlabel="step", ylabel="train loss (nats)", title="train loss")
    ax2.set(xlabel="step", ylabel="val_bpb", title="val_bpb (periodic eval, unquantised)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    cpu = any(r.summary["device"] != "cuda" for r in runs)
    fig.suptitle(runs[0].summary["hardware"] + (" - CPU smoke run" if cpu else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _f8(x) -> str:
    return "n/a" if x is None else f"{x:.8f}"


def build_submission(args, runs, checks, sig, code_bytes, packed) -> dict:
    s0 = runs[0].summary
    loss_mean, loss_std = mean_std(r.summary["val_loss"] for r in runs)
    bpb_mean, bpb_std = mean_std(r.summary["val_bpb"] for r in runs)
    per_seed = ("val_loss", "val_bpb", "artifact_bytes", "steps", "step_avg_ms", "eval_time_s",
                "prequant_val_loss", "prequant_val_bpb", "roundtrip_val_loss",
                "roundtrip_val_bpb", "train_time_s", "total_eval_time_s", "stop_reason",
                "val_tokens", "val_full", "run_id")
    sub = {
        "author": args.author, "github_id": args.github_id, "name": args.name,
        "blurb": args.blurb, "date": args.date, "track": args.track,
        "val_loss": loss_mean, "val_bpb": bpb_mean,
        "val_loss_std": loss_std, "val_bpb_std": bpb_std,
        "bytes_total": max(r.summary["artifact_bytes"] + code_bytes for r in runs),
        "bytes_code": code_bytes,
        "seeds": [r.seed for r in runs],
        "seed_results": {str(r.seed): {**{k: r.summary[k] for k in per_seed},
                                       "bytes_total": r.summary["artifact_bytes"] + code_bytes}
                         for r in runs},
        "hardware": "; ".join(sorted({r.summary["hardware"] for r in runs})),
        "device": s0["device"],
        "pytorch_version": "; ".join(sorted({r.summary["torch"] for r in runs})),
        "python_version": "; ".join(sorted({r.summary["python"] for r in runs})),
        "code_sha256": s0["code_sha256"],
        "code_packed": packed,
        "bytes_code_unpacked": s0["code_bytes"],
        "eval_stride": s0["eval_stride"], "eval_seq_len": s0["eval_seq_len"],
        "launch": [r.summary["launch"] for r in runs],
        "non_default": s0["non_default"],
        "compare_val_loss": args.compare_loss, "compare_val_bpb": args.compare_bpb,
        "val_bpb_delta": None if args.compare_bpb is None else bpb_mean - args.compare_bpb,
        "significance": sig,
        "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in checks],
    }
    return sub


def build_readme(args, runs, checks, sub, notes: str) -> str:
    s0 = runs[0].summary
    by = {c.name: c for c in checks}
    out = [f"# {args.name}", "", args.blurb, "",
           f"- Track: `{args.track}`",
           f"- Author: {args.author} (@{args.github_id}), {args.date}",
           f"- Hardware: {sub['hardware']}; PyTorch {sub['pytorch_version']}, "
           f"Python {sub['python_version']}"]
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
    out += ["", f"val_bpb = {sub['val_bpb']:.8f} ± {_f8(sub['val_bpb_std'])} (mean ± sample "
            f"std over {len(runs)} seed(s)). The score is the sliding-window evaluation "
            f"(stride {s0['eval_stride']}, sequence length {s0['eval_seq_len']}) of the weights "
            "decompressed from the artifact; eval (s) is all evaluation after training; "
            "total bytes = artifact + the shipped `train_gpt.py`, "
            f"{sub['bytes_code']:,} bytes"
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

    out += ["", "## Training curves", "", "![training curves](train_curves.png)", "",
            "## Reproduce", "",
            "Run from inside this folder (point `DATA_PATH` and `TOKENIZER_PATH` at the "
            "data; relative paths in the logged commands were relative to the author's "
            "working directory). The exact command of each seed, as logged:", "", "```"]
    out += [r.summary["launch"] for r in runs] + ["```", ""]
    nd = {k: v for k, v in s0["non_default"].items() if k not in PER_RUN_SETTINGS}
    if nd:
        out += ["Non-default settings (besides the per-run ones such as SEED):", "",
                "| setting | value |", "|---|---|"]
        out += [f"| `{k}` | `{json.dumps(v)}` |" for k, v in sorted(nd.items())]
    else:
        out.append("All settings are the script's defaults (besides per-run ones such as SEED).")
    if sub["code_packed"]:
        out += ["", "`train_gpt.py` is packed (lzma + base85) and runs like the original; "
                "to read it: `python3 -c \"import lzma,base64;t=open('train_gpt.py').read();"
                "print(lzma.decompress(base64.b85decode(t.split(chr(34))[1])).decode())\"`"]
    out += ["", "## Techniques", "", notes.strip() or args.blurb, "",
            "## Checks", "", "Written by `records/make_submission.py`:", "", "```"]
    out += [c.line() for c in checks] + ["```", "", "## Files", "",
            f"- `train_gpt.py`: the code that produced the logs (sha256 "
            f"`{sub['code_sha256']}`{', packed' if sub['code_packed'] else ''})",
            "- `submission.json`: summary, per-seed results, check verdicts"]
    out += [f"- `train_seed{r.seed}.log`: the log of seed {r.seed} ({r.path.name})" for r in runs]
    out += ["- `train_curves.png`: train loss and val_bpb against step", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="make_submission.py",
        description="Check finished train_gpt.py runs and write "
                    "records/track_<track>/<date>_<name>/ for submission.")
    p.add_argument("logs", nargs="+", type=Path, help="train_gpt.py logs, one per seed")
    p.add_argument("--author", required=True, help="author's name")
    p.add_argument("--github-id", required=True, help="author's GitHub id")
    p.add_argument("--name", required=True, help="short name (also the folder name)")
    p.add_argument("--blurb", required=True, help="one or two sentences on what it does")
    p.add_argument("--track", required=True, choices=TRACKS)
    p.add_argument("--compare-loss", type=float, metavar="NATS",
                   help="val_loss of the record to beat: runs the significance t-test")
    p.add_argument("--compare-bpb", type=float, metavar="BPB",
                   help="val_bpb of the record to beat: reports the difference")
    p.add_argument("--code", type=Path, default=ROOT / "train_gpt.py",
                   help="the train_gpt.py the logs were made with (default: %(default)s)")
    p.add_argument("--notes", type=Path, metavar="FILE",
                   help="markdown for the README's Techniques section (default: the blurb)")
    p.add_argument("--records-dir", type=Path, default=ROOT / "records",
                   help="where track_<track>/ folders live (default: %(default)s)")
    p.add_argument("--date", default=dt.date.today().isoformat(),
                   help="YYYY-MM-DD for the folder and submission.json (default: today)")
    p.add_argument("--pack-code", action="store_true",
                   help="ship train_gpt.py as an lzma+base85 self-extracting script")
    p.add_argument("--allow-over-cap", action="store_true",
                   help="non_record_16mb only: package runs over 16,000,000 bytes (flagged)")
    p.add_argument("--check-only", action="store_true",
                   help="print the verdicts and write nothing")
    args = p.parse_args(argv)
    try:
        dt.date.fromisoformat(args.date)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", args.date)
    except (ValueError, AssertionError):
        p.error(f"--date {args.date!r} is not YYYY-MM-DD")
    args.slug = re.sub(r"[^A-Za-z0-9._-]+", "_", args.name).strip("._-")
    if not args.slug:
        p.error(f"--name {args.name!r} has no usable characters for a folder name")
    return args


def refuse(reasons) -> int:
    for reason in reasons:
        print(f"REFUSED: {reason}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    args = parse_args(argv)
    runs, errors = [], []
    for path in args.logs:
        try:
            runs.append(parse_log(path))
        except Refusal as e:
            errors.append(str(e))
    if errors:
        return refuse(errors)
    for r in runs:
        s = r.summary
        print(f"run {s['run_id']} seed {s['seed']}: {s['steps']} steps, {s['train_time_s']:.1f} s "
              f"train, val_loss {s['val_loss']:.8f} val_bpb {s['val_bpb']:.8f}, "
              f"{s['bytes_total']:,} bytes, {s['hardware']}")

    code = args.code.read_bytes() if args.code.is_file() else None
    shipped, pack_check = code, None
    if args.pack_code and code is not None:
        packed = pack_source(code)
        if len(packed) >= len(code):
            pack_check = Check("pack_code", "INFO", f"packing would not save bytes "
                               f"({len(code):,} -> {len(packed):,}); shipping the original",
                               blocking=False)
        else:
            env = launch_env(runs[0].summary["launch"])
            env.pop("RESUME_FROM", None)  # a dry run must not look for a checkpoint
            ok, detail = check_packed(code, packed, env)
            pack_check = Check("pack_code", "PASS" if ok else "FAIL",
                               f"train_gpt.py {len(code):,} -> {len(packed):,} bytes (saves "
                               f"{len(code) - len(packed):,}); {detail}")
            shipped = packed if ok else code
    code_bytes = len(shipped) if shipped is not None else runs[0].summary["code_bytes"]
    checks = check_runs(runs, args.track, code, args.code, code_bytes, args.allow_over_cap)
    if pack_check:
        checks.append(pack_check)

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

    target = args.records_dir / f"track_{args.track}" / f"{args.date}_{args.slug}"
    reasons = [f"check {c.name} failed: {c.detail}" for c in checks
               if c.status == "FAIL" and c.blocking]
    if target.exists():
        reasons.append(f"{target} already exists (choose another --name or --date)")
    if reasons:
        return refuse(reasons)
    if args.check_only:
        print(f"check only: would write {target}")
        return 0

    notes = args.notes.read_text(encoding="utf-8") if args.notes else ""
    sub = build_submission(args, runs, checks, sig, code_bytes, shipped is not code)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (tmp / "train_gpt.py").write_bytes(shipped)
        for r in runs:
            shutil.copyfile(r.path, tmp / f"train_seed{r.seed}.log")
        plot_curves(runs, tmp / "train_curves.png")
        (tmp / "submission.json").write_text(json.dumps(sub, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(build_readme(args, runs, checks, sub, notes),
                                       encoding="utf-8")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {target}: " + ", ".join(sorted(p.name for p in target.iterdir())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
