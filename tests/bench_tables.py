#!/usr/bin/env python3
"""CPU tables for the README (not a pytest test): recipes, switch costs, export, evaluation modes.

  python3 tests/bench_tables.py                       # all four tables, about 25 minutes on 2 cores
  python3 tests/bench_tables.py --only export,eval --json tables.json

recipes   classic vs frontier on the same data and the same wall-clock budget (--recipe-seconds):
          steps, ms/step, sliding bpb at that equal time. The data is the Python standard library's
          source (one document per module, ~3M tokens) so that neither recipe repeats its data much.
switches  ms/step of the classic tiny model with each frontier switch turned on alone (same seed,
          --switch-steps steps, median of --switch-repeats runs, the baseline run between them).
export    one trained tiny model (same seed and steps in every run, checked: equal prequant bpb),
          exported with RTN/GPTQ x absmax/SDClip/search (+LQER): plain roundtrip gap vs the
          unquantised model, sliding bpb, export time; then the same quantised streams recompressed
          with every COMPRESSOR (exact artifact bytes, compress time).
eval      that model's classic artifact scored by EVAL_ONLY in every EVAL_MODE: bpb and eval time.

Every run is `python3 train_gpt.py` (1 process, OMP_NUM_THREADS=--threads) in a temporary folder;
figures come from its summary JSON and log. Needs the project's requirements (brotli, constriction).
"""
import argparse, dataclasses, json, os, re, shutil, statistics, subprocess, sys, sysconfig, tempfile, time, zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402  (codecs and the artifact reader, for recompression)

MODEL = dict(NUM_LAYERS=4, MODEL_DIM=128, NUM_HEADS=4, NUM_KV_HEADS=2, TRAIN_SEQ_LEN=256, TRAIN_BATCH_TOKENS=8192,
             WARMUP_STEPS=2, VAL_LOSS_EVERY=0, TRAIN_LOG_EVERY=1, EVAL_BATCH_SEQS=16, EVAL_STRIDE=64, CPU_DTYPE="bf16")
CLASSIC = dict(BIGRAM_VOCAB_SIZE=1024, BIGRAM_DIM=32, SWA_EVERY=10)
FRONTIER = dict(RECIPE="frontier", CASEOPS_ENABLED=0, VOCAB_SIZE=1024, XSA_LAST_N=4, ROPE_DIMS=16, PARALLEL_START_LAYER=3, NUM_LOOPS=1, LOOP_START=1,
                LOOP_END=2, EVAL_MODE="sliding")
SWITCHES = [("XSA_LAST_N=4",), ("ROPE_DIMS=16",), ("LN_SCALE=1",), ("MLP_ACT=leaky_relu2",), ("SMEAR_GATE_ENABLED=1",),
            ("SPARSE_ATTN_GATE_ENABLED=1",), ("SKIP_GATES_ENABLED=1",), ("PARALLEL_START_LAYER=3",),
            ("NUM_LOOPS=1", "LOOP_START=1", "LOOP_END=2", "ENABLE_LOOPING_AT=0"), ("MUON_NS=polar",),
            ("MUON_ROW_NORMALIZE=1",), ("EMA_DECAY=0.99", "SWA_EVERY=0")]
GPTQ_SD67 = dict(QUANT_METHOD="gptq", QUANT_CLIP="sdclip", QUANT_BITS_MLP=6, QUANT_BITS_ATTN=7)
EXPORTS = [("RTN absmax (classic)", {}), ("RTN SDClip", dict(QUANT_CLIP="sdclip")),
           ("GPTQ absmax", dict(QUANT_METHOD="gptq")), ("GPTQ SDClip", dict(QUANT_METHOD="gptq", QUANT_CLIP="sdclip")),
           ("GPTQ SDClip, int6 MLP / int7 attn", GPTQ_SD67), ("GPTQ SDClip int6/int7 + LQER", dict(GPTQ_SD67, LQER_TOP_K=3)),
           ("RTN, int6 MLP / int8 embedding", dict(QUANT_BITS_MLP=6, QUANT_BITS_EMBED=8)),
           ("GPTQ, int6 MLP / int8 embedding", dict(QUANT_METHOD="gptq", QUANT_BITS_MLP=6, QUANT_BITS_EMBED=8)),
           ("GPTQ, int6 MLP / int8 embedding + LQER", dict(QUANT_METHOD="gptq", QUANT_BITS_MLP=6, QUANT_BITS_EMBED=8,
                                                          LQER_TOP_K=3))]
