#!/usr/bin/env python3
"""Parameter-golf trainer: a GQA transformer (recipes `classic` and `frontier`) trained with Muon + AdamW, exported as a
quantised, compressed artifact and scored in bits per byte on the FineWeb validation split. Launch: `torchrun
--standalone --nproc_per_node=8 train_gpt.py` (or `python3 train_gpt.py`). Every setting is an environment variable
(the upper-case name of a `Config` field). Runs on CUDA (NCCL) or CPU (gloo), 1 or N processes."""
from __future__ import annotations

import concurrent.futures
import copy
import ctypes
import difflib
import functools
import hashlib
import json
import math
import os
import platform
import re
import shlex
import signal
import struct
import sys
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import zstandard
from torch.nn.parallel import DistributedDataParallel as DDP


# ================================ configuration ================================
SIZE_CAP_BYTES = 16_000_000
BOS_ID, EOS_ID = 1, 2  # challenge data format: every document starts with BOS (id 1); tokenizer eos is 2


def S(default, allowed: str):
    """A setting with its default and its allowed values: an interval such as "[1, 64]" or "(0, 1)",
    choices such as "auto|0|1", or "path" / "name" (a plain file name) / "any"."""
    return field(default=default, metadata={"allowed": allowed})


@dataclass
class Config:
    """Every setting (env variable = field name in upper case), grouped: run and data, schedule and batch, evaluation,
    model, the frontier's switches (named as in public records), optimisation, export, runtime, checkpoints."""
    recipe: str = S("classic", "classic|frontier")  # the table of defaults (RECIPES) the other settings start from
    data_path: str = S("./data/datasets/fineweb10B_sp1024", "path")
    tokenizer_path: str = S("./data/tokenizers/fineweb_1024_bpe.model", "path")
    run_id: str = S("", "name")  # "" -> generated
    seed: int = S(1337, "[0, 4294967295]")
    val_max_tokens: int = S(0, "[0, inf)")  # 0 = whole validation split (the only official score)
    bpb_audit: bool = S(True, "0|1")
    caseops_enabled: bool = S(False, "0|1")  # CaseOps data: bits per byte from the original text's byte sidecar
    dry_run: bool = S(False, "0|1")
    eval_only: bool = S(False, "0|1")
    artifact_path: str = S("", "path")  # "" -> logs/<RUN_ID>.ptz
    iterations: int = S(20000, "[0, inf)")
    warmup_steps: int = S(20, "[0, 100000]")
    warmdown_iters: int = S(2000, "[0, inf)")
    max_wallclock_seconds: float = S(600.0, "[0, inf)")
    train_batch_tokens: int = S(524_288, "[1, inf)")
    train_seq_len: int = S(1024, "[1, 1048576]")
    micro_batches: int = S(8, "[1, 65536]")
    val_loss_every: int = S(1000, "[0, inf)")
    train_log_every: int = S(200, "[0, inf)")
    eval_seq_len: int = S(0, "[0, 1048576]")  # 0 -> TRAIN_SEQ_LEN
    eval_stride: int = S(64, "[1, 1048576]")
    eval_batch_seqs: int = S(64, "[1, 1048576]")
    eval_mode: str = S("sliding", "sliding|doc|ttt")  # the score: sliding windows, per document, or with TTT
    eval_budget_seconds: float = S(600.0, "(0, inf)")
    ttt_chunk_size: int = S(48, "[1, 1048576]")
    ttt_batch_size: int = S(64, "[1, 1048576]")
    ttt_lora_rank: int = S(80, "[1, 4096]")
    ttt_lora_alpha: float = S(144.0, "(0, 1e6]")
    ttt_lora_lr: float = S(1e-4, "[0, 10]")
    ttt_beta1: float = S(0.0, "[0, 1)")
    ttt_beta2: float = S(0.99, "[0, 1)")
    ttt_weight_decay: float = S(0.5, "[0, 100]")
    ttt_q_lora: bool = S(True, "0|1")
    ttt_k_lora: bool = S(True, "0|1")
    ttt_v_lora: bool = S(True, "0|1")
    ttt_o_lora: bool = S(True, "0|1")
    ttt_mlp_lora: bool = S(True, "0|1")
    ttt_head_lora: bool = S(True, "0|1")
    phased_ttt_num_phases: int = S(0, "[0, 1000]")  # 0 = no global SGD
    phased_ttt_prefix_docs: int = S(2500, "[0, inf)")
    global_ttt_lr: float = S(0.001, "[0, 10]")
    global_ttt_momentum: float = S(0.9, "[0, 1)")
    global_ttt_chunk_tokens: int = S(32768, "[1, inf)")
    global_ttt_grad_clip: float = S(1.0, "(0, inf)")
    vocab_size: int = S(1024, "[2, 65536]")
    num_layers: int = S(12, "[1, 1024]")
    model_dim: int = S(512, "[2, 1048576]")
    num_heads: int = S(8, "[1, 4096]")
    num_kv_heads: int = S(4, "[1, 4096]")
    mlp_mult: float = S(3.0, "(0, 1024]")
    rope_base: float = S(10000.0, "(1, inf)")
    logit_softcap: float = S(30.0, "[0, 1e6]")
    qk_gain_init: float = S(1.5, "(0, 1e3]")
    tied_embed_init_std: float = S(0.005, "(0, 10]")
    bigram_vocab_size: int = S(2048, "[0, 16777216]")
    bigram_dim: int = S(96, "[1, 1048576]")
    smear_gate: bool = S(True, "0|1")
    unet_skips: bool = S(True, "0|1")
    doc_mask: bool = S(False, "0|1")  # training attention never crosses a BOS (document-masked, as the record)
    xsa_last_n: int = S(0, "[0, 1024]")
    rope_dims: int = S(0, "[0, 1048576]")  # 0 = every head dim rotates
    ln_scale: bool = S(False, "0|1")
    mlp_act: str = S("relu2", "relu2|leaky_relu2")
    mlp_leaky_slope: float = S(0.5, "[0, 1)")
    smear_gate_enabled: bool = S(False, "0|1")  # the narrow, BOS-masked smear gate
    gate_window: int = S(12, "[1, 1048576]")
    sparse_attn_gate_enabled: bool = S(False, "0|1")
    sparse_attn_gate_scale: float = S(1.0, "(0, 1e3]")
    skip_gates_enabled: bool = S(False, "0|1")
    parallel_start_layer: int = S(0, "[0, 1024]")  # 0 = off
    parallel_final_lane: str = S("mean", "mean|attn|mlp")
    num_loops: int = S(0, "[0, 64]")
    loop_start: int = S(0, "[0, 1024]")
    loop_end: int = S(0, "[0, 1024]")
    enable_looping_at: float = S(0.0, "[0, 1]")
    matrix_lr: float = S(0.025, "[0, 10]")
    scalar_lr: float = S(0.025, "[0, 10]")
    tied_embed_lr: float = S(0.035, "[0, 10]")
    muon_momentum: float = S(0.98, "[0, 1)")
    muon_momentum_warmup_start: float = S(0.92, "[0, 1)")
    muon_momentum_warmup_steps: int = S(1500, "[0, inf)")
    muon_backend_steps: int = S(5, "[1, 100]")
    muon_ns: str = S("standard", "standard|polar")  # Newton-Schulz coefficients: one quintic, or Polar Express
    muon_row_normalize: bool = S(False, "0|1")  # MuonEq-R
    muon_wd: float = S(0.04, "[0, 100]")
    adam_wd: float = S(0.0, "[0, 100]")
    embed_wd: float = S(0.0, "[0, 100]")
    beta1: float = S(0.9, "[0, 1)")
    beta2: float = S(0.95, "[0, 1)")
    adam_eps: float = S(1e-8, "(0, 1]")
    grad_clip_norm: float = S(0.3, "[0, inf)")
    swa_every: int = S(50, "[0, inf)")
    swa_start_frac: float = S(0.4, "(0, 1]")
    ema_decay: float = S(0.0, "[0, 1)")  # 0 = off
    warmdown_frac: float = S(0.0, "[0, 1]")  # > 0: warm-down over this fraction of the budget (not WARMDOWN_ITERS)
    min_lr: float = S(0.0, "[0, 1]")  # LR floor, as a fraction of the base LR
    qat_frac: float = S(0.0, "[0, 1]")
    quant_bits_mlp: int = S(5, "[2, 8]")
    quant_bits_attn: int = S(6, "[2, 8]")
    quant_bits_bigram: int = S(6, "[2, 8]")
    quant_bits_embed: int = S(16, "2|3|4|5|6|7|8|16")  # 16 = fp16
    quant_bits_gate: int = S(8, "2|3|4|5|6|7|8|16")
    quant_method: str = S("rtn", "rtn|gptq")
    quant_clip: str = S("absmax", "absmax|sdclip|search")
    matrix_clip_sigmas: float = S(12.85, "(0, 1e3]")
    mlp_clip_sigmas: float = S(11.5, "(0, 1e3]")
    attn_clip_sigmas: float = S(13.0, "(0, 1e3]")
    embed_clip_sigmas: float = S(14.0, "(0, 1e3]")
    gptq_calibration_batches: int = S(16, "[1, 100000]")
    gptq_reserve_seconds: float = S(0.0, "[0, inf)")
    lqer_top_k: int = S(0, "[0, 100000]")  # 0 = off
    lqer_rank: int = S(4, "[1, 4096]")
    lqer_factor_bits: int = S(4, "[2, 8]")
    lqer_asym_group: int = S(64, "[1, 1048576]")
    prune_frac: float = S(0.0, "[0, 1)")
    compressor: str = S("zstd", "zstd|brotli|lzma|ans")
    zstd_level: int = S(22, "[1, 22]")
    fit_to_cap: bool = S(False, "0|1")
    cap_margin_bytes: int = S(0, "[0, 15000000]")  # FIT_TO_CAP's target: the cap less this
    code_bytes: str = S("raw", "raw|packed")  # packed: ship the code with records/make_submission.py --pack-code
    compile: str = S("auto", "auto|0|1")  # auto = on for CUDA
    attn_backend: str = S("auto", "auto|fa3|fa2|sdpa|matmul|flex")
    fused_kernels: str = S("auto", "auto|0|1")  # auto = on for CPU in bf16
    cpu_dtype: str = S("bf16", "bf16|fp32")
    checkpoint_every: str = S("0", "N|Ns")  # 0 = off, N = every N steps, Ns = every N seconds
    checkpoint_path: str = S("", "path")  # "" -> checkpoints/<RUN_ID>.pt
    resume_from: str = S("", "path")


# Fields that define the network: stored in the artifact so it can be rebuilt without env.
MODEL_FIELDS = ("vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult", "rope_base",
                "logit_softcap", "bigram_vocab_size", "bigram_dim", "smear_gate", "unet_skips", "train_seq_len",
                "xsa_last_n", "rope_dims", "ln_scale", "mlp_act", "mlp_leaky_slope", "smear_gate_enabled",
                "gate_window", "sparse_attn_gate_enabled", "sparse_attn_gate_scale", "skip_gates_enabled",
                "parallel_start_layer", "parallel_final_lane", "num_loops", "loop_start", "loop_end", "doc_mask",
                "caseops_enabled")
# Fields that change the score of given weights: stored in the artifact, the defaults of EVAL_ONLY.
SCORE_FIELDS = ("eval_seq_len", "eval_stride", "eval_batch_seqs", "val_max_tokens", "cpu_dtype", "compile",
                "attn_backend", "fused_kernels", "eval_mode", "eval_budget_seconds", "ttt_chunk_size", "ttt_batch_size",
                "ttt_lora_rank", "ttt_lora_alpha", "ttt_lora_lr", "ttt_beta1", "ttt_beta2", "ttt_weight_decay",
                "ttt_q_lora", "ttt_k_lora", "ttt_v_lora", "ttt_o_lora", "ttt_mlp_lora", "ttt_head_lora",
                "phased_ttt_num_phases", "phased_ttt_prefix_docs", "global_ttt_lr", "global_ttt_momentum",
                "global_ttt_chunk_tokens", "global_ttt_grad_clip", "seed")
# Recipes: tables of defaults applied before the environment: `classic`, the design card's (the published 12-layer
# int5-MLP one: the field defaults); `frontier`, the 1.0611 bpb record's (FRONTIER.md) as it ran, where implemented.
RECIPES = {"classic": {}, "frontier": dict(
        data_path="./data/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved", caseops_enabled=True,
        tokenizer_path="./data/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model", vocab_size=8192,
        doc_mask=True, num_layers=11, mlp_mult=4.0, train_seq_len=2048, train_batch_tokens=786_432, val_loss_every=0,
        qk_gain_init=5.0, bigram_vocab_size=0, smear_gate=False, xsa_last_n=11, rope_dims=16, ln_scale=True,
        mlp_act="leaky_relu2", smear_gate_enabled=True, sparse_attn_gate_enabled=True, sparse_attn_gate_scale=0.5,
        skip_gates_enabled=True, parallel_start_layer=8, num_loops=2, loop_start=3, loop_end=5, enable_looping_at=0.35,
        matrix_lr=0.026, scalar_lr=0.02, tied_embed_lr=0.03, muon_momentum=0.97, muon_ns="polar",
        muon_row_normalize=True, muon_wd=0.095, adam_wd=0.02, embed_wd=0.085, beta2=0.99, swa_every=0,
        ema_decay=0.9965, warmdown_frac=0.85, min_lr=0.1, quant_bits_mlp=6, quant_bits_embed=7, quant_method="gptq",
        quant_clip="sdclip", lqer_top_k=3, fit_to_cap=True, cap_margin_bytes=50_000, compressor="ans",
        code_bytes="packed", eval_mode="ttt", phased_ttt_num_phases=3)}
# Names other public scripts use, with what this one reads instead (warned about, never silently ignored).
FOREIGN_NAMES = {"WEIGHT_DECAY": "use MUON_WD, ADAM_WD and EMBED_WD", "SWA_ENABLED": "use SWA_EVERY (0 = off)",
                 "TIE_EMBEDDINGS": "the embedding is always tied", "EMBED_LR": "use TIED_EMBED_LR",
                 "HEAD_LR": "use TIED_EMBED_LR (the head is the tied embedding)", "EMBED_BITS": "use QUANT_BITS_EMBED",
                 "MATRIX_BITS": "use QUANT_BITS_MLP and QUANT_BITS_ATTN", "TTT_ENABLED": "use EVAL_MODE=ttt",
                 "LQER_ENABLED": "use LQER_TOP_K (0 = off)", "VAL_BATCH_SIZE": "use EVAL_BATCH_SEQS",
                 "MUON_WEIGHT_DECAY": "use MUON_WD", "QAT_ENABLED": "use QAT_FRAC", "NUM_ITERATIONS": "use ITERATIONS"}
ENV_NAMES, DEFAULTS = {f.name.upper(): f for f in fields(Config)}, Config()
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class ConfigError(Exception):
    """A setting is wrong; the message says which and how to fix it."""


def parse_setting(kind: str, raw: str):
    """A setting's value from its text; ValueError (with the reason) when it is not of its kind."""
    raw = raw.strip()
    if kind == "bool":
        if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError("not a boolean: use 1 or 0")
        return raw.lower() in ("1", "true", "yes", "on")
    if kind == "str":
        return raw
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"not a number: give a {'whole number' if kind == 'int' else 'number'}") from None
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    if kind == "int" and value != int(value):
        raise ValueError("not a whole number")
    return int(value) if kind == "int" else value


def allowed_problem(name: str, value, allowed: str) -> str | None:
    """Why `value` is outside `allowed` (the Config field's metadata), or None."""
    if allowed[0] in "[(":
        lo_side, lo, hi, hi_side = re.fullmatch(r"([\[(])(.+), (.+)([\])])", allowed).groups()
        lo, hi = float(lo), float(hi)
        ok = (lo < value if lo_side == "(" else lo <= value) and (value < hi if hi_side == ")" else value <= hi)
        return None if ok else f"{name}={value} is out of range: use a value in {allowed}"
    if "|" in allowed and allowed != "N|Ns" and not isinstance(value, bool) and str(value) not in allowed.split("|"):
        return f"{name}={value!r} is not allowed: use one of {', '.join(allowed.split('|'))}"
    if allowed == "name" and value and not RUN_ID_PATTERN.fullmatch(value):
        return (f"{name}={value!r} is not a plain name: use letters, digits, '.', '_' or '-' "
                "(at most 100, no '/' or leading '.'), e.g. RUN_ID=l12_seed42")
    return None


def field_problems(obj, schema: dict, where: str) -> list[str]:
    """Why `obj`, a mapping read from a file we write, does not fit `schema` {field: (kinds, check or None)}: a field
    missing, of another kind (a bool is no int, a float must be finite), or failing its check (a bool predicate)."""
    if not isinstance(obj, dict):
        return [f"{where} is {type(obj).__name__}, not a mapping"]
    out = []
    for name, (kinds, check) in schema.items():
        kinds, v = kinds if isinstance(kinds, tuple) else (kinds,), obj.get(name, ...)
        if v is ...:
            out.append(f"{where}: field {name!r} is missing")
        elif not isinstance(v, kinds) or isinstance(v, bool) and bool not in kinds or (
                isinstance(v, float) and not math.isfinite(v)):
            out.append(f"{where}: field {name!r} is {type(v).__name__} {str(v)[:40]!r}, expected "
                       + " or ".join(k.__name__ for k in kinds))
        elif check is not None and not check(v):
            out.append(f"{where}: field {name!r} = {str(v)[:40]!r} is out of range or inconsistent")
    return out


def recipe_defaults(recipe: str) -> Config:
    return replace(DEFAULTS, **RECIPES[recipe], recipe=recipe)


def config_from_env(environ=os.environ) -> tuple[Config, list[str]]:
    """Parse every setting from the environment over the defaults of RECIPE. Returns the config and warnings."""
    if (recipe := environ.get("RECIPE", "classic").strip()) not in RECIPES:
        raise ConfigError(f"RECIPE={recipe!r} is not allowed: use one of {', '.join(RECIPES)}")
    values, problems = {}, []
    for name, f in ENV_NAMES.items():
        if name in environ:
            try:
                values[f.name] = parse_setting(f.type, environ[name])
            except ValueError as e:
                problems.append(f"{name}={environ[name]!r} is {e} (allowed: {f.metadata['allowed']})")
    if problems:
        raise ConfigError("\n".join(problems))
    warnings = [f"{name} is a setting of other scripts, not read here: {ours}" for name, ours in FOREIGN_NAMES.items()
                if name in environ]
    for name in sorted(n for n in environ if n not in ENV_NAMES and n.isupper() and n not in FOREIGN_NAMES):
        if match := difflib.get_close_matches(name, ENV_NAMES, n=1, cutoff=0.8):
            warnings.append(f"{name} is not a setting and is ignored; did you mean {match[0]}?")
    return replace(recipe_defaults(recipe), **values), warnings


