"""The gate's statistics on synthetic noisy samples: the bootstrap interval of the median ratio,
verdicts (with the edge cases: one round, zero variance, all rounds failed, a base that fails
where the head passes, NaN times), noise and thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stbench.regress import stats

NOISE = 0.01  # 1% multiplicative noise per round, a quiet GPU


def noisy_ratios(true_ratio: float, n: int, noise: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(true_ratio * np.exp(rng.normal(0, noise, n)))


def test_interval_covers_the_true_ratio_about_as_often_as_it_claims():
    """95% intervals of the median ratio over 15 rounds cover the true ratio in most of 200
    synthetic runs (percentile bootstrap of a median: a little under nominal is expected)."""
    covered = 0
    for seed in range(200):
        x = noisy_ratios(1.0, 15, NOISE, seed)
        lo, hi = stats.bootstrap_median_interval(x, 0.95, 1000, seed)
        covered += lo <= 1.0 <= hi
    assert 0.85 * 200 <= covered <= 200


def test_interval_is_seeded_and_ordered():
    x = noisy_ratios(1.1, 7, 0.05, 3)
    a = stats.bootstrap_median_interval(x, seed=5)
    assert a == stats.bootstrap_median_interval(x, seed=5)
    assert a[0] <= float(np.median(x)) <= a[1]
    assert min(x) <= a[0] and a[1] <= max(x)


def test_a_a_rounds_are_judged_same():
    for seed in range(50):
        est = stats.estimate(noisy_ratios(1.0, 5, NOISE, seed), seed=seed)
        assert stats.judge_ratio(est, 0.03) == stats.SAME


@pytest.mark.parametrize("true_ratio, verdict", [(1.05, stats.SLOWER), (1.0 / 1.05, stats.FASTER),
                                                 (1.02, stats.SAME)])
def test_a_shift_beyond_the_threshold_is_named(true_ratio, verdict):
    for seed in range(20):
        est = stats.estimate(noisy_ratios(true_ratio, 5, 0.005, seed), seed=seed)
        assert stats.judge_ratio(est, 0.03) == verdict


def test_a_shift_within_the_noise_is_not_significant():
    """A median beyond the threshold but an interval reaching below 1 stays 'same'."""
    est = stats.estimate([0.98, 1.06, 1.07, 1.08, 0.97], seed=0)
    assert est.ratio > 1.03 and est.low < 1
    assert stats.judge_ratio(est, 0.03) == stats.SAME


def test_one_round_rests_on_the_threshold_alone():
    est = stats.estimate([1.2])
    assert (est.ratio, est.low, est.high, est.rounds) == (1.2, 1.2, 1.2, 1)
    assert stats.judge_ratio(est, 0.03) == stats.SLOWER
    assert stats.judge_ratio(stats.estimate([1.01]), 0.03) == stats.SAME


def test_zero_variance_gives_a_point_interval():
    est = stats.estimate([1.1] * 6)
    assert est.low == est.high == est.ratio == pytest.approx(1.1)
    assert stats.judge_ratio(est, 0.03) == stats.SLOWER
    assert stats.judge_ratio(stats.estimate([1.0] * 6), 0.03) == stats.SAME


def test_nan_zero_and_missing_times_drop_their_round():
    head = [1.0, float("nan"), 2.0, None, 1.0, 0.0, float("inf")]
    base = [1.0, 1.0, 1.0, 1.0, float("nan"), 1.0, 1.0]
    assert stats.valid_ratios(head, base) == [1.0, 2.0]
    assert stats.estimate(stats.valid_ratios([float("nan")], [1.0])) is None
    with pytest.raises(ValueError, match="pair"):
        stats.valid_ratios([1.0], [])


def test_no_samples_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="no samples"):
        stats.bootstrap_median_interval([])
    with pytest.raises(ValueError, match="confidence"):
        stats.bootstrap_median_interval([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="threshold"):
        stats.judge_ratio(stats.estimate([1.0]), -0.1)
    with pytest.raises(ValueError, match="threshold"):
        stats.check_threshold(float("nan"))


OKS = ["ok"] * 3


def test_verdict_wrong_whenever_the_head_is_incorrect():
    est = stats.estimate([0.5, 0.5, 0.5])  # much faster, but wrong
    v, why = stats.ab_verdict(["ok", "incorrect", "ok"], OKS, est, 0.03)
    assert v == stats.WRONG and "round 1" in why
    v, _ = stats.ab_verdict(["incorrect"] * 3, ["incorrect"] * 3, None, 0.03)
    assert v == stats.WRONG


def test_verdict_wrong_when_the_head_fails_where_the_base_ran():
    v, why = stats.ab_verdict(["ok", "runtime_error", "ok"], OKS, None, 0.03)
    assert v == stats.WRONG and "runtime_error" in why
    v, _ = stats.ab_verdict(["unsupported"] * 3, OKS, None, 0.03)
    assert v == stats.WRONG


def test_base_failing_where_the_head_passes_is_unmeasured_not_failing():
    est = stats.estimate([1.0])
    v, why = stats.ab_verdict(OKS, ["incorrect"] * 3, est, 0.03)
    assert v == stats.UNMEASURED and "base incorrect" in why
    v, _ = stats.ab_verdict(OKS, ["ok", "runtime_error", "ok"], est, 0.03)
    assert v == stats.UNMEASURED
    assert v not in stats.FAILING


def test_all_rounds_failed_on_both_sides_and_refusals():
    v, why = stats.ab_verdict(["runtime_error"] * 3, ["oom"] * 3, None, 0.03)
    assert v == stats.UNMEASURED and "both" in why
    v, _ = stats.ab_verdict(["unsupported"] * 2, ["unsupported"] * 2, None, 0.03)
    assert v == stats.SKIPPED
    assert stats.ab_verdict([], [], None, 0.03)[0] == stats.UNMEASURED


def test_all_rounds_ok_but_no_valid_time_is_unmeasured():
    assert stats.ab_verdict(OKS, OKS, None, 0.03)[0] == stats.UNMEASURED


def test_noise_and_gate_threshold():
    assert stats.log_half_range([1.0]) == 0.0
    assert stats.log_half_range([1.0, 1.0, 1.0]) == 0.0
    assert stats.log_half_range([1.0, math.e ** 0.1, None, float("nan")]) == pytest.approx(0.05)
    assert stats.gate_threshold(0.03, 3, 0.0, 0.0) == 0.03
    assert stats.gate_threshold(0.03, 3, 0.03, 0.04) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="floor"):
        stats.gate_threshold(-1, 3, 0, 0)


def test_gate_ratio_verdicts():
    assert stats.judge_gate_ratio(1.06, 0.05) == stats.SLOWER
    assert stats.judge_gate_ratio(1.04, 0.05) == stats.SAME
    assert stats.judge_gate_ratio(0.9, 0.05) == stats.FASTER
    assert stats.judge_gate_ratio(float("nan"), 0.05) == stats.UNMEASURED


def test_false_alarm_rate_of_the_gate_on_synthetic_a_a_runs():
    """Ten A/A runs of 40 entries, 3 passes each side at 1% noise: no alarm at the defaults."""
    rng = np.random.default_rng(0)
    alarms = 0
    for _ in range(10 * 40):
        base = np.exp(rng.normal(0, NOISE, 3))
        now = np.exp(rng.normal(0, NOISE, 3))
        thr = stats.gate_threshold(0.03, 3.0, stats.log_half_range(base),
                                   stats.log_half_range(now))
        alarms += stats.judge_gate_ratio(np.median(now) / np.median(base), thr) == stats.SLOWER
    assert alarms == 0
    # and a 5% slowdown at the same noise is caught in most entries
    caught = 0
    for _ in range(100):
        base = np.exp(rng.normal(0, NOISE, 3))
        now = 1.05 * np.exp(rng.normal(0, NOISE, 3))
        thr = stats.gate_threshold(0.03, 3.0, stats.log_half_range(base),
                                   stats.log_half_range(now))
        caught += stats.judge_gate_ratio(np.median(now) / np.median(base), thr) == stats.SLOWER
    assert caught >= 50


def test_geometric_mean_and_median_skip_invalid_values():
    assert stats.geometric_mean([1.0, 4.0, None, float("nan")]) == pytest.approx(2.0)
    assert stats.geometric_mean([None]) is None
    assert stats.median([3.0, 1.0, 2.0, float("nan")]) == 2.0
    assert stats.median([]) is None
