"""End-to-end CPU runs of a tiny frontier configuration (every switch on, BigramHash and the classic
smear gate too): 2 processes train, export and score; a run killed before depth recurrence switches on
resumes to the same score; compiled, it matches eager and compiles nothing after the warm-up."""
import math
import re
import signal

import pytest

from conftest import final_figures, rounding_tolerance, run_trainer, train_losses, trainer_env
from test_train_resume import interrupt_after, start

pytestmark = pytest.mark.slow  # long end-to-end runs: deselect with -m "not slow"

FRONTIER_TINY = dict(RECIPE="frontier", VOCAB_SIZE=1024, NUM_LAYERS=4, MODEL_DIM=64, NUM_HEADS=4, NUM_KV_HEADS=2,
                     MLP_MULT=2, XSA_LAST_N=4, ROPE_DIMS=8, GATE_WINDOW=8, PARALLEL_START_LAYER=3, NUM_LOOPS=1,
                     LOOP_START=1, LOOP_END=1, ENABLE_LOOPING_AT=0.5, SWA_EVERY=0, SMEAR_GATE=1, WARMUP_STEPS=3,
                     QUANT_BITS_MLP=5, CPU_DTYPE="bf16", TTT_LORA_RANK=8, TTT_BATCH_SIZE=16)


def frontier_env(caseops_data, **kw):
    """The tiny frontier settings on the CaseOps sample (the recipe's kind of data, CASEOPS_ENABLED=1)."""
    return trainer_env(caseops_data, **{**FRONTIER_TINY, **kw})


