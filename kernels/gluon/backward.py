"""Backward kernel in Gluon for Hopper (sm_90), warp-specialised: dK, dV, and dQ by TMA reduce-add.

One CTA per (key tile of BLOCK_N = 128 layout positions, batch x head), three partitions:

    producer   1 warp     K, V of the tile once (128-row TMA boxes), then for each step Q and
                          dO (64 query rows: half of a query block of the tile's transposed
                          list) with the step's LSE_BWD and delta rows (64 floats each) into a
                          STAGES-deep ring (q_ready / do_ready by TMA transaction bytes;
                          q_empty / do_empty, two arrivals: both consumers)
    consumer w 4 warps    keys 64 w .. 64 w + 63 of the tile (w = 0: the default partition)

Step i = 2 j + h of a consumer covers queries Q_i = h * 64 .. + 63 of entry e = start + j (the
'MODE' loop of the entry's kind: FULL, CAUSAL, MASKED; one iteration an entry, its two steps
unrolled). With c = scale * LOG2E, the base-2 LSE_BWD (+inf on an empty row, so p = 0 there)
and delta = rowsum(dO * O) of ``rows_of``:

    S^T  = K_w Q_i^T            [64, 64]   (SS wgmma, async)
    dP^T = V_w dO_i^T           [64, 64]   (SS wgmma, async: runs while P^T is computed)
    P^T  = exp2(S^T * c - LSE_BWD_i)       (disallowed pairs -> 0)
    dV_w += P^T dO_i                       (RS wgmma, async)
    dS^T = P^T * (dP^T - delta_i);  dK_w += dS^T Q_i   (RS wgmma, async)
    dS^T -> shared slot h (each consumer its 64 keys); mbarrier ds_ready[h] (2 arrivals)
    consumer h:  dQ_i = (dS^T)^T K     [64, D] over all 128 keys (SS wgmma, A the slot read
                 transposed), stored in shared memory and added into the fp32 dQ by a TMA
                 reduce-add (cp.reduce.async.bulk.tensor), which runs on while the consumer
                 goes on; its slot (two a consumer) is written again two entries later, after
                 a wait for that reduction to have read it

Nothing on a step's path waits on global memory: LSE_BWD and delta come through the ring, and
the next entry's query block index is loaded an entry ahead.

Schedule: step 1's S^T and dP^T are issued right behind step 0's dV, dK (and dQ), so the tensor
cores run them during step 0's dQ wait and store; every product is waited for by the end of
the entry (ptxas serialises the wgmma of a loop with products in flight over its back edge).
Step i frees step i - 1's ring slot once S^T_i is done (the products before it are then done
too). dS^T slot h is written again at the next entry's step h: by the other consumer only after
its ds_ready wait of the step in between, which needs consumer h's arrival there, made after
its dQ_i finished; so two dS^T slots suffice, and no consumer runs a ds_ready phase ahead.
dK *= scale at the end; the host scales dQ (and casts it) after the launch.

Limits: 16-bit q, k, v contiguous [B, H, N, D], D = 64 (at 128 the accumulators spill); layout
block 128, no token permutation (as the forward). Memory: delta and LSE_BWD (fp32 [B, H, N])
and the fp32 dQ (B H N D); dQ's summation order depends on scheduling.
"""
from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton._C.libtriton import ir
from triton.experimental.gluon.language._core import builtin
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait,
)

from ..triton.backward import rows_of
from .forward import (
    BLOCK_N, CONSUMER_REGS, CONSUMER_WARPS, LOG2E, MAX_REGS, PRODUCER_REGS, PRODUCER_WARPS,
    _barriers, _tile_range, smem_layout,
)

HEAD_DIMS = (64,)  # what it builds without spills (NOTES.md); BLOCK_N: keys per CTA
BLOCK_M = gl.constexpr(128)  # queries per tile-list entry (one layout block)
STEP_M = gl.constexpr(64)  # queries per step: an entry is two steps
WG_KEYS = gl.constexpr(64)  # keys per consumer
STAGES = 3  # Q / dO steps in flight (NOTES.md: 3 against 2, measured)


@builtin
def _tma_reduce_add(tensor_desc, coord, src, _semantic=None):
    """Global box at ``coord`` += shared ``src`` by TMA (cp.reduce.async.bulk.tensor .add),
    asynchronous: ``tma.store_wait`` waits for it to have read ``src``. (Gluon 3.6 wraps the
    TMA copies, not this reduction; the op is its builder's.)"""
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle,
                                              coord, src.handle)


