"""The CuPy backend's autograd: the forward saves q, k, v, out and lse (base-2 log-sum-exp, fp32
[B, H, N]); the backward launches delta, dQ and dK/dV on the same Launcher."""

from __future__ import annotations

import torch

from .launcher import aligned


class CupyAttention(torch.autograd.Function):
    """out = attention(q, k, v) through ``launcher`` (a launcher.Launcher), differentiable in
    q, k, v [B, H, N, D]."""

    @staticmethod
    def forward(ctx, q, k, v, launcher, scale):
        q, k, v = aligned(q), aligned(k), aligned(v)
        out, lse = launcher.forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.launcher, ctx.scale = launcher, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.launcher.backward(q, k, v, out, lse, dout.contiguous(), ctx.scale)
        return dq, dk, dv, None, None
