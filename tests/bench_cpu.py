#!/usr/bin/env python3
"""Side-by-side CPU benchmark of two versions of train_gpt.py (not a pytest test).

Runs the trainer of git ref --against ("base") and of the working tree or --candidate ("new")
interleaved (--pairs pairs; the order alternates base,new / new,base to cancel drift), with the
same data, seed and settings, each in its own temporary cwd. Prints a markdown table of medians:
ms/step and training tokens/s (steps after --skip-steps only), validation targets scored per
second for every `final_<mode>_exact` evaluation both versions log, peak RSS and final val_bpb.

  python3 tests/bench_cpu.py --against HEAD~3
  python3 tests/bench_cpu.py --against 553fade --config large --pairs 5 --set CPU_DTYPE=fp32
  python3 tests/bench_cpu.py --against main --candidate HEAD --nproc 2 --json bench.json

Ratio column: ms/step base/new, throughputs new/base (>1 = new faster in both), RSS new/base
(<1 = new smaller), val_bpb new-base. Both sides are snapshotted at start, so editing the working
tree during a run does not change what is measured. Needs only the standard library.
"""
import argparse, json, os, re, shlex, shutil, statistics, subprocess, sys, tempfile, threading, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "quickstart": dict(NUM_LAYERS=4, MODEL_DIM=128, NUM_HEADS=4, NUM_KV_HEADS=2, TRAIN_SEQ_LEN=256,
                       TRAIN_BATCH_TOKENS=8192),
    "large": dict(NUM_LAYERS=8, MODEL_DIM=256, NUM_HEADS=4, NUM_KV_HEADS=2, TRAIN_SEQ_LEN=512,
                  TRAIN_BATCH_TOKENS=16384),
}
SHARED = dict(BIGRAM_VOCAB_SIZE=1024, BIGRAM_DIM=32, EVAL_BATCH_SEQS=16, CPU_DTYPE="bf16")
STEP_RE = re.compile(r"^step:(\d+)/\d+ train_loss:\S+ train_time:([\d.]+)ms", re.M)
FINAL_RE = re.compile(r"^final_(\w+?)_exact (.*)$", re.M)
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", required=True, metavar="REF", help="git ref of the base train_gpt.py (e.g. HEAD~3)")
    p.add_argument("--candidate", metavar="REF", help="git ref of the new side (default: the working tree's file)")
    p.add_argument("--config", choices=sorted(CONFIGS), default="quickstart",
                   help="model size: quickstart = README quick-start model (default), large = 8x256, seq 512")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra/overriding trainer env setting for both sides (repeatable), e.g. CPU_DTYPE=fp32")
    p.add_argument("--set-base", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting for the base side only (repeatable): with --candidate equal to --against, the cost "
                        "of a switch, e.g. --against HEAD --candidate HEAD --set-base DOC_MASK=0 --set-new DOC_MASK=1")
    p.add_argument("--set-new", action="append", default=[], metavar="KEY=VALUE", help="a setting for the new side only")
    p.add_argument("--pairs", type=int, default=3, help="interleaved base/new pairs (default 3)")
    p.add_argument("--steps", type=int, default=30, help="ITERATIONS of each run (default 30)")
    p.add_argument("--skip-steps", type=int, default=5, help="steps left out of ms/step as warm-up (default 5)")
    p.add_argument("--val-tokens", type=int, default=32768, help="VAL_MAX_TOKENS (default 32768)")
    p.add_argument("--val-fraction", type=float, default=0.25,
                   help="build_dataset.py --val-fraction for the sample (default 0.25: ~35k val tokens, so 32768 are "
                        "scored; the builder's 0.1 gives only ~14k and sub-second plain evals)")
    p.add_argument("--seed", type=int, default=1337, help="SEED of every run (default 1337)")
    p.add_argument("--nproc", type=int, default=1, help="processes per run; >1 uses torch.distributed.run (default 1)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS per process (default 2 for 1 process, else 1)")
    p.add_argument("--data-path", help="DATA_PATH (default: build the offline sample with data/build_dataset.py)")
    p.add_argument("--tokenizer-path", help="TOKENIZER_PATH (with --data-path)")
    p.add_argument("--wait-idle", type=float, default=0, metavar="S",
                   help="before each run wait up to S seconds for the machine to be idle (<0.2 cores busy over 2 s)")
    p.add_argument("--json", metavar="FILE", help="write every raw number and the settings to FILE")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, artifacts, stdout)")
    a = p.parse_args()
    if bool(a.data_path) != bool(a.tokenizer_path):
        p.error("--data-path and --tokenizer-path go together")
    if any("=" not in s for s in a.set + a.set_base + a.set_new):
        p.error("--set, --set-base and --set-new take KEY=VALUE")
    if a.pairs < 1 or a.steps < 1 or a.nproc < 1:
        p.error("--pairs, --steps and --nproc must be >= 1")
    return a


