"""Forward kernel: fused block-sparse flash attention over the tile lists of ``tiles.py``.

One program per (query tile of BLOCK_M layout positions, batch x head). In pseudocode:

    rows   = tile * BLOCK_M + arange(BLOCK_M)          layout positions
    tok    = perm[rows] (the strided transpose, folded in; identity without one)
    q      = Q[b, h, tok]                               [BLOCK_M, D]
    m, l, acc = -inf, 0, 0                              fp32, base-2 log domain
    for each FULL tile e, then each CAUSAL, then each MASKED one (three constexpr-specialised
    loops: FULL tiles carry no masking code at all):
        cols = gathered key positions of e (G layout blocks of `unit` tokens), ktok = perm[cols]
        s    = q @ K[ktok]^T                            [BLOCK_M, BLOCK_N], unscaled
        s    = where(mask_e, s, -inf)                   (non-FULL tiles only)
        m'   = max(m, rowmax(s) * c);  p = exp2(s * c - m');  alpha = exp2(m - m')
               (c = scale * LOG2E > 0, so s * c - m' is one FFMA a score; m' = -inf -> 0)
        l    = alpha l + rowsum(p);  acc = alpha acc + p @ V[ktok];  m = m'
    O[b, h, tok] = acc / l      (l = 0: an empty row -> zeros)
    LSE2[b, h, tok] = m + log2(l)   (base 2; -inf on an empty row), kept for the backward

Limits: D in {32, 64, 128}; q, k, v contiguous [B, H, N, D]; BLOCK_M divides N; scale > 0.
Memory: O and LSE2 (fp32, B*H*N*4 bytes) only; nothing N x N.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpret
from .common import LOG2E, apply_mask, load_row_pair, tile_bounds, tile_cols, tile_prologue

interpret.apply()


@triton.jit
def _fwd_tile(
    q, m_i, l_i, acc, e, K, V, KD, VD, base, row0, rows, cols, tmask, masks, perm, pp, N,
    qk_scale2, MODE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, UNIT: tl.constexpr, G: tl.constexpr, HAS_PERM: tl.constexpr,
    IN_PREC: tl.constexpr, TMA: tl.constexpr,
):
    """One key tile of the online softmax; MODE: 0 FULL, 1 CAUSAL, 2 MASKED (constexpr).
    TMA: K / V come as one contiguous [BLOCK_N, D] box each through the tensor descriptors KD,
    VD over [B * H * N, D] (G = 1, no permutation: the tile's keys are the rows from
    row0 + cols[e] * UNIT); otherwise gathered row by row."""
    cpos, ok = tile_cols(cols, e, UNIT, G, BLOCK_N)
    if TMA:
        k0 = tl.load(cols + e) * UNIT
        k = KD.load([row0 + k0, 0])
        v = VD.load([row0 + k0, 0])
    else:
        k, v, _ = load_row_pair(K, V, base, cpos, ok, perm, pp, N, HEAD_DIM, HAS_PERM, MODE != 0)
    s = tl.dot(q, tl.trans(k), input_precision=IN_PREC)  # unscaled: the scale rides the FFMA
    s = apply_mask(s, e, tmask, masks, rows, cpos, ok, MODE, False, BLOCK_M, BLOCK_N, False)
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale2)  # max commutes with scale > 0
    if MODE == 0:
        m_use = m_new
    else:
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
    p = tl.math.exp2(s * qk_scale2 - m_use[:, None])  # one FFMA per score, then MUFU.EX2
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=IN_PREC)
    return m_new, l_i, acc


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE2, O_PREV, LSE_PREV, QD, KD, VD,
    head_pattern, pattern_perm, perm,
    ptr, split, cols, tmask, masks,
    qk_scale2, N, H, n_t,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UNIT: tl.constexpr, G: tl.constexpr, HAS_PERM: tl.constexpr, IN_PREC: tl.constexpr,
    MERGE: tl.constexpr, TMA: tl.constexpr,
):
    t, bh, pat, pp, rbase, base, d, rows, rtok = tile_prologue(
        head_pattern, pattern_perm, perm, N, H, HEAD_DIM, BLOCK_M, HAS_PERM)
    row0 = bh * N  # the head's first row in [B * H * N, D] (TMA coordinates)
    if TMA:
        q = QD.load([row0 + t * BLOCK_M, 0])
    else:
        q = tl.load(Q + base + rtok[:, None] * HEAD_DIM + d[None, :])

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    bounds = tile_bounds(ptr, split, pat, t, n_t)
    for MODE in tl.static_range(3):  # FULL, CAUSAL, MASKED tiles: one specialised loop each
        for e in range(bounds[MODE], bounds[MODE + 1]):
            m_i, l_i, acc = _fwd_tile(q, m_i, l_i, acc, e, K, V, KD, VD, base, row0, rows,
                                      cols, tmask, masks, perm, pp, N, qk_scale2, MODE,
                                      HEAD_DIM, BLOCK_M, BLOCK_N, UNIT, G, HAS_PERM, IN_PREC,
                                      TMA)

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    if MERGE:  # fold in an earlier disjoint part's (O_PREV fp32, LSE_PREV): see compose.py
        lse_p = tl.load(LSE_PREV + rbase + rtok)
        o_p = tl.load(O_PREV + base + rtok[:, None] * HEAD_DIM + d[None, :])
        mx = tl.maximum(lse_p, lse2)
        mx = tl.where(mx == float("-inf"), 0.0, mx)
        w_p = tl.math.exp2(lse_p - mx)
        w_c = tl.math.exp2(lse2 - mx)
        tot = w_p + w_c
        none = tot == 0.0
        tot = tl.where(none, 1.0, tot)
        out = (o_p * w_p[:, None] + out * w_c[:, None]) / tot[:, None]
        lse2 = tl.where(none, float("-inf"), mx + tl.math.log2(tot))
    tl.store(O + base + rtok[:, None] * HEAD_DIM + d[None, :], out.to(O.dtype.element_ty))
    tl.store(LSE2 + rbase + rtok, lse2)


def fwd_loads_error(loads: str, plan, tiles, dtype: torch.dtype) -> str | None:
    """Why the forward load variant ``loads`` (KernelConfig.fwd_loads) cannot run these
    forward tiles; None when it can. The TMA variants load each key tile as one box of
    consecutive rows, so the tile must be one unpermuted layout block (or part of one)."""
    if loads == "gather":
        return None
    if dtype == torch.float32:
        return f"fwd_loads={loads!r} is for float16 / bfloat16 inputs: use fwd_loads='gather'"
    if plan.perm is not None:
        return (f"fwd_loads={loads!r} needs contiguous key rows, but this layout permutes tokens "
                "(the strided transpose): use fwd_loads='gather'")
    if tiles.tile_minor != tiles.unit:
        return (f"fwd_loads={loads!r} needs each key tile inside one layout block, but "
                f"BLOCK_N={tiles.tile_minor} gathers blocks of {tiles.unit}: use BLOCK_N <= "
                f"{tiles.unit} or fwd_loads='gather'")
    return None


def _descriptors(q, k, v, tiles):
    """TMA descriptors of q, k, v viewed as [B * H * N, D], boxes of one tile's rows."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    D = q.shape[-1]
    rows = q.numel() // D
    qd = TensorDescriptor.from_tensor(q.view(rows, D), [tiles.tile_major, D])
    kd = TensorDescriptor.from_tensor(k.view(rows, D), [tiles.tile_minor, D])
    vd = TensorDescriptor.from_tensor(v.view(rows, D), [tiles.tile_minor, D])
    return qd, kd, vd


