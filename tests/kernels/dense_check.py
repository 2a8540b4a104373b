"""One GPU check of a backend against the dense reference (float64 and same-dtype, the rule of
stbench/accuracy.py), forward and gradients, on fresh seeded inputs."""

from __future__ import annotations

import torch

from stbench import accuracy
from stbench.reference import dense


def check_against_dense(attention, layout, dtype, head_dim, gen, batch=2, config=None,
                        grads=True) -> None:
    """Assert ``attention(q, k, v, layout, scale, config)`` (CUDA, [B, H, N, D] in ``dtype``)
    matches dense attention: the output finite and within tolerance, and with ``grads`` dQ,
    dK, dV too."""
    shape = (batch, layout.heads, layout.n_ctx, head_dim)
    base = [torch.randn(shape, generator=gen) for _ in range(4)]
    q, k, v, do = (t.cuda() for t in base)
    scale = head_dim**-0.5
    l64 = [t.double().requires_grad_() for t in (q, k, v)]
    r64 = dense.attention(*l64, layout, scale)
    lt = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    rt = dense.attention(*lt, layout, scale)
    ins = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = attention(*ins, layout, scale, config)
    assert torch.isfinite(out).all(), "non-finite output"
    ok, err, tol = accuracy.within(out, r64, rt, dtype)
    assert ok, f"forward {err:.3g} > {tol:.3g}"
    if grads:
        r64.backward(do.double())
        rt.backward(do.to(dtype))
        out.backward(do.to(dtype))
        for name, a, b, c in zip("qkv", ins, l64, lt):
            ok, err, tol = accuracy.within(a.grad, b.grad, c.grad, dtype)
            assert ok, f"d{name} {err:.3g} > {tol:.3g}"