def validate_config(cfg: Config, world_size: int) -> None:
    """Check every value's allowed range, then shape consistency; raise one ConfigError listing every problem."""
    def need(ok, msg):
        if not ok:
            p.append(msg)
    p = [msg for f in fields(Config) if (msg := allowed_problem(f.name.upper(), getattr(cfg, f.name),
                                                                 f.metadata["allowed"]))]
    if p:  # shape rules below assume each value is in range
        raise ConfigError("\n".join(p))
    need(cfg.model_dim % cfg.num_heads == 0, f"MODEL_DIM={cfg.model_dim} is not divisible by NUM_HEADS={cfg.num_heads}")
    need(cfg.num_heads % cfg.num_kv_heads == 0,
         f"NUM_HEADS={cfg.num_heads} is not a multiple of NUM_KV_HEADS={cfg.num_kv_heads}")
    need((cfg.model_dim // cfg.num_heads) % 2 == 0,
         f"head dim MODEL_DIM/NUM_HEADS={cfg.model_dim / cfg.num_heads:g} must be even (RoPE rotates pairs)")
    need(int(cfg.mlp_mult * cfg.model_dim) >= 1, "MLP_MULT * MODEL_DIM must be >= 1")
    need(cfg.micro_batches % world_size == 0,
         f"MICRO_BATCHES={cfg.micro_batches} must be a multiple of the {world_size} processes")
    need(cfg.train_batch_tokens % (cfg.micro_batches * cfg.train_seq_len) == 0,
         f"TRAIN_BATCH_TOKENS={cfg.train_batch_tokens} does not split into whole sequences: it must be a "
         f"multiple of MICRO_BATCHES*TRAIN_SEQ_LEN={cfg.micro_batches * cfg.train_seq_len}")
    eval_len, head_dim = cfg.eval_seq_len or cfg.train_seq_len, cfg.model_dim // cfg.num_heads
    need(cfg.eval_mode != "ttt" or cfg.ttt_chunk_size <= eval_len,
         f"TTT_CHUNK_SIZE={cfg.ttt_chunk_size} is larger than the eval length {eval_len}: a chunk must fit a window")
    need(cfg.eval_stride <= eval_len, f"EVAL_STRIDE={cfg.eval_stride} is larger than the eval length {eval_len} "
                                      "(EVAL_SEQ_LEN, or TRAIN_SEQ_LEN when it is 0): use EVAL_STRIDE <= "
                                      f"{eval_len}, or {eval_len} for plain evaluation")
    need(cfg.bigram_vocab_size != 1, "BIGRAM_VOCAB_SIZE=1: use 0 (off) or >= 2")
    need(cfg.rope_dims == 0 or (cfg.rope_dims % 2 == 0 and 4 <= cfg.rope_dims <= head_dim),
         f"ROPE_DIMS={cfg.rope_dims}: use 0 (every head dim) or an even number in [4, {head_dim}] (the head dim)")
    need(cfg.xsa_last_n <= cfg.num_layers, f"XSA_LAST_N={cfg.xsa_last_n} is more than NUM_LAYERS={cfg.num_layers}")
    need(cfg.gate_window <= cfg.model_dim, f"GATE_WINDOW={cfg.gate_window} is wider than MODEL_DIM={cfg.model_dim}")
    need(not cfg.num_loops or cfg.loop_start <= cfg.loop_end < cfg.num_layers,
         f"LOOP_START={cfg.loop_start} .. LOOP_END={cfg.loop_end} must satisfy LOOP_START <= LOOP_END < "
         f"NUM_LAYERS={cfg.num_layers} when NUM_LOOPS={cfg.num_loops}")
    if cfg.parallel_start_layer and (not cfg.num_loops or cfg.loop_start <= cfg.loop_end < cfg.num_layers):
        encoder = layer_order(cfg, looping=True)[0]
        need(cfg.parallel_start_layer < cfg.num_layers and all(i < cfg.parallel_start_layer for i in encoder),
             f"PARALLEL_START_LAYER={cfg.parallel_start_layer} must be below NUM_LAYERS={cfg.num_layers} and past "
             f"every U-Net encoder block ({sorted(set(encoder))}): parallel lanes run in the decoder only")
    try:
        codec(cfg.compressor)
    except ImportError as e:  # its optional package is missing
        p.append(f"COMPRESSOR={cfg.compressor} needs the {e.name} package: pip install {e.name} "
                 "(or use COMPRESSOR=zstd)")
    need(cfg.gptq_reserve_seconds < cfg.max_wallclock_seconds or not cfg.max_wallclock_seconds,
         f"GPTQ_RESERVE_SECONDS={cfg.gptq_reserve_seconds} leaves no training time under MAX_WALLCLOCK_SECONDS="
         f"{cfg.max_wallclock_seconds}")
    need(not (cfg.ema_decay and cfg.swa_every), f"EMA_DECAY={cfg.ema_decay} and SWA_EVERY={cfg.swa_every} are both on: "
                                                "average one way (EMA_DECAY=0 or SWA_EVERY=0)")
    need(checkpoint_interval(cfg) is not None,
         f"CHECKPOINT_EVERY={cfg.checkpoint_every!r}: use 0 (off), a whole step count like 500, or seconds like 900s")
    need(not (cfg.eval_only and not cfg.artifact_path), "EVAL_ONLY=1 needs ARTIFACT_PATH=<file.ptz>")
    need(not (cfg.eval_only and cfg.resume_from), "EVAL_ONLY and RESUME_FROM cannot be combined")
    if p:
        raise ConfigError("\n".join(p))


def checkpoint_interval(cfg: Config):
    """(count, unit): 'steps' (a whole count) or 'seconds' (finite, > 0); (0, 'steps') = off; None = malformed."""
    raw = cfg.checkpoint_every.strip().lower()
    unit = "seconds" if raw.endswith("s") else "steps"
    try:
        count = float(raw.removesuffix("s"))
    except ValueError:
        return None
    ok = math.isfinite(count) and count >= 0 and (count == int(count) if unit == "steps" else count > 0)
    return (count, unit) if ok else None


def non_default_settings(cfg: Config) -> dict:
    """Settings that differ from the defaults of the config's recipe."""
    base = recipe_defaults(cfg.recipe)
    return {k.upper(): v for k, v in asdict(cfg).items() if v != getattr(base, k)}


# ============================ distributed setup & log ============================
@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    host_group: object  # gloo group for host-side agreement between ranks (None = default)
    autocast_dtype: object  # torch.dtype or None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def clock(self) -> float:
        """time.perf_counter() once the work queued on the device is done."""
        self.sync()
        return time.perf_counter()

    def max_over_ranks(self, values: list[float]) -> list[float]:
        """Element-wise max over ranks of a few host floats (no device sync)."""
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.host_group)
        return t.tolist()

    def agree(self, error: str | None) -> None:
        """Fail on every rank if any rank failed, so none is left waiting in a collective."""
        if self.max_over_ranks([float(error is not None)])[0] or error:  # the collective runs on every rank, always
            raise ConfigError(error or "another process failed; see its message")

    def peak_flops(self) -> float:
        """Per-device peak: 989 TFLOP/s bf16 dense for H100/H200, else a measured matmul rate."""
        if self.device.type == "cuda" and any(k in device_name(self.device) for k in ("H100", "H200")):
            return 989e12
        n, dtype = 1024, self.autocast_dtype or torch.float32
        a = torch.randn(n, n, device=self.device, dtype=dtype)
        a @ a
        t0 = self.clock()
        for _ in range(4):
            a @ a
        return 4 * 2 * n ** 3 / (self.clock() - t0)


def init_runtime(cfg: Config) -> Runtime:
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        autocast_dtype = torch.bfloat16
    else:
        device = torch.device("cpu")
        if sys.platform == "linux":  # glibc returns big freed buffers to the OS, so every step's activations would be
            libc = ctypes.CDLL(None)  # fresh page-faulting memory: keep them (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)
            libc.mallopt(-3, 32 << 20), libc.mallopt(-1, 1 << 30)
        autocast_dtype = torch.bfloat16 if cfg.cpu_dtype == "bf16" else None
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    host_group = dist.new_group(backend="gloo") if world_size > 1 and device.type == "cuda" else None
    return Runtime(rank, world_size, device, host_group, autocast_dtype)


def merge_over_ranks(rt: Runtime | None, part: dict) -> dict:
    """The union of every rank's `part` (a dict of host objects), on every rank."""
    if rt is None or rt.world_size == 1:
        return part
    shares = [None] * rt.world_size
    dist.all_gather_object(shares, part, group=rt.host_group)
    return {k: v for share in shares for k, v in share.items()}


class RunLog:
    """Rank 0 writes every line to the log file and, unless `console=False`, to the console; other ranks stay quiet."""

    def __init__(self, path: Path | None, append: bool = False):
        self.path, self.file = path, open(path, "a" if append else "x", encoding="utf-8") if path else None

    def __call__(self, msg: str = "", console: bool = True) -> None:
        if self.file:
            if console:
                print(msg, flush=True)
            self.file.write(msg + "\n")
            self.file.flush()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "CPU"


# ==================================== data ====================================
SHARD_MAGIC, SHARD_VERSION, SHARD_HEADER_BYTES = 20240520, 1, 1024
FETCH_HINT = ("download it with `python3 data/cached_challenge_fineweb.py --variant sp1024 --train-shards 10`, "
              "or build the offline sample with `python3 data/build_dataset.py`")
CASE_OPS = "\ue001\ue002\ue003\ue004"  # CaseOps' operators: TITLE, ALLCAPS, CAPNEXT, ESC (CASEOPS_ENABLED)
CASE_OPS_RE = re.compile("\ue004(.)|\ue002([a-z]+)|[\ue001\ue003]([a-z])|[\ue001-\ue004]", re.S)


class DataError(Exception):
    """Missing or malformed data; the message names the file and the problem."""


def check_ids(tokens: np.ndarray, vocab_size: int, path: Path) -> None:
    if len(tokens) and int(tokens.max()) >= vocab_size:
        raise DataError(f"{path}: token id {int(tokens.max())} >= VOCAB_SIZE={vocab_size}: "
                        "the shard was made with a larger vocabulary than the model's")


def open_shard(path: Path, vocab_size: int | None = None) -> np.ndarray:
    """Memory-map a shard's uint16 tokens after checking its header (and ids < vocab_size)."""
    if path.is_dir():
        raise DataError(f"{path}: a folder where a shard file is expected; remove or rename it")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read shard ({e.strerror})") from None
    if size < SHARD_HEADER_BYTES:
        raise DataError(f"{path}: {size} bytes, shorter than the {SHARD_HEADER_BYTES}-byte header "
                        "(truncated or not a shard)")
    if (header := np.fromfile(path, dtype="<i4", count=3))[0] != SHARD_MAGIC:
        raise DataError(f"{path}: magic {header[0]} is not {SHARD_MAGIC}: not a challenge shard")
    if header[1] != SHARD_VERSION:
        raise DataError(f"{path}: shard version {header[1]} is not supported (expected {SHARD_VERSION})")
    if (count := int(header[2])) <= 0:
        raise DataError(f"{path}: the header declares {count} tokens: an empty shard; rebuild or re-download it")
    if size != SHARD_HEADER_BYTES + 2 * count:
        raise DataError(f"{path}: header declares {count} tokens ({SHARD_HEADER_BYTES + 2 * count} bytes) but the "
                        f"file has {size} bytes: truncated or corrupted, re-download or rebuild it")
    tokens = np.memmap(path, dtype="<u2", mode="r", offset=SHARD_HEADER_BYTES, shape=(count,))
    if vocab_size is not None:
        check_ids(tokens, vocab_size, path)
    return tokens


def find_shards(data_path: str, split: str) -> list[Path]:
    if Path(data_path).is_file():
        raise DataError(f"DATA_PATH={data_path} is a file: point it at the folder that holds the shards")
    if not (files := sorted(Path(data_path).glob(f"fineweb_{split}_[0-9]*.bin"))):
        raise DataError(f"no fineweb_{split}_*.bin shards in DATA_PATH={data_path}: {FETCH_HINT}")
    return files


class TokenStream:
    """Training tokens in shard order, wrapping around, at (file index, offset); ids checked per span taken."""

    def __init__(self, files: list[Path], vocab_size: int):
        self.files, self.vocab_size = files, vocab_size
        self.load_state({"file_idx": 0, "pos": 0})

    def load_state(self, state: dict) -> None:
        self.file_idx, self.pos = int(state["file_idx"]), int(state["pos"])
        self.tokens = open_shard(self.files[self.file_idx])

    def state(self) -> dict:
        return {"file_idx": self.file_idx, "pos": self.pos}

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            if self.pos == len(self.tokens):
                self.load_state({"file_idx": (self.file_idx + 1) % len(self.files), "pos": 0})
            k = min(n, len(self.tokens) - self.pos)
            parts.append(self.tokens[self.pos:self.pos + k])
            check_ids(parts[-1], self.vocab_size, self.files[self.file_idx])
            self.pos, n = self.pos + k, n - k
        return np.concatenate(parts)


class TrainLoader:
    """Each micro-step, every rank's own contiguous span of one shared chunk: a step's tokens fit any world size."""

    def __init__(self, files: list[Path], cfg: Config, rt: Runtime):
        self.stream = TokenStream(files, cfg.vocab_size)
        self.rt, self.seq_len, self.span = rt, cfg.train_seq_len, cfg.train_batch_tokens // cfg.micro_batches + 1

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.stream.take(self.span * self.rt.world_size)
        local = torch.from_numpy(chunk[self.rt.rank * self.span:(self.rt.rank + 1) * self.span].astype(np.int64))
        local = local.pin_memory().to(self.rt.device, non_blocking=True) if self.rt.device.type == "cuda" else local
        return local[:-1].view(-1, self.seq_len), local[1:].view(-1, self.seq_len)


def load_tokenizer(cfg: Config) -> spm.SentencePieceProcessor:
    """TOKENIZER_PATH's model, refused unless VOCAB_SIZE pieces, BOS 1 / EOS 2 and byte fallback (so bpb is defined)."""
    if (path := Path(cfg.tokenizer_path)).is_dir():
        raise DataError(f"TOKENIZER_PATH={path} is a folder: point it at the tokenizer's .model file")
    if not path.is_file():
        raise DataError(f"TOKENIZER_PATH={path} does not exist: {FETCH_HINT}")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise DataError(f"TOKENIZER_PATH={path} is not a SentencePiece model ({e})") from None
    if sp.vocab_size() != cfg.vocab_size:
        raise DataError(f"VOCAB_SIZE={cfg.vocab_size} but the tokenizer {path} has {sp.vocab_size()} pieces: "
                        "set VOCAB_SIZE to match, or point TOKENIZER_PATH at the tokenizer of this dataset")
    if (sp.bos_id(), sp.eos_id()) != (BOS_ID, EOS_ID):
        raise DataError(f"{path}: BOS/EOS ids are {sp.bos_id()}/{sp.eos_id()}, the challenge format needs "
                        f"{BOS_ID}/{EOS_ID}: use a tokenizer trained with bos_id=1 eos_id=2")
    if sum(sp.is_byte(i) for i in range(sp.vocab_size())) != 256:
        raise DataError(f"{path}: the tokenizer has no byte fallback (not all 256 <0xNN> pieces), so some text "
                        "has no bytes to score: use a tokenizer trained with byte_fallback=true")
    return sp


