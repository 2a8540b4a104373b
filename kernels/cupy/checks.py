"""Correctness checks of the CuPy backend against the dense reference, shared by the GPU tests
(tests/kernels/test_cupy_backend.py) and ``stbench check --backends cupy``.

``check_case`` runs one case of the shared conformance set (``stbench.layouts.cases``: every
generator family, permutations, partial blocks, rows that attend to nothing; at n_ctx 512 and
the case's block or a given one) in one dtype, head dim and config, on fresh seeded N(0, 1)
inputs, and applies the accuracy rule of ``stbench.accuracy`` to the output and to dq, dk, dv:

    rel_err(x, ref64) <= 2 * rel_err(ref_T, ref64) + FLOOR[T]

with ref64 the dense reference in float64 and ref_T the same in dtype T. A failure is a row
(status ``incorrect``, ``compile_error``, ``runtime_error``, ``unsupported``), never a raise.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import asdict, dataclass

import torch

from stbench import accuracy
from stbench.errors import BackendUnavailable
from stbench.layouts.cases import CASES

CHECK_N_CTX, CHECK_HEADS = 512, 2  # the sizes the GPU checks build every case at


@dataclass(frozen=True)
class CheckResult:
    layout: str  # case name, "_b" and the layout block
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


def case_layout(name: str, block: int | None = None, n_ctx: int = CHECK_N_CTX,
                heads: int = CHECK_HEADS, seed: int = 0):
    """The shared case ``name`` (stbench.layouts.cases.CASES) at these sizes; ``block`` None:
    the case's own."""
    return CASES[name].build(n_ctx, heads, block, seed)


def case_variants(layout, dtype: torch.dtype, head_dim: int, config: dict | None,
                  capability=(9, 0), block: int | None = None) -> list:
    """Kernel variants (forward, backward) that running ``layout`` with ``config`` compiles;
    ``layout``: a Layout or a case name (built by ``case_layout`` at ``block``). [] when the
    case cannot run (it reports itself when run)."""
    from stbench.layouts import plan_for

    from .config import resolve_config
    from .kernel_args import plan_flags, variants_for

    try:
        lay = case_layout(layout, block) if isinstance(layout, str) else layout
        cfg = resolve_config(config, lay.block, head_dim, dtype, capability)
        return list(variants_for(cfg, dtype, head_dim, lay.block, *plan_flags(plan_for(lay))))
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
               n_ctx: int = CHECK_N_CTX, heads: int = CHECK_HEADS, batch: int = 2,
               seed: int = 0, backward: bool = True, device: str = "cuda", runner=None,
               block: int | None = None) -> CheckResult:
    """Run the cupy backend (or ``runner``, same signature as ``backend.attention``: the CPU
    emulation in tests) on the shared case ``layout_name`` at ``block`` (None: the case's own)
    and judge it; never raises."""
    if runner is None:
        from stbench.kernels.cupy import backend

        runner = backend.attention

    cfg_s = "default" if config is None else ",".join(f"{k}={v}" for k, v in config.items())
    b = block or getattr(CASES.get(layout_name), "block", "?")
    base = dict(layout=f"{layout_name}_b{b}", dtype=str(dtype).removeprefix("torch."),
                head_dim=head_dim, config=cfg_s)
    try:
        layout = case_layout(layout_name, block, n_ctx, heads, seed)
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
