"""Backward kernels: dQ (forward-orientation tiles, and delta) and dK/dV (transposed tiles).

From the saved base-2 log-sum-exp LSE2 the probabilities are recomputed, never stored:

    dQ program, one query tile: delta_i = rowsum(dO_i * O_i) over its rows (fp32, stored
    for the dK/dV kernel; or given, where disjoint parts share one: compose.py), and
    LSE_BWD_i = LSE2_i with an empty row's -inf made +inf (so p = 0 there, never NaN; stored
    for the dK/dV kernel too, which would otherwise redo that select for every score column
    of every tile), then over its key tiles e (FULL first, then masked):
        p  = exp2(q k^T * scale * LOG2E - LSE_BWD)   (masked -> 0)
        dp = dO v^T;  ds = p * (dp - delta);  dQ += ds @ k;       dQ *= scale
    dK/dV program, one key tile; over its (gathered) query tiles e:
        p^T  = exp2(k q^T * scale * LOG2E - LSE_BWD^T);   dV += p^T @ dO
        dp^T = v dO^T;  ds^T = p^T * (dp^T - delta^T); dK += ds^T @ q;   dK *= scale
    or, transposed (KT: KernelConfig.dkv_transposed_for; by default 16-bit key tiles < 64),
    the same sums held as dK^T, dV^T [D, key tile]:
        p = exp2(q k^T * ...);  dV^T += dO^T @ p;  ds = p * (dO v^T - delta);  dK^T += q^T @ ds

Each output row is written by exactly one program: deterministic, no atomics. With
``dq_atomic`` (KernelConfig) there is no dQ program: the dK/dV program also adds
ds @ k ([query tile, D], from the ds^T it holds) into an fp32 dQ by atomic adds, after one
launch (``rows_of``) that writes delta and LSE_BWD; dQ's summation order then depends on
scheduling. The strided permutation is folded into every gather and scatter as in the forward.
Memory: delta and LSE_BWD (fp32, 2 * B*H*N*4 bytes) beyond the gradients, and with
``dq_atomic`` the fp32 dQ (B*H*N*D*4 bytes); nothing N x N.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpret
from .common import LOG2E, apply_mask, load_row_pair, tile_bounds, tile_cols, tile_prologue

DELTA_ROWS = 64  # rows per program of the delta preprocess

interpret.apply()


@triton.jit
def _delta_kernel(O, DO, DELTA, LSE2, LSE_BWD, n_rows, HEAD_DIM: tl.constexpr,
                  ROWS: tl.constexpr, WITH_DELTA: tl.constexpr, WITH_LSE: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    ok = r < n_rows
    if WITH_DELTA:
        d = tl.arange(0, HEAD_DIM)
        off = r.to(tl.int64)[:, None] * HEAD_DIM + d[None, :]
        o = tl.load(O + off, mask=ok[:, None], other=0.0).to(tl.float32)
        do = tl.load(DO + off, mask=ok[:, None], other=0.0).to(tl.float32)
        tl.store(DELTA + r, tl.sum(o * do, 1), mask=ok)
    if WITH_LSE:  # LSE_BWD as the dQ kernel writes it (empty rows: +inf, so p = 0)
        lse = tl.load(LSE2 + r, mask=ok, other=0.0)
        tl.store(LSE_BWD + r, tl.where(lse == float("-inf"), float("inf"), lse), mask=ok)


@triton.jit
def _dq_tile(
    dq, q, do, lse, delta, e, K, V, base, rows, cols, tmask, masks, perm, pp, N, qk_scale2,
    MODE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UNIT: tl.constexpr, G: tl.constexpr, HAS_PERM: tl.constexpr, IN_PREC: tl.constexpr,
):
    """dQ contribution of one key tile; MODE: 0 FULL, 1 CAUSAL, 2 MASKED (constexpr)."""
    cpos, ok = tile_cols(cols, e, UNIT, G, BLOCK_N)
    k, v, _ = load_row_pair(K, V, base, cpos, ok, perm, pp, N, HEAD_DIM, HAS_PERM, MODE != 0)
    s = tl.dot(q, tl.trans(k), input_precision=IN_PREC) * qk_scale2
    s = apply_mask(s, e, tmask, masks, rows, cpos, ok, MODE, False, BLOCK_M, BLOCK_N, False)
    p = tl.math.exp2(s - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=IN_PREC)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=IN_PREC)


@triton.jit
def _dq_kernel(
    Q, K, V, O, DO, LSE2, DELTA, LSE_BWD, DQ, DQ_PREV,
    head_pattern, pattern_perm, perm,
    ptr, split, cols, tmask, masks,
    qk_scale2, scale, N, H, n_t,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UNIT: tl.constexpr, G: tl.constexpr, HAS_PERM: tl.constexpr, IN_PREC: tl.constexpr,
    ACCUM: tl.constexpr, DELTA_HERE: tl.constexpr,
):
    t, bh, pat, pp, rbase, base, d, rows, rtok = tile_prologue(
        head_pattern, pattern_perm, perm, N, H, HEAD_DIM, BLOCK_M, HAS_PERM)
    q = tl.load(Q + base + rtok[:, None] * HEAD_DIM + d[None, :])
    do = tl.load(DO + base + rtok[:, None] * HEAD_DIM + d[None, :])
    lse = tl.load(LSE2 + rbase + rtok)
    lse = tl.where(lse == float("-inf"), float("inf"), lse)  # empty rows: p = 0, never NaN
    tl.store(LSE_BWD + rbase + rtok, lse)  # as the dK/dV kernel reads it, tile by tile
    if DELTA_HERE:  # this tile's rows of delta = rowsum(dO * O), kept for the dK/dV kernel
        o = tl.load(O + base + rtok[:, None] * HEAD_DIM + d[None, :])
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(DELTA + rbase + rtok, delta)
    else:
        delta = tl.load(DELTA + rbase + rtok)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    bounds = tile_bounds(ptr, split, pat, t, n_t)
    for MODE in tl.static_range(3):  # FULL, CAUSAL, MASKED tiles: one specialised loop each
        for e in range(bounds[MODE], bounds[MODE + 1]):
            dq = _dq_tile(dq, q, do, lse, delta, e, K, V, base, rows, cols, tmask, masks, perm,
                          pp, N, qk_scale2, MODE, HEAD_DIM, BLOCK_M, BLOCK_N, UNIT, G, HAS_PERM,
                          IN_PREC)
    dq = dq * scale
    if ACCUM:  # add an earlier disjoint part's share (fp32): see compose.py
        dq += tl.load(DQ_PREV + base + rtok[:, None] * HEAD_DIM + d[None, :])
    tl.store(DQ + base + rtok[:, None] * HEAD_DIM + d[None, :], dq.to(DQ.dtype.element_ty))


@triton.jit
def _dkdv_tile(
    dk, dv, k, v, e, Q, DO, LSE_BWD, DELTA, DQACC, base, rbase, kpos, cols, tmask, masks, perm,
    pp, N, qk_scale2,
    MODE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    UNIT: tl.constexpr, G: tl.constexpr, HAS_PERM: tl.constexpr, IN_PREC: tl.constexpr,
    KT: tl.constexpr, DQ_ATOMIC: tl.constexpr,
):
    """dK, dV contributions of one gathered query tile; MODE as in _dq_tile. KT: dk, dv are
    held transposed, [HEAD_DIM, BLOCK_N], and the scores as [BLOCK_M, BLOCK_N] (queries x
    keys), so every product has BLOCK_M or HEAD_DIM rows, never the (narrow) key tile."""
    qpos, ok = tile_cols(cols, e, UNIT, G, BLOCK_M)
    q, do, qtok = load_row_pair(Q, DO, base, qpos, ok, perm, pp, N, HEAD_DIM, HAS_PERM,
                                MODE != 0)
    if MODE == 0:  # LSE_BWD: +inf on empty rows (the dQ kernel wrote it), so p = 0 there
        lse = tl.load(LSE_BWD + rbase + qtok)
        delta = tl.load(DELTA + rbase + qtok)
    else:
        lse = tl.load(LSE_BWD + rbase + qtok, mask=ok, other=float("inf"))
        delta = tl.load(DELTA + rbase + qtok, mask=ok, other=0.0)
    if KT:
        s = tl.dot(q, tl.trans(k), input_precision=IN_PREC) * qk_scale2  # [BLOCK_M, BLOCK_N]
        s = apply_mask(s, e, tmask, masks, kpos, qpos, ok, MODE, True, BLOCK_N, BLOCK_M, True)
        p = tl.math.exp2(s - lse[:, None])
        dv += tl.dot(tl.trans(do), p.to(do.dtype), input_precision=IN_PREC)
        dp = tl.dot(do, tl.trans(v), input_precision=IN_PREC)
        ds = (p * (dp - delta[:, None])).to(q.dtype)
        dk += tl.dot(tl.trans(q), ds, input_precision=IN_PREC)
        if DQ_ATOMIC:
            _add_dq(DQACC, tl.dot(ds, k, input_precision=IN_PREC), base, qtok, ok, MODE,
                    HEAD_DIM)
    else:
        st = tl.dot(k, tl.trans(q), input_precision=IN_PREC) * qk_scale2
        st = apply_mask(st, e, tmask, masks, kpos, qpos, ok, MODE, True, BLOCK_N, BLOCK_M,
                        False)
        pt = tl.math.exp2(st - lse[None, :])
        dv += tl.dot(pt.to(do.dtype), do, input_precision=IN_PREC)
        dpt = tl.dot(v, tl.trans(do), input_precision=IN_PREC)
        dst = (pt * (dpt - delta[None, :])).to(q.dtype)
        dk += tl.dot(dst, q, input_precision=IN_PREC)
        if DQ_ATOMIC:
            _add_dq(DQACC, tl.dot(tl.trans(dst), k, input_precision=IN_PREC), base, qtok, ok,
                    MODE, HEAD_DIM)
    return dk, dv


@triton.jit
def _add_dq(DQACC, dq, base, qtok, ok, MODE: tl.constexpr, HEAD_DIM: tl.constexpr):
    """dQ of the tile's query rows += dq ([rows, HEAD_DIM] fp32, unscaled) by atomic adds
    (pads, ``ok`` False, skipped)."""
    off = base + qtok[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    if MODE == 0:
        tl.atomic_add(DQACC + off, dq, sem="relaxed")
    else:
        tl.atomic_add(DQACC + off, dq, mask=ok[:, None], sem="relaxed")


@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, LSE_BWD, DELTA, DK, DV, DK_PREV, DV_PREV, DQACC,
    head_pattern, pattern_perm, perm,
    ptr, split, cols, tmask, masks,
    qk_scale2, scale, N, H, n_t,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    UNIT: tl.constexpr, G: tl.constexpr, HAS_PERM: tl.constexpr, IN_PREC: tl.constexpr,
    ACCUM: tl.constexpr, KT: tl.constexpr, DQ_ATOMIC: tl.constexpr,
):
    # program t: key tile of BLOCK_N positions
    t, bh, pat, pp, rbase, base, d, kpos, ktok = tile_prologue(
        head_pattern, pattern_perm, perm, N, H, HEAD_DIM, BLOCK_N, HAS_PERM)
    k = tl.load(K + base + ktok[:, None] * HEAD_DIM + d[None, :])
    v = tl.load(V + base + ktok[:, None] * HEAD_DIM + d[None, :])
    if KT:  # dK^T, dV^T [HEAD_DIM, BLOCK_N]
        dk = tl.zeros([HEAD_DIM, BLOCK_N], tl.float32)
        dv = tl.zeros([HEAD_DIM, BLOCK_N], tl.float32)
        out = base + ktok[None, :] * HEAD_DIM + d[:, None]
    else:
        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        out = base + ktok[:, None] * HEAD_DIM + d[None, :]
    bounds = tile_bounds(ptr, split, pat, t, n_t)
    for MODE in tl.static_range(3):  # FULL, CAUSAL, MASKED tiles: one specialised loop each
        for e in range(bounds[MODE], bounds[MODE + 1]):
            dk, dv = _dkdv_tile(dk, dv, k, v, e, Q, DO, LSE_BWD, DELTA, DQACC, base, rbase,
                                kpos, cols, tmask, masks, perm, pp, N, qk_scale2, MODE,
                                HEAD_DIM, BLOCK_N, BLOCK_M, UNIT, G, HAS_PERM, IN_PREC, KT,
                                DQ_ATOMIC)
    dk = dk * scale
    if ACCUM:
        dk += tl.load(DK_PREV + out)
        dv += tl.load(DV_PREV + out)
    tl.store(DK + out, dk.to(DK.dtype.element_ty))
    tl.store(DV + out, dv.to(DV.dtype.element_ty))


def delta_of(out, do) -> torch.Tensor:
    """delta = rowsum(dO * O), fp32 [B, H, N] (out, do contiguous [B, H, N, D])."""
    return rows_of(out, do)[0]


def rows_of(out, do, lse2=None, delta=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(delta, LSE_BWD), fp32 [B, H, N] each, in one launch: delta = rowsum(dO * O) (unless
    given: ``delta_of``'s, shared by the parts of a split layout) and, when ``lse2`` is given,
    lse2 with an empty row's -inf made +inf (what the dQ kernel stores for the dK/dV kernel;
    else None)."""
    B, H, N, D = out.shape
    with_delta = delta is None
    if with_delta:
        delta = torch.empty((B, H, N), device=out.device, dtype=torch.float32)
    lse_bwd = None if lse2 is None else torch.empty_like(lse2)
    n_rows = B * H * N
    _delta_kernel[(triton.cdiv(n_rows, DELTA_ROWS),)](  # unused pointers: delta
        out, do, delta, delta if lse2 is None else lse2, delta if lse_bwd is None else lse_bwd,
        n_rows, HEAD_DIM=D, ROWS=DELTA_ROWS, WITH_DELTA=with_delta, WITH_LSE=lse2 is not None
    )
    return delta, lse_bwd


