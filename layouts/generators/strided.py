"""The paper's strided heads: OpenAI's transposed ``strided`` head and the exact ``merged``
(local or stride) head.

Token masks in ORIGINAL order, l = stride:
    strided(l):         k <= q and (q - k) % l == 0
    merged_strided(l):  k <= q and (q - k < l or (q - k) % l == 0)

``strided`` is block-sparse only after the strided transpose: original position ``t*l + r`` goes
to layout position ``r*(N/l) + t`` (``perm[r*(N/l) + t] = t*l + r``), after which each residue
class is one contiguous chunk of C = N/l tokens and the pattern is block-diagonal causal with
chunks of C tokens (needs C % block == 0). ``merged_strided`` needs no transpose: it is a
function of q - k, built per block offset; with l % block == 0 the stride part touches one
block offset per multiple of l (an identity-diagonal partial mask).
"""

from __future__ import annotations

import torch

from ..layout import DIAG, FULL, Layout, LayoutError
from ..size import PERM_BYTES, band_blocks, check_size, tri
from ._build import check_common, check_int, fmt_name, shared_layout, token_offset_layout


def strided_perm(n_ctx: int, stride: int) -> torch.Tensor:
    """int64 [N]: original token at each layout position of the strided transpose."""
    return torch.arange(n_ctx).reshape(n_ctx // stride, stride).t().reshape(-1).contiguous()


def strided(n_ctx: int, block: int = 64, stride: int = 128, heads: int = 1) -> Layout:
    """OpenAI's 'strided' head, ``k <= q and (q - k) % stride == 0``, carried as the
    block-diagonal causal pattern of the transposed order plus the permutation."""
    n_ctx, block, heads = check_common(n_ctx, block, heads)
    stride = check_int("stride", stride, 1)
    if n_ctx % stride:
        raise LayoutError(
            f"stride={stride} must divide n_ctx={n_ctx} for the strided transpose: choose a "
            "divisor of n_ctx (a power of two), or use merged_strided (exact, no transpose)"
        )
    chunk = n_ctx // stride
    if chunk % block:
        raise LayoutError(
            f"strided needs (n_ctx / stride) % block == 0, but n_ctx/stride = {chunk} and "
            f"block = {block}: choose a block dividing {chunk} (or a smaller stride), or use "
            "merged_strided, which has no such constraint"
        )
    cb = chunk // block  # blocks per chunk
    check_size(f"strided(n_ctx={n_ctx}, block={block}, stride={stride})", stride * tri(cb),
               extra_bytes=n_ctx * PERM_BYTES)
    # one chunk's causal block list, then shifted to each of the `stride` chunks
    counts = torch.arange(1, cb + 1)
    r = torch.repeat_interleave(torch.arange(cb), counts)
    c = torch.arange(r.numel()) - (torch.cumsum(counts, 0) - counts)[r]
    base = torch.arange(stride, dtype=torch.int64).unsqueeze(1) * cb
    q = (base + r).reshape(-1)
    k = (base + c).reshape(-1)
    kinds = torch.where(r == c, DIAG, FULL).to(torch.int8).repeat(stride)
    one = (q.to(torch.int32), k.to(torch.int32), kinds, torch.full_like(q, -1, dtype=torch.int32))
    perm = strided_perm(n_ctx, stride).unsqueeze(0)
    return shared_layout(
        n_ctx, heads, block, fmt_name("strided", l=stride), [one], [0] * heads,
        perms=perm, head_perm=(0,) * heads,
    )


def merged_strided(n_ctx: int, block: int = 64, stride: int = 128, heads: int = 1) -> Layout:
    """The paper's merged strided head, local(l) or stride(l), exact and without a transpose:
    ``k <= q and (q - k < stride or (q - k) % stride == 0)``."""
    n_ctx, block, heads = check_common(n_ctx, block, heads)
    stride = check_int("stride", stride, 1)
    b = block
    local_last = (stride + b - 2) // b
    check_size(f"merged_strided(n_ctx={n_ctx}, block={block}, stride={stride})",
               merged_strided_blocks(n_ctx, block, stride))
    m = torch.arange(1, (n_ctx - 1) // stride + 1, dtype=torch.int64) * stride  # multiples of l
    # block offset d holds delta in [d*b - (b-1), d*b + (b-1)]: m lies in d = floor/ceil(m/b)
    lo = torch.div(m, b, rounding_mode="floor")
    hi = torch.div(m + b - 1, b, rounding_mode="floor")
    cand = torch.cat([torch.arange(local_last + 1), lo, hi])

    def pred(delta: torch.Tensor) -> torch.Tensor:
        return (delta >= 0) & ((delta < stride) | (delta % stride == 0))

    # beyond the local window (delta >= stride) the rule is (q - k) % stride == 0: periodic
    return token_offset_layout(
        n_ctx, block, heads, fmt_name("merged_strided", l=stride), pred, cand,
        period=stride, periodic_from=stride,
    )


def merged_strided_blocks(n_ctx: int, block: int, stride: int) -> int:
    """An upper bound of merged_strided's blocks: the local band (offsets 0 .. ceil((l-1)/b))
    plus, for each multiple j*l of the stride, the offsets floor(j*l/b) and ceil(j*l/b) (one
    when b divides l), nb - d blocks each with d >= j*l/b - 1; capped by the causal pattern's
    nb (nb + 1) / 2."""
    nb = n_ctx // block
    multiples = (n_ctx - 1) // stride
    offsets_per_multiple = 1 if stride % block == 0 else 2
    near = offsets_per_multiple * (multiples * (nb + 1) - stride * tri(multiples) // block)
    return min(tri(nb), band_blocks(nb, 0, (stride + block - 2) // block) + max(near, 0))
