"""Synthetic train_gpt.py logs and the bad-input cases of records/make_submission.py.

The log builders (STANDIN, summary, write_log) follow the train_gpt.py log contract in both
formats: "old" (the summary is the log's last line, `summary_json: {...}`) and "new" (the
summary is logs/<RUN_ID>.json, named by a `summary:` line, and the log ends with the official
`final_int8_zlib_roundtrip_exact` line). tests/test_records.py builds its logs with them.

CASES: bad arguments and input files, each a dict with
  id       a short name
  args     the command-line arguments (list of str); "{tmp}" stands for the case's temporary
           folder and "{log}" for the valid log make_valid_log(tmp) returns (substitute both
           with str.replace in every argument)
  setup    optional: the name of a function of this module, setup(tmp), that creates the
           damaged files the case needs (it never touches the files of make_valid_log, and
           works whichever of the two is called first)
  code     the expected exit status (2: bad argument or input file; 1: refused by a check)
  message  a fragment expected in stderr (plain text: no placeholders)
Run each case as `python3 records/make_submission.py *args` from `tmp`: it must exit with
`code`, print `message` on stderr in one line, no traceback, and write nothing under tmp.
Stdlib only, so any test can import it.
"""
import hashlib
import json
from pathlib import Path

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


def summary(seed=1, code=STANDIN_BYTES, versions=False, **over):
    """A run summary of a passing 10min_16mb run; keyword arguments override. versions=True
    adds the package-version keys of newer summaries."""
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
    if versions:
        s.update(torch="2.13.0+cu128", cuda="12.8", flash_attn=None, numpy="2.1.3",
                 sentencepiece="0.2.0", zstandard="0.23.0",
                 compressor_packages={"brotli": "1.1.0"})
    s.update(over)
    s.setdefault("bytes_total", s["code_bytes"] + s["artifact_bytes"])
    if "artifact_bytes" in over or "code_bytes" in over:
        s["bytes_total"] = s["code_bytes"] + s["artifact_bytes"]
        s["over_cap"] = s["bytes_total"] > 16_000_000
    return s


def write_log(path, s, *, fmt="new", truncate=False, header_sha=None, resumed=False, edit=None,
              edit_json=None, attention="fa3", peak=(20480.5, 22016.0), params=25517137):
    """Write a log the way train_gpt.py does, from a summary dict; fmt "new" also writes the
    summary next to it as <stem>.json (unless truncate: a run that died has none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, steps = s["config"].get("ITERATIONS", 20000), s["steps"]
    ms_per = s["step_avg_ms"]
    head = [f"train_gpt run_id:{s['run_id']} mode:{s['mode']}",
            f"code sha256:{header_sha or s['code_sha256']} bytes:{s['code_bytes']}",
            f"versions python:{s['python']} torch:{s['torch']} numpy:{s.get('numpy', '2.1.3')} "
            f"zstandard:{s.get('zstandard', '0.23.0')} sentencepiece:{s.get('sentencepiece', '0.2.0')}",
            f"device type:{s['device']} name:{s['device_name']} world_size:{s['world_size']} "
            f"backend:nccl attention:{attention} compile:1 precision:torch.bfloat16",
            "world_size:8 grad_accum_steps:1 (an unrelated line)",
            f"model_params:{params}" if fmt == "new" else
            f"model params:{params} flops_per_token:1.531e+08"]
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
    if fmt == "new":
        lines += [f"stopping_early: wallclock_cap train_time:{int(steps * ms_per)}ms step:{steps}/{n}",
                  f"peak memory allocated: {peak[0]} MiB reserved: {peak[1]} MiB"]
    else:
        lines.append(f"stopping_early: {s['stop_reason']} at step:{steps}")
    lines += [
        f"final_prequant_exact val_loss:{s['prequant_val_loss']:.8f} "
        f"val_bpb:{s['prequant_val_bpb']:.8f} eval_time:41234ms",
        f"final_roundtrip_exact val_loss:{s['roundtrip_val_loss']:.8f} "
        f"val_bpb:{s['roundtrip_val_bpb']:.8f} eval_time:42100ms",
        f"final_sliding_exact val_loss:{s['val_loss']:.8f} val_bpb:{s['val_bpb']:.8f} "
        f"stride:{s['eval_stride']} eval_time:{round(s['eval_time_s'] * 1000)}ms",
        f"final_size artifact_bytes:{s['artifact_bytes']} code_bytes:{s['code_bytes']} "
        f"total_bytes:{s['bytes_total']} cap:16000000 "
        f"status:{'OVER_CAP' if s['over_cap'] else 'ok'}",
    ]
    if fmt == "new":
        lines += [f"Total submission size: {s['bytes_total']} bytes",
                  f"summary: logs/{path.stem}.json",
                  f"final_int8_zlib_roundtrip_exact val_loss:{s['val_loss']:.8f} "
                  f"val_bpb:{s['val_bpb']:.8f}"]
    else:
        lines.append("summary_json: " + json.dumps(s))
    if truncate:
        lines = lines[: len(head) + 3]
    text = "\n".join(lines) + "\n"
    if edit:
        text = edit(text)
    path.write_text(text)
    if fmt == "new" and not truncate:
        text = json.dumps(s, indent=1)
        path.with_suffix(".json").write_text(edit_json(text) if edit_json else text)
    return path


# ----------------------------------------------------------------------------- the cases
def make_valid_log(tmp) -> Path:
    """{tmp}/train_gpt.py (the stand-in) and a passing seed-1 log {tmp}/logs/s1.txt with its
    summary {tmp}/logs/s1.json; returns the log's path. Safe to call more than once."""
    tmp = Path(tmp)
    (tmp / "train_gpt.py").write_bytes(STANDIN_BYTES)
    return write_log(tmp / "logs" / "s1.txt", summary(1, versions=True))


