"""Tests of records/make_submission.py against synthetic logs that follow the
train_gpt.py log contract (header, periodic lines, final lines, summary_json)."""
import hashlib
import importlib.util
import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "records" / "make_submission.py"
_spec = importlib.util.spec_from_file_location("make_submission", SCRIPT)
ms = importlib.util.module_from_spec(_spec)
sys.modules["make_submission"] = ms  # dataclasses look their module up
_spec.loader.exec_module(ms)

DATE = "2025-01-02"

# A stand-in for train_gpt.py that follows the DRY_RUN contract: header, `code`
# line from its own bytes, `config:` block, parameter count, exit 0.
STANDIN = '''\
"""Stand-in trainer for the records tests. It follows the DRY_RUN contract of
train_gpt.py: print the header, the code hash line, the resolved configuration
and the parameter count, then exit without touching any data."""
import hashlib
import os
import sys

# Every setting, with its default. The environment overrides any of them.
DEFAULTS = {
    "RUN_ID": "run", "SEED": 1337, "DATA_PATH": "./data/datasets/fineweb10B_sp1024",
    "TOKENIZER_PATH": "./data/tokenizers/fineweb_1024_bpe.model",
    "ITERATIONS": 20000, "NUM_LAYERS": 9, "MODEL_DIM": 512, "NUM_HEADS": 8,
    "NUM_KV_HEADS": 4, "MLP_MULT": 2, "VOCAB_SIZE": 1024, "TRAIN_SEQ_LEN": 1024,
    "TRAIN_BATCH_TOKENS": 524288, "MATRIX_LR": 0.04, "SCALAR_LR": 0.04,
    "TIED_EMBED_LR": 0.05, "MUON_MOMENTUM": 0.95, "WARMDOWN_ITERS": 1200,
    "EVAL_STRIDE": 64, "MAX_WALLCLOCK_SECONDS": 600.0,
}


def resolve_config():
    """Read every setting from the environment, typed like its default."""
    config = {}
    for name, default in DEFAULTS.items():
        raw = os.environ.get(name)
        config[name] = default if raw is None else type(default)(raw)
    return config


def count_parameters(config):
    """Parameters of a plain GPT with a tied embedding."""
    d, layers, mult = config["MODEL_DIM"], config["NUM_LAYERS"], config["MLP_MULT"]
    kv = d * config["NUM_KV_HEADS"] // config["NUM_HEADS"]
    attention = d * d * 2 + d * kv * 2
    mlp = d * d * mult * 2
    return config["VOCAB_SIZE"] * d + layers * (attention + mlp + 2 * d)


def main():
    code = open(__file__, "rb").read()
    config = resolve_config()
    print(f"train_gpt run_id:{config['RUN_ID']} mode:train")
    print(f"code sha256:{hashlib.sha256(code).hexdigest()} bytes:{len(code)}")
    print("config:")
    for name, value in config.items():
        print(f"  {name}={value}")
    print(f"model_params:{count_parameters(config)}")
    print(f"script:{os.path.basename(__file__)} name:{__name__}")
    if os.environ.get("DRY_RUN") == "1":
        return 0
    raise SystemExit("this stand-in cannot train")


if __name__ == "__main__":
    sys.exit(main())
'''
STANDIN_BYTES = STANDIN.encode()
LOSSES = {1: 1.9301234567, 2: 1.9323456789, 3: 1.9288901234}


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def summary(seed=1, code=STANDIN_BYTES, **over):
    """A summary_json of a passing 10min_16mb run; keyword arguments override."""
    loss = LOSSES.get(seed, 1.93 + seed * 1e-4)
    s = {
        "run_id": f"run_s{seed}", "mode": "train", "seed": seed,
        "code_sha256": sha(code), "code_bytes": len(code),
        "config": {"NUM_LAYERS": 10, "MODEL_DIM": 512, "MATRIX_LR": 0.025, "SEED": seed,
                   "RUN_ID": f"run_s{seed}", "DATA_PATH": f"/data/{seed}", "ITERATIONS": 20000,
                   "TOKENIZER_PATH": "/tok.model", "EVAL_STRIDE": 64},
        "non_default": {"NUM_LAYERS": 10, "MATRIX_LR": 0.025, "SEED": seed,
                        "RUN_ID": f"run_s{seed}"},
        "launch": f"NUM_LAYERS=10 MATRIX_LR=0.025 SEED={seed} RUN_ID=run_s{seed} "
                  "torchrun --standalone --nproc_per_node=8 train_gpt.py",
        "world_size": 8, "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3",
        "hardware": "8x NVIDIA H100 80GB HBM3", "python": "3.11.7", "torch": "2.13.0",
        "steps": 6700 + seed, "step_avg_ms": 89.41 + seed / 100, "train_time_s": 599.2,
        "stop_reason": "wallclock",
        "prequant_val_loss": loss - 0.011, "prequant_val_bpb": (loss - 0.011) * 0.5925,
        "roundtrip_val_loss": loss + 0.021, "roundtrip_val_bpb": (loss + 0.021) * 0.5925,
        "val_loss": loss, "val_bpb": loss * 0.5925,
        "eval_stride": 64, "eval_seq_len": 2048, "val_tokens": 62021632, "val_full": True,
        "eval_time_s": 168.123 + seed, "total_eval_time_s": 251.5 + seed,
        "artifact_bytes": 15_800_000 + seed, "size_cap": 16_000_000, "over_cap": False,
        "artifact_path": "final_model.ptz",
    }
    s.update(over)
    s.setdefault("bytes_total", s["code_bytes"] + s["artifact_bytes"])
    if "artifact_bytes" in over or "code_bytes" in over:
        s["bytes_total"] = s["code_bytes"] + s["artifact_bytes"]
        s["over_cap"] = s["bytes_total"] > 16_000_000
    return s


