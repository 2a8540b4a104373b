"""stbench ab's loop on the CPU with stand-in kernel trees over the dense reference, timed by a
virtual clock (1% noise per call): an A/A comparison, a 5% slower head, a wrong head, a
failing base, a head that crashes, and the interleaving order; one run on the real timer."""

from __future__ import annotations

import pytest
from regress_stubs import CPU, FAST_BENCH, StubBackend, StubSide, tiny_entries

from stbench.regress import ab, stats

ROUNDS = 5
SLOWDOWN = 1.05  # a planted 5% slowdown, above the 3% threshold


def settings(**kw):
    return ab.ABSettings(rounds=kw.pop("rounds", ROUNDS),
                         threshold=kw.pop("threshold", ab.DEFAULT_THRESHOLD), bench=FAST_BENCH,
                         **kw)


def run(head, base, modes=("fwd",), **kw):
    return ab.run_ab(tiny_entries(modes=modes), StubSide("head", triton=head),
                     StubSide("base", triton=base), CPU, settings(**kw))


def test_a_a_is_same_and_checked_both_ways(clock):
    res = run(StubBackend(clock=clock), StubBackend(clock=clock), modes=("fwd", "fwd+bwd"))
    assert [r.verdict for r in res] == [stats.SAME, stats.SAME]
    for r in res:
        assert r.head_status == r.base_status == ("ok",) * ROUNDS
        assert r.rounds == ROUNDS and r.low <= r.ratio <= r.high
        assert r.head_err is not None and r.head_err <= r.head_tol
    assert ab.exit_code(res) == 0


def test_a_slower_head_is_named_and_fails(clock):
    res = run(StubBackend(cost_ms=SLOWDOWN, clock=clock), StubBackend(clock=clock),
              modes=("fwd", "fwd+bwd"))
    assert all(r.verdict == stats.SLOWER for r in res), [(r.ratio, r.low) for r in res]
    assert all(r.ratio == pytest.approx(SLOWDOWN, rel=0.03) for r in res)
    assert ab.exit_code(res) == 1


def test_a_faster_head_passes(clock):
    res = run(StubBackend(clock=clock), StubBackend(cost_ms=SLOWDOWN, clock=clock))
    assert res[0].verdict == stats.FASTER and ab.exit_code(res) == 0


def test_the_real_timer_runs_on_the_cpu():
    """No virtual clock: the plumbing to timing.bench works (the verdict depends on the CPU)."""
    r = run(StubBackend(), StubBackend(), rounds=2, threshold=10.0)[0]
    assert r.verdict == stats.SAME and r.head_ms > 0 and r.base_ms > 0


def test_a_wrong_head_is_wrong_and_never_timed():
    res = run(StubBackend(fault="wrong"), StubBackend())
    r = res[0]
    assert r.verdict == stats.WRONG and r.head_ms is None and r.ratio is None
    assert "rel_err" in r.reason and r.head_err > r.head_tol
    assert ab.exit_code(res) == 1


def test_a_crashing_head_is_wrong_with_its_message():
    r = run(StubBackend(fault="error"), StubBackend())[0]
    assert r.verdict == stats.WRONG and "crashed" in r.reason


def test_a_base_that_fails_where_the_head_passes_is_unmeasured():
    res = run(StubBackend(), StubBackend(fault="wrong"))
    assert res[0].verdict == stats.UNMEASURED and "base incorrect" in res[0].reason
    assert ab.exit_code(res) == 0


def test_a_backend_missing_in_the_base_is_unmeasured_and_missing_in_both_skipped():
    entries = tiny_entries()
    res = ab.run_ab(entries, StubSide("head", triton=StubBackend()), StubSide("base"), CPU,
                    settings())
    assert res[0].verdict == stats.UNMEASURED and "no backend" in res[0].reason
    res = ab.run_ab(entries, StubSide("head"), StubSide("base"), CPU, settings())
    assert res[0].verdict == stats.SKIPPED


def test_one_round_runs_and_rounds_interleave_head_and_base():
    head, base = StubBackend(), StubBackend()
    order = []

    def track(mod, name):
        inner = mod.attention

        def attention(*a, **k):
            order.append(name)
            return inner(*a, **k)
        mod.attention = attention

    track(head, "h")
    track(base, "b")
    res = run(head, base, rounds=2, threshold=10.0)
    assert res[0].rounds == 2
    # round 0 checks head then base, round 1 base then head
    first_round = order[: len(order) // 2]
    second_round = order[len(order) // 2:]
    assert first_round[0] == "h" and second_round[0] == "b"
    assert ab.run_ab(tiny_entries(), StubSide(triton=StubBackend()),
                     StubSide(triton=StubBackend()), CPU, settings(rounds=1))[0].rounds == 1


def test_settings_are_validated():
    with pytest.raises(ValueError, match="rounds"):
        ab.ABSettings(rounds=0)
    with pytest.raises(ValueError, match="threshold"):
        ab.ABSettings(threshold=-0.1)
    with pytest.raises(ValueError, match="confidence"):
        ab.ABSettings(confidence=0)


def test_result_records_are_json_ready():
    import json

    r = run(StubBackend(), StubBackend(), rounds=1, threshold=10.0)[0]
    d = r.to_dict()
    assert json.loads(json.dumps(d))["head_status"] == ["ok"]
    assert d["backend"] == "triton" and d["layout"] == "causal" and d["block"] == 16
