"""One side (a backend module of some kernel tree) on one problem: checked against the dense
reference, then timed. Shared by ``stbench ab`` and ``stbench regress``.

Order, as in the sweep's measurement (``stbench.tuning.measure``): availability and layout
support (else ``unsupported``); the check on the problem's own inputs (its first call also
compiles; ``incorrect`` sides are not timed); the timer (``stbench.timing.bench``: warm-up, L2
flushed before each repetition, CUDA events, median). Any exception becomes an ``Outcome``
whose status says which kind of failure it was, never a raise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from stbench import timing
from stbench.backends import BackendUnavailable
from stbench.problems import Problem
from stbench.tuning import check
from stbench.tuning.measure import BenchSettings, classify_exception, closure, error_text

# query rows per head checked against dense on every round / run: at least the first and the
# last query block (check.check_blocks), more at finer blocks; a few hundred ms of dense
# reference per problem at N = 16384 would cost more than the timing itself
CHECK_ROWS = 128
DO_SEED_OFFSET = 104729  # dO's generator seed = problem seed + this (as the sweep's rows)
ERROR_LINE_CHARS = 300


@dataclass(frozen=True)
class Outcome:
    """What one side did on one problem: ``status`` (stbench.results.STATUSES), the time's
    median in ms when it ran, its error against dense (``err`` <= ``tol`` passes), and one line
    saying what went wrong."""

    status: str
    median_ms: float | None = None
    err: float | None = None
    tol: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Inputs:
    """q, k, v [B, H, N, D] (requiring grad for 'fwd+bwd') and dO (None for 'fwd')."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    do: torch.Tensor | None

    @property
    def qkv(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.q, self.k, self.v


def make_inputs(problem: Problem, device, seed: int) -> Inputs:
    """Fresh seeded inputs for ``problem`` (its seed replaced by ``seed``)."""
    prob = dataclasses.replace(problem, seed=seed)
    q, k, v = prob.inputs(device)
    do = None
    if prob.mode == "fwd+bwd":
        g = torch.Generator(device=q.device).manual_seed(seed + DO_SEED_OFFSET)
        do = torch.randn(q.shape, generator=g, dtype=torch.float32, device=q.device).to(q.dtype)
    return Inputs(q, k, v, do)


def make_reference(problem: Problem, layout, inputs: Inputs, rows: int | None,
                   seed: int) -> check.Reference:
    """The dense reference for batch element 0 of ``inputs`` (``rows`` query rows per head, or
    ``check.Reference``'s own rule when None)."""
    return check.Reference(*inputs.qkv, layout, problem.head_dim ** -0.5, problem.mode,
                           seed=seed, rows=rows)


def one_line(exc: BaseException) -> str:
    text = error_text(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:ERROR_LINE_CHARS]


def unavailable(module, device, problem: Problem, layout) -> str | None:
    """None when ``module`` runs ``problem`` on ``device``, else why not."""
    try:
        module.check_available(torch.device(device), problem.torch_dtype)
        supports = getattr(module, "supports", None)
        return supports(layout) if supports is not None else None
    except BackendUnavailable as exc:
        return str(exc)


def check_side(module, problem: Problem, layout, inputs: Inputs, reference: check.Reference,
               device, config: dict | None = None) -> Outcome:
    """The side's output (and gradients) on ``inputs`` against ``reference``."""
    why = unavailable(module, device, problem, layout)
    if why is not None:
        return Outcome("unsupported", error=why[:ERROR_LINE_CHARS])
    scale = problem.head_dim ** -0.5
    try:
        verdict = reference.check_backend(
            lambda q, k, v: module.attention(q, k, v, layout, scale, config),
            inputs=inputs.qkv)
    except Exception as exc:  # noqa: BLE001 - a failing side is an outcome, not a crash
        return Outcome(classify_exception(exc), error=f"check: {one_line(exc)}")
    if not verdict.ok:
        return Outcome("incorrect", err=verdict.err, tol=verdict.tol, error=verdict.message())
    return Outcome("ok", err=verdict.err, tol=verdict.tol)


def time_side(module, problem: Problem, layout, inputs: Inputs, device,
              settings: BenchSettings, config: dict | None = None) -> Outcome:
    """The side's median time (ms) on ``inputs`` (``timing.bench``)."""
    scale = problem.head_dim ** -0.5
    grads = list(inputs.qkv) if problem.mode == "fwd+bwd" else None
    run = closure(module, *inputs.qkv, layout, scale, config, problem.mode, inputs.do)
    try:
        t = timing.bench(run, warmup_ms=settings.warmup_ms, rep_ms=settings.rep_ms,
                         flush_l2=settings.flush_l2, min_reps=settings.min_reps,
                         grad_to_none=grads, device=device, hide_host=settings.hide_host)
    except Exception as exc:  # noqa: BLE001
        return Outcome(classify_exception(exc), error=f"bench: {one_line(exc)}")
    finally:
        for g in grads or ():
            g.grad = None
    return Outcome("ok", median_ms=t.median_ms)
