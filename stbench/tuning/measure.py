"""Measure one candidate — (problem, layout at some block, backend, config) — into a ResultRow.

Order, for every backend alike: availability and layout support (else ``unsupported``); the
first call timed on its own (compilation and planning: ``prepare_ms``); the correctness gate
(``incorrect`` rows are not timed); the timer (``stbench.timing.bench``); peak memory of one more
call. Any exception becomes a row whose status says which kind of failure it was.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import torch

from stbench import backends, environment, results, timing
from stbench.problems import Problem

ERROR_CHARS = 2000  # error messages kept in a row
OOM_ERRORS = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                               getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)


@dataclass(frozen=True)
class BenchSettings:
    """Timer budgets (ms) for one candidate; the sweep and the tuner choose their own."""

    warmup_ms: float = 25
    rep_ms: float = 100
    flush_l2: bool = True
    check: bool = True
    min_reps: int = 3
    hide_host: bool = False  # device time only (timing.bench): the regression gates' timer


def classify_exception(exc: BaseException) -> str:
    """The row status of an exception: oom, compile_error or runtime_error."""
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    text = str(exc).lower()
    if isinstance(exc, OOM_ERRORS) or "out of memory" in text:
        return "oom"
    if isinstance(exc, backends.BackendUnavailable) or (
            isinstance(exc, (ValueError, TypeError, NotImplementedError))
            and ("not supported" in text or "unsupported" in text)):
        return "unsupported"  # the backend refuses these inputs, saying so
    if ("compil" in name.lower() or name == "OutOfResources"  # triton: tiles too large
            or module.startswith(("triton.compiler", "torch._inductor", "torch._dynamo"))
            or "nvrtc" in text or "compilation" in text):
        return "compile_error"
    return "runtime_error"


def error_text(exc: BaseException) -> str:
    tb = traceback.format_exception_only(type(exc), exc)
    return "".join(tb).strip()[-ERROR_CHARS:]


def layout_fields(layout) -> dict:
    if layout is None:
        return dict(block=None, token_density=None, block_density=None, layout_hash=None,
                    nnz=None)
    return dict(block=layout.block, token_density=layout.token_density,
                block_density=layout.block_density, layout_hash=layout.content_hash,
                nnz=layout.nnz)


def make_row(problem: Problem, layout, backend: str, status: str, block: int | None = None,
             **kw) -> results.ResultRow:
    """A row for ``problem`` with the layout's fields filled in (``layout`` may be None; then
    ``block`` may still say which block was asked for)."""
    lf = layout_fields(layout)
    if layout is None:
        lf["block"] = block
    return results.ResultRow(
        batch=problem.batch, heads=problem.heads, n_ctx=problem.n_ctx,
        head_dim=problem.head_dim, dtype=problem.dtype, mode=problem.mode,
        layout=problem.layout.name, backend=backend, status=status,
        env=environment.collect().to_dict(), timestamp=results.now(), host=environment.host_id(),
        **lf, **kw,
    )


def plan_bytes(layout, device) -> int | None:
    """Bytes of the layout's device plan (cached by the backends), when it can be built."""
    try:
        from stbench.layouts import plan_for

        plan = plan_for(layout, device)
    except Exception:  # noqa: BLE001 - the plan size is informative only
        return None
    return sum(v.numel() * v.element_size() for v in vars(plan).values()
               if isinstance(v, torch.Tensor))


def structure_bytes(module, backend: str, layout, device, config, grad: bool,
                    plan: int | None) -> int | None:
    """Bytes of the per-layout structures ``backend`` keeps between calls: the module's own
    ``structure_bytes(layout, device, config, grad)`` where it has one (FlexAttention's
    BlockMask), else for our backends the device plan they all consume (``plan``), else None."""
    fn = getattr(module, "structure_bytes", None)
    if fn is not None:
        try:
            return int(fn(layout, device, config, grad))
        except Exception:  # noqa: BLE001 - informative only
            return None
    info = backends.info(backend)
    return None if info.peer or info.reference else plan


@dataclass(frozen=True)
class Candidate:
    backend: str
    config: dict = field(default_factory=dict)
    block: int | None = None  # None: the layout as built


