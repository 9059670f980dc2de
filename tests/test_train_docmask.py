"""DOC_MASK: attention never crosses a BOS in training. Exactness (a token's loss and gradients do not depend on an
earlier document of its row; each backend equals a reference that runs every document alone) and backend wiring
(SDPA and matmul masks, FlexAttention's eager path, variable-length FlashAttention's segment boundaries)."""
import pytest
import torch
import torch.nn.functional as F

import train_gpt as tg
from test_train_model import tiny

BOS = tg.BOS_ID
CPU = torch.device("cpu")


def frontier_tiny(**kw):
    """Every switch that mixes positions (XSA, both smear gates, bigram, gates, lanes, loops) plus DOC_MASK."""
    base = dict(doc_mask=True, xsa_last_n=3, rope_dims=4, smear_gate_enabled=True, gate_window=4, smear_gate=True,
                sparse_attn_gate_enabled=True, skip_gates_enabled=True, num_layers=4, parallel_start_layer=3,
                num_loops=1, loop_start=1, loop_end=1, mlp_act="leaky_relu2", ln_scale=True)
    return tiny(**{**base, **kw})


def model_for(cfg, attn_backend="sdpa", fused="0"):
    torch.manual_seed(0)
    kernels = tg.select_kernels(tg.replace(cfg, attn_backend=attn_backend, fused_kernels=fused), CPU, False)[1]
    model = tg.GPT(cfg, kernels).double()
    for p in model.parameters():  # away from the zero-initialised gates, so every path carries signal
        p.data.add_(0.1 * torch.randn_like(p))
    model.looping = True
    return model


def row(seed, docs=(5, 7, 4)):
    """One row of documents of the given lengths, each BOS + tokens, plus its targets (the next tokens)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.cat([torch.cat([torch.tensor([BOS]), torch.randint(4, 64, (n - 1,), generator=g)]) for n in docs])
    tokens = torch.cat([tokens, torch.randint(4, 64, (1,), generator=g)])
    return tokens[:-1][None], tokens[1:][None]


def loss_and_grads(model, x, y, position):
    nll = model(x, y)
    grads = torch.autograd.grad(nll[0, position], [p for p in model.parameters()], allow_unused=True)
    return nll.detach(), [g if g is not None else torch.zeros(()) for g in grads]


@pytest.mark.parametrize("backend", ["sdpa", "matmul"])
def test_a_tokens_loss_and_gradients_ignore_earlier_documents_only_with_the_switch(backend):
    x, y = row(0)
    changed = x.clone()
    changed[0, 1:5] = (changed[0, 1:5] + 7) % 60 + 4  # the first document's tokens (never a BOS)
    target = 8  # in the second document (positions 5..11)
    for on in (True, False):
        model = model_for(frontier_tiny(doc_mask=on), backend)
        a, ga = loss_and_grads(model, x, y, target)
        b, gb = loss_and_grads(model, changed, y, target)
        same = torch.equal(a[0, 5:], b[0, 5:]) and all(torch.equal(u, v) for u, v in zip(ga, gb))
        assert same == on, (backend, on)


@pytest.mark.parametrize("backend", ["sdpa", "matmul", "flex"])
def test_every_backend_equals_each_document_run_alone(backend):
    """Two rows of several documents (the first row starts mid-document, as training rows do), in fp64 (the fused
    head: the reference one computes its cross-entropy in fp32): per-token losses and the gradient of their sum equal
    those of a reference that runs every document as its own row, at other absolute positions: to the precision of
    the RoPE tables, whose angles are fp32 (relative 6e-8 per entry; 1e-6 over a few layers)."""
    fused = "1"
    rows = [row(1, (3, 6, 2, 5)), row(2, (9, 4, 3))]
    x, y = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
    x[0, 0] = 9  # no BOS at the start of the first row: a document cut by the row boundary
    cfg = frontier_tiny()
    model = model_for(cfg, backend, fused) if backend != "flex" else model_for(cfg, "sdpa", fused)
    if backend == "flex":  # CPU: FlexAttention's eager path (SDPA with the same mask)
        model.kernels = model.kernels._replace(attention=tg.flex, mask=tg.flex_mask)
        for block in model.blocks:
            block.attn.kernels = model.kernels
    nll = model(x, y)
    grads = torch.autograd.grad(nll.sum(), list(model.parameters()), allow_unused=True)
    reference = model_for(cfg, "sdpa", fused)
    reference.doc_mask = False
    ref_nll, ref_total = torch.zeros_like(nll), 0
    for b in range(2):
        starts = [0] + [i for i in range(1, 16) if x[b, i] == BOS] + [16]
        for s, e in zip(starts[:-1], starts[1:]):
            piece = reference(x[b:b + 1, s:e], y[b:b + 1, s:e])
            ref_nll[b, s:e] = piece[0].detach()
            ref_total = ref_total + piece.sum()
    ref_grads = torch.autograd.grad(ref_total, list(reference.parameters()), allow_unused=True)
    assert torch.allclose(nll.detach(), ref_nll, rtol=1e-6, atol=0)
    for g, r in zip(grads, ref_grads):
        assert (g is None and r is None) or (g - r).norm() <= 1e-6 * r.norm(), (g - r).norm() / r.norm()


def test_suffix_queries_with_segments_match_the_full_forward():
    """Evaluation scores the last positions only: with DOC_MASK those equal the full forward's."""
    x, y = torch.cat([row(3)[0], row(4)[0]]), torch.cat([row(3)[1], row(4)[1]])
    for backend in ("sdpa", "matmul"):
        model = model_for(frontier_tiny(), backend)
        with torch.no_grad():
            assert torch.allclose(model(x, y, 10), model(x, y)[:, 10:], rtol=0, atol=1e-12)


