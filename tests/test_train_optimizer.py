"""Optimiser: Muon's distributed update equals the single-process one bit for bit; Newton-Schulz
variants and row normalisation."""
import subprocess
import sys

import torch

import train_gpt as tg
from conftest import ROOT

DISTRIBUTED_MUON = f"""
import sys, torch, torch.distributed as dist
sys.path.insert(0, {str(ROOT)!r})
import train_gpt as tg
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()

def run(rt, **kw):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s)) for s in [(64, 32), (32, 64), (48, 48), (16, 80), (64, 32), (8, 8)]]
    opt = tg.Muon(ps, 0.02, 0.95, 5, 0.04, rt, **kw)
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return ps, opt

results = []
for kw in (dict(), dict(coefficients=tg.NS_POLAR_EXPRESS, row_normalize=True)):
    shared, opt = run(tg.Runtime(rank, world, torch.device("cpu"), None, None), **kw)
    alone, _ = run(tg.Runtime(0, 1, torch.device("cpu"), None, None), **kw)
    same = all(torch.equal(a, b) for a, b in zip(shared, alone))
    results.append(f"{{rank}} {{'EQUAL' if same else 'DIFFERENT'}} {{opt.bytes_per_step()}} {{opt.shard}}")
open(sys.argv[1] + f".{{rank}}", "w").write("\\n".join(results))  # one file per rank: pipes interleave
dist.destroy_process_group()
"""


def test_distributed_muon_update_is_bit_identical_to_one_process(tmp_path):
    script = tmp_path / "muon.py"
    script.write_text(DISTRIBUTED_MUON)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(tmp_path / "result")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = sorted(line for rank in (0, 1) for line in (tmp_path / f"result.{rank}").read_text().splitlines())
    assert len(lines) == 4, out.stdout + out.stderr[-3000:]
    total = 64 * 32 * 2 + 32 * 64 + 48 * 48 + 16 * 80 + 8 * 8
    for line in lines:
        rank, verdict, sent, shard = line.split()
        assert verdict == "EQUAL", line
        # each rank sends only its share (bf16): balanced, and far less than the whole update
        assert int(sent) == 2 * int(shard) and total / 2 <= int(shard) < 0.6 * total


def test_every_matrix_has_one_owner_and_shares_are_balanced():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(n, 16)) for n in (64, 64, 32, 16, 16, 8, 8, 8)]
    for world in (1, 2, 3):
        shares = []
        for rank in range(world):
            opt = tg.Muon(ps, 0.02, 0.95, 5, 0.0, tg.Runtime(rank, world, torch.device("cpu"), None, None))
            shares.append(opt.slots)
        assert all(s == shares[0] for s in shares)  # every rank agrees on the plan
        loads = [sum(p.numel() for p, (o, _) in zip(ps, shares[0]) if o == r) for r in range(world)]
        assert sum(loads) == sum(p.numel() for p in ps) and max(loads) - min(loads) <= 64 * 16
        for r in range(world):  # slots of one owner do not overlap
            spans = sorted((at, at + p.numel()) for p, (o, at) in zip(ps, shares[0]) if o == r)
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
