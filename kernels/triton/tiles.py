"""Kernel tiles derived from the device plan: layout granularity decoupled from tile shape.

The plan (``layouts/plan.py``) lists, per pattern and query block of ``b`` tokens, its key
blocks. A kernel tile is ``TILE_MAJOR x TILE_MINOR`` tokens (forward and dQ: major = queries,
minor = keys; dK/dV: major = keys, minor = queries). This module turns the plan into the one
derived list the Triton kernels walk, in three vectorised steps (no Python loop over blocks):

1. refine: if a tile side is smaller than ``b``, every entry is split into ``(b/u)^2``
   sub-entries at unit ``u = min(b, TILE_MAJOR, TILE_MINOR)`` (full -> full, causal diagonal ->
   diagonal / full / dropped, partial -> the sub-masks, re-classified and deduplicated);
2. group: a major tile is ``R = TILE_MAJOR / u`` consecutive unit blocks; its minor list is the
   sorted union of their minor blocks, cut into chunks of ``G = TILE_MINOR / u`` unit blocks
   (gathered, not necessarily contiguous: ``cols[e, g]``, -1 pads the last chunk);
3. classify each chunk ``e`` (one tile of work): ``FULL`` (every pair allowed: no masking),
   ``CAUSAL`` (allowed iff query position >= key position in layout order, computed from the
   positions in the kernel) or ``MASKED`` (``tmask[e]`` indexes a table of unique uint8 tile
   masks ``masks[T, TILE_MAJOR, TILE_MINOR]``, built from the unique rows of per-unit codes).

Entries of each major tile are ordered by kind, one kernel loop each (constexpr-specialised):
``ptr[p, t] .. split[p, t, 0]`` FULL (no masking code at all), ``.. split[p, t, 1]`` CAUSAL,
``.. ptr[p, t + 1]`` MASKED.

Shapes (E = tiles of work, T = unique tile masks, n_t = N / TILE_MAJOR):
    ptr   int32 [P, n_t + 1];  split int32 [P, n_t, 2]
    cols  int32 [E, G]    unit-block index of each gathered minor block (-1: pad)
    kind  int32 [E]       FULL=0 / CAUSAL=1 / MASKED=2;  tmask int32 [E] (-1 unless MASKED)
    masks uint8 [T, TILE_MAJOR, TILE_MINOR];  masks_swapped uint8 [T, TILE_MINOR, TILE_MAJOR]
        (the same masks transposed, for kernels that hold scores minor x major: the
        dkv_transposed dK/dV, which reads them row by row as the forward reads ``masks``)
Memory: O(E * G + T * TILE_MAJOR * TILE_MINOR); patterns are periodic, so T stays small.
Built once per (plan, tiles, orientation) on the CPU and cached with the plan.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import torch

from stbench.layouts.layout import DIAG, FULL, PARTIAL, classify_blocks
from stbench.layouts.plan import Plan, unpack_masks

TILE_FULL, TILE_CAUSAL, TILE_MASKED = 0, 1, 2
# per-unit codes inside a tile: 0 empty, 1 full, 2 causal diagonal, 3 + m partial mask m
_EMPTY, _UFULL, _UDIAG, _UMASK0 = 0, 1, 2, 3


class TileError(ValueError):
    """A tile shape does not fit the layout; the message names the parameter and the fix."""


@dataclass(frozen=True, eq=False)
class Tiles:
    """Tile lists of one orientation; see the module docstring for shapes."""

    n_ctx: int
    unit: int  # u: the unit block size the lists are expressed in
    tile_major: int
    tile_minor: int
    transposed: bool  # False: major = queries (forward, dQ); True: major = keys (dK, dV)
    ptr: torch.Tensor
    split: torch.Tensor
    cols: torch.Tensor
    kind: torch.Tensor
    tmask: torch.Tensor
    masks: torch.Tensor
    masks_swapped: torch.Tensor

    @property
    def n_tiles(self) -> int:
        return self.n_ctx // self.tile_major

    @property
    def n_entries(self) -> int:
        return int(self.kind.numel())

    def to(self, device) -> "Tiles":
        vals = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in vals.items():
            if isinstance(v, torch.Tensor):
                vals[k] = v.to(device)
        return Tiles(**vals)

    def work_pairs(self) -> int:
        """(major, minor) token pairs the kernel computes, per pattern summed."""
        return self.n_entries * self.tile_major * self.tile_minor


def check_tiles(n_ctx: int, block: int, tile_major: int, tile_minor: int) -> None:
    """Raise TileError unless both tile sides are powers of two >= 16 and the major side
    divides n_ctx (minor tiles gather blocks, so they need not)."""
    for name, t in (("BLOCK_M/BLOCK_N (major)", tile_major), ("tile minor side", tile_minor)):
        if t < 16 or t & (t - 1):
            raise TileError(f"{name}={t} must be a power of two >= 16")
    if n_ctx % tile_major:
        raise TileError(
            f"tile of {tile_major} rows does not divide n_ctx={n_ctx}: choose a tile side that "
            f"divides N (the layout block {block} always does)"
        )


def _entries(plan: Plan):
    """Forward entries of the plan as flat int64 arrays (pattern, q block, k block, kind, mask)."""
    nb = plan.n_blocks
    ptr = plan.row_ptr.long()
    counts = (ptr[:, 1:] - ptr[:, :-1]).reshape(-1)
    rows = torch.repeat_interleave(torch.arange(plan.n_patterns * nb), counts)
    return (
        rows // nb, rows % nb, plan.col_idx.long(), plan.col_kind.long(), plan.col_mask.long()
    )


def _refine(plan: Plan, unit: int):
    """Entries and unit masks (bool [M', u, u]) at granularity ``unit`` <= plan.block."""
    pat, qb, kb, kind, mid = _entries(plan)
    b = plan.block
    masks = unpack_masks(plan.masks.cpu(), b) if plan.masks.numel() else torch.zeros(0, b, b, dtype=torch.bool)
    if unit == b:
        return pat, qb, kb, kind, mid, masks
    s = b // unit
    # table of every sub-mask: sources = the M partial masks, plus tril (for DIAG) -> index M
    src = torch.cat([masks, torch.ones(b, b, dtype=torch.bool).tril().unsqueeze(0)])
    sub = src.reshape(-1, s, unit, s, unit).permute(0, 1, 3, 2, 4).reshape(-1, unit, unit)
    a = torch.arange(s).repeat_interleave(s).repeat(src.shape[0])
    c = torch.arange(s).repeat(s * src.shape[0])
    keep, skind, smid, umasks = classify_blocks(sub, a, c)
    skind, smid = skind.long(), smid.long()
    skind[~keep] = -1  # empty
    # expand entries: each gets s*s sub-entries
    n = kind.numel()
    ai = torch.arange(s).repeat_interleave(s).repeat(n)
    ci = torch.arange(s).repeat(s * n)
    rep = lambda t: t.repeat_interleave(s * s)  # noqa: E731
    pat_r, qb_r, kb_r, kind_r, mid_r = map(rep, (pat, qb, kb, kind, mid))
    src_id = torch.where(kind_r == PARTIAL, mid_r, torch.full_like(mid_r, masks.shape[0]))
    sub_id = src_id * s * s + ai * s + ci
    new_kind = torch.where(kind_r == FULL, torch.full_like(kind_r, FULL), skind[sub_id])
    new_mid = torch.where(kind_r == FULL, torch.full_like(mid_r, -1), smid[sub_id])
    ok = new_kind >= 0
    qb_n, kb_n = qb_r * s + ai, kb_r * s + ci
    return pat_r[ok], qb_n[ok], kb_n[ok], new_kind[ok], new_mid[ok], umasks


def build_tiles(plan: Plan, tile_major: int, tile_minor: int, transposed: bool = False) -> Tiles:
    """Derive the tile lists of ``plan`` (on the CPU); see the module docstring."""
    plan = plan.to("cpu")
    n, b = plan.n_ctx, plan.block
    check_tiles(n, b, tile_major, tile_minor)
    unit = min(b, tile_major, tile_minor)
    pat, qb, kb, kind, mid, umasks = _refine(plan, unit)
    nu = n // unit
    R, G = tile_major // unit, tile_minor // unit
    major, minor = (kb, qb) if transposed else (qb, kb)
    n_t = n // tile_major
    P = plan.n_patterns
    code = torch.where(kind == FULL, _UFULL, torch.where(kind == DIAG, _UDIAG, _UMASK0 + mid))

    # unique (pattern, major tile, minor block) -> chunk of G within its tile
    t = major // R
    r = major % R
    key_tm = pat * n_t + t
    uniq, inv = torch.unique(key_tm * nu + minor, return_inverse=True)
    u_tm, u_minor = uniq // nu, uniq % nu
    # position of each unique minor block within its (pattern, tile): rank in sorted order
    tm_counts = torch.bincount(u_tm, minlength=P * n_t)
    tm_start = torch.zeros(P * n_t + 1, dtype=torch.int64)
    torch.cumsum(tm_counts, 0, out=tm_start[1:])
    pos = torch.arange(uniq.numel()) - tm_start[u_tm]
    chunks_per_tm = (tm_counts + G - 1) // G
    ch_start = torch.zeros(P * n_t + 1, dtype=torch.int64)
    torch.cumsum(chunks_per_tm, 0, out=ch_start[1:])
    n_chunks = int(ch_start[-1])
    u_chunk = ch_start[u_tm] + pos // G
    u_g = pos % G

    cols = torch.full((n_chunks, G), -1, dtype=torch.int64)
    cols[u_chunk, u_g] = u_minor
    codes = torch.zeros(n_chunks, R, G, dtype=torch.int64)
    codes[u_chunk[inv], r, u_g[inv]] = code
    chunk_tm = torch.repeat_interleave(torch.arange(P * n_t), chunks_per_tm)
    chunk_t = chunk_tm % n_t

    # classify chunks
    full = (codes == _UFULL).reshape(n_chunks, R * G).all(1)
    maj_blk = chunk_t.unsqueeze(1) * R + torch.arange(R).unsqueeze(0)  # [E, R]
    mb, cb = maj_blk.unsqueeze(2), cols.unsqueeze(1)  # [E, R, 1], [E, 1, G]
    q_blk, k_blk = (cb, mb) if transposed else (mb, cb)
    expect = torch.where(
        q_blk > k_blk, _UFULL, torch.where(q_blk == k_blk, _UDIAG, _EMPTY)
    )
    expect = torch.where(cb < 0, _EMPTY, expect)
    causal = (codes == expect).reshape(n_chunks, R * G).all(1) & ~full
    kinds = torch.full((n_chunks,), TILE_MASKED, dtype=torch.int64)
    kinds[full] = TILE_FULL
    kinds[causal] = TILE_CAUSAL

    # unique masks of MASKED chunks, materialised from the unit-code table
    tmask = torch.full((n_chunks,), -1, dtype=torch.int64)
    is_m = kinds == TILE_MASKED
    if is_m.any():
        ucodes, cinv = torch.unique(codes[is_m].reshape(-1, R * G), dim=0, return_inverse=True)
        tmask[is_m] = cinv
        table = torch.cat([
            torch.zeros(1, unit, unit, dtype=torch.bool),
            torch.ones(1, unit, unit, dtype=torch.bool),
            torch.ones(unit, unit, dtype=torch.bool).tril().unsqueeze(0),
            umasks,
        ])
        if transposed:
            table = table.transpose(1, 2)
        tm = table[ucodes.reshape(-1, R, G)]  # [T, R, G, u, u]
        masks = tm.permute(0, 1, 3, 2, 4).reshape(-1, tile_major, tile_minor).to(torch.uint8)
    else:
        masks = torch.zeros(1, tile_major, tile_minor, dtype=torch.uint8)

    # order entries of each tile by kind: FULL, then CAUSAL, then MASKED (one loop each)
    order = torch.sort(chunk_tm * 3 + kinds, stable=True).indices
    ptr = ch_start.clone()
    n_full = torch.bincount(chunk_tm[kinds == TILE_FULL], minlength=P * n_t)
    n_causal = torch.bincount(chunk_tm[kinds == TILE_CAUSAL], minlength=P * n_t)
    split = torch.stack([ch_start[:-1] + n_full, ch_start[:-1] + n_full + n_causal], 1)
    idx = torch.arange(P).unsqueeze(1) * n_t + torch.arange(n_t + 1).unsqueeze(0)
    return Tiles(
        n_ctx=n,
        unit=unit,
        tile_major=tile_major,
        tile_minor=tile_minor,
        transposed=transposed,
        ptr=ptr[idx].to(torch.int32).contiguous(),
        split=split.reshape(P, n_t, 2).to(torch.int32).contiguous(),
        cols=cols[order].to(torch.int32).contiguous(),
        kind=kinds[order].to(torch.int32).contiguous(),
        tmask=tmask[order].to(torch.int32).contiguous(),
        masks=masks.contiguous(),
        masks_swapped=masks.transpose(1, 2).contiguous(),
    )


@functools.lru_cache(maxsize=64)
def _tiles_cpu(plan: Plan, tile_major: int, tile_minor: int, transposed: bool) -> Tiles:
    return build_tiles(plan, tile_major, tile_minor, transposed)


@functools.lru_cache(maxsize=64)
def _tiles_dev(plan: Plan, tile_major: int, tile_minor: int, transposed: bool, device: str):
    return _tiles_cpu(plan, tile_major, tile_minor, transposed).to(device)


def tiles_for(plan: Plan, tile_major: int, tile_minor: int, transposed: bool, device) -> Tiles:
    """Cached tile lists of ``plan`` (the CPU plan object from ``plan_for``) on ``device``."""
    return _tiles_dev(plan.to("cpu"), int(tile_major), int(tile_minor), bool(transposed), str(torch.device(device)))
