"""preflight.py: its projection against a hand computation, its verdicts on crafted inputs, its settings' refusals,
and a toy-scale run on CPU whose table holds every phase."""
import json
import math
import subprocess
import sys

import pytest

import preflight as pf
import train_gpt as tg
from conftest import ROOT, trainer_env

MEASURED = dict(params=10_000_000, step_s=0.8, step_loop_s=1.2, compile_s=90.0, calib_batch_s=2.0, export_s=20.0,
                artifact_bytes=15_900_000, load_s=1.5, eval_compile_s=30.0,
                eval_s_per_token=dict(plain=1e-6, sliding=2e-5, doc=5e-5, ttt=4e-4))


def rows_by_phase(rows):
    return {r["phase"]: r for r in rows}


def test_projection_equals_a_hand_computation():
    """8 GPUs from 1: per-process work / 8, plus the ring all-reduce of 4-byte gradients at 200 GB/s; the budget is
    600 s less the calibration reserve; depth recurrence from 35% of it; evaluation per token x tokens / 8."""
    cfg = tg.recipe_defaults("frontier")
    rows = rows_by_phase(pf.project(MEASURED, cfg, 1, 8, 40_000_000, 60_000, 200.0))
    comm = 2 * 7 / 8 * 4 * 10_000_000 / 200e9
    step, loop = 0.8 / 8 + comm, 1.2 / 8 + comm
    assert rows["step, global batch"]["projected"] == pytest.approx(step)
    assert rows["step after recurrence/QAT switch on"]["projected"] == pytest.approx(loop)
    reserve = 1.25 * 2.0 / 8 * 16 + 1.0
    budget = 600 - reserve
    steps = 0.35 * budget / step + 0.65 * budget / loop
    assert rows["training steps in the budget"]["projected"] == pytest.approx(steps)
    assert rows["GPTQ calibration (inside the training budget)"]["projected"] == pytest.approx(2.0 * 16 / 8)
    assert rows["GPTQ calibration (inside the training budget)"]["limit"] == pytest.approx(reserve)
    assert rows["artifact + code (packed)"]["projected"] == 15_960_000
    total = 1.5 + 30.0 + 1e-6 * 40e6 / 8 + 4e-4 * 40e6 / 8
    assert rows["evaluation in all (plain + ttt)"]["projected"] == pytest.approx(total)
    assert rows["eval: ttt"]["projected"] == pytest.approx(4e-4 * 40e6 / 8)


def test_verdicts_and_fixes_on_crafted_inputs():
    assert [pf.verdict(v, 600, 60) for v in (100, 540, 541, 600, 600.01)] == ["ok", "ok", "tight", "tight", "over"]
    cfg = tg.recipe_defaults("frontier")
    rows = rows_by_phase(pf.project(MEASURED, cfg, 1, 8, 40_000_000, 60_000, 200.0))
    over = {p for p, r in rows.items() if r["verdict"] == "over"}
    assert over == {"evaluation in all (plain + ttt)"} and "fix" in rows["evaluation in all (plain + ttt)"]
    assert rows["artifact + code (packed)"]["verdict"] == "tight" and "fix" not in rows["artifact + code (packed)"]
    small = dict(MEASURED, artifact_bytes=15_000_000, eval_s_per_token=dict(plain=1e-6, ttt=5e-5))
    assert {r["verdict"] for r in pf.project(small, cfg, 1, 8, 40_000_000, 60_000, 200.0)} == {None, "ok"}
    big = dict(MEASURED, artifact_bytes=16_000_001)
    row = rows_by_phase(pf.project(big, cfg, 1, 8, 40_000_000, 60_000, 200.0))["artifact + code (packed)"]
    assert row["verdict"] == "over" and "FIT_TO_CAP" in row["fix"]
    unmeasured = dict(MEASURED, eval_s_per_token=dict(plain=math.inf, ttt=math.inf))
    assert rows_by_phase(pf.project(unmeasured, cfg, 1, 8, 1, 0, 200.0))["evaluation in all (plain + ttt)"][
        "verdict"] == "over"


@pytest.mark.parametrize("env, message", [
    (dict(PREFLIGHT_SECONDS="-1"), "PREFLIGHT_SECONDS=-1.0 is out of range"),
    (dict(TARGET_GPUS="two"), "TARGET_GPUS='two' is not a number"),
    (dict(PREFLIGHT_EVAL_MODES="some"), "PREFLIGHT_EVAL_MODES='some' is not allowed"),
    (dict(TARGET_GPUS="3"), "MICRO_BATCHES=2 must be a multiple of the 3 processes"),
    (dict(EVAL_ONLY="1", ARTIFACT_PATH="x.ptz"), "x.ptz: cannot read artifact"),
])
def test_bad_settings_are_one_line_refusals(sample_data, tmp_path, env, message):
    res = subprocess.run([sys.executable, str(ROOT / "preflight.py")], cwd=tmp_path, capture_output=True, text=True,
                         env=trainer_env(sample_data, **env), timeout=120)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "logs").exists()


def test_a_toy_run_measures_and_projects_every_phase(sample_data, tmp_path):
    env = trainer_env(sample_data, RUN_ID="pf", PREFLIGHT_STEPS=3, PREFLIGHT_EVAL_SLICE=2048, QUANT_METHOD="gptq",
                      NUM_LOOPS=1, LOOP_START=0, LOOP_END=0, MICRO_BATCHES=8, TRAIN_BATCH_TOKENS=8192,
                      PREFLIGHT_ARTIFACT=tmp_path / "kept.ptz")
    res = subprocess.run([sys.executable, str(ROOT / "preflight.py")], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode in (0, 3), res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((tmp_path / "logs" / "pf_preflight.json").read_text())
    phases = [r["phase"] for r in summary["table"]]
    for phase in ("compile + warm-up (not timed by the rules)", "step, global batch",
                  "step after recurrence/QAT switch on", "training steps in the budget",
                  "GPTQ calibration (inside the training budget)", "training + calibration",
                  "export (quantise + compress)", "artifact + code (raw)", "eval: plain", "eval: sliding", "eval: doc",
                  "eval: ttt", "evaluation in all (plain + sliding)"):
        assert phase in phases, phase
    m = summary["measurements"]
    assert m["step_s"] > 0 and m["step_loop_s"] > 0 and m["calib_batch_s"] > 0 and m["export_s"] > 0
    assert m["artifact_bytes"] == (tmp_path / "kept.ptz").stat().st_size  # the kept artifact is the measured one
    assert all(0 < v < 1 for v in m["eval_s_per_token"].values())
    table = (tmp_path / "logs" / "pf_preflight.txt").read_text()
    assert "preflight table: 1 process(es) here -> 8 GPUs" in table and ("every phase fits" in table) == (
        res.returncode == 0)
    # the kept artifact re-scores with EVAL_ONLY
    rescore = subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300, env={**{k: v for k, v in env.items() if k not in tg.ENV_NAMES},
                                                          "DATA_PATH": sample_data[0], "TOKENIZER_PATH": sample_data[1],
                                                          "EVAL_ONLY": "1", "ARTIFACT_PATH": str(tmp_path / "kept.ptz"),
                                                          "RUN_ID": "kept"})
    assert rescore.returncode == 0, rescore.stderr[-2000:]
