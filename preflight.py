#!/usr/bin/env python3
"""Preflight: what the 8-GPU run will do, measured on one GPU (or a CPU, at toy scale) before paying for it.

    PREFLIGHT_SECONDS=360 TARGET_GPUS=8 torchrun --standalone --nproc_per_node=1 preflight.py
    RECIPE=frontier torchrun --standalone --nproc_per_node=1 preflight.py

Give it the run's own settings (every variable train_gpt.py reads); it builds the configured model at full size with
train_gpt.py's own functions and measures, phase by phase: compile time, step time before and after depth recurrence
(or QAT) switches on, GPTQ calibration per batch, the export (quantisation + compression) and its artifact bytes and
decompression, and each evaluation mode's time per validation token on a slice. It then projects every phase to the
target launch (TARGET_GPUS processes, the global batch and the validation set shared among them, compile and other
fixed costs not divided) and prints one table: phase, measured here, projected, limit, verdict (ok / tight / over),
with a fix for each "over". logs/<RUN_ID>_preflight.txt holds the log, logs/<RUN_ID>_preflight.json the table.
The weights it exports are trained for a few steps only: final weights compress differently (usually smaller).

Preflight's own settings: PREFLIGHT_SECONDS (time bound, default 360; phases that would not fit are skipped and
said so), TARGET_GPUS (default 8), PREFLIGHT_STEPS (timed steps per phase, default 10), PREFLIGHT_VAL_TOKENS (the
validation tokens of the target run, default: the split in DATA_PATH; 62021632 for the official sp1024 split),
PREFLIGHT_EVAL_SLICE (validation tokens each evaluation mode is timed on, default 262144), PREFLIGHT_NVLINK_GBS
(all-reduce bus bandwidth per GPU in GB/s used for the gradient exchange, default 200), PREFLIGHT_ARTIFACT (a path
to keep the exported artifact at; re-score it with EVAL_ONLY=1 ARTIFACT_PATH=...), PREFLIGHT_EVAL_MODES (all: time
sliding, doc and ttt; run: only the run's EVAL_MODE; plain evaluation always).
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import train_gpt as tg

LIMITS = dict(train=600.0, eval=600.0, bytes=float(tg.SIZE_CAP_BYTES), export=60.0)
PREFLIGHT_SETTINGS = dict(PREFLIGHT_SECONDS=(360.0, 1.0, 86400.0), TARGET_GPUS=(8, 1, 4096),
                          PREFLIGHT_STEPS=(10, 2, 10000), PREFLIGHT_VAL_TOKENS=(0, 0, 1e12),
                          PREFLIGHT_EVAL_SLICE=(262144, 256, 1e12), PREFLIGHT_NVLINK_GBS=(200.0, 0.001, 1e6))


def preflight_settings(environ=os.environ) -> dict:
    """Preflight's own settings from the environment, each range-checked (ConfigError naming the culprit)."""
    out = dict(PREFLIGHT_ARTIFACT=environ.get("PREFLIGHT_ARTIFACT", ""),
               PREFLIGHT_EVAL_MODES=environ.get("PREFLIGHT_EVAL_MODES", "all").strip())
    if out["PREFLIGHT_EVAL_MODES"] not in ("all", "run"):
        raise tg.ConfigError(f"PREFLIGHT_EVAL_MODES={out['PREFLIGHT_EVAL_MODES']!r} is not allowed: use one of all, run")
    if out["PREFLIGHT_ARTIFACT"] and (why := tg.unwritable(Path(out["PREFLIGHT_ARTIFACT"]))):
        raise tg.ConfigError(f"PREFLIGHT_ARTIFACT={out['PREFLIGHT_ARTIFACT']} cannot be written: {why}")
    for name, (default, lo, hi) in PREFLIGHT_SETTINGS.items():
        kind = "int" if isinstance(default, int) else "float"
        try:
            value = tg.parse_setting(kind, environ[name]) if name in environ else default
        except ValueError as e:
            raise tg.ConfigError(f"{name}={environ[name]!r} is {e}") from None
        if not lo <= value <= hi:
            raise tg.ConfigError(f"{name}={value} is out of range: use a value in [{lo:g}, {hi:g}]")
        out[name] = value
    return out


