"""Why was the flex peer slow? (GPU diagnostic, not yet run.) N=65536, B=1, H=8, D=64, bf16,
block 128: a user's create_block_mask against the adapter's block lists with its exact table
mask_mod (byte-wide) and with gather-free arithmetic mask_mods that are exact on every block the
compiled kernel masks (causal: the diagonal; local: the diagonal and the window edge).
Prediction (kernels/triton/NOTES.md, run 5): the arithmetic ones run at the user's speed, the
table ones several times slower on local."""
import copy
import torch
import triton.testing as tt
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from stbench import layouts
from stbench.kernels import flex as fb

N, H, D, W, b = 65536, 8, 64, 256, 128
q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
comp = torch.compile(flex_attention, dynamic=False)


def with_mask(bm, mm):  # same tensors, other mask_mod
    out = copy.copy(bm)
    out.mask_mod = mm
    return out


diag = lambda bb, h, i, j: (i % b) >= (j % b)                     # causal / fixed DIAG blocks
band = lambda bb, h, i, j: (i - j >= 0) & (i - j < W)             # local: DIAG + window edge
bmc = fb.flex_layout(layouts.causal(N, block=b, heads=H), "cuda").block_mask
bml = fb.flex_layout(layouts.local(N, block=b, window=W, heads=H), "cuda").block_mask
uc = create_block_mask(lambda bb, h, i, j: j <= i, None, None, N, N, device="cuda")
ul = create_block_mask(lambda bb, h, i, j: (j <= i) & (i - j < W), None, None, N, N, device="cuda")
cases = {
    "user causal": (uc, None), "adapter causal table": (bmc, None),
    "adapter causal arith": (with_mask(bmc, diag), None),
    "user local": (ul, None), "adapter local table": (bml, None),
    "adapter local arith": (with_mask(bml, band), None),
    "adapter local table 64x64": (bml, {"BLOCK_M": 64, "BLOCK_N": 64}),
}
ref = {}
for name, (bm, opts) in cases.items():
    fn = lambda: comp(q, k, v, block_mask=bm, kernel_options=opts)
    try:
        out = fn()
        key = name.split()[1]
        ref.setdefault(key, out)
        err = float((out.float() - ref[key].float()).abs().max())
        ms = tt.do_bench(fn, warmup=20, rep=100, return_mode="median")
        print(f"{name}: {ms:.4f} ms  maxdiff vs first {key} {err:.2e}", flush=True)
    except Exception as exc:
        print(name, "FAIL", type(exc).__name__, str(exc)[:200], flush=True)
