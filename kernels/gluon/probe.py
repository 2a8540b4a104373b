"""A Gluon kernel with the forward's and backward's partition shape (a 4-warp default partition,
a 4-warp and a 1-warp worker, the same register split) and no shared memory of its own: what
compute-sanitizer's racecheck reports on it belongs to Triton's ``warp_specialize`` lowering,
not to this backend's kernels.

    compute-sanitizer --tool racecheck python -m stbench.kernels.gluon.probe      # GPU, sm_90

Each partition writes its own slice of ``out`` (int32 [3, CTAS]: partition p of CTA c writes
out[p, c] = p + 1); the run checks the values and prints one line.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from .forward import CONSUMER_REGS, CONSUMER_WARPS, MAX_REGS, PRODUCER_REGS, PRODUCER_WARPS

CTAS = 264  # two waves on 132 SMs


@gluon.jit
def _mark(out, n, P: gl.constexpr):
    gl.store(out + P * n + gl.program_id(0), P + 1)


@gluon.jit
def _probe_kernel(out, n):
    gl.warp_specialize([
        (_mark, (out, n, 0)),
        (_mark, (out, n, 1)),
        (_mark, (out, n, 2)),
    ], [CONSUMER_WARPS, PRODUCER_WARPS], [CONSUMER_REGS, PRODUCER_REGS])


def run(ctas: int = CTAS) -> None:
    """Launch the probe on the current GPU and check what each partition wrote."""
    import torch

    out = torch.zeros((3, ctas), dtype=torch.int32, device="cuda")
    _probe_kernel[(ctas,)](out, ctas, num_warps=CONSUMER_WARPS.value, maxnreg=MAX_REGS)
    want = torch.arange(1, 4, dtype=torch.int32, device="cuda")[:, None].expand(3, ctas)
    if not torch.equal(out, want):
        raise SystemExit("warp_specialize probe: wrong values")
    print(f"warp_specialize probe: {ctas} CTAs, every partition wrote its slice")


if __name__ == "__main__":
    run()
