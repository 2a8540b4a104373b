"""The autotuner: strategies on a known landscape, a fake backend end to end, the cache."""

import itertools
import json
import math
import sys
import time
import types
import warnings

import pytest
import torch

from stbench import backends, problems
from stbench.tuning import autotune, cache, exhaustive, local, picks
from stbench.tuning.measure import BenchSettings, Candidate

FAST = BenchSettings(warmup_ms=1, rep_ms=4, min_reps=2)
FAST_FINAL = BenchSettings(warmup_ms=1, rep_ms=4, min_reps=2, check=False)
DELAY_OFF_32 = 6  # ms the fake backend loses at any block other than 32


# ----------------------------------------------------------------------------- strategies
def _landscape():
    """A separable bowl over (block, A, B) with its minimum at block 32, A=4, B=2; plus one
    invalid point (inf)."""
    cands, score = [], {}
    for block, a, b in itertools.product((16, 32, 64, 128), (1, 2, 4, 8), (1, 2, 3)):
        c = Candidate("fake", {"A": a, "B": b}, block)
        cands.append(c)
        s = (math.log2(block) - 5) ** 2 + (math.log2(a) - 2) ** 2 + (b - 2) ** 2 + 1
        score[(block, a, b)] = math.inf if (block, a, b) == (16, 1, 1) else s
    return cands, score


@pytest.mark.parametrize("strategy", [exhaustive.search, local.search])
def test_strategies_find_the_known_best(strategy):
    cands, score = _landscape()
    calls = []

    def evaluate(c):
        calls.append(c)
        return score[(c.block, c.config["A"], c.config["B"])]

    best = strategy(cands, evaluate, seed=0)
    assert (best.block, best.config) == (32, {"A": 4, "B": 2})
    if strategy is local.search:
        assert len(set(map(repr, calls))) < len(cands)  # cheaper than exhaustive


@pytest.mark.parametrize("strategy", [exhaustive.search, local.search])
@pytest.mark.parametrize("budget", [1, 5, 9])
def test_a_budget_caps_the_evaluations_and_keeps_the_best_measured(strategy, budget):
    cands, score = _landscape()
    calls = []

    def evaluate(c):
        calls.append(c)
        return score[(c.block, c.config["A"], c.config["B"])]

    best = strategy(cands, evaluate, seed=0, budget=budget)
    assert len(calls) == budget
    measured = [score[(c.block, c.config["A"], c.config["B"])] for c in calls]
    if math.isinf(min(measured)):  # the first candidate is the invalid one
        assert best is None
    else:
        assert score[(best.block, best.config["A"], best.config["B"])] == min(measured)


def test_strategies_return_none_when_nothing_is_valid():
    cands, _ = _landscape()
    for strategy in (exhaustive.search, local.search):
        assert strategy(cands, lambda c: math.inf) is None


def test_local_search_crosses_kernel_variants():
    """A string-valued key is a variant: its first candidate of each value is a start, so the
    best variant is found even when it differs from the default in more than one knob."""
    cands = [Candidate("fake", {"loads": "gather", "W": w, "S": s}, 64)
             for w, s in itertools.product((4, 8), (2, 3))]
    cands += [Candidate("fake", {"loads": "tma", "W": 4, "S": 2}, 64)]  # two knobs from [0]
    starts = local.start_indices(cands, random_starts=0)
    assert starts == [0, len(cands) - 1]
    best = local.search(cands, lambda c: 1.0 if c.config["loads"] == "tma" else 2.0 + c.config["W"],
                        random_starts=0)
    assert best.config["loads"] == "tma"


# ----------------------------------------------------------------------------- a fake backend
def _masked_attention(q, k, v, layout, scale):
    """Plain masked softmax attention (tiny shapes only)."""
    mask = layout.token_mask().to(q.device)  # [H, N, N]
    s = (q @ k.transpose(-1, -2)).float() * scale
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    return (p.to(q.dtype) @ v)


def _fake_module():
    """Correct attention with a sleep of the config's delay (+ DELAY_OFF_32 ms at any block but
    32), one config wrong, one crashing. Outputs are memoised so the sleep dominates."""
    mod = types.ModuleType("stbench_fake_backend")
    memo = {}

    def check_available(device, dtype):
        return None

    def config_space(layout, head_dim, dtype):
        return [{"delay_ms": 20}, {"delay_ms": 1, "wrong": True}, {"delay_ms": 10},
                {"delay_ms": 1, "crash": True}, {"delay_ms": 30}]

    def attention(q, k, v, layout, scale, config=None):
        config = config or {"delay_ms": 20}
        if config.get("crash"):
            raise RuntimeError("illegal memory access (simulated)")
        # block 32 is faster than any other block: the known best is (32, delay 10)
        time.sleep((config["delay_ms"] + (0 if layout.block == 32 else DELAY_OFF_32)) / 1e3)
        key = (layout.content_hash, q.data_ptr(), q._version)
        if key not in memo:
            memo[key] = _masked_attention(q, k, v, layout, scale)
        out = memo[key]
        return out * 0 if config.get("wrong") else out

    mod.check_available, mod.config_space, mod.attention = check_available, config_space, attention
    return mod


