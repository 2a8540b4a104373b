"""Why is the flex peer slow at block 128? Time FlexAttention on local(l=256), N=65536, B=1,
H=8, D=64 bf16 three ways: a user's create_block_mask (default options), the adapter's
BlockMask with num_stages=2, and the adapter with explicit 64x64 tiles."""

import torch
import triton.testing as tt
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from stbench import layouts
from stbench.kernels import flex as fb

N, H, D, W = 65536, 8, 64, 256
q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
comp = torch.compile(flex_attention, dynamic=False)
bm = create_block_mask(lambda b, h, i, j: (j <= i) & (i - j < W), None, None, N, N, device="cuda")
L = layouts.local(N, block=128, window=W, heads=H)
cases = {
    "user create_block_mask default": lambda: comp(q, k, v, block_mask=bm),
    "user create_block_mask stages2": lambda: comp(q, k, v, block_mask=bm,
                                                   kernel_options={"num_stages": 2}),
    "adapter stages2": lambda: fb.attention(q, k, v, L, D**-0.5, {"num_stages": 2}),
    "adapter 64x64": lambda: fb.attention(q, k, v, L, D**-0.5, {"BLOCK_M": 64, "BLOCK_N": 64}),
}
for name, fn in cases.items():
    try:
        fn()
        print(name, f"{tt.do_bench(fn, warmup=20, rep=100, return_mode='median'):.4f} ms",
              flush=True)
    except Exception as exc:
        print(name, "FAIL", str(exc)[:160], flush=True)
