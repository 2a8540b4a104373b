"""Every kernel variant of one backend on small shapes, forward and backward, checked against the
dense reference: the workload that compute-sanitizer runs over (GPU only).

    python3 scripts/gpu_sanitize.py --backend triton            # once, to fill the kernel caches
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 9 \
        python3 scripts/gpu_sanitize.py --backend triton

PYTORCH_NO_CUDA_MEMORY_CACHING=1 gives every tensor its own allocation, so a read or write past a
tensor's end is outside any allocation and memcheck reports it (with torch's caching allocator it
could land in a neighbour's memory unseen). Cases: the layouts of
``stbench.kernels.cupy.checks.LAYOUT_CASES`` (every generator, blocks 16..128, the strided
permutation, partial blocks, empty rows and columns) at N = 512, B = 2, H = 2, in bf16 and fp32
at head dim 64, plus head dims 32 and 128 on two layouts; each line says ok or the error. Exit
status 1 if any case is wrong.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from stbench import accuracy, backends
from stbench.kernels.cupy.checks import LAYOUT_CASES
from stbench.reference import dense

N_CTX, HEADS, BATCH = 512, 2, 2


def cases():
    for name in LAYOUT_CASES:
        for dtype in (torch.bfloat16, torch.float32):
            yield name, dtype, 64
    for name in ("causal_b64", "merged_strided_b16"):
        for d in (32, 128):
            yield name, torch.float16, d


def run_case(module, name, dtype, head_dim, gen) -> tuple[bool, str]:
    layout = LAYOUT_CASES[name](N_CTX, HEADS)
    shape = (BATCH, HEADS, N_CTX, head_dim)
    q, k, v, do = (torch.randn(shape, generator=gen).cuda() for _ in range(4))
    scale = head_dim**-0.5
    hi = [t.double().requires_grad_() for t in (q, k, v)]
    lo = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    ins = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    r64, rlo = dense.attention(*hi, layout, scale), dense.attention(*lo, layout, scale)
    out = module.attention(*ins, layout, scale)
    for t, g in ((r64, do.double()), (rlo, do.to(dtype)), (out, do.to(dtype))):
        t.backward(g)
    torch.cuda.synchronize()
    worst = []
    for what, a, b, c in (("out", out, r64, rlo),) + tuple(
            (f"d{n}", x.grad, y.grad, z.grad) for n, x, y, z in zip("qkv", ins, hi, lo)):
        ok, err, tol = accuracy.within(a, b, c, dtype)
        if not ok:
            worst.append(f"{what} rel_err {err:.3g} > {tol:.3g}")
    return not worst, "; ".join(worst) or "ok"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", required=True, choices=("triton", "cupy"))
    args = ap.parse_args(argv)
    module = backends.load(args.backend)
    gen = torch.Generator().manual_seed(int(time.time()))  # fresh inputs every run
    failed = 0
    for name, dtype, d in cases():
        t0 = time.perf_counter()
        try:
            ok, msg = run_case(module, name, dtype, d, gen)
        except Exception as exc:  # noqa: BLE001 - a crashing case is a failure line, go on
            ok, msg = False, f"{type(exc).__name__}: {str(exc)[:300]}"
        failed += not ok
        print(f"{args.backend} {name} {str(dtype)[6:]} D={d}: {msg} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"{args.backend}: {failed} failed cases", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
