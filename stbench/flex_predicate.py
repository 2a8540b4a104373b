"""Peer ``flex_predicate``: FlexAttention on the BlockMask a user builds from a token rule.

Where the peer ``flex`` hands FlexAttention our exact block lists, this one does what a
FlexAttention user with the paper's masks does: writes the mask as a token predicate
(``problems.TOKEN_RULES``, found by the layout's spec name) and builds the BlockMask with
``create_block_mask`` at the layout's block (``kernels.flex.flex_block_mask_from_predicate``).
The BlockMask is built on the first call for a (rule, N, block, device) and kept, so it is part
of ``prepare_ms``, never of the timed call. Like ``flex``, its backward needs blocks of 128:
with gradients, a smaller block is raised to 128; below 128 the forward tiles default to the
block. Layouts without a token rule are unsupported (the reason names the rules there are).

Config keys: FlexAttention's kernel options (``kernels.flex.KERNEL_OPTION_KEYS``), and
``eager_mask`` (true: build the BlockMask without ``torch.compile``, the same mask; its compiled
build hung on a fresh H200 host, and at N <= 16384 the eager N x N predicate fits in memory).
"""

from __future__ import annotations

import functools

import torch

from stbench.backends import BackendUnavailable
from stbench.kernels import flex
from stbench.problems import TOKEN_RULES

MASK_CACHE_SIZE = 8  # BlockMasks kept (per rule, N, block, device, build)


def check_available(device: torch.device, dtype: torch.dtype) -> None:
    try:
        flex.check_available(device, dtype)
    except BackendUnavailable as exc:
        raise BackendUnavailable(f"flex_predicate runs FlexAttention: {exc}") from None


def supports(layout) -> str | None:
    if layout.name in TOKEN_RULES:
        return None
    return (f"layout {layout.name!r} has no token rule for create_block_mask: flex_predicate "
            f"runs {', '.join(sorted(TOKEN_RULES))} (stbench.problems.TOKEN_RULES)")


def config_space(layout, head_dim: int, dtype: torch.dtype) -> list[dict]:
    """FlexAttention's defaults at the layout's block (the tuner's axis is the block itself)."""
    return [{}]


@functools.lru_cache(maxsize=MASK_CACHE_SIZE)
def _block_mask(rule_name: str, n_ctx: int, block: int, device: str, compile_mask: bool):
    return flex.flex_block_mask_from_predicate(TOKEN_RULES[rule_name], n_ctx, None, block,
                                               device, compile_mask=compile_mask)


def attention(q, k, v, layout, scale: float, config: dict | None = None, compiled: bool = True):
    """q, k, v [B, H, N, D] (original token order) -> out [B, H, N, D] through FlexAttention
    with ``create_block_mask`` over the layout's token rule. ``compiled=False``: PyTorch's eager
    FlexAttention and an eager mask build (forward only on the CPU: for tests)."""
    why = supports(layout)
    if why is not None:
        raise ValueError(f"flex_predicate is not supported here: {why}")
    options = dict(config or {})
    eager = bool(options.pop("eager_mask", False)) or not compiled
    unknown = {key for key in options if key.removeprefix("fwd_").removeprefix("bwd_")
               not in flex.KERNEL_OPTION_KEYS}
    if unknown:
        raise ValueError(f"config keys {sorted(unknown)} are unknown to backend 'flex_predicate':"
                         f" use eager_mask or {', '.join(flex.KERNEL_OPTION_KEYS)}")
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    block = _mask_block(layout, needs_grad)
    if block < flex.DEFAULT_BLOCK:  # the forward kernel's tiles must divide the sparse block
        options.setdefault("BLOCK_M", block)
        options.setdefault("BLOCK_N", block)
    mask = _block_mask(layout.name, layout.n_ctx, block, str(q.device), not eager)
    return flex.flex_with_block_mask(q, k, v, mask, scale, kernel_options=options or None,
                                     compiled=compiled)


def _mask_block(layout, grad: bool) -> int:
    """The BlockMask's block: the layout's, raised to 128 for a backward."""
    return max(layout.block, flex.MIN_BACKWARD_BLOCK) if grad else layout.block


def structure_bytes(layout, device, config: dict | None = None, grad: bool = False) -> int:
    """Bytes of the BlockMask ``create_block_mask`` built for the layout's rule (kept between
    calls), as a call with ``config`` (and gradients: ``grad``) on ``device`` uses it."""
    eager = bool(dict(config or {}).get("eager_mask", False))
    return flex.tensor_bytes(_block_mask(layout.name, layout.n_ctx, _mask_block(layout, grad),
                                         str(device), not eager))
