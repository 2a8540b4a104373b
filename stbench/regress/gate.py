"""The regression gate against a committed baseline (``stbench regress``).

One run: every entry (backend x problem of ``problems.regress_entries``) is checked against the
dense reference on fresh seeded inputs (an incorrect entry is never timed and always fails);
then P passes each time the reference kernels (``calibrate``) and every correct entry, the
entries in reverse order on odd passes. A pass's reference unit is the geometric mean of its
reference times; an entry's value in that pass is its time in those units. Per entry: the
median value over passes and its noise (``stats.log_half_range``). Against the baseline, both
sides are put in units of the reference kernels timed in both runs (a peer missing on one side
drops out of both), then:

    ratio     = value_now / value_baseline          (machine drift divided out)
    threshold = max(floor, k * hypot(noise_baseline, noise_now))
    verdict   = slower if ratio > 1 + threshold, faster if ratio < 1 / (1 + threshold),
                else same; wrong when the entry is incorrect, or fails where the baseline ran

The drift itself, geomean(reference now) / geomean(reference baseline), is reported beside.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from stbench import layouts, timing
from stbench.tuning.measure import BenchSettings

from . import calibrate, stats
from .problems import Entry
from .sample import (
    CHECK_ROWS, Outcome, check_side, make_inputs, make_reference, time_side,
)

GATE_BENCH = BenchSettings(warmup_ms=10, rep_ms=25, hide_host=True)  # device time
DEFAULT_PASSES = 3
DEFAULT_FLOOR = 0.03
DEFAULT_K = 3.0


@dataclass(frozen=True)
class GateSettings:
    passes: int = DEFAULT_PASSES
    floor: float = DEFAULT_FLOOR
    k: float = DEFAULT_K
    seed: int = 0
    check_rows: int | None = CHECK_ROWS
    bench: BenchSettings = GATE_BENCH

    def __post_init__(self):
        if not isinstance(self.passes, int) or self.passes < 1:
            raise ValueError(f"passes={self.passes!r} must be an integer >= 1")
        stats.check_threshold(self.floor, "floor")
        stats.check_threshold(self.k, "k")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Measured:
    """One entry in one run: its check, its time per pass (ms) and in reference units."""

    key: str
    backend: str
    layout: str
    block: int | None
    n_ctx: int
    batch: int
    heads: int
    head_dim: int
    dtype: str
    mode: str
    status: str
    error: str | None = None
    err: float | None = None
    tol: float | None = None
    times_ms: tuple[float | None, ...] = ()
    units: tuple[float | None, ...] = ()
    median_ms: float | None = None
    value: float | None = None  # median of units
    noise: float | None = None  # log half range of units
    tflops: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["times_ms"], d["units"] = list(self.times_ms), list(self.units)
        return d


@dataclass(frozen=True)
class RunMeasurement:
    entries: tuple[Measured, ...]
    references: dict = field(default_factory=dict)  # name -> {"median_ms", "times_ms"}
    skipped_references: tuple[str, ...] = ()
    duration_s: float = 0.0
    check_s: float = 0.0  # of which: loading, checking (and so compiling) before the passes


def _measured(entry: Entry, layout, outcome: Outcome, times: list, units: list) -> Measured:
    p = entry.problem
    med = stats.median(times)
    flops = None
    if med is not None and not isinstance(layout, str):
        flops = timing.tflops(timing.attention_flops(layout, p.batch, p.head_dim, p.mode), med)
    return Measured(
        key=entry.key, backend=entry.backend, layout=p.layout.name,
        block=None if isinstance(layout, str) else layout.block, n_ctx=p.n_ctx, batch=p.batch,
        heads=p.heads, head_dim=p.head_dim, dtype=p.dtype, mode=p.mode, status=outcome.status,
        error=outcome.error, err=outcome.err, tol=outcome.tol, times_ms=tuple(times),
        units=tuple(units), median_ms=med, value=stats.median(units),
        noise=stats.log_half_range(units) if units else None, tflops=flops)


def measure_run(entries: Sequence[Entry], side, device, settings: GateSettings = GateSettings(),
                sizes: calibrate.Sizes | None = None, seed_offset: int = 0,
                progress: Callable[[str], None] | None = None) -> RunMeasurement:
    """Check and time every entry with ``side.module(backend)`` (see the module docstring)."""
    t0 = time.perf_counter()
    device = torch.device(device)
    seed = settings.seed + seed_offset
    refs, skipped_refs = calibrate.references(device, sizes or calibrate.default_sizes(device),
                                              seed)
    state = []  # (entry, layout or why not, module, check outcome)
    modules: dict[str, tuple] = {}
    for e in entries:
        if progress:
            progress(f"checking {e.label()}")
        if e.backend not in modules:
            try:
                modules[e.backend] = (side.module(e.backend), None)
            except Exception as exc:  # noqa: BLE001 - BackendUnavailable and its kin
                modules[e.backend] = (None, str(exc))
        module, why = modules[e.backend]
        try:
            layout = e.problem.build_layout()
        except (layouts.LayoutError, ValueError) as exc:
            state.append((e, f"layout: {exc}", None, Outcome("unsupported", error=str(exc))))
            continue
        if module is None:
            state.append((e, layout, None, Outcome("unsupported", error=why)))
            continue
        inputs = make_inputs(e.problem, device, seed)
        ref = make_reference(e.problem, layout, inputs, settings.check_rows, seed)
        state.append((e, layout, module, check_side(module, e.problem, layout, inputs, ref,
                                                    device)))
        del inputs, ref
    check_s = time.perf_counter() - t0
    ref_times = {r.name: [] for r in refs}
    times = [[] for _ in state]
    failed: dict[int, Outcome] = {}
    order = [i for i, s in enumerate(state) if s[3].status == "ok"]
    for p in range(settings.passes):
        if progress:
            progress(f"pass {p + 1}/{settings.passes}")
        for r in refs:
            ref_times[r.name].append(calibrate.time_reference(r, device, settings.bench))
        for i in (order if p % 2 == 0 else order[::-1]):
            if i in failed:
                continue
            e, layout, module, _ = state[i]
            inputs = make_inputs(e.problem, device, seed)
            out = time_side(module, e.problem, layout, inputs, device, settings.bench)
            if out.status != "ok":
                failed[i] = out
            times[i].append(out.median_ms)
    units_per_pass = [stats.geometric_mean([ref_times[r.name][p] for r in refs])
                      for p in range(settings.passes)]
    measured = []
    for i, (e, layout, _, outcome) in enumerate(state):
        outcome = failed.get(i, outcome)
        t = times[i] if outcome.status == "ok" else []
        units = [None if (x is None or u is None) else x / u
                 for x, u in zip(t, units_per_pass)]
        measured.append(_measured(e, layout, outcome, t, units))
    references = {name: {"median_ms": stats.median(v), "times_ms": v}
                  for name, v in ref_times.items()}
    return RunMeasurement(tuple(measured), references, tuple(skipped_refs),
                          time.perf_counter() - t0, check_s)


@dataclass(frozen=True)
class GateResult:
    """One entry against the baseline."""

    key: str
    backend: str
    layout: str
    n_ctx: int
    mode: str
    verdict: str
    reason: str = ""
    ratio: float | None = None
    threshold: float | None = None
    noise_now: float | None = None
    noise_base: float | None = None
    median_ms: float | None = None
    base_median_ms: float | None = None
    err: float | None = None
    tol: float | None = None

    def label(self) -> str:
        return f"{self.backend} {self.layout} N={self.n_ctx} {self.mode}"

    def to_dict(self) -> dict:
        return asdict(self)


def common_references(now: dict, base: dict) -> list[str]:
    """The reference kernels with a time in both runs (a peer missing on one side drops out of
    both units, so the units stay comparable)."""
    return [n for n, v in now.items()
            if v.get("median_ms") and (base.get(n) or {}).get("median_ms")]


def reference_units(references: dict, names: Sequence[str]) -> list[float | None]:
    """Per pass, the geometric mean of the ``names`` references' times (ms)."""
    if not names:
        return []
    passes = len(references[names[0]]["times_ms"])
    return [stats.geometric_mean([references[n]["times_ms"][p] for n in names])
            for p in range(passes)]


