"""reblock / union / stack_heads / st_mix: exact, by token masks."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stbench import layouts
from stbench.layouts import LayoutError

from layout_checks import assert_canonical, assert_exact

BLOCKS = [16, 32, 64, 128]


@st.composite
def random_layouts(draw, n=256, heads=2):
    """A random token mask (mixed empty / full / tril / random blocks) as a layout."""
    seed = draw(st.integers(0, 2**31 - 1))
    block = draw(st.sampled_from(BLOCKS))
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(heads, n, n, generator=g) < draw(st.sampled_from([0.01, 0.2, 0.95]))
    nb = n // block
    tiles = m.view(heads, nb, block, nb, block).permute(0, 1, 3, 2, 4).clone()
    kind = torch.randint(0, 4, (heads, nb, nb), generator=g)
    tiles[kind == 1] = False
    tiles[kind == 2] = True
    tiles[kind == 3] = torch.ones(block, block, dtype=torch.bool).tril()
    mask = tiles.permute(0, 1, 3, 2, 4).reshape(heads, n, n)
    if draw(st.booleans()):
        mask = mask & torch.ones(n, n, dtype=torch.bool).tril()
    return layouts.from_token_mask(mask, block=block)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_layouts(), st.sampled_from(BLOCKS), st.sampled_from(BLOCKS))
def test_reblock_round_trips(L, b1, b2):
    tm = L.token_mask()
    R = L.reblock(b1)
    assert R.block == b1
    assert_exact(R, tm)
    assert_exact(layouts.reblock(R, b2), tm)
    assert L.reblock(L.block) is L


@pytest.mark.parametrize("make", [
    lambda: layouts.strided(1024, 32, 32, 2),
    lambda: layouts.st_mix(1024, 32, 16, 4),
    lambda: layouts.fixed(1024, 32, 128, 2, 2, 1),
    lambda: layouts.merged_strided(512, 16, 24, 1),
])
@pytest.mark.parametrize("block", BLOCKS)
def test_reblock_generators(make, block):
    L = make()
    R = L.reblock(block)
    assert_exact(R, L.token_mask())
    assert R.name == L.name
    if L.perms is not None:
        assert torch.equal(R.perms, L.perms) and R.head_perm == L.head_perm


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_layouts(), random_layouts())
def test_union_is_or(a, b):
    U = layouts.union(a, b)
    assert U.block == min(a.block, b.block)
    assert_exact(U, a.token_mask() | b.token_mask())


def test_union_of_generators_and_perm_rule():
    n = 1024
    loc = layouts.local(n, 32, 64, 2)
    fx = layouts.fixed(n, 16, 64, 2)
    assert_exact(layouts.union(loc, fx), loc.token_mask() | fx.token_mask())
    st1 = layouts.strided(n, 32, 32, 2)
    same = layouts.union(st1, layouts.strided(n, 16, 32, 2))
    assert_exact(same, st1.token_mask())
    with pytest.raises(LayoutError, match="permutation"):
        layouts.union(loc, st1)
    with pytest.raises(LayoutError, match="heads"):
        layouts.union(loc, layouts.local(n, 32, 64, 3))
    with pytest.raises(LayoutError, match="n_ctx"):
        layouts.union(loc, layouts.local(512, 32, 64, 2))
    # merged_strided is exactly local | strided, taken in original order
    ms = layouts.merged_strided(n, 16, 32, 1)
    assert torch.equal(ms.token_mask(), layouts.local(n, 16, 32).token_mask()
                       | layouts.strided(n, 16, 32).token_mask())


def test_stack_heads_and_st_mix():
    n = 1024
    loc = layouts.local(n, 32, 32, 1)
    st1 = layouts.strided(n, 16, 32, 2)
    S = layouts.stack_heads(loc, st1)
    assert S.heads == 3 and S.block == 16
    assert_exact(S, torch.cat([loc.token_mask(), st1.token_mask()]))
    assert S.head_perm == (-1, 0, 0)
    M = layouts.st_mix(n, 32, 32, 4)
    exp = torch.stack([loc.token_mask()[0], st1.token_mask()[0]] * 2)
    assert_exact(M, exp)
    assert M.name == "st_mix(l=32)" and M.head_perm == (-1, 0, -1, 0)
    assert_canonical(M)


def test_reblock_keeps_shared_patterns():
    L = layouts.fixed(2048, 32, 128, heads=8, num_verts=2)
    for b in (16, 128):
        R = L.reblock(b)
        assert R.n_patterns == 2 and R.head_pattern == L.head_pattern
    S = layouts.st_mix(1024, 32, 32, 6).reblock(16)
    assert S.n_patterns == 2 and S.head_perm == (-1, 0) * 3


def test_from_parts_rejects_bad_blocks():
    with pytest.raises(LayoutError, match="twice"):
        layouts.Layout.from_parts(64, 1, 16, "x", [0, 0], [1, 1], [0, 0], [0, 0])
    with pytest.raises(LayoutError, match="diagonal"):
        layouts.Layout.from_parts(64, 1, 16, "x", [0], [1], [0], [layouts.DIAG])
    with pytest.raises(LayoutError, match="mask id"):
        layouts.Layout.from_parts(64, 1, 16, "x", [0], [1], [0], [layouts.PARTIAL])
    with pytest.raises(LayoutError, match="outside"):
        layouts.Layout.from_parts(64, 1, 16, "x", [0], [4], [0], [layouts.FULL])