def write_log(path, s, *, truncate=False, header_sha=None, resumed=False, edit=None):
    """Write a log the way train_gpt.py does, from a summary dict."""
    n, steps = s["config"].get("ITERATIONS", 20000), s["steps"]
    ms_per = s["step_avg_ms"]
    head = [f"train_gpt run_id:{s['run_id']} mode:train",
            f"code sha256:{header_sha or s['code_sha256']} bytes:{s['code_bytes']}",
            "world_size:8 grad_accum_steps:1 (an unrelated line)"]
    body = []
    for i in range(6):
        k = i * steps // 5
        if k:
            body.append(f"step:{k}/{n} train_loss:{6.9 - 4.8 * k / steps + s['seed'] / 1000:.4f} "
                        f"train_time:{int(k * ms_per)}ms step_avg:{ms_per:.2f}ms "
                        f"tok/s:5860000 mfu:41.20%")
        if i in (0, 3, 5):
            body.append(f"step:{k}/{n} val_loss:{6.9 - 4.9 * k / steps:.4f} "
                        f"val_bpb:{(6.9 - 4.9 * k / steps) * 0.5925:.4f} "
                        f"train_time:{int(k * ms_per)}ms step_avg:{ms_per:.2f}ms")
    lines = head + (head + body if resumed else body)
    lines += [
        f"stopping_early: {s['stop_reason']} at step:{steps}",
        f"final_prequant_exact val_loss:{s['prequant_val_loss']:.8f} "
        f"val_bpb:{s['prequant_val_bpb']:.8f} eval_time:41234ms",
        f"final_roundtrip_exact val_loss:{s['roundtrip_val_loss']:.8f} "
        f"val_bpb:{s['roundtrip_val_bpb']:.8f} eval_time:42100ms",
        f"final_sliding_exact val_loss:{s['val_loss']:.8f} val_bpb:{s['val_bpb']:.8f} "
        f"stride:{s['eval_stride']} eval_time:{round(s['eval_time_s'] * 1000)}ms",
        f"final_size artifact_bytes:{s['artifact_bytes']} code_bytes:{s['code_bytes']} "
        f"total_bytes:{s['bytes_total']} cap:16000000 "
        f"status:{'OVER_CAP' if s['over_cap'] else 'ok'}",
        "summary_json: " + json.dumps(s),
    ]
    if truncate:
        lines = lines[: len(head) + 3]
    text = "\n".join(lines) + "\n"
    if edit:
        text = edit(text)
    Path(path).write_text(text)
    return Path(path)