BASE = {"--author": "Ada Tester", "--github-id": "adatest", "--name": "Case",
        "--blurb": "A synthetic run.", "--track": "10min_16mb", "--code": "{tmp}/train_gpt.py",
        "--records-dir": "{tmp}/records", "--date": DATE}


def argv(*extra, logs=("{log}",), drop=(), **options):
    """The arguments of a passing run with BASE's options; `options` replace them
    (name_like_this -> --name-like-this), `drop` leaves flags out, `extra` is appended."""
    opts = {**BASE, **{"--" + k.replace("_", "-"): v for k, v in options.items()}}
    out = list(logs)
    for flag, value in opts.items():
        if flag not in drop:
            out += [flag, value]
    return out + list(extra)


def _damaged(tmp, name, fmt="new", seed=1, **kw):
    """A log {tmp}/bad/<name> (+ .json) built from a valid summary; kw: summary overrides
    and write_log options."""
    opts = {k: kw.pop(k) for k in ("edit", "edit_json", "truncate", "header_sha") if k in kw}
    return write_log(Path(tmp) / "bad" / name, summary(seed, versions=fmt == "new", **kw),
                     fmt=fmt, **opts)


def make_log_dir(tmp):
    (Path(tmp) / "bad" / "adir.txt").mkdir(parents=True, exist_ok=True)


def make_not_a_log(tmp):
    p = Path(tmp) / "bad" / "notes.txt"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("some notes\nstep:1/10 but not a log\n")


def make_binary_log(tmp):
    p = Path(tmp) / "bad" / "binary.txt"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(bytes(range(256)) * 8)


def make_empty_log(tmp):
    p = Path(tmp) / "bad" / "empty.txt"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")


def make_truncated_log(tmp):
    _damaged(tmp, "truncated.txt", truncate=True)


