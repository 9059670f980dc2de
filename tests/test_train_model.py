"""Model: parameter counts, document boundaries, causality, attention, RoPE scaling, optimiser split."""
import math

import pytest
import torch
import torch.nn.functional as F

import train_gpt as tg

BOS = tg.BOS_ID


def tiny(**kw) -> tg.Config:
    base = dict(num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2.0, vocab_size=64,
                bigram_vocab_size=31, bigram_dim=8, train_seq_len=16)
    return tg.Config(**{**base, **kw})


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_published_10_layer_parameter_count():
    cfg = tg.Config(num_layers=10, bigram_vocab_size=10240, bigram_dim=128)
    assert n_params(tg.GPT(cfg)) == 25_517_137


def test_default_parameter_count_from_the_component_formula():
    d, kv, hidden, layers = 512, 256, 1536, 12
    block = d * d + 2 * d * kv + d * d + 2 * d * hidden + 8 + 2 * d + 2 * d
    expected = 1024 * d + (2048 * 96 + 96 * d + 1) + layers * block + (layers // 2) * d + d
    assert n_params(tg.GPT(tg.Config())) == expected


def test_switches_remove_their_parameters():
    full = n_params(tg.GPT(tiny()))
    assert n_params(tg.GPT(tiny(smear_gate=False))) == full - 32
    assert n_params(tg.GPT(tiny(bigram_vocab_size=0))) == full - (31 * 8 + 8 * 32 + 1)
    assert n_params(tg.GPT(tiny(unet_skips=False))) == full - 1 * 32  # 3 layers: 1 encoder, 1 skip


def test_previous_token_is_masked_at_and_right_after_bos():
    idx = torch.tensor([[5, 6, BOS, 7, 8, BOS, BOS, 9]])
    prev, has_prev = tg.previous_token(idx)
    assert prev.tolist() == [[BOS, 5, 6, BOS, 7, 8, BOS, BOS]]
    assert has_prev.tolist() == [[False, True, False, False, True, False, False, False]]


def test_bigram_and_smear_carry_nothing_across_a_document_boundary():
    torch.manual_seed(0)
    cfg = tiny()
    bigram, smear, emb = tg.BigramHash(cfg), tg.SmearGate(32), torch.nn.Embedding(64, 32)
    torch.nn.init.normal_(bigram.proj.weight)
    torch.nn.init.normal_(smear.gate)
    doc = [BOS, 11, 12, 13]
    a = torch.tensor([[20, 21, 22] + doc])
    b = torch.tensor([[40, 41, 42] + doc])  # same second document, different first one

    def features(idx):
        prev, has_prev = tg.previous_token(idx)
        return bigram(idx, prev, has_prev), smear(emb(idx), has_prev)

    (bia, sma), (bib, smb) = features(a), features(b)
    assert not torch.equal(bia[:, :3], bib[:, :3])
    assert torch.equal(bia[:, 3:], bib[:, 3:]) and torch.equal(sma[:, 3:], smb[:, 3:])
    # at BOS and right after it: the "no previous token" bucket, and no smearing at all
    no_prev = bigram(torch.tensor([[11]]), *tg.previous_token(torch.tensor([[11]])))
    assert torch.allclose(bia[0, 3:5], no_prev[0, 0].expand(2, -1), atol=1e-6)
    assert torch.equal(sma[0, 3:5], emb(a)[0, 3:5])
    assert not torch.equal(sma[0, 5], emb(a)[0, 5])  # inside the document the gate does blend


def test_model_is_causal_and_returns_per_token_nll():
    torch.manual_seed(0)
    model = tg.GPT(tiny()).eval()
    for p in model.parameters():  # leave the zero-initialised paths non-trivial
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randint(4, 64, (2, 16))
    y = torch.randint(4, 64, (2, 16))
    nll = model(x, y)
    assert nll.shape == (2, 16) and (nll > 0).all()
    x2 = x.clone()
    x2[:, 10:] = torch.randint(4, 64, (2, 6))
    nll2 = model(x2, y)
    assert torch.allclose(nll[:, :10], nll2[:, :10], atol=1e-6) and not torch.allclose(nll[:, 10:], nll2[:, 10:])


def attention_inputs(tq, tk=12, dtype=torch.float64):
    torch.manual_seed(tq)
    return [torch.randn(2, t, h, 8, dtype=dtype, requires_grad=True) for t, h in ((tq, 4), (tk, 2), (tk, 2))]


@pytest.mark.parametrize("rows", [None, 4, 5])
def test_matmul_attention_equals_sdpa_with_gqa_and_suffix_queries(monkeypatch, rows):
    """Outputs and all three gradients against PyTorch's SDPA in fp64, for full-length queries and for
    the last positions only (sliding evaluation), plus a numerical gradient check of the hand-written backward;
    the backward in one block of queries and in several (whole and ragged), each against only the keys it sees."""
    if rows:  # the block size follows ATTENTION_BLOCK_SCORES / (batch * kv heads * heads per kv head * keys) = SCORES / 96 here
        monkeypatch.setattr(tg, "ATTENTION_BLOCK_SCORES", rows * 2 * 2 * 2 * 12)
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 3, 3], [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]])  # DOC_MASK segments
    for tq in (12, 5):
        for mask in (None, tg.segment_mask(docs, tq, 12)):
            q, k, v = attention_inputs(tq)
            assert torch.autograd.gradcheck(tg.MatmulAttention.apply, (q, k, v, mask))
            out, ref = tg.MatmulAttention.apply(q, k, v, mask), tg._sdpa(q, k, v, mask)
            assert out.shape == ref.shape == (2, tq, 4, 8) and torch.allclose(out, ref, atol=1e-12)
            g = torch.randn_like(ref)
            for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
                assert torch.allclose(a, b, atol=1e-12)
    q, k, _ = attention_inputs(12)
    blocks = [b[0] for b in tg.MatmulAttention.blocks(q.transpose(1, 2).reshape(4, 2, 12, 8),
                                                      k.transpose(1, 2).reshape(4, 12, 8), 12, None)]
    assert blocks == ([slice(0, 12)] if rows is None else [slice(a, min(a + rows, 12)) for a in range(0, 12, rows)])


