"""Statistics of the regression gate: paired ratios, their interval, noise, thresholds, verdicts.

Same-run A/B (``stbench ab``). Round r times head and base back to back on the same inputs, so
whatever the machine does at that moment (clocks, temperature, a neighbour) hits both; the
round's ratio is ``x_r = t_head / t_base`` (each t a ``timing.bench`` median). The estimate is
the median of the x_r, its interval a percentile bootstrap of that median: draw the rounds with
replacement ``resamples`` times (a seeded generator, so a rerun on the same numbers gives the
same interval), take each draw's median, and keep the (1 - c) / 2 and (1 + c) / 2 quantiles.

Why a bootstrap of the median ratio, not a rank test: the gate must decide whether the change is
larger than a threshold, which needs an interval on the effect itself; a rank test (Wilcoxon,
Mann-Whitney) answers only "different or not", and with enough rounds it calls a 0.3% shift
significant, which is not a regression worth failing a pull request over. The median, not the
mean, because one round hit by a clock dip or a neighbour's kernel must not move the verdict;
ratios, not differences, because problems span 0.02 ms to 50 ms. With very few rounds the
bootstrap interval is about [min, max] of the ratios: wide, so the verdict stays "same" unless
every round agrees. One round: the interval is the point itself (no spread is known) and the
verdict rests on the threshold alone; equal ratios (zero variance) give the same.

    slower  when median > 1 + threshold and the interval's low end > 1
    faster  when median < 1 / (1 + threshold) and the interval's high end < 1
    same    otherwise

Against a committed baseline (``stbench regress``), times are first divided by the geometric
mean of reference kernels measured in the same pass ("reference units"), which removes machine
drift common to all kernels. Each problem is measured in P passes; its noise is the half range
of the log of its P values (``log_half_range``); the gate's threshold is
``max(floor, k * hypot(noise_baseline, noise_now))`` and the ratio ``units_now / units_base``
is judged against it (no interval: the noise is in the threshold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

FASTER, SAME, SLOWER, WRONG = "faster", "same", "slower", "wrong"
UNMEASURED = "unmeasured"  # no ratio: the base (or baseline) failed or no timing was valid
SKIPPED = "skipped"  # neither side can run the problem here
VERDICTS = (FASTER, SAME, SLOWER, WRONG, UNMEASURED, SKIPPED)
FAILING = (SLOWER, WRONG)  # verdicts that make the exit code non-zero
OK = "ok"
UNSUPPORTED = "unsupported"
DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True)
class RatioEstimate:
    """The median of the per-round ratios t_head / t_base and its bootstrap interval."""

    ratio: float
    low: float
    high: float
    rounds: int  # rounds with a valid ratio


def valid_ratios(head_ms: Sequence[float | None], base_ms: Sequence[float | None]) -> list[float]:
    """Per-round ratios head / base, keeping only rounds where both times are finite and > 0
    (a failed side, a NaN or a zero time drops the round)."""
    if len(head_ms) != len(base_ms):
        raise ValueError(f"{len(head_ms)} head times but {len(base_ms)} base times: pair them")
    out = []
    for h, b in zip(head_ms, base_ms):
        if _positive(h) and _positive(b):
            out.append(h / b)
    return out


def _positive(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def bootstrap_median_interval(samples: Sequence[float], confidence: float = DEFAULT_CONFIDENCE,
                              resamples: int = DEFAULT_RESAMPLES, seed: int = 0
                              ) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of ``samples`` (seeded). One sample (or all
    equal): the point itself."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must lie strictly between 0 and 1")
    if resamples < 1:
        raise ValueError(f"resamples={resamples} must be >= 1")
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no samples: nothing to bound")
    if x.size == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    draws = x[rng.integers(0, x.size, size=(resamples, x.size))]
    medians = np.median(draws, axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(medians, [tail, 1 - tail])
    return float(lo), float(hi)


def estimate(ratios: Sequence[float], confidence: float = DEFAULT_CONFIDENCE,
             resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> RatioEstimate | None:
    """The median ratio with its interval; None when there is no valid ratio."""
    if not ratios:
        return None
    lo, hi = bootstrap_median_interval(ratios, confidence, resamples, seed)
    return RatioEstimate(float(np.median(np.asarray(ratios, dtype=np.float64))), lo, hi,
                         len(ratios))


def check_threshold(threshold: float, name: str = "threshold") -> float:
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"{name}={threshold!r} must be a finite number >= 0 (0.03 is 3%)")
    return float(threshold)


def judge_ratio(est: RatioEstimate, threshold: float) -> str:
    """faster / same / slower for an A/B estimate (see the module docstring)."""
    check_threshold(threshold)
    if est.ratio > 1 + threshold and est.low > 1:
        return SLOWER
    if est.ratio < 1 / (1 + threshold) and est.high < 1:
        return FASTER
    return SAME


def judge_gate_ratio(ratio: float, threshold: float) -> str:
    """faster / same / slower for a drift-corrected ratio against a baseline."""
    check_threshold(threshold)
    if not _positive(ratio):
        return UNMEASURED
    if ratio > 1 + threshold:
        return SLOWER
    if ratio < 1 / (1 + threshold):
        return FASTER
    return SAME


def side_failure(statuses: Sequence[str]) -> str | None:
    """The first status of a side that is not ``ok``, or None."""
    return next((s for s in statuses if s != OK), None)


def ab_verdict(head: Sequence[str], base: Sequence[str], est: RatioEstimate | None,
               threshold: float) -> tuple[str, str]:
    """(verdict, reason) for one problem from each round's head / base status and the ratio.

    wrong: the head was incorrect in any round, or failed (error or refusal) in a round where
    the base ran; a wrong answer always fails, whatever the times. skipped: both sides refused
    (unsupported) every round. unmeasured: the base failed where the head passed, or no round
    had two valid times. Otherwise the ratio decides (``judge_ratio``)."""
    if len(head) != len(base):
        raise ValueError("one status per round for each side")
    if not head:
        return UNMEASURED, "no rounds ran"
    if "incorrect" in head:
        return WRONG, f"head incorrect in round {list(head).index('incorrect')}"
    if all(h == UNSUPPORTED for h in head) and all(b == UNSUPPORTED for b in base):
        return SKIPPED, "neither side runs this problem here"
    for r, (h, b) in enumerate(zip(head, base)):
        if h != OK and b == OK:
            return WRONG, f"head {h} in round {r} where the base ran"
    head_failed, base_failed = side_failure(head), side_failure(base)
    if head_failed is not None:
        return UNMEASURED, f"both sides failed (head {head_failed}, base {base_failed})"
    if base_failed is not None:
        return UNMEASURED, f"base {base_failed}: nothing to compare the head with"
    if est is None:
        return UNMEASURED, "no round gave two valid times"
    return judge_ratio(est, threshold), ""


def log_half_range(values: Sequence[float]) -> float:
    """Relative noise of repeated measurements: (log max - log min) / 2 of the valid ones (0
    with fewer than two)."""
    x = [v for v in values if _positive(v)]
    if len(x) < 2:
        return 0.0
    return (math.log(max(x)) - math.log(min(x))) / 2


def gate_threshold(floor: float, k: float, noise_base: float, noise_now: float) -> float:
    """max(floor, k * hypot(noise_base, noise_now)): the larger of the relative floor and k times
    the noise of the ratio of two noisy measurements."""
    check_threshold(floor, "floor")
    check_threshold(k, "k")
    return max(floor, k * math.hypot(noise_base, noise_now))


def geometric_mean(values: Sequence[float]) -> float | None:
    """Geometric mean of the valid (finite, > 0) values; None when there is none."""
    x = [v for v in values if _positive(v)]
    if not x:
        return None
    return math.exp(sum(math.log(v) for v in x) / len(x))


def median(values: Sequence[float]) -> float | None:
    """Median of the valid values; None when there is none."""
    x = [v for v in values if _positive(v)]
    return float(np.median(np.asarray(x))) if x else None
