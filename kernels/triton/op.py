"""The Triton attention as a ``torch.library`` custom op with autograd, usable in torch.compile.

    stbench::triton_sparse_attn(q, k, v, layout_key, scale, config_json) -> (out, lse2)
    stbench::triton_sparse_attn_bwd(do, q, k, v, out, lse2, layout_key, scale, config_json)
        -> (dq, dk, dv)

q, k, v, out, do: [B, H, N, D]; lse2: fp32 [B, H, N] (base-2 log-sum-exp, -inf on empty rows).
A custom op takes only tensors and plain values, so the layout travels as its content hash:
``register_layout`` keeps the most recent layouts by hash (a bounded LRU, like the plan cache)
and the op looks its Layout up there. The fake (meta) implementations give torch.compile the
output shapes without running anything.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict

import torch

from stbench.layouts import Layout, plan_for

from .backward import backward, delta_of
from .compose import split_merged_strided
from .config import KernelConfig
from .forward import forward
from .tiles import tiles_for

LAYOUT_REGISTRY_SIZE = 64
_LAYOUTS: OrderedDict[str, Layout] = OrderedDict()
_LOCK = threading.Lock()


def register_layout(layout: Layout) -> str:
    """Make ``layout`` reachable by the op; returns its key (the content hash)."""
    key = layout.content_hash
    with _LOCK:
        _LAYOUTS[key] = layout
        _LAYOUTS.move_to_end(key)
        while len(_LAYOUTS) > LAYOUT_REGISTRY_SIZE:
            _LAYOUTS.popitem(last=False)
    return key


def _layout(key: str) -> Layout:
    with _LOCK:
        layout = _LAYOUTS.get(key)
    if layout is None:
        raise KeyError(
            f"layout {key} is not registered with the triton op: call "
            "stbench.kernels.triton.op.register_layout(layout) (stbench.attention does)"
        )
    return layout


def prepare(layout: Layout, cfg: KernelConfig, device, backward_too: bool = True):
    """Device plan and tile lists (cached) for ``layout`` under ``cfg``: (plan, forward tiles,
    dQ tiles or None (``dq_atomic``), dK/dV tiles); the backward's are None without
    ``backward_too``."""
    cpu_plan = plan_for(layout, "cpu")
    plan = cpu_plan.to(device)
    tf = tiles_for(cpu_plan, cfg.BLOCK_M, cfg.BLOCK_N, False, device)
    if not backward_too:
        return plan, tf, None, None
    # no dQ kernel with dq_atomic: the dK/dV kernel adds dQ, so no dQ tile lists
    tq = None if cfg.dq_atomic else tiles_for(cpu_plan, *cfg.dq_tiles(), False, device)
    tk = tiles_for(cpu_plan, *cfg.dkv_tiles(), True, device)
    return plan, tf, tq, tk


@functools.lru_cache(maxsize=256)
def _prepared(layout_key: str, config_json: str, device: str, backward_too: bool):
    """(cfg, parts): per part (plan, fwd tiles, dQ tiles, dK/dV tiles), cached per (layout,
    config, device): the host work of a repeated call is one dictionary lookup. One part, or two
    disjoint ones when ``cfg.split_union`` splits a merged strided layout (compose.py)."""
    cfg = KernelConfig.from_dict(json.loads(config_json))
    layout = _layout(layout_key)
    split = split_merged_strided(layout) if cfg.split_union else None
    parts = split if split is not None else (layout,)
    return cfg, tuple(prepare(p, cfg, device, backward_too) for p in parts)


def _fwd_impl(q, k, v, layout_key, scale, config_json):
    cfg, parts = _prepared(layout_key, config_json, str(q.device), False)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    prev = None
    for i, (plan, tf, _, _) in enumerate(parts):
        last = i == len(parts) - 1
        prev = forward(q, k, v, plan, tf, scale, cfg, out_dtype=None if last else torch.float32,
                       prev=prev)
    return prev


def _bwd_impl(do, q, k, v, out, lse2, layout_key, scale, config_json):
    cfg, parts = _prepared(layout_key, config_json, str(q.device), True)
    do, q, k, v, out, lse2 = (t.contiguous() for t in (do, q, k, v, out, lse2))
    # one part: its dQ kernel computes delta; several share one computed here
    delta = delta_of(out, do) if len(parts) > 1 else None
    prev = None
    for i, (plan, _, tq, tk) in enumerate(parts):
        last = i == len(parts) - 1
        prev = backward(do, q, k, v, out, lse2, plan, tq, tk, scale, cfg, delta=delta,
                        grad_dtype=None if last else torch.float32, prev=prev)
    return prev


@torch.library.custom_op("stbench::triton_sparse_attn", mutates_args=())
def sparse_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout_key: str, scale: float,
    config_json: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _fwd_impl(q, k, v, layout_key, scale, config_json)


@sparse_attn.register_fake
def _(q, k, v, layout_key, scale, config_json):
    B, H, N, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, H, N), dtype=torch.float32)


@torch.library.custom_op("stbench::triton_sparse_attn_bwd", mutates_args=())
def sparse_attn_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse2: torch.Tensor, layout_key: str, scale: float, config_json: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(do, q, k, v, out, lse2, layout_key, scale, config_json)


@sparse_attn_bwd.register_fake
def _(do, q, k, v, out, lse2, layout_key, scale, config_json):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, layout_key, scale, config_json = inputs
    out, lse2 = output
    ctx.save_for_backward(q, k, v, out, lse2)
    ctx.layout_key, ctx.scale, ctx.config_json = layout_key, scale, config_json


def _backward(ctx, dout, dlse):
    q, k, v, out, lse2 = ctx.saved_tensors
    dq, dk, dv = sparse_attn_bwd(
        dout, q, k, v, out, lse2, ctx.layout_key, ctx.scale, ctx.config_json
    )
    return dq, dk, dv, None, None, None


sparse_attn.register_autograd(_backward, setup_context=_setup_context)


class SparseAttention(torch.autograd.Function):
    """The eager path: the same implementation as the custom op without its dispatch cost
    (tens of microseconds, which matter for layouts that run in 0.1 ms)."""

    @staticmethod
    def forward(ctx, q, k, v, layout_key, scale, config_json):
        out, lse2 = _fwd_impl(q, k, v, layout_key, scale, config_json)
        ctx.save_for_backward(q, k, v, out, lse2)
        ctx.layout_key, ctx.scale, ctx.config_json = layout_key, scale, config_json
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse2 = ctx.saved_tensors
        dq, dk, dv = _bwd_impl(dout, q, k, v, out, lse2, ctx.layout_key, ctx.scale,
                               ctx.config_json)
        return dq, dk, dv, None, None, None


def apply(q, k, v, layout_key: str, scale: float, config_json: str) -> torch.Tensor:
    """out [B, H, N, D]: the custom op under torch.compile, the autograd.Function in eager."""
    if torch.compiler.is_compiling():
        out, _ = sparse_attn(q, k, v, layout_key, scale, config_json)
        return out
    return SparseAttention.apply(q, k, v, layout_key, scale, config_json)