def fake_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal):
    """flash_attn_varlen_func's contract, written with SDPA: each segment attends within itself, causal queries
    aligned to the end of their keys."""
    out = q.new_zeros(q.shape)
    for i in range(len(cu_q) - 1):
        qs, ks = slice(int(cu_q[i]), int(cu_q[i + 1])), slice(int(cu_k[i]), int(cu_k[i + 1]))
        if qs.stop > qs.start:
            out[qs] = tg._sdpa(q[None, qs], k[None, ks], v[None, ks])[0]
    assert max_q >= int((cu_q[1:] - cu_q[:-1]).max()) and max_k >= int((cu_k[1:] - cu_k[:-1]).max()) and causal
    return out


@pytest.mark.parametrize("first", [0, 5, 15])
def test_variable_length_segments_are_the_documents_of_each_row(first):
    """FlashAttention's variable-length path (CUDA only) driven by a stand-in with its contract, on CPU: the
    segment boundaries computed from the rows give `segment_mask`'s attention, for suffix queries too."""
    module = type("fa", (), {"flash_attn_varlen_func": staticmethod(fake_varlen)})
    torch.manual_seed(0)
    x = torch.cat([row(5, (4, 9, 3))[0], row(6, (16,))[0], row(7, (2, 2, 12))[0]])
    x[0, 0] = 9
    docs = torch.cumsum(x == BOS, 1)
    q, k, v = torch.randn(3, 16 - first, 4, 8, dtype=torch.float64), *torch.randn(2, 3, 16, 2, 8, dtype=torch.float64)
    got = tg.flash_varlen.__wrapped__(module, q, k, v, tg.varlen_mask.__wrapped__(docs, 16 - first, 16))
    assert torch.allclose(got, tg._sdpa(q, k, v, tg.segment_mask(docs, 16 - first, 16)), rtol=0, atol=1e-12)


def test_backend_choice_and_the_log_name():
    assert tg.select_attention("auto", CPU, True, True)[:3] == ("matmul", tg.MatmulAttention.apply, tg.segment_mask)
    assert tg.select_attention("auto", CPU, False, True)[0] == "sdpa"
    with pytest.raises(tg.ConfigError, match="ATTN_BACKEND=flex is not available on this machine"):
        tg.select_attention("flex", CPU, True, True)
    name, kernels = tg.select_kernels(tg.Config(doc_mask=True, fused_kernels="0"), CPU, False)
    assert name == "sdpa doc_mask:on kernels:reference" and kernels.mask is tg.segment_mask
    x, _ = row(8)
    mask = tg.segment_mask(torch.cumsum(x == BOS, 1), 16, 16)[0]
    assert mask.tolist() == [[j <= i and (i < 5) == (j < 5) and (i < 12) == (j < 12) for j in range(16)]
                             for i in range(16)]


def test_doc_mode_evaluation_needs_no_mask_and_gives_the_same_scores():
    """Rows of EVAL_MODE=doc|ttt hold one document each: the model drops the mask there, with equal losses."""
    x, y = row(9, (16,))
    model = model_for(frontier_tiny())
    with torch.no_grad():
        masked = model(x, y)
        model.doc_mask = False
        assert torch.allclose(masked, model(x, y), rtol=0, atol=1e-12)
