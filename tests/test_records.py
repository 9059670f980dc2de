"""Tests of records/make_submission.py against synthetic logs that follow the
train_gpt.py log contract (header, periodic lines, final lines, run summary), in both
formats: "new" (summary in logs/<RUN_ID>.json, official final line last) and "old"
(summary_json line last). The log builders and the bad-input CASES are in cases_records.py."""
import functools
import importlib.util
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases_records as cases  # noqa: E402
from cases_records import DATE, LOSSES, STANDIN_BYTES, sha, summary, write_log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "records" / "make_submission.py"
_spec = importlib.util.spec_from_file_location("make_submission", SCRIPT)
ms = importlib.util.module_from_spec(_spec)
sys.modules["make_submission"] = ms  # dataclasses look their module up
_spec.loader.exec_module(ms)


@pytest.fixture(params=["new", "old"])
def env(request, tmp_path):
    """tmp dirs: code file, logs, records dir; a helper that runs the tool; logs in the
    parametrised format."""
    code = tmp_path / "train_gpt.py"
    code.write_bytes(STANDIN_BYTES)
    (tmp_path / "logs").mkdir()
    fmt = request.param

    class Env:
        root = tmp_path
        records = tmp_path / "records"

        def __init__(self):
            self.fmt = fmt

        def log(self, seed=1, name=None, **kw):
            opts = {k: kw.pop(k) for k in ("truncate", "header_sha", "resumed", "edit", "edit_json",
                                           "attention", "peak", "params") if k in kw}
            s = summary(seed, versions=fmt == "new", **kw)
            return write_log(tmp_path / "logs" / (name or f"s{seed}.txt"), s, fmt=fmt, **opts)

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