@pytest.fixture
def fake_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "stbench_fake_backend", _fake_module())
    monkeypatch.setitem(backends.REGISTRY, "fake", backends.BackendInfo(
        "fake", "stbench_fake_backend", ("torch",), "", needs_gpu=False, backward=True))
    return "fake"


def _tiny_problem(mode="fwd"):
    spec = problems.LayoutSpec("causal", "causal", block=64)
    return problems.Problem(spec, 128, 1, heads=2, head_dim=16, dtype="float32", mode=mode)


@pytest.mark.parametrize("strategy", ["exhaustive", "local"])
def test_tune_fake_backend(fake_backend, tmp_path, strategy):
    prob = _tiny_problem()
    rows_path = tmp_path / "tune.jsonl"
    res = autotune.tune(prob, [fake_backend], device="cpu", strategy=strategy, settings=FAST,
                        final=FAST_FINAL, cache_path=tmp_path / "tune.json", rows_path=rows_path)
    assert (res.best.backend, res.best.block, res.best.config) == ("fake", 32, {"delay_ms": 10})
    statuses = {(r.block, json.dumps(r.config, sort_keys=True)): r.status for r in res.rows}
    if strategy == "exhaustive":
        assert statuses[(64, '{"delay_ms": 1, "wrong": true}')] == "incorrect"
        assert statuses[(64, '{"crash": true, "delay_ms": 1}')] == "runtime_error"
        assert res.evaluated == res.candidates == 4 * 5  # blocks 16, 32, 64, 128
    bad = [r for r in res.rows if r.status != "ok"]
    assert all(r.error for r in bad)  # every rejected candidate says why
    assert rows_path.read_text().count("\n") == len(res.rows)

    # backend='auto' finds the pick for the layout at its block (64: the best at block 64)
    lay32 = prob.build_layout().reblock(32)
    q = torch.zeros(1, 2, 128, 16)
    pick = picks.cached_pick(lay32, q, path=tmp_path / "tune.json")
    assert pick == ("fake", {"delay_ms": 10})
    t = time.perf_counter()
    for _ in range(10):
        picks.cached_pick(lay32, q, path=tmp_path / "tune.json")
    assert (time.perf_counter() - t) / 10 < 0.05  # a cached lookup: < 50 ms


def test_auto_runs_the_tuned_block(fake_backend, tmp_path, monkeypatch):
    """backend='auto' runs the overall pick, re-blocking the layout to the tuned block (32),
    and the answer is still the layout's exact attention."""
    import stbench

    monkeypatch.setenv("STBENCH_CACHE_DIR", str(tmp_path))
    prob = _tiny_problem()
    autotune.tune(prob, [fake_backend], device="cpu", strategy="exhaustive", settings=FAST,
                  final=FAST_FINAL, cache_path=tmp_path / cache.FILE_NAME)
    lay64 = prob.build_layout()
    assert lay64.block == 64
    seen = []  # the spy computes without the fake's memo (keyed by data_ptr, reused here)
    monkeypatch.setattr(sys.modules["stbench_fake_backend"], "attention",
                        lambda q, k, v, layout, scale, config=None:
                        seen.append((layout.block, config))
                        or _masked_attention(q, k, v, layout, scale))
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 128, 16, generator=g) for _ in range(3))
    out = stbench.attention(q, k, v, lay64, backend="auto")
    assert seen == [(32, {"delay_ms": 10})]
    assert torch.allclose(out, _masked_attention(q, k, v, lay64, 16**-0.5), atol=1e-6)


def test_time_under_budget_needs_a_budget():
    with pytest.raises(ValueError, match="memory_budget"):
        autotune.tune(_tiny_problem(), ["dense"], device="cpu", objective="time_under_budget")


# ----------------------------------------------------------------------------- the cache
def _entry(**kw):
    e = {"env": cache.env_fields(), "layout_hash": "abc", "batch": 4, "head_dim": 64,
         "dtype": "bfloat16", "mode": "fwd", "objective": "time", "backend": "dense",
         "config": {}, "block": 64, "same_block": {"backend": "dense", "config": {}}}
    e.update(kw)
    return e


@pytest.mark.parametrize("content", ["{not json", '{"format": "other"}', "[1, 2]",
                                     '{"format": "stbench-tune-cache", "version": 0, '
                                     '"entries": {}}'])