def verdict(value: float, limit: float, margin: float) -> str:
    """ok, tight (within `margin` of the limit) or over."""
    return "over" if value > limit else "tight" if value > limit - margin else "ok"


def project(m: dict, cfg: tg.Config, here: int, target: int, val_tokens: int, code_bytes: int,
            nvlink_gbs: float) -> list[dict]:
    """The table: each phase measured `here` (processes) projected to `target` processes. `m` holds the measurements
    (seconds unless named): step_s / step_loop_s (a whole step of the global batch, before and after depth recurrence
    or QAT switch on; the latter None without either), compile_s, calib_batch_s (one calibration batch over this
    launch), export_s, artifact_bytes, load_s (decompression), eval_compile_s, and per evaluation mode
    eval_s_per_token[mode] over this launch. The model (README "Preflight"): per-process work divides by target/here;
    a step adds the gradient all-reduce of the fp32 gradients at `nvlink_gbs` (ring: 2 (n-1)/n of the bytes); fixed
    costs (compile, export, decompression) stay; the training budget is MAX_WALLCLOCK_SECONDS less the calibration."""
    share, rows = here / target, []
    comm = 0.0 if target == 1 else 2 * (target - 1) / target * 4 * m["params"] / (nvlink_gbs * 1e9)
    step = m["step_s"] * share + comm
    loop_step = (m["step_loop_s"] * share + comm) if m.get("step_loop_s") else None
    calib = m["calib_batch_s"] * cfg.gptq_calibration_batches * share if cfg.quant_method == "gptq" else 0.0
    reserve = cfg.gptq_reserve_seconds or (1.25 * m["calib_batch_s"] * share * cfg.gptq_calibration_batches + 1.0
                                           if cfg.quant_method == "gptq" else 0.0)
    budget = max((cfg.max_wallclock_seconds or LIMITS["train"]) - reserve, 0.0)
    switch = cfg.enable_looping_at if cfg.num_loops else (1 - cfg.qat_frac if cfg.qat_frac else 1.0)
    steps = switch * budget / step + ((1 - switch) * budget / loop_step if loop_step else 0.0)
    steps = min(steps, cfg.iterations)
    rows.append(dict(phase="compile + warm-up (not timed by the rules)", measured=m["compile_s"],
                     projected=m["compile_s"], limit=None, unit="s"))
    rows.append(dict(phase="step, global batch", measured=m["step_s"], projected=step, limit=None, unit="s",
                     note=f"{cfg.train_batch_tokens / step / 1e6:.2f}M tokens/s"))
    if loop_step:
        rows.append(dict(phase="step after recurrence/QAT switch on", measured=m["step_loop_s"], projected=loop_step,
                         limit=None, unit="s", note=f"{cfg.train_batch_tokens / loop_step / 1e6:.2f}M tokens/s"))
    rows.append(dict(phase="training steps in the budget", measured=None, projected=steps, limit=None, unit="steps",
                     note=f"{steps * cfg.train_batch_tokens / 1e9:.2f}B tokens in {budget:.0f}s"
                     + (" (ITERATIONS stops first)" if steps == cfg.iterations else "")))
    if cfg.quant_method == "gptq":
        rows.append(dict(phase="GPTQ calibration (inside the training budget)", measured=m["calib_batch_s"],
                         projected=calib, limit=reserve, unit="s",
                         fix="set GPTQ_RESERVE_SECONDS=0 (measured at warm-up) or fewer GPTQ_CALIBRATION_BATCHES"))
        rows.append(dict(phase="training + calibration", measured=None, projected=budget + calib,
                         limit=cfg.max_wallclock_seconds or LIMITS["train"], unit="s", margin=0.0,
                         fix="raise GPTQ_RESERVE_SECONDS to the projected calibration"))
    rows.append(dict(phase="export (quantise + compress)", measured=m["export_s"], projected=m["export_s"],
                     limit=LIMITS["export"], unit="s", fix="COMPRESSOR=zstd, or QUANT_METHOD=rtn / LQER_TOP_K=0"))
    total = m["artifact_bytes"] + code_bytes
    rows.append(dict(phase=f"artifact + code ({cfg.code_bytes})", measured=total, projected=total,
                     limit=LIMITS["bytes"], unit="bytes", margin=50_000,
                     fix="FIT_TO_CAP=1, or fewer QUANT_BITS_* / more PRUNE_FRAC, or CODE_BYTES=packed"))
    per_token = m["eval_s_per_token"]
    plain = per_token["plain"] * val_tokens * share
    mode = per_token.get(cfg.eval_mode, per_token["plain"]) * val_tokens * share
    rows.append(dict(phase="eval: decompress + compile", measured=m["load_s"] + m["eval_compile_s"],
                     projected=m["load_s"] + m["eval_compile_s"], limit=None, unit="s"))
    for name, seconds in per_token.items():
        rows.append(dict(phase=f"eval: {name}", measured=seconds * 1e6, projected=seconds * val_tokens * share,
                         limit=None, unit="s", note="measured: us per token here"))
    eval_total = m["load_s"] + m["eval_compile_s"] + plain + (mode if cfg.eval_mode != "sliding" or
                                                                cfg.eval_stride != cfg.eval_seq_len else 0.0)
    rows.append(dict(phase=f"evaluation in all (plain + {cfg.eval_mode})", measured=None, projected=eval_total,
                     limit=cfg.eval_budget_seconds, unit="s",
                     fix="a larger EVAL_STRIDE or EVAL_BATCH_SEQS; for ttt fewer PHASED_TTT_PREFIX_DOCS or a larger "
                         "TTT_CHUNK_SIZE (EVAL_BUDGET_SECONDS stops adapting, never scoring)"))
    for r in rows:
        r["verdict"] = None if r["limit"] is None else verdict(r["projected"], r["limit"],
                                                              r.get("margin", 0.1 * r["limit"]))
        r.setdefault("note", "")
        if r["verdict"] != "over":
            r.pop("fix", None)
    return rows