def tree(root: Path) -> dict:
    """Every path under root with its size and mtime: what a command may not change."""
    return {str(p.relative_to(root)): (p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


# ------------------------------------------------------------------ parsing
def test_parse_log_reads_summary_header_curves_and_finals(env):
    s = summary(2, versions=env.fmt == "new")
    run = ms.parse_log(write_log(env.root / "a.txt", s, fmt=env.fmt))
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
    assert ms.score_line(run) == "final_sliding_exact"
    assert run.model_params == 25517137 and run.attention == "fa3"
    assert run.versions["numpy"] == "2.1.3" and run.versions["torch"] == s["torch"]
    assert ms.consistency_problems(run) == []
    if env.fmt == "new":
        assert run.summary_path == env.root / "a.json" and run.summary_ref == "logs/a.json"
        assert run.new_format and run.last_line.startswith("final_int8_zlib_roundtrip_exact ")
        assert run.finals["final_int8_zlib_roundtrip_exact"]["val_bpb"] == pytest.approx(s["val_bpb"], abs=5e-9)
        assert run.peak_memory == {"allocated_mib": 20480.5, "reserved_mib": 22016.0}
        assert run.total_size == s["bytes_total"]
    else:
        assert run.summary_path is None and not run.new_format
        assert run.last_line.startswith("summary_json: ") and run.peak_memory is None


def test_new_format_prefers_the_json_and_falls_back_to_the_summary_json_line(tmp_path):
    s = summary(1)
    log = write_log(tmp_path / "x.txt", s, fmt="new")
    # a log that has both: the .json is read, the summary_json line must agree with it
    text = log.read_text().replace("summary: ", "summary_json: " + json.dumps(s) + "\nsummary: ")
    log.write_text(text)
    run = ms.parse_log(log)
    assert run.summary_path == tmp_path / "x.json" and ms.consistency_problems(run) == []
    log.write_text(text.replace(f'"val_loss": {s["val_loss"]}', '"val_loss": 1.5'))
    assert "the summary_json line differs from x.json" in ms.consistency_problems(ms.parse_log(log))
    # no .json: the summary_json line is the summary
    (tmp_path / "x.json").unlink()
    log.write_text(text)
    run = ms.parse_log(log)
    assert run.summary == s and run.summary_path is None
    # the file named on the summary: line, next to the log, when the log has another name
    log2 = write_log(tmp_path / "renamed" / "seed1.log", s, fmt="new")
    log2.with_suffix(".json").rename(tmp_path / "renamed" / "run_s1.json")
    log2.write_text(log2.read_text().replace("summary: logs/seed1.json", "summary: logs/run_s1.json"))
    assert ms.parse_log(log2).summary_path == tmp_path / "renamed" / "run_s1.json"


def test_parse_resumed_log_with_two_headers_uses_summary(env):
    run = ms.parse_log(env.log(1, resumed=True))
    assert len(run.headers) == 2 and len(run.code_headers) == 2
    assert run.summary["steps"] == 6701
    assert ms.consistency_problems(run) == []


# Lines and fields a newer train_gpt.py may print that the tool does not read.
FUTURE_LINES = ("preflight check            status  detail\n"
                "preflight data             ok      80 train shards, 1 val shard\n"
                "preflight tokenizer        ok      sha256 matches data/tokenizer.sha256\n"
                "warning: something\ncode is fine\nrandom noise line\nstep-like:oops\n"
                "config:\n  CASEOPS=1\n  DOC_MASK=1\neval_compile_s:12.5\n")


def test_parse_accepts_lines_and_fields_it_does_not_read(env):
    """Extra lines (a preflight table, new settings in the config dump), extra fields on the
    lines the tool reads, and extra summary keys are accepted: only what it uses is checked."""
    def future(text):
        text = text.replace("\nstep:", "\n" + FUTURE_LINES + "step:", 1)
        text = text.replace(" mode:train", " mode:train recipe:frontier caseops:1", 1)
        text = text.replace("attention:fa3", "attention:fa3 doc_mask:1 preflight:ok", 1)
        text = text.replace(" stride:64", " stride:64 docs:50000 compile:3.2s")
        text = text.replace("status:ok", "status:ok code_raw:1 code_packed:0 counted:raw")
        return text.replace("final_size", "final_eval_breakdown load:1.0s what:?\nfinal_size")
    config = {**summary(1)["config"], "CASEOPS": 1, "DOC_MASK": 1, "NEW_SETTING": [1, None]}
    run = ms.parse_log(env.log(1, edit=future, config=config, eval_compile_s=3.2, caseops=True,
                               preflight={"data": "ok", "rows": [1, 2]}, eval_notes=["x"]))
    assert ms.consistency_problems(run) == []
    assert run.summary["val_loss"] == LOSSES[1] and run.summary["config"]["CASEOPS"] == 1
    assert run.attention == "fa3" and sorted(run.train_loss) == [1340, 2680, 4020, 5360, 6701]


def _fragment(text: str) -> str:
    """A text as the tool shows it in a problem: JSON, cut to 40 characters."""
    shown = json.dumps(text)
    return shown if len(shown) <= 40 else shown[:37] + "..."


# (the edit of a valid new-format log, where it goes wrong, the exact problems)
BAD_LINES = [
    (("final_sliding_exact val_loss:1.93012346", "final_sliding_exact val_loss:abc"),
     "line 19, final_sliding_exact", 'val_loss="abc" is not a number'),
    (("eval_time:169123ms", "eval_time:fast"), "line 19, final_sliding_exact", 'eval_time="fast" is not a number'),
    ((" stride:64", " stride:0"), "line 19, final_sliding_exact", "stride=0 is not in [1, 1048576]"),
    (("val_bpb:1.14359815 stride", "val_bpb:nan stride"), "line 19, final_sliding_exact",
     "val_bpb=NaN is not a finite number"),
    (("roundtrip_exact val_loss:1.93012346 val_bpb:1.14359815", "roundtrip_exact val_loss:1.93012346 val_b"),
     "line 23, final_int8_zlib_roundtrip_exact", "lacks val_bpb"),
    (("step:1340/20000 train_loss:5.9411", "step:oops/20000 train_loss:x"), "line 8, step",
     'step="oops" is not an integer; train_loss="x" is not a number'),
    (("train_loss:4.9813", "train_loss:-1"), "line 9, step", "train_loss=-1.0 is not in [0, 1000000]"),
    (("step:2680/", "step:" + "9" * 400 + "/"), "line 9, step",
     "step=9999999999999999999999999999999999999... is not in [0, 1000000000]"),
    (("model_params:25517137", "model_params:x"), "line 6, model_params", 'params="x" is not an integer'),
    (("allocated: 20480.5 MiB reserved: 22016.0 MiB", "allocated: lots"), "line 16, peak memory",
     'lacks reserved; allocated="lots" is not a number'),
    (("Total submission size: ", "Total submission size: -"), "line 21, Total submission size",
     "bytes=-15802109 is not in [1, 1000000000000]"),
    (("code sha256:", "code sha256:XYZ"), "line 2, code",
     f"sha256={_fragment('XYZ' + sha(STANDIN_BYTES))} is not a sha256 (64 lowercase hex digits)"),
    (("status:ok", "status:OK"), "line 20, final_size", 'status="OK" is not one of "ok", "OVER_CAP"'),
    (("cap:16000000", "cap:16e6"), "line 20, final_size", 'cap="16e6" is not an integer'),
    (("artifact_bytes:15800001", "artifact_bytes:15_800_001"), "line 20, final_size",
     'artifact_bytes="15_800_001" is not an integer'),
    (("numpy:2.1.3", "numpy:2.1.3;rm"), "line 3, versions",
     'numpy="2.1.3;rm" is not a version (e.g. 2.1.3 or 2.6.0+cu128)'),
    (("attention:fa3", "attention:fa3!"), "line 4, device", 'attention="fa3!" is not a kernel name (e.g. fa3)'),
    (("train_gpt run_id:run_s1", "train_gpt id:run_s1"), "line 1, header", "lacks run_id"),
    (("summary: logs/s1.json", "summary: logs/s1\x01.json"), "line 22, summary:",
     'file="logs/s1\\u0001.json" is not a file name'),
]


@pytest.mark.parametrize("change, where, problems", BAD_LINES, ids=[b[1] + ": " + b[2][:30] for b in BAD_LINES])
def test_a_bad_line_is_refused_naming_its_number_field_and_problem(tmp_path, change, where, problems):
    log = write_log(tmp_path / "s1.txt", summary(1, versions=True), edit=lambda t: t.replace(*change, 1))
    with pytest.raises(ms.InputError) as e:
        ms.parse_log(log)
    assert str(e.value) == f"log {log}: {where}: {problems}; {ms.LINE_FIX}"


def test_a_line_too_long_and_files_too_large_are_refused_unread(tmp_path):
    log = write_log(tmp_path / "s1.txt", summary(1), edit=lambda t: t.replace(
        "\nstep:", "\nnote " + "x" * 2 ** 20 + "\nstep:", 1))
    with pytest.raises(ms.InputError, match="s1.txt: line 7 is longer than 1,048,576 characters, more "
                                            "than any line train_gpt.py writes"):
        ms.parse_log(log)
    log = write_log(tmp_path / "s2.txt", summary(2))
    with open(log.with_suffix(".json"), "r+b") as fh:  # a sparse gigabyte
        fh.truncate(2 ** 30)
    t0 = time.perf_counter()
    with pytest.raises(ms.InputError) as e:
        ms.parse_log(log)
    assert str(e.value) == (f"summary {log.with_suffix('.json')} (of log {log}) is 1,073,741,824 bytes, "
                            "more than a run summary can be (4,194,304 at most; it holds a few kB); it is "
                            "the .json train_gpt.py writes when the run ends: restore it, or rerun")
    with open(log, "r+b") as fh:
        fh.truncate(300 * 2 ** 20)
    with pytest.raises(ms.InputError, match=r"s2.txt is 314,572,800 bytes, more than any train_gpt.py log "
                                            r"\(268,435,456 at most\)"):
        ms.parse_log(log)
    assert time.perf_counter() - t0 < 2  # nothing of either file was read


def test_final_lines_repeated_in_one_attempt_are_refused_but_not_across_a_resume(tmp_path):
    def twice(text):
        for name in ("final_sliding_exact", "final_size"):
            line = next(ln for ln in text.splitlines() if ln.startswith(name))
            text = text.replace(line, line + "\n" + line)
        return text
    run = ms.parse_log(write_log(tmp_path / "a.txt", summary(1), edit=twice))
    assert ms.consistency_problems(run)[:2] == [
        "final_sliding_exact appears 2 times (lines 19, 20); a finished run prints it once",
        "final_size appears 2 times (lines 21, 22); a finished run prints it once"]

    def died_then_resumed(text):  # the first attempt printed its pre-quant score, then died
        head, rest = text.split("\nstopping_early", 1)
        return head + "\nfinal_prequant_exact val_loss:2.5 val_bpb:1.5 eval_time:1ms\n" + head + \
            "\nstopping_early" + rest
    run = ms.parse_log(write_log(tmp_path / "b.txt", summary(1), edit=died_then_resumed))
    assert len(run.headers) == 2 and ms.consistency_problems(run) == []
    assert run.final_lines["final_prequant_exact"] == [32]  # the last attempt's line only


def test_later_score_lines_are_recognised(tmp_path):
    """A TTT (or document-level) score printed after the sliding one is the final score."""
    s = summary(1, val_loss=1.9, val_bpb=1.9 * 0.5925, eval_time_s=300.0)

    def ttt(text):
        return text.replace("final_sliding_exact", "final_sliding_exact val_loss:1.93000000 "
                            "val_bpb:1.14352500 stride:64 eval_time:168000ms\nfinal_ttt_exact", 1)
    run = ms.parse_log(write_log(tmp_path / "t.txt", s, fmt="new", edit=ttt))
    # the edit keeps the original line's figures for final_ttt_exact
    assert ms.score_line(run) == "final_ttt_exact"
    assert ms.consistency_problems(run) == []


@pytest.mark.parametrize("edit, problem", [
    (lambda t: t.rsplit("final_int8", 1)[0], "no final_int8_zlib_roundtrip_exact line"),
    (lambda t: t + "one more line\n", "final_int8_zlib_roundtrip_exact is not the last line"),
    (lambda t: t.replace("final_int8_zlib_roundtrip_exact val_loss:1.93012346",
                         "final_int8_zlib_roundtrip_exact val_loss:1.90000000"),
     "final_int8_zlib_roundtrip_exact val_loss:1.9 != summary val_loss"),
    (lambda t: t.replace("Total submission size: ", "Total submission size: 1"),
     "'Total submission size: 1"),
])
def test_official_line_and_total_size_are_checked(tmp_path, edit, problem):
    run = ms.parse_log(write_log(tmp_path / "x.txt", summary(1), fmt="new", edit=edit))
    assert any(problem in p for p in ms.consistency_problems(run)), ms.consistency_problems(run)


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("truncated", "has no summary"),
    ("badjson", "is not valid JSON"),
    ("nokeys", "lacks val_bpb, eval_stride"),
    ("badtype", 'seed="1" is not an integer'),
    ("badversion", "cuda=12.8 is not a string or null"),
    ("eval_only", "is an EVAL_ONLY run"),
    ("nothing", "is not a train_gpt.py log"),
])
def test_parse_refusals(env, case, message):
    path = env.root / "logs" / "x.txt"
    if case == "truncated":
        env.log(1, name="x.txt", truncate=True)
    elif case == "badjson":
        env.log(1, name="x.txt", edit=(lambda t: t[:-20] + "\n") if env.fmt == "old" else None,
                edit_json=lambda t: t[:-20])
    elif case in ("nokeys", "badtype", "badversion", "eval_only"):
        s = summary(1)
        if case == "nokeys":
            del s["val_bpb"], s["eval_stride"]
        s.update({"badtype": {"seed": "1"}, "badversion": {"cuda": 12.8},
                  "eval_only": {"mode": "eval_only", "prequant_val_loss": None, "steps": 0}}.get(case, {}))
        if env.fmt == "new":
            path.write_text("train_gpt run_id:run_s1 mode:train\nsummary: logs/x.json\n")
            path.with_suffix(".json").write_text(json.dumps(s))
        else:
            path.write_text("train_gpt run_id:run_s1 mode:train\nsummary_json: " + json.dumps(s) + "\n")
    elif case == "nothing":
        path.write_text("summary_json: " + json.dumps(summary(1)) + "\n")
    with pytest.raises(ms.InputError, match=message):
        ms.parse_log(path)


