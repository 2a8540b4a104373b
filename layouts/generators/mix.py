"""``st_mix``: the standard problem's mixed heads: even heads local(l), odd heads
strided(l) (with its transpose)."""

from __future__ import annotations

from ..layout import Layout
from ..transforms import select_heads
from ._build import check_common, check_int, fmt_name
from .local import local
from .strided import strided


def st_mix(n_ctx: int, block: int = 64, stride: int = 128, heads: int = 2) -> Layout:
    """Head h is ``local(window=stride)`` for even h and ``strided(stride)`` for odd h (the
    paper's factorised heads, interleaved). strided's constraints apply when heads >= 2."""
    n_ctx, block, heads = check_common(n_ctx, block, heads)
    stride = check_int("stride", stride, 1)
    loc = local(n_ctx, block=block, window=stride, heads=1)
    if heads == 1:
        return loc.renamed(fmt_name("st_mix", l=stride))
    st = strided(n_ctx, block=block, stride=stride, heads=1)
    sources = [(loc if h % 2 == 0 else st, 0) for h in range(heads)]
    return select_heads(sources, fmt_name("st_mix", l=stride))
