"""Same-run A/B of two kernel trees (``stbench ab``): head and base timed interleaved on the
same problems, both checked against the dense reference first, a verdict per problem.

For each round r = 0 .. R-1 and each problem: fresh inputs (seed + r), the dense reference for
them (``stbench.tuning.check``), both sides checked against it, then both timed back to back
(``timing.bench``: warm-up, L2 flushed, CUDA events, median), head first in even rounds and
base first in odd ones, so neither side always runs on a warmer or cooler GPU. Rounds are the
outer loop, so each problem's rounds are spread over the whole run and the interval reflects
the machine's drift over it. Per problem: the median ratio t_head / t_base over the rounds, its
bootstrap interval and the verdict (``stats``: faster / same / slower / wrong / unmeasured /
skipped).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from stbench import backends, layouts
from stbench.tuning.measure import BenchSettings, classify_exception

from . import stats
from .problems import Entry
from .sample import (
    CHECK_ROWS, Outcome, check_side, make_inputs, make_reference, one_line, time_side,
)

# per side per round: ~50 ms of device time
AB_BENCH = BenchSettings(warmup_ms=10, rep_ms=40, hide_host=True)
DEFAULT_ROUNDS = 5
DEFAULT_THRESHOLD = 0.03  # a ratio beyond 1.03 (and an interval above 1) is "slower"


@dataclass(frozen=True)
class ABSettings:
    rounds: int = DEFAULT_ROUNDS
    threshold: float = DEFAULT_THRESHOLD
    confidence: float = stats.DEFAULT_CONFIDENCE
    resamples: int = stats.DEFAULT_RESAMPLES
    seed: int = 0
    check_rows: int | None = CHECK_ROWS  # query rows per head checked (None: check's own rule)
    bench: BenchSettings = AB_BENCH

    def __post_init__(self):
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds={self.rounds!r} must be an integer >= 1")
        stats.check_threshold(self.threshold)
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence={self.confidence} must lie strictly between 0 and 1")


@dataclass(frozen=True)
class SideRounds:
    """One side's outcome in every round of one problem."""

    outcomes: tuple[Outcome, ...] = ()

    @property
    def statuses(self) -> tuple[str, ...]:
        return tuple(o.status for o in self.outcomes)

    @property
    def times(self) -> list[float | None]:
        return [o.median_ms for o in self.outcomes]

    def worst(self) -> Outcome | None:
        """The round with the largest err / tol (the failing one first), or None."""
        checked = [o for o in self.outcomes if o.err is not None and o.tol]
        return max(checked, key=lambda o: o.err / o.tol, default=None)

    def first_error(self) -> str | None:
        return next((o.error for o in self.outcomes if o.status != "ok" and o.error), None)


@dataclass(frozen=True)
class ABResult:
    """One problem's A/B: the problem, the verdict, the ratio t_head / t_base with its interval,
    each side's median time over the rounds and its worst error against dense."""

    backend: str
    layout: str
    block: int | None
    n_ctx: int
    batch: int
    heads: int
    head_dim: int
    dtype: str
    mode: str
    verdict: str
    reason: str = ""
    ratio: float | None = None
    low: float | None = None
    high: float | None = None
    rounds: int = 0  # rounds with two valid times
    head_ms: float | None = None
    base_ms: float | None = None
    head_status: tuple[str, ...] = ()
    base_status: tuple[str, ...] = ()
    head_err: float | None = None
    head_tol: float | None = None
    base_err: float | None = None
    base_tol: float | None = None
    head_error: str | None = None
    base_error: str | None = None

    def label(self) -> str:
        return f"{self.backend} {self.layout} N={self.n_ctx} {self.mode}"

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(entry: Entry, block: int | None, head: SideRounds, base: SideRounds,
              settings: ABSettings, seed: int = 0) -> ABResult:
    """The verdict for one problem from both sides' rounds (pure: unit-tested on the CPU)."""
    ratios = stats.valid_ratios(head.times, base.times)
    est = stats.estimate(ratios, settings.confidence, settings.resamples, seed)
    verdict, reason = stats.ab_verdict(head.statuses, base.statuses, est, settings.threshold)
    detail = {stats.WRONG: head.first_error(), stats.SKIPPED: head.first_error(),
              stats.UNMEASURED: base.first_error() or head.first_error()}.get(verdict)
    if detail:
        reason = f"{reason}: {detail}"
    hw, bw = head.worst(), base.worst()
    p = entry.problem
    return ABResult(
        backend=entry.backend, layout=p.layout.name, block=block, n_ctx=p.n_ctx, batch=p.batch,
        heads=p.heads, head_dim=p.head_dim, dtype=p.dtype, mode=p.mode, verdict=verdict,
        reason=reason, ratio=est.ratio if est else None, low=est.low if est else None,
        high=est.high if est else None, rounds=est.rounds if est else 0,
        head_ms=stats.median(head.times), base_ms=stats.median(base.times),
        head_status=head.statuses, base_status=base.statuses,
        head_err=hw.err if hw else None, head_tol=hw.tol if hw else None,
        base_err=bw.err if bw else None, base_tol=bw.tol if bw else None,
        head_error=head.first_error(), base_error=base.first_error(),
    )