# ------------------------------------------------------------------ the field schema
def test_check_fields_on_a_schema_of_its_own():
    F = ms.Field
    schema = {"n": F("int", 0, 10), "x": F("float", -1, 1, optional=True),
              "tag": F("str", choices=("a", "b"), null=True, optional=True),
              "name": F("str", pattern=r"[a-z]+", what="lowercase letters", optional=True),
              "o": F("object", fields={"k": F("bool")}, optional=True),
              "m": F("object", pattern=r"[a-z]+", what="a word", values=F("int", 0, 1), optional=True)}
    assert ms.check_fields({"n": 3, "other": object()}, schema) == []  # keys it does not name: not looked at
    assert ms.check_fields({"n": 10, "x": 1, "tag": None, "name": "ab", "o": {"k": False, "z": 1},
                            "m": {"a": 0}}, schema) == []  # an integer is a number; null where allowed
    assert ms.check_fields({}, schema) == ["lacks n"]
    assert ms.check_fields({"n": 11}, schema) == ["n=11 is not in [0, 10]"]
    assert ms.check_fields({"n": 10 ** 400}, schema) == [f"n={str(10 ** 400)[:37]}... is not in [0, 10]"]
    assert ms.check_fields({"n": 2 ** 20000}, schema) == ["n=<an integer of 20001 bits> is not in [0, 10]"]
    assert ms.check_fields({"n": 1.0}, schema) == ["n=1.0 is not an integer"]
    assert ms.check_fields({"n": False}, schema) == ["n=false is not an integer"]
    assert ms.check_fields({"n": 1, "x": -math.inf}, schema) == ["x=-Infinity is not a finite number"]
    assert ms.check_fields({"n": 1, "x": "0.5"}, schema) == ['x="0.5" is not a number']
    assert ms.check_fields({"n": 1, "tag": "c"}, schema) == ['tag="c" is not one of "a", "b"']
    assert ms.check_fields({"n": 1, "tag": 1}, schema) == ["tag=1 is not a string or null"]
    assert ms.check_fields({"n": 1, "name": "A"}, schema) == ['name="A" is not lowercase letters']
    assert ms.check_fields({"n": 1, "o": {}}, schema) == ["o lacks k"]
    assert ms.check_fields({"n": 1, "o": {"k": "yes"}}, schema) == ['o.k="yes" is not true or false']
    assert ms.check_fields({"n": 1, "o": None}, schema) == ["o=null is not an object"]
    assert ms.check_fields({"n": 1, "m": {"A": 0, "b": 2}}, schema) == [
        'm has the key "A", which is not a word', "m.b=2 is not in [0, 1]"]
    assert ms.check_fields({"x": 2, "n": "1"}, schema) == ['n="1" is not an integer',  # in the schema's order
                                                           "x=2 is not in [-1, 1]"]
    assert ms.check_fields([1], schema) == ["it=[1] is not an object"]


def test_log_text_becomes_the_value_its_field_expects():
    F = ms.Field
    assert ms._from_text("41234ms", F("float", 0, 1e9, unit="ms")) == 41234.0
    assert ms._from_text("20480.5", F("float", 0, 1e9, unit="MiB")) == 20480.5
    assert ms._from_text("-7", F("int", -9, 9)) == -7
    for text, kind in (("7.0", "int"), ("1_000", "int"), ("1e3", "int"), ("x", "float"), ("1_0.5", "float"),
                       ("9" * 5000, "int")):
        assert ms._from_text(text, F(kind, 0, 1)) == text  # left as text: check_value says why
    assert math.isnan(ms._from_text("nan", F("float", 0, 1)))
    assert ms._from_text("ok", F("str")) == "ok"