@pytest.fixture
def env(tmp_path):
    """tmp dirs: code file, logs, records dir; a helper that runs the tool."""
    code = tmp_path / "train_gpt.py"
    code.write_bytes(STANDIN_BYTES)
    (tmp_path / "logs").mkdir()

    class Env:
        root = tmp_path
        records = tmp_path / "records"

        def log(self, seed=1, name=None, **kw):
            opts = {k: kw.pop(k) for k in ("truncate", "header_sha", "resumed", "edit") if k in kw}
            return write_log(tmp_path / "logs" / (name or f"s{seed}.txt"), summary(seed, **kw), **opts)

        def logs(self, seeds=(1, 2, 3), **kw):
            return [self.log(s, **kw) for s in seeds]

        def run(self, logs, *extra, track="10min_16mb", name="MyRun", code=code):
            argv = [str(p) for p in logs] + [
                "--author", "Ada Tester", "--github-id", "adatest", "--name", name,
                "--blurb", "A synthetic test run.", "--track", track, "--code", str(code),
                "--records-dir", str(self.records), "--date", DATE, *extra]
            return ms.main(argv)

        def target(self, track="10min_16mb", name="MyRun"):
            return self.records / f"track_{track}" / f"{DATE}_{name}"
    return Env()


def verdicts(out):
    """{check name: status} from the tool's verdict lines."""
    res = {}
    for line in out.splitlines():
        if line.startswith("[") and "] " in line:
            status, rest = line[1:].split("] ", 1)
            res[rest.split(":", 1)[0]] = status
    return res


# ------------------------------------------------------------------ parsing
def test_parse_log_reads_summary_header_curves_and_finals(env):
    s = summary(2)
    run = ms.parse_log(write_log(env.root / "a.txt", s))
    assert run.summary == s and run.seed == 2
    assert run.headers == [{"run_id": "run_s2", "mode": "train"}]
    assert run.code_headers == [{"sha256": sha(STANDIN_BYTES), "bytes": len(STANDIN_BYTES)}]
    assert sorted(run.train_loss) == [1340, 2680, 4021, 5361, 6702]
    assert run.train_loss[6702] == pytest.approx(6.9 - 4.8 + 0.002, abs=1e-4)
    assert sorted(run.val_bpb) == [0, 4021, 6702]
    assert run.val_bpb[0] == pytest.approx(6.9 * 0.5925, abs=1e-4)
    assert run.val_bpb[6702] == pytest.approx(2.0 * 0.5925, abs=1e-4)
    assert run.finals["final_sliding_exact"]["stride"] == 64
    assert run.finals["final_sliding_exact"]["val_loss"] == pytest.approx(s["val_loss"], abs=5e-9)
    assert run.finals["final_size"]["status"] == "ok"
    assert ms.consistency_problems(run) == []


def test_parse_resumed_log_with_two_headers_uses_summary(env):
    run = ms.parse_log(env.log(1, resumed=True))
    assert len(run.headers) == 2 and len(run.code_headers) == 2
    assert run.summary["steps"] == 6701
    assert ms.consistency_problems(run) == []


def test_parse_ignores_unrelated_and_malformed_lines(env):
    def noise(text):
        return ("warning: something\nstep:oops/10 train_loss:x\ncode is fine\n"
                + text.replace("final_size", "random noise line\nfinal_size"))
    run = ms.parse_log(env.log(1, edit=noise))
    assert ms.consistency_problems(run) == []
    assert run.summary["val_loss"] == LOSSES[1]


@pytest.mark.parametrize("case, message", [
    ("missing", "file not found"),
    ("truncated", "no summary_json line"),
    ("badjson", "not valid JSON"),
    ("nokeys", "lacks val_bpb, eval_stride"),
    ("badtype", "seed='1' is not int"),
    ("eval_only", "only training runs"),
])
def test_parse_refusals(env, case, message):
    path = env.root / "logs" / "x.txt"
    if case == "truncated":
        env.log(1, name="x.txt", truncate=True)
    elif case == "badjson":
        env.log(1, name="x.txt", edit=lambda t: t[:-20] + "\n")
    elif case == "nokeys":
        s = summary(1)
        del s["val_bpb"], s["eval_stride"]
        path.write_text("train_gpt run_id:a mode:train\nsummary_json: " + json.dumps(s) + "\n")
    elif case == "badtype":
        bad = summary(1)
        bad["seed"] = "1"
        path.write_text("summary_json: " + json.dumps(bad) + "\n")
    elif case == "eval_only":
        path.write_text("summary_json: " + json.dumps(summary(1, mode="eval_only")) + "\n")
    with pytest.raises(ms.Refusal, match=message):
        ms.parse_log(path)


