"""The shared conformance cases: one named set of small layouts that every backend is checked
on against the dense reference (tests/test_conformance.py, ``stbench check``, the CuPy
backend's GPU checks).

Together the cases cover every generator family, causal and bidirectional patterns, blocks 16
to 64 (any power of two from 16 to 128 on request), PARTIAL blocks with exact bitmasks, the
strided transpose's permutation and an arbitrary one, heads with and without a permutation in
one layout, query rows and key columns with no allowed pair, a layout with no pair at all, and
sequence lengths that are not powers of two. Each case builds its Layout from (n_ctx, heads,
block, seed); its defaults are small enough for Triton's CPU interpreter. A size a case cannot
be built at raises LayoutError naming the constraint (callers report it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from . import generators as gen
from .layout import Layout, LayoutError

TOKEN_DENSITY = 0.25  # the random token masks: each (query, key) allowed with this probability
BLOCK_DENSITY = 0.4  # the random block patterns: each block kept with this probability
HALF = 0.5  # a kept random block is partial (a random bitmask) with this probability


def transpose_stride(n_ctx: int, block: int) -> int:
    """The largest power of two l <= ~sqrt(N) that the strided transpose accepts:
    (N / l) % block == 0."""
    stride = 2 ** round(math.log2(math.sqrt(n_ctx)))
    while stride > 1 and (n_ctx % stride or (n_ctx // stride) % block):
        stride //= 2
    return stride


def empty_rows(n_ctx: int) -> list[int]:
    """Query rows a random case leaves with no allowed key: one in the first block, one inside
    the second half (not on a block boundary)."""
    return [1, n_ctx // 2 + 3]


def _random_tokens(n_ctx, heads, block, g) -> Layout:
    """Bidirectional random token mask; empty query rows and empty key columns."""
    tm = torch.rand(heads, n_ctx, n_ctx, generator=g) < TOKEN_DENSITY
    tm[:, empty_rows(n_ctx)] = False
    tm[:, :, n_ctx // 4: n_ctx // 4 + 5] = False  # keys no query may see
    return gen.from_token_mask(tm, block=block, name="random_tokens")


def _random_blocks(n_ctx, heads, block, g) -> Layout:
    """Random lower-triangular blocks, each full or a random bitmask (diagonal blocks causal);
    block row 0 and the last block column empty."""
    nb = n_ctx // block
    hh, qq, kk = torch.meshgrid(torch.arange(heads), torch.arange(nb), torch.arange(nb),
                                indexing="ij")
    keep = (torch.rand(hh.shape, generator=g) < BLOCK_DENSITY) & (kk <= qq)
    keep[:, 0, :] = False
    keep[:, :, nb - 1] = False
    h, q, k = hh[keep], qq[keep], kk[keep]
    masks = torch.ones(h.numel(), block, block, dtype=torch.bool)
    partial = torch.rand(h.numel(), generator=g) < HALF
    masks[partial] = torch.rand(int(partial.sum()), block, block, generator=g) < HALF
    masks[q == k] &= torch.ones(block, block, dtype=torch.bool).tril()
    return Layout.from_block_masks(n_ctx, heads, block, "random_blocks", h, q, k, masks)


def _random_perm(n_ctx, heads, block, g) -> Layout:
    """A random token mask whose odd heads carry an arbitrary token permutation (even heads:
    identity), so permuted and plain heads share one layout."""
    base = _random_tokens(n_ctx, heads, block, g)
    perm = torch.randperm(n_ctx, generator=g).unsqueeze(0)
    return Layout.from_parts(
        n_ctx, heads, block, "random_perm", base.heads_idx, base.q_blocks, base.k_blocks,
        base.kinds, base.mask_ids, base.masks, perm, tuple(h % 2 - 1 for h in range(heads)),
    )


def _block_mask(n_ctx, heads, block, g) -> Layout:
    """from_block_mask, bidirectional: random whole blocks."""
    nb = n_ctx // block
    return gen.from_block_mask(torch.rand(heads, nb, nb, generator=g) < BLOCK_DENSITY,
                               block=block, causal=False)


def _predicate(n_ctx, heads, block, g) -> Layout:
    """from_predicate: causal, every fifth offset (mod 5 == 2) dropped: partial blocks only."""
    return gen.from_predicate(n_ctx, lambda qi, ki: (ki <= qi) & ((qi - ki) % 5 != 2),
                              block=block, heads=heads)


def _nothing(n_ctx, heads, block, g) -> Layout:
    """No pair allowed anywhere: zeros out, zero gradients, no tile list to walk."""
    none = torch.zeros(0, dtype=torch.long)
    return Layout.from_block_masks(n_ctx, heads, block, "nothing", none, none, none,
                                   torch.ones(0, block, block, dtype=torch.bool))


@dataclass(frozen=True)
class LayoutCase:
    """A named conformance layout: ``make(n_ctx, heads, block, generator) -> Layout`` and the
    sizes it is built at by default."""

    name: str
    make: Callable[[int, int, int, torch.Generator], Layout]
    n_ctx: int
    block: int
    heads: int = 2

    def build(self, n_ctx: int | None = None, heads: int | None = None,
              block: int | None = None, seed: int = 0) -> Layout:
        """The layout at these sizes (None: the case's default); random cases draw from a
        generator seeded with ``seed``."""
        n_ctx = self.n_ctx if n_ctx is None else n_ctx
        block = self.block if block is None else block
        if n_ctx % block:
            raise LayoutError(f"case {self.name!r}: n_ctx={n_ctx} is not a multiple of the "
                              f"block {block}")
        g = torch.Generator().manual_seed(seed)
        return self.make(n_ctx, self.heads if heads is None else heads, block, g)


CASES: dict[str, LayoutCase] = {c.name: c for c in (
    LayoutCase("causal", lambda n, h, b, g: gen.causal(n, block=b, heads=h), 96, 32),
    LayoutCase("local", lambda n, h, b, g: gen.local(n, block=b, window=2 * b + 8, heads=h),
               112, 16),
    LayoutCase("strided", lambda n, h, b, g: gen.strided(
        n, block=b, stride=transpose_stride(n, b), heads=h), 128, 16),
    LayoutCase("fixed", lambda n, h, b, g: gen.fixed(
        n, block=b, stride=4 * b, heads=h, num_verts=2 if h % 2 == 0 else 1, vertsize=1),
        128, 16),
    LayoutCase("merged_strided", lambda n, h, b, g: gen.merged_strided(
        n, block=b, stride=2 * b, heads=h), 128, 16),
    LayoutCase("st_mix", lambda n, h, b, g: gen.st_mix(
        n, block=b, stride=transpose_stride(n, b), heads=h), 128, 16),
    LayoutCase("bigbird", lambda n, h, b, g: gen.bigbird(
        n, block=b, heads=h, causal=False, different_layout_per_head=True, generator=g),
        128, 16),
    LayoutCase("longformer", lambda n, h, b, g: gen.longformer(n, block=b, heads=h), 160, 32),
    LayoutCase("sliding_window", lambda n, h, b, g: gen.sliding_window(n, block=b, heads=h),
               128, 32),
    LayoutCase("variable", lambda n, h, b, g: gen.variable(n, block=b, heads=h), 128, 16),
    LayoutCase("block_mask", _block_mask, 192, 64),
    LayoutCase("predicate", _predicate, 112, 16),
    LayoutCase("random_tokens", _random_tokens, 96, 16),
    LayoutCase("random_blocks", _random_blocks, 128, 32),
    LayoutCase("random_perm", _random_perm, 96, 16),
    LayoutCase("nothing", _nothing, 64, 16),
)}


def build_all(n_ctx: int | None = None, heads: int | None = None, block: int | None = None,
              seed: int = 0) -> list[tuple[str, Layout | str]]:
    """(name, Layout) for every case at these sizes (None: each case's default), or (name, why
    it cannot be built there)."""
    out = []
    for name, case in CASES.items():
        try:
            out.append((name, case.build(n_ctx, heads, block, seed)))
        except (LayoutError, ValueError) as exc:
            out.append((name, f"{type(exc).__name__}: {exc}"))
    return out
