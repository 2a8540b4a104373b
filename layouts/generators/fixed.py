"""The paper's 'fixed' head (Sparse Transformer, released code), exactly.

l = stride, s = l / block summary blocks per stride, c = vertsize * block. Summary block columns
``idx = reversed(range(s))`` reshaped to ``[-1, vertsize]``; head h uses row ``h % num_verts``;
``block_mask[h, :, c::s] = 1`` for each c of that row, plus each query block's own window
``[(qb//s)*s, (qb//s+1)*s)``, then everything above the diagonal cleared; diagonal blocks are
lower-triangular. Token form, h' = h % num_verts:

    k <= q and (q // l == k // l or l - (h'+1) c <= k % l < l - h' c)

Every stored block is FULL except the diagonal ones (DIAG). Per query block qb the entries are
the summary columns of the earlier strides (ascending) followed by the window ``[(qb//s)*s, qb]``,
so the lists come out sorted with one ``repeat_interleave``, no loop over blocks.
"""

from __future__ import annotations

import torch

from ..layout import DIAG, FULL, Layout, LayoutError
from ..size import check_size, tri
from ._build import check_common, check_int, fmt_name, ragged_rows, shared_layout


def _pattern(nb: int, s: int, cols: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One head's sorted entries (q, k int32, kinds int8); cols: the summary block columns mod
    s, ascending. Query block r (stride c = r // s) holds c * vs summary entries
    ``m*s + cols[j]`` (m < c) and then its window ``c*s .. r``; int32 arithmetic throughout."""
    vs = cols.numel()
    qb_all = torch.arange(nb, dtype=torch.int32)
    chunk = torch.div(qb_all, s, rounding_mode="floor")
    counts = chunk * vs + (qb_all - chunk * s + 1)
    rows, pos = ragged_rows(counts)
    c = torch.div(rows, s, rounding_mode="floor")
    ns = c * vs  # summary entries before the window
    if vs == 1:
        summary = pos * s + int(cols[0])
    else:
        summary = torch.div(pos, vs, rounding_mode="floor") * s + cols.to(torch.int32)[pos % vs]
    window = c * (s - vs) + pos  # = c*s + (pos - ns)
    kb = torch.where(pos < ns, summary, window)
    kinds = torch.full(kb.shape, FULL, dtype=torch.int8)
    kinds[kb == rows] = DIAG
    return rows, kb, kinds


def fixed(
    n_ctx: int,
    block: int = 32,
    stride: int = 128,
    heads: int = 1,
    num_verts: int = 1,
    vertsize: int = 1,
) -> Layout:
    """The paper's fixed head: see the module docstring for the exact mask. Needs
    ``stride % block == 0``, ``heads % num_verts == 0``, ``vertsize <= s``, ``s % vertsize == 0``
    and ``num_verts * vertsize <= s`` with s = stride / block."""
    n_ctx, block, heads = check_common(n_ctx, block, heads)
    stride = check_int("stride", stride, 1)
    num_verts = check_int("num_verts", num_verts, 1)
    vertsize = check_int("vertsize", vertsize, 1)
    if stride % block:
        raise LayoutError(
            f"fixed needs stride % block == 0, got stride={stride}, block={block}: choose a "
            f"stride that is a multiple of {block} or a block dividing {stride}"
        )
    s = stride // block
    if heads % num_verts:
        raise LayoutError(
            f"fixed needs heads % num_verts == 0, got heads={heads}, num_verts={num_verts}: "
            "choose num_verts dividing heads"
        )
    if vertsize > s or s % vertsize:
        raise LayoutError(
            f"fixed needs vertsize <= s and s % vertsize == 0 with s = stride/block = {s}, got "
            f"vertsize={vertsize}: choose a divisor of {s}"
        )
    if num_verts * vertsize > s:
        raise LayoutError(
            f"fixed needs num_verts * vertsize <= s = stride/block = {s}, got "
            f"num_verts={num_verts}, vertsize={vertsize}: lower one of them"
        )
    nb = n_ctx // block
    chunks, rem = divmod(nb, s)  # per pattern: query block r holds (r // s) vertsize + r % s + 1
    per_pattern = (s * vertsize * tri(chunks - 1) + chunks * tri(s) + rem * chunks * vertsize
                   + tri(rem))
    check_size(f"fixed(n_ctx={n_ctx}, block={block}, stride={stride}, num_verts={num_verts}, "
               f"vertsize={vertsize})", num_verts * per_pattern)
    idx = torch.arange(s - 1, -1, -1, dtype=torch.int64).reshape(-1, vertsize)
    patterns = []
    for v in range(num_verts):
        q, k, kinds = _pattern(nb, s, torch.sort(idx[v]).values)
        patterns.append((q, k, kinds, torch.full_like(q, -1)))
    params = {"l": stride, "c": vertsize * block}
    if num_verts != 1:
        params["v"] = num_verts
    return shared_layout(
        n_ctx, heads, block, fmt_name("fixed", **params), patterns,
        [x % num_verts for x in range(heads)],
    )