def closure(module, q, k, v, layout, scale, config, mode, do=None):
    """A zero-argument callable that runs the backend once (forward, or forward+backward)."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return module.attention(q, k, v, layout, scale, config)
        return run

    def run_bwd():
        out = module.attention(q, k, v, layout, scale, config)
        out.backward(do)
        return out
    return run_bwd


def measure(problem: Problem, layout, backend: str, config: dict | None, *, inputs, reference,
            device, settings: BenchSettings = BenchSettings(), kind: str = "sweep",
            tuned: bool = False) -> results.ResultRow:
    """One candidate's row. ``inputs``: (q, k, v) [B, H, N, D] on ``device`` (requiring grad for
    'fwd+bwd'); ``reference``: a ``check.Reference`` for the problem's pattern, or None to skip
    the correctness gate (recorded in ``check``)."""
    config = dict(config or {})
    row = dict(config=config, kind=kind, tuned=tuned)
    device = torch.device(device)
    dtype = problem.torch_dtype
    why = backends.unavailable_reason(backend, device, dtype, layout)
    if why is not None:
        return make_row(problem, layout, backend, "unsupported", error=why, **row)
    q, k, v = inputs
    scale = problem.head_dim ** -0.5
    module = backends.load(backend)
    do = None
    if problem.mode == "fwd+bwd":
        g = torch.Generator(device=q.device).manual_seed(problem.seed + 104729)  # dO, seeded
        do = torch.randn(q.shape, generator=g, dtype=torch.float32, device=q.device).to(q.dtype)
    run = closure(module, q, k, v, layout, scale, config, problem.mode, do)
    grads = [q, k, v] if problem.mode == "fwd+bwd" else None
    in_bytes = sum(t.numel() * t.element_size() for t in (q, k, v) + ((do,) if do is not None
                                                                     else ()))
    row["inputs_bytes"] = in_bytes
    row["plan_bytes"] = plan_bytes(layout, device)
    stage = "prepare"
    try:
        for t in grads or ():
            t.grad = None
        row["prepare_ms"] = timing.time_prepare(run, device)
        if backends.info(backend).reference:
            row["check"] = "skipped: the reference itself"
        elif reference is not None and settings.check:
            stage = "check"
            verdict = reference.check_backend(
                lambda q_, k_, v_: module.attention(q_, k_, v_, layout, scale, config),
                inputs=(q, k, v))
            row.update(err=verdict.err, tol=verdict.tol, check=verdict.check)
            if not verdict.ok:
                return make_row(problem, layout, backend, "incorrect", error=verdict.message(),
                                **row)
        else:
            row["check"] = "skipped"
        stage = "bench"
        t = timing.bench(run, warmup_ms=settings.warmup_ms, rep_ms=settings.rep_ms,
                         flush_l2=settings.flush_l2, min_reps=settings.min_reps,
                         grad_to_none=grads, device=device)
        stage = "memory"
        for g in grads or ():
            g.grad = None
        peak = timing.peak_memory(run, device)
    except Exception as exc:  # noqa: BLE001 - every failure is a row
        status = classify_exception(exc)
        # a refusal is its own one-line reason; anything else keeps the stage and the type
        why = (str(exc) if isinstance(exc, backends.BackendUnavailable)
               else f"{stage}: {error_text(exc)}")
        return make_row(problem, layout, backend, status, error=why, **row)
    finally:
        for g in grads or ():
            g.grad = None
    out_bytes = q.numel() * q.element_size() * (4 if problem.mode == "fwd+bwd" else 1)
    flops = timing.attention_flops(layout, problem.batch, problem.head_dim, problem.mode)
    bflops = timing.block_flops(layout, problem.batch, problem.head_dim, problem.mode)
    row.update(
        median_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, reps=t.reps,
        tflops=timing.tflops(flops, t.median_ms), block_tflops=timing.tflops(bflops, t.median_ms),
        peak_bytes=peak, workspace_bytes=None if peak is None else max(0, peak - out_bytes),
        structure_bytes=structure_bytes(module, backend, layout, q.device, config,
                                        problem.mode == "fwd+bwd", row["plan_bytes"]),
    )
    return make_row(problem, layout, backend, "ok", **row)
