"""Every kernel variant of one backend on small shapes, forward and backward, checked against the
dense reference: the workload that compute-sanitizer runs over (GPU only).

    python3 scripts/gpu_sanitize.py --backend triton            # once, to fill the kernel caches
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 9 \
        python3 scripts/gpu_sanitize.py --backend triton
    compute-sanitizer --tool racecheck python3 scripts/gpu_sanitize.py --backend cupy \
        --cases causal_b128 --config '{"BLOCK_M": 64, "BLOCK_N": 128}'   # one config, one case

PYTORCH_NO_CUDA_MEMORY_CACHING=1 gives every tensor its own allocation, so a read or write past a
tensor's end is outside any allocation and memcheck reports it (with torch's caching allocator it
could land in a neighbour's memory unseen). Cases: the layouts of
``stbench.layouts.cases`` (every generator, blocks 16..64, the strided
permutation, partial blocks, empty rows and columns) at N = 512, B = 2, H = 2, in bf16 and fp32
at head dim 64, plus head dims 32 and 128 on two layouts; each line says ok or the error. Exit
status 1 if any case is wrong.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import torch

from stbench.commands.check import check_one, dense_reference
from stbench.kernels.cupy.checks import case_layout
from stbench.layouts.cases import CASES

N_CTX, HEADS, BATCH = 512, 2, 2
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cases(names=None):
    if names:  # --cases: these layouts in bf16 at D = 64 only
        yield from ((name, torch.bfloat16, 64) for name in names)
        return
    for name in CASES:
        for dtype in (torch.bfloat16, torch.float32):
            yield name, dtype, 64
    for name in ("causal", "merged_strided"):
        for d in (32, 128):
            yield name, torch.float16, d


def run_case(backend, name, dtype, head_dim, gen, config=None) -> tuple[bool, str]:
    """``stbench check``'s judgement of one case: output and dq, dk, dv of the whole batch
    against the float64 and the same-dtype dense reference (stbench/accuracy.py's rule)."""
    layout = case_layout(name, n_ctx=N_CTX, heads=HEADS)
    shape = (BATCH, HEADS, N_CTX, head_dim)
    inputs64 = [torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE)
                for _ in range(4)]
    scale = head_dim**-0.5
    refs64 = dense_reference(*inputs64[:3], layout, scale, inputs64[3])
    refs_t = dense_reference(*(t.to(dtype) for t in inputs64[:3]), layout, scale,
                             inputs64[3].to(dtype))
    row = check_one(backend, name, layout, dtype, inputs64, refs64, refs_t, DEVICE, config)
    if row.status == "ok":
        return True, "ok"
    return False, row.message or (f"{row.status}: out rel_err {row.fwd_err:.3g} / "
                                  f"{row.fwd_tol:.3g}, worst grad {row.grad_err} / {row.grad_tol}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", required=True, choices=("triton", "cupy"))
    ap.add_argument("--config", type=json.loads, action="append", default=None,
                    help="a backend config (JSON, repeatable) run on every case instead of the "
                         "default")
    ap.add_argument("--cases", default=None, help="comma-separated stbench.layouts.cases names (bf16, D = 64)")
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(int(time.time()))  # fresh inputs every run
    failed = 0
    names = args.cases.split(",") if args.cases else None
    for (name, dtype, d), config in itertools.product(cases(names), args.config or [None]):
        t0 = time.perf_counter()
        try:
            ok, msg = run_case(args.backend, name, dtype, d, gen, config)
        except Exception as exc:  # noqa: BLE001 - a crashing case is a failure line, go on
            ok, msg = False, f"{type(exc).__name__}: {str(exc)[:300]}"
        failed += not ok
        print(f"{args.backend} {name} {str(dtype)[6:]} D={d} {config or 'default'}: {msg} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"{args.backend}: {failed} failed cases", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
