"""The generators' size guard: huge layouts are refused from their parameters, before anything
is allocated, with the estimate and the fix; the estimates bound (or equal) what is stored."""

import importlib
import itertools
import resource
import time

import pytest
import torch

from stbench import cli, layouts
from stbench.layouts import LayoutError, LayoutSizeError, size

REFUSE_S = 2.0  # a refusal is arithmetic on the parameters, not a build
RSS_GROWTH_KB = 200_000  # ru_maxrss is in KB: a refusal allocates nothing of note
GUARDED = [importlib.import_module(f"stbench.layouts.generators.{m}")
           for m in ("local", "strided", "fixed", "deepspeed", "masks")]


@pytest.fixture
def estimates(monkeypatch):
    """The (what, blocks) each generator asked the guard about."""
    seen = []

    def record(what, blocks, extra_bytes=0):
        seen.append((what, blocks))

    for mod in GUARDED:
        monkeypatch.setattr(mod, "check_size", record)
    return seen


def _stored(lay) -> int:
    return sum(lay.pattern(p)[0].numel() for p in range(lay.n_patterns))


HUGE = [
    ("strided", lambda: layouts.strided(2**30, block=64, stride=128)),
    ("causal", lambda: layouts.causal(2**20, block=16)),
    ("fixed", lambda: layouts.fixed(2**21, block=16, stride=128)),
    ("fixed", lambda: layouts.fixed(2**24, block=64, stride=128)),
    ("merged_strided", lambda: layouts.merged_strided(2**30, block=64, stride=128)),
    ("local", lambda: layouts.local(2**30, block=16, window=2**20)),
    ("sliding_window", lambda: layouts.sliding_window(2**26, block=16,
                                                      num_sliding_window_blocks=2**20)),
    ("bigbird", lambda: layouts.bigbird(2**26, block=16, num_global_blocks=2**16, seed=0)),
    ("longformer", lambda: layouts.longformer(2**26, block=16,
                                              global_block_indices=list(range(2**12)))),
    ("variable", lambda: layouts.variable(2**26, block=16, local_window_blocks=[2**18])),
]


@pytest.mark.parametrize("name, build", HUGE, ids=[f"{n}-{i}" for i, (n, _) in enumerate(HUGE)])
def test_huge_layouts_are_refused_before_allocating(name, build):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(LayoutSizeError) as info:
        build()
    assert time.perf_counter() - t0 < REFUSE_S
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < RSS_GROWTH_KB
    msg = str(info.value)
    assert msg.startswith(name + "(") and "GB" in msg and "blocks" in msg
    assert "set_size_limit" in msg and size.LIMIT_ENV in msg  # the fix


EXACT = {  # generator -> parameter grid; the estimate equals the stored blocks
    layouts.causal: [{}],
    layouts.local: [{"window": w} for w in (1, 16, 40, 64, 100, 256)],
    layouts.strided: [{"stride": s} for s in (4, 8, 16)],
    layouts.fixed: [dict(stride=s, vertsize=c, heads=2) for s, c in ((64, 1), (128, 1),
                                                                     (128, 2), (256, 4))],
    layouts.sliding_window: [dict(num_sliding_window_blocks=w, causal=c)
                             for w in (1, 3, 7) for c in (True, False)],
}
BOUND = {  # the estimate bounds the stored blocks from above (identical patterns stored once)
    layouts.fixed: [dict(stride=s, num_verts=2, vertsize=c, heads=2)
                    for s, c in ((128, 1), (256, 2))],
    layouts.merged_strided: [{"stride": s} for s in (8, 16, 40, 64, 128, 200)],
    layouts.bigbird: [dict(num_random_blocks=r, num_global_blocks=g, seed=0, heads=2,
                           different_layout_per_head=True, causal=c)
                      for r, g, c in ((0, 1, True), (2, 2, False), (3, 0, True))],
    layouts.longformer: [dict(global_block_indices=g, causal=c)
                         for g, c in (([0], True), ([0, 3, 5], False))],
    layouts.variable: [dict(local_window_blocks=w, num_random_blocks=r, seed=0, causal=c,
                            horizontal_global_attention=not c)
                       for w, r, c in (([4], 0, True), ([2, 3], 2, False))],
}


@pytest.mark.parametrize("exact", [True, False])
def test_estimates_equal_or_bound_the_stored_blocks(estimates, exact):
    for fn, grid in (EXACT if exact else BOUND).items():
        for params, n, b in itertools.product(grid, (256, 1024), (16, 32)):
            estimates.clear()
            try:
                lay = fn(n, block=b, **params)
            except LayoutError:
                continue  # the parameters do not fit this N (the generator said why)
            (what, est), = estimates
            stored = _stored(lay)
            where = f"{fn.__name__}({n}, block={b}, {params}): estimate {est}, stored {stored}"
            assert est == stored if exact else stored <= est <= 3 * stored + n // b, where


def test_the_limit_is_settable_and_read_from_the_environment(monkeypatch):
    previous = layouts.set_size_limit(10_000)
    try:
        with pytest.raises(LayoutSizeError, match="limit of 1e-05 GB"):
            layouts.causal(4096, block=32)
        with pytest.raises(LayoutSizeError, match="at block 16"):
            layouts.causal(1024, block=128).reblock(16)
        with pytest.raises(LayoutSizeError, match="from_predicate"):
            layouts.from_predicate(2048, lambda q, k: k <= q, block=16)
    finally:
        assert layouts.set_size_limit(previous) == 10_000
    monkeypatch.setenv(size.LIMIT_ENV, "0.000001")
    with pytest.raises(LayoutSizeError, match="1e-06 GB"):
        layouts.causal(4096, block=32)
    monkeypatch.setenv(size.LIMIT_ENV, "lots")
    with pytest.raises(LayoutError, match=f"{size.LIMIT_ENV}='lots' must be a positive"):
        layouts.causal(256)
    monkeypatch.delenv(size.LIMIT_ENV)
    assert layouts.size_limit() == size.DEFAULT_LIMIT_BYTES
    assert layouts.causal(256).nnz == size.tri(256 // 64)
    with pytest.raises(LayoutError, match="positive int of bytes"):
        layouts.set_size_limit(-1)


def test_layouts_show_at_a_million_tokens_refuses_with_the_estimate(capsys):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert cli.main(["layouts", "show", "causal", "--n-ctx", "1048576", "--blocks", "16,32",
                     "--width", "400"]) == 1  # nothing built
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < RSS_GROWTH_KB
    out = capsys.readouterr().out
    assert "2,147,516,416 blocks" in out and "set_size_limit" in out
    assert torch.tensor(0).numel() == 1  # the process is healthy
