"""FUSED_KERNELS: each fused function equals its reference in fp64 (values and gradients, checked numerically
too), the fused model equals the reference model, bf16 stays close, and the selection rule."""
import pytest
import torch
import torch.nn.functional as F

import train_gpt as tg

from test_train_model import tiny


def f64(*shape, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale).requires_grad_()


def same(fused, reference, *inputs, atol=1e-12):
    """Equal outputs and equal gradients (for a random output gradient) of two functions of the same inputs."""
    out, ref = fused(*inputs), reference(*inputs)
    g = torch.randn_like(ref)
    grads = [torch.autograd.grad(o, inputs, g) for o in (out, ref)]
    return torch.allclose(out, ref, atol=atol) and all(torch.allclose(a, b, atol=atol) for a, b in zip(*grads))


def test_rms_norm():
    torch.manual_seed(0)
    x = f64(3, 5, 8)
    assert torch.autograd.gradcheck(tg.RMSNorm.apply, (x,)) and same(tg.RMSNorm.apply, tg.rms_norm, x)
    small = torch.randn(64, 32).bfloat16() * 1e-3  # F.rms_norm takes fp32's eps for bf16, not bf16's (2^-7)
    assert (tg.RMSNorm.apply(small).float() - F.rms_norm(small, (32,)).float()).abs().max() < 0.02


@pytest.mark.parametrize("rope_dims,gain", [(8, True), (8, False), (4, True)])
def test_norm_rotary_with_and_without_gain_and_partial_rope(rope_dims, gain):
    torch.manual_seed(0)
    cos, sin = (t.double().contiguous() for t in tg.rotary_tables(5, 8, rope_dims, 10000.0, 5, "cpu", 3))
    inputs = (f64(2, 5, 3, 8),) + ((torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_(),) * gain
    fused = lambda x, g=None: tg.NormRotary.apply(x, cos, sin, rope_dims // 2, g)  # noqa: E731
    reference = lambda x, g=None: tg.norm_rotary(x, cos, sin, rope_dims // 2, g)  # noqa: E731
    assert torch.autograd.gradcheck(fused, inputs) and same(fused, reference, *inputs)
    y = reference(inputs[0].detach())  # the rotation keeps each pair's length: the rotated dims' norm per position
    assert torch.allclose(y[..., :rope_dims].norm(dim=-1) ** 2 + y[..., rope_dims:].norm(dim=-1) ** 2,
                          y.norm(dim=-1) ** 2) and not torch.allclose(y, tg.rms_norm(inputs[0].detach()))


@pytest.mark.parametrize("slope", [None, 0.5])
def test_squared_activation(slope):
    torch.manual_seed(0)
    h = f64(4, 9)
    fused = lambda h: tg.SquaredAct.apply(h, slope)  # noqa: E731
    assert torch.autograd.gradcheck(fused, (h,)) and same(fused, lambda h: tg.squared_act(h, slope), h)
    assert torch.equal(tg.squared_act(h, None), F.relu(h) ** 2)


@pytest.mark.parametrize("cap", [30.0, 2.0, 0.0])
def test_head_loss_in_row_blocks_equals_cross_entropy_of_capped_logits(monkeypatch, cap):
    """Against an independent fp64 cross-entropy of cap * tanh(z / cap), in several row blocks (5 rows each)."""
    monkeypatch.setattr(tg, "HEAD_ROWS", 5)
    torch.manual_seed(0)
    x, w, t = f64(2, 7, 8, scale=3.0), f64(50, 8), torch.randint(0, 50, (2, 7))

    def reference(x, w):
        z = x @ w.T
        z = cap * torch.tanh(z / cap) if cap else z
        return torch.logsumexp(z, -1) - z.gather(-1, t[..., None])[..., 0]
    fused = lambda x, w: tg.HeadLoss.apply(x, w, t, cap)  # noqa: E731
    assert torch.autograd.gradcheck(fused, (x, w)) and same(fused, reference, x, w)
    with torch.inference_mode():  # nothing is kept for a backward that cannot come
        assert torch.allclose(fused(x, w), reference(x, w), atol=1e-12)


def test_fused_model_equals_the_reference_model_and_stays_close_in_bf16():
    for cfg in (tiny(), tiny(rope_dims=4, mlp_act="leaky_relu2", xsa_last_n=1, ln_scale=True, logit_softcap=0.0)):
        torch.manual_seed(0)
        reference = tg.GPT(cfg)
        fused = tg.GPT(cfg, tg.select_kernels(tg.Config(fused_kernels="1"), torch.device("cpu"), True)[1])
        fused.load_state_dict(reference.state_dict())
        x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
        losses = []
        for model in (reference.double(), fused.double()):
            loss = model(x, y).mean()
            losses.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
        # (the reference head's cross-entropy is fp32 whatever the model's dtype: hence 1e-6, not 1e-12)
        assert torch.allclose(losses[0][0].double(), losses[1][0], atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(losses[0][1], losses[1][1]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nll = [m.float()(x, y, 4) for m in (reference, fused)]
        assert (nll[0] - nll[1]).abs().max() < 0.05 and nll[1].dtype == torch.float32


def test_fused_kernels_auto_means_cpu_in_bf16():
    cpu = torch.device("cpu")
    for setting, bf16, fused in (("auto", True, True), ("auto", False, False), ("1", False, True), ("0", True, False)):
        name, kernels = tg.select_kernels(tg.Config(fused_kernels=setting), cpu, bf16)
        assert (kernels.rms_norm == tg.RMSNorm.apply) == fused and name.endswith("fused" if fused else "reference")
        assert kernels.attention == (tg.MatmulAttention.apply if bf16 else tg._sdpa)
    assert tg.Kernels(tg._sdpa) == (tg._sdpa, tg.segment_mask, tg.rms_norm, tg.norm_rotary, tg.squared_act,
                                    tg.head_loss)


def test_newton_schulz_of_a_stack_equals_each_matrix_alone():
    """Muon batches a rank's matrices of one shape: bit for bit what they give one at a time."""
    torch.manual_seed(0)
    g = torch.randn(3, 16, 48)
    assert all(torch.equal(tg.newton_schulz(g, 5)[i], tg.newton_schulz(g[i], 5)) for i in range(3))
    assert all(torch.equal(tg.newton_schulz(g.mT, 5)[i], tg.newton_schulz(g[i].T, 5)) for i in range(3))
