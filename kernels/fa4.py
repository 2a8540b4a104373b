"""Peer backend ``fa4``: FlashAttention-4 (``flash-attn-4``, CuTe DSL), called directly.

Two routes, chosen exactly from the layout (never approximately):

- **dense forms** (``dense_form``): the token mask is full, plain causal, or one token window
  ``lo <= q - k < hi`` shared by every head with ``lo <= 0 < hi`` (no empty row) and no
  permutation: ``flash_attn_func(causal=...)`` or ``window_size=(hi - 1, -lo)``, FA4's own
  masks, no block lists;
- **block-sparse** (every other layout): the BlockMask that ``flex`` builds from the device plan
  handed to FA4 as ``BlockSparseTensorsTorch`` (``block_sparse_lists``), as FlexAttention's FLASH
  backend hands over its BlockMask: forward per (head, query block) the partial ("mask") and
  full key-block lists, backward the transposed per key-block lists. FULL blocks run unmasked;
  causal-diagonal and partial blocks need a ``mask_mod`` (CuTe DSL, ``kernels/fa4_masks.py``):
  ``lo[h] <= q - k < hi[h]`` where ``flex.band_bounds`` shows that is exact on every masked
  block, else an exact lookup in the per-pattern block table and the plan's packed bitmasks.
  Layouts with a permutation (the strided transpose) are gathered per head into the layout's
  order and back, as ``flex`` does (the gathers are part of the measured time).

Limits on sm90 (flash-attn-4 4.0.0b36, ``flash_attn/cute/interface.py``), each a ``supports`` or
``BackendUnavailable`` reason: fp16 / bf16 only; head dim 8..256 in steps of 8 (dense forms),
at most 128 with block sparsity (above it the sm90 KV tile is 112 / 96 / 80 tokens, which no
square block matches); the forward's query tile must divide the sparse query block and its key
tile equals the sparse key block, so forward blocks are 64 or 128; the backward's tiles are 128
x 128 (head dim <= 64) or 64 x 128, so gradients need block 128. A layout at another block is
re-blocked exactly to 128 first (``config={"block": b}`` forces a block), as ``flex`` does for
its backward. Empty rows give zeros.

Memory beyond q, k, v, out: FA4's log-sum-exp (B H N float32) and, block-sparse, the BlockMask's
lists (about 16 H nb^2 bytes, nb = N / block) plus the table mask's int32 block table (4 P nb^2
bytes, P distinct head patterns) where that mask is used.

Availability: ``flash-attn-4`` importable (``pip install 'stbench[fa4]'``) and a CUDA GPU of
compute capability 9.0 or newer.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

import torch

from stbench.backends import BackendUnavailable
from stbench.kernels import flex, sdpa
from stbench.layouts import FULL, Layout, LayoutError, plan_for
from stbench.layouts.plan import pack_masks

INSTALL_HINT = "pip install 'stbench[fa4]' (flash-attn-4 and the CuTe DSL runtime)"
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
MIN_CAPABILITY = (9, 0)  # FA4's Hopper (sm90) kernels and newer
HEAD_DIM_MULTIPLE = 8  # 16 bytes of fp16 / bf16: FA4's alignment
MAX_HEAD_DIM = 256  # FA4 on sm90
MAX_SPARSE_HEAD_DIM = 128  # block sparsity on sm90: the KV tile is 128 only up to here
FORWARD_BLOCKS = (64, 128)  # sm90 forward: query tile 64 or 128 divides the block; key tile = block
BACKWARD_BLOCK = 128  # sm90 backward: key tile 128, query tile 64 or 128 dividing the block
_FORWARD_BLOCKS_TEXT = " or ".join(map(str, FORWARD_BLOCKS))
MAX_TABLE_BYTES = 2**31  # the table mask_mod's int32 block table (P nb^2 entries)
FA4_LAYOUT_CACHE_SIZE = 16
CONFIG_KEYS = ("block",)


# --------------------------------------------------------------------------- the exact forms
@dataclass(frozen=True)
class DenseForm:
    """A layout FA4 runs with its own masks: ``kind`` 'full', 'causal' or 'window' (keys
    ``q - left <= k <= q + right``)."""

    kind: str
    left: int | None = None
    right: int | None = None


def _window_blocks_match(layout: Layout, lo: int, hi: int) -> bool:
    """True when every pattern's blocks are exactly those the token band ``lo <= q - k < hi``
    touches, FULL only where the band covers the whole block. (Which masked blocks hold the band
    exactly is ``flex.band_bounds``'s test.) Blocks are unique per pattern, so the count plus
    'every block touches the band' decides the set."""
    b, nb = layout.block, layout.n_blocks
    d = (layout.pat_q.long() - layout.pat_k.long())
    low, high = d * b - (b - 1), d * b + (b - 1)  # range of q - k inside a block at offset d
    if not bool(((low <= hi - 1) & (high >= lo)).all()):
        return False
    covered = (low >= lo) & (high <= hi - 1)
    if bool(((layout.pat_kinds == FULL) & ~covered).any()):
        return False
    d_min = max(-(nb - 1), -((b - 1 - lo) // b))  # smallest d with d b + b - 1 >= lo
    d_max = min(nb - 1, (hi + b - 2) // b)  # largest d with d b - (b - 1) <= hi - 1
    expected = sum(nb - abs(x) for x in range(d_min, d_max + 1))
    ptr = layout.pat_ptr
    return all(ptr[p + 1] - ptr[p] == expected for p in range(len(ptr) - 1))


@functools.lru_cache(maxsize=64)
def dense_form(layout: Layout) -> DenseForm | None:
    """The FA4 form of ``layout`` if its token mask is exactly full, plain causal, or one token
    window shared by all heads (no permutation, no empty row); else None. O(non-empty blocks)."""
    kind = sdpa.dense_kind(layout)
    if kind is not None:
        return DenseForm(kind)
    if layout.perms is not None:
        return None
    band = flex.band_bounds(layout)
    if band is None:
        return None
    lo, hi = band
    if not (bool((lo == lo[0]).all()) and bool((hi == hi[0]).all())):
        return None
    lo, hi = int(lo[0]), int(hi[0])
    if not lo <= 0 < hi or not _window_blocks_match(layout, lo, hi):
        return None
    return DenseForm("window", hi - 1, -lo)


# --------------------------------------------------------------------------- block lists
@dataclass(frozen=True)
class SparseLists:
    """FA4's block-sparse lists, int32, [1, H or 1, nb(, nb)]: ``mask_*`` the blocks that need
    the mask_mod (causal-diagonal, partial), ``full_*`` those that do not; per query block
    (forward) or, transposed, per key block (backward)."""

    mask_cnt: torch.Tensor
    mask_idx: torch.Tensor
    full_cnt: torch.Tensor
    full_idx: torch.Tensor


def block_sparse_lists(layout: Layout, device) -> tuple[SparseLists, SparseLists]:
    """(forward, backward) lists of ``layout``, read off the BlockMask ``flex`` builds from the
    device plan (FlexAttention's kv / q lists are FA4's forward / backward lists)."""
    bm = flex.flex_layout(layout, device).block_mask
    fwd = SparseLists(bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices)
    bwd = SparseLists(bm.q_num_blocks, bm.q_indices, bm.full_q_num_blocks, bm.full_q_indices)
    return fwd, bwd


def table_mask_tensors(layout: Layout, device) -> tuple[torch.Tensor, ...]:
    """The table mask_mod's aux tensors, int32: the block table ``slots`` [P, nb, nb] (``flex``'s
    codes: 0 empty, 1 full, 2 causal diagonal, 3 + m partial mask m), ``head_pattern`` [H], and
    the bitmask words [3 + M, b, W] indexed by the slot itself: row 0 none, row 1 all, row 2 the
    lower triangle, rows 3.. the plan's packed masks (bit j % 32 of word j // 32)."""
    plan = plan_for(layout, "cpu")
    b = layout.block
    slots = flex.flex_layout(layout, device).slots.to(torch.int32)
    ones = torch.ones(b, b, dtype=torch.bool)
    fixed_rows = pack_masks(torch.stack([~ones, ones, ones.tril()]))  # slots 0, 1, 2
    table = torch.cat([fixed_rows, plan.masks.reshape(-1, *fixed_rows.shape[1:])])
    return (slots.contiguous(), plan.head_pattern.to(device=device, dtype=torch.int32),
            table.to(device).contiguous())


