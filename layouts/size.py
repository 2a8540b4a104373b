"""The generators' size guard: a layout too big to hold is refused before anything is allocated.

Each generator estimates, from its parameters alone (closed forms, no allocation), how many
blocks its distinct head patterns store, and calls ``check_size`` before building. A stored block
costs ``ENTRY_BYTES`` (query and key block int32, kind int8, mask id int32); a token permutation
``PERM_BYTES`` per token. Building takes about twice the stored bytes for a moment (the index
arithmetic), so the limit bounds the peak too. Beyond the limit ``LayoutSizeError`` gives the
estimate and the fix.

The limit, in bytes: ``set_size_limit(nbytes)`` if called, else the environment variable
``STBENCH_LAYOUT_LIMIT_GB`` (decimal gigabytes), else ``DEFAULT_LIMIT_BYTES``. For scale:
``causal`` at N = 1,048,576 stores 134 M blocks (1.7 GB) at block 64 and 2.1 G blocks (28 GB)
at block 16.
"""

from __future__ import annotations

import os

from .errors import LayoutError, LayoutSizeError

ENTRY_BYTES = 4 + 4 + 1 + 4  # q block, k block (int32), kind (int8), mask id (int32)
PERM_BYTES = 8  # int64 original token per layout position
DEFAULT_LIMIT_BYTES = 4 * 10**9
LIMIT_ENV = "STBENCH_LAYOUT_LIMIT_GB"
GB = 10**9

_limit_bytes: int | None = None  # set by set_size_limit; None: the environment or the default


def set_size_limit(nbytes: int | None) -> int | None:
    """Refuse layouts estimated above ``nbytes`` bytes (None: back to ``STBENCH_LAYOUT_LIMIT_GB``
    or the default). Returns the previous setting, for restoring it."""
    global _limit_bytes
    if nbytes is not None and (isinstance(nbytes, bool) or not isinstance(nbytes, int)
                               or nbytes <= 0):
        raise LayoutError(f"set_size_limit(nbytes={nbytes!r}): give a positive int of bytes, "
                          "or None for the default")
    previous, _limit_bytes = _limit_bytes, nbytes
    return previous


def size_limit() -> int:
    """The limit in bytes now in force."""
    if _limit_bytes is not None:
        return _limit_bytes
    text = os.environ.get(LIMIT_ENV)
    if not text:
        return DEFAULT_LIMIT_BYTES
    try:
        gb = float(text)
    except ValueError:
        gb = -1.0
    if not gb > 0:
        raise LayoutError(f"{LIMIT_ENV}={text!r} must be a positive number of gigabytes, e.g. "
                          f"{LIMIT_ENV}=64")
    return int(gb * GB)


def check_size(what: str, blocks: int, extra_bytes: int = 0) -> None:
    """Raise LayoutSizeError when ``blocks`` stored blocks (plus ``extra_bytes``) exceed the
    limit. ``what``: the generator call, e.g. ``causal(n_ctx=1048576, block=16)``."""
    nbytes = int(blocks) * ENTRY_BYTES + int(extra_bytes)
    limit = size_limit()
    if nbytes > limit:
        raise LayoutSizeError(
            f"{what} would store about {int(blocks):,} blocks ({nbytes / GB:.3g} GB), above the "
            f"layout size limit of {limit / GB:.3g} GB: use a larger block or a smaller n_ctx, "
            f"or raise the limit with stbench.layouts.set_size_limit(nbytes) or "
            f"{LIMIT_ENV}=<GB> if the machine has the memory"
        )


def tri(n: int) -> int:
    """1 + 2 + ... + n: the blocks of a causal pattern of n blocks per side."""
    return n * (n + 1) // 2


def band_blocks(nb: int, lo: int, hi: int) -> int:
    """The blocks (r, c) of an nb x nb grid with lo <= r - c <= hi: sum of nb - |d| over d."""
    lo, hi = max(lo, 1 - nb), min(hi, nb - 1)
    if lo > hi:
        return 0

    def upto(d: int) -> int:  # sum of nb - x for x = 0 .. d (0 when d = -1)
        return (d + 1) * nb - tri(d)

    if lo >= 0:
        return upto(hi) - upto(lo - 1)
    if hi < 0:
        return upto(-lo) - upto(-hi - 1)
    return upto(hi) + upto(-lo) - nb
