"""Export: GPTQ against round to nearest, SDClip and clip search, LQER, every compressor's round trip,
calibration on training data only, the size forecast and FIT_TO_CAP's ladder."""
import json
import math
import re

import numpy as np
import pytest
import torch

import train_gpt as tg
from test_train_model import tiny


def hessian_error(w, deq, H):
    d = (w - deq).double()
    return torch.trace(d @ H.double() @ d.T).item()


@pytest.fixture(scope="module")
def trained(sample_data):
    """A tiny model after 30 training steps on the sample, and Hessians from its training stream."""
    data_path, _ = sample_data
    cfg = tiny(vocab_size=1024, train_seq_len=64, train_batch_tokens=2048, micro_batches=2, gptq_calibration_batches=4,
               quant_bits_embed=7)
    rt = tg.Runtime(0, 1, torch.device("cpu"), None, None)
    torch.manual_seed(0)
    model = tg.GPT(cfg)
    opts = tg.build_optimizers(model, cfg, rt)
    loader = tg.TrainLoader(tg.find_shards(data_path, "train"), cfg, rt)
    for _ in range(30):
        for _ in range(2):
            x, y = loader.next_batch()
            model(x, y).mean().backward()
        for o in opts:
            o.step()
        model.zero_grad(set_to_none=True)
    return cfg, rt, model, tg.collect_hessians(model, loader, cfg, rt)