def check_tokenizer_record(cfg: Config) -> str | None:
    """The record of the shards' tokenizer (tokenizer.sha256 or manifest.json) that TOKENIZER_PATH matches, or None."""
    folder, sha256 = Path(cfg.data_path), (str, lambda v: re.fullmatch(r"[0-9a-f]{64}", v))
    if (record := folder / "tokenizer.sha256").is_file():
        if not (m := re.fullmatch(r"([0-9a-f]{64})  ([^/\n]+)\n?", record.read_text(errors="replace"))):
            raise DataError(f"{record} is not one line '<64 hex digits>  <tokenizer file name>': rebuild or download "
                            "the data again, or delete the file to skip this check")
        digest, name = m.groups()
    elif (record := folder / "manifest.json").is_file():
        try:
            manifest = json.loads(record.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{record} cannot be read as JSON ({e}): rebuild the data or delete the file") from None
        if isinstance(manifest, dict) and "tokenizer" not in manifest:
            return None  # not a builder's manifest: nothing recorded
        entry = manifest.get("tokenizer") if isinstance(manifest, dict) else manifest
        if problems := field_problems(entry, dict(sha256=sha256, model_path=(str, None)), f"{record}: tokenizer"):
            raise DataError(problems[0] + ": rebuild the data or delete the file")
        digest, name = entry["sha256"], Path(entry["model_path"]).name
    else:
        return None
    if (actual := hashlib.sha256(Path(cfg.tokenizer_path).read_bytes()).hexdigest()) != digest:
        raise DataError(f"TOKENIZER_PATH={cfg.tokenizer_path} (sha256 {actual[:12]}...) is not the tokenizer the "
                        f"shards in DATA_PATH={cfg.data_path} were made with: {record} records {name} "
                        f"(sha256 {digest[:12]}...); point TOKENIZER_PATH at that file")
    return str(record)


def byte_sidecars(cfg: Config, sp: spm.SentencePieceProcessor, val_files: list[Path]) -> list[Path]:
    """Per val shard, CaseOps' byte sidecar (original-text bytes per token); refused unless switch and data agree."""
    files, path = sorted(Path(cfg.data_path).glob("fineweb_val_bytes_[0-9]*.bin")), cfg.data_path
    reserved = all(sp.piece_to_id(op) != sp.unk_id() for op in CASE_OPS)
    if cfg.caseops_enabled and not (reserved and files):
        raise DataError(f"CASEOPS_ENABLED=1 but " + (f"TOKENIZER_PATH={cfg.tokenizer_path} does not reserve CaseOps' "
                        "operators" if not reserved else f"DATA_PATH={path} has no fineweb_val_bytes_*.bin byte "
                        "sidecar") + ": use CaseOps data (`python3 data/build_dataset.py --caseops`, or download "
                        "--variant sp8192_caseops), or CASEOPS_ENABLED=0 for plain data")
    if not cfg.caseops_enabled and (reserved or files):
        raise DataError((f"DATA_PATH={path} holds a byte sidecar ({files[0].name})" if files else f"TOKENIZER_PATH="
                         f"{cfg.tokenizer_path} reserves CaseOps' operators") + ": it is CaseOps data; set "
                        "CASEOPS_ENABLED=1 (bits per byte then count the original text's bytes)")
    if [f.name.replace("val_bytes_", "val_") for f in files] != [f.name for f in val_files] if files else False:
        raise DataError(f"DATA_PATH={path}: the byte sidecars {[f.name for f in files]} do not pair one to one with "
                        f"the val shards {[f.name for f in val_files]}: rebuild or download the data again")
    return files


def byte_tables(sp: spm.SentencePieceProcessor, vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per token id: its piece's UTF-8 bytes less a leading '▁', whether it has one, if control/unknown/unused."""
    base, space = np.zeros(vocab_size, dtype=np.int32), np.zeros(vocab_size, dtype=bool)
    boundary = np.ones(vocab_size, dtype=bool)
    for i in range(sp.vocab_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        space[i], base[i] = piece.startswith("\u2581"), len(piece.removeprefix("\u2581").encode("utf-8"))
    return base, space, boundary


def target_bytes(tokens: np.ndarray, tables) -> np.ndarray:
    """Bytes that each target tokens[1:] stands for, given the token before it."""
    base, space, boundary = tables
    prev, cur = tokens[:-1].astype(np.int64), tokens[1:].astype(np.int64)
    return base[cur] + (space[cur] & ~boundary[prev])


def audit_tokenizer(tokens: np.ndarray, sp: spm.SentencePieceProcessor, tables, cfg: Config,
                    max_docs: int = 256, sidecar: np.ndarray | None = None) -> int:
    """The count of the first whole validation documents, which must re-encode to their ids (at most 5% may differ, for
    text the tokenizer normalises) and have the byte table's (CaseOps: sidecar's, of the original text) UTF-8 length."""
    def caseops_decode(text: str) -> str:
        """The original of CaseOps text: TITLE / CAPNEXT capitalise the next ASCII letter, ALLCAPS the next run of them,
        ESC makes the next character literal; one with nothing to act on (from normalisation) stands for nothing."""
        return CASE_OPS_RE.sub(lambda m: m[1] or (m[2] or m[3] or "").upper(), text)
    if len(starts := np.flatnonzero(tokens == BOS_ID)[:max_docs + 1]) < 2:
        raise DataError("BPB audit: the validation tokens hold no whole BOS-delimited document; "
                        "set BPB_AUDIT=0 to skip the check (the score is then unaudited)")
    docs = [tokens[a + 1:b].tolist() for a, b in zip(starts[:-1], starts[1:])]
    texts = sp.decode(docs)
    if (same := sum(a == b for a, b in zip(sp.encode(texts), docs))) < 0.95 * len(docs):
        raise DataError(f"BPB audit: only {same} of {len(docs)} validation documents re-encode to their ids with "
                        f"TOKENIZER_PATH={cfg.tokenizer_path}: the shards in DATA_PATH={cfg.data_path} were made "
                        "with another tokenizer; point TOKENIZER_PATH at the tokenizer of this dataset")
    per_target = target_bytes(tokens[starts[0]:starts[-1]], tables) if sidecar is None else sidecar[starts[0] + 1:]
    for d, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        decoded = len((texts[d] if sidecar is None else caseops_decode(texts[d])).encode("utf-8"))
        if (counted := int(per_target[a - starts[0]:b - starts[0] - 1].sum())) != decoded:
            raise DataError(f"BPB audit: validation document {d} decodes to {decoded} UTF-8 bytes but the byte "
                            f"{'table' if sidecar is None else 'sidecar'} counts {counted}: TOKENIZER_PATH="
                            f"{cfg.tokenizer_path} does not match the data" + ("" if sidecar is None else " (or the "
                            "sidecar was not made from these tokens: rebuild or download the data again)"))
    return len(docs)


@dataclass
class ValData:
    tokens: torch.Tensor  # int32 on device, num_targets + 1 tokens
    target_bytes: torch.Tensor  # int32 on device, one per target
    num_targets: int  # whole eval windows only
    full: bool  # False when VAL_MAX_TOKENS cut the split


def load_validation(cfg: Config, files: list[Path], tables, eval_len: int, device, unk_id: int = -1,
                    sidecars: list[Path] = ()) -> tuple[ValData, np.ndarray | None]:
    """(the scored validation tokens with each target's bytes, CaseOps' byte sidecar of all of them or None)."""
    tokens = np.concatenate([open_shard(f, cfg.vocab_size) for f in files])
    sidecar = np.concatenate([open_shard(f) for f in sidecars]).astype(np.int32) if sidecars else None
    if sidecar is not None and (len(sidecar) != len(tokens) or sidecar[tokens == BOS_ID].any()):
        raise DataError(f"DATA_PATH={cfg.data_path}: the byte sidecar holds {len(sidecar)} counts for {len(tokens)} "
                        "val tokens, or counts bytes for a BOS: rebuild or download the data again")
    if unknown := (int(np.count_nonzero(tokens == unk_id)) if unk_id >= 0 else 0):
        raise DataError(f"the validation shards in DATA_PATH={cfg.data_path} hold {unknown} <unk> tokens (id "
                        f"{unk_id}): their bytes are unknown, so no exact bpb exists; rebuild the data with a "
                        "byte-fallback tokenizer")
    full = not (0 < cfg.val_max_tokens < len(tokens))
    tokens = tokens if full else tokens[:cfg.val_max_tokens]
    if (num_targets := (len(tokens) - 1) // eval_len * eval_len) == 0:
        raise DataError(f"validation split has {len(tokens)} tokens, fewer than one eval window of "
                        f"{eval_len + 1}: use more validation data or a smaller EVAL_SEQ_LEN")
    tokens = tokens[:num_targets + 1]
    per_target = target_bytes(tokens, tables) if sidecar is None else sidecar[1:num_targets + 1]
    return ValData(torch.from_numpy(tokens.astype(np.int32)).to(device),
                   torch.from_numpy(per_target.astype(np.int32)).to(device), num_targets, full), sidecar


# ==================================== model ====================================
HEAD_ROWS = 256  # logit rows per block of HeadLoss (module constants, not class attributes: torch.compile reads them)
ATTENTION_BLOCK_SCORES = 1 << 21  # score elements per block of MatmulAttention's backward


class QATLinear(nn.Linear):
    """Bias-free linear, fp32 weights; `qat` = (bits, clip, sigmas): straight-through fake quantisation in training."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)
        self.qat, self.lora = None, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.qat and self.training:
            q, scale = quantize_rows(w.detach(), *self.qat)
            w = w + (q.float() * scale.float() - w).detach()
        return add_lora(F.linear(x, w), x, self.lora)


def add_lora(y: torch.Tensor, x: torch.Tensor, lora) -> torch.Tensor:
    """y + TTT's per-row low-rank update (x A^T) B^T * scale (A: rows x rank x in, B: rows x out x rank), or y."""
    return y if lora is None else y + torch.bmm(torch.bmm(x, lora[0].mT.to(x.dtype)), lora[1].mT.to(x.dtype)) * lora[2]


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, rope_dims: int, base: float, train_seq_len: int, device,
                  heads: int = 1) -> tuple:
    """(C, S), each (1, seq_len, heads, head_dim) fp32: x * C + swap_halves(x) * S rotates each head's first `rope_dims`
    dims in pairs (i, i + rope_dims/2), the rest pass (partial RoPE); NTK-aware base scaling beyond train_seq_len."""
    if seq_len > train_seq_len:
        base = base * (seq_len / train_seq_len) ** (rope_dims / (rope_dims - 2))
    inv_freq = 1.0 / base ** (torch.arange(0, rope_dims, 2, dtype=torch.float32, device=device) / rope_dims)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    cos, sin, rest = angles.cos(), angles.sin(), head_dim - rope_dims
    tables = (torch.cat((cos, cos, angles.new_ones(seq_len, rest)), 1),
              torch.cat((-sin, sin, angles.new_zeros(seq_len, rest)), 1))
    return tuple(t[None, :, None].expand(1, seq_len, heads, head_dim) for t in tables)


def swap_halves(x: torch.Tensor, half: int) -> torch.Tensor:
    return torch.roll(x, half, -1) if 2 * half == x.size(-1) else torch.cat((x[..., half:2 * half], x[..., :half],
                                                                             x[..., 2 * half:]), -1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half: int) -> torch.Tensor:
    """RoPE with the tables of `rotary_tables` (x1 cos - x2 sin, x1 sin + x2 cos for the halves x1, x2)."""
    return x * cos + swap_halves(x, half) * sin


def norm_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half: int, gain=None) -> torch.Tensor:
    """RoPE of rms_norm(x) (queries and keys, (B, T, heads, head_dim)), times a per-head gain if given."""
    y = apply_rotary(rms_norm(x), cos, sin, half)
    return y if gain is None else y * gain.to(y.dtype)[:, None]


def squared_act(h: torch.Tensor, slope) -> torch.Tensor:
    return (F.relu(h) if slope is None else F.leaky_relu(h, slope)).square()


def suffix(x: torch.Tensor, first: int) -> torch.Tensor:
    """Positions first.. of a (B, T, ...) tensor; for 0 no slice at all (the autograd graph, so fp32 results, stay)."""
    return x[:, first:] if first else x


def head_loss(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: float, lora=None) -> torch.Tensor:
    """Per-token NLL of `targets` under the softcapped logits x W^T (+ the TTT adapter): cross-entropy in fp32."""
    logits = add_lora(F.linear(x, weight), x, lora)  # compute dtype
    logits = cap * torch.tanh(logits / cap) if cap else logits
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view_as(targets)


# FUSED_KERNELS: hand-written backwards, fewer passes over memory (most of a CPU step: nothing fuses elementwise work)
class RMSNorm(torch.autograd.Function):
    """rms_norm(x) (same eps: that of fp32 for bf16) as x times a per-row scale, which is kept in x's dtype."""

    @staticmethod
    def scale(x):
        acc = torch.promote_types(x.dtype, torch.float32)
        ms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=acc).square_().div_(x.size(-1))
        return ms.add_(torch.finfo(acc).eps).rsqrt_().to(x.dtype)

    @staticmethod
    def grad(g, y, scale, dot=None):
        """d/dx of rms_norm(x) = y = x * scale, given dL/dy: scale * (g - y * mean(g * y)) (dot: g . y per row)."""
        dot = torch.linalg.vecdot(g, y) if dot is None else dot
        return torch.addcmul(g, y, dot[..., None], value=-1 / y.size(-1)).mul_(scale)

    @staticmethod
    def forward(ctx, x):
        y = x * (scale := RMSNorm.scale(x))
        ctx.save_for_backward(y, scale)
        return y

    @staticmethod
    def backward(ctx, g):
        return RMSNorm.grad(g, *ctx.saved_tensors)


class NormRotary(torch.autograd.Function):
    """norm_rotary with RMSNorm's passes, the gain in the tables (one multiply-add); the backward rotates back."""

    @staticmethod
    def forward(ctx, x, cos, sin, half, gain):
        y = x * (scale := RMSNorm.scale(x))
        ctx.save_for_backward(y, scale, cos, sin, gain)
        ctx.half = half
        if gain is not None:
            cos, sin = cos * gain.to(x.dtype)[:, None], sin * gain.to(x.dtype)[:, None]
        return torch.addcmul(y * cos, swap_halves(y, half), sin)

    @staticmethod
    def backward(ctx, g):
        y, scale, cos, sin, gain = ctx.saved_tensors
        u = torch.addcmul(g * cos, swap_halves(g, ctx.half), sin, value=-1)  # dL/d(rotated y), before the gain
        if gain is None:
            return RMSNorm.grad(u, y, scale), None, None, None, None
        c = torch.linalg.vecdot(u, y)  # dL/dgain per row; rms_norm's input gradient is that of gain * u
        dx = RMSNorm.grad(u, y, scale * gain[:, None].to(y.dtype), c)
        return dx, None, None, None, c.sum((0, 1), dtype=gain.dtype)


class SquaredAct(torch.autograd.Function):
    """squared_act keeping only the activation a: d/dh a^2 = 2 a act'(h) = 2 act(a), as a has h's sign."""

    @staticmethod
    def forward(ctx, h, slope):
        a = F.relu(h) if slope is None else F.leaky_relu(h, slope)
        ctx.save_for_backward(a)
        ctx.slope = slope
        return a.square()

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return torch.mul(g, a if ctx.slope is None else F.leaky_relu(a, ctx.slope)).mul_(2), None


class HeadLoss(torch.autograd.Function):
    """head_loss without an adapter: fp32 work on the logits in cache-sized blocks of HEAD_ROWS rows, the softcap as 2
    cap sigmoid(2 z / cap) (= cap tanh(z / cap) + cap: the constant cancels in the softmax; sigmoid is much faster)."""

    @staticmethod
    def forward(ctx, x, weight, targets, cap):
        shape, x, t = targets.shape, x.flatten(0, -2), targets.flatten()
        z = x @ weight.t()
        acc = torch.promote_types(z.dtype, torch.float32)
        nll, lse = (z.new_empty(len(t), dtype=acc) for _ in "nl")
        kept = z.new_empty(z.shape, dtype=acc) if any(ctx.needs_input_grad) else None
        for a in range(0, len(t), HEAD_ROWS):
            rows = slice(a, a + HEAD_ROWS)
            u = z[rows].to(acc) if kept is None else kept[rows].copy_(z[rows])
            s = torch.sigmoid_(u.mul_(2 / cap)) * (2 * cap) if cap else u
            torch.sub(torch.logsumexp(s, 1, out=lse[rows]), s.gather(1, t[rows, None])[:, 0], out=nll[rows])
        ctx.save_for_backward(x, weight, t, kept, lse)
        ctx.cap, ctx.shape = cap, shape
        return nll.view(shape)

    @staticmethod
    def backward(ctx, g):
        (x, weight, t, kept, lse), g, cap = ctx.saved_tensors, g.reshape(-1, 1), ctx.cap
        dz = x.new_empty(kept.shape)
        for a in range(0, len(t), HEAD_ROWS):
            rows, u = slice(a, a + HEAD_ROWS), kept[a:a + HEAD_ROWS]
            p = torch.add(-lse[rows, None], u, alpha=2 * cap if cap else 1).exp_()  # the softmax
            p.scatter_add_(1, t[rows, None], p.new_full((len(p), 1), -1.0))
            if cap:  # d/dz 2 cap sigmoid(2 z / cap) = 4 sigmoid (1 - sigmoid)
                p.mul_(torch.addcmul(u, u, u, value=-1))
            torch.mul(p, g[rows] * 4 if cap else g[rows], out=dz[rows])
        return (dz @ weight).view(*ctx.shape, -1), dz.t() @ x, None, None


def segment_mask(docs, tq: int, tk: int):
    """DOC_MASK for queries at the last tq of tk positions: (B, tq, tk) bool, True where a query may see a key (earlier
    or itself, and of its own document segment); None (plain causal attention) without segments."""
    if docs is None:
        return None
    pos = torch.arange(tk, device=docs.device)
    return (docs[:, tk - tq:, None] == docs[:, None, :]) & (pos[tk - tq:, None] >= pos)


def _sdpa(q, k, v, mask=None):
    """Causal attention over (B, T, heads, head_dim), within document segments when given `segment_mask`'s mask;
    queries may be the last positions only (aligned to the end of the keys, as FlashAttention does)."""
    tq, tk = q.size(1), k.size(1)
    if mask is None and tq != tk:
        mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=mask[:, None] if mask is not None and mask.dim() == 3 else mask,
                                       is_causal=mask is None, enable_gqa=k.size(2) != q.size(2))
    return y.transpose(1, 2)


class MatmulAttention(torch.autograd.Function):
    """`_sdpa` (fast on CPU) with a backward of batched matmuls (SDPA's is slow in bf16) that recomputes the
    probabilities per cache-sized block of queries against only the keys they see (no T x T matrix kept)."""

    @staticmethod
    def blocks(qh, kh, tq, mask):
        """(query slice, its queries with heads stacked along time, the keys they see, probabilities) per block."""
        (bkv, hpk, _, D), keys = qh.shape, kh.size(1)
        rows = max(1, ATTENTION_BLOCK_SCORES // (bkv * hpk * keys))
        for a in range(0, tq, rows):
            b = min(a + rows, tq)
            qb, kb = qh[:, :, a:b].reshape(bkv, -1, D), kh[:, :keys - tq + b]
            seen = (torch.ones(b - a, kb.size(1), dtype=torch.bool, device=qh.device).tril_(kb.size(1) - b + a)
                    if mask is None else mask[:, a:b, :kb.size(1)].repeat_interleave(bkv // mask.size(0), 0))
            bias = qh.new_zeros(seen.shape).masked_fill_(~seen, -math.inf).repeat(*[1] * (seen.dim() - 2), hpk, 1)
            yield slice(a, b), qb, kb, torch.softmax(torch.baddbmm(bias, qb, kb.transpose(1, 2), alpha=D ** -0.5), -1)

    @staticmethod
    def forward(ctx, q, k, v, mask=None):
        ctx.save_for_backward(q, k, v, mask)
        return _sdpa(q, k, v, mask)

    @staticmethod
    def backward(ctx, grad):
        (q, k, v, mask), (B, tq, H, D) = ctx.saved_tensors, grad.shape
        kv = k.size(2)
        qh = q.transpose(1, 2).reshape(B * kv, H // kv, tq, D)
        kh, vh = (t.transpose(1, 2).reshape(B * kv, -1, D) for t in (k, v))
        gh, dq = grad.transpose(1, 2).reshape(qh.shape), torch.empty_like(qh)
        dk, dv = torch.zeros_like(kh), torch.zeros_like(vh)
        for rows, qb, kb, p in MatmulAttention.blocks(qh, kh, tq, mask):
            gb, n = gh[:, :, rows].reshape(qb.shape), kb.size(1)
            ds = torch._softmax_backward_data(gb @ vh[:, :n].transpose(1, 2), p, -1, p.dtype)  # / sqrt(D) below
            dq[:, :, rows] = torch.baddbmm(qb, ds, kb, beta=0, alpha=D ** -0.5).view(dq[:, :, rows].shape)
            dk[:, :n].baddbmm_(ds.transpose(1, 2), qb, alpha=D ** -0.5)
            dv[:, :n].baddbmm_(p.transpose(1, 2), gb)
        dk, dv = (t.view(B, -1, k.size(1), D).transpose(1, 2) for t in (dk, dv))
        return dq.view(B, H, tq, D).transpose(1, 2), dk, dv, None


def flex_mask(docs, tq: int, tk: int):
    """FlexAttention's block mask of `segment_mask` in a compiled model (blocks of other documents are skipped, not
    computed); run eagerly (TTT), `segment_mask`'s, for SDPA; None without segments (plain causal SDPA)."""
    if docs is None or not torch.compiler.is_compiling():
        return segment_mask(docs, tq, tk)
    from torch.nn.attention.flex_attention import create_block_mask
    return create_block_mask(lambda b, h, i, j: (j <= i + tk - tq) & (docs[b, i + tk - tq] == docs[b, j]),
                             docs.size(0), None, tq, tk, device=docs.device)


def flex(q, k, v, mask=None):
    if mask is None or isinstance(mask, torch.Tensor):
        return _sdpa(q, k, v, mask)
    from torch.nn.attention.flex_attention import flex_attention
    return flex_attention(*(t.transpose(1, 2) for t in (q, k, v)), block_mask=mask,
                          enable_gqa=k.size(2) != q.size(2)).transpose(1, 2)


@torch.compiler.disable  # a host sync: the segments' count
def varlen_mask(docs, tq: int, tk: int):
    """(cu_seqlens_q, cu_seqlens_k, tq, tk) of variable-length FlashAttention over the segments of `segment_mask` (rows
    flattened; a segment's queries are its positions among the last tq); None without segments."""
    if docs is None:
        return None
    B, starts = docs.size(0), F.pad(docs[:, 1:] != docs[:, :-1], (1, 0), value=True)
    at = torch.nonzero(starts.flatten()).flatten()  # segment starts in the flattened rows (a host sync)
    ends = torch.cat((at[1:], at.new_tensor([B * tk])))
    row_q0 = at // tk * tk + tk - tq  # where each segment's row begins to have queries
    queries = (ends - torch.maximum(at, row_q0)).clamp(min=0)
    cu_q, cu_k = (F.pad(torch.cumsum(n, 0), (1, 0)).int() for n in (queries, ends - at))
    return cu_q, cu_k, tq, tk


class Kernels(NamedTuple):
    """The model's hot functions (causal attention, its DOC_MASK builder, ...): reference or FUSED_KERNELS'."""
    attention: Callable
    mask: Callable = segment_mask
    rms_norm: Callable = rms_norm
    norm_rotary: Callable = norm_rotary
    squared_act: Callable = squared_act
    head_loss: Callable = head_loss


def select_attention(requested: str, device: torch.device, bf16: bool = True, docs: bool = False):
    """(name, fn, mask builder): fn(q, k, v, builder(segment ids or None, tq, tk)), causal over (B, T, heads, head_dim).
    auto: CUDA FA3, FA2, SDPA (DOC_MASK: flex), CPU matmul (bf16) or SDPA; absent packages are skipped."""
    auto = (["flex"] if docs else ["fa3", "fa2", "sdpa"]) if device.type == "cuda" else ["matmul" if bf16 else "sdpa"]
    for name in auto if requested == "auto" else [requested]:
        if name in ("sdpa", "matmul"):
            return name, _sdpa if name == "sdpa" else MatmulAttention.apply, segment_mask
        if device.type != "cuda":
            continue
        if name == "flex":
            return name, flex, flex_mask
        try:
            module = __import__("flash_attn_interface" if name == "fa3" else "flash_attn",
                                fromlist=["flash_attn_func", "flash_attn_varlen_func"])
        except ImportError:
            continue
        return name, functools.partial(flash, module), varlen_mask
    raise ConfigError(f"ATTN_BACKEND={requested} is not available on this machine ({device.type}); "
                      "use ATTN_BACKEND=auto")


def flash(module, q, k, v, mask=None):
    """FlashAttention over (B, T, heads, head_dim); with `varlen_mask`'s segments, its variable-length kernel."""
    y = module.flash_attn_func(q, k, v, causal=True) if mask is None else flash_varlen(module, q, k, v, mask)
    return y[0] if isinstance(y, tuple) else y


@torch.compiler.disable  # segments of data-dependent lengths
def flash_varlen(module, q, k, v, mask):
    y = module.flash_attn_varlen_func(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), *mask, causal=True)
    y = y[0] if isinstance(y, tuple) else y
    return y.view(q.shape[0], q.shape[1], *y.shape[1:])


class CausalSelfAttention(nn.Module):
    """GQA attention, (partial) RoPE, RMS-normed q/k, a learned per-head query gain; optional XSA (each head's output
    loses its component along its token's value) and per-head output gate sigmoid(scale W_h . x[:GATE_WINDOW])."""

    def __init__(self, cfg: Config, kernels: Kernels, layer: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.kernels = cfg.num_heads, cfg.num_kv_heads, kernels
        self.head_dim = cfg.model_dim // cfg.num_heads
        self.rope_half, kv_dim = (cfg.rope_dims or self.head_dim) // 2, self.num_kv_heads * self.head_dim
        self.q, self.k = QATLinear(cfg.model_dim, cfg.model_dim), QATLinear(cfg.model_dim, kv_dim)
        self.v, self.proj = QATLinear(cfg.model_dim, kv_dim), QATLinear(cfg.model_dim, cfg.model_dim)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init))
        self.xsa, self.gate_scale = layer >= cfg.num_layers - cfg.xsa_last_n, cfg.sparse_attn_gate_scale
        self.gate = nn.Parameter(torch.zeros(cfg.num_heads, cfg.gate_window)) if cfg.sparse_attn_gate_enabled else None

    def forward(self, x: torch.Tensor, rotary: tuple, first: int = 0) -> torch.Tensor:
        """Outputs for positions first.. (queries from those only; keys and values from all)."""
        (B, T, _), kn, (cos, sin, masks), kv, xq = x.shape, self.kernels, rotary, self.num_kv_heads, suffix(x, first)
        q = kn.norm_rotary(self.q(xq).view(B, T - first, self.num_heads, self.head_dim), suffix(cos, first),
                           suffix(sin, first), self.rope_half, self.q_gain)
        k = kn.norm_rotary(self.k(x).view(B, T, kv, -1), cos[:, :, :kv], sin[:, :, :kv], self.rope_half, None)
        v = self.v(x).view(B, T, kv, self.head_dim)
        y = kn.attention(q.to(v.dtype), k.to(v.dtype), v, masks[bool(first)])
        if self.xsa:  # query head h reads kv head h // (heads per kv head), as GQA attention does
            v_hat = F.normalize(suffix(v, first), dim=-1).repeat_interleave(self.num_heads // self.num_kv_heads, dim=2)
            y = y - (y * v_hat).sum(-1, keepdim=True) * v_hat
        if self.gate is not None:
            gate = torch.sigmoid(self.gate_scale * F.linear(xq[..., :self.gate.size(1)], self.gate.to(xq.dtype)))
            y = y * gate[..., None]
        return self.proj(y.reshape(B, T - first, -1))


class MLP(nn.Module):
    def __init__(self, cfg: Config, kernels: Kernels):
        super().__init__()
        hidden, self.act = int(cfg.mlp_mult * cfg.model_dim), kernels.squared_act
        self.fc, self.proj = QATLinear(cfg.model_dim, hidden), QATLinear(hidden, cfg.model_dim)
        self.slope, self.lora = cfg.mlp_leaky_slope if cfg.mlp_act == "leaky_relu2" else None, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return add_lora(self.proj(self.act(self.fc(x), self.slope)), x, self.lora)


class Block(nn.Module):
    """Pre-norm block: learned output scales, learned mix of the stream with x0; LN_SCALE: norms x 1/sqrt(layer + 1)."""

    def __init__(self, cfg: Config, kernels: Kernels, layer: int):
        super().__init__()
        self.attn, self.mlp = CausalSelfAttention(cfg, kernels, layer), MLP(cfg, kernels)
        self.rms_norm, self.ln_scale = kernels.rms_norm, 1 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0
        self.attn_scale = nn.Parameter(torch.ones(cfg.model_dim))
        self.mlp_scale = nn.Parameter(torch.ones(cfg.model_dim))
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(cfg.model_dim), torch.zeros(cfg.model_dim)]))

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.rms_norm(x) * self.ln_scale if self.ln_scale != 1.0 else self.rms_norm(x)

    def mix(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return self.resid_mix[0].to(x.dtype) * x + self.resid_mix[1].to(x.dtype) * x0

    def forward(self, x: torch.Tensor, x0: torch.Tensor, rotary: tuple, first: int = 0) -> torch.Tensor:
        """The block's output at positions first.. (all of them by default)."""
        x = self.mix(x, x0)
        x = suffix(x, first) + self.attn_scale.to(x.dtype) * self.attn(self.norm(x), rotary, first)
        return x + self.mlp_scale.to(x.dtype) * self.mlp(self.norm(x))

    def parallel(self, lanes: tuple, x0: torch.Tensor, rotary: tuple, resid, post, first: int = 0) -> tuple:
        """Parallel residual lanes: attention reads lane 0 (mixed with x0), the MLP reads lane 1, and each
        lane becomes resid[l] * lane + post[0, l] * attention + post[1, l] * MLP."""
        lane0, lane1 = lanes
        a = self.attn_scale.to(lane0.dtype) * self.attn(self.norm(self.mix(lane0, x0)), rotary, first)
        m = self.mlp_scale.to(lane0.dtype) * self.mlp(self.norm(suffix(lane1, first)))
        resid, post = resid.to(lane0.dtype), post.to(lane0.dtype)
        return tuple(resid[l] * suffix(lane, first) + post[0, l] * a + post[1, l] * m for l, lane in enumerate(lanes))


def previous_token(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The token before each position and whether it may be used: not at position 0, at a BOS or right after one."""
    prev = F.pad(idx[:, :-1], (1, 0), value=BOS_ID)
    return prev, (idx != BOS_ID) & (prev != BOS_ID)


class BigramHash(nn.Module):
    """Hashed (previous, current) token-pair embedding, projected to the model width."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.buckets, self.table = cfg.bigram_vocab_size, nn.Embedding(cfg.bigram_vocab_size, cfg.bigram_dim)
        self.proj, self.scale = QATLinear(cfg.bigram_dim, cfg.model_dim), nn.Parameter(torch.tensor(0.05))

    def forward(self, idx: torch.Tensor, prev: torch.Tensor, has_prev: torch.Tensor) -> torch.Tensor:
        pair = torch.bitwise_xor(prev * 48271, idx * 69621) % (self.buckets - 1)  # last bucket = "no previous token"
        return self.scale * self.proj(self.table(torch.where(has_prev, pair, self.buckets - 1)))


class SmearGate(nn.Module):
    """Blends each position with the previous one through a learned per-dimension gate (SMEAR_GATE)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, has_prev: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate.to(x.dtype)) * has_prev[..., None].to(x.dtype)
        return x + g * (F.pad(x[:, :-1], (0, 0, 1, 0)) - x)


def narrow_smear(x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """SMEAR_GATE_ENABLED: x_t + lam * sigmoid(W . x_t[:GATE_WINDOW]) * x_{t-1}, never at a BOS (so no
    document sees the one before it); W and lam start at zero, so it is the identity at init."""
    g = lam.to(x.dtype) * torch.sigmoid(F.linear(x[..., :weight.size(1)], weight.to(x.dtype)))
    return x + g * (idx != BOS_ID)[..., None].to(x.dtype) * F.pad(x[:, :-1], (0, 0, 1, 0))


def layer_order(cfg: Config, looping: bool) -> tuple[list, list]:
    """(encoder, decoder) physical block indices in run order; with depth recurrence LOOP_START..LOOP_END run 1 +
    NUM_LOOPS times. The unrolled order's first half is the U-Net encoder (outputs feed the decoder's skips, LIFO)."""
    order = list(range(cfg.num_layers))
    if looping and cfg.num_loops:
        loop = order[cfg.loop_start:cfg.loop_end + 1]
        order = order[:cfg.loop_start] + loop * (cfg.num_loops + 1) + order[cfg.loop_end + 1:]
    half = len(order) // 2 if cfg.unet_skips else 0
    return order[:half], order[half:]


class GPT(nn.Module):
    """Tied-embedding GPT; forward(idx, targets): per-token NLL (nats), meaned to train; `looping`: recurrence on."""

    def __init__(self, cfg: Config, kernels: Kernels | None = None):
        super().__init__()
        self.cfg, self.softcap, self.looping, self.head_hook, self.lora = cfg, cfg.logit_softcap, False, None, None
        self.doc_mask = cfg.doc_mask  # attention within documents (off for rows that hold one document)
        self.kernels = kernels = kernels or Kernels(_sdpa)
        head_dim = cfg.model_dim // cfg.num_heads
        self.rope = (head_dim, cfg.rope_dims or head_dim, cfg.rope_base, cfg.train_seq_len)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.bigram = BigramHash(cfg) if cfg.bigram_vocab_size else None
        self.smear = SmearGate(cfg.model_dim) if cfg.smear_gate else None
        if cfg.smear_gate_enabled:
            self.smear_weight = nn.Parameter(torch.zeros(1, cfg.gate_window))
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        self.blocks = nn.ModuleList(Block(cfg, kernels, i) for i in range(cfg.num_layers))
        self.num_skips = num_skips = min(map(len, layer_order(cfg, looping=True)))
        self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim)) if num_skips else None
        self.skip_gates = (nn.Parameter(torch.zeros(num_skips, cfg.model_dim))
                           if num_skips and cfg.skip_gates_enabled else None)
        self.parallel_start = cfg.parallel_start_layer or cfg.num_layers
        if cfg.parallel_start_layer:
            self.parallel_post = nn.Parameter(torch.ones(cfg.num_layers, 2, 2))
            self.parallel_resid = nn.Parameter(torch.full((cfg.num_layers, 2), 1.1))
        nn.init.normal_(self.tok_emb.weight, std=cfg.tied_embed_init_std)
        for name, m in self.named_modules():
            if isinstance(m, QATLinear):
                nn.init.orthogonal_(m.weight)
                if name.endswith(".proj") and name.startswith("blocks."):
                    m.weight.data.mul_(1.0 / math.sqrt(2 * cfg.num_layers))
        if self.bigram is not None:
            nn.init.normal_(self.bigram.table.weight, std=0.02)
            nn.init.zeros_(self.bigram.proj.weight)

    def skip(self, j: int, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Decoder slot j's U-Net skip: x + w*s, or with SKIP_GATES_ENABLED lerp(w*s, x, sigmoid(g))."""
        ws = self.skip_weights[j].to(x.dtype) * s
        return x + ws if self.skip_gates is None else torch.lerp(ws, x, torch.sigmoid(self.skip_gates[j].to(x.dtype)))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor, first: int = 0) -> torch.Tensor:
        """Per-token NLL of targets[:, first:] (the last block and the head run only where a target is scored)."""
        (prev, has_prev), x = previous_token(idx), self.tok_emb(idx)
        if torch.is_autocast_enabled(x.device.type):  # residual stream in bf16, like the weights' matmuls
            x = x.to(torch.get_autocast_dtype(x.device.type))
        x = narrow_smear(x, idx, self.smear_weight, self.smear_lambda) if self.cfg.smear_gate_enabled else x
        x = x + self.bigram(idx, prev, has_prev).to(x.dtype) if self.bigram is not None else x
        x = self.kernels.rms_norm(x)
        x = self.smear(x, has_prev) if self.smear is not None else x
        x0, skips, lanes = x, [], None
        T = idx.size(1)
        docs = torch.cumsum(idx == BOS_ID, 1) if self.doc_mask else None  # segment ids: a BOS starts one
        masks = (self.kernels.mask(docs, T, T), self.kernels.mask(docs, T - first, T) if first else None)
        rotary = (*(t.to(x.dtype).contiguous() for t in rotary_tables(T, *self.rope, idx.device, self.cfg.num_heads)),
                  masks)  # angles in fp32
        encoder, decoder = layer_order(self.cfg, self.looping)
        for i in encoder:
            x = self.blocks[i](x, x0, rotary)
            skips.append(x)
        for j, i in enumerate(decoder):
            f = first if j == len(decoder) - 1 else 0
            if skips and j < self.num_skips:
                if lanes is None:
                    x = self.skip(j, x, skips.pop())
                else:  # into the attention lane only
                    lanes = (self.skip(j, lanes[0], skips.pop()), lanes[1])
            if i < self.parallel_start:
                x = self.blocks[i](x, x0, rotary, f)
            else:
                lanes = self.blocks[i].parallel(lanes or (x, x), x0, rotary, self.parallel_resid[i],
                                                self.parallel_post[i], f)
        if lanes is not None:
            x = {"mean": (lanes[0] + lanes[1]) / 2, "attn": lanes[0], "mlp": lanes[1]}[self.cfg.parallel_final_lane]
        targets, x = targets[:, first:], self.kernels.rms_norm(x)
        if self.head_hook:  # GPTQ calibration of the tied embedding reads the head's input
            self.head_hook(x)
        if self.lora is not None:  # TTT's head adapter: the reference head
            return head_loss(x, self.tok_emb.weight, targets, self.softcap, self.lora)
        return self.kernels.head_loss(x, self.tok_emb.weight.to(x.dtype), targets, self.softcap)


