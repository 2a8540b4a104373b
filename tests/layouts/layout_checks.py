"""Shared checks for the layout tests (imported by file name: tests/layouts is on sys.path)."""

import torch

from stbench.layouts import Layout


def assert_canonical(L: Layout):
    """Entries sorted and unique: from_parts (which sorts and validates) gives the same layout."""
    again = Layout.from_parts(
        L.n_ctx, L.heads, L.block, L.name, L.heads_idx, L.q_blocks, L.k_blocks, L.kinds,
        L.mask_ids, L.masks, L.perms, L.head_perm,
    )
    assert again.content_hash == L.content_hash
    assert torch.equal(again.q_blocks, L.q_blocks) and torch.equal(again.k_blocks, L.k_blocks)


def assert_exact(L: Layout, expected: torch.Tensor):
    """token_mask equals expected [H, N, N]; block_mask = non-empty blocks (identity order)."""
    tm = L.token_mask()
    assert torch.equal(tm, expected)
    if L.perms is None:
        b, nb, h = L.block, L.n_blocks, L.heads
        nonempty = expected.view(h, nb, b, nb, b).any(4).any(2)
        assert torch.equal(L.block_mask, nonempty)
    assert 0.0 <= L.token_density <= 1.0 and 0.0 <= L.block_density <= 1.0
    assert L.allowed_pairs == int(expected.sum())
    assert_canonical(L)