def forward(q, k, v, plan, tiles, scale: float, cfg, out_dtype=None, prev=None):
    """Launch the forward kernel. q, k, v: contiguous [B, H, N, D]; ``plan``: the device plan;
    ``tiles``: forward-orientation Tiles on the same device; ``cfg``: a KernelConfig.
    ``out_dtype``: the output's dtype (default q's; fp32 for a first part to be merged);
    ``prev``: (o_prev fp32 [B, H, N, D], lse2_prev) of a disjoint earlier part to merge with.
    Returns (out [B, H, N, D], lse2 fp32 [B, H, N], base-2 log-sum-exp, -inf on empty rows)."""
    B, H, N, D = q.shape
    if not scale > 0:  # the kernel takes the row max before scaling
        raise ValueError(f"scale={scale} must be positive (stbench.attention checks this)")
    out = torch.empty(q.shape, device=q.device, dtype=out_dtype or q.dtype)
    lse2 = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    o_prev, lse_prev = prev if prev is not None else (out, lse2)
    n_t = tiles.n_tiles
    has_perm = plan.perm is not None
    perm = plan.perm if has_perm else plan.head_pattern  # any int32 tensor when unused
    grid = (n_t, B * H)
    loads = cfg.fwd_loads
    err = fwd_loads_error(loads, plan, tiles, q.dtype)
    if err:
        raise ValueError(err)
    qd, kd, vd = _descriptors(q, k, v, tiles) if loads == "tma" else (None, None, None)
    _fwd_kernel[grid](
        q, k, v, out, lse2, o_prev, lse_prev, qd, kd, vd,
        plan.head_pattern, plan.pattern_perm, perm,
        tiles.ptr, tiles.split, tiles.cols, tiles.tmask, tiles.masks,
        scale * LOG2E, N, H, n_t,
        HEAD_DIM=D, BLOCK_M=tiles.tile_major, BLOCK_N=tiles.tile_minor,
        UNIT=tiles.unit, G=tiles.tile_minor // tiles.unit, HAS_PERM=has_perm,
        IN_PREC=cfg.in_prec(q.dtype), MERGE=prev is not None, TMA=loads == "tma",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse2