def in_units(times_ms: Sequence[float | None], units: Sequence[float | None]
             ) -> list[float | None]:
    return [None if (t is None or u is None) else t / u for t, u in zip(times_ms, units)]


def drift(run: RunMeasurement, base_references: dict) -> float | None:
    """geomean over the references measured in both of (now / baseline): > 1 means this
    machine runs slower today than when the baseline was written."""
    return stats.geometric_mean([run.references[n]["median_ms"] / base_references[n]["median_ms"]
                                 for n in common_references(run.references, base_references)])


def judge(m: Measured, base: dict | None, settings: GateSettings,
          units_now: Sequence[float | None] = (), units_base: Sequence[float | None] = ()
          ) -> GateResult:
    """The verdict of one measured entry against its baseline entry (None: not in it); both
    sides' times are put in the reference units given (per pass)."""
    now = in_units(m.times_ms, units_now)
    then = in_units(base.get("times_ms") or [], units_base) if base else []
    noise_now = stats.log_half_range(now) if m.times_ms else None
    noise_base = stats.log_half_range(then) if then else None
    common = dict(key=m.key, backend=m.backend, layout=m.layout, n_ctx=m.n_ctx, mode=m.mode,
                  median_ms=m.median_ms, err=m.err, tol=m.tol, noise_now=noise_now,
                  base_median_ms=base.get("median_ms") if base else None, noise_base=noise_base)
    if m.status == "incorrect":
        return GateResult(verdict=stats.WRONG, reason=m.error or "incorrect", **common)
    base_ok = base is not None and base.get("status") == "ok"
    if m.status != "ok":
        if m.status == "unsupported" and not base_ok:
            return GateResult(verdict=stats.SKIPPED, reason=m.error or "", **common)
        if base_ok:
            return GateResult(verdict=stats.WRONG,
                              reason=f"{m.status} where the baseline ran: {m.error}", **common)
        return GateResult(verdict=stats.UNMEASURED, reason=f"{m.status}: {m.error}", **common)
    if base is None:
        return GateResult(verdict=stats.UNMEASURED,
                          reason="not in the baseline: update it with --update-baseline",
                          **common)
    value_now, value_base = stats.median(now), stats.median(then)
    if not base_ok or value_now is None or value_base is None:
        why = (f"baseline status {base.get('status')}" if not base_ok else
               "no reference kernel timed in both runs" if not units_now else "no valid time")
        return GateResult(verdict=stats.UNMEASURED, reason=why, **common)
    threshold = stats.gate_threshold(settings.floor, settings.k, noise_base or 0.0,
                                     noise_now or 0.0)
    ratio = value_now / value_base
    return GateResult(verdict=stats.judge_gate_ratio(ratio, threshold), ratio=ratio,
                      threshold=threshold, **common)


def compare(run: RunMeasurement, baseline_entries: dict, baseline_references: dict,
            settings: GateSettings) -> list[GateResult]:
    """Every entry of ``run`` against the baseline, both in units of the references timed in
    both runs."""
    names = common_references(run.references, baseline_references)
    units_now = reference_units(run.references, names)
    units_base = reference_units(baseline_references, names)
    return [judge(m, baseline_entries.get(m.key), settings, units_now, units_base)
            for m in run.entries]


def baseline_refusal(run: RunMeasurement) -> str | None:
    """Why this run cannot become a baseline (an incorrect entry, or no reference), or None."""
    wrong = [m.key for m in run.entries if m.status == "incorrect"]
    if wrong:
        return (f"{len(wrong)} entries are incorrect ({wrong[0]}, ...): a wrong answer cannot be "
                "a baseline; fix the kernel first")
    if not any(v["median_ms"] for v in run.references.values()):
        return "no reference kernel ran, so drift could not be taken out: see the skipped lines"
    return None