EVALS = [("sliding (stride 64)", dict(EVAL_MODE="sliding")), ("doc (chunks of 64)", dict(EVAL_MODE="doc")),
         ("ttt (defaults: chunks of 48, lr 1e-4, rank 80)", dict(EVAL_MODE="ttt")),
         ("ttt (lr 3e-3, rank 8)", dict(EVAL_MODE="ttt", TTT_LORA_LR=0.003, TTT_LORA_RANK=8)),
         ("ttt (lr 3e-3, rank 8) + 2 phases of global SGD", dict(EVAL_MODE="ttt", TTT_LORA_LR=0.003, TTT_LORA_RANK=8,
                                                              PHASED_TTT_NUM_PHASES=2, PHASED_TTT_PREFIX_DOCS=8))]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="recipes,switches,export,eval", help="comma-separated tables to make")
    p.add_argument("--recipe-seconds", type=float, default=90, help="MAX_WALLCLOCK_SECONDS of each recipe run")
    p.add_argument("--switch-steps", type=int, default=20, help="steps of each switch-cost run (first 5 not timed)")
    p.add_argument("--switch-repeats", type=int, default=2, help="runs per switch (median)")
    p.add_argument("--export-steps", type=int, default=120, help="training steps of the export/eval model")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS (default 2)")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = p.parse_args()
    if not set(a.only.split(",")) <= {"recipes", "switches", "export", "eval"}:
        p.error("--only takes recipes, switches, export, eval")
    return a