def git(*args) -> str:
    r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"bench_cpu: git {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def materialise(ref, folder: Path) -> str:
    """Write `ref`'s train_gpt.py (None = working tree) into folder; return a label."""
    folder.mkdir(parents=True)
    if ref is None:
        shutil.copy(ROOT / "train_gpt.py", folder / "train_gpt.py")
        return "working tree"
    (folder / "train_gpt.py").write_text(git("show", f"{ref}:train_gpt.py"))
    return f"{ref} = {git('rev-parse', '--short', ref + '^{commit}').strip()}"


class TreePeak(threading.Thread):
    """Polls VmHWM (kernel peak RSS) of every process under `root` every 0.2 s; keeps the largest per pid."""
    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.peaks, self.done = root, {}, threading.Event()

    def run(self):
        while not self.done.wait(0.2):
            parents = {}
            for d in os.listdir("/proc"):
                try:
                    parents[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (ValueError, OSError, IndexError):
                    pass
            tree, grew = {self.root}, True
            while grew:
                new = {p for p, pp in parents.items() if pp in tree} - tree
                tree |= new
                grew = bool(new)
            for pid in tree:
                try:
                    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
                    self.peaks[pid] = max(self.peaks.get(pid, 0), int(m.group(1)))
                except (OSError, AttributeError):
                    pass


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, from /proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def wait_idle(limit_s: float) -> None:
    deadline, said = time.monotonic() + limit_s, False
    while time.monotonic() < deadline:
        b0 = busy_seconds()
        time.sleep(2)
        if (load := (busy_seconds() - b0) / 2) < 0.2:
            return
        if not said:
            print(f"waiting up to {limit_s:.0f}s for other work ({load:.2f} cores busy) to finish...", file=sys.stderr)
            said = True


def run_once(side, folder: Path, run_id, env, args) -> dict:
    """One training run; returns its measurements parsed from logs/<RUN_ID>.txt."""
    launcher = [sys.executable] if args.nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    out_path = folder / f"{run_id}.stdout"
    if args.wait_idle:
        wait_idle(args.wait_idle)
    t0, busy0 = time.perf_counter(), busy_seconds()
    with open(out_path, "w") as out:
        proc = subprocess.Popen(launcher + ["train_gpt.py"], cwd=folder, env=dict(env, RUN_ID=run_id),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        poller = TreePeak(proc.pid)
        poller.start()
        try:  # wait4: ru_maxrss = largest peak RSS of the child and every descendant it reaped
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            os.killpg(proc.pid, 9)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        poller.done.set()
    wall = time.perf_counter() - t0
    # CPU the rest of the machine used meanwhile (other jobs skew timings): busy time minus our tree's.
    other = max(0.0, busy_seconds() - busy0 - usage.ru_utime - usage.ru_stime) / wall
    stdout = out_path.read_text(errors="replace")
    log_file = folder / "logs" / f"{run_id}.txt"
    text = log_file.read_text(errors="replace") if log_file.exists() else stdout
    steps = {int(k): float(ms) for k, ms in STEP_RE.findall(text)}
    val = re.search(r"^val_tokens:(\d+)", text, re.M)
    if proc.returncode or not steps or not val or "final_sliding_exact" not in text:
        lines = stdout.splitlines()  # torchrun's own traceback after the ranks' output says little: cut it
        cut = next((i for i, line in enumerate(lines) if "torch/distributed/elastic" in line), len(lines))
        tail = "\n".join((lines[:cut] or lines)[-40:])
        print(f"\n--- {side} run {run_id} (cwd {folder}) output tail ---\n{tail}\n---", file=sys.stderr)
        sys.exit(f"bench_cpu: FAILED: {side} run {run_id} exited with {proc.returncode}"
                 + ("" if proc.returncode else " but its log lacks step/val_tokens/final_sliding_exact lines"))
    last = max(steps)
    first = max([k for k in steps if k <= args.skip_steps], default=0)
    if first == last:
        first = 0
    ms_step = (steps[last] - steps.get(first, 0.0)) / (last - first)
    tokens = int(env["TRAIN_BATCH_TOKENS"])
    targets = int(val.group(1))
    evals = {}
    for mode, rest in FINAL_RE.findall(text):
        kv = dict(re.findall(r"(\w+):(\S+)", rest))
        if "eval_time" in kv and "val_bpb" in kv:
            eval_ms = float(kv["eval_time"].rstrip("ms"))
            evals[mode] = dict(val_bpb=float(kv["val_bpb"]), eval_ms=eval_ms, stride=kv.get("stride"),
                               targets_per_s=targets / (eval_ms / 1000) if eval_ms > 0 else float("nan"))
    rank_peaks = [kb for pid, kb in poller.peaks.items() if pid != proc.pid or args.nproc == 1]
    return dict(side=side, run_id=run_id, wall_s=wall, other_load_cores=other, steps_measured=f"{first}..{last}",
                ms_per_step=ms_step, tokens_per_s=tokens / ms_step * 1000, val_tokens=targets, evals=evals,
                peak_rss_mib=usage.ru_maxrss / 1024, rss_sum_ranks_mib=sum(rank_peaks) / 1024)


def mode_label(mode, stride):
    return {"prequant": "plain (prequant)", "roundtrip": "plain (roundtrip)",
            "sliding": f"sliding (stride {stride})"}.get(mode, mode)


def table(runs, labels, args) -> str:
    base, new = runs["base"], runs["new"]
    rows = []

    def add(name, get, kind, fmt):  # kind picks the comparison column: time | rate | mem | bpb | info
        b, n = [get(r) for r in base], [get(r) for r in new]
        mb, mn = statistics.median(b), statistics.median(n)
        ratio = {"time": lambda: f"{mb / mn:.3f}x", "rate": lambda: f"{mn / mb:.3f}x",
                 "mem": lambda: f"{mn / mb:.3f}x", "bpb": lambda: f"Δ {mn - mb:+.8f}", "info": lambda: ""}[kind]()
        raw = lambda xs: " ".join(fmt.format(x) for x in xs)
        rows.append(f"| {name} | {fmt.format(mb)} | {fmt.format(mn)} | {ratio} | {raw(b)} | {raw(n)} |")

    add("ms/step", lambda r: r["ms_per_step"], "time", "{:.1f}")
    add("train tokens/s", lambda r: r["tokens_per_s"], "rate", "{:.0f}")
    modes = [m for m in base[0]["evals"] if all(m in r["evals"] for r in base + new)]
    for m in modes:
        add(f"{mode_label(m, base[0]['evals'][m]['stride'])} eval targets/s",
            lambda r, m=m: r["evals"][m]["targets_per_s"], "rate", "{:.0f}")
    add("peak RSS MiB (max process)", lambda r: r["peak_rss_mib"], "mem", "{:.0f}")
    if args.nproc > 1:
        add("peak RSS MiB (sum of ranks)", lambda r: r["rss_sum_ranks_mib"], "mem", "{:.0f}")
    add("other CPU load (cores busy outside the run)", lambda r: r["other_load_cores"], "info", "{:.2f}")
    for m in ["sliding"] + [m for m in modes if m != "sliding"]:
        if m in modes:
            add(f"val_bpb {mode_label(m, base[0]['evals'][m]['stride'])}",
                lambda r, m=m: r["evals"][m]["val_bpb"], "bpb", "{:.8f}")
    only = sorted({m for r in base + new for m in r["evals"]} - set(modes))
    head = (f"| metric | base ({labels['base']}) | new ({labels['new']}) | new vs base | base runs | new runs |\n"
            "|---|---:|---:|---:|---|---|")
    note = f"\n\n(eval modes logged by one side only: {', '.join(only)})" if only else ""
    return head + "\n" + "\n".join(rows) + note


def main():
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_cpu_"))
    started = time.perf_counter()
    try:
        labels = {"base": materialise(args.against, tmp / "base"), "new": materialise(args.candidate, tmp / "new")}
        codes = {s: (tmp / s / "train_gpt.py").read_bytes() for s in labels}
        if args.data_path:
            data, tok, vocab = args.data_path, args.tokenizer_path, None
        else:
            build = [sys.executable, str(ROOT / "data" / "build_dataset.py"), "--output-root", str(tmp / "data"),
                     "--val-fraction", str(args.val_fraction)]
            r = subprocess.run(build, cwd=tmp, capture_output=True, text=True)
            m = re.search(r"DATA_PATH=(\S+) TOKENIZER_PATH=(\S+)(?: VOCAB_SIZE=(\d+))?", r.stdout)
            if r.returncode or not m:
                print(r.stdout[-3000:], r.stderr[-3000:], file=sys.stderr)
                sys.exit("bench_cpu: FAILED: data/build_dataset.py did not print DATA_PATH=... TOKENIZER_PATH=...")
            data, tok, vocab = (str((tmp / m.group(1)).resolve()), str((tmp / m.group(2)).resolve()), m.group(3))
        threads = args.threads or (2 if args.nproc == 1 else 1)
        settings = dict(CONFIGS[args.config], **SHARED)
        settings.update(DATA_PATH=data, TOKENIZER_PATH=tok, ITERATIONS=args.steps, WARMUP_STEPS=2,
                        WARMDOWN_ITERS=10, MAX_WALLCLOCK_SECONDS=0, VAL_LOSS_EVERY=0, TRAIN_LOG_EVERY=1,
                        EVAL_STRIDE=64, SEED=args.seed, VAL_MAX_TOKENS=args.val_tokens)
        if vocab:
            settings["VOCAB_SIZE"] = vocab
        settings.update(s.split("=", 1) for s in args.set)
        settings = {k: str(v) for k, v in settings.items()}
        # Inherited trainer settings would silently leak into both runs: drop every Config field name.
        blocks = [c.decode().partition("\nclass Config")[2].partition("\n\n\n")[0] for c in codes.values()]
        names = {n.upper() for b in blocks for n in re.findall(r"^    ([a-z_]\w*): \w+ = ", b, re.M)}
        env = {k: v for k, v in os.environ.items() if k not in names and k not in LAUNCH_VARS}
        env.update(settings, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        runs = {"base": [], "new": []}
        for i in range(1, args.pairs + 1):
            for side in (("base", "new") if i % 2 else ("new", "base")):
                own = dict(s.split("=", 1) for s in (args.set_base if side == "base" else args.set_new))
                r = run_once(side, tmp / side, f"bench_{side}_{i}", dict(env, **own), args)
                r.update(pair=i, order=len(runs["base"]) + len(runs["new"]) + 1)
                runs[side].append(r)
                sl = r["evals"].get("sliding", {})
                print(f"[pair {i}/{args.pairs}] {side:4s}: {r['ms_per_step']:.1f} ms/step, "
                      f"{r['tokens_per_s']:.0f} tok/s, sliding {sl.get('targets_per_s', 0):.0f} targets/s, "
                      f"bpb {sl.get('val_bpb', float('nan')):.8f}, RSS {r['peak_rss_mib']:.0f} MiB, "
                      f"run {r['wall_s']:.1f}s" + (f", WARNING: {r['other_load_cores']:.2f} cores busy with other work"
                                               if r["other_load_cores"] > 0.2 else ""), file=sys.stderr, flush=True)
        torch_v = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                                 capture_output=True, text=True).stdout.strip()
        cpu = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        same = "identical code" if codes["base"] == codes["new"] else "code differs"
        print(table(runs, labels, args))
        busiest = max(r["other_load_cores"] for r in runs["base"] + runs["new"])
        if busiest > 0.2:
            print(f"\nWARNING: other processes kept up to {busiest:.2f} of {os.cpu_count()} cores busy during the runs:"
                  " the timings above are not trustworthy; rerun on an idle machine.")
        first, last = runs["base"][0]["steps_measured"].split("..")
        print(f"\nmedians of {args.pairs} interleaved pair(s) ({same}); ms/step = (train_time at step {last} "
              f"- at step {first}) / steps between; eval targets/s = val_tokens "
              f"({runs['base'][0]['val_tokens']}) / eval_time. Ratio: ms/step base/new, rates new/base (>1 = new "
              f"faster), RSS new/base, bpb new-base.")
        print("peak RSS: kernel ru_maxrss from wait4() on the launched process = the largest peak RSS of any single "
              "process in its tree" + ("" if args.nproc == 1 else "; sum of ranks = per-rank VmHWM polled every 0.2 s"
                                       " (may miss growth in a rank's last 0.2 s)") + ".")
        print(f"command: {shlex.join(['python3', 'tests/bench_cpu.py'] + sys.argv[1:])}")
        print(f"config ({args.config}): {' '.join(f'{k}={v}' for k, v in settings.items())}"
              + "".join(f"; {side} only: {' '.join(sets)}" for side, sets in (("base", args.set_base),
                                                                            ("new", args.set_new)) if sets))
        launch = "python3 train_gpt.py" if args.nproc == 1 else f"torch.distributed.run --nproc_per_node={args.nproc}"
        print(f"launch: {launch}, OMP_NUM_THREADS={threads} per process; torch {torch_v}; python {sys.version.split()[0]}; "
              f"CPU {cpu.group(1) if cpu else '?'} ({os.cpu_count()} logical cores); "
              f"total wall {time.perf_counter() - started:.0f}s")
        if args.json:
            Path(args.json).write_text(json.dumps(dict(labels=labels, settings=settings, threads=threads,
                                                       nproc=args.nproc, torch=torch_v, argv=sys.argv, runs=runs),
                                                  indent=1))
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