# --------------------------------------------------------------------------- availability
def _cute_missing() -> str | None:
    try:
        found = importlib.util.find_spec("flash_attn.cute") is not None
    except (ImportError, ValueError):  # a flash_attn without CUDA, or a broken install
        found = False
    if found:
        return None
    return ("it needs flash-attn-4 (the module flash_attn.cute), which is not installed: "
            + INSTALL_HINT)


def require_flash_cute(name: str, device: torch.device, dtype: torch.dtype) -> None:
    """BackendUnavailable unless FA4 can run on ``device`` in ``dtype`` (shared with
    ``flex_flash``, which runs the same kernels)."""
    missing = _cute_missing()
    if missing is not None:
        raise BackendUnavailable(f"backend {name!r}: {missing}")
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise BackendUnavailable(f"backend {name!r} needs a CUDA GPU (FA4 has no CPU path)")
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        raise BackendUnavailable(
            f"backend {name!r} needs an sm90 (Hopper) or newer GPU for FlashAttention-4's CuTe "
            f"kernels; this GPU is sm{cap[0]}{cap[1]}: use 'flex' or 'triton' here"
        )
    if dtype not in SUPPORTED_DTYPES:
        raise BackendUnavailable(
            f"backend {name!r} does not support dtype={dtype}: FA4 runs float16 and bfloat16 only"
        )