def test_truncated_log_is_refused_by_the_command(env, capsys):
    logs = [env.log(1), env.log(2, truncate=True)]
    assert env.run(logs) == 1
    err = capsys.readouterr().err
    assert "REFUSED: log" in err and "s2.txt: no summary_json line" in err
    assert not env.records.exists()


def test_missing_log_is_refused_by_the_command(env, capsys):
    assert env.run([env.log(1), env.root / "nope.txt"]) == 1
    assert "nope.txt: file not found" in capsys.readouterr().err


# ------------------------------------------------------------------ a full passing run
def test_record_track_passes_and_writes_folder(env, capsys):
    rc = env.run(env.logs(), "--compare-loss", "1.95", "--compare-bpb", "1.16")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert verdicts(out) == {
        "log_consistency": "PASS", "same_code": "PASS", "same_settings": "PASS",
        "distinct_seeds": "PASS", "shipped_code": "PASS", "size_cap": "PASS",
        "train_time": "PASS", "eval_time": "PASS", "hardware": "PASS",
        "full_validation": "PASS", "significance": "PASS"}
    t = env.target()
    assert sorted(p.name for p in t.iterdir()) == [
        "README.md", "submission.json", "train_curves.png", "train_gpt.py",
        "train_seed1.log", "train_seed2.log", "train_seed3.log"]
    assert (t / "train_gpt.py").read_bytes() == STANDIN_BYTES
    assert (t / "train_seed2.log").read_bytes() == (env.root / "logs" / "s2.txt").read_bytes()
    assert not [p for p in t.parent.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_submission_json_agrees_with_logs(env):
    logs = env.logs()
    assert env.run(logs, "--compare-loss", "1.95") == 0
    sub = json.loads((env.target() / "submission.json").read_text())
    sums = [ms.parse_log(p).summary for p in logs]
    assert sub["author"] == "Ada Tester" and sub["github_id"] == "adatest"
    assert sub["name"] == "MyRun" and sub["date"] == DATE and sub["track"] == "10min_16mb"
    assert sub["blurb"] == "A synthetic test run."
    assert sub["seeds"] == [1, 2, 3]
    for s in sums:
        r = sub["seed_results"][str(s["seed"])]
        for key in ("val_loss", "val_bpb", "artifact_bytes", "steps", "step_avg_ms",
                    "eval_time_s", "prequant_val_loss", "prequant_val_bpb",
                    "roundtrip_val_loss", "roundtrip_val_bpb", "train_time_s",
                    "total_eval_time_s", "stop_reason", "val_tokens", "val_full", "run_id"):
            assert r[key] == s[key], key
        assert r["bytes_total"] == s["bytes_total"]
    losses = [LOSSES[k] for k in (1, 2, 3)]
    assert sub["val_loss"] == pytest.approx(sum(losses) / 3, abs=1e-15)
    assert sub["val_bpb"] == pytest.approx(sum(x * 0.5925 for x in losses) / 3, abs=1e-15)
    m = sum(losses) / 3
    assert sub["val_loss_std"] == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in losses) / 2))
    assert sub["val_bpb_std"] == pytest.approx(sub["val_loss_std"] * 0.5925)
    assert sub["bytes_total"] == max(s["bytes_total"] for s in sums) == 15_800_003 + len(STANDIN_BYTES)
    assert sub["bytes_code"] == len(STANDIN_BYTES) and sub["code_packed"] is False
    assert sub["code_sha256"] == sha(STANDIN_BYTES)
    assert sub["hardware"] == "8x NVIDIA H100 80GB HBM3" and sub["pytorch_version"] == "2.13.0"
    assert sub["launch"] == [s["launch"] for s in sums]
    assert sub["significance"]["passed"] is True
    assert {c["name"]: c["status"] for c in sub["checks"]}["size_cap"] == "PASS"


