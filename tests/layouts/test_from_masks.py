"""from_token_mask / from_block_mask / from_predicate: exact round trips and clear errors."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stbench import layouts
from stbench.layouts import DIAG, FULL, PARTIAL, LayoutError

from layout_checks import assert_canonical


@st.composite
def token_masks(draw):
    """Random bool [H, N, N] masks with whole empty / full / lower-triangular blocks mixed in."""
    block = draw(st.sampled_from([16, 32]))
    nb = draw(st.integers(1, 4))
    heads = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**31 - 1))
    density = draw(st.sampled_from([0.02, 0.3, 0.9]))
    g = torch.Generator().manual_seed(seed)
    n = nb * block
    m = torch.rand(heads, n, n, generator=g) < density
    kind = torch.randint(0, 4, (heads, nb, nb), generator=g)  # 0 random, 1 empty, 2 full, 3 tril
    tiles = m.view(heads, nb, block, nb, block).permute(0, 1, 3, 2, 4).clone()
    tiles[kind == 1] = False
    tiles[kind == 2] = True
    tiles[kind == 3] = torch.ones(block, block, dtype=torch.bool).tril()
    return tiles.permute(0, 1, 3, 2, 4).reshape(heads, n, n).contiguous(), block


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token_masks())
def test_token_mask_round_trip(case):
    mask, block = case
    L = layouts.from_token_mask(mask, block=block)
    assert torch.equal(L.token_mask(), mask)
    h, n = mask.shape[0], mask.shape[1]
    nb = n // block
    assert torch.equal(L.block_mask, mask.view(h, nb, block, nb, block).any(4).any(2))
    # kinds are exact: FULL blocks are all-true, DIAG only on the diagonal, masks are distinct
    tm = L.block_token_masks()
    assert torch.equal(tm[L.kinds == FULL].all(), torch.tensor(True))
    assert bool((L.q_blocks[L.kinds == DIAG] == L.k_blocks[L.kinds == DIAG]).all())
    assert torch.unique(L.masks.reshape(L.masks.shape[0], block * block), dim=0).shape[0] == L.masks.shape[0]
    assert ((L.mask_ids >= 0) == (L.kinds == PARTIAL)).all()
    assert 0.0 <= L.token_density <= 1.0 and 0.0 <= L.block_density <= 1.0
    assert_canonical(L)


def test_token_mask_two_dims_is_one_head(gen):
    m = torch.rand(64, 64, generator=gen) < 0.5
    L = layouts.from_token_mask(m, block=16)
    assert L.heads == 1 and torch.equal(L.token_mask()[0], m)


def test_from_block_mask_causal_and_not(gen):
    nb, b = 6, 16
    bm = torch.rand(2, nb, nb, generator=gen) < 0.5
    q = torch.arange(nb * b).view(-1, 1)
    k = torch.arange(nb * b).view(1, -1)
    up = bm.repeat_interleave(b, 1).repeat_interleave(b, 2)
    L = layouts.from_block_mask(bm, block=b, causal=False)
    assert torch.equal(L.token_mask(), up) and bool((L.kinds == FULL).all())
    low = bm.tril()
    L = layouts.from_block_mask(low, block=b, causal=True)
    assert torch.equal(L.token_mask(), low.repeat_interleave(b, 1).repeat_interleave(b, 2) & (k <= q))
    assert torch.equal(L.block_mask, low)
    with pytest.raises(LayoutError, match="above the diagonal"):
        layouts.from_block_mask(torch.ones(1, 3, 3, dtype=torch.bool), block=16, causal=True)


def test_from_predicate_matches_token_mask():
    n = 256
    q = torch.arange(n).view(-1, 1)
    k = torch.arange(n).view(1, -1)

    def pattern(q, k):
        return (k <= q) & (((q - k) % 24 == 0) | (q - k < 5))

    L = layouts.from_predicate(n, pattern, block=32, heads=2)
    assert torch.equal(L.token_mask(), pattern(q, k).expand(2, n, n))
    assert L.name == "predicate(pattern)"

    def per_head(h, q, k):
        return (k <= q) & ((q - k) % (h + 2) == 0)

    L = layouts.from_predicate(n, per_head, block=16, heads=3)
    assert torch.equal(L.token_mask(), torch.stack([per_head(h, q, k) for h in range(3)]))


def test_from_predicate_chunks_rows(monkeypatch):
    """Rows are evaluated in chunks: fn never sees N x N."""
    from stbench.layouts.generators import masks as mod

    monkeypatch.setattr(mod, "CHUNK_ELEMENTS", 512 * 32)
    seen = []

    def fn(q, k):
        seen.append(q.shape[0])
        return k <= q

    L = layouts.from_predicate(512, fn, block=16)
    assert max(seen) == 32 and sum(seen) == 512
    assert L == layouts.causal(512, 16)


@pytest.mark.parametrize(
    "call,word",
    [
        (lambda: layouts.from_token_mask(torch.zeros(64, 64), block=16), "mask.dtype"),
        (lambda: layouts.from_token_mask(torch.zeros(64, 32, dtype=torch.bool), 16), "shape"),
        (lambda: layouts.from_token_mask(torch.zeros(72, 72, dtype=torch.bool), 16), "n_ctx"),
        (lambda: layouts.from_block_mask(torch.zeros(1, 2, 2), 16), "bool"),
        (lambda: layouts.from_predicate(64, lambda q, k: q - k, 16), "bool"),
        (lambda: layouts.from_predicate(64, 3, 16), "callable"),
    ],
)
def test_mask_errors(call, word):
    with pytest.raises(LayoutError, match=word):
        call()