@gluon.jit
def _producer(kd, vd, qd, dod, lsed, deltad, k_smem, v_smem, q_smem, do_smem, lse_smem,
              delta_smem, kv_bar, q_ready, do_ready, q_empty, do_empty, head_pattern, ptr, split,
              cols, N, H, n_t, STAGES: gl.constexpr):
    t, bh, start, _, _, end = _tile_range(head_pattern, ptr, split, N, H, n_t)
    row0 = bh * N
    mbarrier.expect(kv_bar, kd.block_type.nbytes + vd.block_type.nbytes)
    tma.async_copy_global_to_shared(kd, [row0 + t * BLOCK_N, 0], kv_bar, k_smem)
    tma.async_copy_global_to_shared(vd, [row0 + t * BLOCK_N, 0], kv_bar, v_smem)
    for i in range(2 * (end - start)):
        s = i % STAGES
        free = ((i // STAGES) & 1) ^ 1
        q0 = row0 + gl.load(cols + start + i // 2) * BLOCK_M + (i % 2) * STEP_M
        mbarrier.wait(q_empty.index(s), free)
        mbarrier.expect(q_ready.index(s), qd.block_type.nbytes + lsed.block_type.nbytes)
        tma.async_copy_global_to_shared(qd, [q0, 0], q_ready.index(s), q_smem.index(s))
        tma.async_copy_global_to_shared(lsed, [q0], q_ready.index(s), lse_smem.index(s))
        mbarrier.wait(do_empty.index(s), free)
        mbarrier.expect(do_ready.index(s), dod.block_type.nbytes + deltad.block_type.nbytes)
        tma.async_copy_global_to_shared(dod, [q0, 0], do_ready.index(s), do_smem.index(s))
        tma.async_copy_global_to_shared(deltad, [q0], do_ready.index(s), delta_smem.index(s))


@gluon.jit
def _mask_t(s, e, r_loc, c_loc, k0, q0, tmask, masks, MODE: gl.constexpr):
    """Scores [keys, queries] of query block e with the disallowed pairs at -inf: CAUSAL keeps
    query position >= key position; MASKED reads the uint8 [keys, queries] tile mask."""
    if MODE == 1:
        s = gl.where(c_loc[None, :] - r_loc[:, None] >= k0 - q0, s, float("-inf"))
    elif MODE == 2:
        off = gl.load(tmask + e).to(gl.int64) * (BLOCK_N * BLOCK_M)
        keep = gl.load(masks + off + r_loc[:, None] * BLOCK_M + (q0 % BLOCK_M) + c_loc[None, :])
        s = gl.where(keep != 0, s, float("-inf"))
    return s


@gluon.jit
def _issue(i, k_w, v_w, q_smem, do_smem, q_ready, do_ready, zero_s, STAGES: gl.constexpr):
    """S^T = K_w Q_i^T and dP^T = V_w dO_i^T of step i, issued (asynchronous)."""
    st = i % STAGES
    ph = (i // STAGES) & 1
    mbarrier.wait(q_ready.index(st), ph)
    s_t = warpgroup_mma(k_w, q_smem.index(st).permute((1, 0)), zero_s, use_acc=False,
                        is_async=True)
    mbarrier.wait(do_ready.index(st), ph)
    dp_t = warpgroup_mma(v_w, do_smem.index(st).permute((1, 0)), zero_s, use_acc=False,
                         is_async=True)
    return s_t, dp_t


@gluon.jit
def _half(j, start, qb, s_t, dp_t, q_smem, do_smem, ds_smem, q_empty, do_empty, ds_ready, dk,
          dv, r_loc, c_loc, k0, lse_smem, delta_smem, tmask, masks, qk_scale2,
          WG: gl.constexpr, HALF: gl.constexpr, STAGES: gl.constexpr, MODE: gl.constexpr,
          a_layout: gl.constexpr):
    """Step i = 2 j + HALF (queries HALF * 64 .. + 63 of entry start + j) up to its dS^T:
    S^T_i and dP^T_i are in flight; issues dV_i and dK_i (left in flight), stores this
    consumer's dS^T half into slot HALF and arrives on ds_ready[HALF]. Returns (dk, dv, q0)."""
    i = 2 * j + HALF
    st = i % STAGES
    e = start + j
    q0 = qb + HALF * STEP_M
    q = q_smem.index(st)
    do = do_smem.index(st)
    s_t = warpgroup_mma_wait(1, deps=[s_t])
    # dV_{i-1} and dK_{i-1} are done too: step i - 1's Q / dO slot is free
    gl.thread_barrier()
    mbarrier.arrive(q_empty.index((i + STAGES - 1) % STAGES), pred=i > 0)
    mbarrier.arrive(do_empty.index((i + STAGES - 1) % STAGES), pred=i > 0)
    s_t = _mask_t(s_t, e, r_loc, c_loc, k0, q0, tmask, masks, MODE)
    lse = lse_smem.index(st).load(c_loc.type.layout)
    p_t = gl.exp2(s_t * qk_scale2 - lse[None, :])
    dv = warpgroup_mma(gl.convert_layout(p_t.to(q.dtype), a_layout), do, dv, is_async=True)
    dp_t = warpgroup_mma_wait(1, deps=[dp_t])
    delta = delta_smem.index(st).load(c_loc.type.layout)
    ds16 = (p_t * (dp_t - delta[None, :])).to(q.dtype)
    ds_smem.index(HALF).slice(WG * WG_KEYS, WG_KEYS).store(ds16)
    fence_async_shared()
    dk = warpgroup_mma(gl.convert_layout(ds16, a_layout), q, dk, is_async=True)
    dv, dk = warpgroup_mma_wait(2, deps=[dv, dk])  # (no wait: both stay in flight)
    gl.thread_barrier()
    mbarrier.arrive(ds_ready.index(HALF))
    return dk, dv, q0


@gluon.jit
def _dq(j, k_smem, ds_smem, ds_ready, zero_o, HALF: gl.constexpr):
    """dQ of step 2 j + HALF over all 128 keys once both dS^T halves are in slot HALF,
    issued (asynchronous): (dS^T)^T K, [64, D]."""
    mbarrier.wait(ds_ready.index(HALF), j & 1)
    return warpgroup_mma(ds_smem.index(HALF).permute((1, 0)), k_smem, zero_o, use_acc=False,
                         is_async=True)


@gluon.jit
def _add_dq(j, dq, q0, row0, dqd, dq_smem, WG: gl.constexpr):
    """dQ[q0 .. q0 + 63] += dq (fp32): into this consumer's shared slot j % 2 (free once the
    reduction issued two entries ago has read it), then a TMA reduce-add into the global fp32 dQ."""
    tma.store_wait(1)
    gl.thread_barrier()
    slot = dq_smem.index(2 * WG + j % 2)
    slot.store(dq)
    fence_async_shared()
    gl.thread_barrier()
    _tma_reduce_add(dqd, [row0 + q0, 0], slot)


@gluon.jit
def _entry(j, start, end, qb, k_w, v_w, k_smem, q_smem, do_smem, ds_smem, q_ready, do_ready,
           q_empty, do_empty, ds_ready, dk, dv, zero_s, zero_o, r_loc, c_loc, k0, dqd, dq_smem,
           row0, lse_smem, delta_smem, cols, tmask, masks, qk_scale2, WG: gl.constexpr,
           HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, MODE: gl.constexpr,
           a_layout: gl.constexpr):
    """Entry start + j: its two 64-query steps; step 1's S^T and dP^T are issued behind step
    0's dV, dK (and dQ), before step 0's dQ wait and store. Consumer h computes step h's dQ.
    Nothing is in flight across iterations (ptxas serialises every wgmma of a loop whose
    products stay in flight over its back edge). Returns (dk, dv, the next entry's first query
    row, loaded an entry ahead)."""
    # the next entry's query block, loaded an entry ahead (its latency off the steps' path)
    qb_next = gl.load(cols + gl.minimum(start + j + 1, end - 1)) * BLOCK_M
    s_t, dp_t = _issue(2 * j, k_w, v_w, q_smem, do_smem, q_ready, do_ready, zero_s, STAGES)
    dk, dv, q0 = _half(j, start, qb, s_t, dp_t, q_smem, do_smem, ds_smem, q_empty, do_empty,
                       ds_ready, dk, dv, r_loc, c_loc, k0, lse_smem, delta_smem, tmask,
                       masks, qk_scale2, WG, 0, STAGES, MODE, a_layout)
    if WG == 0:
        dq = _dq(j, k_smem, ds_smem, ds_ready, zero_o, 0)
        s_t, dp_t = _issue(2 * j + 1, k_w, v_w, q_smem, do_smem, q_ready, do_ready, zero_s,
                           STAGES)
        dq = warpgroup_mma_wait(2, deps=[dq])
        _add_dq(j, dq, q0, row0, dqd, dq_smem, WG)
    else:
        s_t, dp_t = _issue(2 * j + 1, k_w, v_w, q_smem, do_smem, q_ready, do_ready, zero_s,
                           STAGES)
    dk, dv, q0 = _half(j, start, qb, s_t, dp_t, q_smem, do_smem, ds_smem, q_empty, do_empty,
                       ds_ready, dk, dv, r_loc, c_loc, k0, lse_smem, delta_smem, tmask,
                       masks, qk_scale2, WG, 1, STAGES, MODE, a_layout)
    if WG == 1:
        dq = _dq(j, k_smem, ds_smem, ds_ready, zero_o, 1)
        dq = warpgroup_mma_wait(0, deps=[dq])
        _add_dq(j, dq, q0, row0, dqd, dq_smem, WG)
    dk, dv = warpgroup_mma_wait(0, deps=[dk, dv])
    return dk, dv, qb_next


@gluon.jit
def _consumer(WG: gl.constexpr, k_smem, v_smem, q_smem, do_smem, ds_smem, dq_smem, lse_smem,
              delta_smem, kv_bar, q_ready, do_ready, q_empty, do_empty, ds_ready, DK, DV, dqd,
              head_pattern, ptr, split, cols, tmask, masks, qk_scale2, scale, N, H, n_t,
              HEAD_DIM: gl.constexpr, STAGES: gl.constexpr):
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[CONSUMER_WARPS, 1], instr_shape=[16, STEP_M, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[CONSUMER_WARPS, 1], instr_shape=[16, HEAD_DIM, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    t, bh, start, end_full, end_causal, end = _tile_range(head_pattern, ptr, split, N, H, n_t)
    k_w = k_smem.slice(WG * WG_KEYS, WG_KEYS)
    v_w = v_smem.slice(WG * WG_KEYS, WG_KEYS)
    r_loc = WG * WG_KEYS + gl.arange(0, WG_KEYS, layout=gl.SliceLayout(1, s_layout))
    c_loc = gl.arange(0, STEP_M, layout=gl.SliceLayout(0, s_layout))
    k0 = t * BLOCK_N
    row0 = bh * N
    dk = gl.zeros([WG_KEYS, HEAD_DIM], gl.float32, o_layout)
    dv = gl.zeros([WG_KEYS, HEAD_DIM], gl.float32, o_layout)
    zero_s = gl.zeros([WG_KEYS, STEP_M], gl.float32, s_layout)
    zero_o = gl.zeros([WG_KEYS, HEAD_DIM], gl.float32, o_layout)
    qb = gl.load(cols + start, mask=start < end, other=0) * BLOCK_M
    mbarrier.wait(kv_bar, 0)
    for j in range(0, end_full - start):
        dk, dv, qb = _entry(j, start, end, qb, k_w, v_w, k_smem, q_smem, do_smem, ds_smem,
                            q_ready, do_ready, q_empty, do_empty, ds_ready, dk, dv, zero_s, zero_o,
                            r_loc, c_loc, k0, dqd, dq_smem, row0, lse_smem, delta_smem, cols,
                            tmask, masks, qk_scale2, WG, HEAD_DIM, STAGES, 0, a_layout)
    for j in range(end_full - start, end_causal - start):
        dk, dv, qb = _entry(j, start, end, qb, k_w, v_w, k_smem, q_smem, do_smem, ds_smem,
                            q_ready, do_ready, q_empty, do_empty, ds_ready, dk, dv, zero_s, zero_o,
                            r_loc, c_loc, k0, dqd, dq_smem, row0, lse_smem, delta_smem, cols,
                            tmask, masks, qk_scale2, WG, HEAD_DIM, STAGES, 1, a_layout)
    for j in range(end_causal - start, end - start):
        dk, dv, qb = _entry(j, start, end, qb, k_w, v_w, k_smem, q_smem, do_smem, ds_smem,
                            q_ready, do_ready, q_empty, do_empty, ds_ready, dk, dv, zero_s, zero_o,
                            r_loc, c_loc, k0, dqd, dq_smem, row0, lse_smem, delta_smem, cols,
                            tmask, masks, qk_scale2, WG, HEAD_DIM, STAGES, 2, a_layout)
    tma.store_wait(0)  # the dQ reductions have read their shared slots
    ro = gl.arange(0, WG_KEYS, layout=gl.SliceLayout(1, o_layout))
    d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    rows = bh.to(gl.int64) * N + k0 + WG * WG_KEYS + ro
    off = rows[:, None] * HEAD_DIM + d[None, :]
    gl.store(DK + off, (dk * scale).to(DK.dtype.element_ty))
    gl.store(DV + off, dv.to(DV.dtype.element_ty))


@gluon.jit
def _bwd_kernel(kd, vd, qd, dod, lsed, deltad, dqd, DK, DV, head_pattern, ptr, split, cols,
                tmask, masks, qk_scale2, scale, N, H, n_t, HEAD_DIM: gl.constexpr,
                STAGES: gl.constexpr):
    dtype: gl.constexpr = qd.dtype
    k_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_DIM], kd.layout)
    v_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, HEAD_DIM], vd.layout)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES, STEP_M, HEAD_DIM], qd.layout)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES, STEP_M, HEAD_DIM], dod.layout)
    lse_smem = gl.allocate_shared_memory(gl.float32, [STAGES, STEP_M], lsed.layout)
    delta_smem = gl.allocate_shared_memory(gl.float32, [STAGES, STEP_M], deltad.layout)
    ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, STEP_M], dtype)
    ds_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, STEP_M], ds_layout)
    dq_smem = gl.allocate_shared_memory(gl.float32, [4, STEP_M, HEAD_DIM], dqd.layout)
    kv_bar, q_ready, do_ready, q_empty, do_empty, ds_ready = _barriers(STAGES, 2)
    gl.warp_specialize([
        (_consumer, (0, k_smem, v_smem, q_smem, do_smem, ds_smem, dq_smem, lse_smem, delta_smem,
                     kv_bar, q_ready, do_ready, q_empty, do_empty, ds_ready, DK, DV, dqd,
                     head_pattern, ptr, split, cols, tmask, masks, qk_scale2, scale, N, H, n_t,
                     HEAD_DIM, STAGES)),
        (_consumer, (1, k_smem, v_smem, q_smem, do_smem, ds_smem, dq_smem, lse_smem, delta_smem,
                     kv_bar, q_ready, do_ready, q_empty, do_empty, ds_ready, DK, DV, dqd,
                     head_pattern, ptr, split, cols, tmask, masks, qk_scale2, scale, N, H, n_t,
                     HEAD_DIM, STAGES)),
        (_producer, (kd, vd, qd, dod, lsed, deltad, k_smem, v_smem, q_smem, do_smem, lse_smem,
                     delta_smem, kv_bar, q_ready, do_ready, q_empty, do_empty, head_pattern,
                     ptr, split, cols, N, H, n_t, STAGES)),
    ], [CONSUMER_WARPS, PRODUCER_WARPS], [CONSUMER_REGS, PRODUCER_REGS])