def _future_summary(**over):
    s = summary(1, versions=True, eval_compile_s=3.2, caseops=True, preflight={"rows": [["data", "ok"]]},
                eval_mode="sliding", eval_notes=[], model_params=25517137, **over)
    s["config"].update(CASEOPS=1, DOC_MASK=1, EVAL_COMPILE=True)
    return s


def test_valid_summaries_pass_the_schema():
    for s in (summary(1), summary(2, versions=True), _future_summary(),
              summary(3, versions=True, cuda=None, flash_attn="2.8.3", compressor_packages=None,
                      code_bytes_counted=2000, torch="2.6.0a0+ecf3bae40a.nv25.01", val_full=False)):
        assert ms.check_fields(s, ms.SUMMARY_SCHEMA) == []
        assert ms.check_fields(json.loads(json.dumps(s)), ms.SUMMARY_SCHEMA) == []


DROP = object()
# (what is changed in a valid summary, the exact problems the schema reports)
BAD_SUMMARIES = [
    (dict(val_bpb="1.2"), ['val_bpb="1.2" is not a number']),
    (dict(val_bpb=None), ["val_bpb=null is not a number"]),
    (dict(val_bpb=math.nan), ["val_bpb=NaN is not a finite number"]),
    (dict(train_time_s=math.inf), ["train_time_s=Infinity is not a finite number"]),
    (dict(val_bpb=[1.2]), ["val_bpb=[1.2] is not a number"]),
    (dict(val_loss=-0.5), ["val_loss=-0.5 is not in [0, 1000000]"]),
    (dict(artifact_bytes=-1), ["artifact_bytes=-1 is not in [1, 1000000000000]"]),
    (dict(bytes_total=0), ["bytes_total=0 is not in [1, 1000000000000]"]),
    (dict(steps=6701.0), ["steps=6701.0 is not an integer"]),
    (dict(seed=2 ** 32), ["seed=4294967296 is not in [0, 4294967295]"]),
    (dict(seed=-1), ["seed=-1 is not in [0, 4294967295]"]),
    (dict(seed=True), ["seed=true is not an integer"]),
    (dict(val_full=1), ["val_full=1 is not true or false"]),
    (dict(train_time_s=10 ** 400), ["train_time_s=1000000000000000000000000000000000000... is not in [0, 100000000]"]),
    (dict(world_size=0), ["world_size=0 is not in [1, 1048576]"]),
    (dict(mode="finetune"), ['mode="finetune" is not one of "train", "eval_only"']),
    (dict(code_sha256="ABC"), ['code_sha256="ABC" is not a sha256 (64 lowercase hex digits)']),
    (dict(hardware=""), ['hardware="" is not one line of text (not empty, no control characters)']),
    (dict(launch="A=1 torchrun\nrm -rf /"),
     ['launch="A=1 torchrun\\nrm -rf /" is not one line of text (not empty, no control characters)']),
    (dict(torch="2.5.1 --index-url x"), ['torch="2.5.1 --index-url x" is not a version (e.g. 2.1.3 or 2.6.0+cu128)']),
    (dict(python=None), ["python=null is not a string"]),
    (dict(cuda=12.8), ["cuda=12.8 is not a string or null"]),
    (dict(config=[1]), ["config=[1] is not an object"]),
    (dict(non_default={"NUM LAYERS": 1}), ['non_default has the key "NUM LAYERS", which is not a setting name']),
    (dict(config__VOCAB_SIZE="1024"), ['config.VOCAB_SIZE="1024" is not an integer']),
    (dict(config__VOCAB_SIZE=1), ["config.VOCAB_SIZE=1 is not in [2, 65536]"]),
    (dict(compressor_packages=["brotli"]), ['compressor_packages=["brotli"] is not an object or null']),
    (dict(compressor_packages={"brotli": 1}), ["compressor_packages.brotli=1 is not a string or null"]),
    (dict(val_bpb=DROP, artifact_bytes=DROP), ["lacks val_bpb, artifact_bytes"]),
    (dict(run_id=DROP, seed="1", steps=-1), ["lacks run_id", 'seed="1" is not an integer',
                                             "steps=-1 is not in [0, 1000000000]"]),
]


@pytest.mark.parametrize("change, problems", BAD_SUMMARIES, ids=[p[0] for _, p in BAD_SUMMARIES])
def test_each_malformed_summary_field_yields_its_problem(change, problems):
    s = _future_summary()
    for key, value in change.items():
        node, key = (s["config"], key[8:]) if key.startswith("config__") else (s, key)
        if value is DROP:
            del node[key]
        else:
            node[key] = value
    assert ms.check_fields(s, ms.SUMMARY_SCHEMA) == problems


def test_a_summary_problem_is_one_line_naming_file_and_fields(tmp_path):
    def edit(text):
        s = json.loads(text)
        s.update(seed="1", steps=-1, val_bpb=None, over_cap=0, python=3.11, torch=None, world_size=0.5)
        return json.dumps(s)
    log = write_log(tmp_path / "s1.txt", summary(1, versions=True), edit_json=edit)
    with pytest.raises(ms.InputError) as e:
        ms.parse_log(log)
    assert e.value.messages == [
        f"summary {log.with_suffix('.json')} (of log {log}): seed=\"1\" is not an integer; world_size=0.5 is "
        "not an integer; python=3.11 is not a string; torch=null is not a string; steps=-1 is not in [0, "
        "1000000000]; val_bpb=null is not a number; and 1 more; it is the .json train_gpt.py writes when the "
        "run ends: restore it, or rerun"]


def test_truncated_log_is_refused_by_the_command(env, capsys):
    logs = [env.log(1), env.log(2, truncate=True)]
    assert env.run(logs) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s2.txt has no summary" in err
    assert "make_submission.py: error: log" in err
    assert not env.records.exists()


def test_missing_log_is_refused_by_the_command(env, capsys):
    assert env.run([env.log(1), env.root / "nope.txt"]) == 2
    assert "nope.txt does not exist" in capsys.readouterr().err