def flops_per_token(model: GPT, seq_len: int) -> float:
    """Training FLOPs/token: 6 per matmul weight use (lm head included; looped blocks per pass) + causal attention."""
    runs = sum(layer_order(model.cfg, looping=True), [])
    weights = {name: m.weight.numel() for name, m in model.named_modules() if isinstance(m, QATLinear)}
    matmul = model.tok_emb.weight.numel() + sum(n * (runs.count(int(k.split(".")[1])) if k.startswith("blocks.") else 1)
                                                for k, n in weights.items())
    return 6.0 * matmul + 6.0 * len(runs) * seq_len * model.tok_emb.weight.size(1)


# ================================== optimizer ==================================
NS_STANDARD = ((3.4445, -4.7750, 2.0315),)  # one quintic, repeated
NS_POLAR_EXPRESS = ((8.156554524902461, -22.48329292557795, 15.878769915207462),  # one per iteration
                    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
                    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
                    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
                    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323))


def newton_schulz(g: torch.Tensor, steps: int, coefficients: tuple = NS_STANDARD) -> torch.Tensor:
    """Approximate the orthogonal polar factor of g (a matrix, or a stack of them) with quintic Newton-Schulz
    iterations in bf16: X <- aX + (bA + cA^2)X, A = XX^T; iteration i uses coefficients[i] (the last repeats)."""
    x, tall = g.bfloat16(), g.size(-2) > g.size(-1)
    x = x.mT if tall else x
    x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + 1e-7)
    for i in range(steps):
        a, b, c = coefficients[min(i, len(coefficients) - 1)]
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Orthogonalised Nesterov momentum, decoupled weight decay; all ranks keep all momentum (rank-independent
    checkpoints), each orthogonalises a size-balanced share that one all-gather shares. row_normalize: MuonEq-R."""

    def __init__(self, params, lr: float, momentum: float, steps: int, weight_decay: float, rt: Runtime,
                 orthogonalise=newton_schulz, coefficients: tuple = NS_STANDARD, row_normalize: bool = False):
        super().__init__(params, dict(lr=lr, base_lr=lr, momentum=momentum, steps=steps, weight_decay=weight_decay))
        self.rt, self.orthogonalise = rt, orthogonalise
        self.coefficients, self.row_normalize = coefficients, row_normalize
        params = self.param_groups[0]["params"]
        loads, self.slots = [0] * rt.world_size, [None] * len(params)
        for i in sorted(range(len(params)), key=lambda i: -params[i].numel()):
            owner = loads.index(min(loads))
            self.slots[i] = (owner, loads[owner])
            loads[owner] += params[i].numel()
        self.shard = max(loads)
        self.gathered = torch.zeros(rt.world_size * self.shard, dtype=torch.bfloat16, device=params[0].device)
        local = self.gathered[rt.rank * self.shard:(rt.rank + 1) * self.shard]
        self.local = local.clone() if rt.world_size > 1 else local  # all-gather reads its own buffer
        self.batches = {}  # this rank's matrices by shape: each shape is orthogonalised as one batch
        for i, (owner, _) in enumerate(self.slots):
            if owner == rt.rank:
                self.batches.setdefault(tuple(params[i].shape), []).append(i)

    def bytes_per_step(self) -> int:
        return 2 * self.shard if self.rt.world_size > 1 else 0  # what each rank sends in the update all-gather

    @torch.no_grad()
    def step(self):
        group = self.param_groups[0]
        params, mu = group["params"], group["momentum"]
        bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
        torch._foreach_mul_(bufs, mu)
        torch._foreach_add_(bufs, [p.grad for p in params])
        for (rows, cols), idx in self.batches.items():
            g = torch.stack([params[i].grad.add(bufs[i], alpha=mu) for i in idx])  # Nesterov
            g = g / g.float().norm(dim=-1, keepdim=True).clamp_min(1e-7) if self.row_normalize else g
            u = self.orthogonalise(g, group["steps"], self.coefficients) * max(1.0, rows / cols) ** 0.5
            for i, ui in zip(idx, u):
                self.local[self.slots[i][1]:self.slots[i][1] + ui.numel()] = ui.flatten()
        if self.rt.world_size > 1:  # all_gather_single: the name of this collective from torch 2.12 on
            (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(self.gathered, self.local)
        torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        for p, (owner, at) in zip(params, self.slots):
            start = owner * self.shard + at
            p.add_(self.gathered[start:start + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])


def build_optimizers(model: GPT, cfg: Config, rt: Runtime) -> list[torch.optim.Optimizer]:
    """Muon for every QATLinear weight; AdamW for the embedding tables (EMBED_WD) and for scalars/controls (ADAM_WD)."""
    matrices = [m.weight for m in model.modules() if isinstance(m, QATLinear)]
    tables = [model.tok_emb.weight] + ([model.bigram.table.weight] if model.bigram is not None else [])
    taken = {id(p) for p in matrices + tables}
    scalars = [p for p in model.parameters() if id(p) not in taken]
    adam = torch.optim.AdamW(
        [dict(params=tables, lr=cfg.tied_embed_lr, base_lr=cfg.tied_embed_lr, weight_decay=cfg.embed_wd),
         dict(params=scalars, lr=cfg.scalar_lr, base_lr=cfg.scalar_lr, weight_decay=cfg.adam_wd)],
        betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=rt.device.type == "cuda")
    orthogonalise = torch.compile(newton_schulz) if cfg.compile == "1" else newton_schulz
    return [Muon(matrices, cfg.matrix_lr, cfg.muon_momentum, cfg.muon_backend_steps, cfg.muon_wd, rt, orthogonalise,
                 NS_POLAR_EXPRESS if cfg.muon_ns == "polar" else NS_STANDARD, cfg.muon_row_normalize), adam]


# ================================ training loop ================================
_STOP_SIGNAL = {"received": False}  # set by SIGTERM when checkpoints are on
CHECKPOINT_FORMAT = "train_gpt-checkpoint-2"


def lr_scale(cfg: Config, step: int, elapsed_ms: float) -> float:
    """LR multiplier, at least MIN_LR. WARMDOWN_FRAC: linear to 0 over that last fraction of steps or wall clock
    (whichever is further); else over WARMDOWN_ITERS to ITERATIONS or the step predicted to hit the wall-clock cap."""
    if cfg.warmdown_frac:
        scale = min(1.0, (1 - training_progress(cfg, step, elapsed_ms)) / cfg.warmdown_frac)
    else:
        scale = min(1.0, max(cfg.iterations - step, 0) / cfg.warmdown_iters) if cfg.warmdown_iters > 0 else 1.0
        if cfg.warmdown_iters > 0 and budget_ms(cfg) > 0 and step > 0:
            warmdown_ms = cfg.warmdown_iters * elapsed_ms / step
            scale = min(scale, max(budget_ms(cfg) - elapsed_ms, 0.0) / warmdown_ms if warmdown_ms > 0 else 1.0)
    return max(scale, cfg.min_lr)


def budget_ms(cfg: Config) -> float:
    """MAX_WALLCLOCK_SECONDS in ms less GPTQ's calibration reserve (calibration reads training data); 0 = none."""
    reserve = cfg.gptq_reserve_seconds if cfg.quant_method == "gptq" else 0.0
    return 1000 * (cfg.max_wallclock_seconds - reserve) if cfg.max_wallclock_seconds > 0 else 0.0


def training_progress(cfg: Config, step: int, elapsed_ms: float) -> float:
    return max(step / max(cfg.iterations, 1), elapsed_ms / budget_ms(cfg) if budget_ms(cfg) > 0 else 0.0)


class TrainingStopped(Exception):
    """Training cannot go on (non-finite loss); the message has the step and last good figures."""


