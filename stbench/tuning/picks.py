"""What ``backend='auto'`` reads: the autotuner's cached pick for a layout and q's shape.

The tuner (``tuning.autotune``) saves each pick under the layout's content hash and under the
hash of each re-blocked variant (``tuning.cache``); these lookups never raise on a broken cache
(a bad cache must never break ``stbench.attention``) and return only picks that can run here.
"""

from __future__ import annotations

import torch

from stbench import backends
from stbench.tuning import cache


def cached_entry(layout, q, mode: str | None = None, objective: str = "time", path=None):
    """The cache entry for attention over ``layout`` with q [B, H, N, D], or None."""
    if mode is None:
        mode = "fwd+bwd" if (q.requires_grad and torch.is_grad_enabled()) else "fwd"
    dtype = str(q.dtype).removeprefix("torch.")
    for m in (mode, "fwd" if mode == "fwd+bwd" else "fwd+bwd"):
        e = cache.lookup(layout.content_hash, int(q.shape[0]), int(q.shape[-1]), dtype, m,
                         objective, path=path)
        if e is not None:
            return e
    return None


def _entry_or_none(layout, q, path) -> dict | None:
    try:
        return cached_entry(layout, q, path=path)
    except Exception:  # noqa: BLE001 - a broken cache must never break attention()
        return None


def _usable(pick: dict, q, layout=None) -> tuple[str, dict] | None:
    """(backend, config) of a cached pick when it is well formed and can run here."""
    name, config = pick.get("backend"), pick.get("config")
    if not isinstance(name, str) or not isinstance(config, dict) or name not in backends.REGISTRY:
        return None
    if backends.unavailable_reason(name, q.device, q.dtype, layout) is not None:
        return None
    return name, config


def cached_best(layout, q, path=None) -> tuple[str, dict, int] | None:
    """(backend, config, block): the overall best tuned for this layout and q's shape, dtype and
    this environment, whose block may differ from the layout's own (then run it on
    ``layout.reblock(block)``, the same token pattern); falls back to the best at the layout's
    own block when the overall winner cannot run here; None when nothing usable is cached."""
    e = _entry_or_none(layout, q, path)
    if e is None:
        return None
    best = _usable(e, q)
    if best is not None and isinstance(e.get("block"), int):
        return (*best, e["block"])
    same = _usable(e.get("same_block") or {}, q)
    return None if same is None else (*same, layout.block)


def cached_pick(layout, q, path=None) -> tuple[str, dict] | None:
    """(backend, config) tuned for this layout AT ITS OWN BLOCK and q's shape, dtype and this
    environment, or None (the overall best, maybe at another block: ``cached_best``)."""
    e = _entry_or_none(layout, q, path)
    return None if e is None else _usable(e.get("same_block") or {}, q, layout)
