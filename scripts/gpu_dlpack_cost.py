"""Host cost of handing one torch CUDA tensor to a CuPy kernel launch (GPU only): the DLPack
route the CuPy backend took until session 6 (``cupy.from_dlpack`` of an int16 view) against the
device address it passes now (``Tensor.data_ptr``), in microseconds per tensor (median of 2000
calls after a warm-up, ``stbench.timing.bench`` on the host clock).

    python3 scripts/gpu_dlpack_cost.py [--out FILE.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from stbench import timing


def per_call_us(fn, calls: int = 2000) -> float:
    """Median host time of ``fn()`` over ``calls`` calls (after a warm-up), microseconds."""
    t = timing.bench(fn, warmup_ms=5, min_reps=calls, max_reps=calls, device="cpu")
    return t.median_ms * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import cupy

    t = torch.randn(8, 8, 1024, 64, device="cuda", dtype=torch.bfloat16)
    row = {
        "dlpack_us": per_call_us(lambda: cupy.from_dlpack(t.detach().view(torch.int16))),
        "data_ptr_us": per_call_us(lambda: t.data_ptr()),
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "cupy": cupy.__version__,
    }
    line = json.dumps(row)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