def test_gptq_beats_round_to_nearest_on_random_and_trained_weights(trained):
    torch.manual_seed(0)
    x = torch.randn(512, 64) @ torch.randn(64, 64)  # correlated inputs
    cases = [(torch.randn(48, 64), x.T @ x)]
    cfg, _, model, hessians = trained
    state = model.state_dict()
    cases += [(state[n].float(), hessians[n]) for n in ("blocks.0.attn.q.weight", "blocks.2.mlp.proj.weight", "tok_emb.weight")]
    for w, H in cases:
        for bits in (3, 5):
            scale = tg.row_scales(w, bits)
            rtn = torch.clamp(torch.round(w / scale.float()), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
            q = tg.gptq(w, H, bits, scale).float()
            assert q.abs().max() <= 2 ** (bits - 1) - 1
            assert hessian_error(w, q * scale.float(), H) < 0.9 * hessian_error(w, rtn * scale.float(), H)


def test_gptq_with_an_identity_hessian_is_round_to_nearest():
    torch.manual_seed(0)
    w = torch.randn(32, 200)
    for bits in (2, 4, 6, 8):
        for clip in ("absmax", "sdclip", "search"):
            q, scale = tg.quantize_rows(w, bits, clip, 3.0)
            assert torch.equal(tg.gptq(w, torch.eye(200), bits, scale), q)


def test_sdclip_and_clip_search():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    w[:, 0] = 40.0  # one outlier per row: absmax wastes the grid on it
    qmax = 31
    sd, exact = tg.row_scales(w, 6, "sdclip", 3.0).double(), 3.0 * w.double().std(dim=1, keepdim=True) / qmax
    steps = torch.log2(sd) * tg.SCALE_STEPS  # the smallest grid scale 2^(k/32) at or above the exact one
    assert torch.allclose(steps, steps.round(), atol=1e-5) and (sd >= exact * (1 - 1e-6)).all()
    assert (sd < exact * 2 ** (1 / tg.SCALE_STEPS) * (1 + 1e-6)).all()
    base, codes = tg.scale_codes(sd.float().numpy()[:, 0])  # stored as one byte per row, read back exactly
    assert codes.dtype == np.uint8 and np.array_equal(np.exp2((codes + 0.0 + base) / tg.SCALE_STEPS).astype(np.float32),
                                                      sd.float().numpy()[:, 0])
    errors = {}
    for clip in ("absmax", "sdclip", "search"):
        q, s = tg.quantize_rows(w, 6, clip, 3.0)
        errors[clip] = (w - q.float() * s.float()).square().sum().item()
    assert errors["search"] <= errors["absmax"] and errors["search"] < 1.01 * min(errors.values())


def test_lqer_reduces_the_error_of_the_tensors_it_touches(trained):
    cfg, _, model, hessians = trained
    state = model.state_dict()
    plain = {e["name"]: e for e in tg.quantise_state(state, tg.Config(**{**cfg.__dict__, "quant_bits_mlp": 3}))}
    fixed = {e["name"]: e for e in tg.quantise_state(state, tg.Config(**{**cfg.__dict__, "quant_bits_mlp": 3,
                                                                        "lqer_top_k": 2, "lqer_rank": 4}))}
    touched = [n for n, e in fixed.items() if "lqer" in e]
    assert len(touched) == 2

    def err(e):
        w = tg.dequantize(e, {k: a.astype(np.float32) for k, a in e["arrays"].items()})
        return np.square(state[e["name"]].numpy() - w).sum()
    errors = {n: err(e) for n, e in plain.items() if e["kind"] == "q"}
    assert set(touched) == set(sorted(errors, key=errors.get)[-2:])  # the largest errors get corrected
    for n in touched:
        assert err(fixed[n]) < 0.97 * err(plain[n])
    assert all(err(fixed[n]) == err(plain[n]) for n in errors if n not in touched)


@pytest.mark.parametrize("compressor", ["zstd", "brotli", "lzma", "ans"])
@pytest.mark.parametrize("settings, use_gptq", [(dict(), False), (dict(quant_clip="sdclip", lqer_top_k=2), True),
                                                (dict(quant_clip="search", quant_bits_mlp=4, prune_frac=0.1), True)])
def test_every_quantiser_and_compressor_round_trips(tmp_path, trained, compressor, settings, use_gptq):
    cfg, rt, model, hessians = trained
    c = tg.Config(**{**cfg.__dict__, "compressor": compressor, **settings})
    entries = tg.quantise_state(model.state_dict(), c, hessians if use_gptq else None)
    blob = tg.pack_artifact(entries, c)
    (tmp_path / "a.ptz").write_bytes(blob)
    header, state = tg.read_artifact(str(tmp_path / "a.ptz"))
    codecs = [s["codec"] for s in header["streams"]]
    if compressor != "ans":
        assert set(codecs) == {compressor}
    else:  # "other" (scales, fp16) in brotli; each code stream in the smaller of ans and brotli, recomputed here
        body, at = blob[-32 - sum(s["size"] for s in header["streams"]):-32], 0
        code_streams = {t["arrays"]["q"][0] for t in header["tensors"] if "q" in t["arrays"]}
        for i, st in enumerate(header["streams"]):
            raw = tg.codec(st["codec"])[1](body[at:at + st["size"]], st["raw"])
            at += st["size"]
            sizes = {n: len(tg.codec(n)[0](raw, c)) for n in (["ans", "brotli"] if i in code_streams else ["brotli"])}
            assert st["size"] == min(sizes.values()) and sizes[st["codec"]] == st["size"], (i, sizes, st)
            if i in code_streams:  # ANS decodes what it coded, whichever codec won the stream
                assert tg.codec("ans")[1](tg.codec("ans")[0](raw, c), len(raw)) == raw
    for e in entries:  # what was stored comes back bit for bit, and within the quantisation bound
        expected = tg.dequantize(e, {k: a.astype(np.float32) for k, a in e["arrays"].items()})
        assert np.array_equal(state[e["name"]].numpy(), expected), e["name"]
        w = model.state_dict()[e["name"]].float().numpy()
        if e["kind"] == "q" and not use_gptq:  # round to nearest: within half a step of the weights
            assert np.abs(w - expected).max() <= 0.5 * e["arrays"]["scale"].astype(np.float32).max() * 1.001 + 1e-6
    assert tg.pack_artifact(entries, c) == blob  # deterministic


def test_calibration_reads_training_shards_only(workspace, monkeypatch):
    """A whole GPTQ run, instrumented: while the Hessians are collected, every token comes from a training
    shard (the function is handed the training loader and nothing else)."""
    read, active = [], [False]
    real_collect, real_take = tg.collect_hessians, tg.TokenStream.take

    def collect(*a, **k):
        active[0] = True
        try:
            return real_collect(*a, **k)
        finally:
            active[0] = False

    def take(self, n):
        if active[0]:
            read.append((str(self.files[self.file_idx]), n))
        return real_take(self, n)
    monkeypatch.setattr(tg, "collect_hessians", collect)
    monkeypatch.setattr(tg.TokenStream, "take", take)
    for k, v in dict(QUANT_METHOD="gptq", GPTQ_CALIBRATION_BATCHES="3", RUN_ID="calib").items():
        monkeypatch.setenv(k, v)
    assert tg.main() == 0
    assert read and all(re.search(r"fineweb_train_\d+\.bin$", path) for path, _ in read)
    assert sum(n for _, n in read) == 3 * 2 * (2048 // 2 + 1)  # 3 batches of 2 micro-batches, their spans
    log = (workspace / "logs" / "calib.txt").read_text()
    assert re.search(r"gptq: Hessians of \d+ matrices from 3 training batches in [\d.]+s; training [\d.]+s \+ "
                     r"calibration [\d.]+s = [\d.]+s of the 0s cap|gptq: Hessians of \d+ matrices from 3", log)


def test_size_forecast_is_within_ten_percent(workspace, monkeypatch):
    for k, v in dict(RUN_ID="fc", ITERATIONS="12").items():
        monkeypatch.setenv(k, v)
    assert tg.main() == 0
    log = (workspace / "logs" / "fc.txt").read_text()
    forecast = int(re.search(r"size_forecast: artifact (\d+)", log)[1])
    actual = json.loads((workspace / "logs" / "fc.json").read_text())["artifact_bytes"]
    assert abs(forecast - actual) <= 0.1 * actual, (forecast, actual)


def fit_rounds(workspace, monkeypatch, run_id: str, ladder, cap: int = 0, margin: int = 10_000) -> tuple:
    """Run the tiny model under FIT_TO_CAP with a cap (default ~70 kB below its artifact), a margin and the ladder's
    steps rewritten by `ladder`: (log, per round [(step, signed byte change, bpb change)], per round (step, artifact,
    total, target)) from the log's trial and choice lines."""
    code, steps_of = len((tg.Path(tg.__file__)).read_bytes()), tg.cap_steps
    monkeypatch.setattr(tg, "SIZE_CAP_BYTES", cap or code + 100_000)
    monkeypatch.setattr(tg, "cap_steps", lambda c: ladder(steps_of(c)))
    for k, v in dict(RUN_ID=run_id, FIT_TO_CAP="1", CAP_MARGIN_BYTES=str(margin)).items():
        monkeypatch.setenv(k, v)
    assert tg.main() == 0
    log = (workspace / "logs" / f"{run_id}.txt").read_text()
    texts = re.split(r"^fit_to_cap: chose .*$", log.split("export: ")[1], flags=re.M)[:-1]
    chosen = re.findall(r"^fit_to_cap: chose (\S+): artifact (\d+) \+ code \d+ = (\d+) bytes \(target (\d+)\)", log,
                        re.M)
    assert len(chosen) >= 2 and len(texts) == len(chosen)
    trial = r"^fit_to_cap: trial (\S+): \d+ bytes \(([-+]\d+)\), plain bpb ([-+](?:[\d.e+-]+|inf))"
    rounds = [[(name, int(saved), float(bpb)) for name, saved, bpb in re.findall(trial, t, re.M)] for t in texts]
    return log, rounds, chosen


def test_fit_to_cap_takes_the_cheapest_step_each_round_until_the_target(workspace, monkeypatch):
    """A cap far below the unconstrained artifact (~170 kB) and a margin under it: each round tries every step, takes
    the one with the least plain-eval bpb rise per byte saved (recomputed here from the trial lines), and stops once
    code + artifact is under the cap less CAP_MARGIN_BYTES. A step that changes no byte (here one added to the ladder
    that touches no export setting) is not scored: its trial line says +inf and it is never taken."""
    no_op = {"cap_margin_bytes": 10_000}  # the run's own margin
    log, rounds, chosen = fit_rounds(workspace, monkeypatch, "cap", lambda steps: [*steps, no_op])
    for tried, (step, artifact, total, target) in zip(rounds, chosen):
        assert len(tried) >= 4  # every class's bits, and more pruning
        assert all((bpb == math.inf) == (saved >= 0) for _, saved, bpb in tried)  # a step saving nothing: not scored
        assert tried[-1] == ("CAP_MARGIN_BYTES=10000", 0, math.inf) and step != tried[-1][0]
        best = min(tried, key=lambda t: (-t[1] <= 0, max(t[2], 0) / max(-t[1], 1), t[1]))
        assert step == best[0], (step, tried)
    assert [int(c[1]) for c in chosen] == sorted((int(c[1]) for c in chosen), reverse=True)
    assert int(chosen[-1][2]) <= int(chosen[-1][3]) == tg.SIZE_CAP_BYTES - 10_000 < int(chosen[-2][2])
    s = json.loads((workspace / "logs" / "cap.json").read_text())
    assert s["bytes_total"] <= tg.SIZE_CAP_BYTES - 10_000 and "fit_to_cap: fits after" in log


def test_fit_to_cap_takes_the_largest_saving_among_steps_that_cost_nothing(workspace, monkeypatch):
    """A bpb change at or below zero is noise at the size FIT_TO_CAP scores on (a full-size CPU run chose 33 kB steps
    over 152 kB ones by noise of -0.0002 bpb): a step that costs nothing is free, and of free steps the one saving the
    most bytes is taken, so the fit needs fewer rounds. Here every step scores the same (a constant evaluation) and the
    ladder is reversed, so taking the first or the smallest free step would differ."""
    monkeypatch.setattr(tg, "evaluate", lambda *args, **kwargs: (1.0, 1.0))
    log, rounds, chosen = fit_rounds(workspace, monkeypatch, "free", lambda steps: steps[::-1])
    for tried, (step, *_) in zip(rounds, chosen):
        assert len({saved for _, saved, _ in tried}) > 1 and step == min(tried, key=lambda t: t[1])[0], (step, tried)
    assert "fit_to_cap: fits after" in log


def test_fit_to_cap_bisects_its_last_clip_step_to_the_least_coarse_setting_that_fits(workspace, monkeypatch):
    """With SDClip the steps are clips 4% wider, so the last one can undershoot the target by a whole step's bytes:
    the export then halves that step 3 times (bytes only, no scoring), keeping each midpoint that fits. The midpoints
    are recomputed here from the log, and the artifact kept is the last candidate that fits. (The ladder is cut to the
    MLP and attention clips, a few hundred bytes a step here: this model's other classes save a few bytes a step.)"""
    monkeypatch.setenv("QUANT_CLIP", "sdclip")
    monkeypatch.setenv("RUN_ID", "free")
    assert tg.main() == 0
    free = json.loads((workspace / "logs" / "free.json").read_text())
    log, _, chosen = fit_rounds(workspace, monkeypatch, "bisect", lambda steps: steps[:2],
                                cap=free["bytes_total"] - 500, margin=0)  # a few steps, the last one overshooting
    target, chosen = tg.SIZE_CAP_BYTES, [(*step.split("="), artifact, total) for step, artifact, total, _ in chosen]
    bisects = re.findall(r"^fit_to_cap: bisect (\w+)=([\d.]+): artifact (\d+) \+ code \d+ = (\d+) bytes", log, re.M)
    assert chosen and int(chosen[-1][3]) <= target and len(bisects) == 3
    key = chosen[-1][0]
    lo = next((float(v) for k, v, _, _ in reversed(chosen[:-1]) if k == key), getattr(tg.Config(), key.lower()))
    hi, kept = float(chosen[-1][1]), int(chosen[-1][2])
    for k, v, artifact, total in bisects:
        assert k == key and float(v) == round((lo + hi) / 2, 6) and lo < float(v) < hi
        hi, lo, kept = (float(v), lo, int(artifact)) if int(total) <= target else (hi, float(v), kept)
    s = json.loads((workspace / "logs" / "bisect.json").read_text())
    assert s["artifact_bytes"] == kept and s["bytes_total"] <= target and "fit_to_cap: fits after" in log


def test_cap_steps_are_each_one_setting_coarser():
    sd = tg.Config(quant_clip="sdclip")
    steps = tg.cap_steps(sd)
    assert [list(s) for s in steps] == [["mlp_clip_sigmas"], ["attn_clip_sigmas"], ["embed_clip_sigmas"],
                                        ["matrix_clip_sigmas"]]
    assert all(abs(v / getattr(sd, k) - 1.04) < 1e-6 for s in steps for k, v in s.items())
    rtn = tg.cap_steps(tg.Config(quant_bits_mlp=5, quant_bits_attn=3, quant_bits_embed=16, prune_frac=0.1))
    assert rtn == [{"quant_bits_mlp": 4}, {"quant_bits_bigram": 5}, {"quant_bits_embed": 8}, {"prune_frac": 0.13}]


def test_a_missing_compressor_package_is_one_clear_line(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_brotli(name, *a, **k):
        if name == "brotli":
            raise ImportError("No module named 'brotli'", name="brotli")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_brotli)
    with pytest.raises(tg.ConfigError, match=r"COMPRESSOR=brotli needs the brotli package: pip install brotli"):
        cfg, _ = tg.config_from_env({"COMPRESSOR": "brotli"})
        tg.validate_config(cfg, 1)
