"""What ``stbench.attention`` runs without a config: cached picks checked before use (a bad one
is skipped with one warning, never raised), compiled backends before interpreted ones, picks
per mode (forward only / forward+backward), shipped picks when the cache has nothing, and the
lookup's cost."""

import json
import sys
import time
import types
import warnings

import pytest
import torch

import stbench
from stbench import backends, layouts
from stbench.tuning import cache, picks, shipped

N, H, D = 128, 2, 16
LOOKUP_BOUND_S = 0.05  # the goal: a cached pick in under 50 ms


def _masked(q, k, v, layout, scale):
    mask = layout.token_mask().to(q.device)
    s = (q @ k.transpose(-1, -2)).float() * scale
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    return p.to(q.dtype) @ v


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A CPU backend 'fake' with a two-config space that records what it ran, an empty cache
    under tmp_path, no shipped picks, and fresh memos."""
    mod = types.ModuleType("stbench_fake_picks")
    mod.calls = []
    mod.check_available = lambda device, dtype: None
    mod.config_space = lambda layout, head_dim, dtype: [{"tile": 16}, {"tile": 32}]

    def attention(q, k, v, layout, scale, config=None):
        if config and (set(config) != {"tile"} or config["tile"] not in (16, 32)):
            raise ValueError(f"config {config}: the fake backend takes tile 16 or 32")
        mod.calls.append((layout.block, config))
        return _masked(q, k, v, layout, scale)

    mod.attention = attention
    monkeypatch.setitem(sys.modules, "stbench_fake_picks", mod)
    monkeypatch.setitem(backends.REGISTRY, "fake", backends.BackendInfo(
        "fake", "stbench_fake_picks", ("torch",), "", needs_gpu=False, backward=True))
    monkeypatch.setenv("STBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "shipped")
    picks.clear()
    yield mod
    picks.clear()


def _save(layout, mode="fwd", batch=1, head_dim=D, **pick):
    """A cache entry for ``layout`` in this environment whose pick is ``pick``."""
    best = {"backend": "fake", "config": {"tile": 32}, "block": layout.block, **pick}
    cache.save_entry({"env": cache.env_fields(), "layout_hash": layout.content_hash,
                      "batch": batch, "head_dim": head_dim, "dtype": "float32", "mode": mode,
                      "objective": "time", **best, "same_block": dict(best),
                      "per_backend": {best["backend"]: dict(best)}})


def _qkv(grad=False, d=D, n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, H, n, d, generator=g).requires_grad_(grad) for _ in range(3)]


def _run(layout, backend="auto", grad=False, d=D, **kw):
    """attention() and the warnings it gave; checks the answer against the reference."""
    q, k, v = _qkv(grad, d, layout.n_ctx)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = stbench.attention(q, k, v, layout, backend=backend, **kw)
    ref = _masked(q, k, v, layout, d ** -0.5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    return [str(x.message) for x in w if issubclass(x.category, picks.TunedPickWarning)]


def _causal(block=32):
    return layouts.causal(N, block=block, heads=H)


def test_a_valid_cached_pick_runs_at_its_block(fake):
    lay = _causal(32)
    _save(lay, block=64)  # the pattern re-blocks exactly to 64
    assert _run(lay) == []
    assert fake.calls == [(64, {"tile": 32})]


@pytest.mark.parametrize("pick, why", [
    (dict(config={"tile": 32, "BLOCK_Q": 64}), "config key 'BLOCK_Q' is unknown"),
    (dict(config={"tile": "wide"}), "config['tile']='wide' is not a value"),
    (dict(config={"tile": 48}), "config['tile']=48 is not a value"),
    (dict(backend="nosuch"), "'nosuch' is not registered"),
    (dict(backend="cupy"), "cupy"),
])
def test_a_bad_cached_pick_is_skipped_with_one_warning(fake, pick, why):
    lay = _causal(32)
    _save(lay, **pick)
    msgs = _run(lay)
    assert len(msgs) == 1 and why in msgs[0] and "running dense" in msgs[0], msgs
    assert fake.calls == []
    assert _run(lay) == []  # once per process and problem


def test_a_bad_block_falls_back_to_the_best_at_the_layouts_own_block(fake):
    lay = _causal(32)
    _save(lay, block=48)
    (msg,) = _run(lay)
    assert "block 48 is not one of" in msg and "running fake at its tuned config" in msg
    assert fake.calls == [(32, {"tile": 32})]


def test_a_pick_at_a_block_the_layout_cannot_take_is_skipped(fake):
    lay = layouts.causal(80, block=16, heads=H)  # 32 does not divide N = 80
    _save(lay, block=32)
    (msg,) = _run(lay)
    assert "does not re-block to 32" in msg


def test_malformed_entries_never_raise(fake, tmp_path):
    lay = _causal(32)
    _save(lay, same_block=[1, 2], per_backend="junk")
    assert _run(lay) == [] and _run(lay, backend="fake") == []
    assert fake.calls == [(32, {"tile": 32})] * 2
    data = json.loads((tmp_path / cache.FILE_NAME).read_text())
    for e in data["entries"].values():
        e["config"] = "not a dict"
    (tmp_path / cache.FILE_NAME).write_text(json.dumps(data))
    picks.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cache warns about the malformed entry itself
        _run(lay)


def test_named_backend_runs_its_tuned_pick_unless_given_a_config(fake):
    lay = _causal(32)
    _save(lay, block=64, config={"tile": 16})
    _run(lay, backend="fake")
    _run(lay, backend="fake", config={})
    _run(lay, backend="fake", config={"tile": 32})
    assert fake.calls == [(64, {"tile": 16}), (32, {}), (32, {"tile": 32})]


def test_named_backend_with_a_bad_pick_runs_its_built_in_config(fake):
    lay = _causal(32)
    _save(lay, config={"tile": 32, "bogus": 1})
    (msg,) = _run(lay, backend="fake")
    assert "bogus" in msg and "running fake at its built-in config" in msg
    assert fake.calls == [(32, None)]


# ----------------------------------------------------------------- compiled before interpreted
def test_auto_never_runs_the_interpreter_when_dense_can_run(monkeypatch, tmp_path):
    """TRITON_INTERPRET=1 on a CPU (as the test suite runs): 'auto' takes dense, not the
    interpreted Triton kernel (about 75x slower), even when the cache holds a Triton pick."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("STBENCH_CACHE_DIR", str(tmp_path))
    picks.clear()
    lay = _causal(32)
    q = torch.zeros(1, H, N, 32)
    assert backends.unavailable_reason("triton", "cpu", torch.float32) is None  # it could run
    assert stbench.api.resolve_backend("auto", q, lay)[0] == "dense"
    _save(lay, head_dim=32, backend="triton", config={"BLOCK_M": 64})
    assert stbench.api.resolve_backend("auto", q, lay)[0] == "dense"
    assert stbench.api.resolve_backend("triton", q, lay)[:2] == ("triton", {"BLOCK_M": 64})


