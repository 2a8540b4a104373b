"""``stbench.attention``: validate inputs, pick a backend, run it."""

from __future__ import annotations

import functools
import math

import torch

from stbench import backends
from stbench.layouts import Layout, LayoutError
from stbench.tuning import picks

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def validate_inputs(q, k, v, layout, scale) -> float:
    """Check q, k, v against each other and the layout; return the scale to use.

    q, k, v: [B, H, N, D] tensors of one floating dtype on one device; N = layout.n_ctx,
    H = layout.heads. Raises ValueError / TypeError naming the parameter and the fix.
    """
    if not isinstance(layout, Layout):
        raise TypeError(
            f"layout must be a stbench.layouts.Layout, got {type(layout).__name__}: build one "
            "with stbench.layouts.causal(...), fixed(...), from_token_mask(...), ..."
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dimensions [B, H, N, D], got shape {tuple(t.shape)}: "
                "for [B, N, H, D] inputs pass x.transpose(1, 2)"
            )
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"{name}.dtype={t.dtype} is not supported: use one of "
                f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}: cast them"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}: move them"
        )
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if q.shape != k.shape:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must have the same shape [B, H, N, D] "
            "(self-attention over one sequence)"
        )
    b, h, n, d = q.shape
    if (h, n) != (layout.heads, layout.n_ctx) and (n, h) == (layout.heads, layout.n_ctx):
        raise ValueError(
            f"q has shape {tuple(q.shape)}, which reads as [B, N, H, D] for this layout (N = "
            f"{layout.n_ctx}, H = {layout.heads}): the axes look swapped; stbench takes "
            "[B, H, N, D]: pass q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)"
        )
    if n != layout.n_ctx:
        raise ValueError(
            f"q has N={n} tokens but layout.n_ctx={layout.n_ctx}: build the layout for n_ctx={n}"
        )
    if h != layout.heads:
        raise ValueError(
            f"q has H={h} heads but layout.heads={layout.heads}: build the layout with heads={h}"
        )
    if b == 0 or d == 0:
        raise ValueError(f"q has an empty dimension: shape {tuple(q.shape)}")
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, (bool, torch.Tensor)) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a Python float or None, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale={scale} must be a finite positive float (default 1/sqrt(D))")
    return scale


@functools.lru_cache(maxsize=16)
def _reblocked(layout: Layout, block: int) -> Layout:
    """``layout`` at another block size, built once per (layout content, block)."""
    return layout.reblock(block)


def resolve_backend(
    name: str, q: torch.Tensor, layout: Layout
) -> tuple[str, dict | None, Layout]:
    """Backend name, tuned config and the layout to run for ``name``. 'auto' consults the
    tuning cache, whose pick may be the same token pattern at another block granularity."""
    if name != "auto":
        backends.info(name)  # raises UnknownBackend listing the registered names
        return name, None, layout
    picked = picks.cached_best(layout, q)
    if picked is not None:
        backend, config, block = picked
        if block != layout.block:
            try:
                layout = _reblocked(layout, block)
            except LayoutError:  # that granularity is not exact for this pattern: stay
                config = None
        if config is not None:
            return backend, config, layout
    for candidate in backends.AUTO_FALLBACK_ORDER:
        if backends.unavailable_reason(candidate, q.device, q.dtype, layout) is None:
            return candidate, None, layout
    raise backends.BackendUnavailable(f"no backend can run on {q.device} with {q.dtype}")


def attention(q, k, v, layout: Layout, backend: str = "auto", scale=None, config=None):
    """Block-sparse attention over ``layout``.

    q, k, v: [B, H, N, D]; returns out [B, H, N, D] with
    ``out[b,h,i] = sum_j softmax_j(scale * q_i . k_j) v_j`` over the j where
    ``layout.token_mask()[h, i, j]``; a row with no allowed key is zero. ``scale`` defaults to
    1/sqrt(D). ``backend``: a registered name (see ``stbench.backends.names()``) or 'auto', the
    fastest tuned backend that runs here, at the block granularity the autotuner found best
    (re-blocking is exact: the token pattern, and so the result, is unchanged). ``config``: a backend configuration (tiles, warps...),
    default: the tuned or built-in one.
    """
    scale = validate_inputs(q, k, v, layout, scale)
    name, tuned, layout = resolve_backend(backend, q, layout)
    module = backends.load(name)
    module.check_available(q.device, q.dtype)
    if hasattr(module, "supports"):
        why = module.supports(layout)
        if why is not None:
            raise backends.BackendUnavailable(f"backend {name!r} cannot run this layout: {why}")
    return module.attention(q, k, v, layout, scale, config if config is not None else tuned)
