"""What the CuPy backend's kernels are given: which compiled variants a config runs, the
launch geometry, and each kernel's argument list in its order, built through a caller's ``arr``
(tensor -> kernel pointer argument: a device address on the GPU, ctypes on the CPU emulation),
so the GPU launcher (launcher.py) and the CPU emulation (emulate.py) pass the same arguments.
"""

from __future__ import annotations

import functools

import torch

from stbench.layouts import PARTIAL, Plan

from .compile import DELTA_ROWS, DTYPE_CODES, SCALAR_ROWS, Variant
from .config import WGMMA_TILE, bwd_max_block_n

LOG2E = 1.4426950408889634  # exp(x) = exp2(x * LOG2E): the kernels work in base 2


@functools.lru_cache(maxsize=64)
def plan_flags(plan: Plan) -> tuple[bool, bool]:
    """(permuted, has_partial) of a plan: the two plan features that select a variant."""
    return plan.perm is not None, bool((plan.col_kind == PARTIAL).any())


def variants_for(cfg: dict, dtype: torch.dtype, head_dim: int, block: int, permuted: bool,
                 partial: bool) -> tuple[Variant, Variant]:
    """(forward, backward) kernel variants a resolved config runs (the same Variant twice for
    the scalar file, which holds both)."""
    code = DTYPE_CODES[dtype]
    if cfg["kernel"] == "scalar":
        v = Variant("scalar", code, head_dim, block, 0, 0, permuted, partial)
        return v, v
    m, n = cfg["BLOCK_M"], cfg["BLOCK_N"]
    fwd = (Variant("fwd_wgmma", code, head_dim, block, m, n, permuted, partial)
           if cfg["kernel"] == "wgmma" else
           Variant("fwd_mma", code, head_dim, block, m, n, permuted, partial,
                   cfg.get("WARP_M", 16) // 16))
    return (fwd,
            Variant("bwd_mma", code, head_dim, block, m, min(n, bwd_max_block_n(head_dim)),
                    permuted, partial))


MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y, which runs over batch x heads


def launch_geometry(cfg: dict, n_ctx: int, bh: int) -> tuple[tuple, tuple, tuple]:
    """(grid, forward block, backward block) of ``cfg``'s kernels: grid x over row tiles, y over
    batch x heads; a block has a warp per WARP_M rows (forward; wgmma: one warpgroup) or per
    16 rows (backward)."""
    if bh > MAX_GRID_Y:
        raise ValueError(
            f"batch x heads = {bh} exceeds {MAX_GRID_Y} (CUDA's grid y limit): split the batch"
        )
    if cfg["kernel"] == "scalar":
        threads = (SCALAR_ROWS * 32, 1, 1)
        return (n_ctx // SCALAR_ROWS, bh, 1), threads, threads
    m = cfg["BLOCK_M"]
    fwd_threads = (m // WGMMA_TILE * 128 if cfg["kernel"] == "wgmma"
                   else (m // cfg.get("WARP_M", 16)) * 32)
    return (n_ctx // m, bh, 1), (fwd_threads, 1, 1), ((m // 16) * 32, 1, 1)


# The kernels' view of the plan: field -> element type of its pointer argument
PLAN_FWD = (("head_pattern", torch.int32), ("row_ptr", torch.int32), ("col_idx", torch.int32),
            ("col_kind", torch.int8), ("col_mask", torch.int32), ("masks", torch.int32),
            ("perm", torch.int32), ("pattern_perm", torch.int32))
PLAN_BWD = (("head_pattern", torch.int32), ("col_ptr", torch.int32), ("row_idx", torch.int32),
            ("row_kind", torch.int8), ("row_mask", torch.int32), ("masks", torch.int32),
            ("perm", torch.int32), ("pattern_perm", torch.int32))


def plan_args(plan: Plan, arr) -> tuple[list, list]:
    """(forward, backward) plan arguments of the kernels, each tensor contiguous in the element
    type the kernels read (a no-op for the plan's own int32 / int8 arrays), through ``arr``."""

    def field(name, dtype):
        t = getattr(plan, name)
        return None if t is None else t.to(dtype).contiguous()

    fwd = [arr(field(n, dt)) for n, dt in PLAN_FWD]
    bwd = [arr(field(n, dt)) for n, dt in PLAN_BWD]
    return fwd, bwd


def fwd_args(arr, q, k, v, out, lse, fwd_plan, ints, scale_log2) -> tuple:
    """Arguments of st_fwd_mma / st_fwd_wgmma / st_fwd_scalar, in their order."""
    return (arr(q), arr(k), arr(v), arr(out), arr(lse), *fwd_plan, *ints, scale_log2)


def dq_args(arr, q, k, v, dout, lse, delta, dq, fwd_plan, ints, scale, scale_log2) -> tuple:
    """Arguments of st_bwd_dq / st_bwd_dq_scalar, in their order."""
    return (arr(q), arr(k), arr(v), arr(dout), arr(lse), arr(delta), arr(dq), *fwd_plan, *ints,
            scale, scale_log2)


def dkv_args(arr, q, k, v, dout, lse, delta, dk, dv, bwd_plan, ints, scale, scale_log2) -> tuple:
    """Arguments of st_bwd_dkv / st_bwd_dkv_scalar, in their order."""
    return (arr(q), arr(k), arr(v), arr(dout), arr(lse), arr(delta), arr(dk), arr(dv), *bwd_plan,
            *ints, scale, scale_log2)


def row_delta(dout: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """delta [B, H, N] float32 = rowsum(dO * O), the backward's softmax correction, in torch
    (the reference for the kernel ``st_bwd_delta``, which the backward launches)."""
    return (dout.float() * out.float()).sum(-1)


def delta_geometry(rows: int) -> tuple[tuple, tuple]:
    """(grid, block) of st_bwd_delta over ``rows`` = B * H * N rows: one warp per row."""
    return ((rows + DELTA_ROWS - 1) // DELTA_ROWS, 1, 1), (DELTA_ROWS * 32, 1, 1)


def delta_args(arr, dout, out, delta, rows) -> tuple:
    """Arguments of st_bwd_delta, in its order (``rows``: B * H * N, as the int type of the
    caller's launcher)."""
    return arr(dout), arr(out), arr(delta), rows


KERNEL_NAMES = {
    "mma": ("st_fwd_mma", "st_bwd_dq", "st_bwd_dkv"),
    "scalar": ("st_fwd_scalar", "st_bwd_dq_scalar", "st_bwd_dkv_scalar"),
    "wgmma": ("st_fwd_wgmma", "st_bwd_dq", "st_bwd_dkv"),  # the mma.sync backward
}
