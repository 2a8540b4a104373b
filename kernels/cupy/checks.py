"""Correctness checks of the CuPy backend against the dense reference, shared by the GPU tests
(tests/kernels/test_cupy_backend.py) and scripts/gpu_cupy.py.

``LAYOUT_CASES`` builds small layouts from every generator (skipping any generator this stbench
lacks), at blocks 16..128, with permutations (strided, st_mix), partial blocks (merged_strided,
random token masks) and rows that attend to nothing. ``check_case`` runs one (layout, dtype,
head dim, config) on fresh seeded N(0, 1) inputs and applies the accuracy rule of
``stbench.accuracy`` to the output and to dq, dk, dv:

    rel_err(x, ref64) <= 2 * rel_err(ref_T, ref64) + FLOOR[T]

with ref64 the dense reference in float64 and ref_T the same in dtype T. A failure is a row
(status ``incorrect``, ``compile_error``, ``runtime_error``, ``unsupported``), never a raise.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from stbench import accuracy, layouts
from stbench.backends import BackendUnavailable


def _token_mask_layout(n: int, heads: int, block: int, seed: int) -> layouts.Layout:
    """Random causal token mask (density ~0.3) with a few rows that attend to nothing."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(heads, n, n, generator=g) < 0.3) & torch.ones(n, n, dtype=torch.bool).tril()
    mask[:, 5] = False  # an empty row inside a non-empty block row
    mask[:, block : 2 * block] = False  # a whole empty block row
    return layouts.from_token_mask(mask, block=block)


def _block_mask_layout(n: int, heads: int, block: int, seed: int) -> layouts.Layout:
    g = torch.Generator().manual_seed(seed)
    nb = n // block
    bm = torch.rand(heads, nb, nb, generator=g) < 0.4
    return layouts.from_block_mask(bm, block=block, causal=False)


def _gen(name: str) -> Callable | None:
    return getattr(layouts, name, None)


def _st_mix(n, heads, block, stride):
    gen = _gen("st_mix")
    if gen is not None:
        return gen(n, block=block, stride=stride, heads=heads)
    from stbench.problems import mix_heads

    return mix_heads(layouts.local(n, block=block, window=stride, heads=heads),
                     layouts.strided(n, block=block, stride=stride, heads=heads), "st_mix")


# name -> builder(n_ctx, heads) ; n_ctx = 512 in the checks (each builder's constraints hold)
LAYOUT_CASES: dict[str, Callable[[int, int], layouts.Layout]] = {
    "causal_b64": lambda n, h: layouts.causal(n, block=64, heads=h),
    "causal_b128": lambda n, h: layouts.causal(n, block=128, heads=h),
    "local_b32": lambda n, h: layouts.local(n, block=32, window=96, heads=h),
    "strided_b16": lambda n, h: layouts.strided(n, block=16, stride=16, heads=h),
    "fixed_b32": lambda n, h: layouts.fixed(n, block=32, stride=128, heads=h, num_verts=2,
                                            vertsize=1),
    "merged_strided_b16": lambda n, h: layouts.merged_strided(n, block=16, stride=32, heads=h),
    "st_mix_b32": lambda n, h: _st_mix(n, h, 32, 16),
    "token_mask_b32": lambda n, h: _token_mask_layout(n, h, 32, seed=1),
    "block_mask_b64": lambda n, h: _block_mask_layout(n, h, 64, seed=2),
}
# Cases at block 64 with partial blocks and the permutation, for kernels that need a layout
# block of at least 64 (the wgmma forward), which LAYOUT_CASES covers at smaller blocks only
BLOCK64_CASES: dict[str, Callable[[int, int], layouts.Layout]] = {
    "token_mask_b64": lambda n, h: _token_mask_layout(n, h, 64, seed=3),
    # stride 8: strided needs (n / stride) % block == 0; the local heads get partial blocks
    "st_mix_b64": lambda n, h: _st_mix(n, h, 64, 8),
}
ALL_CASES = {**LAYOUT_CASES, **BLOCK64_CASES}  # every name check_case and the scripts accept


