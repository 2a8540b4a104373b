"""Persistent forward: a fixed number of programs walk one flat list of tile steps.

The tiled forward (forward.py) launches one program per (query tile, batch x head); on the
sparse layouts each program does 1-3 tiles of work, and its chain of dependent loads (tile
list, permutation, K / V rows) is never overlapped with compute (session 3's profile: the st_mix
forward waits on global loads, 1.49 TB/s). Here ``persistent x SMs`` programs each take a
contiguous run of *steps*, a step being one (item, tile of work) with item = (batch x head,
query tile), so one software-pipelined loop (``num_stages``) issues the next steps' index, Q
and K / V loads while the current step computes, across item boundaries too.

    for each step s of this program:                   (item, e, first, last) = schedule[s]
        first: q = Q[b, h, tok(rows)];  m, l, acc = -inf, 0, 0
        e >= 0: one tile of the online softmax, its kind (FULL / CAUSAL / MASKED) read at run
                time (e = -1: an item without tiles, whose rows come out 0 / LSE -inf)
        last:  O[b, h, tok(rows)] = acc / l;  LSE2 = m + log2(l)   (masked stores)

The schedule (``flat_schedule``: int32 item and entry, int8 flags per step, int32 program
offsets) is built on the CPU once per (plan, tiles, B, programs) and cached; O(steps) memory,
about B x H x N / BLOCK_M x (tiles per row). Exact in the same sense as the tiled kernel (the
same online softmax, tiles in the same order). Not supported: the merged split (compose.py).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import interpret
from .common import LOG2E, load_row_pair, tile_cols, to_tokens

interpret.apply()

FIRST, LAST = 1, 2


@functools.lru_cache(maxsize=32)
def flat_schedule(plan, tiles, batch: int, n_programs: int, device: str):
    """(prog_ptr int32 [n_programs + 1], step_item int32 [S], step_e int32 [S], step_flag int8
    [S]) on ``device``: items bh * n_t + t in order, each item's tile entries in the tiles'
    order (one step with e = -1 for an item without entries), cut at item boundaries into
    ``n_programs`` runs of about equal step counts."""
    ptr = tiles.ptr.cpu().long()  # [P, n_t + 1]
    head_pattern = plan.head_pattern.cpu().long()  # [H]
    n_t = tiles.n_tiles
    pat = head_pattern.repeat(batch)  # pattern of each bh
    start = ptr[pat, :-1].reshape(-1)  # [I] first entry of each item
    count = (ptr[pat, 1:] - ptr[pat, :-1]).reshape(-1)
    steps = count.clamp(min=1)
    item_start = torch.zeros(steps.numel() + 1, dtype=torch.int64)
    torch.cumsum(steps, 0, out=item_start[1:])
    n_steps = int(item_start[-1])
    item = torch.repeat_interleave(torch.arange(steps.numel()), steps)
    j = torch.arange(n_steps) - item_start[item]
    e = torch.where(count[item] > 0, start[item] + j, -1)
    flag = (j == 0).to(torch.int8) * FIRST + (j == steps[item] - 1).to(torch.int8) * LAST
    # program boundaries: at the item start nearest each equal share of the steps
    want = torch.linspace(0, n_steps, n_programs + 1, dtype=torch.float64).round().long()
    cut = torch.searchsorted(item_start, want)
    prog_ptr = item_start[cut.clamp(max=item_start.numel() - 1)]
    prog_ptr[0], prog_ptr[-1] = 0, n_steps
    assert n_t * batch * head_pattern.numel() == steps.numel()
    to = functools.partial(torch.Tensor.to, device=device)
    return (to(prog_ptr.to(torch.int32)), to(item.to(torch.int32)), to(e.to(torch.int32)),
            to(flag))


@triton.jit
def _fwd_persistent_kernel(
    Q, K, V, O, LSE2,
    head_pattern, pattern_perm, perm,
    cols, kind, tmask, masks,
    prog_ptr, step_item, step_e, step_flag,
    qk_scale2, N, H, n_t,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UNIT: tl.constexpr, G: tl.constexpr, HAS_PERM: tl.constexpr, IN_PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    s0 = tl.load(prog_ptr + pid)
    s1 = tl.load(prog_ptr + pid + 1)
    d = tl.arange(0, HEAD_DIM)
    i = tl.arange(0, BLOCK_M)
    j = tl.arange(0, BLOCK_N)
    q = tl.zeros([BLOCK_M, HEAD_DIM], Q.dtype.element_ty)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for s in tl.range(s0, s1):
        item = tl.load(step_item + s)
        e = tl.load(step_e + s)
        flag = tl.load(step_flag + s).to(tl.int32)
        first = (flag & 1) != 0
        last = (flag & 2) != 0
        bh = item // n_t
        t = item % n_t
        pat = tl.load(head_pattern + bh % H)
        pp = -1
        if HAS_PERM:
            pp = tl.load(pattern_perm + pat)
        base = bh.to(tl.int64) * N * HEAD_DIM
        rows = t * BLOCK_M + i
        rtok = to_tokens(rows, perm, pp, N, HAS_PERM).to(tl.int64)
        qo = base + rtok[:, None] * HEAD_DIM + d[None, :]
        q = tl.where(first, tl.load(Q + qo, mask=first, other=0.0), q)
        m_i = tl.where(first, float("-inf"), m_i)
        l_i = tl.where(first, 0.0, l_i)
        acc = tl.where(first, 0.0, acc)

        ee = tl.maximum(e, 0)  # e = -1: an item without tiles, every key masked
        cpos, ok = tile_cols(cols, ee, UNIT, G, BLOCK_N)
        ok = ok & (e >= 0)
        k, v, _ = load_row_pair(K, V, base, cpos, ok, perm, pp, N, HEAD_DIM, HAS_PERM, True)
        sc = tl.dot(q, tl.trans(k), input_precision=IN_PREC) * qk_scale2
        kd = tl.load(kind + ee)  # tiles.py's codes: 0 FULL, 1 CAUSAL, 2 MASKED
        moff = tl.maximum(tl.load(tmask + ee), 0).to(tl.int64) * (BLOCK_M * BLOCK_N)
        tmk = tl.load(masks + moff + i[:, None] * BLOCK_N + j[None, :], mask=kd == 2, other=0)
        allowed = (kd == 0) | ((kd == 1) & (rows[:, None] >= cpos[None, :])) | (tmk != 0)
        sc = tl.where(allowed & ok[None, :], sc, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(sc, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(sc - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=IN_PREC)
        m_i = m_new

        empty = l_i == 0.0
        out = acc / tl.where(empty, 1.0, l_i)[:, None]
        lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
        tl.store(O + qo, out.to(O.dtype.element_ty), mask=last)
        tl.store(LSE2 + bh.to(tl.int64) * N + rtok, lse2, mask=last)


def programs_for(device: torch.device, per_sm: int) -> int:
    """``per_sm`` programs per streaming multiprocessor (2 SMs assumed under the interpreter)."""
    device = torch.device(device)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if (
        device.type == "cuda") else 2
    return per_sm * sms


def forward_persistent(q, k, v, plan, tiles, scale: float, cfg):
    """The persistent forward; same contract as ``forward.forward`` (no ``prev`` merge).
    Returns (out [B, H, N, D], lse2 fp32 [B, H, N])."""
    B, H, N, D = q.shape
    if tiles.n_entries == 0:  # nothing allowed anywhere (the kernel reads entry 0 of each list)
        return torch.zeros_like(q), torch.full((B, H, N), float("-inf"), device=q.device)
    out = torch.empty_like(q)
    lse2 = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    n_items = B * H * tiles.n_tiles
    n_prog = max(1, min(n_items, programs_for(q.device, cfg.persistent)))
    prog_ptr, s_item, s_e, s_flag = flat_schedule(plan, tiles, B, n_prog, str(q.device))
    has_perm = plan.perm is not None
    perm = plan.perm if has_perm else plan.head_pattern  # any int32 tensor when unused
    _fwd_persistent_kernel[(n_prog,)](
        q, k, v, out, lse2,
        plan.head_pattern, plan.pattern_perm, perm,
        tiles.cols, tiles.kind, tiles.tmask, tiles.masks,
        prog_ptr, s_item, s_e, s_flag,
        scale * LOG2E, N, H, tiles.n_tiles,
        HEAD_DIM=D, BLOCK_M=tiles.tile_major, BLOCK_N=tiles.tile_minor,
        UNIT=tiles.unit, G=tiles.tile_minor // tiles.unit, HAS_PERM=has_perm,
        IN_PREC=cfg.in_prec(q.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse2