def test_every_bad_log_gets_its_own_line(env, capsys):
    (env.root / "d").mkdir()
    assert env.run([env.log(1), env.root / "nope.txt", env.root / "d"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "nope.txt does not exist" in err[0] and "is a directory" in err[1]


# ------------------------------------------------------------------ a full passing run
def test_record_track_passes_and_writes_folder(env, capsys):
    rc = env.run(env.logs(), "--compare-loss", "1.95", "--compare-bpb", "1.16")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert verdicts(out) == {
        "log_consistency": "PASS", "same_code": "PASS", "same_settings": "PASS",
        "distinct_seeds": "PASS", "shipped_code": "PASS", "size_cap": "PASS",
        "train_time": "PASS", "eval_time": "PASS", "hardware": "PASS",
        "full_validation": "PASS", "versions": "PASS", "significance": "PASS"}
    t = env.target()
    summaries = ["train_seed1.json", "train_seed2.json", "train_seed3.json"] if env.fmt == "new" else []
    assert sorted(p.name for p in t.iterdir()) == sorted([
        "README.md", "requirements.txt", "submission.json", "train_curves.png", "train_gpt.py",
        "train_seed1.log", "train_seed2.log", "train_seed3.log", *summaries])
    assert (t / "train_gpt.py").read_bytes() == STANDIN_BYTES
    assert (t / "train_seed2.log").read_bytes() == (env.root / "logs" / "s2.txt").read_bytes()
    if summaries:
        assert (t / "train_seed2.json").read_bytes() == (env.root / "logs" / "s2.json").read_bytes()
    assert not [p for p in t.parent.iterdir() if p.name.startswith(".")]  # no temp dir left
    # the folder's own logs can be read back, summaries included
    assert [ms.parse_log(t / f"train_seed{k}.log").summary for k in (1, 2, 3)] == \
        [ms.parse_log(env.root / "logs" / f"s{k}.txt").summary for k in (1, 2, 3)]


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
        assert r["score_line"] == "final_sliding_exact" and r["log"] == f"train_seed{s['seed']}.log"
        if env.fmt == "new":
            assert r["summary_file"] == f"train_seed{s['seed']}.json"
            assert r["peak_memory_allocated_mib"] == 20480.5
        else:
            assert r["summary_file"] is None and r["peak_memory_allocated_mib"] is None
    losses = [LOSSES[k] for k in (1, 2, 3)]
    assert sub["val_loss"] == pytest.approx(sum(losses) / 3, abs=1e-15)
    assert sub["val_bpb"] == pytest.approx(sum(x * 0.5925 for x in losses) / 3, abs=1e-15)
    m = sum(losses) / 3
    assert sub["val_loss_std"] == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in losses) / 2))
    assert sub["val_bpb_std"] == pytest.approx(sub["val_loss_std"] * 0.5925)
    assert sub["bytes_total"] == max(s["bytes_total"] for s in sums) == 15_800_003 + len(STANDIN_BYTES)
    assert sub["bytes_code"] == len(STANDIN_BYTES) and sub["code_packed"] is False
    assert sub["code_minified"] is False and sub["minifier"] is None
    assert sub["code_sha256"] == sha(STANDIN_BYTES)
    assert sub["hardware"] == "8x NVIDIA H100 80GB HBM3"
    assert sub["pytorch_version"] == sums[0]["torch"] and sub["model_params"] == 25517137
    assert sub["attention"] == "fa3"
    assert sub["launch"] == [s["launch"] for s in sums]
    assert sub["significance"]["passed"] is True
    assert {c["name"]: c["status"] for c in sub["checks"]}["size_cap"] == "PASS"
    if env.fmt == "new":
        assert sub["versions"] == {"python": "3.11.7", "torch": "2.13.0+cu128", "cuda": "12.8",
                                   "flash_attn": None, "numpy": "2.1.3", "sentencepiece": "0.2.0",
                                   "zstandard": "0.23.0", "compressor_packages": {"brotli": "1.1.0"}}
    else:  # from the log's `versions` line
        assert sub["versions"] == {"python": "3.11.7", "torch": "2.13.0", "numpy": "2.1.3",
                                   "sentencepiece": "0.2.0", "zstandard": "0.23.0"}


def test_readme_has_table_stats_setup_checks_and_plot(env):
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
        assert f"   {s['launch']}\n" in readme
    assert f"| **mean** | | | | | | | **{sub['val_loss']:.8f}** | **{sub['val_bpb']:.8f}**" in readme
    assert f"| **std** | | | | | | | {sub['val_loss_std']:.8f} | {sub['val_bpb_std']:.8f}" in readme
    assert "![training curves](train_curves.png)" in readme
    assert "| `NUM_LAYERS` | `10` |" in readme and "| `MATRIX_LR` | `0.025` |" in readme
    assert "| `SEED`" not in readme
    assert "[PASS] same_code: all 3 runs" in readme and "[PASS] significance:" in readme
    assert "CPU smoke run" not in readme
    assert "- Model: 25,517,137 parameters" in readme
    # Setup: install, data, FlashAttention, run - in that order
    setup = readme[readme.index("## Setup"):readme.index("## Settings")]
    steps = ["pip install -r requirements.txt",
             "python3 data/cached_challenge_fineweb.py --variant sp1024",
             "3. FlashAttention: the runs used FlashAttention 3", "4. Run from inside this folder"]
    assert [setup.index(s) for s in steps] == sorted(setup.index(s) for s in steps)
    assert "MATCHED_FINEWEB_REPO_ID" not in setup  # sp1024 comes from the default repo
    assert "hopper && python setup.py install" in setup
    assert "Python 3.11.7 with the exact package versions" in setup
    # which file is which seed's log, and what its last line is
    for seed in (1, 2, 3):
        s = summary(seed)
        if env.fmt == "new":
            last = (f"final_int8_zlib_roundtrip_exact val_loss:{s['val_loss']:.8f} "
                    f"val_bpb:{s['val_bpb']:.8f}")
            assert (f"- `train_seed{seed}.log`: the log of seed {seed} (run `run_s{seed}`, written "
                    f"as `s{seed}.txt`); its last line, `{last}`, is the final score in the "
                    "challenge's official format (the figures of its `final_sliding_exact` line)") in readme
            assert f"- `train_seed{seed}.json`: the summary of seed {seed}'s run" in readme
        else:
            assert (f"- `train_seed{seed}.log`: the log of seed {seed} (run `run_s{seed}`, written "
                    f"as `s{seed}.txt`); its final score is its `final_sliding_exact` line (the log "
                    "predates the official `final_int8_zlib_roundtrip_exact` last line)") in readme
    official = "repeated by the log's last line, `final_int8_zlib_roundtrip_exact`"
    assert (official in readme) == (env.fmt == "new")