@pytest.mark.parametrize("cached", [False, True])
def test_auto_skips_triton_at_a_head_dim_it_does_not_build(fake, monkeypatch, cached):
    """On a GPU (Triton compiled: not interpreted here) at D = 48, 'auto' falls back, cached
    pick or not, instead of raising from the Triton backend."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(backends, "interpreted", lambda name, device: False)
    lay = _causal(32)
    if cached:
        _save(lay, head_dim=48, backend="triton", config={"BLOCK_M": 64})
    msgs = _run(lay, d=48)
    if cached:
        assert len(msgs) == 1 and "head_dim=48 is not supported" in msgs[0], msgs
    q = torch.zeros(1, H, N, 48)
    assert stbench.api.resolve_backend("auto", q, lay)[0] == "dense"


# ----------------------------------------------------------------- one pick per mode
def test_forward_and_forward_backward_calls_use_their_own_picks(fake):
    lay = _causal(32)
    _save(lay, mode="fwd", config={"tile": 16}, block=32)
    _save(lay, mode="fwd+bwd", config={"tile": 32}, block=64)
    _run(lay, grad=False)
    _run(lay, grad=True)
    with torch.no_grad():
        _run(lay, grad=True)  # grads off: a forward-only call
    assert fake.calls == [(32, {"tile": 16}), (64, {"tile": 32}), (32, {"tile": 16})]


def test_a_forward_backward_pick_is_not_used_for_a_forward_call(fake):
    lay = _causal(32)
    _save(lay, mode="fwd+bwd", config={"tile": 32}, block=64)
    _run(lay, grad=False)
    assert fake.calls == []  # the fallback (dense) ran, not the fwd+bwd pick


# ----------------------------------------------------------------- shipped picks
def _ship(tmp_path, lay, mode="fwd", picks_=None):
    data = {"format": shipped.FORMAT, "version": shipped.VERSION, "gpu": "testgpu",
            "device_name": "Test GPU", "command": "test", "rule": "test", "sources": [],
            "problems": [{"layout": "causal", "layout_name": lay.name, "token_density": 0.5,
                          "n_ctx": N, "heads": H, "batch": 1, "head_dim": D,
                          "dtype": "float32", "mode": mode,
                          "hashes": {str(b): lay.reblock(b).content_hash for b in (32, 64)},
                          "picks": picks_ or [{"backend": "fake", "block": 64,
                                               "config": {"tile": 16}, "median_ms": 1.0}]}]}
    path = tmp_path / "shipped" / "testgpu.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(shipped.validate(data)))
    return path


def test_shipped_picks_run_when_the_cache_has_no_entry(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "current_gpu", lambda: "testgpu")
    lay = layouts.causal(N, block=64, heads=H)  # built at 64: matched through its hash at 64
    _ship(tmp_path, lay.reblock(32))
    _run(lay)
    _run(lay, backend="fake")
    assert fake.calls == [(64, {"tile": 16})] * 2
    _save(lay, config={"tile": 32}, block=32)  # a local pick wins over the shipped one
    _run(lay)
    assert fake.calls[-1] == (32, {"tile": 32})


def test_a_bad_shipped_pick_falls_through_to_the_next(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "current_gpu", lambda: "testgpu")
    lay = _causal(32)
    _ship(tmp_path, lay, picks_=[
        {"backend": "fake", "block": 32, "config": {"tile": 8}, "median_ms": 1.0},
        {"backend": "fake", "block": 64, "config": {"tile": 32}, "median_ms": 2.0}])
    (msg,) = _run(lay)
    assert "the shipped picks" in msg and "'tile']=8" in msg
    assert fake.calls == [(64, {"tile": 32})]


def test_no_shipped_picks_for_another_gpu(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "current_gpu", lambda: "othergpu")
    lay = _causal(32)
    _ship(tmp_path, lay)
    _run(lay)
    assert fake.calls == []


# ----------------------------------------------------------------- cost
def test_a_cached_pick_costs_under_50_ms(fake):
    """The first lookup (file read, checks) and repeated ones (memoised) of a cached pick."""
    lay = _causal(32)
    _save(lay, config={"tile": 16})
    q = torch.zeros(1, H, N, D)
    t = time.perf_counter()
    first = stbench.api.resolve_backend("auto", q, lay)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(100):
        again = stbench.api.resolve_backend("auto", q, lay)
    warm = (time.perf_counter() - t) / 100
    assert first[:2] == again[:2] == ("fake", {"tile": 16})
    assert cold < LOOKUP_BOUND_S and warm < LOOKUP_BOUND_S / 10, (cold, warm)
