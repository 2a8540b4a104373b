"""Triton helpers shared by the forward and backward kernels: the prologue of a program (its
major tile, pattern and permutation) and its tile-list bounds, token gathers through the
strided permutation, the columns of one tile of work, its mask, named constants."""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # exp(x) = exp2(x * LOG2E): the kernels work in base 2


@triton.jit
def to_tokens(pos, perm_ptr, pp, N, HAS_PERM: tl.constexpr):
    """Original token index of layout positions ``pos`` (pattern's permutation row ``pp``,
    -1 = identity). Positions must be in range (callers clamp pads to 0)."""
    if HAS_PERM:
        tok = tl.load(perm_ptr + tl.maximum(pp, 0).to(tl.int64) * N + pos)
        tok = tl.where(pp >= 0, tok, pos)
    else:
        tok = pos
    return tok


@triton.jit
def tile_prologue(head_pattern, pattern_perm, perm, N, H, HEAD_DIM: tl.constexpr,
                  TILE: tl.constexpr, HAS_PERM: tl.constexpr):
    """What every tile kernel starts from. Program (t, bh) owns major tile t (TILE layout
    positions) of batch x head bh; its head's pattern ``pat`` (``head_pattern``) selects the
    tile lists and the permutation row ``pp`` (-1 = identity; ``pattern_perm``). Returns
    (t, bh, pat, pp, rbase, base, d, pos, tok): ``rbase`` / ``base`` the int64 offsets of the
    head in [B, H, N] / [B, H, N, HEAD_DIM] tensors, ``d`` = arange(HEAD_DIM), ``pos`` [TILE]
    the tile's layout positions, ``tok`` [TILE] their original tokens (int64)."""
    t = tl.program_id(0)
    bh = tl.program_id(1)
    pat = tl.load(head_pattern + bh % H)
    pp = -1
    if HAS_PERM:
        pp = tl.load(pattern_perm + pat)
    rbase = bh.to(tl.int64) * N
    base = rbase * HEAD_DIM
    d = tl.arange(0, HEAD_DIM)
    pos = t * TILE + tl.arange(0, TILE)
    tok = to_tokens(pos, perm, pp, N, HAS_PERM).to(tl.int64)
    return t, bh, pat, pp, rbase, base, d, pos, tok


@triton.jit
def tile_bounds(ptr, split, pat, t, n_t):
    """(start, end_full, end_causal, end) of major tile t in pattern ``pat``'s tile lists: its
    entries of each MODE (FULL, CAUSAL, MASKED) are ``bounds[MODE] .. bounds[MODE + 1]``
    (tiles.py orders them so). Kernels load these after their own operands: loading them
    inside tile_prologue, before the operands, reorders the sm_90 SASS of 8 of the 17 kernel
    configurations the project's SASS inspection compiles (a TMA forward step 2 instructions
    longer)."""
    return (tl.load(ptr + pat * (n_t + 1) + t), tl.load(split + (pat * n_t + t) * 2),
            tl.load(split + (pat * n_t + t) * 2 + 1), tl.load(ptr + pat * (n_t + 1) + t + 1))


@triton.jit
def load_row_pair(A, B, base, pos, ok, perm, pp, N, HEAD_DIM: tl.constexpr,
                  HAS_PERM: tl.constexpr, MASKED: tl.constexpr):
    """Rows at layout positions ``pos`` [R] of two [N, HEAD_DIM] matrices at offset ``base`` of
    A and B, gathered through the permutation: (A rows, B rows, their original tokens int64
    [R]). MASKED: rows whose ``ok`` is False (pads) read as 0."""
    tok = to_tokens(pos, perm, pp, N, HAS_PERM).to(tl.int64)
    off = base + tok[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    if MASKED:
        a = tl.load(A + off, mask=ok[:, None], other=0.0)
        b = tl.load(B + off, mask=ok[:, None], other=0.0)
    else:
        a = tl.load(A + off)
        b = tl.load(B + off)
    return a, b, tok


@triton.jit
def tile_cols(cols_ptr, e, UNIT: tl.constexpr, G: tl.constexpr, TILE_MINOR: tl.constexpr):
    """Layout positions [TILE_MINOR] of the gathered minor blocks of tile ``e`` and whether each
    is real (False: a pad, position clamped to 0).

    The G block indices are read as G scalar loads and spread with selects: a vector load of
    ``cols[e * G + j // UNIT]`` (repeated addresses) was miscompiled by Triton 3.6's software
    pipeliner on sm_90 (num_stages >= 2 gave wrong columns; measured, see NOTES.md)."""
    j = tl.arange(0, TILE_MINOR)
    if G == 1:
        blk = tl.load(cols_ptr + e)
        pos = blk * UNIT + j
        ok = j < TILE_MINOR  # G == 1 chunks are never padded
    else:
        g_of = j // UNIT
        blk = tl.zeros([TILE_MINOR], tl.int32)
        for g in tl.static_range(G):
            b_g = tl.load(cols_ptr + e * G + g)
            blk = tl.where(g_of == g, b_g, blk)
        ok = blk >= 0
        pos = tl.where(ok, blk * UNIT + j % UNIT, 0)
    return pos, ok


@triton.jit
def apply_mask(
    s, e, tmask_ptr, masks_ptr, row_pos, col_pos, col_ok,
    MODE: tl.constexpr, TRANSPOSED: tl.constexpr, TILE_MAJOR: tl.constexpr,
    TILE_MINOR: tl.constexpr, SWAP: tl.constexpr,
):
    """Scores ``s`` of tile ``e`` with disallowed pairs set to -inf. ``s`` is [TILE_MAJOR,
    TILE_MINOR] (``row_pos`` the major positions, ``col_pos`` / ``col_ok`` the minor ones), or
    [TILE_MINOR, TILE_MAJOR] with SWAP. TRANSPOSED: the major positions are keys (dK/dV tiles).
    MODE (constexpr, one kernel loop per kind): FULL (0) returns ``s`` untouched; CAUSAL (1)
    compares positions (query >= key, layout order; pads masked); MASKED (2) reads the tile's
    uint8 [TILE_MAJOR, TILE_MINOR] mask from the table (with SWAP, the table of the same masks
    stored [TILE_MINOR, TILE_MAJOR], Tiles.masks_swapped: read row by row as without SWAP; with
    a column-wise read of the [TILE_MAJOR, TILE_MINOR] table instead, the compiled 32 x 128
    16-bit dK/dV gave wrong dK on a layout with MASKED tiles: kernels/triton/NOTES.md)."""
    if MODE == 1:
        if SWAP:
            major = row_pos[None, :]
            minor = col_pos[:, None]
            ok = col_ok[:, None]
        else:
            major = row_pos[:, None]
            minor = col_pos[None, :]
            ok = col_ok[None, :]
        if TRANSPOSED:
            s = tl.where((minor >= major) & ok, s, float("-inf"))
        else:
            s = tl.where((major >= minor) & ok, s, float("-inf"))
    elif MODE == 2:
        r = tl.arange(0, TILE_MAJOR)
        c = tl.arange(0, TILE_MINOR)
        off = tl.load(tmask_ptr + e).to(tl.int64) * (TILE_MAJOR * TILE_MINOR)
        if SWAP:
            m = tl.load(masks_ptr + off + c[:, None] * TILE_MAJOR + r[None, :])
        else:
            m = tl.load(masks_ptr + off + r[:, None] * TILE_MINOR + c[None, :])
        s = tl.where(m != 0, s, float("-inf"))
    return s
