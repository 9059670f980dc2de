"""The frontier recipe's ideas, one switch at a time, each against an independent computation where one
exists; the recipe's parameter count; loop order and skip pairing."""
import math

import pytest
import torch
import torch.nn.functional as F

import train_gpt as tg
from test_train_model import n_params, tiny


def frontier(**kw) -> tg.Config:
    """A tiny model with every frontier switch on."""
    base = dict(num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2.0, vocab_size=64, train_seq_len=16,
                bigram_vocab_size=0, smear_gate=False, xsa_last_n=4, rope_dims=4, ln_scale=True, mlp_act="leaky_relu2",
                smear_gate_enabled=True, gate_window=6, sparse_attn_gate_enabled=True, sparse_attn_gate_scale=0.5,
                skip_gates_enabled=True, parallel_start_layer=3, num_loops=1, loop_start=1, loop_end=1, qk_gain_init=5.0)
    return tg.Config(**{**base, **kw})


def test_recipe_parameter_counts_match_the_published_ones():
    for env, count in (({"RECIPE": "frontier"}, 35_945_671),
                       ({"NUM_LAYERS": "10", "BIGRAM_VOCAB_SIZE": "10240", "BIGRAM_DIM": "128"}, 25_517_137)):
        cfg, _ = tg.config_from_env(env)
        tg.validate_config(cfg, 8)
        with torch.device("meta"):
            assert n_params(tg.GPT(cfg)) == count


def test_frontier_recipe_is_a_table_that_any_variable_overrides():
    cfg, _ = tg.config_from_env({"RECIPE": "frontier", "NUM_LAYERS": "9"})
    assert (cfg.recipe, cfg.num_layers, cfg.vocab_size, cfg.muon_ns, cfg.ema_decay) == ("frontier", 9, 8192, "polar", 0.9965)
    assert tg.non_default_settings(cfg) == {"NUM_LAYERS": 9}
    classic, _ = tg.config_from_env({})
    assert classic == tg.DEFAULTS and tg.non_default_settings(classic) == {}


@pytest.mark.parametrize("cfg_kw, encoder, decoder", [
    (dict(num_layers=11, num_loops=2, loop_start=3, loop_end=5), [0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10]),
    (dict(num_layers=11, num_loops=0), [0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]),
    (dict(num_layers=4, num_loops=1, loop_start=1, loop_end=2), [0, 1, 2], [1, 2, 3]),
    (dict(num_layers=3, num_loops=3, loop_start=0, loop_end=0), [0, 0, 0], [0, 1, 2]),
    (dict(num_layers=5, num_loops=1, loop_start=4, loop_end=4, unet_skips=False), [], [0, 1, 2, 3, 4, 4]),
])
def test_loop_order_unrolls_the_loop_and_splits_it_in_half(cfg_kw, encoder, decoder):
    cfg = tg.Config(**cfg_kw)
    assert tg.layer_order(cfg, looping=True) == (encoder, decoder)
    plain = list(range(cfg.num_layers))
    half = len(plain) // 2 if cfg.unet_skips else 0
    assert tg.layer_order(cfg, looping=False) == (plain[:half], plain[half:])


@pytest.mark.parametrize("looping", [False, True])
def test_skips_pair_decoder_slots_with_encoder_outputs_last_in_first_out(monkeypatch, looping):
    cfg = frontier(num_layers=5, num_loops=1, loop_start=1, loop_end=2, parallel_start_layer=0)
    model = tg.GPT(cfg)
    model.looping = looping
    runs, pairs = [], []
    real_block, real_skip = tg.Block.forward, tg.GPT.skip

    def block(self, x, *a, **k):
        out = real_block(self, x, *a, **k)
        runs.append(out)
        return out

    def skip(self, j, x, s):
        pairs.append((j, next(r for r, t in enumerate(runs) if t is s)))
        return real_skip(self, j, x, s)
    monkeypatch.setattr(tg.Block, "forward", block)
    monkeypatch.setattr(tg.GPT, "skip", skip)
    model(torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16)))
    encoder, decoder = tg.layer_order(cfg, looping)
    n = min(len(encoder), len(decoder))
    assert len(model.skip_weights) == min(map(len, tg.layer_order(cfg, True)))  # sized for the looped layout
    assert pairs == [(j, len(encoder) - 1 - j) for j in range(n)]


def test_xsa_output_is_orthogonal_to_its_own_normalised_value():
    torch.manual_seed(0)
    for xsa in (1, 0):
        cfg = frontier(num_layers=1, xsa_last_n=xsa, sparse_attn_gate_enabled=False)
        attn = tg.CausalSelfAttention(cfg, tg.Kernels(tg._sdpa), 0)
        with torch.no_grad():
            attn.proj.weight.copy_(torch.eye(32))  # the output is then the per-head attention output itself
        x = torch.randn(2, 16, 32)
        y = attn(x, (*tg.rotary_tables(16, 8, 4, 10000.0, 16, "cpu", 4), (None, None))).view(2, 16, 4, 8)
        v = F.normalize(F.linear(x, attn.v.weight).view(2, 16, 2, 8), dim=-1)
        dots = torch.einsum("bthd,bthd->bth", y, v[:, :, [0, 0, 1, 1]])  # q heads 0,1 read kv head 0; 2,3 read 1
        assert (dots.abs().max() < 1e-5) == bool(xsa)


