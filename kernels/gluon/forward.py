"""Forward kernel in Gluon for Hopper (sm_90): block-sparse flash attention, warp-specialised.

One CTA per (query tile of BLOCK_M = 128 layout positions, batch x head), three partitions
(two consumers; three with ``rows=192``, below):

    producer   1 warp     Q (two 64-row halves) once, then K_e, V_e of each tile of work e of
                          the tile's list by TMA into a STAGES-deep ring of shared-memory slots;
                          slot s is refilled after both consumers released it (mbarriers
                          k_empty[s] / v_empty[s], 2 arrivals) and announced by k_ready[s] /
                          v_ready[s] (TMA transaction counts)
    consumer 0 4 warps    query rows   0..63 of the tile (the default partition)
    consumer 1 4 warps    query rows 64..127 (a worker partition, the same code)

Each consumer runs the online softmax with asynchronous wgmma, the intra-warpgroup overlap of
FlashAttention-3: step i issues S_i = Q K_i^T and O += P_{i-1} V_{i-1} together, waits for S_i
alone, computes P_i (its softmax) while the tensor cores still run P_{i-1} V_{i-1}, then waits
for that and rescales O. With PINGPONG the two consumers also take turns to issue their
products (mbarriers turn[0], turn[1]), so one's softmax runs under the other's wgmma.

In base 2, with c = scale * LOG2E > 0 and unscaled scores s = q . k:
    m_i = max(m_{i-1}, rowmax(s) * c);  P_i = exp2(s * c - m_i);  alpha_i = exp2(m_{i-1} - m_i)
    l_i = alpha_i l_{i-1} + rowsum(P_i);  O_i = alpha_i O_{i-1} + P_i V_i
    out = O / l (l = 0: an empty row -> 0);  LSE2 = m + log2(l) (-inf on an empty row)
A row with nothing allowed yet keeps m = -inf; its exponents use 0 instead, so P = 0, never NaN.

Tile kinds (the tile lists of ``kernels/triton/tiles.py`` at 128 x 128, ordered FULL, CAUSAL,
MASKED within each query tile, ``split`` marking the boundaries): one branch-free loop per kind
(constexpr), the pipeline carried across them. FULL tiles run no mask code; CAUSAL tiles keep
key position <= query position; MASKED tiles read their uint8 [128, 128] mask.

Three consumers (NUM_WG = 3, config ``rows=192``, D = 64): 192-row CTAs, consumer w on rows
64 w .. 64 w + 63, ping-pong in the order 0, 1, 2. A CTA spans one and a half layout blocks and
walks the union of their lists (union.py): the entries FULL on both sides in the FULL loop, the
rest in one loop where each consumer reads its side's kind at run time (NONE: every score -inf).
Rows past N (the last CTA) are computed (on the head's last Q rows) and not stored.

Limits: q, k, v contiguous [B, H, N, D], 16-bit, D = 64 or 128 (backend.HEAD_DIMS); the layout
block is 128 and unpermuted (TMA loads whole blocks of consecutive rows); scale > 0.
Memory: out and LSE2 (fp32 [B, H, N]); nothing N x N.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait,
)

LOG2E = 1.4426950408889634
# kernel constants (gl.constexpr, so the kernels can read them; ``.value`` on the host)
BLOCK_M = 128  # query rows per CTA: two consumer warpgroups of 64 (wgmma's M a warpgroup); the
# kernels derive it from the Q descriptor's box (64 rows a consumer) and the consumer count
WG_ROWS = 64
BLOCK_N = gl.constexpr(128)  # keys per tile of work: one layout block
CONSUMER_WARPS = gl.constexpr(4)  # one warpgroup
PRODUCER_WARPS = gl.constexpr(1)
# setmaxnreg of the producer (a few scalars) and of consumer 1 (consumer 0 gets the rest of the
# 64K registers): FlashAttention-3's split for two consumers and a producer
PRODUCER_REGS = gl.constexpr(24)
CONSUMER_REGS = gl.constexpr(240)
MAX_REGS = 168  # the kernel's register cap: 12 warps x 32 x 168 <= 64K registers, 1 CTA / SM
# three consumers (192-row CTAs, D = 64): 13 warps; consumers 1 and 2 at CONSUMER3_REGS
CONSUMER3_REGS = gl.constexpr(160)
MAX_REGS3 = 152  # 13 warps x 32 x 152 <= 64K


@gluon.jit
def _tile_range(head_pattern, ptr, split, N, H, n_t):
    """(t, bh, start, end_full, end_causal, end) of this CTA: its query tile t, batch x head bh,
    and the entry range of its tile list with the FULL / CAUSAL / MASKED boundaries."""
    t = gl.program_id(0)
    bh = gl.program_id(1)
    pat = gl.load(head_pattern + bh % H)
    base = pat * (n_t + 1) + t
    start = gl.load(ptr + base)
    end = gl.load(ptr + base + 1)
    end_full = gl.load(split + (pat * n_t + t) * 2)
    end_causal = gl.load(split + (pat * n_t + t) * 2 + 1)
    return t, bh, start, end_full, end_causal, end


@gluon.jit
def _producer(qd, kd, vd, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty, v_empty,
              head_pattern, ptr, split, cols, N, H, n_t, STAGES: gl.constexpr):
    NUM_WG: gl.constexpr = q_smem.shape[0]
    WG_ROWS: gl.constexpr = q_smem.shape[1]
    t, bh, start, _, _, end = _tile_range(head_pattern, ptr, split, N, H, n_t)
    row0 = bh * N  # the head's first row in [B * H * N, D]
    mbarrier.expect(q_bar, NUM_WG * qd.block_type.nbytes)
    for w in gl.static_range(NUM_WG):
        # a consumer past N (the last 192-row CTA) loads the head's last rows: computed, not
        # stored, and never a box outside the tensor
        q_row = gl.minimum((t * NUM_WG + w) * WG_ROWS, N - WG_ROWS)
        tma.async_copy_global_to_shared(qd, [row0 + q_row, 0], q_bar, q_smem.index(w))
    for i in range(end - start):
        s = i % STAGES
        free = ((i // STAGES) & 1) ^ 1  # a fresh barrier passes the wait for phase 1
        key0 = row0 + gl.load(cols + start + i) * BLOCK_N
        mbarrier.wait(k_empty.index(s), free)
        mbarrier.expect(k_ready.index(s), kd.block_type.nbytes)
        tma.async_copy_global_to_shared(kd, [key0, 0], k_ready.index(s), k_smem.index(s))
        mbarrier.wait(v_empty.index(s), free)
        mbarrier.expect(v_ready.index(s), vd.block_type.nbytes)
        tma.async_copy_global_to_shared(vd, [key0, 0], v_ready.index(s), v_smem.index(s))


@gluon.jit
def _release(bar):
    """Every consumer arrives once per use of a slot; the partition's warps first finish their
    reads (mbarrier.arrive is issued by the partition's first thread)."""
    gl.thread_barrier()
    mbarrier.arrive(bar)


@gluon.jit
def _mask_kind(s, e, r_loc, r_off, c_loc, q0, cols, tmask, masks, MODE: gl.constexpr):
    """Scores of tile ``e`` with the disallowed pairs at -inf. The consumer's rows are
    r_off + r_loc of the layout block at position q0 (r_loc: a compile-time arange, r_off: 0
    with two consumers, else a run-time offset). MODE (constexpr): 0 FULL (untouched),
    1 CAUSAL (key position <= query position; the key tile starts at cols[e] * BLOCK_N),
    2 MASKED (those rows of the tile's uint8 [BLOCK_N, BLOCK_N] mask from the table),
    3 NONE (every pair)."""
    if MODE == 1:
        k_off = gl.load(cols + e) * BLOCK_N - q0 - r_off  # key tile start - the first row
        s = gl.where(r_loc[:, None] - c_loc[None, :] >= k_off, s, float("-inf"))
    elif MODE == 2:
        off = gl.load(tmask + e).to(gl.int64) * (BLOCK_N * BLOCK_N) + r_off * BLOCK_N
        keep = gl.load(masks + off + r_loc[:, None] * BLOCK_N + c_loc[None, :])
        s = gl.where(keep != 0, s, float("-inf"))
    elif MODE == 3:
        s = gl.full(s.shape, float("-inf"), gl.float32, s.type.layout)
    return s


@gluon.jit
def _mask_scores(s, e, r_loc, r_off, c_loc, q0, cols, tmask, masks, kinds,
                 MODE: gl.constexpr):
    """_mask_kind at MODE 0-2, or at MODE -1 the kind read at run time from ``kinds[e]`` (the
    192-row lists, union.py: the consumer's side of the entry, NONE included)."""
    if MODE == -1:
        kind = gl.load(kinds + e)
        if kind == 0:
            out = s
        elif kind == 1:
            out = _mask_kind(s, e, r_loc, r_off, c_loc, q0, cols, tmask, masks, 1)
        elif kind == 2:
            out = _mask_kind(s, e, r_loc, r_off, c_loc, q0, cols, tmask, masks, 2)
        else:
            out = _mask_kind(s, e, r_loc, r_off, c_loc, q0, cols, tmask, masks, 3)
    else:
        out = _mask_kind(s, e, r_loc, r_off, c_loc, q0, cols, tmask, masks, MODE)
    return out


@gluon.jit
def _softmax(s, m_i, l_i, qk_scale2):
    """One online-softmax step on unscaled scores ``s``: (P fp32, m, l, alpha)."""
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale2)
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
    p = gl.exp2(s * qk_scale2 - m_use[:, None])
    alpha = gl.exp2(m_i - m_use)
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, m_new, l_i, alpha


