"""stbench regress's measurement and verdicts on the CPU: stand-in kernels over the dense
reference on a virtual clock (1% noise), reference kernels that drift with the machine, the
baseline written and read back, and the command's flow (update, runs, JSON, Markdown)."""

from __future__ import annotations

import json
import math

import pytest
from regress_stubs import CPU, FAST_BENCH, StubBackend, StubSide, tiny_entries
from rich.console import Console

from stbench.commands.regress import regress
from stbench.regress import baseline, calibrate, gate, stats

SETTINGS = gate.GateSettings(passes=3, bench=FAST_BENCH)
MODES = ("fwd", "fwd+bwd")
TINY = calibrate.default_sizes("cpu")


def measure(module, **kw):
    return gate.measure_run(tiny_entries(modes=MODES), StubSide(triton=module), CPU, SETTINGS,
                            TINY, **kw)


def entries_of(run):
    return {m.key: m.to_dict() for m in run.entries}


def test_a_run_checks_times_and_normalises(references):
    run = measure(StubBackend(clock=references))
    assert [m.status for m in run.entries] == ["ok", "ok"]
    for m in run.entries:
        assert len(m.times_ms) == SETTINGS.passes and all(t > 0 for t in m.times_ms)
        # unit = geomean(0.2, 0.1) ms of the references; the stub costs 1 ms a call
        assert m.value == pytest.approx(1.0 / (0.2 * 0.1) ** 0.5, rel=0.05)
        assert 0 <= m.noise < 0.05 and m.err <= m.tol
    assert set(run.references) == {"matmul", "copy"}


def test_a_a_against_the_baseline_is_same_even_when_the_machine_drifts(references):
    base = measure(StubBackend(clock=references))
    references.slowness = 1.10  # the whole machine 10% slower today
    now = measure(StubBackend(clock=references), seed_offset=1)
    assert gate.drift(now, base.references) == pytest.approx(1.10, rel=0.03)
    results = gate.compare(now, entries_of(base), base.references, SETTINGS)
    assert [r.verdict for r in results] == [stats.SAME, stats.SAME]
    assert all(abs(r.ratio - 1) < SETTINGS.floor for r in results)


def test_a_slower_kernel_is_caught_through_drift(references):
    base = measure(StubBackend(clock=references))
    references.slowness = 0.95  # a faster machine must not hide it
    now = measure(StubBackend(cost_ms=1.06, clock=references))
    results = gate.compare(now, entries_of(base), base.references, SETTINGS)
    assert [r.verdict for r in results] == [stats.SLOWER, stats.SLOWER]
    assert results[0].ratio == pytest.approx(1.06, rel=0.02)


def test_a_wrong_kernel_is_wrong_and_cannot_be_a_baseline(references):
    base = measure(StubBackend(clock=references))
    now = measure(StubBackend(fault="wrong", clock=references))
    results = gate.compare(now, entries_of(base), base.references, SETTINGS)
    assert [r.verdict for r in results] == [stats.WRONG] * 2
    assert "wrong answer" in gate.baseline_refusal(now)
    assert gate.baseline_refusal(base) is None


def test_failing_where_the_baseline_ran_is_wrong_and_new_entries_unmeasured(references):
    base = measure(StubBackend(clock=references))
    crashed = measure(StubBackend(fault="error", clock=references))
    r = gate.compare(crashed, entries_of(base), base.references, SETTINGS)[0]
    assert r.verdict == stats.WRONG and "crashed" in r.reason
    now = measure(StubBackend(clock=references))
    new = gate.compare(now, {}, now.references, SETTINGS)
    assert {r.verdict for r in new} == {stats.UNMEASURED}
    refused = gate.measure_run(tiny_entries(), StubSide(), CPU, SETTINGS, TINY)
    assert gate.compare(refused, {}, refused.references, SETTINGS)[0].verdict == stats.SKIPPED


