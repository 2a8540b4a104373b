"""``stbench.attention``: validate inputs, pick a backend, run it."""

from __future__ import annotations

import math

import torch

from stbench import backends
from stbench.layouts import Layout
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


def resolve_backend(name: str, q: torch.Tensor, layout: Layout, config=None,
                    mode: str | None = None) -> tuple[str, dict | None, Layout]:
    """(backend, config, layout) to run for ``backend=name``. Given a ``config``, ``name`` runs
    it on ``layout`` as built. Without one, ``name`` ('auto' or a registered backend) runs its
    checked tuned pick for this layout, q's shape and ``mode`` (default: from q's
    requires_grad), which may be the same token pattern at another block (``tuning.picks``)."""
    if name != "auto":
        backends.info(name)  # raises UnknownBackend listing the registered names
        if config is not None:
            return name, config, layout
    choice = picks.choose(name, layout, q, mode or picks.call_mode(q))
    if choice is None:
        raise backends.BackendUnavailable(f"no backend can run on {q.device} with {q.dtype}")
    if choice.block != layout.block:
        layout = picks.reblocked(layout, choice.block)
    return choice.backend, config if config is not None else choice.config, layout


def attention(q, k, v, layout: Layout, backend: str = "auto", scale=None, config=None):
    """Block-sparse attention over ``layout``.

    q, k, v: [B, H, N, D]; returns out [B, H, N, D] with
    ``out[b,h,i] = sum_j softmax_j(scale * q_i . k_j) v_j`` over the j where
    ``layout.token_mask()[h, i, j]``; a row with no allowed key is zero. ``scale`` defaults to
    1/sqrt(D).

    ``backend``: a registered name (see ``stbench.backends.names()``) or 'auto', the fastest
    tuned backend that runs here. ``config``: a backend configuration (tiles, warps...), run on
    the layout as built; ``{}`` is the backend's built-in default. Without a config, a backend
    runs its tuned pick for this problem and mode (forward only, or forward+backward when q, k
    or v requires grad): from the local tuning cache for this environment, else from the picks
    shipped for this GPU model, else its built-in default; a pick may run the same token
    pattern at another block granularity (re-blocking is exact: the result is unchanged). A
    pick that is malformed or cannot run here is skipped with one warning saying why
    (``stbench.tuning.picks``). Without a GPU, Triton kernels run only under Triton's
    interpreter (``TRITON_INTERPRET=1`` set before triton is imported; tens of times slower
    than the dense reference, for tests): 'auto' picks them on a CPU only when no compiled
    backend can run.
    """
    scale = validate_inputs(q, k, v, layout, scale)
    name, config, layout = resolve_backend(backend, q, layout, config,
                                           picks.call_mode(q, k, v))
    module = backends.load(name)
    module.check_available(q.device, q.dtype)
    if hasattr(module, "supports"):
        why = module.supports(layout)
        if why is not None:
            raise backends.BackendUnavailable(f"backend {name!r} cannot run this layout: {why}")
    return module.attention(q, k, v, layout, scale, config)