def write_atomic(path: Path, data: bytes | Callable) -> None:
    """Write `data` (bytes, or a function given the path to write) via a temporary file: a crash keeps the old file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, functools.partial(torch.save, dict(state, format=CHECKPOINT_FORMAT)))


def read_checkpoint(path: str, device="cpu", name: str = "RESUME_FROM") -> dict:
    """A checkpoint written by save_checkpoint (tensors and plain values only: nothing is unpickled)."""
    if Path(path).is_dir():
        raise ConfigError(f"{name}={path} is a folder: give the checkpoint file")
    try:
        state = torch.load(path, map_location=device, weights_only=True, mmap=True)
    except FileNotFoundError:
        raise ConfigError(f"{name}={path} does not exist") from None
    except Exception as e:  # torch raises many types; its message suggests unsafe loading, so it is not shown
        raise ConfigError(f"{name}={path} is not a train_gpt.py checkpoint: it cannot be read as plain tensors "
                          f"({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        older = isinstance(state, dict) and str(state.get("format", "")).startswith("train_gpt-checkpoint-")
        raise ConfigError(f"{name}={path} is not a train_gpt.py checkpoint of this version (" + (
            f"format {state['format']!r}, this script reads {CHECKPOINT_FORMAT!r}): resume with the script that "
            "wrote it" if older else f"a torch file without the '{CHECKPOINT_FORMAT}' marker); give a file written "
            "with CHECKPOINT_EVERY"))
    return state


def load_checkpoint(path: str, cfg: Config, model: nn.Module, rt: Runtime, train_files: list[Path]) -> dict:
    """The state to resume from, refused before any work unless it fits these settings, model, shards and optimisers."""
    state, where = read_checkpoint(path, rt.device), f"RESUME_FROM={path}"
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tensors = lambda d: all(isinstance(v, torch.Tensor) and torch.isfinite(v).all() for v in d.values())  # noqa: E731
    same = lambda d: isinstance(d, dict) and {k: tuple(v.shape) for k, v in d.items()} == shapes and tensors(d)  # noqa
    problems = field_problems(state, dict(
        model=(dict, None), optimizers=(list, lambda v: len(v) == 2), config=(dict, None), step=(int, lambda v: v >= 0),
        training_ms=((float, int), lambda v: v >= 0), looping=(bool, None), rng=(torch.Tensor, None), data=(list, None),
        loader=(dict, None), swa=(dict, None), ema=((dict, type(None)), lambda v: (v is None) != bool(cfg.ema_decay))),
        where)
    problems += [] if problems else field_problems(state["loader"], dict(file_idx=(int, None), pos=(int, None)),
                                                   f"{where}: loader") + field_problems(
        state["swa"], dict(count=(int, lambda v: v >= 0), sums=((dict, type(None)), None)), f"{where}: swa")
    if problems:
        raise ConfigError(f"{problems[0]}: the checkpoint is damaged or was edited; resume from another one")
    keep = MODEL_FIELDS + ("train_batch_tokens", "micro_batches", "iterations", "warmdown_iters", "seed")
    if diff := [f"{k.upper()}: checkpoint {state['config'].get(k)!r}, now {getattr(cfg, k)!r}"
                for k in keep if state["config"].get(k, ...) != getattr(cfg, k)]:
        raise ConfigError(f"{where} was made with other settings; resume with the same ones:\n  " + "\n  ".join(diff))
    if not same(state["model"]):
        raise ConfigError(f"{where} holds tensors of another model shape (or non-finite weights): resume with the "
                          "settings it was made with")
    if not (state["ema"] is None or same(state["ema"])) or (state["swa"]["count"] and not same(state["swa"]["sums"])):
        raise ConfigError(f"{where}: its EMA or SWA average does not fit the model; the checkpoint is damaged")
    data = [[f.name, (f.stat().st_size - SHARD_HEADER_BYTES) // 2] for f in train_files]
    if state["data"] != data:
        raise ConfigError(f"{where} was made on other training shards (it names {len(state['data'])} shards, DATA_PATH "
                          f"has {len(data)}, or their sizes differ): resume on the data it was made with")
    if not (0 <= (i := state["loader"]["file_idx"]) < len(data) and 0 <= state["loader"]["pos"] <= data[i][1]):
        raise ConfigError(f"{where}: its data position {state['loader']} is past the end of the training shards")
    if not state["step"] <= cfg.iterations or state["rng"].dtype != torch.uint8:
        raise ConfigError(f"{where}: step {state['step']} beyond ITERATIONS={cfg.iterations}, or a bad RNG state")
    try:
        for opt, s in zip(build_optimizers(model, cfg, rt), state["optimizers"]):
            opt.load_state_dict(s)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise ConfigError(f"{where}: its optimiser state does not fit this model ({type(e).__name__}); the "
                          "checkpoint is damaged or of other settings") from None
    return state


def train(cfg: Config, rt: Runtime, log: RunLog, model: GPT, run_model: nn.Module, train_files: list[Path],
          val: ValData, resume: dict | None) -> dict:
    """Train `model` via `run_model` (its compiled form), from the checkpoint `resume` if given; steps and timing."""
    def compile_stats(key: str) -> dict:
        """torch.compile's counters of one kind (graph breaks, compiled graphs); empty when it never ran."""
        if "torch._dynamo" not in sys.modules:
            return {}
        from torch._dynamo.utils import counters
        return counters[key]
    train_model = DDP(run_model, gradient_as_bucket_view=True) if rt.world_size > 1 else run_model
    optimizers = build_optimizers(model, cfg, rt)
    if rt.world_size > 1:
        grad_bytes = 4 * sum(p.numel() for p in model.parameters())
        log(f"comm per step per rank: gradient all-reduce {grad_bytes / 2**20:.2f} MiB (DDP buckets, overlapped with "
            f"the backward), Muon update all-gather sends {optimizers[0].bytes_per_step() / 2**20:.2f} MiB")
    accum = cfg.micro_batches // rt.world_size
    qat = {m: (quant_bits_for(name + ".weight", cfg), cfg.quant_clip, clip_sigmas_for(name + ".weight", cfg))
           for name, m in model.named_modules() if isinstance(m, QATLinear)}
    fpt, peak = flops_per_token(model, cfg.train_seq_len), rt.peak_flops() * rt.world_size

    def set_qat(on: bool):
        for m, setting in qat.items():
            m.qat = setting if on and setting[0] < 16 else None

    def train_step(loader: TrainLoader, scale: float, momentum: float) -> torch.Tensor:
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale
        optimizers[0].param_groups[0]["momentum"] = momentum
        total = torch.zeros((), device=rt.device)
        for micro in range(accum):
            x, y = loader.next_batch()
            if rt.world_size > 1:
                train_model.require_backward_grad_sync = micro == accum - 1
            with rt.autocast():
                loss = train_model(x, y).mean()
            (loss / accum).backward()
            total += loss.detach()
        if rt.world_size > 1:
            dist.all_reduce(total)
        total /= accum * rt.world_size
        if cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        return total
    # Warm-up: compile and prime kernels (looping and QAT too: switching them on compiles nothing), then restore.
    t0, clock, eval_compile_s = rt.clock(), [], 0.0
    if cfg.warmup_steps > 0:
        initial = copy.deepcopy((model.state_dict(), [o.state_dict() for o in optimizers]))
        loader = TrainLoader(train_files, cfg, rt)
        for w in range(cfg.warmup_steps):
            model.looping = cfg.num_loops > 0 and 3 * w >= cfg.warmup_steps
            set_qat(cfg.qat_frac > 0 and 3 * w >= 2 * cfg.warmup_steps)
            train_step(loader, 1.0, cfg.muon_momentum_warmup_start)
        set_qat(False)
        model.looping = False
        model.load_state_dict(initial[0])
        for opt, s in zip(optimizers, initial[1]):
            opt.load_state_dict(s)
        log(f"warmup: {cfg.warmup_steps} steps done in {rt.clock() - t0:.1f}s, model and optimiser state restored")
        if cfg.compile == "1":
            eval_compile_s = warm_eval(run_model, cfg, rt)
            log(f"warmup: the evaluation's forward shapes compiled in {eval_compile_s:.1f}s")
            breaks = compile_stats("graph_break")
            log(f"compile: {sum(breaks.values())} graph break(s)" + "".join(f"; {r[:80]}" for r in list(breaks)[:3]))
    if cfg.quant_method == "gptq" and not cfg.gptq_reserve_seconds and budget_ms(cfg):
        t0 = rt.clock()  # GPTQ calibration belongs to the training budget: reserve what it costs here
        collect_hessians(model, TrainLoader(train_files, cfg, rt), replace(cfg, gptq_calibration_batches=1), rt)
        per_batch = rt.max_over_ranks([rt.clock() - t0])[0]
        cfg.gptq_reserve_seconds = 1.25 * per_batch * cfg.gptq_calibration_batches + 1.0
        log(f"gptq: calibration measured at {per_batch:.2f}s per batch on this process's share: "
            f"{cfg.gptq_reserve_seconds:.1f}s of MAX_WALLCLOCK_SECONDS reserved for {cfg.gptq_calibration_batches} "
            "batches (GPTQ_RESERVE_SECONDS=0: measured; set it to override)")
    warmup_s, loader, swa = rt.clock() - t0, TrainLoader(train_files, cfg, rt), SWA()
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    step, training_ms = 0, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        for opt, s in zip(optimizers, resume["optimizers"]):
            opt.load_state_dict(s)
        loader.stream.load_state(resume["loader"])
        if resume["swa"]["count"]:
            swa.sums, swa.count = resume["swa"]["sums"], resume["swa"]["count"]
        if ema:
            ema.shadow = resume["ema"]
        step, training_ms, model.looping = resume["step"], resume["training_ms"], resume["looping"]
        torch.set_rng_state(resume["rng"].cpu())
        log(f"resumed from {cfg.resume_from} at step {step} (training time so far {training_ms / 1000:.1f}s)")
    (ckpt_every, ckpt_unit), ckpt_path = checkpoint_interval(cfg), Path(cfg.checkpoint_path)
    if ckpt_every:
        signal.signal(signal.SIGTERM, lambda signum, frame: _STOP_SIGNAL.update(received=True))

    def checkpoint(reason: str):
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:  # never replace the last good checkpoint with a broken state
            raise TrainingStopped(f"the weights are not finite after step {step} ({', '.join(bad[:3])}); no "
                                  f"checkpoint written, the last good one is kept. Lower the learning rates.")
        if rt.is_main:
            save_checkpoint(ckpt_path, dict(
                model=model.state_dict(), optimizers=[o.state_dict() for o in optimizers],
                loader=loader.stream.state(), swa=dict(sums=swa.sums, count=swa.count), ema=ema.shadow if ema else None,
                step=step, training_ms=training_ms, looping=model.looping, rng=torch.get_rng_state(),
                config=asdict(cfg), data=[[f.name, (f.stat().st_size - SHARD_HEADER_BYTES) // 2] for f in train_files]))
        if rt.world_size > 1:
            dist.barrier()
        log(f"checkpoint: step {step} written to {ckpt_path} ({reason})")
    stop_reason, pending, last_good, last_val = "iterations", None, None, None

    def check_finite(at_step: int, value: torch.Tensor, ready) -> None:
        nonlocal last_good
        if ready is not None:
            ready.synchronize()
        if not math.isfinite(value := float(value)):
            good = (f"last finite train loss {last_good[1]:.4f} at step {last_good[0]}" if last_good
                    else "no finite step before it")
            seen = f", last val_bpb {last_val[1]:.4f} at step {last_val[0]}" if last_val else ""
            raise TrainingStopped(f"train loss is {value} at step {at_step} ({good}{seen}); no artifact written. "
                                  "Lower the learning rates (MATRIX_LR, SCALAR_LR, TIED_EMBED_LR) or check the data.")
        last_good = (at_step, value)
    agreed_ms = training_ms  # training time all ranks agree on (max over ranks, one step old)
    recompiled, qat_on, last_ckpt_ms = 0, False, training_ms
    t0 = rt.clock()
    while True:
        done = step >= cfg.iterations or stop_reason == "wallclock"
        if done or (cfg.val_loss_every and step % cfg.val_loss_every == 0):
            training_ms += 1000 * (rt.clock() - t0)
            val_loss, val_bpb = evaluate(run_model, val, cfg, rt, cfg.eval_seq_len)
            last_val = (step, val_bpb)
            log(f"step:{step}/{cfg.iterations} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} "
                f"train_time:{training_ms:.0f}ms step_avg:{training_ms / max(step, 1):.2f}ms")
            t0 = time.perf_counter()
        if done:
            break
        scale = lr_scale(cfg, step, agreed_ms)
        warm = min(step / cfg.muon_momentum_warmup_steps, 1.0) if cfg.muon_momentum_warmup_steps else 1.0
        momentum = (1 - warm) * cfg.muon_momentum_warmup_start + warm * cfg.muon_momentum
        if cfg.qat_frac > 0 and not qat_on and training_progress(cfg, step, agreed_ms) >= 1 - cfg.qat_frac:
            qat_on = True
            set_qat(True)
            log(f"qat: fake quantisation at the export bit widths from step {step}")
        if cfg.num_loops and not model.looping and training_progress(cfg, step, agreed_ms) >= cfg.enable_looping_at:
            model.looping = True
            log(f"looping: depth recurrence on from step {step}; blocks run as encoder {layer_order(cfg, True)[0]} "
                f"decoder {layer_order(cfg, True)[1]}")
        graphs, loss = compile_stats("stats").get("unique_graphs", 0), train_step(loader, scale, momentum)
        recompiled += compile_stats("stats").get("unique_graphs", 0) - graphs
        step += 1
        if ema:
            ema.update(model)
        if pending is not None:  # non-finite check one step behind: the host never waits on the step just launched
            check_finite(*pending)
        pending = (step, loss.detach().to("cpu", non_blocking=True), torch.cuda.Event() if loss.is_cuda else None)
        if pending[2]:  # recorded after the copy was queued: waiting on it means the host value has arrived
            pending[2].record()
        if cfg.swa_every and scale < cfg.swa_start_frac and step % cfg.swa_every == 0:
            swa.add(model)
        elapsed = training_ms + 1000 * (time.perf_counter() - t0)
        clock.append((elapsed, model.looping))  # host time one step behind the device at most (see check_finite)
        if cfg.train_log_every and (step % cfg.train_log_every == 0 or step <= 10):
            step_avg = elapsed / step
            tok_s = cfg.train_batch_tokens / step_avg * 1000
            log(f"step:{step}/{cfg.iterations} train_loss:{loss.item():.4f} train_time:{elapsed:.0f}ms "
                f"step_avg:{step_avg:.2f}ms tok/s:{tok_s:.0f} mfu:{100 * fpt * tok_s / peak:.2f}%")
        agreed_ms, sigterm = rt.max_over_ranks([elapsed, float(_STOP_SIGNAL["received"])])  # all ranks decide alike
        if budget_ms(cfg) > 0 and agreed_ms + 1.5 * agreed_ms / step > budget_ms(cfg):
            stop_reason = "wallclock"  # the next step (with margin) would end past the cap
        if ckpt_every and (sigterm or (agreed_ms - last_ckpt_ms >= 1000 * ckpt_every if ckpt_unit == "seconds"
                                       else step % int(ckpt_every) == 0)):
            check_finite(*pending)  # never replace the last good checkpoint with a broken state
            pending, training_ms, last_ckpt_ms = None, agreed_ms, agreed_ms
            checkpoint("SIGTERM" if sigterm else "periodic")
            t0 = time.perf_counter()  # the time spent saving is not training time
            if sigterm:
                log(f"stopped by SIGTERM at step {step}; continue with RESUME_FROM={ckpt_path}")
                raise SystemExit(143)
    if pending is not None:
        check_finite(*pending)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if stop_reason == "wallclock":
        log(f"stopping_early: wallclock_cap train_time:{training_ms:.0f}ms step:{step}/{cfg.iterations}")
    if rt.device.type == "cuda":
        log(f"peak memory allocated: {torch.cuda.max_memory_allocated() // 2**20} MiB "
            f"reserved: {torch.cuda.max_memory_reserved() // 2**20} MiB")
    else:
        import resource
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        log(f"peak memory allocated: {rss} MiB reserved: {rss} MiB (CPU: peak resident set of rank 0)")
    if cfg.compile == "1":
        log(f"compile: {recompiled} graph(s) compiled during the training steps after the warm-up")
    rt.sync()
    if swa.count:
        model.load_state_dict({k: v / swa.count for k, v in swa.sums.items()})
        log(f"swa: averaged {swa.count} snapshots")
    if ema:
        model.load_state_dict(ema.shadow)
        log(f"ema: the exponential moving average (decay {cfg.ema_decay}) replaces the weights")
    return dict(steps=step, train_time_ms=training_ms, stop_reason=stop_reason, loader=loader, clock=clock,
                warmup_s=warmup_s, eval_compile_s=eval_compile_s)


# ================================== averaging ==================================
class EMA:
    """Weight EMA from init, per optimiser step: shadow <- decay * shadow + (1 - decay) * w, fp32; loaded for export."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.shadow = decay, {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        state = model.state_dict()
        torch._foreach_lerp_(list(self.shadow.values()), [state[k].float() for k in self.shadow], 1 - self.decay)


class SWA:
    """Stochastic weight averaging: a running sum of warm-down weight snapshots; export loads their mean."""

    def __init__(self):
        self.sums, self.count = None, 0

    @torch.no_grad()
    def add(self, model: nn.Module) -> None:
        if self.sums is None:
            self.sums = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
        else:
            for k, v in model.state_dict().items():
                self.sums[k].add_(v.float())
        self.count += 1


# =================================== export ===================================
ARTIFACT_MAGIC, ARTIFACT_VERSION, MAX_PAYLOAD_BYTES = b"PGOLFART", 4, 1 << 30  # max: what an artifact may decompress to
ARRAY_DTYPES = {"i1": np.int8, "u1": np.uint8, "f2": np.float16, "i2": np.int16, "u2": np.uint16, "f4": np.float32}
SCALE_STEPS = 32  # row scales lie on a grid of 2^(1/32) (steps of 2.2%): one byte per row above the tensor's smallest
SAMPLE_BYTES = 1 << 20  # ans: brotli is tried on a whole code stream only when it wins on its first MiB


class ArtifactError(Exception):
    """An artifact cannot be used; the message names the file and the problem."""


def quant_bits_for(name: str, cfg: Config) -> int:
    """Export bit width of a matrix by its name (16 = kept as fp16)."""
    return (cfg.quant_bits_embed if name.startswith("tok_emb.") else cfg.quant_bits_bigram if name.startswith("bigram.")
            else cfg.quant_bits_gate if name.endswith(".gate") or name == "smear_weight" else cfg.quant_bits_mlp
            if ".mlp." in name else cfg.quant_bits_attn if ".attn." in name else 16)


def clip_sigmas_for(name: str, cfg: Config) -> float:
    return (cfg.embed_clip_sigmas if name.startswith("tok_emb.") else cfg.mlp_clip_sigmas if ".mlp." in name
            else cfg.attn_clip_sigmas if ".attn." in name else cfg.matrix_clip_sigmas)


def scale_codes(scale: np.ndarray) -> tuple[int, np.ndarray]:
    """(the smallest grid exponent, each row's steps above it as uint8) of grid scales: how an artifact stores them."""
    k = np.round(np.log2(scale.astype(np.float64)) * SCALE_STEPS).astype(np.int64)
    return int(k.min()), (k - k.min()).astype(np.uint8)


def row_scales(w: torch.Tensor, bits: int, clip: str = "absmax", sigmas: float = 0.0) -> torch.Tensor:
    """Scale per row: max|row| / qmax (absmax), k * std(row) / qmax (sdclip: values beyond k std are clipped), or the
    fraction of absmax among 0.50..1.00 with the least squared error (search); each rounded up onto the grid."""
    def on_grid(s: torch.Tensor) -> torch.Tensor:  # 2^(k/SCALE_STEPS), at most 255 steps above the largest less 255
        k = torch.ceil(torch.log2(s.double().clamp_min(2 ** -24)) * SCALE_STEPS)
        return torch.exp2(torch.maximum(k, k.max() - 255) / SCALE_STEPS).float()
    qmax, absmax = 2 ** (bits - 1) - 1, w.abs().amax(dim=1, keepdim=True)
    if clip == "sdclip":
        return on_grid(sigmas * w.std(dim=1, keepdim=True) / qmax)
    best, best_err = None, None
    for frac in ((1.0,) if clip == "absmax" else torch.linspace(0.5, 1.0, 11).tolist()):
        s = on_grid(frac * absmax / qmax)
        err = (w - torch.clamp(torch.round(w / s.float()), -qmax, qmax) * s.float()).square().sum(1, keepdim=True)
        best = s if best is None else torch.where(err < best_err, s, best)
        best_err = err if best_err is None else torch.minimum(err, best_err)
    return best


def quantize_rows(w: torch.Tensor, bits: int, clip: str = "absmax", sigmas: float = 0.0) -> tuple:
    """Round to nearest per row: int8 codes in [-(2^(b-1)-1), 2^(b-1)-1] and a grid scale per row (`row_scales`)."""
    qmax, w = 2 ** (bits - 1) - 1, w.float()
    scale = row_scales(w, bits, clip, sigmas)
    return torch.clamp(torch.round(w / scale.float()), -qmax, qmax).to(torch.int8), scale


@torch.no_grad()
def gptq(w: torch.Tensor, hessian: torch.Tensor, bits: int, scale: torch.Tensor, block: int = 128) -> torch.Tensor:
    """GPTQ codes for w with fixed row scales: columns in descending Hessian-diagonal order (1% damping), each one's
    rounding error spread via the inverse Hessian's Cholesky factor onto those not yet quantised (identity: RTN)."""
    qmax, s, W, H = 2 ** (bits - 1) - 1, scale.float()[:, 0], w.float().clone(), hessian.double().clone()
    dead = H.diagonal() == 0
    H[dead, dead], W[:, dead] = 1.0, 0.0
    H.diagonal().add_(0.01 * H.diagonal().mean())
    order = torch.argsort(H.diagonal(), descending=True, stable=True)
    W, H = W[:, order], H[order][:, order]
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    Q = torch.empty_like(W)
    for i in range(0, W.size(1), block):
        j = min(i + block, W.size(1))
        Wb, err = W[:, i:j], torch.empty(W.size(0), j - i, device=W.device)
        for c in range(j - i):
            Q[:, i + c] = torch.clamp(torch.round(Wb[:, c] / s), -qmax, qmax)
            err[:, c] = (Wb[:, c] - Q[:, i + c] * s) / U[i + c, i + c]
            Wb[:, c:] -= err[:, c:c + 1] * U[i + c, i + c:j]
        W[:, j:] -= err @ U[i:j, j:]
    return Q[:, torch.argsort(order)].to(torch.int8)


def dequantize(t: dict, a: dict) -> np.ndarray:
    """float32 weights of a tensor-table entry from its arrays (numpy, float32)."""
    if t["kind"] == "f16":
        return a["data"].reshape(t["shape"])
    scale = np.exp2((a["scale"].astype(np.float64) + t["scale_log2"]) / SCALE_STEPS).astype(np.float32)
    w = a["q"].reshape(t["shape"]) * scale[:, None]
    if "lqer" in t:  # + A B, the low-rank correction of the quantisation error
        (rows, cols), (rank, group) = t["shape"], t["lqer"]
        A = (a["a"] * a["a_scale"][0]).reshape(rows, rank)
        w = w + A @ (a["b"] * np.repeat(a["b_scale"], group)[:rank * cols]).reshape(rank, cols)
    return w


@torch.no_grad()
def collect_hessians(model: GPT, loader, cfg: Config, rt: Runtime) -> dict:
    """X^T X of each quantised linear's (and the tied head's) inputs over training batches only, summed over ranks."""
    def add(name, x):
        x = x.detach().flatten(0, -2).float()
        with torch.autocast(x.device.type, enabled=False):  # accumulated in fp32 whatever the compute dtype
            hessians[name] = hessians[name].addmm_(x.T, x) if name in hessians else x.T @ x
    hessians = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=name + ".weight": add(n, args[0])) for name, m in
             model.named_modules() if isinstance(m, QATLinear) and quant_bits_for(name + ".weight", cfg) < 16]
    model.head_hook = (lambda x: add("tok_emb.weight", x)) if cfg.quant_bits_embed < 16 else None
    was_training = model.training
    model.eval()
    for _ in range(cfg.gptq_calibration_batches * cfg.micro_batches // rt.world_size):
        x, y = loader.next_batch()
        with rt.autocast():
            model(x, y)
    model.train(was_training)
    for h in hooks:
        h.remove()
    model.head_hook = None
    if rt.world_size > 1:
        for name in sorted(hessians):
            dist.all_reduce(hessians[name])
    return hessians


def quantise_state(state: dict, cfg: Config, hessians: dict | None = None, rt: Runtime | None = None,
                   cache: dict | None = None) -> list[dict]:
    """Per tensor: name, shape, kind ("q": int8 codes + a grid scale per row, optional LQER factors; "f16") and numpy
    arrays. With Hessians, GPTQ codes (each rank a share; `cache` keeps them by settings, for FIT_TO_CAP's trials)."""
    def quantize_grouped(x: torch.Tensor, bits: int, group: int) -> tuple:
        """LQER factor codes in [-2^(b-1), 2^(b-1) - 1], an fp16 scale max|g| / (2^(b-1) - 0.5) per `group` values."""
        flat = x.float().flatten()
        g, half = F.pad(flat, (0, (-len(flat)) % group)).view(-1, group), 2 ** (bits - 1)
        s = (g.abs().amax(1) / (half - 0.5)).clamp_min(2 ** -14).half()
        return torch.clamp(torch.round(g / s.float()[:, None]), -half, half - 1).to(torch.int8).flatten()[:len(flat)], s
    hessians, todo, cache = hessians or {}, {}, {} if cache is None else cache
    for name, t in state.items():
        if (bits := quant_bits_for(name, cfg) if t.ndim == 2 else 16) < 16:
            w = prune_smallest(t.detach().float(), cfg.prune_frac)
            key = (name, bits, cfg.quant_clip, clip_sigmas_for(name, cfg), cfg.prune_frac)
            todo[name] = (w, bits, row_scales(w, bits, cfg.quant_clip, key[3]), key)
    mine = {}  # the GPTQ codes this rank computes: its share of those not in the cache
    for i, name in enumerate(n for n in todo if n in hessians and todo[n][3] not in cache):
        if rt is None or i % rt.world_size == rt.rank:
            w, bits, scale, _ = todo[name]
            mine[name] = gptq(w, hessians[name].to(w.device), bits, scale).cpu()
    cache.update({todo[n][3]: q for n, q in merge_over_ranks(rt, mine).items()})
    entries, errors = [], {}
    for name, t in state.items():
        if name not in todo:
            entries.append(dict(name=name, shape=list(t.shape), kind="f16",
                                arrays=dict(data=t.detach().cpu().half().numpy())))
            continue
        w, bits, scale, key = todo[name]
        w, scale, qmax = w.cpu(), scale.cpu(), 2 ** (bits - 1) - 1
        q = cache[key] if key in cache else torch.clamp(torch.round(w / scale.float()), -qmax, qmax).to(torch.int8)
        errors[name] = w - q.float() * scale.float()
        base, codes = scale_codes(scale[:, 0].numpy())
        entries.append(dict(name=name, shape=list(w.shape), kind="q", scale_log2=base,
                            arrays=dict(q=q.numpy(), scale=codes)))
    for name in sorted(errors, key=lambda n: -errors[n].norm().item())[:cfg.lqer_top_k]:
        U, S, Vh = torch.linalg.svd(errors[name], full_matrices=False)
        rank = min(cfg.lqer_rank, len(S))
        a, a_scale = quantize_grouped(U[:, :rank] * S[:rank], 2, U.size(0) * rank)
        b, b_scale = quantize_grouped(Vh[:rank], cfg.lqer_factor_bits, cfg.lqer_asym_group)
        e = next(e for e in entries if e["name"] == name)
        e["lqer"] = [rank, cfg.lqer_asym_group]
        e["arrays"].update(a=a.numpy(), a_scale=a_scale.numpy(), b=b.numpy(), b_scale=b_scale.numpy())
    return entries


def prune_smallest(w: torch.Tensor, frac: float) -> torch.Tensor:
    """Zero the `frac` smallest-magnitude entries (zeros compress well)."""
    k = int(frac * w.numel())
    return w if k == 0 else torch.where(w.abs() <= w.abs().flatten().kthvalue(k).values, torch.zeros_like(w), w)


def codec(name: str) -> tuple:
    """(compress(raw, cfg), decompress(data, raw_size)) of a COMPRESSOR; decompression never yields more than
    raw_size + 1 bytes (the caller refuses anything but raw_size). Optional packages are imported here only."""
    if name == "zstd":
        def zstd_decompress(data: bytes, raw_size: int) -> bytes:
            if (declared := zstandard.frame_content_size(data)) not in (-1, raw_size):  # refused before allocating
                raise ValueError(f"the zstd frame declares {declared} bytes, the header {raw_size}")
            return zstandard.ZstdDecompressor().stream_reader(data).read(raw_size + 1)
        return lambda raw, cfg: zstandard.ZstdCompressor(level=cfg.zstd_level).compress(raw), zstd_decompress
    if name == "lzma":
        import lzma
        return (lambda raw, cfg: lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME, check=lzma.CHECK_NONE),
                lambda data, n: lzma.LZMADecompressor().decompress(data, max_length=n + 1))
    if name == "brotli":
        import brotli
        return (lambda raw, cfg: brotli.compress(raw, quality=11, lgwin=24),
                lambda data, n: brotli.Decompressor().process(data, output_buffer_limit=n + 1))
    if name == "ans":  # order-0 ANS of int8 codes: i8 lowest code, u16 levels, u32 histogram, the coded words
        import brotli  # noqa: F401  (an ans artifact keeps its other streams in brotli)
        import constriction
        model = lambda counts: constriction.stream.model.Categorical(  # noqa: E731
            counts.astype(np.float64), perfect=False)

        def compress(raw, cfg):
            x = np.frombuffer(raw, np.int8).astype(np.int32)
            lo = int(x.min()) if x.size else 0
            counts, coder = np.bincount(x - lo, minlength=1), constriction.stream.stack.AnsCoder()
            if len(counts) > 1:
                coder.encode_reverse(x - lo, model(counts))
            header = struct.pack("<bH", lo, len(counts)) + counts.astype("<u4").tobytes()
            return header + coder.get_compressed().astype("<u4").tobytes()

        def decompress(data, n):
            lo, k = struct.unpack_from("<bH", data)
            counts = np.frombuffer(data, "<u4", k, 3)
            if not 1 <= k <= 256 or int(counts.sum(dtype=np.uint64)) != n or (len(data) - 3 - 4 * k) % 4:
                raise ValueError("malformed ANS stream: its histogram does not hold the declared size")
            if k == 1:
                return np.full(n, lo, np.int8).tobytes()
            words = np.frombuffer(data, "<u4", offset=3 + 4 * k).astype(np.uint32)
            return (constriction.stream.stack.AnsCoder(words).decode(model(counts), n) + lo).astype(np.int8).tobytes()
        return compress, decompress
    raise ValueError(f"unknown codec {name!r}")


def compress_stream(raw: bytes, codes: bool, cfg: Config) -> tuple[str, bytes]:
    """(codec, compressed bytes) of one stream under COMPRESSOR; with ans, code streams in ANS or, if smaller (decided
    on a sample first: brotli-11 is slow), brotli (LZ wins on near-duplicate rows), other streams in brotli."""
    if cfg.compressor != "ans" or not codes:
        return (name := cfg.compressor if cfg.compressor != "ans" else "brotli"), codec(name)[0](raw, cfg)
    (ans, _), (brotli, _) = codec("ans"), codec("brotli")
    names = ["ans"] + (["brotli"] if len(raw) <= SAMPLE_BYTES or len(brotli(sample := raw[:SAMPLE_BYTES], cfg))
                       < len(ans(sample, cfg)) else [])
    return min(((n, codec(n)[0](raw, cfg)) for n in names), key=lambda c: len(c[1]))


def pack_artifact(entries: list[dict], cfg: Config, score: dict | None = None, rt: Runtime | None = None) -> bytes:
    """Serialise quantised entries as: magic, u16 version, u32 compressed and u32 raw header length, zlib(JSON header:
    model config, score settings, tensor table, streams), the compressed streams, and a sha256 of all before it."""
    streams = {}  # the codes of each matrix role (across layers) together; the rest (scales, fp16, LQER) in "other"
    for e in entries:
        for key, arr in e["arrays"].items():
            role = re.sub(r"^blocks\.\d+\.", "", e["name"]) if key == "q" else "other"
            streams.setdefault(role, []).append((e, key, arr))
    table, raws = [dict(e, arrays={}) for e in entries], []
    index = {e["name"]: t for e, t in zip(entries, table)}
    for i, (role, items) in enumerate(streams.items()):
        offset = 0
        for e, key, arr in items:
            index[e["name"]]["arrays"][key] = [i, offset, arr.dtype.str[1:], arr.size]
            offset += arr.nbytes
        raws.append((b"".join(arr.tobytes() for _, _, arr in items), role != "other"))
    rank, world = (rt.rank, rt.world_size) if rt is not None else (0, 1)  # streams shared out over the ranks
    mine = sorted(range(len(raws)), key=lambda i: -len(raws[i][0]))[rank::world]
    workers = max(1, min(len(mine), (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # in threads: the codecs release the GIL
        done = dict(zip(mine, pool.map(lambda i: compress_stream(*raws[i], cfg), mine)))
    compressed = [c for _, c in sorted(merge_over_ranks(rt, done).items())]  # (codec, bytes) per stream, in order
    meta = [dict(codec=name, raw=len(raw), size=len(body), crc32=zlib.crc32(raw))
            for (raw, _), (name, body) in zip(raws, compressed)]
    header = json.dumps(dict(model={k: getattr(cfg, k) for k in MODEL_FIELDS}, score=score or {}, tensors=table,
                             streams=meta)).encode()
    packed = zlib.compress(header, 9)
    head = (ARTIFACT_MAGIC + struct.pack("<HII", ARTIFACT_VERSION, len(packed), len(header)) + packed
            + b"".join(body for _, body in compressed))
    return head + hashlib.sha256(head).digest()


def packed_code_bytes(code: bytes) -> int:
    """Upper bound of this script's size as records/make_submission.py --pack-code ships it (lzma, before minifying)."""
    import base64
    import lzma
    return len(base64.b85encode(lzma.compress(code, format=lzma.FORMAT_ALONE, preset=9 | lzma.PRESET_EXTREME))) + 160


def counted_code_bytes(cfg: Config, code: tuple) -> int:
    """Code bytes counted against the cap: the script itself, or its packed form (CODE_BYTES=packed)."""
    return code[2] if cfg.code_bytes == "packed" else len(code[0])


def forecast_artifact_bytes(model: GPT, cfg: Config) -> int:
    """Artifact bytes forecast from the shapes, per tensor at a quantised Gaussian tensor's compressed bytes/value."""
    per_value, total = {}, 80 * len(model.state_dict())  # + the compressed header, per tensor
    for name, p in model.state_dict().items():
        bits = quant_bits_for(name, cfg) if p.ndim == 2 else 16
        if (key := (bits, clip_sigmas_for(name, cfg))) not in per_value:
            w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
            if bits < 16:
                q, scale = quantize_rows(w, bits, cfg.quant_clip, key[1])
                raw = q.numpy().tobytes() + scale_codes(scale.numpy())[1].tobytes() * (2 if cfg.lqer_top_k else 1)
            else:
                raw = (w * 0.02).half().numpy().tobytes()
            per_value[key] = len(codec(cfg.compressor)[0](raw, cfg)) / w.numel()
        total += per_value[key] * p.numel()
    return int(total)


def cap_steps(cfg: Config) -> list[dict]:
    """FIT_TO_CAP's next steps from `cfg`, each one setting coarser: with SDClip, a class's clip (MLP, attention,
    embedding, other matrices) 4% wider (about 0.06 bits per code); else 1 bit less for a class, or 3% more pruning."""
    if cfg.quant_clip == "sdclip":
        return [{k: round(getattr(cfg, k) * 1.04, 6)} for k in ("mlp_clip_sigmas", "attn_clip_sigmas",
                                                                "embed_clip_sigmas", "matrix_clip_sigmas")]
    bits = [{k: 8 if v == 16 else v - 1} for k in ("quant_bits_mlp", "quant_bits_attn", "quant_bits_bigram",
                                                   "quant_bits_embed") if (v := getattr(cfg, k)) > 3]
    return bits + ([{"prune_frac": round(cfg.prune_frac + 0.03, 6)}] if cfg.prune_frac < 0.3 else [])


def export_artifact(cfg: Config, rt: Runtime, log: RunLog, model: GPT, run_model, val: ValData, hessians,
                    code_bytes: int, score: dict) -> bytes:
    """The artifact's bytes (every rank quantises and packs, so all agree on sizes). FIT_TO_CAP: while code + artifact >
    cap - CAP_MARGIN_BYTES, take the `cap_steps` step of least plain bpb rise per byte saved; then bisect the last."""
    cache = {}

    def build(c: Config) -> tuple:
        t0, entries = time.perf_counter(), quantise_state(state, c, hessians, rt, cache)
        return entries, pack_artifact(entries, c, score, rt), time.perf_counter() - t0

    def plain_bpb(entries) -> float:  # on the first 2M validation tokens at most: a cost to compare steps by
        model.load_state_dict({e["name"]: torch.from_numpy(dequantize(e, {k: a.astype(np.float32) for k, a in
                                                                          e["arrays"].items()})) for e in entries})
        n = min(val.num_targets, max(1 << 21, cfg.eval_seq_len) // cfg.eval_seq_len * cfg.eval_seq_len)
        return evaluate(run_model, ValData(val.tokens[:n + 1], val.target_bytes[:n], n, False), cfg, rt,
                        cfg.eval_seq_len)[1]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    entries, blob, seconds = build(cfg)
    log(f"export: {len(blob)} bytes in {seconds:.1f}s (QUANT_METHOD={cfg.quant_method} QUANT_CLIP={cfg.quant_clip} "
        f"LQER_TOP_K={cfg.lqer_top_k} COMPRESSOR={cfg.compressor})")
    target, c, t0 = SIZE_CAP_BYTES - cfg.cap_margin_bytes, cfg, time.perf_counter()
    named = lambda step: " ".join(f"{k.upper()}={v}" for k, v in step.items())  # noqa: E731
    if cfg.fit_to_cap and len(blob) + code_bytes > target:
        bpb, step, last = plain_bpb(entries), {}, c
        for _ in range(64):  # (each step makes one setting coarser: the bytes fall)
            if len(blob) + code_bytes <= target or not (steps := cap_steps(c)):
                break
            trials = []
            for step in steps:  # (trial bpb, bytes saved, step, entries, blob): a step saving no byte is not scored
                e, b, _ = build(replace(c, **step))
                trials.append((plain_bpb(e) if len(b) < len(blob) else math.inf, len(blob) - len(b), step, e, b))
                log(f"fit_to_cap: trial {named(step)}: {len(b)} bytes ({-trials[-1][1]:+d}), plain bpb "
                    f"{trials[-1][0] - bpb:+.4e}")
            cost = lambda t: (t[1] <= 0, max(t[0] - bpb, 0) / max(t[1], 1), -t[1])  # noqa: E731 (free: most bytes)
            new_bpb, saved, step, entries, blob = min(trials, key=cost)
            log(f"fit_to_cap: chose {named(step)}: artifact {len(blob)} + code {code_bytes} = "
                f"{len(blob) + code_bytes} bytes (target {target}), "
                f"{(new_bpb - bpb) * 1e6 / max(saved, 1):+.3f} bpb per MB saved")
            last, c, bpb = c, replace(c, **step), new_bpb if saved > 0 else bpb
        lo = {k: getattr(last, k) for k in step}  # the last step halved 3 times: the least coarse setting that fits
        for _ in range(3 if len(blob) + code_bytes <= target and all(type(v) is float for v in step.values()) else 0):
            _, b, _ = build(replace(last, **(mid := {k: round((lo[k] + v) / 2, 6) for k, v in step.items()})))
            log(f"fit_to_cap: bisect {named(mid)}: artifact {len(b)} + code {code_bytes} = {len(b) + code_bytes} bytes")
            step, blob, lo = (mid, b, lo) if len(b) + code_bytes <= target else (step, blob, mid)
        model.load_state_dict(state)
        log(f"fit_to_cap: {'fits' if len(blob) + code_bytes <= target else 'still over'} after "
            f"{time.perf_counter() - t0:.1f}s")
    return blob


def read_artifact_header(path: str) -> tuple[dict, bytes]:
    """(validated header, the bytes after it) of an artifact whose checksum covers every byte."""
    if (p := Path(path)).is_dir():
        raise ArtifactError(f"{path}: a folder, not an artifact file")
    try:
        if p.stat().st_size > MAX_PAYLOAD_BYTES:
            raise ArtifactError(f"{path}: {p.stat().st_size} bytes, larger than any artifact: not an artifact")
        blob = p.read_bytes()
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read artifact ({e.strerror})") from None
    head = len(ARTIFACT_MAGIC) + 10
    if len(blob) < head or not blob.startswith(ARTIFACT_MAGIC):
        raise ArtifactError(f"{path}: not an artifact written by train_gpt.py (wrong leading bytes)")
    version, size, raw_size = struct.unpack_from("<HII", blob, len(ARTIFACT_MAGIC))
    if version != ARTIFACT_VERSION:
        raise ArtifactError(f"{path}: artifact format version {version}; this script reads version {ARTIFACT_VERSION} "
                            "(re-export it with the train_gpt.py that wrote it, or retrain)")
    if len(blob) < head + size + 32 or hashlib.sha256(blob[:-32]).digest() != blob[-32:]:
        raise ArtifactError(f"{path}: checksum mismatch: the file is truncated or corrupted; copy it again")
    try:
        text = zlib.decompressobj().decompress(blob[head:head + size], raw_size + 1) if raw_size < 1 << 26 else b""
        if len(text) != raw_size:
            raise ValueError(f"the header declares {raw_size} bytes and holds {len(text)} (at most 64 MiB)")
        header = json.loads(text)
        check_header(header, len(blob) - head - size - 32)
    except (ValueError, KeyError, TypeError, IndexError, ConfigError, zlib.error) as e:
        raise ArtifactError(f"{path}: malformed header ({type(e).__name__}: {e})") from None
    return header, blob[head + size:-32]


def check_header(h: dict, body_size: int) -> None:
    """Refuse any header field of the wrong type, outside its allowed range, or pointing outside the data."""
    types = {"int": int, "float": (int, float), "bool": bool, "str": str}
    for group, names in (("model", MODEL_FIELDS), ("score", SCORE_FIELDS)):
        for k in names if group == "model" else h[group]:
            f, v = ENV_NAMES[k.upper()], h[group][k]
            if not isinstance(v, types[f.type]) or (f.type == "int" and isinstance(v, bool)):
                raise ValueError(f"{group}.{k}={v!r} is not a {f.type}")
            finite = f.type != "float" or math.isfinite(v)
            if msg := allowed_problem(k.upper(), v, f.metadata["allowed"]) if finite else "not finite":
                raise ValueError(f"{group}.{k}: {msg}")
    validate_config(replace(DEFAULTS, **h["model"], micro_batches=1, train_batch_tokens=h["model"]["train_seq_len"],
                            eval_stride=1, eval_seq_len=0, swa_every=0), 1)
    streams = h["streams"]
    for s in streams:
        if s["codec"] not in ("zstd", "lzma", "brotli", "ans") or not isinstance(s["crc32"], int) or not all(
                isinstance(s[k], int) and 0 <= s[k] <= MAX_PAYLOAD_BYTES for k in ("raw", "size")):
            raise ValueError(f"stream {s!r}: unknown codec or size outside [0, {MAX_PAYLOAD_BYTES}]")
    if (end := sum(s["size"] for s in streams)) != body_size:
        raise ValueError(f"the streams declare {end} bytes, the file holds {body_size}")
    for t in h["tensors"]:
        shape, arrays = t["shape"], t["arrays"]
        if not (isinstance(t["name"], str) and isinstance(shape, list) and len(shape) <= 4
                and all(isinstance(n, int) and 1 <= n <= MAX_PAYLOAD_BYTES for n in shape)):
            raise ValueError(f"tensor {t.get('name')!r}: bad name or shape {shape!r}")
        n = math.prod(shape)
        expect = {"f16": {"data": n}, "q": {"q": n, "scale": shape[0] if shape else 0}}.get(t["kind"], {})
        if t["kind"] == "q" and not (isinstance(t.get("scale_log2"), int) and abs(t["scale_log2"]) <= 64 * SCALE_STEPS):
            raise ValueError(f"tensor {t['name']!r}: scale_log2 {t.get('scale_log2')!r} is not a whole number in "
                             f"[-{64 * SCALE_STEPS}, {64 * SCALE_STEPS}]")
        if t["kind"] == "q" and "lqer" in t:
            rank, group = t["lqer"]
            if not (len(shape) == 2 and isinstance(rank, int) and 1 <= rank <= min(shape) and isinstance(group, int)
                    and group >= 1):
                raise ValueError(f"tensor {t['name']!r}: bad LQER rank/group {t['lqer']!r}")
            expect.update(a=shape[0] * rank, a_scale=1, b=rank * shape[1], b_scale=-(-rank * shape[1] // group))
        if not expect or set(arrays) != set(expect) or (t["kind"] == "q" and len(shape) != 2):
            raise ValueError(f"tensor {t['name']!r}: unknown kind {t['kind']!r} or arrays {sorted(arrays)}")
        for key, (stream, offset, dtype, count) in arrays.items():
            if (not isinstance(stream, int) or not 0 <= stream < len(streams) or dtype not in ARRAY_DTYPES
                    or count != expect[key] or not isinstance(offset, int) or offset < 0
                    or offset + count * np.dtype(ARRAY_DTYPES[dtype]).itemsize > streams[stream]["raw"]):
                raise ValueError(f"tensor {t['name']!r}: array {key} {[stream, offset, dtype, count]} is out of bounds")
    ends = [0] * len(streams)  # each stream holds its arrays back to back, nothing else
    for s, a, b in sorted((s, o, o + n * np.dtype(ARRAY_DTYPES[d]).itemsize) for t in h["tensors"]
                          for s, o, d, n in t["arrays"].values()):
        if a != ends[s]:
            raise ValueError(f"stream {s}: an array starts at byte {a} where the one before it ends at {ends[s]} "
                             "(arrays overlap or leave a gap)")
        ends[s] = b
    if (i := next((i for i, s in enumerate(streams) if ends[i] != s["raw"]), None)) is not None:
        raise ValueError(f"stream {i}: its arrays end at byte {ends[i]}, it holds {streams[i]['raw']}")


def read_artifact(path: str) -> tuple[dict, dict]:
    """(header, float32 state dict) of an artifact: parses JSON and raw numbers only, within the declared sizes."""
    header, body = read_artifact_header(path)
    streams, at = [], 0
    for i, s in enumerate(header["streams"]):
        try:
            streams.append(raw := codec(s["codec"])[1](body[at:at + s["size"]], s["raw"]))
            if len(raw) != s["raw"] or zlib.crc32(raw) != s["crc32"]:
                raise ValueError(f"it decodes to {len(raw)} bytes (or more) with CRC-32 {zlib.crc32(raw)}, the header "
                                 f"declares {s['raw']} with {s['crc32']} (another codec package version?)")
        except ImportError as e:
            raise ArtifactError(f"{path}: stream {i} is {s['codec']}-compressed: pip install {e.name}") from None
        except Exception as e:  # each codec raises its own error types
            raise ArtifactError(f"{path}: stream {len(streams)} cannot be decompressed ({e})") from None
        at += s["size"]
    state = {}
    for t in header["tensors"]:
        arrays = {k: np.frombuffer(streams[s], ARRAY_DTYPES[d], n, o).astype(np.float32)
                  for k, (s, o, d, n) in t["arrays"].items()}
        state[t["name"]] = torch.from_numpy(dequantize(t, arrays))
    return header, state


# ================================= evaluation =================================
class EvalError(Exception):
    """No honest score can be given; the message says why (no score is printed)."""


def eval_windows(num_targets: int, seq_len: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Window starts and, per window, the first position it scores: a window covers targets [start, start + seq_len)
    and scores only those no earlier window reached (each exactly once); stride = seq_len is plain, non-overlapping."""
    if not 1 <= stride <= seq_len <= num_targets:
        raise EvalError(f"eval windows need 1 <= stride ({stride}) <= eval length ({seq_len}) <= validation "
                        f"targets ({num_targets}); fix EVAL_STRIDE / EVAL_SEQ_LEN")
    starts = torch.arange(0, num_targets - seq_len + 1, stride)
    if starts[-1] + seq_len < num_targets:
        starts = torch.cat([starts, torch.tensor([num_targets - seq_len])])
    score_from = torch.zeros_like(starts)
    score_from[1:] = seq_len - (starts[1:] - starts[:-1])
    return starts, score_from


def eval_batches(starts: torch.Tensor, score_from: torch.Tensor, batch: int, seq_len: int) -> list[tuple]:
    """(first, window starts, first scored position per window) batches of exactly `batch` windows run on positions
    first.. (0 if all score, else seq_len - stride), the last padded with non-scoring ones: 2 shapes, any world size."""
    out, whole = [], score_from == 0
    for group in (whole, ~whole):
        s, f = starts[group], score_from[group]
        first = int(f.min()) if len(f) else 0
        for i in range(0, len(s), batch):
            pad = batch - len(s[i:i + batch])
            out.append((first, torch.cat((s[i:i + batch], s[i:i + 1].expand(pad))),
                        torch.cat((f[i:i + batch], f.new_full((pad,), seq_len)))))
    return out


def warm_eval(run_model: nn.Module, cfg: Config, rt: Runtime) -> float:
    """Seconds to compile the evaluation's two forward shapes (looping on, dummy tokens): no stall in a timed eval."""
    t0, model = rt.clock(), getattr(run_model, "_orig_mod", run_model)
    looping, model.looping = model.looping, cfg.num_loops > 0
    with torch.inference_mode(), rt.autocast():  # inputs made here are inference tensors, as evaluate()'s are
        x = torch.zeros(cfg.eval_batch_seqs, cfg.eval_seq_len, dtype=torch.long, device=rt.device)
        model.eval()
        for first in sorted({0, cfg.eval_seq_len - cfg.eval_stride}):
            run_model(x, torch.zeros_like(x), first)  # two tensors: dynamo guards on aliasing
    model.train()
    model.looping = looping
    return rt.clock() - t0


def timed_evaluate(model: nn.Module, val: ValData, cfg: Config, rt: Runtime, stride: int, log=None) -> tuple:
    """(val_loss, val_bpb, seconds) of `evaluate`, timed to the end of the device work."""
    t0 = rt.clock()
    loss, bpb = evaluate(model, val, cfg, rt, stride, log)
    return loss, bpb, rt.clock() - t0


@torch.inference_mode()
def evaluate(model: nn.Module, val: ValData, cfg: Config, rt: Runtime, stride: int, log=None) -> tuple[float, float]:
    """(val_loss in nats, val_bpb) over every target once: batches dealt round-robin to ranks; scored count checked."""
    L = cfg.eval_seq_len
    mine = eval_batches(*eval_windows(val.num_targets, L, stride), cfg.eval_batch_seqs, L)[rt.rank::rt.world_size]
    positions = torch.arange(L, device=rt.device)
    sums, scored, was_training = torch.zeros(2, dtype=torch.float64, device=rt.device), 0, model.training  # nll, bytes
    model.eval()
    t0 = time.perf_counter()
    for b, (first, starts, score_from) in enumerate(mine):
        idx = starts.to(rt.device)[:, None] + positions
        scores = positions[first:] >= score_from.to(rt.device)[:, None]  # the padding windows score nothing
        with rt.autocast():
            nll = model(val.tokens[idx].long(), val.tokens[idx + 1].long(), first)
        sums += torch.stack([torch.where(scores, nll.double(), 0).sum(),
                             torch.where(scores, val.target_bytes[idx[:, first:]], 0).sum().double()])
        scored += int((L - score_from.clamp(min=first)).sum())
        if log and (b + 1) % max(1, len(mine) // 10) == 0:
            nll_sum, byte_sum = sums.tolist()
            log(f"sliding_eval: {100 * (b + 1) // len(mine)}% batches:{b + 1}/{len(mine)} (rank 0) "
                f"running_bpb:{nll_sum / math.log(2) / max(byte_sum, 1):.4f} elapsed:{time.perf_counter() - t0:.1f}s")
    model.train(was_training)
    return score_from_sums(rt, sums, scored, val.num_targets)


def score_from_sums(rt: Runtime, sums: torch.Tensor, scored: int, num_targets: int) -> tuple[float, float]:
    """(val_loss, val_bpb) of all ranks' (nll, bytes) sums; refused unless finite, with exactly num_targets scored."""
    totals = torch.cat([sums.cpu(), torch.tensor([float(scored)], dtype=torch.float64)])
    if rt.world_size > 1:
        dist.all_reduce(totals, group=rt.host_group)
    nll_sum, byte_sum, scored = totals.tolist()
    if scored != num_targets:
        raise EvalError(f"the evaluation scored {scored:.0f} targets but the validation split has {num_targets}: "
                        "no score is given (please report this as a bug)")
    loss, bpb = nll_sum / scored, nll_sum / math.log(2) / byte_sum
    if not (math.isfinite(loss) and math.isfinite(bpb)):
        raise EvalError(f"the score is not finite (val_loss {loss}, val_bpb {bpb}): the weights give non-finite "
                        "losses; no score is given")
    return loss, bpb


def documents(val: ValData) -> list[tuple[int, int]]:
    """(start, end) per document: BOS at `start`, targets start+1 .. end (the next BOS): every target in exactly one."""
    bos = torch.nonzero(val.tokens[1:val.num_targets].cpu() == BOS_ID).flatten().add(1).tolist()
    return list(zip([0] + bos, bos + [val.num_targets]))


def evaluate_documents(model: GPT, val: ValData, cfg: Config, rt: Runtime, adapt: bool, log, t_start: float,
                       trace: list | None = None) -> tuple:
    """(val_loss, val_bpb, notes), each batch row one document (no DOC_MASK needed), scored chunk by chunk (EVAL_STRIDE
    or TTT_CHUNK_SIZE tokens) in windows of at most EVAL_SEQ_LEN of its tokens. With `adapt` (TTT) each chunk is scored,
    then its rows' LoRA adapters (fresh per batch, seeded by it) take an AdamW step on it; PHASED_TTT_NUM_PHASES: SGD of
    the base weights on the documents scored so far at each phase boundary. Adaptation stops if the forecast overruns
    EVAL_BUDGET_SECONDS (all targets are still scored). `trace` (tests) gets ("score"|"adapt", docs, chunk, losses)."""
    def global_sgd(scored: list) -> int:
        """Phased TTT: an SGD pass (momentum, cosine LR, clipped rank-mean grads) over `scored` documents; its steps."""
        tokens = torch.cat([val.tokens[s:e + 1] for s, e in scored] + [val.tokens[:0]]).long()
        seqs = tokens[:len(tokens) // (cfg.eval_seq_len + 1) * (cfg.eval_seq_len + 1)].view(-1, cfg.eval_seq_len + 1)
        per_step = max(1, cfg.global_ttt_chunk_tokens // cfg.eval_seq_len)
        steps, params = -(-len(seqs) // per_step), list(model.parameters())
        opt = torch.optim.SGD(params, lr=cfg.global_ttt_lr, momentum=cfg.global_ttt_momentum)
        model.requires_grad_(True).train().doc_mask = cfg.doc_mask  # these rows hold many documents, as in training
        for i in range(steps):
            opt.param_groups[0]["lr"] = cfg.global_ttt_lr * 0.5 * (1 + math.cos(math.pi * i / max(steps - 1, 1)))
            if len(mine := seqs[i * per_step:(i + 1) * per_step][rt.rank::rt.world_size]):
                with rt.autocast():
                    (model(mine[:, :-1], mine[:, 1:]).sum() / (per_step * cfg.eval_seq_len)).backward()
            for p in params:
                p.grad = p.grad if p.grad is not None else torch.zeros_like(p)
                if rt.world_size > 1:
                    dist.all_reduce(p.grad)
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
            torch._foreach_mul_([p.grad for p in params], (cfg.global_ttt_grad_clip / (norm + 1e-6)).clamp(max=1.0))
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.eval().requires_grad_(False).doc_mask = False
        return steps
    docs, chunk, L = documents(val), cfg.ttt_chunk_size if adapt else cfg.eval_stride, cfg.eval_seq_len
    model.doc_mask = False
    phases = cfg.phased_ttt_num_phases if adapt else 0
    bounds = sorted({min(cfg.phased_ttt_prefix_docs * k // phases, len(docs)) for k in range(1, phases + 1)}
                    - {0} | {len(docs)})  # (a phase with no document scored before it has nothing to learn from)
    segments = []
    for lo_doc, hi in zip([0] + bounds, bounds):  # within a phase, documents of similar length share a batch
        order = sorted(range(lo_doc, hi), key=lambda d: docs[d][0] - docs[d][1])
        segments.append([order[i:i + cfg.ttt_batch_size] for i in range(0, len(order), cfg.ttt_batch_size)])
    targets, flags = [], (cfg.ttt_q_lora, cfg.ttt_k_lora, cfg.ttt_v_lora, cfg.ttt_o_lora)
    for block in model.blocks if adapt else []:  # (module, in, out) that TTT adapts: Q, K, V, O, the MLP, the head
        targets += [(m, m.in_features, m.out_features)
                    for flag, m in zip(flags, (block.attn.q, block.attn.k, block.attn.v, block.attn.proj)) if flag]
        if cfg.ttt_mlp_lora:
            targets.append((block.mlp, cfg.model_dim, cfg.model_dim))
    targets += [(model, cfg.model_dim, cfg.vocab_size)] if adapt and cfg.ttt_head_lora else []
    scale = cfg.ttt_lora_alpha / cfg.ttt_lora_rank
    sums, scored, notes, times = torch.zeros(2, dtype=torch.float64, device=rt.device), 0, [], []
    total = sum(map(len, segments))  # document batches
    model.eval().requires_grad_(False)
    for k, segment in enumerate(segments):
        before = sum(map(len, segments[:k]))  # batches of the earlier phases
        for r in range(0, len(segment), rt.world_size):  # a round: one batch per rank, then the ranks agree
            batch, t0 = segment[r + rt.rank] if r + rt.rank < len(segment) else None, time.perf_counter()
            if batch is not None:  # adapters seeded by the batch's index: any process count, the same adapters
                gen = torch.Generator(rt.device).manual_seed(cfg.seed + 7919 * (before + r + rt.rank))
                params = [t.requires_grad_() for _, i, o in targets for t in (
                    torch.rand(len(batch), cfg.ttt_lora_rank, i, generator=gen, device=rt.device).mul_(2).sub_(1)
                    .mul_(i ** -0.5), torch.zeros(len(batch), o, cfg.ttt_lora_rank, device=rt.device))]
                opt = torch.optim.AdamW(params, lr=cfg.ttt_lora_lr, betas=(cfg.ttt_beta1, cfg.ttt_beta2), eps=1e-10,
                                        weight_decay=cfg.ttt_weight_decay) if params else None
                spans = np.array([docs[d] for d in batch])  # longest first: the rows still scoring are a prefix
                n_chunks = (spans[:, 1] - spans[:, 0] + chunk - 1) // chunk
                for c in range(int(n_chunks.max())):  # windows planned on the host: no device sync per chunk
                    live = int((n_chunks > c).sum())
                    a = spans[:live, 0] + 1 + c * chunk  # the chunk's first target; b: one past its last
                    b = np.minimum(a + chunk, spans[:live, 1] + 1)
                    lo = np.maximum(spans[:live, 0], b - 1 - L)
                    n = b - 1 - lo  # window lengths: the chunk's targets are the last b - a positions
                    first, pos = int((n - (b - a)).min()), np.arange(int(n.max()))
                    scores = (pos[first:] >= (n - (b - a))[:, None]) & (pos[first:] < n[:, None])
                    learn = (n_chunks[:live] > c + 1)[:, None] & scores  # a document's last chunk teaches nothing
                    idx = torch.from_numpy(np.minimum(lo[:, None] + pos, val.num_targets - 1)).to(rt.device)
                    mask = torch.from_numpy(scores).to(rt.device)
                    for (m, _, _), p_a, p_b in zip(targets, params[0::2], params[1::2]):
                        m.lora = (p_a[:live], p_b[:live], scale)
                    with torch.set_grad_enabled(opt is not None), rt.autocast():
                        nll = model(val.tokens[idx].long(), val.tokens[idx + 1].long(), first) * mask
                    sums += torch.stack([nll.detach().double().sum(),
                                         (val.target_bytes[idx[:, first:]] * mask).sum().double()])
                    scored += int(scores.sum())
                    if trace is not None:
                        trace.append(("score", batch[:live], c, nll.detach().sum(1).tolist()))
                    if opt is not None and learn.any():
                        weights = torch.from_numpy(learn / learn.sum(1, keepdims=True).clip(1)).to(rt.device)
                        (nll * weights.to(nll.dtype)).sum().backward()
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                        if trace is not None:
                            trace.append(("adapt", [batch[i] for i in np.flatnonzero(learn.any(1))], c, None))
                for m, _, _ in targets:
                    m.lora = None
                rt.sync()
                times.append(time.perf_counter() - t0)
            done = before + min(r + rt.world_size, len(segment))
            elapsed, forecast = rt.max_over_ranks([time.perf_counter() - t_start,
                                                   float(np.mean(times or [0])) * (total - done) / rt.world_size])
            if targets and elapsed + forecast > cfg.eval_budget_seconds:
                targets, phases = [], 0
                notes.append(f"eval budget: {elapsed:.0f}s spent and about {forecast:.0f}s to go with adaptation, over "
                             f"EVAL_BUDGET_SECONDS={cfg.eval_budget_seconds:g}: adaptation stops after {done} of "
                             f"{total} document batches; every remaining target is still scored")
                log(notes[-1])
        if k < min(phases, len(segments) - 1) and targets:  # nothing is left to score after the last segment
            steps = global_sgd([docs[d] for seg in segments[:k + 1] for bt in seg for d in bt])
            log(f"ttt: phase {k + 1}/{phases}: global SGD, {steps} steps over the {bounds[k]} documents scored so far")
    model.requires_grad_(True).doc_mask = cfg.doc_mask
    return (*score_from_sums(rt, sums, scored, val.num_targets), notes)


# ==================================== main ====================================
ERROR_KINDS = {DataError: ("data error", 2), EvalError: ("evaluation error", 1), ArtifactError: ("artifact error", 2),
               ConfigError: ("configuration error", 2), TrainingStopped: ("training stopped", 1)}


def select_kernels(cfg: Config, device: torch.device, bf16: bool) -> tuple[str, Kernels]:
    """(names for the log, kernels): ATTN_BACKEND's attention (DOC_MASK's if on), FUSED_KERNELS (auto: CPU in bf16)."""
    name, attention, mask = select_attention(cfg.attn_backend, device, bf16, cfg.doc_mask)
    fused = cfg.fused_kernels == "1" or (cfg.fused_kernels == "auto" and device.type == "cpu" and bf16)
    fns = (RMSNorm.apply, NormRotary.apply, SquaredAct.apply, HeadLoss.apply) if fused else ()
    doc = " doc_mask:on" if cfg.doc_mask else ""
    return f"{name}{doc} kernels:{'fused' if fused else 'reference'}", Kernels(attention, mask, *fns)


def log_header(log, cfg: Config, rt: Runtime | None, mode: str, code: tuple, attention: str, warnings) -> None:
    """Identity of the run; the settings that differ from the recipe; every setting (log file only)."""
    if getattr(log, "path", None):
        print(f"log: {log.path}", flush=True)
    log(f"train_gpt run_id:{cfg.run_id} mode:{mode} recipe:{cfg.recipe}")
    log(f"code sha256:{code[1]} bytes:{len(code[0])}")
    log(f"versions python:{platform.python_version()} torch:{torch.__version__} numpy:{np.__version__} "
        f"zstandard:{zstandard.__version__} sentencepiece:{spm.__version__}")
    if rt is not None:
        log(f"device type:{rt.device.type} name:{device_name(rt.device)} world_size:{rt.world_size} "
            f"backend:{dist.get_backend() if dist.is_initialized() else 'none'} attention:{attention} "
            f"compile:{cfg.compile} precision:{rt.autocast_dtype or torch.float32}")
    log(f"settings that differ from the {cfg.recipe} recipe: "
        + (" ".join(f"{k}={v}" for k, v in non_default_settings(cfg).items()) or "none"))
    log("config:", console=False)
    for k, v in asdict(cfg).items():
        log(f"  {k.upper()}={v}", console=False)
    for w in warnings:
        log(f"warning: {w}")


def load_artifact_weights(model: nn.Module, path: str) -> None:
    """Load an artifact's weights, refused unless its tensors are exactly this model's."""
    _, state = read_artifact(path)
    ours, theirs = ({k: list(v.shape) for k, v in sd.items()} for sd in (model.state_dict(), state))
    if ours != theirs:
        raise ArtifactError(f"{path}: its tensors do not match the model its header describes "
                            f"({len(set(map(str, ours.items())) ^ set(map(str, theirs.items())))} differ)")
    model.load_state_dict(state)


def final_evaluation(cfg: Config, rt: Runtime, log: RunLog, model: GPT, run_model, val: ValData, code: tuple,
                     summary: dict) -> int:
    """Score the artifact's weights as read back, report size, write the summary; the last line is the challenge's."""
    t_start = time.perf_counter()
    if not cfg.eval_only:  # EVAL_ONLY loaded them before the log was opened
        load_artifact_weights(model, cfg.artifact_path)
    load_s = time.perf_counter() - t_start + summary.get("artifact_load_s", 0.0)
    compile_s = warm_eval(run_model, cfg, rt) if cfg.eval_only and cfg.compile == "1" else 0.0  # (training: warm-up)
    r_loss, r_bpb, r_time = timed_evaluate(run_model, val, cfg, rt, cfg.eval_seq_len)
    log(f"final_roundtrip_exact val_loss:{r_loss:.8f} val_bpb:{r_bpb:.8f} eval_time:{1000 * r_time:.0f}ms")
    t0, notes = time.perf_counter(), []
    if cfg.eval_mode != "sliding":
        s_loss, s_bpb, notes = evaluate_documents(model, val, cfg, rt, cfg.eval_mode == "ttt", log, t_start - load_s)
        rt.sync()
    elif cfg.eval_stride == cfg.eval_seq_len:  # sliding at stride = window length is the plain evaluation
        s_loss, s_bpb = r_loss, r_bpb
    else:
        s_loss, s_bpb = evaluate(run_model, val, cfg, rt, cfg.eval_stride, log)
        rt.sync()
    s_time = time.perf_counter() - t0 if cfg.eval_mode != "sliding" or cfg.eval_stride != cfg.eval_seq_len else r_time
    total_s = time.perf_counter() - t_start + load_s
    log(f"final_{cfg.eval_mode}_exact val_loss:{s_loss:.8f} val_bpb:{s_bpb:.8f} stride:"
        f"{cfg.eval_stride if cfg.eval_mode != 'ttt' else cfg.ttt_chunk_size} eval_time:{1000 * s_time:.0f}ms")
    log(f"eval_time load:{load_s:.1f}s compile:{compile_s:.1f}s plain:{r_time:.1f}s {cfg.eval_mode}:{s_time:.1f}s "
        f"total:{total_s:.1f}s budget:{cfg.eval_budget_seconds:g}s"
        + (" (over)" if total_s > cfg.eval_budget_seconds else ""))
    if not val.full:
        log(f"warning: VAL_MAX_TOKENS={cfg.val_max_tokens} scored only part of the validation split: "
            "not an official score")
    artifact_bytes, code_counted = os.path.getsize(cfg.artifact_path), counted_code_bytes(cfg, code)
    total = artifact_bytes + code_counted
    over = total > SIZE_CAP_BYTES
    log(f"final_size artifact_bytes:{artifact_bytes} code_bytes:{code_counted} total_bytes:{total} "
        f"cap:{SIZE_CAP_BYTES} status:{'OVER_CAP' if over else 'ok'} code_raw:{len(code[0])} "
        f"code_packed:{code[2]} counted:{cfg.code_bytes}")
    log(f"Total submission size: {total} bytes")
    if over:
        log(f"error: total {total} bytes is {total - SIZE_CAP_BYTES} over the {SIZE_CAP_BYTES}-byte cap")
    summary.update(
        roundtrip_val_loss=r_loss, roundtrip_val_bpb=r_bpb, val_loss=s_loss, val_bpb=s_bpb, eval_stride=cfg.eval_stride,
        eval_seq_len=cfg.eval_seq_len, val_tokens=val.num_targets, val_full=val.full, eval_time_s=s_time,
        artifact_bytes=artifact_bytes, code_bytes_counted=code_counted, bytes_total=total, size_cap=SIZE_CAP_BYTES,
        over_cap=over, artifact_path=str(cfg.artifact_path), eval_mode=cfg.eval_mode, eval_notes=notes,
        eval_total_s=total_s)
    summary["total_eval_time_s"] = summary.get("total_eval_time_s", 0.0) + total_s
    if log.path:
        summary_path = log.path.with_suffix(".json")
        write_atomic(summary_path, json.dumps(summary, indent=1).encode())
        log(f"summary: {summary_path}")
    log(f"final_int8_zlib_roundtrip_exact val_loss:{s_loss:.8f} val_bpb:{s_bpb:.8f}")
    return 3 if over else 0


def open_run_log(cfg: Config, rt: Runtime) -> RunLog:
    """logs/<RUN_ID>.txt opened on rank 0, refusing to overwrite a log, artifact or checkpoint (but the resumed one)."""
    path, ckpt = Path("logs") / f"{cfg.run_id}{'_eval' if cfg.eval_only else ''}.txt", Path(cfg.checkpoint_path)
    error, log, artifact = None, RunLog(None), Path(cfg.artifact_path)
    if not rt.is_main:
        pass
    elif path.exists() and not cfg.resume_from:
        error = f"log {path} already exists: choose another RUN_ID (or RESUME_FROM to continue that run)"
    elif not cfg.eval_only and artifact.exists():
        error = (f"ARTIFACT_PATH={cfg.artifact_path} already exists{' (a folder)' if artifact.is_dir() else ''}: "
                 "refusing to overwrite it; move it or choose another path")
    elif checkpoint_interval(cfg)[0] and ckpt.exists() and not (cfg.resume_from and ckpt.samefile(cfg.resume_from)):
        error = (f"CHECKPOINT_PATH={ckpt} already exists{' (a folder)' if ckpt.is_dir() else ''} and is not the "
                 "checkpoint being resumed: refusing to overwrite it; move it or choose another path")
    elif problems := [f"cannot write {name}{p}: {why}" for name, p, on in (
            ("the log ", path, True), ("ARTIFACT_PATH=", artifact, not cfg.eval_only),
            ("CHECKPOINT_PATH=", ckpt, bool(checkpoint_interval(cfg)[0]))) if on and (why := unwritable(p))]:
        error = f"{problems[0]}; choose another path (or RUN_ID)"
    else:
        try:
            for folder in {path.parent, artifact.parent}:
                folder.mkdir(parents=True, exist_ok=True)
            log = RunLog(path, append=bool(cfg.resume_from))
        except OSError as e:
            error = f"cannot write the log or artifact: {e}"
    rt.agree(error)
    return log


def unwritable(path: Path) -> str | None:
    """Why a file cannot be created at `path` (a folder on its way is a file, or not writable), or None."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    return None if os.access(parent, os.W_OK) else f"folder {parent} is not writable"


def memory_estimate(cfg: Config) -> tuple[float, float, int]:
    """(training, evaluation) peak bytes per process from the shapes, parameter count: modest, to refuse misfits."""
    with torch.device("meta"):
        params = sum(p.numel() for p in GPT(cfg).parameters())
    hidden, tokens = int(cfg.mlp_mult * cfg.model_dim), cfg.train_batch_tokens // cfg.micro_batches
    train = 20 * params + tokens * (cfg.num_layers * (8 * cfg.model_dim + 2 * hidden) * 2 + cfg.vocab_size * 8)
    eval_tokens = cfg.eval_batch_seqs * (cfg.eval_seq_len or cfg.train_seq_len)
    evaluate = 8 * params + eval_tokens * (cfg.vocab_size * 8 + cfg.model_dim * 16)
    return train, evaluate, params


def resolve_config(environ=os.environ) -> tuple[Config, list[str], list[str]]:
    """(config, warnings, overridden score settings): environment, then (EVAL_ONLY) the artifact's settings (the
    environment's shape settings must agree with them, its score settings are used but reported), then every check."""
    (cfg, warnings), overridden = config_from_env(environ), []
    if cfg.eval_only and cfg.artifact_path:
        header = read_artifact_header(cfg.artifact_path)[0]
        if clash := [f"{k.upper()}={getattr(cfg, k)} but the artifact has {v}" for k, v in header["model"].items()
                     if k.upper() in environ and getattr(cfg, k) != v]:
            raise ConfigError("the environment disagrees with the artifact's model; unset these:\n  "
                              + "\n  ".join(clash))
        overridden = [f"{k.upper()}={getattr(cfg, k)} (the artifact's run used {v})" for k, v in header["score"].items()
                      if k.upper() in environ and getattr(cfg, k) != v]
        cfg = replace(cfg, **header["model"], **{k: v for k, v in header["score"].items() if k.upper() not in environ})
    validate_config(cfg, int(environ.get("WORLD_SIZE", "1")))
    cfg.eval_seq_len = cfg.eval_seq_len or cfg.train_seq_len
    return cfg, warnings, overridden


def check_memory(cfg: Config, device: torch.device) -> None:
    """Refuse a configuration whose estimated peak, times the processes sharing this device, exceeds its memory."""
    train, evaluate, params = memory_estimate(cfg)
    need = evaluate if cfg.eval_only else max(train, evaluate)
    if device.type == "cuda":
        total, sharing = torch.cuda.get_device_properties(device).total_memory, 1
    else:
        sharing = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        try:
            total = 1024 * next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                                if line.startswith("MemTotal"))
        except (OSError, StopIteration, ValueError):
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need * sharing > total:
        driver = ("EVAL_BATCH_SEQS / EVAL_SEQ_LEN" if evaluate >= train or cfg.eval_only else
                  "TRAIN_BATCH_TOKENS (or raise MICRO_BATCHES)")
        raise ConfigError(f"this configuration needs an estimated {need / 2**30:.1f} GiB per process ({params:,} "
                          f"parameters; training {train / 2**30:.1f} GiB, evaluation {evaluate / 2**30:.1f} GiB) x "
                          f"{sharing} process(es), more than the {total / 2**30:.1f} GiB of this {device.type} "
                          f"device: lower {driver}, or MODEL_DIM / NUM_LAYERS / VOCAB_SIZE")


def prepare_run(cfg: Config) -> tuple:
    """Every input checked on every rank before any work, then (rt, train_files, val, model, run_model, attention name,
    start-up notes for the log, artifact load seconds, checkpoint state or None)."""
    check_memory(cfg, torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available()
                 else torch.device("cpu"))
    sp, tokenizer_record = load_tokenizer(cfg), check_tokenizer_record(cfg)
    val_files = find_shards(cfg.data_path, "val")
    sidecars = byte_sidecars(cfg, sp, val_files)
    train_files = [] if cfg.eval_only else find_shards(cfg.data_path, "train")
    for i, f in enumerate(train_files):  # headers of all; token ids of the first (the others as they are reached)
        open_shard(f, None if i else cfg.vocab_size)
    tables, rt = byte_tables(sp, cfg.vocab_size), init_runtime(cfg)
    cfg.compile = "1" if cfg.compile == "1" or (cfg.compile == "auto" and rt.device.type == "cuda") else "0"
    run_id = [cfg.run_id or time.strftime("%Y%m%d_%H%M%S_") + uuid.uuid4().hex[:6]]
    if rt.world_size > 1:  # every rank takes rank 0's (a generated id differs per rank)
        dist.broadcast_object_list(run_id, src=0, group=rt.host_group)
    cfg.run_id = run_id[0]
    cfg.artifact_path = cfg.artifact_path or f"logs/{cfg.run_id}.ptz"
    cfg.checkpoint_path = cfg.checkpoint_path or f"checkpoints/{cfg.run_id}.pt"
    attention_name, kernels = select_kernels(cfg, rt.device, rt.autocast_dtype is not None)
    cfg.fused_kernels = "0" if kernels.rms_norm is rms_norm else "1"
    val, sidecar = load_validation(cfg, val_files, tables, cfg.eval_seq_len, rt.device, sp.unk_id(), sidecars)
    audited = audit_tokenizer(val.tokens.cpu().numpy(), sp, tables, cfg, sidecar=sidecar) if cfg.bpb_audit else 0
    torch.manual_seed(cfg.seed)
    model = run_model = GPT(cfg, kernels).to(rt.device)
    if cfg.compile == "1":  # run_model: the compiled callable, one graph per shape and switch state
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        run_model = torch.compile(model, dynamic=False)
    resume = load_checkpoint(cfg.resume_from, cfg, model, rt, train_files) if cfg.resume_from else None
    t0, artifact_load_s = time.perf_counter(), 0.0
    if cfg.eval_only:  # the whole artifact is checked before anything is written
        load_artifact_weights(model, cfg.artifact_path)
        model.looping, artifact_load_s = cfg.num_loops > 0, time.perf_counter() - t0
    notes = [f"tokenizer: sha256 matches the record {tokenizer_record}"] if tokenizer_record else []
    notes.append(f"bpb_audit: {audited} validation documents re-encode to their ids and decode to the byte table's "
                 "UTF-8 lengths" if audited else "bpb_audit: off (BPB_AUDIT=0): the score is unaudited")
    if cfg.caseops_enabled:
        notes.append(f"caseops: bits per byte count the original text's bytes from {len(sidecars)} byte sidecar(s)"
                     + ("; the audit's documents: sidecar sums = inverse-transformed UTF-8 lengths" if audited else ""))
    return rt, train_files, val, model, run_model, attention_name, notes, artifact_load_s, resume


def run(cfg: Config, warnings: list[str], overridden: list[str], log_box: list) -> int:
    def package_version(module: str) -> str | None:
        try:
            return getattr(__import__(module), "__version__", "unknown")
        except ImportError:
            return None
    code, user_settings = Path(__file__).read_bytes(), non_default_settings(cfg)
    code = (code, hashlib.sha256(code).hexdigest(), packed_code_bytes(code))  # lzma's 66 MB before the model's
    if cfg.dry_run:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        log_header(lambda msg="", console=True: print(msg), cfg, None, "dry_run", code, "n/a", warnings)
        print(f"attention:{select_kernels(cfg, device, device.type == 'cuda' or cfg.cpu_dtype == 'bf16')[0]} "
              f"on {device.type}")
        train_bytes, eval_bytes, params = memory_estimate(cfg)
        print(f"memory_estimate train:{train_bytes / 2**30:.2f}GiB eval:{eval_bytes / 2**30:.2f}GiB per process")
        print(f"model_params:{params}")
        return 0
    rt, train_files, val, model, run_model, attention_name, notes, artifact_load_s, resume = prepare_run(cfg)
    log_box[0] = log = open_run_log(cfg, rt)
    mode = "eval_only" if cfg.eval_only else "train"
    log_header(log, cfg, rt, mode, code, attention_name, warnings)
    for line in notes + [f"note: not a re-score: {o}" for o in overridden]:
        log(line)
    log(f"val_tokens:{val.num_targets} (whole {cfg.eval_seq_len}-token windows){'' if val.full else ' PARTIAL'}")
    params = sum(p.numel() for p in model.parameters())
    log(f"model_params:{params} flops_per_token:{flops_per_token(model, cfg.train_seq_len):.4g}")
    sizes = {}
    if not cfg.eval_only:
        forecast, code_counted = forecast_artifact_bytes(model, cfg), counted_code_bytes(cfg, code)
        total, target = forecast + code_counted, SIZE_CAP_BYTES - cfg.cap_margin_bytes
        over = f"; warning: {total - SIZE_CAP_BYTES} bytes over: set FIT_TO_CAP=1, PRUNE_FRAC or fewer QUANT_BITS_*"
        log(f"size_forecast: artifact {forecast} + code {code_counted} ({cfg.code_bytes}) = {total} bytes, cap "
            f"{SIZE_CAP_BYTES}" + (f"; FIT_TO_CAP=1: the export keeps it at most {target} (CAP_MARGIN_BYTES="
                                   f"{cfg.cap_margin_bytes}), choosing the steps by their measured bpb cost"
                                   if cfg.fit_to_cap else "" if total <= SIZE_CAP_BYTES else over))
        sizes = dict(size_forecast=total, size_target=target if cfg.fit_to_cap else SIZE_CAP_BYTES)
    name, env = device_name(rt.device), " ".join(f"{k}={shlex.quote(str(v))}" for k, v in user_settings.items())
    runner = f"torchrun --standalone --nproc_per_node={rt.world_size}" if "LOCAL_RANK" in os.environ else "python3"
    summary = dict(run_id=cfg.run_id, mode=mode, seed=cfg.seed, code_sha256=code[1], code_bytes=len(code[0]),
                   config={k.upper(): v for k, v in asdict(cfg).items()}, non_default=user_settings,
                   launch=f"{env} {runner} train_gpt.py".strip(), world_size=rt.world_size, device=rt.device.type,
                   device_name=name, python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                   flash_attn=package_version("flash_attn_interface" if attention_name == "fa3" else "flash_attn")
                   if attention_name.startswith("fa") else None, numpy=np.__version__, sentencepiece=spm.__version__,
                   zstandard=zstandard.__version__,
                   compressor_packages={cfg.compressor: package_version(cfg.compressor)} if cfg.compressor != "zstd"
                   else {}, hardware=(f"{rt.world_size}x {name}" if rt.device.type == "cuda"
                                      else f"{rt.world_size}x CPU process ({name})"),
                   model_params=params, rescore_overrides=overridden, steps=0, step_avg_ms=0.0, train_time_s=0.0,
                   stop_reason="none", prequant_val_loss=None, prequant_val_bpb=None, artifact_load_s=artifact_load_s,
                   **sizes)
    if not cfg.eval_only:
        figures, hessians = train(cfg, rt, log, model, run_model, train_files, val, resume), None
        if cfg.quant_method == "gptq":  # calibration reads training data: it belongs to the training budget
            t0, hessians = rt.clock(), collect_hessians(model, figures["loader"], cfg, rt)
            seconds, trained = rt.clock() - t0, figures["train_time_ms"] / 1000
            log(f"gptq: Hessians of {len(hessians)} matrices from {cfg.gptq_calibration_batches} training batches in "
                f"{seconds:.1f}s; training {trained:.1f}s + calibration {seconds:.1f}s = {trained + seconds:.1f}s"
                + (f" of the {cfg.max_wallclock_seconds:g}s cap" if cfg.max_wallclock_seconds else ""))
            if cfg.max_wallclock_seconds and trained + seconds > cfg.max_wallclock_seconds:
                log(f"warning: training + calibration exceed MAX_WALLCLOCK_SECONDS by "
                    f"{trained + seconds - cfg.max_wallclock_seconds:.1f}s: raise GPTQ_RESERVE_SECONDS")
        if cfg.num_loops and not model.looping:
            log(f"warning: training ended before ENABLE_LOOPING_AT={cfg.enable_looping_at}; it is scored with depth "
                "recurrence on, as the artifact will always be")
        model.looping = cfg.num_loops > 0
        pre_loss, pre_bpb, pre_time = timed_evaluate(run_model, val, cfg, rt, cfg.eval_seq_len)
        log(f"final_prequant_exact val_loss:{pre_loss:.8f} val_bpb:{pre_bpb:.8f} eval_time:{1000 * pre_time:.0f}ms")
        summary.update(steps=figures["steps"], step_avg_ms=figures["train_time_ms"] / max(figures["steps"], 1),
                       train_time_s=figures["train_time_ms"] / 1000, stop_reason=figures["stop_reason"],
                       prequant_val_loss=pre_loss, prequant_val_bpb=pre_bpb, total_eval_time_s=pre_time)
        blob, error = export_artifact(cfg, rt, log, model, run_model, val, hessians, counted_code_bytes(cfg, code),
                                      {k: getattr(cfg, k) for k in SCORE_FIELDS}), None
        if rt.is_main:
            try:
                write_atomic(Path(cfg.artifact_path), blob)
            except OSError as e:
                error = f"cannot write ARTIFACT_PATH={cfg.artifact_path}: {e}"
        rt.agree(error)
        log(f"artifact: {cfg.artifact_path} written")
    status = final_evaluation(cfg, rt, log, model, run_model, val, code, summary)
    if rt.world_size > 1:
        dist.barrier()  # every rank is done with the process group before any tears it down
    return status


def main(environ=os.environ) -> int:
    def fail(kind: str, message: str) -> None:
        if is_main:
            log_box[0](f"run failed: {kind}: {message}", console=False)  # a started run's log ends saying why
            print(f"train_gpt.py: {kind}: {message}", file=sys.stderr, flush=True)
    is_main, log_box = int(environ.get("RANK", "0")) == 0, [RunLog(None)]
    try:
        return run(*resolve_config(environ), log_box)  # resolve_config: (cfg, warnings, overridden)
    except tuple(ERROR_KINDS) as e:
        kind, status = ERROR_KINDS[type(e)]
        fail(kind, str(e))
        return status
    except SystemExit as e:  # SIGTERM after its checkpoint: 143
        return int(e.code)
    except BaseException as e:  # a bug or an interrupt: say so in the log, keep the traceback on stderr
        fail("unexpected error", f"{type(e).__name__}: {e}")
        if not isinstance(e, KeyboardInterrupt):
            import traceback
            traceback.print_exc()
        return 130 if isinstance(e, KeyboardInterrupt) else 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    status = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # once DDP ran, gloo's live threads can abort the teardown ("terminate called without an active exception")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
