"""The sweep runner on the CPU: the quick preset end to end, failures as rows, --resume,
--max-minutes, and --isolate surviving a crashing and a hanging worker."""

import json
import sys
import types

import pytest

from stbench import manifest, backends, cli, results
from stbench.sweep import SweepConfig, SweepError, run_sweep


@pytest.fixture
def broken_backend(monkeypatch):
    """A backend that refuses permuted layouts when called, runs out of memory in fwd+bwd and
    fails otherwise."""
    mod = types.ModuleType("stbench_broken_backend")
    mod.check_available = lambda device, dtype: None
    mod.config_space = lambda layout, head_dim, dtype: [{}]

    def attention(q, k, v, layout, scale, config=None):
        if layout.perms is not None:
            raise backends.BackendUnavailable("backend 'broken' cannot run this layout: "
                                              "it permutes tokens")
        if q.requires_grad:
            raise RuntimeError("CUDA out of memory (simulated)")
        raise RuntimeError("an illegal memory access was encountered (simulated)")

    mod.attention = attention
    monkeypatch.setitem(sys.modules, "stbench_broken_backend", mod)
    monkeypatch.setitem(backends.REGISTRY, "broken", backends.BackendInfo(
        "broken", "stbench_broken_backend", ("torch",), "", needs_gpu=False, backward=True))
    return "broken"


def _rows(out):
    return results.read_rows(out / "results.jsonl")


def test_quick_preset_end_to_end_with_failures_and_resume(tmp_path, broken_backend):
    out = tmp_path / "quick"
    argv = ["sweep", "--preset", "quick", "--out", str(out), "--ns", "256",
            "--layouts", "causal,strided", "--backends", "dense,sdpa,cupy,broken",
            "--no-progress"]
    assert cli.main(argv) == 0
    rows = _rows(out)
    assert len(rows) == 2 * 2 * 4  # layouts x modes x backends
    by = {(r.layout, r.mode, r.backend): r for r in rows}
    dense = [r for r in rows if r.backend == "dense"]
    assert all(r.status == "ok" and r.check == "skipped: the reference itself" for r in dense)
    assert all(r.median_ms > 0 and r.p20_ms <= r.median_ms <= r.p80_ms for r in dense)
    assert all(r.tflops > 0 and r.prepare_ms > 0 for r in dense)
    for mode in ("fwd", "fwd+bwd"):
        sdpa = by[("causal", mode, "sdpa")]
        assert sdpa.status == "ok" and sdpa.check == "full" and sdpa.err <= sdpa.tol
    assert by[("strided", "fwd", "sdpa")].status == "unsupported"
    cupy_why = by[("causal", "fwd", "cupy")].error  # no GPU here, or no cupy at all (CI)
    assert by[("causal", "fwd", "cupy")].status == "unsupported"
    assert "GPU" in cupy_why or "CUDA" in cupy_why or "not installed" in cupy_why
    assert by[("causal", "fwd", "broken")].status == "runtime_error"
    assert "illegal memory access" in by[("causal", "fwd", "broken")].error
    assert by[("causal", "fwd+bwd", "broken")].status == "oom"
    refused = by[("strided", "fwd", "broken")]  # refused at its first call: the reason alone
    assert refused.status == "unsupported"
    assert refused.error == "backend 'broken' cannot run this layout: it permutes tokens"
    assert all(r.env.get("torch") for r in rows)
    m = manifest.read(out)  # the run says what made it
    assert m.command.startswith("stbench sweep --preset quick") and m.rows == len(rows)
    assert m.description == "stbench sweep quick" and m.duration_s >= 0

    # a second run refuses to mix sweeps, --resume measures nothing new
    assert cli.main(argv) == 2
    assert cli.main(argv + ["--resume"]) == 0
    assert len(_rows(out)) == len(rows)

    # the report of it
    assert cli.main(["report", str(out)]) == 0
    assert "## Median time (ms), forward" in (out / "REPORT.md").read_text()


def test_max_minutes_stops_cleanly_and_resume_finishes(tmp_path):
    cfg = SweepConfig.preset("quick").with_overrides(ns=[256], layouts=["causal", "local"],
                                                     backends=["sdpa"], modes=["fwd"])
    counts = run_sweep(cfg, tmp_path, max_minutes=1e-9, progress=False)
    assert counts["stopped"] and not (tmp_path / "results.jsonl").exists()
    counts = run_sweep(cfg, tmp_path, resume=True, progress=False)
    assert not counts["stopped"] and counts["skipped"] == 0
    assert [r.status for r in _rows(tmp_path)] == ["ok", "unsupported"]
    counts = run_sweep(cfg, tmp_path, resume=True, progress=False)
    assert counts["skipped"] == 2 and len(_rows(tmp_path)) == 2


def test_layout_that_cannot_exist_is_an_unsupported_row(tmp_path):
    cfg = SweepConfig.from_dict({
        "name": "t", "ns": [256], "layouts": ["strided"], "backends": ["sdpa"],
        "modes": ["fwd"], "dtypes": ["float32"], "heads": 2, "head_dim": 16, "tokens": 256,
        "layout": {"strided": {"builder": "strided", "block": 32, "stride": 128}},
    })
    run_sweep(cfg, tmp_path, progress=False)
    (row,) = _rows(tmp_path)
    assert row.status == "unsupported" and "layout strided" in row.error and row.block == 32


@pytest.mark.parametrize("bad, match", [
    ({"ns": []}, "'ns' must be a non-empty list"),
    ({"colour": 1}, "unknown keys \\['colour'\\]"),
    ({"layouts": ["nope"]}, "layout 'nope' is not a known spec"),
    ({"backends": ["nope"]}, "backend='nope' is not registered"),
])
def test_bad_configs_are_named(bad, match):
    d = {"name": "t", "ns": [256], "layouts": ["causal"], "backends": ["dense"], **bad}
    with pytest.raises(ValueError, match=match):
        SweepConfig.from_dict(d)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(SweepError, match="quick"):
        SweepConfig.preset("nope")


