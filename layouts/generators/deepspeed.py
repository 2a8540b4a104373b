"""DeepSpeed's sparsity configs, in meaning: ``bigbird``, ``longformer``, ``sliding_window``,
``variable``.

Each is a block-level pattern (``nb = N / block`` blocks per side); the blocks are full, except
with ``causal=True`` (the default: the autoregressive form, as in the paper), where the token rule
``k <= q`` applies: blocks above the diagonal are dropped and diagonal blocks are
lower-triangular (DeepSpeed's 'unidirectional' plus the causal mask inside the diagonal).
``causal=False`` is DeepSpeed's 'bidirectional'. Block meanings (w = num_sliding_window_blocks//2):

- sliding_window: row r sees blocks [r - w, r + w] (DeepSpeed's LocalSlidingWindow).
- bigbird: sliding window, ``num_global_blocks`` global rows and columns at the start, and
  ``num_random_blocks`` distinct random blocks per row (drawn from [0, r] when causal).
- longformer (BSLongformer): sliding window plus global rows and columns at
  ``global_block_indices`` (or the ranges [start, end) with ``global_block_end_indices``).
- variable: local windows of sizes ``local_window_blocks`` (the last size repeats to the end),
  global columns (rows too with ``horizontal_global_attention``, bidirectional only) and random
  blocks per row.

Randomness comes only from an explicit ``seed`` or ``generator``; with
``different_layout_per_head=False`` every head shares head 0's draw (DeepSpeed's default).
Everything is built from index arithmetic (no dense [H, nb, nb] tensor).
"""

from __future__ import annotations

import torch

from ..layout import DIAG, FULL, Layout, LayoutError
from ..size import band_blocks, check_size
from ._build import (
    as_int_list,
    check_common,
    check_int,
    fmt_name,
    offset_layout,
    pairs_layout,
    ragged_rows,
    shared_layout,
)


def _check_causal(causal) -> bool:
    if not isinstance(causal, bool):
        raise LayoutError(f"causal={causal!r} must be True (autoregressive) or False")
    return causal


def _window_blocks(value, nb: int) -> int:
    """num_sliding_window_blocks, checked: a positive int of at most nb blocks."""
    wb = check_int("num_sliding_window_blocks", value, 1)
    if wb > nb:
        raise LayoutError(f"num_sliding_window_blocks={wb} exceeds the {nb} blocks per row: "
                          "lower it or use a longer n_ctx / smaller block")
    return wb


def _rng(seed, generator, needed: bool, who: str) -> torch.Generator | None:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise LayoutError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    if seed is not None:
        return torch.Generator().manual_seed(check_int("seed", seed, 0))
    if needed:
        raise LayoutError(
            f"{who} draws random blocks: pass seed=<int> or generator=torch.Generator()"
            ".manual_seed(...) (no unseeded randomness), or num_random_blocks=0"
        )
    return None


def _random_pairs(nb: int, r: int, causal: bool, gen: torch.Generator):
    """r distinct random key blocks per query block (from [0, nb) or, causal, [0, row]);
    Floyd's sampling vectorised over rows. Returns (rows, cols) int64."""
    rows = torch.arange(nb, dtype=torch.int64)
    pool = rows + 1 if causal else torch.full((nb,), nb, dtype=torch.int64)
    take = pool.clamp(max=r)
    chosen = torch.full((nb, r), -1, dtype=torch.int64)
    for j in range(r):
        active = j < take
        top = pool - take + j  # Floyd: draw t in [0, top]; if taken, take top instead
        t = (torch.rand(nb, generator=gen, dtype=torch.float64) * (top + 1)).long()
        t = torch.minimum(t, top)
        seen = (chosen[:, :j] == t.unsqueeze(1)).any(1)
        chosen[:, j] = torch.where(active, torch.where(seen, top, t), -1)
    ok = chosen >= 0
    return rows.unsqueeze(1).expand(nb, r)[ok], chosen[ok]


def _window_pairs(nb: int, w: int):
    """Blocks (r, c) with |r - c| <= w."""
    d = torch.arange(-w, w + 1, dtype=torch.int64)
    q = torch.arange(nb, dtype=torch.int64).unsqueeze(1).expand(nb, d.numel())
    k = q - d
    ok = (k >= 0) & (k < nb)
    return q[ok], k[ok]


def _global_ranges(nb: int, starts: list[int], ends: list[int] | None) -> torch.Tensor:
    """Global block indices (DeepSpeed: an index beyond the sequence is ignored)."""
    if ends is None:
        idx = [i for i in starts if i < nb]
    else:
        if len(ends) != len(starts):
            raise LayoutError(
                f"global_block_end_indices has {len(ends)} entries but global_block_indices has "
                f"{len(starts)}: give one end per start"
            )
        idx = []
        for s, e in zip(starts, ends):
            if s >= e:
                raise LayoutError(f"global block range [{s}, {e}) is empty: each start must be < "
                                  "its end")
            if s < nb:
                idx.extend(range(s, min(e, nb)))
    return torch.tensor(sorted(set(idx)), dtype=torch.int64)