def test_the_threshold_grows_with_the_noise():
    """Now: 1.08 x the baseline with a 3% half range (log); the baseline without spread."""
    times = (1.08 * math.exp(-0.03), 1.08, 1.08 * math.exp(0.03))
    m = gate.Measured("k", "triton", "causal", 16, 64, 1, 2, 16, "float32", "fwd", "ok",
                      times_ms=times)
    base = {"status": "ok", "times_ms": [1.0, 1.0, 1.0], "median_ms": 1.0}
    units = [1.0] * 3
    r = gate.judge(m, base, SETTINGS, units, units)
    assert r.threshold == pytest.approx(0.09) and r.verdict == stats.SAME
    assert r.ratio == pytest.approx(1.08)
    assert gate.judge(m, base, gate.GateSettings(k=1.0), units, units).verdict == stats.SLOWER
    r = gate.judge(m, base, SETTINGS, [], [])
    assert r.verdict == stats.UNMEASURED and "reference" in r.reason


def test_a_reference_missing_on_one_side_drops_out_of_both(references):
    base = measure(StubBackend(clock=references))
    now = measure(StubBackend(clock=references))
    lost = dict(now.references, copy={"median_ms": None, "times_ms": [None] * 3})
    assert gate.common_references(lost, base.references) == ["matmul"]
    run = gate.RunMeasurement(now.entries, lost)
    assert {r.verdict for r in gate.compare(run, entries_of(base), base.references,
                                            SETTINGS)} == {stats.SAME}


def test_settings_are_validated():
    with pytest.raises(ValueError, match="passes"):
        gate.GateSettings(passes=0)
    with pytest.raises(ValueError, match="floor"):
        gate.GateSettings(floor=-1)


def test_regress_flow_update_then_judge(tmp_path, references):
    console = Console(width=200, file=open(tmp_path / "console.txt", "w"))
    path = tmp_path / "baselines" / "cpu.jsonl"
    entries = tiny_entries(modes=MODES)
    good = StubSide(triton=StubBackend(clock=references))
    kw = dict(console=console, sizes=TINY, argv=["regress"])
    assert regress(entries, good, CPU, SETTINGS, path, update=True, runs=1, **kw) == 0
    b = baseline.read(path)
    assert len(b.entries) == 2 and b.manifest["command"] == "stbench regress"
    assert b.settings["passes"] == SETTINGS.passes and "matmul" in b.references
    out_json, out_md = tmp_path / "gate.json", tmp_path / "gate.md"
    code = regress(entries, good, CPU, SETTINGS, path, update=False, runs=3,
                   json_path=out_json, markdown_path=out_md, **kw)
    assert code == 0
    doc = json.loads(out_json.read_text())
    assert doc["failed_runs"] == 0 and len(doc["runs"]) == 3
    assert {r["verdict"] for run in doc["runs"] for r in run["results"]} == {stats.SAME}
    assert "3 run(s), 0 with a failing verdict" in out_md.read_text()
    slow = StubSide(triton=StubBackend(cost_ms=1.2, clock=references))
    assert regress(entries, slow, CPU, SETTINGS, path, update=False, runs=1,
                   markdown_path=out_md, **kw) == 1
    assert "SLOWER" in out_md.read_text()
    wrong = StubSide(triton=StubBackend(fault="wrong", clock=references))
    assert regress(entries, wrong, CPU, SETTINGS, path, update=True, runs=1, **kw) == 1
    assert baseline.read(path).entries == b.entries  # the baseline was not replaced


def test_regress_refuses_another_gpus_baseline(tmp_path, references):
    path = tmp_path / "b.jsonl"
    baseline.write(path, dict(env={"gpu": "NVIDIA H100"}, manifest={}, settings={},
                              references={}), [])
    with pytest.raises(baseline.BaselineError, match="H100"):
        regress(tiny_entries(), StubSide(), CPU, SETTINGS, path, update=False, runs=1,
                console=Console(file=open(tmp_path / "c.txt", "w")), sizes=TINY)
