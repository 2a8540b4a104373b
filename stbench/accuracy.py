"""Error measures and per-dtype tolerances, kept in one place for tests, ``stbench check`` and
the autotuner's correctness gate.

The rule follows flash-attention's tests: a kernel's output in dtype T is accepted when

    rel_err(out, ref64) <= FACTOR * rel_err(ref_T, ref64) + FLOOR[T]

where ref64 is the dense reference in float64 and ref_T the dense reference computed in T
itself: a kernel may be at most FACTOR times as wrong as PyTorch's own attention in the same
precision, plus a small floor (the reference in T can be nearly exact on tiny problems).
"""

from __future__ import annotations

import torch

FACTOR = 2.0
# Floors calibrated on random N(0,1) inputs, D=64: a correct fp32 kernel lands near 1e-6 (tf32
# off) to 3e-4 (tf32 dots), bf16 near 4e-3, fp16 near 5e-4 relative error (METHOD.md ranges).
FLOOR = {
    torch.float64: 1e-10,
    torch.float32: 1e-3,
    torch.float16: 2e-3,
    torch.bfloat16: 1e-2,
}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are zero; inf on NaN/inf in out)."""
    out64, ref64 = out.detach().to(torch.float64), ref.detach().to(torch.float64)
    if not torch.isfinite(out64).all():
        return float("inf")
    denom = ref64.norm()
    num = (out64 - ref64).norm()
    if denom == 0:
        return float(num)
    return float(num / denom)


def tolerance(dtype: torch.dtype, same_dtype_ref_err: float) -> float:
    """The largest relative error accepted for a result in ``dtype``."""
    return FACTOR * same_dtype_ref_err + FLOOR[dtype]


def within(out, ref64, ref_same, dtype=None) -> tuple[bool, float, float]:
    """(ok, error, tolerance) for ``out`` against the float64 reference ``ref64``."""
    dtype = dtype or out.dtype
    err = rel_err(out, ref64)
    tol = tolerance(dtype, rel_err(ref_same, ref64))
    return err <= tol, err, tol