def table(rows: list[dict], target: int) -> list[str]:
    def fmt(v, unit):
        return "-" if v is None else f"{v:,.0f}" if unit in ("bytes", "steps") else f"{v:,.3f}" if v < 10 else f"{v:,.1f}"
    lines = [f"{'phase':<46} {'measured here':>14} {f'projected x{target}':>14} {'limit':>12} {'verdict':>7}  note"]
    for r in rows:
        lines.append(f"{r['phase']:<46} {fmt(r['measured'], r['unit']):>14} {fmt(r['projected'], r['unit']):>14} "
                     f"{fmt(r['limit'], r['unit']):>12} {r['verdict'] or '':>7}  {r['note']} ({r['unit']})"
                     + (f"  fix: {r['fix']}" if r.get("fix") else ""))
    return lines


def val_slice(val: tg.ValData, tokens: int, seq_len: int) -> tg.ValData:
    """The first whole windows of the validation data, at most `tokens` targets."""
    n = max(seq_len, min(tokens, val.num_targets) // seq_len * seq_len)
    return tg.ValData(val.tokens[:n + 1], val.target_bytes[:n], n, False)


def measure(cfg: tg.Config, settings: dict, log) -> tuple[dict, tg.Runtime]:
    """Run each phase with the trainer's own functions; the measurements `project` takes."""
    t_start, budget = time.perf_counter(), settings["PREFLIGHT_SECONDS"]
    left = lambda: budget - (time.perf_counter() - t_start)  # noqa: E731
    n = settings["PREFLIGHT_STEPS"]
    switching = bool(cfg.num_loops or cfg.qat_frac)
    run_cfg = replace(cfg, iterations=2 * n if switching else n, max_wallclock_seconds=0.0, val_loss_every=0,
                      warmup_steps=min(cfg.warmup_steps, 6),  # enough to compile every graph (looping, QAT)
                      train_log_every=0, checkpoint_every="0", ema_decay=0.5 if cfg.ema_decay else 0.0,
                      enable_looping_at=0.5, qat_frac=0.5 if cfg.qat_frac else 0.0, resume_from="")
    rt, train_files, val, model, run_model, attention, notes, _, _ = tg.prepare_run(run_cfg)
    log(f"preflight: {tg.device_name(rt.device)} x{rt.world_size}, attention:{attention}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, {val.num_targets:,} validation tokens here")
    for line in notes:
        log(line)
    m = dict(params=sum(p.numel() for p in model.parameters()))
    part = val_slice(val, settings["PREFLIGHT_EVAL_SLICE"], cfg.eval_seq_len)  # (training ends with a plain eval)
    figures = tg.train(run_cfg, rt, log, model, run_model, train_files, part, None)
    clock = [0.0] + [ms for ms, _ in figures["clock"]]
    steps = [(b - a) / 1000 for a, b in zip(clock[:-1], clock[1:])]
    split = n if switching else len(steps)
    m["step_s"] = median(steps[1:split])  # the first step of each phase carries the switch
    m["step_loop_s"] = median(steps[split + 1:]) if switching else None
    m["compile_s"] = max(figures["warmup_s"] - figures["eval_compile_s"] - run_cfg.warmup_steps * m["step_s"], 0.0)
    m["eval_compile_s"] = figures["eval_compile_s"]
    log(f"preflight: step {m['step_s']:.3f}s" + (f", {m['step_loop_s']:.3f}s after the switch" if switching else "")
        + f"; warm-up {figures['warmup_s']:.1f}s (compile about {m['compile_s']:.1f}s)")
    hessians, m["calib_batch_s"], m["export_s"], m["artifact_bytes"], m["load_s"] = None, 0.0, math.inf, math.inf, 0.0
    m["eval_s_per_token"], m["code_bytes"], m["val_tokens_here"], m["world_size"] = {}, 0, val.num_targets, rt.world_size
    if left() <= 0:  # not measured: their rows say over
        log(f"preflight: calibration, export and evaluation not measured: PREFLIGHT_SECONDS={budget:g} spent")
        m["calib_batch_s"], m["eval_s_per_token"] = math.inf, dict(plain=math.inf, **{cfg.eval_mode: math.inf})
        return m, rt
    if cfg.quant_method == "gptq":
        k = min(2, cfg.gptq_calibration_batches)
        t0 = rt.clock()
        hessians = tg.collect_hessians(model, figures["loader"], replace(cfg, gptq_calibration_batches=k), rt)
        m["calib_batch_s"] = (rt.clock() - t0) / k
        log(f"preflight: GPTQ calibration {m['calib_batch_s']:.2f}s per batch ({k} measured)")
    code = Path(tg.__file__).read_bytes()
    m["code_bytes"] = code_bytes = tg.counted_code_bytes(cfg, (code, "", tg.packed_code_bytes(code)))
    model.looping = cfg.num_loops > 0
    t0 = rt.clock()
    blob = tg.export_artifact(cfg, rt, log, model, run_model, part, hessians, code_bytes,
                              {k: getattr(cfg, k) for k in tg.SCORE_FIELDS})
    m["export_s"], m["artifact_bytes"] = rt.clock() - t0, len(blob)
    with tempfile.TemporaryDirectory() as tmp:
        (path := Path(settings["PREFLIGHT_ARTIFACT"] or Path(tmp) / "a.ptz")).write_bytes(blob)
        t0 = time.perf_counter()
        tg.load_artifact_weights(model, str(path))
        m["load_s"] = time.perf_counter() - t0
    log(f"preflight: export {m['export_s']:.1f}s, {len(blob):,} bytes (+ code {code_bytes:,}), decompression and "
        f"load {m['load_s']:.2f}s")
    chosen = ("sliding", "doc", "ttt") if settings["PREFLIGHT_EVAL_MODES"] == "all" else (cfg.eval_mode,)
    warm = val_slice(part, part.num_targets // 8, cfg.eval_seq_len)
    modes = [("plain", "sliding", cfg.eval_seq_len)] + [(mo, mo, cfg.eval_stride) for mo in chosen]
    for name, mode, stride in modes:
        if left() <= 0:
            log(f"preflight: eval {name} not measured: PREFLIGHT_SECONDS={budget:g} spent")
            continue
        target_val = settings["PREFLIGHT_VAL_TOKENS"] or val.num_targets  # phased TTT's prefix, scaled to the slice
        c = replace(cfg, eval_mode=mode, eval_budget_seconds=1e9, phased_ttt_prefix_docs=max(1, round(
            cfg.phased_ttt_prefix_docs * part.num_targets / target_val)))
        for data in (warm, part):  # a first, untimed pass: one-time costs (allocator growth, kernel choice) out
            t0 = rt.clock()
            if mode == "sliding":
                tg.evaluate(run_model, data, c, rt, stride)
            else:
                tg.evaluate_documents(model, data, c, rt, mode == "ttt", lambda msg: None, time.perf_counter())
        m["eval_s_per_token"][name] = (rt.clock() - t0) / part.num_targets
        log(f"preflight: eval {name}: {m['eval_s_per_token'][name] * 1e6:.2f}us per token on {part.num_targets:,}")
    for name in ("plain", cfg.eval_mode):
        m["eval_s_per_token"].setdefault(name, math.inf)  # not measured: the verdict says over
    return m, rt


def median(values: list[float]) -> float:
    values = sorted(values) or [math.nan]
    return values[len(values) // 2]


def main(environ=os.environ) -> int:
    try:
        settings = preflight_settings(environ)
        cfg, warnings, _ = tg.resolve_config(environ)
        tg.validate_config(cfg, settings["TARGET_GPUS"])  # the target launch's batch must split too
        if cfg.eval_only or cfg.dry_run:
            raise tg.ConfigError("preflight measures a training run: unset EVAL_ONLY and DRY_RUN")
        cfg.run_id = cfg.run_id or time.strftime("%Y%m%d_%H%M%S_preflight")
        Path("logs").mkdir(exist_ok=True)
        path = Path("logs") / f"{cfg.run_id}_preflight.txt"
        if path.exists():
            raise tg.ConfigError(f"log {path} already exists: choose another RUN_ID")
        lines = []

        def log(msg="", console=True):
            if int(environ.get("RANK", "0")) == 0:
                lines.append(msg)
                print(msg, flush=True)
        for w in warnings:
            log(f"warning: {w}")
        m, rt = measure(cfg, settings, log)
        val_tokens = int(settings["PREFLIGHT_VAL_TOKENS"]) or m["val_tokens_here"]
        rows = project(m, cfg, rt.world_size, settings["TARGET_GPUS"], val_tokens, m["code_bytes"],
                       settings["PREFLIGHT_NVLINK_GBS"])
        log(f"preflight table: {rt.world_size} process(es) here -> {settings['TARGET_GPUS']} GPUs, "
            f"{val_tokens:,} validation tokens; the exported weights trained {2 * settings['PREFLIGHT_STEPS']} steps "
            "at most (final weights compress differently)")
        for line in table(rows, settings["TARGET_GPUS"]):
            log(line)
        overs = [r["phase"] for r in rows if r["verdict"] == "over"]
        log(f"preflight: {'OVER: ' + ', '.join(overs) if overs else 'every phase fits'}")
        if rt.is_main:
            path.write_text("\n".join(lines) + "\n")
            summary = dict(run_id=cfg.run_id, target_gpus=settings["TARGET_GPUS"], val_tokens=val_tokens,
                           measurements=m, table=rows, settings=settings, config=tg.asdict(cfg))
            path.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str))
        return 3 if overs else 0
    except tuple(tg.ERROR_KINDS) as e:
        print(f"preflight.py: {tg.ERROR_KINDS[type(e)][0]}: {e}", file=sys.stderr)
        return tg.ERROR_KINDS[type(e)][1]
    finally:
        if tg.dist.is_initialized():
            tg.dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