def test_matmul_attention_keeps_no_score_matrix_for_the_backward():
    """The backward recomputes the probabilities: what autograd keeps is q, k and v, nothing of T x T size."""
    q, k, v = attention_inputs(12)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        tg.MatmulAttention.apply(q, k, v)
    assert sorted(saved) == sorted(t.numel() for t in (q, k, v))


def test_cpu_auto_attention_is_matmul_in_bf16_and_sdpa_in_fp32():
    cpu = torch.device("cpu")
    assert tg.select_attention("auto", cpu, True) == ("matmul", tg.MatmulAttention.apply, tg.segment_mask)
    assert tg.select_attention("auto", cpu, False) == ("sdpa", tg._sdpa, tg.segment_mask)
    assert tg.select_attention("sdpa", cpu, True)[0] == "sdpa" and tg.select_attention("matmul", cpu, False)[0] == "matmul"
    q, k, v = (t.detach().to(torch.bfloat16) for t in attention_inputs(12))
    assert (tg.MatmulAttention.apply(q, k, v).float() - tg._sdpa(q, k, v).float()).abs().max() < 0.05


def test_untrained_model_loss_is_near_uniform():
    torch.manual_seed(0)
    nll = tg.GPT(tiny()).eval()(torch.randint(4, 64, (4, 16)), torch.randint(4, 64, (4, 16)))
    assert abs(nll.mean().item() - math.log(64)) < 0.05


def test_rope_uses_ntk_scaling_only_beyond_the_training_length():
    cos_train, _ = tg.rotary_tables(16, 8, 8, 10000.0, 16, "cpu")
    cos_long, _ = tg.rotary_tables(32, 8, 8, 10000.0, 16, "cpu")
    cos_ref, _ = tg.rotary_tables(32, 8, 8, 10000.0 * 2 ** (8 / 6), 64, "cpu")
    assert torch.allclose(cos_long, cos_ref) and not torch.allclose(cos_long[:, :16], cos_train)
    assert torch.allclose(tg.rotary_tables(8, 8, 8, 10000.0, 16, "cpu")[0], cos_train[:, :8])


def test_output_projections_are_scaled_orthogonal():
    model = tg.GPT(tiny())
    q = model.blocks[0].attn.q.weight
    assert torch.allclose(q @ q.T, torch.eye(32), atol=1e-5)
    proj = model.blocks[0].mlp.proj.weight  # 32 x 64, rows orthonormal then scaled
    assert torch.allclose(proj @ proj.T, torch.eye(32) / (2 * 3), atol=1e-5)


def test_optimiser_split_covers_every_parameter_once():
    model = tg.GPT(tiny())
    rt = tg.Runtime(0, 1, torch.device("cpu"), None, None)
    muon, adam = tg.build_optimizers(model, tiny(), rt)
    groups = [muon.param_groups[0]["params"]] + [g["params"] for g in adam.param_groups]
    ids = [id(p) for g in groups for p in g]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    assert all(p.ndim == 2 for p in groups[0]) and len(groups[0]) == 3 * 6 + 1
    assert {id(model.tok_emb.weight), id(model.bigram.table.weight)} == {id(p) for p in groups[1]}


def test_newton_schulz_orthogonalises():
    g = torch.randn(32, 64)
    x = tg.newton_schulz(g, 10).float()
    s = torch.linalg.svdvals(x)
    assert x.shape == g.shape and s.min() > 0.5 and s.max() < 1.3


def test_lr_schedule_warmdown_by_iterations_and_by_wallclock():
    cfg = tg.Config(iterations=100, warmdown_iters=20, max_wallclock_seconds=0)
    assert [tg.lr_scale(cfg, s, 0) for s in (0, 80, 90, 100)] == [1.0, 1.0, 0.5, 0.0]
    timed = tg.Config(iterations=10_000, warmdown_iters=20, max_wallclock_seconds=10)
    # 100 ms/step measured: the last 20 steps (2 s) before the 10 s cap are the warm-down
    assert tg.lr_scale(timed, 50, 5000) == 1.0
    assert math.isclose(tg.lr_scale(timed, 90, 9000), 0.5)
    assert tg.lr_scale(timed, 100, 10_000) == 0.0


def test_qat_linear_fake_quantises_forward_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    lin = tg.QATLinear(16, 8)
    x = torch.randn(4, 16)
    plain = lin(x)
    lin.qat = (3, "absmax", 0.0)
    y = lin(x)
    q, scale = tg.quantize_rows(lin.weight.detach(), 3)
    assert torch.allclose(y, x @ (q.float() * scale.float()).T, atol=1e-6) and not torch.allclose(y, plain)
    y.sum().backward()
    assert torch.allclose(lin.weight.grad, x.sum(0).expand(8, -1))  # d/dW as if unquantised
    lin.eval()
    assert torch.equal(lin(x), plain)  # evaluation never fake-quantises