def test_partial_rope_leaves_the_other_dims_position_independent():
    cos, sin = tg.rotary_tables(10, 16, 4, 10000.0, 10, "cpu", 2)
    x = torch.randn(1, 1, 2, 16).expand(1, 10, 2, 16)  # the same vector at every position
    out = tg.apply_rotary(x, cos, sin, 2)
    assert torch.equal(out[..., 4:], x[..., 4:])  # dims 4.. carry no position
    assert not torch.allclose(out[:, 1, :, :4], out[:, 0, :, :4])
    # the rotated dims: a rotation of (dims 0,1) against (dims 2,3) by position * 10000^(-2f/4)
    p, f = 7, 1
    angle = p * 10000.0 ** (-2 * f / 4)
    a, b = x[0, p, 0, f], x[0, p, 0, 2 + f]
    assert torch.allclose(out[0, p, 0, [f, 2 + f]], torch.stack([a * math.cos(angle) - b * math.sin(angle),
                                                                  a * math.sin(angle) + b * math.cos(angle)]))


def test_polar_express_gives_singular_values_closer_to_one():
    torch.manual_seed(0)
    for shape in ((64, 64), (64, 192), (128, 32)):
        errors = {}
        for name, coefficients in (("standard", tg.NS_STANDARD), ("polar", tg.NS_POLAR_EXPRESS)):
            s = []
            for _ in range(4):
                g = torch.randn(shape) * torch.logspace(-2, 0, shape[1])  # ill-conditioned
                s.append(torch.linalg.svdvals(tg.newton_schulz(g, 5, coefficients).float()))
            errors[name] = torch.cat(s).sub(1).abs().mean().item()
        assert errors["polar"] < errors["standard"], (shape, errors)


def test_row_normalised_muon_ignores_the_scale_of_each_rows_gradient():
    torch.manual_seed(0)
    g = torch.randn(16, 32)
    scaled = g * torch.logspace(-1, 1, 16)[:, None]
    for row_normalize in (True, False):
        updates = []
        for grad in (g, scaled):
            p = torch.nn.Parameter(torch.zeros(16, 32))
            p.grad = grad.clone()
            tg.Muon([p], 1.0, 0.0, 5, 0.0, tg.Runtime(0, 1, torch.device("cpu"), None, None),
                    row_normalize=row_normalize).step()
            updates.append(-p.detach())
        assert torch.allclose(updates[0], updates[1], atol=2e-2) == row_normalize


def test_narrow_smear_gate_never_carries_across_a_bos():
    torch.manual_seed(0)
    weight, lam = torch.randn(1, 6), torch.tensor([0.7])
    idx = torch.tensor([[5, 6, 7, tg.BOS_ID, 8, 9]])
    x = torch.randn(1, 6, 32)
    other = x.clone()
    other[:, :3] += 10  # the document before the BOS changes
    a, b = tg.narrow_smear(x, idx, weight, lam), tg.narrow_smear(other, idx, weight, lam)
    assert torch.equal(a[:, 3:], b[:, 3:]) and not torch.equal(a[:, :3], b[:, :3])
    expected = x[0, 5] + lam * torch.sigmoid(weight @ x[0, 5, :6]) * x[0, 4]  # within a document it smears
    assert torch.allclose(a[0, 5], expected)


def test_zero_initialised_gates_at_init():
    """The smear gate is the identity at init; the skip gate and the sparse attention gate start at
    sigmoid(0) = 0.5, as in the record (an even lerp, and half the attention output)."""
    torch.manual_seed(0)
    model = tg.GPT(frontier())
    x = torch.randn(2, 16, 32)
    assert torch.equal(tg.narrow_smear(x, torch.randint(2, 64, (2, 16)), model.smear_weight, model.smear_lambda), x)
    s = torch.randn(2, 16, 32)
    assert torch.allclose(model.skip(0, x, s), 0.5 * x + 0.5 * model.skip_weights[0] * s, atol=1e-6)
    gated = model.blocks[0].attn
    plain = tg.CausalSelfAttention(frontier(sparse_attn_gate_enabled=False), tg.Kernels(tg._sdpa), 0)
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if k != "gate"})
    rotary = (*tg.rotary_tables(16, 8, 4, 10000.0, 16, "cpu", 4), (None, None))
    with torch.no_grad():
        gated.proj.weight.copy_(torch.eye(32))
        plain.proj.weight.copy_(torch.eye(32))
    assert torch.allclose(gated(x, rotary), 0.5 * plain(x, rotary), atol=1e-6)


def test_ema_equals_its_closed_form():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, bias=False)
    ema, d = tg.EMA(model, 0.9), 0.9
    ws = [model.weight.detach().clone()]
    for _ in range(5):
        with torch.no_grad():
            model.weight.add_(torch.randn(2, 3))
        ema.update(model)
        ws.append(model.weight.detach().clone())
    n = len(ws) - 1
    closed = d ** n * ws[0] + sum((1 - d) * d ** (n - t) * ws[t] for t in range(1, n + 1))
    assert torch.allclose(ema.shadow["weight"], closed, atol=1e-6)