def build(tmp: Path, name: str, sources=(), extra=()) -> dict:
    cmd = [sys.executable, str(ROOT / "data" / "build_dataset.py"), "--output-root", str(tmp), "--name", name,
           *extra, *map(str, sources)]
    r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    m = re.search(r"DATA_PATH=(\S+) TOKENIZER_PATH=(\S+)", r.stdout)
    if r.returncode or not m:
        sys.exit(f"bench_tables: dataset build failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return dict(DATA_PATH=str((tmp / m.group(1)).resolve()), TOKENIZER_PATH=str((tmp / m.group(2)).resolve()))


def stdlib_corpus(tmp: Path) -> Path:
    """The standard library's modules (tests left out), one JSON line per module."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(lib.glob("*.py")) + sorted(f for f in lib.glob("*/*.py") if "test" not in f.parts[-2])
    out = tmp / "stdlib.jsonl"
    with open(out, "w") as fh:
        for f in files:
            fh.write(json.dumps(dict(text=f.read_text(errors="replace"))) + "\n")
    return out


class Runner:
    def __init__(self, tmp: Path, threads: int):
        self.tmp, self.n = tmp, 0
        names = set(tg.ENV_NAMES) | {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
        self.env = {k: v for k, v in os.environ.items() if k not in names}
        self.env.update(OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")

    def __call__(self, label: str, settings: dict, cwd: Path | None = None) -> dict:
        """Run the trainer; return its summary JSON plus log-derived figures."""
        self.n += 1
        cwd = cwd or self.tmp / f"run{self.n}"
        cwd.mkdir(exist_ok=True)
        run_id = f"t{self.n}"
        env = dict(self.env, RUN_ID=run_id, **{k: str(v) for k, v in settings.items()})
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], cwd=cwd, env=env, capture_output=True, text=True)
        # EVAL_ONLY writes logs/<id>_eval.txt and .json
        log, summary = (next((cwd / "logs").glob(f"{run_id}*.{ext}"), cwd / "missing") for ext in ("txt", "json"))
        if r.returncode or not summary.exists() or not log.exists():
            sys.exit(f"bench_tables: run {label!r} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
        s, text = json.loads(summary.read_text()), log.read_text()
        steps = {int(k): float(v) for k, v in re.findall(r"^step:(\d+)/\d+ train_loss:\S+ train_time:([\d.]+)ms", text, re.M)}
        if len(steps) > 6:
            first, last = 5, max(steps)
            s["ms_per_step_after_5"] = (steps[last] - steps[first]) / (last - first)
        for key, pattern in (("export_s", r"^export: \d+ bytes in ([\d.]+)s"), ("gptq_s", r"^gptq: .* in ([\d.]+)s;")):
            m = re.search(pattern, text, re.M)
            s[key] = float(m.group(1)) if m else 0.0
        s.update(label=label, wall_s=time.perf_counter() - t0, cwd=str(cwd))
        print(f"  {label}: {s['wall_s']:.0f}s", file=sys.stderr, flush=True)
        return s


def recompress(path: str) -> dict:
    """Exact artifact bytes (and compress seconds) of the same quantised streams under every COMPRESSOR."""
    header, body = tg.read_artifact_header(path)
    raws, at = [], 0
    for s in header["streams"]:
        raws.append(tg.codec(s["codec"])[1](body[at:at + s["size"]], s["raw"]))
        at += s["size"]
    out = {}
    for name in ("zstd", "brotli", "lzma", "ans"):
        t0, meta, size = time.perf_counter(), [], 0
        for raw, holds_codes in zip(raws, _code_streams(header)):
            c, data = tg.compress_stream(raw, holds_codes, dataclasses.replace(tg.DEFAULTS, compressor=name))
            assert tg.codec(c)[1](data, len(raw)) == raw, f"{c} round trip"
            meta.append(dict(codec=c, raw=len(raw), size=len(data), crc32=zlib.crc32(raw)))
            size += len(data)
        head = zlib.compress(json.dumps(dict(header, streams=meta)).encode(), 9)
        out[name] = dict(bytes=len(tg.ARTIFACT_MAGIC) + 10 + len(head) + size + 32, seconds=time.perf_counter() - t0)
    return out


def _code_streams(header) -> list[bool]:
    """Per stream: does it hold int8 codes (the `q` arrays), as pack_artifact groups them?"""
    code = set()
    for t in header["tensors"]:
        if "q" in t["arrays"]:
            code.add(t["arrays"]["q"][0])
    return [i in code for i in range(len(header["streams"]))]


def md(head: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
                     + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def main():
    a = parse_args()
    only = a.only.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bench_tables_"))
    run, results, started = Runner(tmp, a.threads), {}, time.perf_counter()
    try:
        sample = build(tmp, "sample_sp1024", extra=["--val-fraction", "0.25"])
        if "recipes" in only:
            print("recipes:", file=sys.stderr)
            data = build(tmp, "stdlib_sp1024", [stdlib_corpus(tmp)], ["--val-docs", "40"])
            common = dict(MODEL, **data, ITERATIONS=100000, MAX_WALLCLOCK_SECONDS=a.recipe_seconds, VAL_MAX_TOKENS=65536)
            rows = []
            for label, extra in (("classic", dict(CLASSIC, WARMDOWN_ITERS=100)), ("frontier", FRONTIER),
                                 # EMA 0.9965 averages over ~285 steps: in a run of ~100 it is mostly the init
                                 ("frontier, EMA_DECAY=0.9", dict(FRONTIER, EMA_DECAY=0.9))):
                s = run(label, dict(common, **extra))
                results.setdefault("recipes", []).append(s)
                rows.append([label, f"{s['model_params']:,}", s["steps"], f"{s['step_avg_ms']:.0f}",
                             f"{s['prequant_val_bpb']:.4f}", f"{s['val_bpb']:.4f}", f"{s['artifact_bytes']:,}"])
            print(f"\n### Recipes at equal wall clock ({a.recipe_seconds:g}s of training each, 1 process x {a.threads} "
                  "threads, stdlib-source corpus, 65,536 val tokens)\n")
            print(md(["recipe", "params", "steps", "ms/step", "prequant bpb", "sliding bpb (artifact)", "artifact bytes"], rows))
        if "switches" in only:
            print("switches:", file=sys.stderr)
            common = dict(MODEL, **CLASSIC, **sample, ITERATIONS=a.switch_steps, WARMDOWN_ITERS=5, MAX_WALLCLOCK_SECONDS=0,
                          VAL_MAX_TOKENS=4096, EVAL_STRIDE=256)
            times = {"baseline (classic)": []}
            for _ in range(a.switch_repeats):
                for i, sw in enumerate(SWITCHES):
                    if i % 4 == 0:  # the baseline again every 4 switches: drift shows in its runs
                        times["baseline (classic)"].append(run("baseline", common)["ms_per_step_after_5"])
                    s = run(" ".join(sw), dict(common, **dict(x.split("=") for x in sw)))
                    times.setdefault(" ".join(sw), []).append(s["ms_per_step_after_5"])
            base = statistics.median(times["baseline (classic)"])
            results["switches"] = times
            rows = [[k, f"{statistics.median(v):.1f}", f"{statistics.median(v) / base:.3f}x",
                     " ".join(f"{x:.0f}" for x in v)] for k, v in times.items()]
            print(f"\n### Cost of each switch alone (classic tiny model, ms/step of steps 5..{a.switch_steps}, "
                  f"median of {a.switch_repeats} runs, baseline {len(times['baseline (classic)'])} runs)\n")
            print(md(["switch", "ms/step", "vs baseline", "runs"], rows))
        if "export" in only or "eval" in only:
            print("export:", file=sys.stderr)
            common = dict(MODEL, **CLASSIC, **sample, ITERATIONS=a.export_steps, WARMDOWN_ITERS=a.export_steps // 3,
                          MAX_WALLCLOCK_SECONDS=0, VAL_MAX_TOKENS=32768)
            exports = [run(label, dict(common, **extra)) for label, extra in
                       (EXPORTS if "export" in only else EXPORTS[:1])]
            results["export"] = exports
            pre = {s["prequant_val_bpb"] for s in exports}
            if len(pre) != 1:
                print(f"WARNING: the export runs trained different models (prequant bpb {sorted(pre)})")
            if "export" in only:
                base_gap = exports[0]["roundtrip_val_bpb"] - exports[0]["prequant_val_bpb"]
                rows, crows = [], []
                for s in exports:
                    gap = s["roundtrip_val_bpb"] - s["prequant_val_bpb"]
                    sizes = recompress(s["artifact_path"] if os.path.isabs(s["artifact_path"]) else
                                       str(Path(s["cwd"]) / s["artifact_path"]))
                    s["compressors"] = sizes
                    rows.append([s["label"], f"{sizes['zstd']['bytes']:,}", f"{s['prequant_val_bpb']:.4f}",
                                 f"{s['roundtrip_val_bpb']:.4f}", f"{gap:+.4f}", f"{gap / base_gap:.2f}" if base_gap else "-",
                                 f"{s['val_bpb']:.4f}", f"{s['export_s'] + s['gptq_s']:.1f}"])
                    z = sizes["zstd"]["bytes"]
                    crows.append([s["label"]] + [f"{v['bytes']:,} ({100 * (v['bytes'] / z - 1):+.2f}%, {v['seconds']:.1f}s)"
                                                 for v in sizes.values()])
                print(f"\n### Export of one trained tiny model ({a.export_steps} steps; int5 MLP / int6 attention / fp16 "
                      "embedding unless said; 32,768 val tokens; gap = plain roundtrip - plain prequant bpb)\n")
                print(md(["export", "bytes (zstd-22)", "prequant bpb", "roundtrip bpb", "gap", "gap / RTN gap",
                          "sliding bpb", "export s (incl. GPTQ calibration)"], rows))
                print("\n### The same quantised streams under each COMPRESSOR (exact artifact bytes, vs zstd-22, "
                      "compress time)\n")
                print(md(["export", "zstd-22", "brotli-11", "lzma (xz -9e)", "ans (smaller of ans/brotli per code stream)"], crows))
        if "eval" in only:
            print("eval:", file=sys.stderr)
            art = exports[0]
            cwd = Path(art["cwd"])
            rows = []
            for label, extra in EVALS:
                s = run(label, dict(sample, VAL_MAX_TOKENS=32768, EVAL_ONLY=1, ARTIFACT_PATH=art["artifact_path"],
                                    EVAL_BATCH_SEQS=16, **extra), cwd=cwd)
                results.setdefault("eval", []).append(s)
                rows.append([label, f"{s['val_bpb']:.4f}", f"{s['val_bpb'] - art['val_bpb']:+.4f}",
                             f"{s['eval_time_s']:.1f}", f"{s['val_tokens']:,}"])
            print(f"\n### Evaluation modes on one artifact (the RTN model above, EVAL_ONLY, 1 process x {a.threads} threads)\n")
            print(md(["EVAL_MODE", "bpb", "vs sliding in training run", "eval s", "targets scored"], rows))
        print(f"\ncommand: python3 tests/bench_tables.py {' '.join(sys.argv[1:])}; model: "
              + " ".join(f"{k}={v}" for k, v in MODEL.items()) + f"; total {time.perf_counter() - started:.0f}s")
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1, default=str))
    finally:
        if a.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