def make_corrupt_summary_file(tmp):
    _damaged(tmp, "corrupt.txt", edit_json=lambda t: t[: len(t) // 2])


def make_corrupt_summary_line(tmp):
    _damaged(tmp, "oldcorrupt.txt", fmt="old", edit=lambda t: t[:-40] + "\n")


def make_summary_not_object(tmp):
    _damaged(tmp, "list.txt", edit_json=lambda t: "[1, 2, 3]")


def make_summary_missing_keys(tmp):
    def drop(text):
        s = json.loads(text)
        del s["val_bpb"], s["artifact_bytes"]
        return json.dumps(s)
    _damaged(tmp, "nokeys.txt", edit_json=drop)


def _set(**changes):
    """An edit_json that sets summary keys (a key "config__X" sets config's X; None deletes)."""
    def edit(text):
        s = json.loads(text)
        for key, value in changes.items():
            node, key = (s["config"], key[8:]) if key.startswith("config__") else (s, key)
            if value is None:
                del node[key]
            else:
                node[key] = value
        return json.dumps(s)
    return edit


def make_summary_bpb_string(tmp):
    _damaged(tmp, "bpb_string.txt", edit_json=_set(val_bpb="1.2"))


def make_summary_bpb_null(tmp):
    _damaged(tmp, "bpb_null.txt", edit_json=lambda t: t.replace('"val_bpb": ', '"val_bpb": null, "x": '))


def make_summary_bpb_nan(tmp):
    _damaged(tmp, "bpb_nan.txt", edit_json=_set(val_bpb=float("nan")))


def make_summary_bpb_list(tmp):
    _damaged(tmp, "bpb_list.txt", edit_json=_set(val_bpb=[1.14]))


def make_summary_negative_bytes(tmp):
    _damaged(tmp, "negative.txt", edit_json=_set(artifact_bytes=-5))


def make_summary_steps_float(tmp):
    _damaged(tmp, "steps_float.txt", edit_json=_set(steps=6701.0))


def make_summary_seed_out_of_range(tmp):
    _damaged(tmp, "seed_range.txt", edit_json=_set(seed=2 ** 32))


def make_summary_flag_as_number(tmp):
    _damaged(tmp, "flag.txt", edit_json=_set(over_cap=0))


def make_summary_mode_unknown(tmp):
    _damaged(tmp, "mode.txt", edit_json=_set(mode="finetune"))


def make_summary_version_injection(tmp):
    _damaged(tmp, "inject.txt", edit_json=_set(torch="2.5.1\n--index-url http://x"))


def make_summary_huge_number(tmp):
    _damaged(tmp, "huge.txt", edit_json=_set(train_time_s=10 ** 400))


def make_summary_vocab_infinite(tmp):
    _damaged(tmp, "vocab.txt", edit_json=lambda t: t.replace('"config": {', '"config": {"VOCAB_SIZE": 1e999, '))


def make_summary_duplicate_key(tmp):
    _damaged(tmp, "twice.txt", edit_json=lambda t: t.replace("{", '{"val_bpb": 1.0, ', 1))


def make_summary_null(tmp):
    _damaged(tmp, "null.txt", edit_json=lambda t: "null")


def make_summary_too_large(tmp):
    """A summary of 4 MiB + 1 byte (sparse: the size alone refuses it, nothing is read)."""
    with open(_damaged(tmp, "large.txt").with_suffix(".json"), "r+b") as fh:
        fh.truncate(4 * 2 ** 20 + 1)


def make_log_final_not_a_number(tmp):
    _damaged(tmp, "final_text.txt", edit=lambda t: t.replace(
        f"final_sliding_exact val_loss:{LOSSES[1]:.8f}", "final_sliding_exact val_loss:abc"))


def make_log_eval_time_not_a_number(tmp):
    _damaged(tmp, "eval_time.txt", edit=lambda t: t.replace("eval_time:169123ms", "eval_time:fast"))


def make_log_last_line_cut(tmp):
    _damaged(tmp, "cut.txt", edit=lambda t: t[:t.rindex(" val_bpb:") + 6])


def make_log_step_too_large(tmp):
    _damaged(tmp, "step_big.txt", edit=lambda t: t.replace("step:1340/", "step:" + "9" * 400 + "/", 1))


def make_log_negative_size(tmp):
    _damaged(tmp, "size_neg.txt", edit=lambda t: t.replace("final_size artifact_bytes:", "final_size artifact_bytes:-"))


def make_log_status_unknown(tmp):
    _damaged(tmp, "status.txt", edit=lambda t: t.replace(" status:ok", " status:fine"))


def make_log_bad_code_hash(tmp):
    _damaged(tmp, "hash.txt", edit=lambda t: t.replace("code sha256:", "code sha256:xyz", 1))


def make_log_line_too_long(tmp):
    _damaged(tmp, "long.txt", edit=lambda t: t.replace("\nstep:", "\nnote " + "x" * 2 ** 20 + "\nstep:", 1))


def make_log_final_line_twice(tmp):
    def twice(text):
        line = next(ln for ln in text.splitlines() if ln.startswith("final_sliding_exact"))
        return text.replace(line, line + "\n" + line)
    _damaged(tmp, "twice.txt", edit=twice)


def make_log_official_line_differs(tmp):
    _damaged(tmp, "official.txt", edit=lambda t: t.replace(
        f"final_int8_zlib_roundtrip_exact val_loss:{LOSSES[1]:.8f}",
        "final_int8_zlib_roundtrip_exact val_loss:1.80000000"))


def make_log_official_line_gone(tmp):
    _damaged(tmp, "no_official.txt", edit=lambda t: t[:t.index("final_int8_zlib_roundtrip_exact")])


def make_summary_wrong_type(tmp):
    _damaged(tmp, "badtype.txt", edit_json=lambda t: t.replace('"seed": 1,', '"seed": "1",'))


def make_summary_of_other_run(tmp):
    _damaged(tmp, "other.txt", edit_json=lambda t: t.replace('"run_id": "run_s1"',
                                                             '"run_id": "someone_else"'))


def make_summary_file_gone(tmp):
    _damaged(tmp, "gone.txt").with_suffix(".json").unlink()


def make_summary_is_dir(tmp):
    p = _damaged(tmp, "jsondir.txt").with_suffix(".json")
    p.unlink()
    p.mkdir()


def make_eval_only_log(tmp):
    _damaged(tmp, "s1_eval.txt", mode="eval_only")


def make_other_settings(tmp):
    s = summary(2, versions=True)
    s["config"]["NUM_LAYERS"] = 12
    write_log(Path(tmp) / "bad" / "s2_layers12.txt", s)


def make_other_code(tmp):
    _damaged(tmp, "s2_code.txt", seed=2, code=STANDIN_BYTES + b"# changed\n")


def make_same_seed(tmp):
    _damaged(tmp, "s1_again.txt")


def make_edited_final(tmp):
    _damaged(tmp, "s2_edited.txt", seed=2, edit=lambda t: t.replace(
        f"final_sliding_exact val_loss:{LOSSES[2]:.8f}", "final_sliding_exact val_loss:1.80000000"))


def make_over_cap(tmp):
    _damaged(tmp, "s2_big.txt", seed=2, artifact_bytes=15_999_999)


def make_other_code_file(tmp):
    (Path(tmp) / "other.py").write_bytes(STANDIN_BYTES.replace(b"Stand-in", b"Changed!"))


def make_records_file(tmp):
    (Path(tmp) / "records.txt").write_text("a file, not a folder\n")


def make_destination(tmp):
    d = Path(tmp) / "records" / "track_10min_16mb" / f"{DATE}_Case"
    d.mkdir(parents=True, exist_ok=True)
    (d / "keep.txt").write_text("mine\n")


def make_binary_notes(tmp):
    (Path(tmp) / "notes.md").write_bytes(b"\xff\xfe\x00bad")


B = "{tmp}/bad/"
CASES = [
    # ---- arguments (exit 2)
    dict(id="name-escapes-records-dir", args=argv(name="../../evil"), code=2,
         message="argument --name: '../../evil' contains '/' and '..'"),
    dict(id="name-dotdot", args=argv(name=".."), code=2, message="argument --name: '..' contains '..'"),
    dict(id="name-backslash", args=argv(name="a\\b"), code=2, message="argument --name"),
    dict(id="name-blank", args=argv(name="   "), code=2, message="argument --name: '   ' is empty"),
    dict(id="name-no-usable-character", args=argv(name="+++"), code=2,
         message="argument --name: '+++' has no letter or digit"),
    dict(id="name-too-long", args=argv(name="N" * 101), code=2,
         message="has 101 characters; keep it to 100 or fewer"),
    dict(id="date-bad-month", args=argv(date="2025-13-01"), code=2,
         message="argument --date: '2025-13-01' is not a date as YYYY-MM-DD"),
    dict(id="date-wrong-format", args=argv(date="02/01/2025"), code=2,
         message="argument --date: '02/01/2025' is not a date as YYYY-MM-DD"),
    dict(id="compare-loss-nan", args=argv("--compare-loss", "nan"), code=2,
         message="argument --compare-loss: 'nan' is not allowed: give the record's val_loss"),
    dict(id="compare-loss-inf", args=argv("--compare-loss", "inf"), code=2,
         message="argument --compare-loss: 'inf' is not allowed"),
    dict(id="compare-loss-negative", args=argv("--compare-loss", "-1.93"), code=2,
         message="argument --compare-loss: '-1.93' is not allowed"),
    dict(id="compare-bpb-not-a-number", args=argv("--compare-bpb", "abc"), code=2,
         message="argument --compare-bpb: 'abc' is not allowed: give the record's val_bpb"),
    dict(id="compare-bpb-zero", args=argv("--compare-bpb", "0"), code=2,
         message="argument --compare-bpb: '0' is not allowed"),
    dict(id="track-unknown", args=argv(track="10min"), code=2,
         message="argument --track: invalid choice: '10min'"),
    dict(id="author-missing", args=argv(drop=("--author",)), code=2,
         message="the following arguments are required: --author"),
    dict(id="author-multiline", args=argv(author="Ada\nEve"), code=2,
         message="argument --author: 'Ada\\nEve' holds a line break"),
    dict(id="github-id-invalid", args=argv(github_id="@ada lovelace"), code=2,
         message="argument --github-id: '@ada lovelace' is not a GitHub user name"),
    dict(id="unknown-option", args=argv("--frobnicate"), code=2,
         message="unrecognized arguments: --frobnicate"),
    dict(id="no-minify-without-pack-code", args=argv("--no-minify"), code=2,
         message="argument --no-minify: it only changes --pack-code"),
    dict(id="no-logs", args=argv(logs=()), code=2,
         message="the following arguments are required: logs"),
    dict(id="code-missing", args=argv(code="{tmp}/absent.py"), code=2,
         message="absent.py does not exist; give the train_gpt.py that produced the logs"),
    dict(id="code-is-directory", args=argv(code="{tmp}/logs"), code=2,
         message="/logs is a directory; give the train_gpt.py"),
    dict(id="notes-missing", args=argv("--notes", "{tmp}/notes.md"), code=2,
         message="notes.md does not exist; give a markdown file"),
    dict(id="notes-not-utf8", setup="make_binary_notes", args=argv("--notes", "{tmp}/notes.md"),
         code=2, message="notes.md is not UTF-8 text"),
    dict(id="records-dir-is-a-file", setup="make_records_file",
         args=argv(records_dir="{tmp}/records.txt"), code=2,
         message="records.txt is a file, not a folder"),
    dict(id="records-dir-below-a-file", setup="make_records_file",
         args=argv(records_dir="{tmp}/records.txt/sub"), code=2,
         message="records.txt is a file; give a folder path"),
    dict(id="destination-exists", setup="make_destination", args=argv(), code=2,
         message="already exists and is never overwritten"),
    # ---- log and summary files (exit 2)
    dict(id="log-missing", args=argv(logs=(B + "absent.txt",)), code=2,
         message="bad/absent.txt does not exist; give the logs/<RUN_ID>.txt"),
    dict(id="log-is-directory", setup="make_log_dir", args=argv(logs=(B + "adir.txt",)), code=2,
         message="bad/adir.txt is a directory, not a log file"),
    dict(id="log-not-train-gpt", setup="make_not_a_log", args=argv(logs=(B + "notes.txt",)),
         code=2, message="is not a train_gpt.py log"),
    dict(id="log-binary", setup="make_binary_log", args=argv(logs=(B + "binary.txt",)), code=2,
         message="is not a train_gpt.py log"),
    dict(id="log-empty", setup="make_empty_log", args=argv(logs=(B + "empty.txt",)), code=2,
         message="bad/empty.txt is not a train_gpt.py log"),
    dict(id="log-truncated", setup="make_truncated_log", args=argv(logs=(B + "truncated.txt",)),
         code=2, message="has no summary"),
    dict(id="log-given-twice", args=argv(logs=("{log}", "{log}")), code=2,
         message="is given twice"),
    dict(id="summary-json-corrupt", setup="make_corrupt_summary_file",
         args=argv(logs=(B + "corrupt.txt",)), code=2,
         message="bad/corrupt.txt) is not valid JSON"),
    dict(id="summary-json-line-corrupt", setup="make_corrupt_summary_line",
         args=argv(logs=(B + "oldcorrupt.txt",)), code=2,
         message="its summary_json line is not valid JSON"),
    dict(id="summary-not-an-object", setup="make_summary_not_object",
         args=argv(logs=(B + "list.txt",)), code=2, message="is not a JSON object"),
    dict(id="summary-missing-keys", setup="make_summary_missing_keys",
         args=argv(logs=(B + "nokeys.txt",)), code=2, message="lacks val_bpb, artifact_bytes"),
    dict(id="summary-wrong-type", setup="make_summary_wrong_type",
         args=argv(logs=(B + "badtype.txt",)), code=2, message='badtype.txt): seed="1" is not an integer; '),
    dict(id="summary-of-another-run", setup="make_summary_of_other_run",
         args=argv(logs=(B + "other.txt",)), code=2, message="it belongs to another run"),
    dict(id="summary-file-gone", setup="make_summary_file_gone", args=argv(logs=(B + "gone.txt",)),
         code=2, message="names its summary logs/gone.json"),
    dict(id="summary-is-directory", setup="make_summary_is_dir",
         args=argv(logs=(B + "jsondir.txt",)), code=2, message="is a directory, not a file"),
    dict(id="eval-only-log", setup="make_eval_only_log", args=argv(logs=(B + "s1_eval.txt",)),
         code=2, message="is an EVAL_ONLY run"),
    # ---- a field of the summary (one problem per field, each naming it; exit 2)
    dict(id="summary-value-a-string", setup="make_summary_bpb_string", args=argv(logs=(B + "bpb_string.txt",)),
         code=2, message='bpb_string.txt): val_bpb="1.2" is not a number; it is the .json'),
    dict(id="summary-value-null", setup="make_summary_bpb_null", args=argv(logs=(B + "bpb_null.txt",)),
         code=2, message="bpb_null.txt): val_bpb=null is not a number; "),
    dict(id="summary-value-nan", setup="make_summary_bpb_nan", args=argv(logs=(B + "bpb_nan.txt",)),
         code=2, message="bpb_nan.txt): val_bpb=NaN is not a finite number; "),
    dict(id="summary-value-a-list", setup="make_summary_bpb_list", args=argv(logs=(B + "bpb_list.txt",)),
         code=2, message="bpb_list.txt): val_bpb=[1.14] is not a number; "),
    dict(id="summary-negative-byte-count", setup="make_summary_negative_bytes",
         args=argv(logs=(B + "negative.txt",)), code=2,
         message="negative.txt): artifact_bytes=-5 is not in [1, 1000000000000]; "),
    dict(id="summary-steps-a-float", setup="make_summary_steps_float", args=argv(logs=(B + "steps_float.txt",)),
         code=2, message="steps_float.txt): steps=6701.0 is not an integer; "),
    dict(id="summary-seed-out-of-range", setup="make_summary_seed_out_of_range",
         args=argv(logs=(B + "seed_range.txt",)), code=2,
         message="seed_range.txt): seed=4294967296 is not in [0, 4294967295]; "),
    dict(id="summary-flag-a-number", setup="make_summary_flag_as_number", args=argv(logs=(B + "flag.txt",)),
         code=2, message="flag.txt): over_cap=0 is not true or false; "),
    dict(id="summary-mode-unknown", setup="make_summary_mode_unknown", args=argv(logs=(B + "mode.txt",)),
         code=2, message='mode.txt): mode="finetune" is not one of "train", "eval_only"; '),
    dict(id="summary-version-with-a-line-break", setup="make_summary_version_injection",
         args=argv(logs=(B + "inject.txt",)), code=2,
         message='inject.txt): torch="2.5.1\\n--index-url http://x" is not a version'),
    dict(id="summary-number-of-400-digits", setup="make_summary_huge_number", args=argv(logs=(B + "huge.txt",)),
         code=2, message="huge.txt): train_time_s=1000000000000000000000000000000000000... is not in [0, 100000000]"),
    dict(id="summary-config-value-infinite", setup="make_summary_vocab_infinite",
         args=argv(logs=(B + "vocab.txt",)), code=2,
         message="vocab.txt): config.VOCAB_SIZE=Infinity is not an integer"),
    dict(id="summary-key-twice", setup="make_summary_duplicate_key", args=argv(logs=(B + "twice.txt",)),
         code=2, message='twice.txt) is not valid JSON (the key "val_bpb" appears twice)'),
    dict(id="summary-null", setup="make_summary_null", args=argv(logs=(B + "null.txt",)),
         code=2, message="null.txt) is not a JSON object (it is null)"),
    dict(id="summary-too-large", setup="make_summary_too_large", args=argv(logs=(B + "large.txt",)),
         code=2, message="large.txt) is 4,194,305 bytes, more than a run summary can be"),
    # ---- a line of the log (the first bad line, by number; exit 2)
    dict(id="log-final-value-not-a-number", setup="make_log_final_not_a_number",
         args=argv(logs=(B + "final_text.txt",)), code=2,
         message='final_text.txt: line 19, final_sliding_exact: val_loss="abc" is not a number; '),
    dict(id="log-eval-time-not-a-number", setup="make_log_eval_time_not_a_number",
         args=argv(logs=(B + "eval_time.txt",)), code=2,
         message='eval_time.txt: line 19, final_sliding_exact: eval_time="fast" is not a number; '),
    dict(id="log-last-line-cut", setup="make_log_last_line_cut", args=argv(logs=(B + "cut.txt",)), code=2,
         message="cut.txt: line 23, final_int8_zlib_roundtrip_exact: lacks val_bpb; "),
    dict(id="log-step-of-400-digits", setup="make_log_step_too_large", args=argv(logs=(B + "step_big.txt",)),
         code=2, message="step_big.txt: line 8, step: step=9999999999999999999999999999999999999... is not in"),
    dict(id="log-negative-byte-count", setup="make_log_negative_size", args=argv(logs=(B + "size_neg.txt",)),
         code=2, message="size_neg.txt: line 20, final_size: artifact_bytes=-15800001 is not in [1, 1000000000000]"),
    dict(id="log-size-status-unknown", setup="make_log_status_unknown", args=argv(logs=(B + "status.txt",)),
         code=2, message='status.txt: line 20, final_size: status="fine" is not one of "ok", "OVER_CAP"'),
    dict(id="log-code-hash-not-hex", setup="make_log_bad_code_hash", args=argv(logs=(B + "hash.txt",)),
         code=2, message="hash.txt: line 2, code: sha256=\"xyz"),
    dict(id="log-line-too-long", setup="make_log_line_too_long", args=argv(logs=(B + "long.txt",)), code=2,
         message="long.txt: line 7 is longer than 1,048,576 characters"),
    # ---- a log whose final lines contradict its summary or repeat (refused by a check: exit 1)
    dict(id="log-final-line-twice", setup="make_log_final_line_twice", args=argv(logs=(B + "twice.txt",)),
         code=1, message="REFUSED: check log_consistency failed: seed 1: final_sliding_exact appears 2 times "
                         "(lines 19, 20); a finished run prints it once"),
    dict(id="log-official-line-differs", setup="make_log_official_line_differs",
         args=argv(logs=(B + "official.txt",)), code=1,
         message="seed 1: final_int8_zlib_roundtrip_exact val_loss:1.8 != summary val_loss 1.9301234567"),
    dict(id="log-official-line-gone", setup="make_log_official_line_gone",
         args=argv(logs=(B + "no_official.txt",)), code=1,
         message="seed 1: no final_int8_zlib_roundtrip_exact line (the official score line"),
    # ---- runs that cannot be one submission (exit 1: refused by a check)
    dict(id="different-settings", setup="make_other_settings",
         args=argv(logs=("{log}", B + "s2_layers12.txt")), code=1,
         message="REFUSED: check same_settings failed: differ: NUM_LAYERS (seed 1: 10, seed 2: 12)"),
    dict(id="different-code", setup="make_other_code", args=argv(logs=("{log}", B + "s2_code.txt")),
         code=1, message="REFUSED: check same_code failed: 2 code versions"),
    dict(id="same-seed-twice", setup="make_same_seed", args=argv(logs=("{log}", B + "s1_again.txt")),
         code=1, message="REFUSED: check distinct_seeds failed: seed(s) [1]"),
    dict(id="code-is-not-the-logged-code", setup="make_other_code_file",
         args=argv(code="{tmp}/other.py"), code=1, message="REFUSED: check shipped_code failed"),
    dict(id="edited-final-line", setup="make_edited_final",
         args=argv(logs=("{log}", B + "s2_edited.txt")), code=1,
         message="REFUSED: check log_consistency failed: seed 2: final_sliding_exact val_loss:1.8"),
    dict(id="over-the-cap", setup="make_over_cap", args=argv(logs=("{log}", B + "s2_big.txt")),
         code=1, message="REFUSED: check size_cap failed"),
]