def _lines(nb: int, cols: torch.Tensor, rows_too: bool):
    """All (r, c) with c in cols (global columns), plus (c, r) when rows_too (global rows)."""
    g = cols.numel()
    all_rows = torch.arange(nb, dtype=torch.int64).repeat_interleave(g)
    cc = cols.repeat(nb)
    q, k = [all_rows], [cc]
    if rows_too:
        q.append(cc)
        k.append(all_rows)
    return torch.cat(q), torch.cat(k)


def _assemble(n_ctx, block, heads, name, per_head_pairs, causal) -> Layout:
    """per_head_pairs: list of (q, k) for head 0..P-1, P = 1 (shared) or heads."""
    if len(per_head_pairs) == 1:
        q, k = per_head_pairs[0]
        one = pairs_layout(n_ctx, block, 1, name, torch.zeros_like(q), q, k, causal)
        return shared_layout(n_ctx, heads, block, name, [one.pattern(0)], [0] * heads)
    hs = torch.cat([torch.full_like(q, h) for h, (q, _) in enumerate(per_head_pairs)])
    qs = torch.cat([q for q, _ in per_head_pairs])
    ks = torch.cat([k for _, k in per_head_pairs])
    return pairs_layout(n_ctx, block, heads, name, hs, qs, ks, causal)


def sliding_window(
    n_ctx: int, block: int = 64, heads: int = 1, num_sliding_window_blocks: int = 3,
    causal: bool = True,
) -> Layout:
    """Each query block sees the ``num_sliding_window_blocks // 2`` blocks on either side (only
    before it when causal). Built per block offset: fast at any N."""
    n_ctx, block, heads = check_common(n_ctx, block, heads)
    causal = _check_causal(causal)
    nb = n_ctx // block
    wb = _window_blocks(num_sliding_window_blocks, nb)
    w = wb // 2
    check_size(f"sliding_window(n_ctx={n_ctx}, block={block}, num_sliding_window_blocks={wb})",
               band_blocks(nb, -w, 0 if causal else w))
    d = torch.arange(0 if causal else -w, w + 1, dtype=torch.int64)
    kinds = torch.where((d == 0) & causal, DIAG, FULL).to(torch.int8)
    mids = torch.full((d.numel(),), -1, dtype=torch.int32)
    name = fmt_name("sliding_window", w=wb, causal=causal)
    return offset_layout(n_ctx, block, heads, name, d, kinds, mids,
                         torch.zeros(0, block, block, dtype=torch.bool))


