"""Tile lists of the 192-row forward: each CTA covers one and a half 128-row layout blocks.

The forward's three-consumer form (forward.py, ``rows=192``) gives a CTA 192 query rows, three
warpgroups of 64. CTA c covers rows [192 c, 192 c + 192): two layout blocks, ``side`` 0 (block
b0 = 192 c // 128) and side 1 (b0 + 1); consumer w's 64 rows lie in block (192 c + 64 w) // 128.
The CTA streams one K / V tile for all three consumers, so its list is the union of the two
blocks' 128 x 128 tile lists (``kernels/triton/tiles.py``), each entry with a kind per side:

    cols   int32 [E]      the key block of entry e
    kinds  int32 [2, E]   FULL=0 / CAUSAL=1 / MASKED=2 / NONE=3 (the block does not list it)
    tmask  int32 [2, E]   the entry's index in the masks table per side (-1 unless MASKED)
    ptr    int32 [P, n_c + 1];  split int32 [P, n_c, 2]  (both columns: the end of the entries
           FULL on both sides, which come first in key order; the rest follow in key order)
    masks  uint8 [T, 128, 128]  the 128 x 128 lists' table, unchanged

n_c = ceil(N / 192). Where side 1 lies past the last block (the last CTA when 3 does not divide
the block count), its rows are past N: the kernel computes them as side 0 and does not store
them. The extra work against the 128-row lists: entries of one side only (a causal CTA's two
diagonal tiles; a few percent at N = 65536, more at small N and on narrow bands).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import torch

from ..triton.tiles import TILE_CAUSAL, TILE_FULL, TILE_MASKED, Tiles

TILE_NONE = 3
CTA_ROWS = 192
BLOCK = 128


@dataclass(frozen=True, eq=False)
class UnionTiles:
    """The 192-row CTAs' tile lists (module docstring for the shapes)."""

    n_ctx: int
    ptr: torch.Tensor
    split: torch.Tensor
    cols: torch.Tensor
    kinds: torch.Tensor
    tmask: torch.Tensor
    masks: torch.Tensor

    @property
    def n_tiles(self) -> int:
        return -(-self.n_ctx // CTA_ROWS)

    @property
    def n_entries(self) -> int:
        return int(self.cols.numel())

    def to(self, device) -> "UnionTiles":
        vals = {f.name: getattr(self, f.name) for f in fields(self)}
        return UnionTiles(**{k: v.to(device) if isinstance(v, torch.Tensor) else v
                             for k, v in vals.items()})


def union_tiles(tiles: Tiles) -> UnionTiles:
    """The 192-row lists of the 128 x 128 forward lists ``tiles`` (on the CPU)."""
    if (tiles.tile_major, tiles.tile_minor, tiles.transposed) != (BLOCK, BLOCK, False):
        raise ValueError(f"union_tiles takes the {BLOCK} x {BLOCK} forward lists, not "
                         f"{tiles.tile_major} x {tiles.tile_minor}")
    ptr = tiles.ptr.long().cpu()
    P, n_t = ptr.shape[0], ptr.shape[1] - 1
    n_c = -(-n_t * BLOCK // CTA_ROWS)
    # every entry with its pattern and query block (the lists are stored in that order)
    counts = (ptr[:, 1:] - ptr[:, :-1]).reshape(-1)
    pt = torch.repeat_interleave(torch.arange(P * n_t), counts)
    pat, blk = pt // n_t, pt % n_t
    col = tiles.cols.long().cpu()[:, 0]
    kind, tm = tiles.kind.long().cpu(), tiles.tmask.long().cpu()
    # a block's CTAs: its first row's and its last row's (two where 192 c splits the block)
    c_first, c_last = blk * BLOCK // CTA_ROWS, (blk * BLOCK + BLOCK - 1) // CTA_ROWS
    two = c_last != c_first
    c = torch.cat([c_first, c_last[two]])
    pat, blk, col, kind, tm = (torch.cat([x, x[two]]) for x in (pat, blk, col, kind, tm))
    side = blk - c * CTA_ROWS // BLOCK
    # merge by (pattern, CTA, key block)
    key = (pat * n_c + c) * n_t + col
    uniq, inv = torch.unique(key, return_inverse=True)
    U = uniq.numel()
    kinds = torch.full((2, U), TILE_NONE, dtype=torch.int64)
    tmask = torch.full((2, U), -1, dtype=torch.int64)
    kinds[side, inv] = kind
    tmask[side, inv] = tm
    # side 1 past the last block: computed as side 0 (its rows are past N, not stored)
    missing = ((uniq // n_t) % n_c) * CTA_ROWS // BLOCK + 1 >= n_t
    kinds[1, missing], tmask[1, missing] = kinds[0, missing], tmask[0, missing]
    u_pc, u_col = uniq // n_t, uniq % n_t
    mixed = ((kinds[0] != TILE_FULL) | (kinds[1] != TILE_FULL)).long()
    order = torch.sort((u_pc * 2 + mixed) * n_t + u_col).indices
    per_pc = torch.bincount(u_pc, minlength=P * n_c)
    full_pc = torch.bincount(u_pc[mixed == 0], minlength=P * n_c)
    start = torch.zeros(P * n_c + 1, dtype=torch.int64)
    torch.cumsum(per_pc, 0, out=start[1:])
    end_full = start[:-1] + full_pc
    ptr_u = start[torch.arange(P).unsqueeze(1) * n_c + torch.arange(n_c + 1).unsqueeze(0)]
    return UnionTiles(
        n_ctx=tiles.n_ctx,
        ptr=ptr_u.to(torch.int32).contiguous(),
        split=end_full.reshape(P, n_c, 1).expand(P, n_c, 2).to(torch.int32).contiguous(),
        cols=u_col[order].to(torch.int32).contiguous(),
        kinds=kinds[:, order].to(torch.int32).contiguous(),
        tmask=tmask[:, order].to(torch.int32).contiguous(),
        masks=tiles.masks.cpu().contiguous(),
    )


@functools.lru_cache(maxsize=64)
def _union_cpu(tiles: Tiles) -> UnionTiles:
    return union_tiles(tiles.to("cpu"))


def union_for(tiles: Tiles, device) -> UnionTiles:
    """Cached 192-row lists of ``tiles`` (the cached 128 x 128 lists) on ``device``."""
    return _union_dev(tiles, str(torch.device(device)))


@functools.lru_cache(maxsize=64)
def _union_dev(tiles: Tiles, device: str) -> UnionTiles:
    return _union_cpu(tiles).to(device)


def token_mask(u: UnionTiles, pattern: int) -> torch.Tensor:
    """bool [N, N] of the pairs the 192-row kernel allows for ``pattern`` (rows < N): what it
    computes, rebuilt from the lists, for tests against the layout's own mask."""
    n = u.n_ctx
    n_c = u.n_tiles
    allowed = torch.zeros(n_c * CTA_ROWS, n, dtype=torch.bool)
    tri = torch.ones(BLOCK, BLOCK, dtype=torch.bool).tril()
    for c in range(n_c):
        b0 = c * CTA_ROWS // BLOCK
        for e in range(int(u.ptr[pattern, c]), int(u.ptr[pattern, c + 1])):
            k = int(u.cols[e])
            for w in range(CTA_ROWS // 64):
                row0 = c * CTA_ROWS + 64 * w
                if row0 >= n:
                    break
                side = row0 // BLOCK - b0
                r = row0 % BLOCK
                kind = int(u.kinds[side, e])
                if kind == TILE_FULL:
                    m = torch.ones(64, BLOCK, dtype=torch.bool)
                elif kind == TILE_CAUSAL:
                    m = tri[r:r + 64] if k == row0 // BLOCK else None
                    if m is None:
                        raise AssertionError(f"CAUSAL entry off the diagonal at CTA {c}")
                elif kind == TILE_MASKED:
                    m = u.masks[int(u.tmask[side, e]), r:r + 64].bool()
                else:
                    continue
                allowed[row0:row0 + 64, k * BLOCK:(k + 1) * BLOCK] |= m
    return allowed[:n]