@gluon.jit
def _p_operand(p32, p_smem, i, WG: gl.constexpr, P_SMEM: gl.constexpr,
               p_layout: gl.constexpr):
    """P_i (fp32, the accumulator layout) as the A operand of the next P V product: registers
    (the dot-operand layout), or with P_SMEM slot i % 2 of the warpgroup's shared buffer (the
    registers are then free at once; P_{i-1} V_{i-1} may still read the other slot). The
    buffer holds [2 x consumers, rows per warpgroup, BLOCK_N]: slots 2 WG and 2 WG + 1 are
    consumer WG's."""
    if P_SMEM:
        slot = p_smem.index(2 * WG + i % 2)
        slot.store(p32.to(p_smem.dtype))
        fence_async_shared()
        gl.thread_barrier()
        return slot
    else:
        return gl.convert_layout(p32.to(p_smem.dtype), p_layout)


@gluon.jit
def _step(i, start, q, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, turn, p, p_smem,
          acc, m_i, l_i, zero_s, r_loc, r_off, c_loc, q0, cols, tmask, masks, kinds,
          qk_scale2, WG: gl.constexpr, NUM_WG: gl.constexpr, STAGES: gl.constexpr,
          PINGPONG: gl.constexpr, P_SMEM: gl.constexpr, MODE: gl.constexpr,
          p_layout: gl.constexpr):
    """Step i >= 1 of a consumer: issue S_i = Q K_i^T and O += P_{i-1} V_{i-1}, wait for S_i,
    its softmax (tile kind MODE) while P_{i-1} V_{i-1} runs, then wait for that and rescale O.
    ``p``: P_{i-1} as the A operand (see _p_operand). Returns (P_i, O, m, l)."""
    o_layout: gl.constexpr = acc.type.layout
    st = i % STAGES
    prev = (i - 1) % STAGES
    if PINGPONG:  # in turn 0, 1 (, 2); consumer 0 first (a fresh barrier passes phase 1)
        if WG == 0:
            mbarrier.wait(turn.index(0), i & 1)
        else:
            mbarrier.wait(turn.index(WG), (i & 1) ^ 1)
    mbarrier.wait(k_ready.index(st), (i // STAGES) & 1)
    s = warpgroup_mma(q, k_smem.index(st).permute((1, 0)), zero_s, use_acc=False,
                      is_async=True)
    mbarrier.wait(v_ready.index(prev), ((i - 1) // STAGES) & 1)
    acc = warpgroup_mma(p, v_smem.index(prev), acc, is_async=True)
    if PINGPONG:
        mbarrier.arrive(turn.index((WG + 1) % NUM_WG))
    s = warpgroup_mma_wait(1, deps=[s])  # S_i done; P_{i-1} V_{i-1} may still run
    _release(k_empty.index(st))
    s = _mask_scores(s, start + i, r_loc, r_off, c_loc, q0, cols, tmask, masks, kinds, MODE)
    p32, m_i, l_i, alpha = _softmax(s, m_i, l_i, qk_scale2)
    p_next = _p_operand(p32, p_smem, i, WG, P_SMEM, p_layout)
    if P_SMEM:
        acc = warpgroup_mma_wait(0, deps=[acc])
    else:
        acc, p = warpgroup_mma_wait(0, deps=[acc, p])
    _release(v_empty.index(prev))
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
    return p_next, acc, m_i, l_i


@gluon.jit
def _consumer(WG: gl.constexpr, q_smem, k_smem, v_smem, p_smem, q_bar, k_ready, v_ready,
              k_empty, v_empty, turn, O, LSE2, head_pattern, ptr, split, cols, tmask, masks,
              kinds, n_e, qk_scale2, N, H, n_t, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
              PINGPONG: gl.constexpr, P_SMEM: gl.constexpr):
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[CONSUMER_WARPS, 1], instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[CONSUMER_WARPS, 1], instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    rows_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    rows_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    dtype: gl.constexpr = q_smem.dtype
    NUM_WG: gl.constexpr = q_smem.shape[0]
    WG_ROWS: gl.constexpr = q_smem.shape[1]
    # three consumers: 192-row CTAs over the union lists (union.py), the kind read per entry
    UNION: gl.constexpr = NUM_WG == 3
    LAST_MODE: gl.constexpr = -1 if UNION else 2

    t, bh, start, end_full, end_causal, end = _tile_range(head_pattern, ptr, split, N, H, n_t)
    row0 = (t * NUM_WG + WG) * WG_ROWS  # this consumer's first query position
    blk = row0 // BLOCK_N  # its layout block
    q0 = blk * BLOCK_N
    if UNION:  # rows r_off + r_loc of the block; the entries' side: the first block or next
        r_off = row0 - q0
        r_loc = gl.arange(0, WG_ROWS, layout=rows_s)
        side = blk - (t * NUM_WG * WG_ROWS) // BLOCK_N
        kinds = kinds + side * n_e
        tmask = tmask + side * n_e
    else:
        r_off = 0
        r_loc = WG * WG_ROWS + gl.arange(0, WG_ROWS, layout=rows_s)
    c_loc = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    m_i = gl.full([WG_ROWS], float("-inf"), gl.float32, rows_s)
    l_i = gl.zeros([WG_ROWS], gl.float32, rows_s)
    acc = gl.zeros([WG_ROWS, HEAD_DIM], gl.float32, o_layout)
    zero_s = gl.zeros([WG_ROWS, BLOCK_N], gl.float32, s_layout)
    q = q_smem.index(WG)
    mbarrier.wait(q_bar, 0)
    n = end - start
    if n > 0:
        # tile 0: its scores alone (its kind read at run time, once)
        mbarrier.wait(k_ready.index(0), 0)
        s = warpgroup_mma(q, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False,
                          is_async=True)
        s = warpgroup_mma_wait(0, deps=[s])
        _release(k_empty.index(0))
        if start < end_full:
            s = _mask_scores(s, start, r_loc, r_off, c_loc, q0, cols, tmask, masks, kinds, 0)
        elif start < end_causal:
            s = _mask_scores(s, start, r_loc, r_off, c_loc, q0, cols, tmask, masks, kinds, 1)
        else:
            s = _mask_scores(s, start, r_loc, r_off, c_loc, q0, cols, tmask, masks, kinds,
                             LAST_MODE)
        p32, m_i, l_i, _ = _softmax(s, m_i, l_i, qk_scale2)
        p = _p_operand(p32, p_smem, 0, WG, P_SMEM, p_layout)
        # the other tiles, one branch-free loop per kind (the pipeline runs across them)
        for i in range(1, end_full - start):
            p, acc, m_i, l_i = _step(i, start, q, k_smem, v_smem, k_ready, v_ready, k_empty,
                                     v_empty, turn, p, p_smem, acc, m_i, l_i, zero_s, r_loc,
                                     r_off, c_loc, q0, cols, tmask, masks, kinds, qk_scale2, WG,
                                     NUM_WG, STAGES, PINGPONG, P_SMEM, 0, p_layout)
        for i in range(gl.maximum(end_full - start, 1), end_causal - start):
            p, acc, m_i, l_i = _step(i, start, q, k_smem, v_smem, k_ready, v_ready, k_empty,
                                     v_empty, turn, p, p_smem, acc, m_i, l_i, zero_s, r_loc,
                                     r_off, c_loc, q0, cols, tmask, masks, kinds, qk_scale2, WG,
                                     NUM_WG, STAGES, PINGPONG, P_SMEM, 1, p_layout)
        for i in range(gl.maximum(end_causal - start, 1), n):
            p, acc, m_i, l_i = _step(i, start, q, k_smem, v_smem, k_ready, v_ready, k_empty,
                                     v_empty, turn, p, p_smem, acc, m_i, l_i, zero_s, r_loc,
                                     r_off, c_loc, q0, cols, tmask, masks, kinds, qk_scale2, WG,
                                     NUM_WG, STAGES, PINGPONG, P_SMEM, LAST_MODE, p_layout)
        last = (n - 1) % STAGES
        mbarrier.wait(v_ready.index(last), ((n - 1) // STAGES) & 1)
        acc = warpgroup_mma(p, v_smem.index(last), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=[acc])
        _release(v_empty.index(last))

    empty = l_i == 0.0
    lse2 = gl.where(empty, float("-inf"), m_i + gl.log2(gl.where(empty, 1.0, l_i)))
    inv = gl.convert_layout(1.0 / gl.where(empty, 1.0, l_i), rows_o)
    out = (acc * inv[:, None]).to(dtype)
    ro = row0 + gl.arange(0, WG_ROWS, layout=rows_o)
    rs = row0 + gl.arange(0, WG_ROWS, layout=rows_s)
    d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    obase = bh.to(gl.int64) * N * HEAD_DIM
    gl.store(O + obase + ro[:, None] * HEAD_DIM + d[None, :], out, mask=(ro < N)[:, None])
    gl.store(LSE2 + bh.to(gl.int64) * N + rs, lse2, mask=rs < N)


@gluon.jit
def _barriers(STAGES: gl.constexpr, PAIR_COUNT: gl.constexpr, USERS: gl.constexpr = 2):
    """The mbarriers of a producer feeding two operands A, B to USERS consumers through a
    STAGES-deep ring: (once, a_ready, b_ready, a_empty, b_empty, pair). ``once`` [1]: a load
    made once (one arrival); a_ready / b_ready [STAGES, 1]: a slot filled (one arrival, with the
    TMA's transaction bytes); a_empty / b_empty [STAGES, 1]: a slot released (USERS arrivals,
    one a consumer); ``pair`` [USERS, 1]: barriers between the consumers, PAIR_COUNT arrivals
    each (the forward's turns, the backward's dS hand-over)."""
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    once = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    a_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    b_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    a_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    b_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    pair = gl.allocate_shared_memory(gl.int64, [USERS, 1], bar_layout)
    mbarrier.init(once, count=1)
    for s in gl.static_range(STAGES):
        mbarrier.init(a_ready.index(s), count=1)
        mbarrier.init(b_ready.index(s), count=1)
        mbarrier.init(a_empty.index(s), count=USERS)
        mbarrier.init(b_empty.index(s), count=USERS)
    for u in gl.static_range(USERS):
        mbarrier.init(pair.index(u), count=PAIR_COUNT)
    return once, a_ready, b_ready, a_empty, b_empty, pair


@gluon.jit
def _fwd_kernel(qd, kd, vd, O, LSE2, head_pattern, ptr, split, cols, tmask, masks, kinds, n_e,
                qk_scale2, N, H, n_t, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
                PINGPONG: gl.constexpr, P_SMEM: gl.constexpr, NUM_WG: gl.constexpr):
    dtype: gl.constexpr = qd.dtype
    WG_ROWS: gl.constexpr = qd.block_type.shape[0]  # a consumer's rows
    q_smem = gl.allocate_shared_memory(dtype, [NUM_WG, WG_ROWS, HEAD_DIM], qd.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], kd.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], vd.layout)
    p_smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([WG_ROWS, BLOCK_N], dtype)
    if P_SMEM:  # two slots of P per consumer
        p_smem = gl.allocate_shared_memory(dtype, [2 * NUM_WG, WG_ROWS, BLOCK_N], p_smem_layout)
    else:  # unused
        p_smem = gl.allocate_shared_memory(dtype, [2 * NUM_WG, 8, BLOCK_N], p_smem_layout)
    q_bar, k_ready, v_ready, k_empty, v_empty, turn = _barriers(STAGES, 1, NUM_WG)

    # the partitions' argument lists are spelled out in each call: a tuple built in a Gluon
    # kernel turns its constexpr members (HEAD_DIM, STAGES, ...) into tensors
    if NUM_WG == 3:
        gl.warp_specialize([
            (_consumer, (0, q_smem, k_smem, v_smem, p_smem, q_bar, k_ready, v_ready, k_empty,
                         v_empty, turn, O, LSE2, head_pattern, ptr, split, cols, tmask, masks,
                         kinds, n_e, qk_scale2, N, H, n_t, HEAD_DIM, STAGES, PINGPONG,
                         P_SMEM)),
            (_consumer, (1, q_smem, k_smem, v_smem, p_smem, q_bar, k_ready, v_ready, k_empty,
                         v_empty, turn, O, LSE2, head_pattern, ptr, split, cols, tmask, masks,
                         kinds, n_e, qk_scale2, N, H, n_t, HEAD_DIM, STAGES, PINGPONG,
                         P_SMEM)),
            (_consumer, (2, q_smem, k_smem, v_smem, p_smem, q_bar, k_ready, v_ready, k_empty,
                         v_empty, turn, O, LSE2, head_pattern, ptr, split, cols, tmask, masks,
                         kinds, n_e, qk_scale2, N, H, n_t, HEAD_DIM, STAGES, PINGPONG,
                         P_SMEM)),
            (_producer, (qd, kd, vd, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty,
                         v_empty, head_pattern, ptr, split, cols, N, H, n_t, STAGES)),
        ], [CONSUMER_WARPS, CONSUMER_WARPS, PRODUCER_WARPS],
            [CONSUMER3_REGS, CONSUMER3_REGS, PRODUCER_REGS])
    else:
        gl.warp_specialize([
            (_consumer, (0, q_smem, k_smem, v_smem, p_smem, q_bar, k_ready, v_ready, k_empty,
                         v_empty, turn, O, LSE2, head_pattern, ptr, split, cols, tmask, masks,
                         kinds, n_e, qk_scale2, N, H, n_t, HEAD_DIM, STAGES, PINGPONG,
                         P_SMEM)),
            (_consumer, (1, q_smem, k_smem, v_smem, p_smem, q_bar, k_ready, v_ready, k_empty,
                         v_empty, turn, O, LSE2, head_pattern, ptr, split, cols, tmask, masks,
                         kinds, n_e, qk_scale2, N, H, n_t, HEAD_DIM, STAGES, PINGPONG,
                         P_SMEM)),
            (_producer, (qd, kd, vd, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty,
                         v_empty, head_pattern, ptr, split, cols, N, H, n_t, STAGES)),
        ], [CONSUMER_WARPS, PRODUCER_WARPS], [CONSUMER_REGS, PRODUCER_REGS])


SMEM_LIMIT = 232448 - 1024  # H100 / H200 shared memory per block, less the static reservation
SMEM_ALIGN = 1024  # allowance for the allocator's alignment padding (AOT builds: <= 400 bytes)


def shared_bytes(stages: int, p_smem: bool, head_dim: int, elem: int = 2,
                 rows: int = BLOCK_M) -> int:
    """Shared memory of one CTA of ``rows`` queries (128: two consumers, 192: three): Q, the
    K / V ring, P slots (p_smem; the unused placeholder otherwise is removed by the compiler),
    barriers, alignment."""
    q = rows * head_dim
    kv = 2 * stages * BLOCK_N.value * head_dim
    p = 2 * rows * BLOCK_N.value if p_smem else 0
    return (q + kv + p) * elem + 8 * (1 + 4 * stages + rows // 64) + SMEM_ALIGN


def _gl_dtype(dtype: torch.dtype):
    return {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}[dtype]


def smem_layout(rows: int, head_dim: int, dtype: torch.dtype):
    """The shared layout of a [rows, head_dim] tile (128-byte swizzle at D >= 64)."""
    return gl.NVMMASharedLayout.get_default_for([rows, head_dim], _gl_dtype(dtype))


def descriptors(q, k, v):
    """TMA descriptors of q, k, v viewed as [B * H * N, D]: Q in boxes of 64 rows (one a
    consumer), K / V in 128-row tiles."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    D = q.shape[-1]
    rows = q.numel() // D
    out = []
    for t, r in ((q, WG_ROWS), (k, BLOCK_N.value), (v, BLOCK_N.value)):
        out.append(TensorDescriptor.from_tensor(t.view(rows, D), [r, D],
                                                smem_layout(r, D, t.dtype)))
    return out


def forward(q, k, v, plan, tiles, scale: float, cfg, union=None):
    """Launch the forward. q, k, v: contiguous 16-bit [B, H, N, D] on the GPU; ``plan``: the
    device plan; ``tiles``: its BLOCK_M x BLOCK_N forward tile lists on the same device;
    ``cfg``: a GluonConfig; with ``cfg.rows == 192``, ``union``: the 192-row lists of
    ``tiles`` (union.py) on the device. Returns (out [B, H, N, D], lse2 fp32 [B, H, N], base 2,
    -inf on empty rows)."""
    B, H, N, D = q.shape
    if not scale > 0:
        raise ValueError(f"scale={scale} must be positive (stbench.attention checks this)")
    if (tiles.tile_major, tiles.tile_minor) != (BLOCK_M, BLOCK_N.value):
        raise ValueError(f"tile lists of {tiles.tile_major} x {tiles.tile_minor}: the kernel "
                         f"walks {BLOCK_M} x {BLOCK_N.value}")
    out = torch.empty_like(q)
    lse2 = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    qd, kd, vd = descriptors(q, k, v)
    if cfg.rows == 192:
        if union is None:
            raise ValueError("rows=192 walks the union lists: pass union=union_tiles(tiles)")
        lists, kinds, n_e, num_wg, regs = union, union.kinds, union.n_entries, 3, MAX_REGS3
    else:
        lists, kinds, n_e, num_wg, regs = tiles, tiles.kind, 0, 2, MAX_REGS
    n_t = lists.n_tiles
    _fwd_kernel[(n_t, B * H)](
        qd, kd, vd, out, lse2, plan.head_pattern, lists.ptr, lists.split, lists.cols,
        lists.tmask, lists.masks, kinds, n_e, scale * LOG2E, N, H, n_t,
        HEAD_DIM=D, STAGES=cfg.stages, PINGPONG=cfg.pingpong, P_SMEM=cfg.p_smem,
        NUM_WG=num_wg, num_warps=CONSUMER_WARPS.value, maxnreg=regs,
    )
    return out, lse2