def head_dim_reason(head_dim: int, sparse: bool) -> str | None:
    """Why FA4 cannot take ``head_dim`` on sm90 (``sparse``: with block-sparse tensors)."""
    top = MAX_SPARSE_HEAD_DIM if sparse else MAX_HEAD_DIM
    if head_dim % HEAD_DIM_MULTIPLE or not HEAD_DIM_MULTIPLE <= head_dim <= top:
        return (f"head dim {head_dim} is not one FA4 takes on sm90 "
                f"({'block-sparse' if sparse else 'dense forms'}: {HEAD_DIM_MULTIPLE}..{top}, a "
                f"multiple of {HEAD_DIM_MULTIPLE})")
    return None


def sparse_block_reason(layout: Layout) -> str | None:
    """Why ``layout`` cannot run block-sparse (at its block, or re-blocked to 128), or None."""
    if layout.block not in FORWARD_BLOCKS and layout.n_ctx % BACKWARD_BLOCK:
        return (f"FA4's sm90 block-sparse kernels take blocks of {_FORWARD_BLOCKS_TEXT} tokens "
                f"(gradients: {BACKWARD_BLOCK}); this layout is at block {layout.block} and "
                f"N={layout.n_ctx} is not a multiple of {BACKWARD_BLOCK}, so it cannot be "
                "re-blocked: use 'flex' or 'triton'")
    why = flex.supports(layout)
    if why is None and flex.band_bounds(layout) is None:
        plan = plan_for(layout, "cpu")
        table = 4 * plan.n_patterns * plan.n_blocks**2
        if table > MAX_TABLE_BYTES:
            why = (f"its mask_mod's block table needs {table / 2**30:.1f} GiB (patterns x nb^2 "
                   "int32): use a coarser block")
    return why


# --------------------------------------------------------------------------- backend interface
def check_available(device: torch.device, dtype: torch.dtype) -> None:
    require_flash_cute("fa4", device, dtype)


def supports(layout: Layout) -> str | None:
    if dense_form(layout) is not None:
        return None
    return sparse_block_reason(layout)


def config_space(layout: Layout, head_dim: int, dtype: torch.dtype) -> list[dict]:
    """Nothing to tune but the block, the autotuner's axis: one candidate at the blocks FA4's
    block-sparse kernels run (64, 128), none at the others (it would re-block them to 128, a
    duplicate). FA4 picks its tiles from the head dim and the block."""
    return [{}] if layout.block in FORWARD_BLOCKS else []


@dataclass(frozen=True, eq=False)
class Fa4Layout:
    """A block-sparse layout prepared for FA4 on one device."""

    forward: SparseLists
    backward: SparseLists
    mask: str | None  # None (every block FULL), 'band' or 'table'
    aux: tuple[torch.Tensor, ...]  # the mask_mod's aux tensors
    gather: torch.Tensor | None  # int64 [H, N], as in flex.FlexLayout
    scatter: torch.Tensor | None


