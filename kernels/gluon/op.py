"""The Gluon forward with autograd. The backward, from this forward's output and base-2
log-sum-exp (the same LSE2 the Triton forward saves): the Triton backend's kernels
(kernels/triton/backward.py) with the config's backward fields, or with ``bwd_kernel="gluon"``
this backend's warp-specialised kernel (backward.py) over the 128 x 128 transposed tiles."""

from __future__ import annotations

import functools

import torch

from stbench.layouts import Layout, plan_for

from ..triton import backend as triton_backend
from ..triton import op as triton_op
from ..triton.backward import backward as triton_backward
from ..triton.tiles import tiles_for
from .backward import backward as gluon_backward
from .config import GluonConfig
from .forward import BLOCK_M, BLOCK_N, forward
from .union import union_for


@functools.lru_cache(maxsize=64)
def _forward_plan(layout: Layout, device: str):
    """(device plan, its 128 x 128 forward tile lists), cached per layout and device."""
    cpu_plan = plan_for(layout, "cpu")
    return cpu_plan.to(device), tiles_for(cpu_plan, BLOCK_M, BLOCK_N.value, False, device)


@functools.lru_cache(maxsize=64)
def _gluon_backward_tiles(layout: Layout, device: str):
    """The 128 x 128 transposed tile lists of the gluon backward, cached."""
    return tiles_for(plan_for(layout, "cpu"), BLOCK_N.value, BLOCK_N.value, True, device)


@functools.lru_cache(maxsize=64)
def _backward_plan(layout: Layout, head_dim: int, dtype: torch.dtype, device: str, bwd: tuple):
    """(Triton KernelConfig, dQ tiles, dK/dV tiles) of the backward (``bwd``:
    GluonConfig.backward_config()), cached."""
    cfg = triton_backend.resolve_config(layout, head_dim, dtype, dict(bwd))
    _, _, tq, tk = triton_op.prepare(layout, cfg, device, backward_too=True)
    return cfg, tq, tk


def _union(tiles, cfg: GluonConfig):
    """The 192-row lists of ``tiles`` (cached) where ``cfg.rows`` is 192, else None."""
    return union_for(tiles, tiles.ptr.device) if cfg.rows == 192 else None


def prepare(layout: Layout, q: torch.Tensor, cfg: GluonConfig, backward: bool = True) -> None:
    """Build the plan and tile lists (cached) ahead of timing."""
    _union(_forward_plan(layout, str(q.device))[1], cfg)
    if backward and cfg.bwd_kernel == "gluon":
        _gluon_backward_tiles(layout, str(q.device))
    elif backward:
        _backward_plan(layout, q.shape[-1], q.dtype, str(q.device), cfg.backward_config())


class GluonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, layout, scale, cfg):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        plan, tiles = _forward_plan(layout, str(q.device))
        out, lse2 = forward(q, k, v, plan, tiles, scale, cfg, _union(tiles, cfg))
        ctx.save_for_backward(q, k, v, out, lse2)
        ctx.layout, ctx.scale, ctx.plan, ctx.bwd = layout, scale, plan, cfg.backward_config()
        ctx.bwd_kernel = cfg.bwd_kernel
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse2 = ctx.saved_tensors
        plan = ctx.plan
        if ctx.bwd_kernel == "gluon":
            tiles = _gluon_backward_tiles(ctx.layout, str(q.device))
            dq, dk, dv = gluon_backward(dout.contiguous(), q, k, v, out, lse2, plan, tiles,
                                        ctx.scale)
            return dq, dk, dv, None, None, None
        cfg, tq, tk = _backward_plan(ctx.layout, q.shape[-1], q.dtype, str(q.device), ctx.bwd)
        dq, dk, dv = triton_backward(dout.contiguous(), q, k, v, out, lse2, plan, tq, tk,
                                     ctx.scale, cfg)
        return dq, dk, dv, None, None, None


def apply(q, k, v, layout: Layout, scale: float, cfg: GluonConfig) -> torch.Tensor:
    return GluonAttention.apply(q, k, v, layout, scale, cfg)