def backward(do, q, k, v, out, lse2, plan, tiles_k, scale: float, stages: int = STAGES):
    """(dq, dk, dv) from the forward's output and base-2 log-sum-exp ``lse2`` (fp32 [B, H, N]).
    do, q, k, v, out: contiguous 16-bit [B, H, N, D] on the GPU; ``plan``: the device plan;
    ``tiles_k``: its 128 x 128 transposed (key-major) tile lists on the same device."""
    if (tiles_k.tile_major, tiles_k.tile_minor, tiles_k.transposed) != (128, 128, True):
        raise ValueError("the gluon backward walks 128 x 128 transposed tile lists")
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    B, H, N, D = q.shape
    delta, lse_bwd = rows_of(out, do, lse2)
    dq = torch.zeros((B, H, N, D), device=q.device, dtype=torch.float32)
    dk, dv = torch.empty_like(q), torch.empty_like(q)
    rows = B * H * N
    descs = [TensorDescriptor.from_tensor(t.view(rows, D), [r, D], smem_layout(r, D, t.dtype))
             for t, r in ((k, 128), (v, 128), (q, 64), (do, 64))]
    row_layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=1)
    descs += [TensorDescriptor.from_tensor(t.view(rows), [64], row_layout)
              for t in (lse_bwd, delta)]
    descs.append(TensorDescriptor.from_tensor(
        dq.view(rows, D), [64, D], gl.NVMMASharedLayout.get_default_for([64, D], gl.float32)))
    n_t = tiles_k.n_tiles
    _bwd_kernel[(n_t, B * H)](
        *descs, dk, dv, plan.head_pattern, tiles_k.ptr, tiles_k.split,
        tiles_k.cols, tiles_k.tmask, tiles_k.masks, scale * LOG2E, scale, N, H, n_t,
        HEAD_DIM=D, STAGES=stages, num_warps=CONSUMER_WARPS.value, maxnreg=MAX_REGS)
    return (dq * scale).to(q.dtype), dk, dv