@dataclass(frozen=True)
class CheckResult:
    layout: str
    dtype: str
    head_dim: int
    config: str
    status: str  # ok / incorrect / compile_error / runtime_error / unsupported
    out_err: float | None = None
    out_tol: float | None = None
    grad_err: float | None = None  # the worst of dq, dk, dv relative to its tolerance
    grad_tol: float | None = None
    has_nan: bool = False
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def case_variants(layout, dtype: torch.dtype, head_dim: int, config: dict | None,
                  capability=(9, 0)) -> list:
    """Kernel variants (forward, backward) that running ``layout`` with ``config`` compiles;
    ``layout``: a Layout or a LAYOUT_CASES name (built at n_ctx 512, 2 heads). [] when the
    case cannot run (it reports itself when run)."""
    from stbench.kernels.cupy import backend
    from stbench.layouts import plan_for

    try:
        lay = ALL_CASES[layout](512, 2) if isinstance(layout, str) else layout
        cfg = backend.resolve_config(config, lay.block, head_dim, dtype, capability)
        return list(backend.variants_for(cfg, dtype, head_dim, lay.block,
                                         *backend.plan_flags(plan_for(lay))))
    except Exception:  # noqa: BLE001
        return []


def reference(q, k, v, layout, scale):
    """Dense attention, differentiable (the project's plain reference when importable)."""
    try:
        from stbench.reference.dense import dense_attention_reference

        return dense_attention_reference(q, k, v, layout, scale)
    except ImportError:
        pass
    mask = layout.token_mask().to(q.device)
    nonempty = mask.any(-1, keepdim=True)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = (q @ k.transpose(-1, -2)).to(acc) * scale
    s = s.masked_fill(~mask, -math.inf).masked_fill(~nonempty, 0.0)
    p = torch.softmax(s, dim=-1) * nonempty
    return p.to(q.dtype) @ v


def _fwd_bwd(fn, q, k, v, dout, backward: bool):
    q, k, v = (t.detach().clone().requires_grad_(backward) for t in (q, k, v))
    out = fn(q, k, v)
    if not backward:
        return out.detach(), None
    out.backward(dout)
    return out.detach(), (q.grad, k.grad, v.grad)


def _classify(exc: BaseException) -> str:
    if isinstance(exc, BackendUnavailable):
        return "unsupported"
    name = type(exc).__name__
    if "Compile" in name or "NVRTC" in str(exc)[:200]:
        return "compile_error"
    return "runtime_error"


def check_case(layout_name: str, dtype: torch.dtype, head_dim: int, config: dict | None,
               n_ctx: int = 512, heads: int = 2, batch: int = 2, seed: int = 0,
               backward: bool = True, device: str = "cuda", runner=None) -> CheckResult:
    """Run the cupy backend (or ``runner``, same signature as ``backend.attention``: the CPU
    emulation in tests) on one case and judge it; never raises."""
    if runner is None:
        from stbench.kernels.cupy import backend

        runner = backend.attention

    cfg_s = "default" if config is None else ",".join(f"{k}={v}" for k, v in config.items())
    base = dict(layout=layout_name, dtype=str(dtype).removeprefix("torch."), head_dim=head_dim,
                config=cfg_s)
    try:
        layout = ALL_CASES[layout_name](n_ctx, heads)
        g = torch.Generator().manual_seed(seed)
        shape = (batch, heads, layout.n_ctx, head_dim)
        q64, k64, v64, do64 = (torch.randn(shape, generator=g, dtype=torch.float64).to(device)
                               for _ in range(4))
        scale = 1.0 / math.sqrt(head_dim)
        q, k, v, dout = (t.to(dtype) for t in (q64, k64, v64, do64))

        def ref_fn(a, b, c):
            return reference(a, b, c, layout, scale)

        out64, g64 = _fwd_bwd(ref_fn, q64, k64, v64, do64, backward)
        out_t, g_t = _fwd_bwd(ref_fn, q, k, v, dout, backward)
    except Exception as exc:  # noqa: BLE001  (a broken case is a row)
        return CheckResult(**base, status="runtime_error", error=f"reference: {exc!r}"[:500])

    try:
        def run(a, b, c):
            return runner(a, b, c, layout, scale, config)

        out, grads = _fwd_bwd(run, q, k, v, dout, backward)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001
        return CheckResult(**base, status=_classify(exc),
                           error=(f"{type(exc).__name__}: {exc}\n" +
                                  traceback.format_exc(limit=3))[:1500])

    has_nan = bool(torch.isnan(out).any()) or (
        grads is not None and any(bool(torch.isnan(x).any()) for x in grads))
    ok, err, tol = accuracy.within(out, out64, out_t, dtype)
    g_err = g_tol = None
    if grads is not None:
        worst = -1.0
        for x, x64, xt in zip(grads, g64, g_t):
            ok_i, e_i, t_i = accuracy.within(x, x64, xt, dtype)
            ok = ok and ok_i
            if e_i / t_i > worst:
                worst, g_err, g_tol = e_i / t_i, e_i, t_i
    status = "ok" if ok and not has_nan else "incorrect"
    return CheckResult(**base, status=status, out_err=err, out_tol=tol, grad_err=g_err,
                       grad_tol=g_tol, has_nan=has_nan)
