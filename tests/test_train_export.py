"""Export: quantisation error bounds, artifact round trip, and refusal of bad artifact files."""
import pickle
import struct

import pytest
import torch

import train_gpt as tg
from test_train_model import tiny


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_quantisation_codes_and_error_bound(bits):
    torch.manual_seed(bits)
    w = torch.randn(64, 200) * torch.linspace(0.001, 2.0, 64)[:, None]
    w[3] = 0.0  # an all-zero row must not produce NaNs
    q, scale = tg.quantize_rows(w, bits)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (64, 1)
    # the scale is rounded up onto the 2^(1/32) grid: the largest entry of a row maps to qmax or just below it, never
    # clipped, unless the row is more than 255 grid steps (8 octaves) below the tensor's largest (its scale is raised
    # to that floor); the error bound holds either way
    reaches = w.abs().amax(dim=1) > w.abs().max() * 2 ** (-255 / 32)
    assert q.abs().max() <= qmax and (q.abs().amax(dim=1)[reaches] >= round(qmax / 2 ** (1 / 32))).all()
    err = (w - q.float() * scale.float()).abs()
    assert (err <= scale.float() * 0.5 * (1 + 2 ** -20) + 1e-12).all()
    assert (q[3] == 0).all()
    # more bits, smaller error
    if bits < 8:
        q8, s8 = tg.quantize_rows(w, bits + 1)
        assert (w - q8.float() * s8.float()).abs().mean() < err.mean()


def test_quant_groups_by_name():
    cfg = tg.Config(quant_bits_mlp=5, quant_bits_attn=6, quant_bits_bigram=7, quant_bits_embed=8)
    assert tg.quant_bits_for("blocks.3.mlp.fc.weight", cfg) == 5
    assert tg.quant_bits_for("blocks.3.attn.k.weight", cfg) == 6
    assert tg.quant_bits_for("bigram.table.weight", cfg) == 7
    assert tg.quant_bits_for("tok_emb.weight", cfg) == 8
    assert tg.quant_bits_for("blocks.0.resid_mix", cfg) == 16 and tg.quant_bits_for("skip_weights", cfg) == 16


def test_pruning_zeroes_the_smallest_fraction():
    w = torch.randn(50, 40)
    pruned = tg.prune_smallest(w, 0.25)
    zeroed = pruned == 0
    assert zeroed.sum() == 500 and w.abs()[zeroed].max() <= w.abs()[~zeroed].min()


def packed_model(tmp_path, **kw):
    cfg = tiny(**kw)
    torch.manual_seed(0)
    model = tg.GPT(cfg)
    for p in model.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "model.ptz"
    tg.write_atomic(path, tg.pack_artifact(tg.quantise_state(model.state_dict(), cfg), cfg))
    return cfg, model, path


def test_artifact_round_trip_is_lossless_for_what_was_stored(tmp_path):
    cfg, model, path = packed_model(tmp_path, quant_bits_embed=8)
    header, state = tg.read_artifact(str(path))
    config = header["model"]
    assert config == {k: getattr(cfg, k) for k in tg.MODEL_FIELDS}
    assert list(state) == list(model.state_dict())
    for name, w in model.state_dict().items():
        bits = tg.quant_bits_for(name, cfg) if w.ndim == 2 else 16
        if bits < 16:
            q, scale = tg.quantize_rows(w, bits)
            expected = q.float() * scale.float()
        else:
            expected = w.half().float()
        assert state[name].dtype == torch.float32 and torch.equal(state[name], expected), name
    rebuilt = tg.GPT(tg.Config(**config))
    rebuilt.load_state_dict(state)  # strict: every name and shape matches


def test_pruned_export_compresses_smaller(tmp_path):
    _, _, plain = packed_model(tmp_path)
    cfg = tiny(prune_frac=0.5)
    torch.manual_seed(0)
    model = tg.GPT(cfg)
    assert len(tg.pack_artifact(tg.quantise_state(model.state_dict(), cfg), cfg)) < plain.stat().st_size


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "truncated or corrupted"),
    (lambda b: b[:-1], "truncated or corrupted"),
    (lambda b: b[:5], "not an artifact written by train_gpt.py"),
    (lambda b: b[:len(b) // 2] + bytes([b[len(b) // 2] ^ 0xFF]) + b[len(b) // 2 + 1:], "corrupted"),
    (lambda b: b"PK\x03\x04" + b[4:], "not an artifact written by train_gpt.py"),
    (lambda b: b[:8] + struct.pack("<H", 99) + b[10:], "artifact format version 99; this script reads version 4"),
])
def test_damaged_artifacts_are_refused_with_the_file_named(tmp_path, damage, message):
    _, _, path = packed_model(tmp_path)
    bad = tmp_path / "bad.ptz"
    bad.write_bytes(damage(path.read_bytes()))
    with pytest.raises(tg.ArtifactError) as err:
        tg.read_artifact(str(bad))
    assert str(bad) in str(err.value) and message in str(err.value)


def test_missing_artifact_is_refused(tmp_path):
    with pytest.raises(tg.ArtifactError, match="cannot read artifact"):
        tg.read_artifact(str(tmp_path / "absent.ptz"))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    for payload in (pickle.dumps(_Exploit(str(marker))),
                    tg.ARTIFACT_MAGIC + struct.pack("<H", 1) + pickle.dumps(_Exploit(str(marker)))):
        evil = tmp_path / "evil.ptz"
        evil.write_bytes(payload)
        with pytest.raises(tg.ArtifactError):
            tg.read_artifact(str(evil))
    torch.save({"x": _Exploit(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(tg.ArtifactError):
        tg.read_artifact(str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_checkpoints_load_without_unpickling_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"config": {}, "x": _Exploit(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(tg.ConfigError) as err:
        tg.read_checkpoint(str(tmp_path / "evil.pt"))
    assert "is not a train_gpt.py checkpoint: it cannot be read as plain tensors" in str(err.value)
    assert "weights_only" not in str(err.value)
    assert not marker.exists()


def test_hostile_artifacts_are_refused_fast_without_large_allocations(tmp_path):
    """A flipped header byte, and a tiny zstd frame declaring 1 TiB, under an address-space limit of
    the current size + 256 MiB: refused by our checks within a second, not by a failed allocation."""
    import subprocess
    import sys

    from conftest import ROOT
    from test_bad_inputs import artifact_bytes, huge_frame
    blob = artifact_bytes()
    (tmp_path / "flipped.ptz").write_bytes(blob[:20] + bytes([blob[20] ^ 1]) + blob[21:])
    (tmp_path / "huge.ptz").write_bytes(huge_frame(blob))
    script = f"""
import resource, sys, time
sys.path.insert(0, {str(ROOT)!r})
import train_gpt as tg
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
for path in sys.argv[1:]:
    t = time.perf_counter()
    try:
        tg.read_artifact(path)
        print("ACCEPTED", path)
    except tg.ArtifactError as e:
        print(f"{{time.perf_counter() - t:.3f}}", e)
"""
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "flipped.ptz"), str(tmp_path / "huge.ptz")],
                         capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    assert "checksum mismatch" in lines[0] and "the zstd frame declares 1099511627776 bytes" in lines[1]
    assert all(float(line.split()[0]) < 1.0 for line in lines)