def bigbird(
    n_ctx: int, block: int = 64, heads: int = 1, num_random_blocks: int = 1,
    num_sliding_window_blocks: int = 3, num_global_blocks: int = 1, causal: bool = True,
    different_layout_per_head: bool = False, seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Layout:
    """BigBird (DeepSpeed's BigBirdSparsityConfig): window + global + random blocks."""
    n_ctx, block, heads = check_common(n_ctx, block, heads)
    causal = _check_causal(causal)
    nb = n_ctx // block
    r = check_int("num_random_blocks", num_random_blocks, 0)
    wb = check_int("num_sliding_window_blocks", num_sliding_window_blocks, 1)
    g = check_int("num_global_blocks", num_global_blocks, 0)
    for pname, v in (("num_random_blocks", r), ("num_sliding_window_blocks", wb),
                     ("num_global_blocks", g)):
        if v > nb:
            raise LayoutError(f"{pname}={v} exceeds the {nb} blocks per row: lower it")
    gen = _rng(seed, generator, r > 0, "bigbird")
    n_draw = heads if (different_layout_per_head and r > 0) else 1
    check_size(f"bigbird(n_ctx={n_ctx}, block={block}, num_sliding_window_blocks={wb}, "
               f"num_global_blocks={g}, num_random_blocks={r})",
               n_draw * (band_blocks(nb, -(wb // 2), wb // 2) + (2 * g + r) * nb))
    wq, wk = _window_pairs(nb, wb // 2)
    gq, gk = _lines(nb, torch.arange(g, dtype=torch.int64), rows_too=True)
    pairs = []
    for _ in range(n_draw):
        rq, rk = _random_pairs(nb, r, causal, gen) if r else (wq[:0], wk[:0])
        pairs.append((torch.cat([wq, gq, rq]), torch.cat([wk, gk, rk])))
    name = fmt_name("bigbird", r=r, w=wb, g=g, causal=causal,
                    **({"seed": seed} if seed is not None and generator is None else {}))
    return _assemble(n_ctx, block, heads, name, pairs, causal)


def longformer(
    n_ctx: int, block: int = 64, heads: int = 1, num_sliding_window_blocks: int = 3,
    global_block_indices=(0,), global_block_end_indices=None, causal: bool = True,
) -> Layout:
    """Block-sparse Longformer (DeepSpeed's BSLongformerSparsityConfig): window + global rows
    and columns at the given block indices (or [start, end) ranges)."""
    n_ctx, block, heads = check_common(n_ctx, block, heads)
    causal = _check_causal(causal)
    nb = n_ctx // block
    wb = _window_blocks(num_sliding_window_blocks, nb)
    starts = as_int_list("global_block_indices", global_block_indices)
    ends = (None if global_block_end_indices is None
            else as_int_list("global_block_end_indices", global_block_end_indices))
    cols = _global_ranges(nb, starts, ends)
    check_size(f"longformer(n_ctx={n_ctx}, block={block}, num_sliding_window_blocks={wb}, "
               f"{cols.numel()} global blocks)",
               band_blocks(nb, -(wb // 2), wb // 2) + 2 * cols.numel() * nb)
    wq, wk = _window_pairs(nb, wb // 2)
    gq, gk = _lines(nb, cols, rows_too=True)
    name = fmt_name("longformer", w=wb, g=len(starts), causal=causal)
    return _assemble(n_ctx, block, heads, name, [(torch.cat([wq, gq]), torch.cat([wk, gk]))],
                     causal)


def _local_windows(nb: int, sizes: list[int]):
    """DeepSpeed Variable's local windows: sizes in order, the last size repeating; each window
    a full square (lower-triangular blocks after the causal rule). Returns (rows, cols)."""
    start = torch.empty(nb, dtype=torch.int64)
    end = torch.empty(nb, dtype=torch.int64)
    s = 0
    for size in sizes:
        if s >= nb:
            break
        e = min(s + size, nb)
        start[s:e], end[s:e] = s, e
        s += size
    last = sizes[-1]
    if s < nb:
        rows = torch.arange(s, nb)
        start[s:] = s + ((rows - s) // last) * last
        end[s:] = torch.clamp(start[s:] + last, max=nb)
    rows, pos = ragged_rows(end - start)
    return rows, start[rows] + pos


def variable(
    n_ctx: int, block: int = 64, heads: int = 1, num_random_blocks: int = 0,
    local_window_blocks=(4,), global_block_indices=(0,), global_block_end_indices=None,
    horizontal_global_attention: bool = False, causal: bool = True,
    different_layout_per_head: bool = False, seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Layout:
    """DeepSpeed's VariableSparsityConfig: variable-size local windows, global columns (and rows
    with ``horizontal_global_attention``, bidirectional only), random blocks per row."""
    n_ctx, block, heads = check_common(n_ctx, block, heads)
    causal = _check_causal(causal)
    nb = n_ctx // block
    r = check_int("num_random_blocks", num_random_blocks, 0)
    if r > nb:
        raise LayoutError(f"num_random_blocks={r} exceeds the {nb} blocks per row: lower it")
    sizes = as_int_list("local_window_blocks", local_window_blocks, 1)
    if not sizes:
        raise LayoutError("local_window_blocks must list at least one window size, e.g. [4]")
    if horizontal_global_attention and causal:
        raise LayoutError("horizontal_global_attention=True needs causal=False (global rows "
                          "would attend to the future)")
    starts = as_int_list("global_block_indices", global_block_indices)
    ends = (None if global_block_end_indices is None
            else as_int_list("global_block_end_indices", global_block_end_indices))
    gen = _rng(seed, generator, r > 0, "variable")
    cols = _global_ranges(nb, starts, ends)
    n_draw = heads if (different_layout_per_head and r > 0) else 1
    lines = (2 if horizontal_global_attention else 1) * cols.numel()
    check_size(f"variable(n_ctx={n_ctx}, block={block}, local_window_blocks={sizes}, "
               f"{cols.numel()} global blocks, num_random_blocks={r})",
               (min(max(sizes), nb) + lines) * nb + n_draw * r * nb)
    lq, lk = _local_windows(nb, sizes)
    gq, gk = _lines(nb, cols, rows_too=horizontal_global_attention)
    pairs = []
    for _ in range(n_draw):
        rq, rk = _random_pairs(nb, r, causal, gen) if r else (lq[:0], lk[:0])
        pairs.append((torch.cat([lq, gq, rq]), torch.cat([lk, gk, rk])))
    name = fmt_name("variable", r=r, local="/".join(map(str, sizes)), causal=causal)
    return _assemble(n_ctx, block, heads, name, pairs, causal)