@pytest.fixture(scope="module")
def frontier_two(caseops_data, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("frontier")
    res = run_trainer(cwd, frontier_env(caseops_data, RUN_ID="f2"), nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd, (cwd / "logs" / "f2.txt").read_text()


def test_two_process_frontier_run_trains_exports_and_scores(frontier_two):
    _, log = frontier_two
    assert "train_gpt run_id:f2 mode:train recipe:frontier" in log
    assert re.search(r"^looping: depth recurrence on from step 6; blocks run as encoder \[0, 1\] decoder \[1, 2, 3\]$", log, re.M)
    assert "ema: the exponential moving average (decay 0.9965) replaces the weights" in log
    losses = [v for _, v in train_losses(log)]
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.5
    pre, post, ttt = (float(final_figures(log, k)[1]) for k in ("final_prequant_exact", "final_roundtrip_exact",
                                                                "final_ttt_exact"))
    assert math.isfinite(ttt) and abs(post - pre) < 0.05
    assert "gptq: Hessians of" in log and re.search(r"export: \d+ bytes .*QUANT_METHOD=gptq QUANT_CLIP=sdclip LQER_TOP_K=3 "
                                                    r"COMPRESSOR=ans", log) and "counted:packed" in log


def test_frontier_artifact_is_rescored_exactly(frontier_two, caseops_data):
    cwd, log = frontier_two
    env = {k: v for k, v in frontier_env(caseops_data, EVAL_ONLY=1, ARTIFACT_PATH=cwd / "logs" / "f2.ptz",
                                         RUN_ID="f2e").items() if k not in FRONTIER_TINY}
    res = run_trainer(cwd, env)
    assert res.returncode == 0, res.stderr[-3000:]
    rescored = (cwd / "logs" / "f2e_eval.txt").read_text()
    for key in ("final_roundtrip_exact", "final_ttt_exact"):
        assert final_figures(rescored, key) == final_figures(log, key)


def test_a_run_killed_before_looping_resumes_to_the_same_score(caseops_data, tmp_path):
    long = dict(ITERATIONS=16, CHECKPOINT_EVERY=4, VAL_LOSS_EVERY=0)
    (tmp_path / "ref").mkdir()
    ref = run_trainer(tmp_path / "ref", frontier_env(caseops_data, RUN_ID="ref", **long))
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = (tmp_path / "ref" / "logs" / "ref.txt").read_text()
    env = frontier_env(caseops_data, RUN_ID="cut", **long)
    proc = start(tmp_path, env)
    interrupt_after(proc, tmp_path / "logs" / "cut.txt", "checkpoint: step 4 ", signal.SIGKILL)
    assert "looping:" not in (tmp_path / "logs" / "cut.txt").read_text()
    res = run_trainer(tmp_path, {**env, "RESUME_FROM": str(tmp_path / "checkpoints" / "cut.pt")})
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = (tmp_path / "logs" / "cut.txt").read_text()
    assert "looping: depth recurrence on from step 8" in resumed
    for key in ("final_prequant_exact", "final_ttt_exact"):
        assert final_figures(resumed, key) == final_figures(reference, key)


# Compiled on CPU: every frontier switch in 2 layers (one looped), so that a cold compile of the few graphs (training
# with and without the loop, one evaluation shape, Newton-Schulz for two matrix shapes) stays in minutes.
COMPILE_TINY = dict(NUM_LAYERS=2, XSA_LAST_N=2, LOOP_START=0, LOOP_END=0, PARALLEL_START_LAYER=1, MLP_MULT=1,
                    EVAL_STRIDE=128, VAL_LOSS_EVERY=0, CPU_DTYPE="fp32", EVAL_MODE="sliding")
COLD_COMPILE_LIMIT = 900  # seconds: a cold compile took 175 s on a busy 2-core AMD EPYC; 5x that, rounded up


def test_compiled_frontier_run_matches_eager_and_compiles_nothing_after_warmup(caseops_data, tmp_path):
    """Compiled from an empty compiler cache (its own TORCHINDUCTOR_CACHE_DIR: every run is the cold case a new machine
    meets), in fp32 (bf16 kernels fused by the compiler round differently from eager ones), with the matmul attention
    named so that its autograd.Function is compiled too, and DOC_MASK on (the recipe's). No graph break, nothing
    compiled after the warm-up; the short computations (evaluation before any step, first loss) agree to their print
    precision, the scores to the rounding noise of the eager path itself (1 and 2 threads, SDPA's backward: 2e-4 seen
    on AMD EPYC; floor 2e-3)."""
    logs = {}
    for name, extra in (("compiled", dict(COMPILE=1, ATTN_BACKEND="matmul")), ("eager", dict(ATTN_BACKEND="matmul")),
                        ("threads", dict(ATTN_BACKEND="matmul", OMP_NUM_THREADS=2)), ("sdpa", dict(ATTN_BACKEND="sdpa"))):
        cache = tmp_path / f"inductor_{name}"
        res = run_trainer(tmp_path, frontier_env(caseops_data, RUN_ID=name, **COMPILE_TINY, **extra,
                                                 TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=cache / "triton",
                                                 TORCHINDUCTOR_COMPILE_THREADS=1), timeout=COLD_COMPILE_LIMIT)
        assert res.returncode == 0, res.stderr[-3000:]
        logs[name] = (tmp_path / "logs" / f"{name}.txt").read_text()
    log = logs["compiled"]
    assert "compile:1" in log and "compile: 0 graph break(s)" in log and "doc_mask:on" in log
    assert "looping: depth recurrence on from step 6" in log
    assert "compile: 0 graph(s) compiled during the training steps after the warm-up" in log
    assert re.search(r"^warmup: the evaluation's forward shapes compiled in", log, re.M)
    assert all(abs(a - b) <= 2e-4 for a, b in zip(early_figures(log), early_figures(logs["eager"])))
    references = [float(final_figures(logs[n], "final_sliding_exact")[1]) for n in ("eager", "threads", "sdpa")]
    compiled = float(final_figures(log, "final_sliding_exact")[1])
    assert abs(compiled - sum(references) / 3) <= rounding_tolerance(references, 2e-3), (compiled, references)


def early_figures(log: str) -> list[float]:
    """The first step's loss: one forward pass of the initial weights (no evaluation before training here)."""
    return [train_losses(log)[0][1]]


def test_the_packager_accepts_a_frontier_run(frontier_two, tmp_path):
    """Packed code bytes (CODE_BYTES=packed), a TTT score and ANS streams: the log is consistent for
    records/make_submission.py."""
    import subprocess
    import sys
    from conftest import ROOT
    cwd, _ = frontier_two
    res = subprocess.run([sys.executable, str(ROOT / "records" / "make_submission.py"), str(cwd / "logs" / "f2.txt"),
                          "--author", "A", "--github-id", "a", "--name", "frontier", "--blurb", "tiny",
                          "--track", "non_record_16mb", "--records-dir", str(tmp_path), "--check-only"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "[FAIL]" not in res.stdout and "log_consistency" in res.stdout
