"""End-to-end CPU runs through python3 and torchrun on the sample data: log contract, process-count
independence, evaluation-only re-scoring, and the non-finite stop."""
import hashlib
import json
import re

import pytest

from conftest import ROOT, final_figures, rounding_tolerance, run_trainer, train_losses, trainer_env


@pytest.fixture(scope="module")
def single(sample_data, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("single")
    res = run_trainer(cwd, trainer_env(sample_data, RUN_ID="one"))
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd, (cwd / "logs" / "one.txt").read_text()


def summary_of(log: str, cwd) -> dict:
    """The run's summary file, named in the log; the log's last line is the official score line."""
    lines = log.strip().splitlines()
    assert lines[-1].startswith("final_int8_zlib_roundtrip_exact val_loss:")
    assert lines[-1].split(" ", 1)[1] == re.search(r"^final_sliding_exact (val_loss:\S+ val_bpb:\S+)", log, re.M)[1]
    path = re.search(r"^summary: (\S+)$", log, re.M)[1]
    return json.loads((cwd / path).read_text())


def test_log_header_final_lines_and_summary_agree(single):
    cwd, log = single
    lines = log.splitlines()
    code = (ROOT / "train_gpt.py").read_bytes()
    assert lines[0] == "train_gpt run_id:one mode:train recipe:classic"
    assert lines[1] == f"code sha256:{hashlib.sha256(code).hexdigest()} bytes:{len(code)}"
    assert re.match(r"versions python:\S+ torch:\S+", lines[2])
    assert re.match(r"device type:cpu name:.+ world_size:1 backend:none attention:sdpa kernels:reference compile:0 precision:torch.float32",
                    lines[3])
    assert lines[4].startswith("settings that differ from the classic recipe: ") and "NUM_LAYERS=2" in lines[4]
    assert lines[5] == "config:" and "  NUM_LAYERS=2" in lines and "  EVAL_SEQ_LEN=128" in lines
    s = summary_of(log, cwd)
    loss, bpb = final_figures(log, "final_sliding_exact")
    assert (f"{s['val_loss']:.8f}", f"{s['val_bpb']:.8f}") == (loss, bpb)
    assert f"{s['prequant_val_bpb']:.8f}" == final_figures(log, "final_prequant_exact")[1]
    assert f"{s['roundtrip_val_bpb']:.8f}" == final_figures(log, "final_roundtrip_exact")[1]
    artifact = cwd / "logs" / "one.ptz"
    assert s["artifact_bytes"] == artifact.stat().st_size and s["bytes_total"] == artifact.stat().st_size + len(code)
    assert f"final_size artifact_bytes:{s['artifact_bytes']} code_bytes:{len(code)} total_bytes:{s['bytes_total']} " \
           "cap:16000000 status:ok" in log
    assert s["steps"] == 12 and s["stop_reason"] == "iterations" and s["val_full"] is False
    assert s["non_default"]["NUM_LAYERS"] == 2 and s["launch"].endswith("python3 train_gpt.py")
    assert [step for step, _ in train_losses(log)] == list(range(1, 13))
    # it learned something, and quantisation costs little
    first_val = float(re.search(r"step:0/12 val_loss:\S+ val_bpb:(\S+)", log).group(1))
    assert s["val_bpb"] < first_val - 0.3 and abs(s["roundtrip_val_bpb"] - s["prequant_val_bpb"]) < 0.05
    assert int(re.search(r"bpb_audit: (\d+) validation documents re-encode to their ids and decode", log)[1]) > 20


@pytest.fixture(scope="module")
def variants(sample_data, tmp_path_factory):
    """Runs of the classic tiny configuration beside `single`: the same settings again; rounding variants of the same
    function (2 threads; the matmul attention's own backward); and the fused kernels. name -> log."""
    cwd, logs = tmp_path_factory.mktemp("variants"), {}
    for name, extra in (("again", {}), ("threads", dict(OMP_NUM_THREADS=2)), ("matmul", dict(ATTN_BACKEND="matmul")),
                        ("fused", dict(FUSED_KERNELS="1"))):
        res = run_trainer(cwd, trainer_env(sample_data, RUN_ID=name, **extra))
        assert res.returncode == 0, res.stderr[-3000:]
        logs[name] = (cwd / "logs" / f"{name}.txt").read_text()
    return cwd, logs


def early_figures(log: str) -> list[float]:
    """The figures of short computations: the evaluation before any step, the first step's loss."""
    return [float(v) for v in re.search(r"step:0/\d+ val_loss:(\S+) val_bpb:(\S+)", log).groups()] + [
        train_losses(log)[0][1]]


def test_fused_kernels_compute_the_same_functions_in_fp32(single, variants):
    """FUSED_KERNELS=1 in fp32 (auto picks them for bf16 only) is used, and trains as the reference kernels do. Short
    computations agree to their print precision (1e-4; a forward pass in fp32 is exact to about 1e-6); after training
    and quantisation, to the rounding noise measured on the reference path itself (spread of 1 and 2 threads and the
    matmul backward: 5e-4 seen on AMD EPYC and Intel Xeon; floor 2e-3). Exactness: the fp64 tests of the kernels."""
    cwd, logs = variants
    log = logs["fused"]
    assert "attention:sdpa kernels:fused" in log and "attention:sdpa kernels:reference" in single[1]
    assert summary_of(log, cwd)["config"]["FUSED_KERNELS"] == "1"
    assert all(abs(a - b) <= 2e-4 for a, b in zip(early_figures(log), early_figures(single[1])))
    for key in ("final_prequant_exact", "final_sliding_exact"):
        references = [float(final_figures(t, key)[1]) for t in (single[1], logs["threads"], logs["matmul"])]
        tolerance = rounding_tolerance(references, 2e-3)
        assert abs(float(final_figures(log, key)[1]) - sum(references) / 3) <= tolerance, (key, references)


@pytest.fixture(scope="module")
def two(sample_data, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("two")
    res = run_trainer(cwd, trainer_env(sample_data, RUN_ID="two"), nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd, (cwd / "logs" / "two.txt").read_text()


def test_two_processes_follow_the_same_loss_curve(single, two):
    """Exactly, by construction: each process runs one of the step's 2 micro-batches with the same kernels (1 thread
    each); the gradient average (g1 + g2) / 2 equals g1 / 2 + g2 / 2 bit for bit (a sum of two is commutative, halving
    is exact), and the Muon updates are all-gathered, not summed."""
    tmp_path, log = two
    assert "world_size:2 backend:gloo" in log
    assert train_losses(single[1]) == train_losses(log)
    for key in ("final_prequant_exact", "final_roundtrip_exact", "final_sliding_exact"):
        assert final_figures(single[1], key) == final_figures(log, key)
    assert summary_of(log, tmp_path)["launch"].endswith("torchrun --standalone --nproc_per_node=2 train_gpt.py")


def eval_env(sample_data, **kw):
    """Only what locates the data and the artifact: every model and score setting comes from the artifact."""
    env = {k: v for k, v in trainer_env(sample_data).items() if k not in tg_names()}
    env.update(DATA_PATH=sample_data[0], TOKENIZER_PATH=sample_data[1])
    return {**env, **{k: str(v) for k, v in kw.items()}}


def tg_names():
    import train_gpt as tg
    return set(tg.ENV_NAMES)


def test_eval_only_reproduces_the_logged_score_with_no_other_settings(single, sample_data):
    cwd, log = single
    env = eval_env(sample_data, EVAL_ONLY=1, ARTIFACT_PATH=cwd / "logs" / "one.ptz", RUN_ID="rescore")
    assert not {"EVAL_STRIDE", "EVAL_BATCH_SEQS", "CPU_DTYPE", "VAL_MAX_TOKENS", "NUM_LAYERS"} & set(env)
    res = run_trainer(cwd, env)
    assert res.returncode == 0, res.stderr[-3000:]
    rescored = (cwd / "logs" / "rescore_eval.txt").read_text()
    assert rescored.startswith("train_gpt run_id:rescore mode:eval_only recipe:classic") and "not a re-score" not in rescored
    for key in ("final_roundtrip_exact", "final_sliding_exact"):
        assert final_figures(rescored, key) == final_figures(log, key)
    assert re.search(r"^final_size .* status:ok ", rescored, re.M)
    assert summary_of(rescored, cwd)["mode"] == "eval_only"


def test_eval_only_with_other_windows_scores_every_target_once_and_says_so(single, sample_data):
    cwd, log = single
    env = eval_env(sample_data, EVAL_ONLY=1, ARTIFACT_PATH=cwd / "logs" / "one.ptz", RUN_ID="other_windows",
                   EVAL_SEQ_LEN=64, EVAL_STRIDE=16)
    res = run_trainer(cwd, env)
    assert res.returncode == 0, res.stderr[-3000:]
    text = (cwd / "logs" / "other_windows_eval.txt").read_text()
    assert "note: not a re-score: EVAL_SEQ_LEN=64 (the artifact's run used 128)" in text
    assert "note: not a re-score: EVAL_STRIDE=16 (the artifact's run used 64)" in text
    s = summary_of(text, cwd)
    assert s["val_tokens"] == (6000 - 1) // 64 * 64 and s["eval_stride"] == 16  # the artifact's VAL_MAX_TOKENS
    assert final_figures(text, "final_sliding_exact") != final_figures(log, "final_sliding_exact")


def test_eval_only_refuses_a_stride_longer_than_the_artifacts_windows(single, sample_data):
    cwd, _ = single
    res = run_trainer(cwd, eval_env(sample_data, EVAL_ONLY=1, ARTIFACT_PATH=cwd / "logs" / "one.ptz", RUN_ID="x",
                                    EVAL_STRIDE=200))
    assert res.returncode == 2 and "EVAL_STRIDE=200 is larger than the eval length 128" in res.stderr
    assert not (cwd / "logs" / "x_eval.txt").exists()


def test_eval_only_refuses_shape_settings_that_contradict_the_artifact(single, sample_data):
    cwd, _ = single
    env = eval_env(sample_data, EVAL_ONLY=1, ARTIFACT_PATH=cwd / "logs" / "one.ptz", NUM_LAYERS=3)
    res = run_trainer(cwd, env)
    assert res.returncode == 2
    assert "NUM_LAYERS=3 but the artifact has 2" in res.stderr


def diverge_from(monkeypatch, first_bad_step: int):
    """From the given optimiser step on, Muon leaves a NaN in the weights, as a diverging run would (no
    setting in range can make a tiny run diverge)."""
    import train_gpt as tg
    real, calls = tg.Muon.step, []

    def step(self):
        real(self)
        calls.append(1)
        if len(calls) >= first_bad_step:
            self.param_groups[0]["params"][0].data.fill_(float("nan"))
    monkeypatch.setattr(tg.Muon, "step", step)


@pytest.fixture
def diverging(monkeypatch):
    diverge_from(monkeypatch, 1)


def test_non_finite_loss_stops_at_once_with_the_step(workspace, monkeypatch, capsys, diverging):
    import train_gpt as tg
    for k, v in dict(ITERATIONS="12", RUN_ID="nan").items():
        monkeypatch.setenv(k, v)
    assert tg.main() == 1
    err = capsys.readouterr().err
    assert re.search(r"training stopped: train loss is nan at step 2 \(last finite train loss [\d.]+ at step 1, "
                     r"last val_bpb [\d.]+ at step 0\)", err)
    assert not (workspace / "logs" / "nan.ptz").exists()
    assert (workspace / "logs" / "nan.txt").read_text().splitlines()[-1].startswith(
        "run failed: training stopped: train loss is nan at step 2")


def test_qat_switches_on_for_the_last_fraction_in_bf16(workspace, monkeypatch):
    import train_gpt as tg
    for k, v in dict(QAT_FRAC="0.5", CPU_DTYPE="bf16", ITERATIONS="6", WARMUP_STEPS="2", RUN_ID="qat").items():
        monkeypatch.setenv(k, v)
    assert tg.main() == 0
    log = (workspace / "logs" / "qat.txt").read_text()
    assert "precision:torch.bfloat16" in log
    assert "qat: fake quantisation at the export bit widths from step 3" in log
    assert log.count("qat: fake quantisation") == 1
    # the run goes on through SWA, export and the round trip with fake-quantised weights
    pre, post = (float(final_figures(log, k)[1]) for k in ("final_prequant_exact", "final_roundtrip_exact"))
    assert abs(post - pre) < 0.02


def test_wallclock_cap_stops_all_work_within_the_limit(workspace, monkeypatch):
    import train_gpt as tg
    for k, v in dict(MAX_WALLCLOCK_SECONDS="2", ITERATIONS="100000", WARMDOWN_ITERS="5", RUN_ID="cap").items():
        monkeypatch.setenv(k, v)
    assert tg.main() == 0
    s = json.loads((workspace / "logs" / "cap.json").read_text())
    assert s["stop_reason"] == "wallclock" and 1 <= s["steps"] < 100000
    # the rule: stop before a step (at 1.5 step times' margin, on a clock one step old) would pass the cap
    assert 2.0 - 3 * s["step_avg_ms"] / 1000 < s["train_time_s"] <= 2.0


def test_a_non_finite_step_never_replaces_the_last_good_checkpoint(workspace, monkeypatch):
    import torch
    import train_gpt as tg
    diverge_from(monkeypatch, 2)  # step 2's update breaks the weights; its loss (computed before) is finite
    for k, v in dict(CHECKPOINT_EVERY="1", ITERATIONS="8", RUN_ID="nanckpt").items():
        monkeypatch.setenv(k, v)
    assert tg.main() == 1
    log = (workspace / "logs" / "nanckpt.txt").read_text()
    assert "checkpoint: step 1 written" in log and "checkpoint: step 2" not in log
    assert log.splitlines()[-1].startswith("run failed: training stopped: the weights are not finite after step 2")
    state = torch.load(workspace / "checkpoints" / "nanckpt.pt", weights_only=True)
    assert state["step"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_the_same_settings_give_the_same_run_bit_for_bit(single, variants):
    """Reproducible on any machine: the same settings on the same machine give the same losses, scores and artifact
    (no figure is pinned: fp32 kernels round differently on other CPUs; tests/bench_cpu.py compares commits)."""
    cwd, logs = variants
    assert train_losses(logs["again"]) == train_losses(single[1]) and len(train_losses(single[1])) == 12
    for key in ("final_prequant_exact", "final_roundtrip_exact", "final_sliding_exact"):
        assert final_figures(logs["again"], key) == final_figures(single[1], key)
    assert (cwd / "logs" / "again.ptz").read_bytes() == (single[0] / "logs" / "one.ptz").read_bytes()


@pytest.mark.slow
def test_two_machines_give_the_score_of_one_machine_with_two_processes(two, sample_data, tmp_path):
    """torchrun's multi-node launch, on one machine: two launchers of one process each meet at a rendezvous
    endpoint; the score equals that of one launcher with two processes, and only global rank 0 writes."""
    import socket
    import subprocess
    import sys
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = trainer_env(sample_data, RUN_ID="nodes")
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                               "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=localhost:{port}",
                               "--rdzv_id=golf", str(ROOT / "train_gpt.py")], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [n.communicate(timeout=300)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    log = (tmp_path / "logs" / "nodes.txt").read_text()
    assert "world_size:2 backend:gloo" in log and sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        "nodes.json", "nodes.ptz", "nodes.txt"]
    assert "final_sliding_exact" not in outputs[1]  # the second machine's process prints nothing
    for key in ("final_prequant_exact", "final_roundtrip_exact", "final_sliding_exact"):
        assert final_figures(log, key) == final_figures(two[1], key)


@pytest.mark.slow
def test_console_shows_what_people_grep_for_and_the_log_has_everything(single, sample_data, tmp_path):
    res = run_trainer(tmp_path, trainer_env(sample_data, RUN_ID="console", WEIGHT_DECAY="0.1", EMBED_BITS="6",
                                            MAX_WALLCLOCK_SECONDS="1.5", ITERATIONS="100000", WARMDOWN_ITERS="3"))
    assert res.returncode == 0, res.stderr[-2000:]
    out, log = res.stdout, (tmp_path / "logs" / "console.txt").read_text()
    assert out.splitlines()[0] == "log: logs/console.txt"
    assert out.strip().splitlines()[-1].startswith("final_int8_zlib_roundtrip_exact val_loss:")
    assert "  NUM_LAYERS=2" in log and "  NUM_LAYERS=2" not in out  # the full dump goes to the log only
    assert re.search(r"^settings that differ from the classic recipe: .*NUM_LAYERS=2", out, re.M)
    for pattern in (r"^model_params:\d+", r"^stopping_early: wallclock_cap train_time:\d+ms step:\d+/100000$",
                    r"^peak memory allocated: \d+ MiB reserved: \d+ MiB", r"^Total submission size: \d+ bytes$",
                    r"^summary: logs/console.json$"):
        assert re.search(pattern, out, re.M) and re.search(pattern, log, re.M), pattern
    assert "warning: WEIGHT_DECAY is a setting of other scripts, not read here: use MUON_WD, ADAM_WD and EMBED_WD" in out
    assert "warning: EMBED_BITS is a setting of other scripts, not read here: use QUANT_BITS_EMBED" in out
    assert "summary_json" not in out and len(out.strip().splitlines()[-1]) < 100