def backward(do, q, k, v, out, lse2, plan, tiles_q, tiles_k, scale: float, cfg, delta=None,
             grad_dtype=None, prev=None):
    """Gradients (dq, dk, dv) of the forward. All tensors contiguous [B, H, N, D] (lse2 fp32
    [B, H, N]); ``tiles_q``: forward-orientation tiles (dQ), ``tiles_k``: transposed (dK/dV).
    ``delta``: precomputed rowsum(dO * O) (default: the dQ kernel computes it for its own
    rows and stores it for the dK/dV kernel, launched after it on the same stream: two
    launches, not three); ``grad_dtype``: the gradients' dtype (default q's; fp32 for a first
    part); ``prev``: fp32 (dq, dk, dv) of an earlier disjoint part to add.
    ``cfg.dq_atomic``: no dQ kernel; the dK/dV kernel adds each tile's dS K into an fp32 dQ by
    atomic adds, after one launch that writes delta and LSE_BWD (``rows_of``)."""
    B, H, N, D = q.shape
    gd = grad_dtype or q.dtype
    delta_here = delta is None and not cfg.dq_atomic
    if cfg.dq_atomic:
        delta, lse_bwd = rows_of(out, do, lse2, delta)
        dq = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
    else:
        if delta_here:
            delta = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
        lse_bwd = torch.empty_like(lse2)  # lse2 with +inf on empty rows (from the dQ kernel)
        dq = torch.empty(q.shape, device=q.device, dtype=gd)
    dk = torch.empty(q.shape, device=q.device, dtype=gd)
    dv = torch.empty(q.shape, device=q.device, dtype=gd)
    dq_p, dk_p, dv_p = prev if prev is not None else (dq, dk, dv)
    has_perm = plan.perm is not None
    perm = plan.perm if has_perm else plan.head_pattern
    kt = cfg.dkv_transposed_for(q.dtype)
    common = dict(HAS_PERM=has_perm, IN_PREC=cfg.in_prec(q.dtype), ACCUM=prev is not None,
                  num_warps=cfg.bwd_warps, num_stages=cfg.bwd_stages)
    tq = tiles_q
    if not cfg.dq_atomic:
        _dq_kernel[(tq.n_tiles, B * H)](
            q, k, v, out, do, lse2, delta, lse_bwd, dq, dq_p,
            plan.head_pattern, plan.pattern_perm, perm,
            tq.ptr, tq.split, tq.cols, tq.tmask, tq.masks,
            scale * LOG2E, scale, N, H, tq.n_tiles,
            HEAD_DIM=D, BLOCK_M=tq.tile_major, BLOCK_N=tq.tile_minor,
            UNIT=tq.unit, G=tq.tile_minor // tq.unit, DELTA_HERE=delta_here, **common,
        )
    tk = tiles_k
    _dkdv_kernel[(tk.n_tiles, B * H)](
        q, k, v, do, lse_bwd, delta, dk, dv, dk_p, dv_p, dq,
        plan.head_pattern, plan.pattern_perm, perm,
        tk.ptr, tk.split, tk.cols, tk.tmask,
        tk.masks_swapped if kt else tk.masks,
        scale * LOG2E, scale, N, H, tk.n_tiles,
        HEAD_DIM=D, BLOCK_N=tk.tile_major, BLOCK_M=tk.tile_minor,
        UNIT=tk.unit, G=tk.tile_minor // tk.unit, KT=kt, DQ_ATOMIC=cfg.dq_atomic, **common,
    )
    if cfg.dq_atomic:
        dq = dq.mul_(scale)
        if prev is not None:
            dq += prev[0]
        dq = dq.to(gd)
    return dq, dk, dv
