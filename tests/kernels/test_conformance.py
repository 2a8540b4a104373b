"""Conformance: every registered backend x the shared layout cases (stbench.layouts.cases) x
dtype, forward and gradients against the dense reference.

Each result x (out, and dq, dk, dv where the backend computes gradients) in dtype T must satisfy
stbench.accuracy's rule, the one place the per-dtype tolerances live:

    rel_err(x, ref64) <= FACTOR * rel_err(ref_T, ref64) + FLOOR[T]

with ref64 the dense reference in float64 and ref_T the dense reference computed in T itself,
on fresh N(0, 1) inputs (flash-attention's calibration: a kernel may be at most FACTOR times as
wrong as PyTorch's own attention in the same precision, plus a floor for problems where that
reference is nearly exact). Rows with no allowed key must come out exactly 0 and nothing may be
NaN.

A backend that cannot run here is skipped with its own reason (backends.unavailable_reason),
unless the project runs it on the CPU another way, as its own tests do: cupy's CUDA kernels
under the CPU emulation (kernels/cupy/emulate.py, forward and gradients) and FlexAttention's
uncompiled forward (no backward on the CPU). Triton runs under its interpreter without a GPU
(tests/conftest.py); on a GPU every backend runs for real (FlexAttention's gradients where N
is a multiple of 128, the block its backward needs).
"""

from __future__ import annotations

import math

import pytest
import torch

import stbench
from stbench import accuracy, backends
from stbench.layouts.cases import CASES
from stbench.reference.dense import dense_attention_reference

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
HEAD_DIM = 32  # every backend's kernels take it (triton: 32 / 64 / 128; cupy mma: 16k)
BATCH = 1


def _emulated_cupy(layout, dtype):
    from stbench.kernels.cupy import emulate

    if emulate.available() is not None:
        return None
    return (lambda q, k, v, scale: emulate.attention(q, k, v, layout, scale)), True


def _eager_flex(layout, dtype):
    from stbench.kernels import flex

    if flex.supports(layout) is not None:
        return None
    return (lambda q, k, v, scale: flex.flex_forward(q, k, v, layout, scale,
                                                     compiled=False)), False


# backend -> (layout, dtype) -> (fn(q, k, v, scale) -> out, runs backward) or None: how the
# project runs a backend on the CPU where the backend itself needs a GPU
CPU_STAND_INS = {"cupy": _emulated_cupy, "flex": _eager_flex}


def _flex_backward(layout) -> bool:
    """FlexAttention's backward needs blocks of 128 (kernels/flex.py re-blocks to them): a
    layout whose N is no multiple of 128 is checked forward only."""
    from stbench.kernels import flex

    return layout.block >= flex.MIN_BACKWARD_BLOCK or layout.n_ctx % flex.MIN_BACKWARD_BLOCK == 0


# backend -> layout -> whether its gradients can be asked for (else BackendInfo.backward)
BACKWARD_WHERE = {"flex": _flex_backward}


def _runner(name: str, device: torch.device, dtype: torch.dtype, layout):
    """(fn, backward) running backend ``name`` here, or a skip with the backend's reason."""
    why = backends.unavailable_reason(name, device, dtype, layout)
    if why is None:
        def run(q, k, v, scale):
            return stbench.attention(q, k, v, layout, backend=name, scale=scale)

        where = BACKWARD_WHERE.get(name)
        return run, backends.info(name).backward and (where is None or where(layout))
    stand_in = CPU_STAND_INS.get(name) if device.type == "cpu" else None
    found = stand_in(layout, dtype) if stand_in is not None else None
    if found is None:
        pytest.skip(f"{name}: {why}")
    return found


def _dense(q, k, v, layout, scale, dout):
    """Dense reference (out, (dq, dk, dv)) in q's dtype, on the CPU."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = dense_attention_reference(q, k, v, layout, scale)
    return out.detach(), torch.autograd.grad(out, (q, k, v), dout)


# the smoke tier (-m smoke): every backend x every case in bf16
SMOKE_DTYPES = [pytest.param(d, marks=pytest.mark.smoke) if d == torch.bfloat16 else d
                for d in DTYPES]


@pytest.mark.parametrize("dtype", SMOKE_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", backends.names())
def test_backend_matches_dense(backend, case, dtype, gen, device):
    layout = CASES[case].build(seed=7)
    fn, backward = _runner(backend, device, dtype, layout)
    shape = (BATCH, layout.heads, layout.n_ctx, HEAD_DIM)
    q64, k64, v64, do64 = (torch.randn(shape, generator=gen, dtype=torch.float64)
                           for _ in range(4))
    scale = 1.0 / math.sqrt(HEAD_DIM)
    ref64 = _dense(q64, k64, v64, layout, scale, do64)
    ref_t = _dense(*(t.to(dtype) for t in (q64, k64, v64)), layout, scale, do64.to(dtype))

    leaves = [t.to(device=device, dtype=dtype).requires_grad_(backward) for t in (q64, k64, v64)]
    out = fn(*leaves, scale)
    got = [out.detach().cpu()]
    if backward:
        got += [g.cpu() for g in torch.autograd.grad(out, leaves, do64.to(device, dtype))]
    for label, x, x64, xt in zip(("out", "dq", "dk", "dv"), got, (ref64[0], *ref64[1]),
                                 (ref_t[0], *ref_t[1])):
        assert x.dtype == dtype and x.shape == x64.shape, (label, x.dtype, x.shape)
        assert not x.isnan().any(), f"{label} has NaN"
        ok, err, tol = accuracy.within(x, x64, xt, dtype)
        assert ok, f"{label}: rel_err {err:.3g} > tolerance {tol:.3g}"
    empty = ~layout.token_mask().any(-1)  # [H, N]: rows with no allowed key
    assert torch.equal(got[0][:, empty], torch.zeros_like(got[0][:, empty]))