def _load(side, backend: str):
    """(module, None) or (None, why it cannot run)."""
    try:
        return side.module(backend), None
    except backends.BackendUnavailable as exc:
        return None, str(exc)


def _round(entry: Entry, layout, modules, r: int, settings: ABSettings, device
           ) -> tuple[Outcome, Outcome]:
    """(head, base) outcomes of round ``r`` on fresh inputs."""
    seed = settings.seed + r
    try:
        inputs = make_inputs(entry.problem, device, seed)
        reference = make_reference(entry.problem, layout, inputs, settings.check_rows, seed)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: both sides unmeasured
        fail = Outcome(classify_exception(exc), error=f"reference: {one_line(exc)}")
        return fail, fail
    order = (0, 1) if r % 2 == 0 else (1, 0)  # head first in even rounds
    checked: dict[int, Outcome] = {}
    for i in order:
        module, why = modules[i]
        checked[i] = (Outcome("unsupported", error=why) if module is None else
                      check_side(module, entry.problem, layout, inputs, reference, device))
    for i in order:
        if checked[i].status == "ok":
            timed = time_side(modules[i][0], entry.problem, layout, inputs, device,
                              settings.bench)
            checked[i] = (Outcome("ok", timed.median_ms, checked[i].err, checked[i].tol)
                          if timed.status == "ok" else timed)
    return checked[0], checked[1]


def run_ab(entries: Sequence[Entry], head, base, device, settings: ABSettings = ABSettings(),
           progress: Callable[[str], None] | None = None) -> list[ABResult]:
    """A/B every entry over ``settings.rounds`` rounds; ``head`` / ``base`` have
    ``module(backend_name)`` (``trees.InstalledKernels``, ``trees.KernelTree`` or a stand-in).
    Raises trees.PlanMismatch when the base's kernels cannot run on this tree's plan."""
    device = torch.device(device)
    built, modules = [], {}
    for e in entries:
        try:
            built.append(e.problem.build_layout())
        except (layouts.LayoutError, ValueError) as exc:
            built.append(f"layout: {exc}")
        if e.backend not in modules:
            modules[e.backend] = (_load(head, e.backend), _load(base, e.backend))
    rounds: dict[int, tuple[list[Outcome], list[Outcome]]] = {i: ([], []) for i in
                                                             range(len(entries))}
    for r in range(settings.rounds):
        for i, e in enumerate(entries):
            if progress:
                progress(f"round {r + 1}/{settings.rounds}: {e.label()}")
            layout = built[i]
            if isinstance(layout, str):
                h = b = Outcome("unsupported", error=layout)
            else:
                h, b = _round(e, layout, modules[e.backend], r, settings, device)
            rounds[i][0].append(h)
            rounds[i][1].append(b)
    out = []
    for i, e in enumerate(entries):
        block = built[i].block if not isinstance(built[i], str) else None
        out.append(summarize(e, block, SideRounds(tuple(rounds[i][0])),
                             SideRounds(tuple(rounds[i][1])), settings, settings.seed))
    return out


def exit_code(results: Sequence) -> int:
    """1 when any verdict fails (slower or wrong), else 0."""
    return 1 if any(r.verdict in stats.FAILING for r in results) else 0