def test_readme_has_table_stats_launch_checks_and_plot(env):
    assert env.run(env.logs(), "--compare-loss", "1.95") == 0
    readme = (env.target() / "README.md").read_text()
    sub = json.loads((env.target() / "submission.json").read_text())
    for seed in (1, 2, 3):
        s = summary(seed)
        row = (f"| {seed} | {s['steps']} | {s['step_avg_ms']:.2f} | {s['train_time_s']:.1f} | "
               f"{s['total_eval_time_s']:.1f} | {s['prequant_val_bpb']:.8f} | "
               f"{s['roundtrip_val_bpb']:.8f} | {s['val_loss']:.8f} | {s['val_bpb']:.8f} | "
               f"{s['artifact_bytes']:,} | {s['bytes_total']:,} |")
        assert row in readme
        assert s["launch"] in readme
    assert f"| **mean** | | | | | | | **{sub['val_loss']:.8f}** | **{sub['val_bpb']:.8f}**" in readme
    assert f"| **std** | | | | | | | {sub['val_loss_std']:.8f} | {sub['val_bpb_std']:.8f}" in readme
    assert "![training curves](train_curves.png)" in readme
    assert "| `NUM_LAYERS` | `10` |" in readme and "| `MATRIX_LR` | `0.025` |" in readme
    assert "| `SEED`" not in readme
    assert "[PASS] same_code: all 3 runs" in readme and "[PASS] significance:" in readme
    assert "CPU smoke run" not in readme


