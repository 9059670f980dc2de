"""Checkpoints: a run killed (SIGKILL) or stopped (SIGTERM) mid-way and resumed ends exactly where the
uninterrupted run ends, bit for bit with 1 process and with 2 (gradients of 2 ranks are a sum of two, and the Muon
updates are gathered, not summed: the same order every time)."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, final_figures, run_trainer, train_losses, trainer_env

pytestmark = pytest.mark.slow  # long end-to-end runs: deselect with -m "not slow"

LONG = dict(ITERATIONS=40, WARMDOWN_ITERS=20, VAL_LOSS_EVERY=0, CHECKPOINT_EVERY=5, SWA_EVERY=3)


def start(cwd, env, nproc=0):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc else [sys.executable])
    return subprocess.Popen(launcher + [str(ROOT / "train_gpt.py")], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def interrupt_after(proc, log_path, marker, sig):
    """Send `sig` as soon as `marker` shows in the log; returns the process output."""
    deadline = time.time() + 240
    while marker not in (log_path.read_text() if log_path.exists() else ""):
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be interrupted"
        time.sleep(0.02)
    os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    return out


@pytest.fixture(scope="module")
def reference(sample_data, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("reference")
    res = run_trainer(cwd, trainer_env(sample_data, RUN_ID="ref", **LONG))
    assert res.returncode == 0, res.stderr[-3000:]
    return (cwd / "logs" / "ref.txt").read_text(), (cwd / "logs" / "ref.ptz").read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_single_process_run_resumes_bit_for_bit(reference, sample_data, tmp_path, sig):
    env = trainer_env(sample_data, RUN_ID="cut", **LONG)
    log_path, ckpt = tmp_path / "logs" / "cut.txt", tmp_path / "checkpoints" / "cut.pt"
    proc = start(tmp_path, env)
    interrupt_after(proc, log_path, "checkpoint: step 10 ", sig)
    log = log_path.read_text()
    assert "final_sliding_exact" not in log and ckpt.exists()
    if sig == signal.SIGTERM:
        assert proc.returncode == 143
        assert "stopped by SIGTERM at step" in log and "(SIGTERM)" in log
    else:
        assert proc.returncode == -signal.SIGKILL
    res = run_trainer(tmp_path, {**env, "RESUME_FROM": str(ckpt)})
    assert res.returncode == 0, res.stderr[-3000:]
    log = log_path.read_text()
    resumed = re.search(r"resumed from \S+ at step (\d+) \(training time so far ([\d.]+)s\)", log)
    resumed_at, seconds = int(resumed[1]), float(resumed[2])
    logged_ms = dict(re.findall(r"step:(\d+)/40 train_loss:\S+ train_time:(\d+)ms", log))[str(resumed_at)]
    assert 10 <= resumed_at < 40 and abs(seconds - int(logged_ms) / 1000) < 0.2
    ref_log, ref_artifact = reference
    assert (tmp_path / "logs" / "cut.ptz").read_bytes() == ref_artifact
    ref_losses = dict(train_losses(ref_log))
    assert all(ref_losses[step] == loss for step, loss in train_losses(log.split("resumed from")[1]))
    assert final_figures(log, "final_sliding_exact") == final_figures(ref_log, "final_sliding_exact")


def test_interrupted_two_process_run_resumes_bit_for_bit(sample_data, tmp_path):
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    res = run_trainer(ref_dir, trainer_env(sample_data, RUN_ID="ref2", **LONG), nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    env = trainer_env(sample_data, RUN_ID="cut2", **LONG)
    proc = start(tmp_path, env, nproc=2)
    interrupt_after(proc, tmp_path / "logs" / "cut2.txt", "checkpoint: step 10 ", signal.SIGTERM)
    assert "stopped by SIGTERM at step" in (tmp_path / "logs" / "cut2.txt").read_text()
    res = run_trainer(tmp_path, {**env, "RESUME_FROM": str(tmp_path / "checkpoints" / "cut2.pt")}, nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    ref, got = ((d / "logs" / f"{n}.txt").read_text() for d, n in ((ref_dir, "ref2"), (tmp_path, "cut2")))
    for key in ("final_prequant_exact", "final_sliding_exact"):
        assert final_figures(ref, key) == final_figures(got, key)
    assert (ref_dir / "logs" / "ref2.ptz").read_bytes() == (tmp_path / "logs" / "cut2.ptz").read_bytes()


def test_resume_refuses_a_checkpoint_of_other_settings(reference, sample_data, tmp_path):
    env = trainer_env(sample_data, RUN_ID="a", **{**LONG, "ITERATIONS": 6})
    assert run_trainer(tmp_path, env).returncode == 0
    res = run_trainer(tmp_path, {**env, "RUN_ID": "b", "MODEL_DIM": "32", "RESUME_FROM": "checkpoints/a.pt"})
    assert res.returncode == 2 and "was made with other settings" in res.stderr and "MODEL_DIM: checkpoint 64, now 32" in res.stderr