def test_lr_schedule_with_warmdown_frac_and_min_lr():
    cfg = tg.Config(iterations=100, warmdown_frac=0.5, min_lr=0.1, max_wallclock_seconds=0)
    assert [tg.lr_scale(cfg, s, 0) for s in (0, 49, 50, 75, 90, 95, 100)] == pytest.approx([1, 1, 1, 0.5, 0.2, 0.1, 0.1])
    timed = tg.Config(iterations=10**6, warmdown_frac=0.5, min_lr=0.0, max_wallclock_seconds=100)
    assert tg.lr_scale(timed, 10, 75_000) == pytest.approx(0.5)  # by wall clock: 75% of the budget gone
    classic = tg.Config(iterations=100, warmdown_iters=20, max_wallclock_seconds=0, min_lr=0.25)
    assert [tg.lr_scale(classic, s, 0) for s in (0, 80, 90, 99)] == pytest.approx([1, 1, 0.5, 0.25])


def test_ln_scale_mlp_activation_and_parallel_lanes_follow_their_formulas():
    torch.manual_seed(0)
    cfg = frontier()
    model = tg.GPT(cfg)
    for p in model.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    block, x, x0 = model.blocks[3], torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    assert block.ln_scale == 0.5 and torch.allclose(block.norm(x), F.rms_norm(x, (32,)) / 2)
    mlp = block.mlp
    assert torch.allclose(mlp(x), F.linear(F.leaky_relu(F.linear(x, mlp.fc.weight), 0.5) ** 2, mlp.proj.weight))
    rotary = (*tg.rotary_tables(16, 8, 4, 10000.0, 16, "cpu", 4), (None, None))
    l0, l1 = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    resid, post = model.parallel_resid[3], model.parallel_post[3]
    a = block.attn_scale * block.attn(block.norm(block.resid_mix[0] * l0 + block.resid_mix[1] * x0), rotary)
    m = block.mlp_scale * block.mlp(block.norm(l1))
    out0, out1 = block.parallel((l0, l1), x0, rotary, resid, post)
    assert torch.allclose(out0, resid[0] * l0 + post[0, 0] * a + post[1, 0] * m, atol=1e-6)
    assert torch.allclose(out1, resid[1] * l1 + post[0, 1] * a + post[1, 1] * m, atol=1e-6)


def test_suffix_evaluation_equals_the_full_forward_in_every_configuration():
    """Scoring only the last positions (last block and head on them alone) gives those positions' losses."""
    torch.manual_seed(0)
    for cfg in (tiny(), frontier(), frontier(parallel_final_lane="attn")):
        model = tg.GPT(cfg).eval()
        model.looping = True
        for p in model.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
        idx, tgt = torch.randint(0, 64, (3, 16)), torch.randint(0, 64, (3, 16))
        with torch.no_grad():
            assert torch.allclose(model(idx, tgt, 11), model(idx, tgt)[:, 11:], atol=1e-5)


def test_embedding_and_scalar_weight_decay_are_separate():
    cfg = tiny(adam_wd=0.02, embed_wd=0.085)
    adam = tg.build_optimizers(tg.GPT(cfg), cfg, tg.Runtime(0, 1, torch.device("cpu"), None, None))[1]
    assert [g["weight_decay"] for g in adam.param_groups] == [0.085, 0.02]


@pytest.mark.parametrize("env, message", [
    ({"ROPE_DIMS": "6", "MODEL_DIM": "64", "NUM_HEADS": "16", "NUM_KV_HEADS": "4"}, "ROPE_DIMS=6: use 0 (every head dim) or an even number in [4, 4]"),
    ({"ROPE_DIMS": "5"}, "ROPE_DIMS=5"),
    ({"XSA_LAST_N": "13"}, "XSA_LAST_N=13 is more than NUM_LAYERS=12"),
    ({"NUM_LOOPS": "1", "LOOP_START": "5", "LOOP_END": "3"}, "LOOP_START=5 .. LOOP_END=3 must satisfy"),
    ({"NUM_LOOPS": "1", "LOOP_START": "5", "LOOP_END": "12"}, "LOOP_END=12 must satisfy"),
    ({"PARALLEL_START_LAYER": "3"}, "PARALLEL_START_LAYER=3 must be below NUM_LAYERS=12 and past every U-Net encoder block"),
    ({"EMA_DECAY": "0.99"}, "EMA_DECAY=0.99 and SWA_EVERY=50 are both on"),
    ({"GATE_WINDOW": "600"}, "GATE_WINDOW=600 is wider than MODEL_DIM=512"),
    ({"RECIPE": "modern"}, "RECIPE='modern' is not allowed: use one of classic, frontier"),
])
def test_frontier_settings_are_checked_together(env, message):
    with pytest.raises(tg.ConfigError) as err:
        cfg, _ = tg.config_from_env(env)
        tg.validate_config(cfg, 1)
    assert message in str(err.value)