@functools.lru_cache(maxsize=FA4_LAYOUT_CACHE_SIZE)
def _fa4_layout_cached(layout: Layout, device: str) -> Fa4Layout:
    fwd, bwd = block_sparse_lists(layout, device)
    prepared = flex.flex_layout(layout, device)
    mask, aux = None, ()
    if bool((layout.pat_kinds != FULL).any()):
        band = flex.band_bounds(layout)
        if band is not None:
            mask, aux = "band", tuple(t.to(device=device, dtype=torch.int32) for t in band)
        else:
            mask, aux = "table", table_mask_tensors(layout, device)
    return Fa4Layout(fwd, bwd, mask, aux, prepared.gather, prepared.scatter)


def fa4_layout(layout: Layout, device) -> Fa4Layout:
    """``layout``'s block lists and mask for FA4 on ``device``, cached by (content, device)."""
    return _fa4_layout_cached(layout, str(torch.device(device)))


def sparse_layout(name: str, layout: Layout, config: dict, needs_grad: bool) -> Layout:
    """The layout at the block FA4's block-sparse kernels run (for backend ``name``):
    ``config['block']``, else its own where FA4 takes it, else re-blocked exactly to 128."""
    block = config.get("block")
    if block is None and (layout.block not in FORWARD_BLOCKS
                          or (needs_grad and layout.block != BACKWARD_BLOCK)):
        block = BACKWARD_BLOCK
    if block is not None and block != layout.block:
        try:
            layout = layout.reblock(int(block))
        except LayoutError as exc:
            raise BackendUnavailable(
                f"backend {name!r} cannot re-block this layout: {exc}") from None
    if layout.block not in FORWARD_BLOCKS or (needs_grad and layout.block != BACKWARD_BLOCK):
        raise BackendUnavailable(
            f"backend {name!r} cannot run block {layout.block}: FA4's sm90 block-sparse forward "
            f"takes {_FORWARD_BLOCKS_TEXT}, its backward {BACKWARD_BLOCK}")
    return layout


def wants_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def attention(q, k, v, layout: Layout, scale: float, config: dict | None = None):
    """q, k, v [B, H, N, D] -> out [B, H, N, D] through ``flash_attn.cute.flash_attn_func``
    (FA4 works on [B, N, H, D] views of the same memory; the output is returned as such a view)."""
    config = dict(config or {})
    unknown = set(config) - set(CONFIG_KEYS)
    if unknown:
        raise ValueError(f"config keys {sorted(unknown)} are unknown to backend 'fa4': use "
                         f"{', '.join(CONFIG_KEYS)}")
    form = dense_form(layout) if "block" not in config else None
    why = head_dim_reason(q.shape[-1], sparse=form is None)
    if why is not None:
        raise BackendUnavailable(f"backend 'fa4' cannot run this problem: {why}")
    from flash_attn.cute import flash_attn_func

    if form is not None:
        window = (form.left, form.right) if form.kind == "window" else (None, None)
        out, _ = flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)), softmax_scale=scale,
                                 causal=form.kind == "causal", window_size=window)
        return out.transpose(1, 2)
    layout = sparse_layout("fa4", layout, config, wants_grad(q, k, v))
    why = sparse_block_reason(layout)
    if why is not None:
        raise BackendUnavailable(f"backend 'fa4' cannot run this layout: {why}")
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    from stbench.kernels import fa4_masks

    prepared = fa4_layout(layout, q.device)
    size = (layout.block, layout.block)
    fwd, bwd = (BlockSparseTensorsTorch(s.mask_cnt, s.mask_idx, s.full_cnt, s.full_idx,
                                        block_size=size)
                for s in (prepared.forward, prepared.backward))
    mask_mod = fa4_masks.mask_mod(prepared.mask, layout.block)
    if prepared.gather is not None:
        q, k, v = (flex.permute(t, prepared.gather, prepared.scatter) for t in (q, k, v))
    out, _ = flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)), softmax_scale=scale,
                             mask_mod=mask_mod, aux_tensors=list(prepared.aux) or None,
                             block_sparse_tensors=fwd, block_sparse_tensors_bwd=bwd)
    out = out.transpose(1, 2)
    if prepared.scatter is not None:
        out = flex.permute(out, prepared.scatter, prepared.gather)
    return out
