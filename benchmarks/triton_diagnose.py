"""Temporary GPU diagnostic (removed after use)."""
import os, subprocess, sys
import torch
from stbench import layouts, accuracy
from stbench.reference import dense

CASES = {
    "fixed32": lambda: layouts.fixed(1024, block=32, stride=128, heads=1, num_verts=1, vertsize=1),
    "union16": lambda: layouts.merged_strided(1024, block=16, stride=128, heads=1),
    "local64": lambda: layouts.local(1024, block=64, window=256, heads=1),
    "causal128": lambda: layouts.causal(1024, block=128, heads=1),
}
CFGS = [dict(BLOCK_M=128, BLOCK_N=64), dict(BLOCK_M=64, BLOCK_N=32), dict(BLOCK_M=32, BLOCK_N=32),
        dict(BLOCK_M=128, BLOCK_N=16), dict(BLOCK_M=16, BLOCK_N=16), dict(BLOCK_M=128, BLOCK_N=64, num_stages=1)]

def main():
    from stbench.kernels.triton import backend as tb
    from stbench.kernels.triton.op import prepare
    from stbench.kernels.triton.backend import resolve_config
    g = torch.Generator().manual_seed(0)
    for name, mk in CASES.items():
        L = mk()
        q, k, v = [torch.randn(1, 1, 1024, 64, generator=g) for _ in range(3)]
        r64 = dense.dense_attention_reference(q.double(), k.double(), v.double(), L, 0.125)
        rg = dense.attention(q.cuda(), k.cuda(), v.cuda(), L, 0.125).cpu()
        print(name, "dense-gpu-fp32 vs cpu64", accuracy.rel_err(rg, r64), flush=True)
        for cfg in CFGS:
            for dt in (torch.bfloat16, torch.float32):
                o = tb.attention(q.cuda().to(dt), k.cuda().to(dt), v.cuda().to(dt), L, 0.125, cfg).float().cpu()
                rowerr = (o - r64).norm(dim=-1)[0, 0] / r64.norm(dim=-1)[0, 0]
                bad = (rowerr > 0.05).nonzero().flatten().tolist()
                c = resolve_config(L, 64, dt, cfg)
                _, tf, _, _ = prepare(L, c, "cuda", False)
                kinds = torch.bincount(tf.kind.cpu().long(), minlength=3).tolist()
                print(f"  {cfg} {dt} err={accuracy.rel_err(o, r64):.3g} nbad={len(bad)} first={bad[:8]} unit={tf.unit} kinds={kinds}", flush=True)

main()
