"""Diagnose FlexAttention compilation on the GPU: the plain causal mask a user writes vs the
adapter's BlockMask from the plan, under a few kernel_options. Prints one line per variant."""

import time
import traceback

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import stbench
from stbench import layouts
from stbench.kernels import flex as flex_backend

torch.manual_seed(0)
B, H, N, D = 4, 8, 4096, 64
q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
compiled = torch.compile(flex_attention, dynamic=False)


def run(name, fn):
    try:
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        print(f"{name}: ok first call {time.perf_counter() - t0:.1f}s, out finite "
              f"{bool(torch.isfinite(out).all())}", flush=True)
        return out
    except Exception as exc:  # every variant is a data point
        print(f"{name}: FAIL {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        traceback.print_exc(limit=2)


bm = create_block_mask(lambda b, h, qi, ki: ki <= qi, None, None, N, N, device="cuda")
ref = run("plain create_block_mask causal", lambda: compiled(q, k, v, block_mask=bm))
L = layouts.causal(N, block=128, heads=H)
for opts in (None, {"num_stages": 2}, {"BLOCK_M": 64, "BLOCK_N": 64}):
    out = run(f"adapter causal {opts}", lambda: flex_backend.attention(q, k, v, L, D**-0.5, opts))
    if out is not None and ref is not None:
        print("   max diff vs plain", float((out.float() - ref.float()).abs().max()))
Lf = layouts.fixed(N, block=128, stride=512, heads=H)
run("adapter fixed", lambda: flex_backend.attention(q, k, v, Lf, D**-0.5, None))
dense = run("dense ref fixed", lambda: stbench.attention(q, k, v, Lf, backend="dense"))