def test_corrupt_or_stale_cache_is_ignored_then_moved_to_a_backup(tmp_path, content):
    path = tmp_path / "tune.json"
    path.write_text(content)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert cache.load(path)["entries"] == {}
        assert cache.lookup("abc", 4, 64, "bfloat16", "fwd", path=path) is None
    assert any("ignoring it" in str(x.message) for x in w)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cache.save_entry(_entry(), path)
    data = json.loads(path.read_text())
    assert data["format"] == "stbench-tune-cache" and len(data["entries"]) == 1
    (backup,) = [p for p in tmp_path.iterdir() if p.name != "tune.json"]
    assert backup.read_text() == content  # nothing lost, and the warning says where it went
    assert any(str(backup) in str(x.message) for x in w)


def test_lookup_matches_env_and_nearest_batch(tmp_path):
    path = tmp_path / "tune.json"
    cache.save_entry(_entry(batch=4, backend="a"), path)
    cache.save_entry(_entry(batch=64, backend="b"), path)
    cache.save_entry(_entry(batch=5, backend="c", env=["another GPU"]), path)
    assert cache.lookup("abc", 4, 64, "bfloat16", "fwd", path=path)["backend"] == "a"
    assert cache.lookup("abc", 32, 64, "bfloat16", "fwd", path=path)["backend"] == "b"
    assert cache.lookup("abc", 4, 64, "bfloat16", "fwd+bwd", path=path) is None
    assert cache.lookup("zzz", 4, 64, "bfloat16", "fwd", path=path) is None


def test_cached_pick_survives_a_broken_cache(tmp_path):
    path = tmp_path / "tune.json"
    path.write_text("\x00\x01garbage")
    lay = _tiny_problem().build_layout()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert picks.cached_pick(lay, torch.zeros(1, 2, 128, 16), path=path) is None


def test_item5_evaluation_record(fake_backend, tmp_path, monkeypatch):
    from stbench.tuning import evaluate

    monkeypatch.setattr(autotune, "TUNE_SETTINGS", FAST)
    monkeypatch.setattr(autotune, "FINAL_SETTINGS", FAST_FINAL)
    recs = evaluate.evaluate([_tiny_problem()], [fake_backend], device="cpu", out_dir=tmp_path,
                             cache_path=tmp_path / "tune.json")
    (rec,) = evaluate.read(tmp_path / "tune_eval.jsonl")
    assert rec == json.loads(json.dumps(recs[0]))
    assert rec["status"] == "ok" and rec["same_pick"] and rec["lookup_hit"]
    assert rec["pick"]["block"] == rec["best"]["block"] == 32
    assert rec["tune_evaluated"] < rec["exhaustive_evaluated"] == rec["candidates"] == 20
    assert 0.5 < rec["ratio"] < 2 and rec["lookup_warm_ms"] < 50


def test_with_forward_keeps_the_forward_pick_and_varies_only_the_backward():
    cands = [Candidate("fake", {"BLOCK_M": bm, "BWD_BLOCK_M": bb, "bwd_warps": w}, block)
             for block in (32, 64) for bm in (64, 128) for bb in (32, 64) for w in (4, 8)]
    got = autotune.with_forward(cands, (64, {"BLOCK_M": 128, "BWD_BLOCK_M": 32, "bwd_warps": 4}))
    assert {c.block for c in got} == {64}
    assert {c.config["BLOCK_M"] for c in got} == {128}
    assert sorted((c.config["BWD_BLOCK_M"], c.config["bwd_warps"]) for c in got) == [
        (32, 4), (32, 8), (64, 4), (64, 8)]
    # no candidate at the pick's block: the space is left as it was
    assert autotune.with_forward(cands, (16, {"BLOCK_M": 64})) == cands


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_triton_candidates_pass_the_dense_gate_under_the_interpreter(mode, device):
    """The tuner's Triton candidates on a tiny problem: each is checked against dense before
    it is timed, and a 'fwd+bwd' tune given the 'fwd' pick stays at that pick's block."""
    pytest.importorskip("triton")
    from stbench.kernels.triton import backend as tb

    prob = problems.Problem(problems.layout_spec("local"), 256, 1, heads=2, head_dim=32,
                            dtype="bfloat16", mode=mode)
    layout = prob.build_layout()
    forward = None
    if mode == "fwd+bwd":
        pick = tb.default_config(layout.reblock(64), 32, torch.bfloat16).as_dict()
        forward = {"triton": (64, dict(pick))}
    res = autotune.tune(prob, ["triton"], device=device, strategy="local", settings=FAST,
                        final=FAST_FINAL, save=False, max_evals=2, forward=forward)
    tuned = [r for r in res.rows if r.check != "skipped"]
    assert tuned and all(r.status == "ok" and r.err <= r.tol for r in tuned), \
        [(r.status, r.error) for r in tuned]
    if mode == "fwd+bwd":  # the backward search stays at the forward pick's block
        assert {r.block for r in res.rows} == {64}