def _write_config(path, **kw):
    d = {"name": "iso", "ns": [256], "layouts": ["causal"], "backends": ["sdpa", "dense"],
         "modes": ["fwd"], "dtypes": ["float32"], "heads": 2, "head_dim": 16, "tokens": 256,
         "warmup_ms": 1, "rep_ms": 2, "min_reps": 2, "flush_l2": False, "block": 32, **kw}
    lines = [f"{k} = {json.dumps(v)}" for k, v in d.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("fault, timeout, layouts, status, text", [
    ("crash:sdpa", 120, ["causal", "local"], "runtime_error", "worker died (exit code 86)"),
    ("hang:sdpa", 10, ["causal"], "timeout", "killed after 10 s"),  # dense must finish in 10 s
])
def test_isolate_survives_a_crashing_or_hanging_row(tmp_path, monkeypatch, fault, timeout,
                                                    layouts, status, text):
    monkeypatch.setenv("STBENCH_SWEEP_FAULT", fault)
    cfg = SweepConfig.from_toml(_write_config(tmp_path / "iso.toml", row_timeout_s=timeout,
                                              layouts=layouts))
    counts = run_sweep(cfg, tmp_path / "out", isolate=True, progress=False)
    rows = _rows(tmp_path / "out")
    assert [(r.layout, r.backend) for r in rows] == [(lay, b) for lay in layouts
                                                     for b in ("sdpa", "dense")]
    for r in rows:
        if r.backend == "sdpa":
            assert r.status == status and text in r.error
        else:
            assert r.status == "ok"  # a fresh worker went on with the rest
    assert counts[status] == len(layouts) and counts["ok"] == len(layouts)
    assert not list((tmp_path / "out" / ".work").glob("*.json"))  # task files cleaned up
    # --resume after an isolated sweep measures nothing new
    counts = run_sweep(cfg, tmp_path / "out", isolate=True, resume=True, progress=False)
    assert counts["skipped"] == 2 * len(layouts) and len(_rows(tmp_path / "out")) == len(rows)


def test_tuned_sweep_measures_the_pick_and_keeps_its_files_under_out(tmp_path, monkeypatch):
    monkeypatch.setenv("STBENCH_CACHE_DIR", str(tmp_path / "user-cache"))
    cfg = SweepConfig.from_toml(_write_config(tmp_path / "t.toml", backends=["sdpa"],
                                              tune_rep_ms=2))
    run_sweep(cfg, tmp_path / "out", tune=True, progress=False)
    (row,) = _rows(tmp_path / "out")
    assert row.status == "ok" and row.tuned and row.block in (16, 32, 64, 128)
    cands = results.read_rows(tmp_path / "out" / "tune.jsonl")
    assert {r.block for r in cands if r.status == "ok"} == {16, 32, 64, 128}  # re-blocked
    assert (tmp_path / "out" / "tune.json").exists()
    assert not (tmp_path / "user-cache").exists()  # a sweep writes only under --out


@pytest.mark.parametrize("exc, status", [
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
    (type("CompilationError", (Exception,), {})("at 12:4: bad"), "compile_error"),
    (type("OutOfResources", (Exception,), {})("shared memory"), "compile_error"),
    (backends.BackendUnavailable("no GPU"), "unsupported"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), "runtime_error"),
])
def test_exceptions_map_to_statuses(exc, status):
    from stbench.tuning.measure import classify_exception

    assert classify_exception(exc) == status


def test_picks_re_measures_an_earlier_sweeps_configs(tmp_path, monkeypatch):
    monkeypatch.setenv("STBENCH_CACHE_DIR", str(tmp_path / "user-cache"))
    cfg = SweepConfig.from_toml(_write_config(tmp_path / "p.toml", backends=["sdpa", "dense"],
                                              tune_rep_ms=2, tune_backends=["sdpa"]))
    run_sweep(cfg, tmp_path / "first", tune=True, progress=False)
    first = {r.backend: r for r in _rows(tmp_path / "first")}
    assert first["sdpa"].tuned
    run_sweep(cfg, tmp_path / "again", progress=False,
              picks_path=tmp_path / "first" / "results.jsonl")
    again = {r.backend: r for r in _rows(tmp_path / "again")}
    for name in ("sdpa", "dense"):
        assert again[name].status == "ok" and not again[name].tuned
        assert (again[name].block, again[name].config) == (first[name].block,
                                                           first[name].config)
    assert not (tmp_path / "again" / "tune.jsonl").exists()  # nothing tuned
    with pytest.raises(SweepError, match="no such results file"):
        run_sweep(cfg, tmp_path / "x", picks_path=tmp_path / "missing.jsonl", progress=False)


def test_hopper_preset_puts_our_hopper_kernels_beside_every_peer_at_block_128():
    """The hopper grid: causal and fixed at N = 4096..65536, gluon and triton beside the
    FlashAttention-4 peers and flex, every layout built at block 128 (gluon's only block)."""
    from stbench.sweep.config import plan_groups, preset_names

    assert "hopper" in preset_names()
    cfg = SweepConfig.preset("hopper")
    assert set(cfg.backends) == {"gluon", "triton", "fa4", "flex_flash", "flex"}
    groups = plan_groups(cfg)
    assert len(groups) * len(groups[0].items) == 100
    for g in groups:
        layout = cfg.spec(g.layout).build(g.n, cfg.heads)
        assert layout.block == 128 and cfg.batch_for(g.n) * g.n == 65536