@pytest.mark.parametrize("vocab, repo", [(1024, False), (4096, True), (8192, True)])
def test_setup_downloads_the_vocab_of_the_runs(tmp_path, vocab, repo):
    s = summary(1, versions=True)
    s["config"]["VOCAB_SIZE"] = vocab
    lines = "\n".join(ms.setup_section([ms.parse_log(write_log(tmp_path / "a.txt", s))]))
    cmd = f"python3 data/cached_challenge_fineweb.py --variant sp{vocab}"
    assert (f"MATCHED_FINEWEB_REPO_ID=kevclark/parameter-golf {cmd}" in lines) == repo
    assert cmd in lines and f"`sp{vocab}`" in lines


@pytest.mark.parametrize("attention, flash, text, pin", [
    ("fa3", None, "FlashAttention 3 (`flash_attn_interface`", None),
    ("fa2", "2.8.3", "`pip install flash-attn==2.8.3 --no-build-isolation`", "flash-attn==2.8.3"),
    ("sdpa", None, "not needed: the runs used PyTorch's scaled_dot_product_attention", None),
    ("matmul", "2.8.3", "not needed: the runs used train_gpt.py's own matmul attention", None),
    ("unknown", "2.8.3", "the logs do not say which attention kernel ran", "flash-attn==2.8.3"),
])
def test_flash_attention_note_and_pin(tmp_path, attention, flash, text, pin):
    s = summary(1, versions=True, flash_attn=flash)
    run = ms.parse_log(write_log(tmp_path / "a.txt", s, attention=attention))
    if attention == "unknown":
        run.attention = None
    setup = "\n".join(ms.setup_section([run]))
    assert text in setup
    req = ms.requirements_txt([run]).splitlines()
    pins = [line for line in req if line.startswith("flash-attn==")]
    assert pins == ([f"{pin}  # compiles against torch: pip install {pin} --no-build-isolation"]
                    if pin else [])


@pytest.mark.parametrize("torch, cuda, expect", [
    ("2.13.0+cu128", "12.8", ["--extra-index-url https://download.pytorch.org/whl/cu128",
                              "torch==2.13.0+cu128"]),
    ("2.13.0+cpu", None, ["--extra-index-url https://download.pytorch.org/whl/cpu",
                          "torch==2.13.0+cpu"]),
    ("2.13.0", "12.8", ["torch==2.13.0  # its CUDA 12.8 build"]),
    ("2.6.0a0+ecf3bae40a.nv25.01", "12.8", ["torch==2.6.0"]),
])
def test_requirements_pin_the_logged_versions(tmp_path, torch, cuda, expect):
    s = summary(1, versions=True, torch=torch, cuda=cuda)
    req = ms.requirements_txt([ms.parse_log(write_log(tmp_path / "a.txt", s))]).splitlines()
    for line in expect:
        assert line in req
    assert {"numpy==2.1.3", "sentencepiece==0.2.0", "zstandard==0.23.0", "brotli==1.1.0"} <= set(req)
    assert req[1].startswith(f"# Python 3.11.7; CUDA {cuda or 'none'}.")
    # every line that is not a comment is something pip accepts
    for line in req:
        if line and not line.startswith("#"):
            assert line.startswith("--extra-index-url ") or "==" in line.split("#")[0], line


def test_requirements_from_an_old_log_and_a_version_mismatch(tmp_path, capsys):
    """An old-format log has no version keys in its summary: its `versions` line is used."""
    (tmp_path / "train_gpt.py").write_bytes(STANDIN_BYTES)
    logs = [write_log(tmp_path / "logs" / "s1.txt", summary(1), fmt="old"),
            write_log(tmp_path / "logs" / "s2.txt", summary(2, torch="2.12.0"), fmt="old")]
    argv = [str(p) for p in logs] + [a.replace("{tmp}", str(tmp_path)) for a in cases.argv(logs=())]
    assert ms.main(argv) == 0
    out = capsys.readouterr().out
    assert verdicts(out)["versions"] == "WARN"
    assert "torch (seed 1: 2.13.0, seed 2: 2.12.0)" in out and "not in the logs: cuda" in out
    folder = tmp_path / "records" / "track_10min_16mb" / f"{DATE}_Case"
    req = (folder / "requirements.txt").read_text().splitlines()
    assert "torch==2.13.0" in req and "numpy==2.1.3" in req
    assert req[1].startswith("# Python 3.11.7; CUDA not logged.")