def test_plot_is_a_valid_png(env):
    assert env.run(env.logs((1, 2))) == 0
    data = (env.target() / "train_curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 500 and height > 200 and data.endswith(b"IEND\xaeB`\x82")


def test_check_only_writes_nothing(env, capsys):
    assert env.run(env.logs(), "--check-only") == 0
    assert "check only: would write" in capsys.readouterr().out
    assert not env.records.exists()


# ------------------------------------------------------------------ each check fails
def test_mixed_code_versions_refused(env, capsys):
    other = STANDIN_BYTES + b"# changed\n"
    logs = [env.log(1), env.log(2, code=other)]
    assert env.run(logs) == 1
    out, err = capsys.readouterr()
    assert verdicts(out)["same_code"] == "FAIL"
    assert "check same_code failed: 2 code versions" in err
    assert not env.records.exists()


def test_mixed_settings_refused_but_per_run_settings_ignored(env, capsys):
    s2 = summary(2)
    s2["config"].update(NUM_LAYERS=12, DATA_PATH="/elsewhere", CHECKPOINT_PATH="/ck")
    write_log(env.root / "logs" / "s2.txt", s2)
    assert env.run([env.log(1), env.root / "logs" / "s2.txt"]) == 1
    out, err = capsys.readouterr()
    assert verdicts(out)["same_settings"] == "FAIL"
    assert "NUM_LAYERS (seed 1: 10, seed 2: 12)" in err
    assert "DATA_PATH" not in err and "CHECKPOINT_PATH" not in err

    s2["config"]["NUM_LAYERS"] = 10  # now only per-run settings differ
    write_log(env.root / "logs" / "s2.txt", s2)
    assert env.run([env.log(1), env.root / "logs" / "s2.txt"]) == 0
    assert verdicts(capsys.readouterr().out)["same_settings"] == "PASS"


def test_different_world_size_counts_as_different_settings(env, capsys):
    assert env.run([env.log(1), env.log(2, world_size=4)]) == 1
    assert "(world_size) (seed 1: 8, seed 2: 4)" in capsys.readouterr().err


def test_duplicate_seed_refused(env, capsys):
    logs = [env.log(1), env.log(1, name="again.txt")]
    assert env.run(logs) == 1
    assert "check distinct_seeds failed: seed(s) [1]" in capsys.readouterr().err


def test_shipped_code_must_match_logged_hash(env, capsys):
    wrong = env.root / "other.py"
    wrong.write_bytes(STANDIN_BYTES.replace(b"Stand-in", b"Changed!"))
    assert env.run(env.logs(), code=wrong) == 1
    out, err = capsys.readouterr()
    assert verdicts(out)["shipped_code"] == "FAIL" and "the logs were made by" in err
    assert env.run(env.logs(), code=env.root / "absent.py") == 1
    assert "absent.py not found" in capsys.readouterr().err


def test_log_consistency_catches_edited_lines(env, capsys):
    bad_final = env.log(1, edit=lambda t: t.replace(
        f"final_sliding_exact val_loss:{LOSSES[1]:.8f}", "final_sliding_exact val_loss:1.80000000"))
    assert env.run([bad_final, env.log(2)]) == 1
    err = capsys.readouterr().err
    assert "check log_consistency failed: seed 1: final_sliding_exact val_loss:1.8" in err
    bad_header = env.log(1, header_sha="0" * 64)
    assert env.run([bad_header, env.log(2)]) == 1
    assert "header code sha256:000000000000" in capsys.readouterr().err
    no_final = env.log(1, edit=lambda t: "\n".join(
        ln for ln in t.splitlines() if not ln.startswith("final_roundtrip")))
    assert env.run([no_final, env.log(2)]) == 1
    assert "no final_roundtrip_exact line" in capsys.readouterr().err


@pytest.mark.parametrize("artifact, ok", [(16_000_000 - len(STANDIN_BYTES), True),
                                          (16_000_001 - len(STANDIN_BYTES), False)])
def test_size_cap_is_exact(env, capsys, artifact, ok):
    rc = env.run([env.log(1), env.log(2, artifact_bytes=artifact)])
    out = capsys.readouterr().out
    assert (rc == 0) == ok
    assert verdicts(out)["size_cap"] == ("PASS" if ok else "FAIL")
    if ok:
        assert "max total 16,000,000 bytes" in out and "headroom 0" in out


def test_over_cap_refused_on_record_track_even_with_flag(env, capsys):
    logs = [env.log(1), env.log(2, artifact_bytes=15_999_000)]
    assert env.run(logs, "--allow-over-cap") == 1
    err = capsys.readouterr().err
    assert "check size_cap failed" in err and "not accepted on the record track" in err


def test_over_cap_non_record_needs_flag_and_is_flagged(env, capsys):
    logs = [env.log(1), env.log(2, artifact_bytes=15_999_000)]
    assert env.run(logs, track="non_record_16mb") == 1
    assert "check size_cap failed" in capsys.readouterr().err
    assert env.run(logs, "--allow-over-cap", track="non_record_16mb") == 0
    assert verdicts(capsys.readouterr().out)["size_cap"] == "WARN"
    t = env.target("non_record_16mb")
    readme = (t / "README.md").read_text()
    assert "**Over the size cap.**" in readme and "seed 2: 16,00" in readme
    sub = json.loads((t / "submission.json").read_text())
    assert sub["bytes_total"] == 15_999_000 + len(STANDIN_BYTES)


@pytest.mark.parametrize("key, name", [("train_time_s", "train_time"),
                                       ("total_eval_time_s", "eval_time")])
def test_time_limits(env, capsys, key, name):
    assert env.run([env.log(1, **{key: 600.0}), env.log(2)]) == 0
    assert verdicts(capsys.readouterr().out)[name] == "PASS"
    logs = [env.log(1, **{key: 600.4}), env.log(2)]
    assert env.run(logs, name="Slow") == 1
    out, err = capsys.readouterr()
    assert verdicts(out)[name] == "FAIL" and f"check {name} failed: max" in err
    assert env.run(logs, name="Slow", track="non_record_16mb") == 0
    assert verdicts(capsys.readouterr().out)[name] == "INFO"


@pytest.mark.parametrize("over", [
    {"world_size": 7},
    {"device_name": "NVIDIA A100-SXM4-80GB", "hardware": "8x NVIDIA A100-SXM4-80GB"},
    {"device": "cpu", "device_name": "AMD EPYC 7B13", "hardware": "2x CPU processes (AMD EPYC)"},
])
def test_hardware_must_be_8x_h100_on_record_track(env, capsys, over):
    logs = [env.log(1, **over), env.log(2, **over)]
    assert env.run(logs) == 1
    assert "check hardware failed: not 8x H100 (seed 1, seed 2)" in capsys.readouterr().err
    assert env.run(logs, track="non_record_16mb") == 0
    assert verdicts(capsys.readouterr().out)["hardware"] == "INFO"


def test_cpu_run_is_labelled_as_smoke_run(env, capsys):
    over = {"device": "cpu", "device_name": "AMD EPYC 7B13", "world_size": 2,
            "hardware": "2x CPU processes (AMD EPYC 7B13)", "val_full": False}
    assert env.run([env.log(1, **over), env.log(2, **over)], track="non_record_16mb") == 0
    v = verdicts(capsys.readouterr().out)
    assert v["full_validation"] == "WARN" and v["hardware"] == "INFO"
    readme = (env.target("non_record_16mb") / "README.md").read_text()
    assert "**CPU smoke run.**" in readme and "2x CPU processes (AMD EPYC 7B13)" in readme
    assert "**Partial validation.**" in readme


def test_partial_validation_refused_on_record_track(env, capsys):
    assert env.run([env.log(1, val_full=False), env.log(2)]) == 1
    assert "check full_validation failed: VAL_MAX_TOKENS truncated" in capsys.readouterr().err


def test_existing_target_folder_refused(env, capsys):
    t = env.target()
    t.mkdir(parents=True)
    (t / "keep.txt").write_text("mine")
    assert env.run(env.logs()) == 1
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in t.iterdir()] == ["keep.txt"]


def test_bad_date_and_help():
    with pytest.raises(SystemExit):
        ms.parse_args(["a.txt", "--author", "a", "--github-id", "b", "--name", "c",
                       "--blurb", "d", "--track", "10min_16mb", "--date", "2025-13-01"])
    p = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for flag in ("--author", "--github-id", "--name", "--blurb", "--track", "--compare-loss",
                 "--compare-bpb", "--code", "--notes", "--records-dir", "--date", "--pack-code",
                 "--allow-over-cap", "--check-only"):
        assert flag in p.stdout


# ------------------------------------------------------------------ statistics
def test_mean_std_by_hand():
    mean, std = ms.mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(math.sqrt(7 / 3))
    assert ms.mean_std([1.5]) == (1.5, None)


def _t_and_p_df2(gains, mu):
    """t statistic and one-sided p for 3 values; t with 2 df has a closed-form CDF."""
    n = len(gains)
    m = sum(gains) / n
    s = math.sqrt(sum((g - m) ** 2 for g in gains) / (n - 1))
    t = (m - mu) / (s / math.sqrt(n))
    return t, 0.5 - t / (2 * math.sqrt(2 + t * t))


def test_t_test_by_hand_fail():
    # gains 0.010, 0.020, 0.015: mean 0.015, s 0.005, t = 0.01/(0.005/sqrt 3) = 2 sqrt 3
    res = ms.significance([1.92, 1.91, 1.915], 1.93)
    t, p = _t_and_p_df2([0.01, 0.02, 0.015], 0.005)
    assert t == pytest.approx(2 * math.sqrt(3))
    assert p == pytest.approx(0.5 - math.sqrt(3) / math.sqrt(14))
    assert res["t_statistic"] == pytest.approx(t, rel=1e-9)
    assert res["p_value"] == pytest.approx(p, rel=1e-9)
    assert res["p_value"] == pytest.approx(0.037089, abs=1e-6)
    assert res["mean_gain_nats"] == pytest.approx(0.015) and res["df"] == 2
    assert res["passed"] is False


def test_t_test_by_hand_pass():
    losses = [1.9100, 1.9090, 1.9095]
    res = ms.significance(losses, 1.93)
    t, p = _t_and_p_df2([1.93 - x for x in losses], 0.005)
    assert res["t_statistic"] == pytest.approx(t, rel=1e-7)
    assert res["p_value"] == pytest.approx(p, rel=1e-6)
    assert p < 0.01 and res["passed"] is True


def test_t_test_edge_cases():
    one = ms.significance([1.9], 1.95)
    assert one["passed"] is False and one["p_value"] is None and "at least 2" in one["note"]
    same = ms.significance([1.9, 1.9, 1.9], 1.95)
    assert same["passed"] is False and "undefined" in same["note"]
    worse = ms.significance([1.96, 1.97, 1.965], 1.95)
    assert worse["passed"] is False and worse["p_value"] > 0.98


def test_significance_reported_in_command_and_json(env, capsys):
    # LOSSES vs 1.94: gains ~0.0099, 0.0077, 0.0111 over 0.005
    assert env.run(env.logs(), "--compare-loss", "1.94") == 0
    out = capsys.readouterr().out
    gains = [1.94 - LOSSES[k] for k in (1, 2, 3)]
    m = sum(gains) / 3
    s = math.sqrt(sum((g - m) ** 2 for g in gains) / 2)
    t = (m - 0.005) / (s / math.sqrt(3))
    p = 0.5 - t / (2 * math.sqrt(2 + t * t))
    sig = json.loads((env.target() / "submission.json").read_text())["significance"]
    assert sig["t_statistic"] == pytest.approx(t, rel=1e-9)
    assert sig["p_value"] == pytest.approx(p, rel=1e-9)
    assert sig["passed"] == (p < 0.01)
    assert f"t={t:.3f} df=2 one-sided p={p:.2e}" in out
    assert verdicts(out)["significance"] == ("PASS" if p < 0.01 else "FAIL")


def test_failed_significance_does_not_block_the_folder(env, capsys):
    assert env.run(env.logs(), "--compare-loss", "1.932") == 0
    assert verdicts(capsys.readouterr().out)["significance"] == "FAIL"
    sub = json.loads((env.target() / "submission.json").read_text())
    assert sub["significance"]["passed"] is False


# ------------------------------------------------------------------ --pack-code
def test_pack_source_round_trip():
    packed = ms.pack_source(STANDIN_BYTES)
    assert packed.startswith(ms.PACK_HEAD) and packed.endswith(ms.PACK_TAIL)
    assert ms.unpack_source(packed) == STANDIN_BYTES
    assert len(packed) < len(STANDIN_BYTES)
    assert b'"' not in packed[len(ms.PACK_HEAD):-len(ms.PACK_TAIL)]
    assert ms.launch_env("A=1 B='x y' torchrun --nproc_per_node=8 t.py C=3") == {"A": "1", "B": "x y"}


def test_pack_code_ships_packed_script_that_behaves_the_same(env, capsys):
    assert env.run(env.logs((1, 2)), "--pack-code") == 0
    out = capsys.readouterr().out
    assert verdicts(out)["pack_code"] == "PASS"
    packed = ms.pack_source(STANDIN_BYTES)
    saved = len(STANDIN_BYTES) - len(packed)
    assert f"train_gpt.py {len(STANDIN_BYTES):,} -> {len(packed):,} bytes (saves {saved:,})" in out
    t = env.target()
    shipped = (t / "train_gpt.py").read_bytes()
    assert shipped == packed and ms.unpack_source(shipped) == STANDIN_BYTES
    sub = json.loads((t / "submission.json").read_text())
    assert sub["bytes_code"] == len(packed) and sub["code_packed"] is True
    assert sub["bytes_code_unpacked"] == len(STANDIN_BYTES)
    assert sub["bytes_total"] == 15_800_002 + len(packed)
    assert sub["seed_results"]["1"]["bytes_total"] == 15_800_001 + len(packed)

    # run both from the folder, as a reviewer would
    shutil.copy(env.root / "train_gpt.py", env.root / "orig.py")
    runenv = {**os.environ, "DRY_RUN": "1", "NUM_LAYERS": "10", "RUN_ID": "x"}
    a = subprocess.run([sys.executable, "train_gpt.py"], cwd=t, env=runenv,
                       capture_output=True, text=True)
    b = subprocess.run([sys.executable, str(env.root / "orig.py")], cwd=t, env=runenv,
                       capture_output=True, text=True)
    assert a.returncode == b.returncode == 0, a.stderr
    la, lb = a.stdout.splitlines(), b.stdout.splitlines()
    assert la[1] == f"code sha256:{sha(packed)} bytes:{len(packed)}"  # counts the packed bytes
    assert "  NUM_LAYERS=10" in la and "script:train_gpt.py name:__main__" in la
    assert la[0] == lb[0] and la[2:-1] == lb[2:-1]


def test_pack_check_detects_different_behaviour():
    ok, detail = ms.check_packed(STANDIN_BYTES, ms.pack_source(STANDIN_BYTES), {"NUM_LAYERS": "3"})
    assert ok, detail
    assert "prints the same" in detail
    changed = STANDIN_BYTES.replace(b'"NUM_LAYERS": 9', b'"NUM_LAYERS": 8')
    ok, detail = ms.check_packed(STANDIN_BYTES, ms.pack_source(changed), {})
    assert not ok and "does not decompress to the original" in detail
    # a packed script whose payload matches but whose wrapper misbehaves
    broken = ms.pack_source(STANDIN_BYTES).replace(b"exec(", b"print(len(")[:-1] + b")\n"
    ok, detail = ms.check_packed(STANDIN_BYTES, broken, {})
    assert not ok and "DRY_RUN=1 output differs" in detail


def test_pack_check_failure_refuses(env, capsys, monkeypatch):
    monkeypatch.setattr(ms, "pack_source", lambda src: ms.PACK_HEAD + b"!!!" + ms.PACK_TAIL)
    assert env.run(env.logs((1, 2)), "--pack-code") == 1
    assert "check pack_code failed" in capsys.readouterr().err
    assert not env.records.exists()