def test_plot_is_a_valid_png_with_its_data_in_a_text_chunk(env):
    def spike(text):  # an early train loss far above the rest
        return text.replace("\nstep:", "\nstep:1/20000 train_loss:10.0000 train_time:89ms\nstep:", 1)
    assert env.run(env.logs((1, 2), edit=spike), "--compare-bpb", "1.1428") == 0
    png = env.target() / "train_curves.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 500 and height > 200 and data.endswith(b"IEND\xaeB`\x82")
    meta = json.loads(ms.png_text(png)[ms.PLOT_KEY])
    from PIL import Image  # matplotlib's own dependency reads the same chunk
    with Image.open(png) as im:
        assert json.loads(im.text[ms.PLOT_KEY]) == meta
    assert [s["name"] for s in meta["train_loss"]["series"]] == ["seed 1", "seed 2"]
    assert [s["points"] for s in meta["val_bpb"]["series"]] == [3, 3]
    finals = {f["name"]: f for f in meta["val_bpb"]["finals"]}
    for seed in (1, 2):
        f = finals[f"seed {seed}"]
        assert f["val_bpb"] == summary(seed)["val_bpb"] and f["step"] == summary(seed)["steps"]
        assert f["line"] == "final_sliding_exact"
    assert meta["val_bpb"]["compare_bpb"] == 1.1428
    # the y-limits come from the data after the first 10% of steps, finals and record included
    assert meta["clip_from_step"] == 670  # 10% of 6702 steps
    lo, hi = meta["val_bpb"]["ylim"]
    late = [(6.9 - 4.9 * k / s) * 0.5925 for s in (6701, 6702) for k in (3 * s // 5, s)]
    assert lo < min(late + [1.1428]) and hi > max(late + [summary(2)["val_bpb"]])
    assert hi < 6.9 * 0.5925  # step 0's val_bpb does not set the scale
    assert [s["points"] for s in meta["train_loss"]["series"]] == [6, 6]
    lo, hi = meta["train_loss"]["ylim"]
    assert lo < 6.9 - 4.8 + 0.001 and 6.9 - 4.8 * 0.2 + 0.002 < hi < 10  # step 1's spike is left out
    readme = (env.target() / "README.md").read_text()
    assert "the dashed line is the record to beat, 1.14280" in readme
    assert "The y-axes are scaled to the steps from 670 on" in readme


def test_plot_without_compare_line_or_curves(tmp_path):
    run = ms.parse_log(write_log(tmp_path / "a.txt", summary(1), edit=lambda t: "\n".join(
        ln for ln in t.splitlines() if not ln.startswith("step:")) + "\n"))
    meta = ms.plot_curves([run], tmp_path / "p.png")
    assert meta == json.loads(ms.png_text(tmp_path / "p.png")[ms.PLOT_KEY])
    assert meta["val_bpb"]["compare_bpb"] is None and meta["train_loss"]["ylim"] is None
    lo, hi = meta["val_bpb"]["ylim"]
    assert lo < run.summary["val_bpb"] < hi and hi - lo < 0.05


def test_png_text_reads_compressed_and_international_chunks(tmp_path):
    from PIL import Image, PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text("plain", "a")
    info.add_text("zipped", "b" * 100, zip=True)
    info.add_itxt("intl", "é ✓", zip=True)
    Image.new("RGB", (2, 2)).save(tmp_path / "x.png", pnginfo=info)
    assert ms.png_text(tmp_path / "x.png") == {"plain": "a", "zipped": "b" * 100, "intl": "é ✓"}
    (tmp_path / "y.png").write_bytes(b"GIF89a")
    with pytest.raises(ValueError):
        ms.png_text(tmp_path / "y.png")


def test_check_only_writes_nothing(env, capsys):
    assert env.run(env.logs(), "--check-only") == 0
    assert "check only: would write" in capsys.readouterr().out
    assert not env.records.exists()


def test_a_failed_write_leaves_nothing(env, capsys, monkeypatch):
    def broken(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ms, "plot_curves", broken)
    logs = env.logs((1, 2))
    before = tree(env.root)
    assert env.run(logs) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err and "No space left on device" in err
    assert tree(env.root) == before  # no folder, no temp folder, no track_ or records/ folder


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
    s2 = summary(2, versions=env.fmt == "new")
    s2["config"].update(NUM_LAYERS=12, DATA_PATH="/elsewhere", CHECKPOINT_PATH="/ck")
    write_log(env.root / "logs" / "s2.txt", s2, fmt=env.fmt)
    assert env.run([env.log(1), env.root / "logs" / "s2.txt"]) == 1
    out, err = capsys.readouterr()
    assert verdicts(out)["same_settings"] == "FAIL"
    assert "NUM_LAYERS (seed 1: 10, seed 2: 12)" in err
    assert "DATA_PATH" not in err and "CHECKPOINT_PATH" not in err

    s2["config"]["NUM_LAYERS"] = 10  # now only per-run settings differ
    write_log(env.root / "logs" / "s2.txt", s2, fmt=env.fmt)
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
    assert env.run(env.logs(), code=env.root / "absent.py") == 2
    assert "error: argument --code: " in capsys.readouterr().err


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
    assert env.run(env.logs()) == 2
    assert "already exists and is never overwritten" in capsys.readouterr().err
    assert [p.name for p in t.iterdir()] == ["keep.txt"]


def test_bad_date_and_help():
    with pytest.raises(ms.InputError, match="argument --date: '2025-13-01'"):
        ms.parse_args(["a.txt", "--author", "a", "--github-id", "b", "--name", "c",
                       "--blurb", "d", "--track", "10min_16mb", "--date", "2025-13-01"])
    p = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for flag in ("--author", "--github-id", "--name", "--blurb", "--track", "--compare-loss",
                 "--compare-bpb", "--code", "--notes", "--records-dir", "--date", "--pack-code",
                 "--allow-over-cap", "--check-only", "--no-minify"):
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


DATACLASS_SRC = b'''"""A config read from the environment through dataclass field names."""
import os
from dataclasses import dataclass, fields


@dataclass
class Config:
    """Settings."""
    num_layers: int = 9
    model_dim: int = 512

    def describe(self, prefix: str = "") -> str:
        pieces = [f"{f.name.upper()}={getattr(self, f.name)}" for f in fields(self)]
        return prefix + " ".join(pieces)


def from_env() -> Config:
    values = {}
    for f in fields(Config):
        raw = os.environ.get(f.name.upper())
        if raw is not None:
            values[f.name] = int(raw)
    return Config(**values)


assert from_env().num_layers > 0, "asserts stay"
print(from_env().describe(prefix="config: "))
'''


def _run_source(tmp_path, src: bytes, **env) -> str:
    path = tmp_path / "s.py"
    path.write_bytes(src)
    p = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                       env={**os.environ, **env})
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_minify_keeps_names_the_environment_and_other_modules_see(tmp_path):
    pytest.importorskip("python_minifier")
    out, note = ms.minify_source(DATACLASS_SRC)
    assert out is not None and note.startswith("python-minifier ")
    assert len(out) < len(DATACLASS_SRC) and b"Settings." not in out  # docstrings go
    assert b"num_layers:int" in out.replace(b" ", b"")  # dataclass field annotations stay
    assert b"assert " in out  # asserts stay
    assert b"def describe(" in out and b"prefix" in out  # keyword-callable names stay
    assert ms._interface(ms.ast.parse(out)) == ms._interface(ms.ast.parse(DATACLASS_SRC))
    assert _run_source(tmp_path, out, NUM_LAYERS="12") == \
        _run_source(tmp_path, DATACLASS_SRC, NUM_LAYERS="12") == "config: NUM_LAYERS=12 MODEL_DIM=512\n"


def test_minify_keeps_docstrings_when_the_code_reads_them(tmp_path):
    pytest.importorskip("python_minifier")
    src = DATACLASS_SRC + b"print(__doc__)\n"
    out, note = ms.minify_source(src)
    assert b"A config read from the environment" in out and "docstrings kept" in note
    assert _run_source(tmp_path, out) == _run_source(tmp_path, src)


def test_minify_falls_back_when_the_minifier_is_missing_fails_or_drops_names(monkeypatch):
    monkeypatch.setitem(sys.modules, "python_minifier", None)  # import fails
    out, note = ms.minify_source(STANDIN_BYTES)
    assert out is None and note.startswith("python-minifier is not installed")
    monkeypatch.undo()
    pm = pytest.importorskip("python_minifier")
    real = pm.minify  # fakes with its signature, so that the tool sees the safety options
    monkeypatch.setattr(pm, "minify", functools.wraps(real)(
        lambda text, **kw: text.replace("def count_parameters", "def count_params")))
    out, note = ms.minify_source(STANDIN_BYTES)
    assert out is None and "dropped count_parameters" in note
    monkeypatch.setattr(pm, "minify", functools.wraps(real)(lambda text, **kw: 1 / 0))
    out, note = ms.minify_source(STANDIN_BYTES)
    assert out is None and "failed (ZeroDivisionError" in note
    monkeypatch.setattr(pm, "minify", lambda text, **kw: text)  # an old release without them
    out, note = ms.minify_source(STANDIN_BYTES)
    assert out is None and "lacks the options rename_globals, remove_asserts, remove_debug" in note
    monkeypatch.undo()
    out, note = ms.minify_source(b"def broken(:\n")
    assert out is None and "failed (" in note


def test_pack_code_ships_minified_packed_script_that_behaves_the_same(env, capsys):
    pytest.importorskip("python_minifier")
    assert env.run(env.logs((1, 2)), "--pack-code") == 0
    out = capsys.readouterr().out
    v = verdicts(out)
    assert v["pack_code"] == "PASS" and v["minify"] == "PASS"
    minified, _ = ms.minify_source(STANDIN_BYTES)
    packed = ms.pack_source(minified)
    saved = len(STANDIN_BYTES) - len(packed)
    assert (f"train_gpt.py {len(STANDIN_BYTES):,} -> {len(packed):,} bytes (saves {saved:,}; "
            f"minified {len(minified):,}); decompresses to its minified form") in out
    t = env.target()
    shipped = (t / "train_gpt.py").read_bytes()
    assert shipped == packed and ms.unpack_source(shipped) == minified
    sub = json.loads((t / "submission.json").read_text())
    assert sub["bytes_code"] == len(packed) and sub["code_packed"] is True
    assert sub["code_minified"] is True and sub["minifier"].startswith("python-minifier ")
    assert sub["bytes_code_unpacked"] == len(STANDIN_BYTES)
    assert sub["bytes_code_minified"] == len(minified)
    assert sub["bytes_total"] == 15_800_002 + len(packed)
    assert sub["seed_results"]["1"]["bytes_total"] == 15_800_001 + len(packed)
    readme = (t / "README.md").read_text()
    assert "`train_gpt.py` is packed: the logged source" in readme and "minified by python-minifier" in readme

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


def test_pack_code_without_the_minifier_warns_and_packs_the_source(env, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "python_minifier", None)
    assert env.run(env.logs((1, 2)), "--pack-code") == 0
    out, err = capsys.readouterr()
    assert err == ("warning: python-minifier is not installed (pip install python-minifier): "
                   "packing the source without minifying it\n")
    assert verdicts(out)["minify"] == "WARN" and verdicts(out)["pack_code"] == "PASS"
    shipped = (env.target() / "train_gpt.py").read_bytes()
    assert shipped == ms.pack_source(STANDIN_BYTES)
    sub = json.loads((env.target() / "submission.json").read_text())
    assert sub["code_packed"] is True and sub["code_minified"] is False and sub["minifier"] is None


def test_no_minify_packs_the_source_as_it_is(env, capsys):
    assert env.run(env.logs((1, 2)), "--pack-code", "--no-minify") == 0
    assert verdicts(capsys.readouterr().out)["minify"] == "INFO"
    assert (env.target() / "train_gpt.py").read_bytes() == ms.pack_source(STANDIN_BYTES)


def test_pack_check_detects_different_behaviour():
    ok, detail = ms.check_packed(STANDIN_BYTES, ms.pack_source(STANDIN_BYTES), {"NUM_LAYERS": "3"})
    assert ok, detail
    assert "prints the same" in detail
    changed = STANDIN_BYTES.replace(b'"NUM_LAYERS": 9', b'"NUM_LAYERS": 8')
    ok, detail = ms.check_packed(STANDIN_BYTES, ms.pack_source(changed), {})
    assert not ok and "does not decompress to the original" in detail
    # a "minified" payload that behaves differently is caught by the dry run
    ok, detail = ms.check_packed(STANDIN_BYTES, ms.pack_source(changed), {}, payload=changed)
    assert not ok and "DRY_RUN=1 output differs: '  NUM_LAYERS=9' vs '  NUM_LAYERS=8'" in detail
    ok, detail = ms.check_packed(STANDIN_BYTES, ms.pack_source(changed), {}, payload=STANDIN_BYTES + b"#")
    assert not ok and "does not decompress to the minified source" in detail
    # a packed script whose payload matches but whose wrapper misbehaves
    broken = ms.pack_source(STANDIN_BYTES).replace(b"exec(", b"print(len(")[:-1] + b")\n"
    ok, detail = ms.check_packed(STANDIN_BYTES, broken, {})
    assert not ok and "DRY_RUN=1 output differs" in detail


def test_pack_check_failure_refuses(env, capsys, monkeypatch):
    monkeypatch.setattr(ms, "pack_source", lambda src: ms.PACK_HEAD + b"!!!" + ms.PACK_TAIL)
    assert env.run(env.logs((1, 2)), "--pack-code") == 1
    assert "check pack_code failed" in capsys.readouterr().err
    assert not env.records.exists()


# ------------------------------------------------------------------ arguments and bad inputs
def test_name_becomes_a_folder_inside_records_dir(env):
    assert env.run(env.logs((1,)), name="  Int6 MLP3x + SmearGate ") == 0
    t = env.records / "track_10min_16mb" / f"{DATE}_Int6_MLP3x_SmearGate"
    assert t.is_dir()
    assert json.loads((t / "submission.json").read_text())["name"] == "Int6 MLP3x + SmearGate"


def test_cases_are_well_formed_and_their_base_passes(tmp_path):
    assert len(cases.CASES) >= 15
    assert len({c["id"] for c in cases.CASES}) == len(cases.CASES)
    for c in cases.CASES:
        assert set(c) <= {"id", "args", "setup", "code", "message"} and c["code"] in (1, 2)
        assert all(isinstance(a, str) for a in c["args"]) and "{tmp}" not in c["message"]
        assert c.get("setup") is None or callable(getattr(cases, c["setup"]))
    # the valid log with the base arguments is written; every setup leaves it valid
    log = cases.make_valid_log(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)).replace("{log}", str(log)) for a in cases.argv()]
    assert ms.main(args) == 0
    for name in sorted({c["setup"] for c in cases.CASES if c.get("setup")} - {"make_destination"}):
        (tmp_path / name).mkdir()
        getattr(cases, name)(tmp_path / name)
        log = cases.make_valid_log(tmp_path / name)
        args = [a.replace("{tmp}", str(tmp_path / name)).replace("{log}", str(log))
                for a in cases.argv("--check-only")]
        assert ms.main(args) == 0, name
