"""Peer backend ``flex``: PyTorch FlexAttention (compiled), the layout given as a BlockMask.

The BlockMask is built DIRECTLY from the device plan's CSR lists, never by evaluating a mask
over N x N tokens:

    per pattern p, query block r:   FULL entries  -> full_kv_num_blocks / full_kv_indices
                                    DIAG, PARTIAL -> kv_num_blocks / kv_indices (mask_mod runs)
    per head h: the lists of pattern head_pattern[h]  (one broadcast head when all heads agree)

``mask_mod(b, h, q, k)`` is exact at every (q, k): it reads a per-pattern block table
``slot[p, q // b, k // b]`` (0 empty, 1 full, 2 causal diagonal, 3 + m partial mask m of the
plan's packed bitmask table) and, for partial blocks, the bit ``k % b`` of row ``q % b`` of
packed mask m (kept as bytes: see ``_mask_bytes``); for diagonal blocks ``q % b >= k % b``.
The table is O(P nb^2) int8/int16 bytes (nb = N / b blocks per side, P distinct head
patterns): 134 MB at N = 1,048,576, b = 128, P = 2. The compiled path uses a table-free
``lo[h] <= q - k < hi[h]`` instead wherever that is exact (``band_bounds``). FlexAttention
itself keeps its index lists as dense [H, nb, nb] int32 (kv and the transposed q lists), so the
BlockMask costs about 16 H nb^2 bytes on top.

Layouts carrying a permutation (OpenAI's strided transpose): q, k, v are gathered into the
layout's own order per head before the kernel and the output is gathered back after it, as a
FlexAttention user would run that head; the two gathers are part of the measured time.

BLOCK_SIZE is the layout's block (FlexAttention's default is 128; smaller blocks are allowed as
BLOCK_SIZE=(b, b), with the forward tiles BLOCK_M = BLOCK_N = b unless the config says
otherwise). Its backward does not compile below 128 (torch 2.11 on the H200), so when q, k or v need
gradients a layout at a smaller block is re-blocked exactly to 128 first, as a FlexAttention
user has to (``config={"block": b}`` forces a block). ``config``: the keys of
FlexAttention's kernel_options (``BLOCK_M``, ``BLOCK_N``, ``num_warps``, ``num_stages``, ...,
optionally ``fwd_`` / ``bwd_`` prefixed) pass through; ``{"block": b}`` re-blocks the layout
exactly first (``layout.reblock``; the autotuner does that itself, so ``config_space`` lists
kernel tiles only).

Availability: CUDA only. On the CPU torch 2.13's FlexAttention has no backward at all (and its
first compiled forward takes 7-30 s, later layouts about 1 s, on the 2-core dev box), so the
backend is listed as unavailable there; the CPU tests run the compiled forward once and the
uncompiled one (``compiled=False``) to check the BlockMask and the mask_mod. Empty rows give
zeros (FlexAttention's rule).

``flex_block_mask_from_predicate`` builds the BlockMask the way a user with a token predicate
would (``create_block_mask``), the baseline of the paper-mask comparison (the `paper` preset).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

from stbench.errors import BackendUnavailable
from stbench.layouts import DIAG, FULL, Layout, plan_for
from stbench.layouts.plan import unpack_masks

DEFAULT_BLOCK = 128  # FlexAttention's default sparse block size
MAX_BAND_COMBOS = 4096  # distinct (pattern, block offset, mask) to test for a band mask_mod
FALLBACK_NUM_STAGES = 2  # when inductor finds no default config that fits in shared memory
# (layout hash, dtype, head dim, requires grad) whose default config failed to fit: the retry
# is remembered so that a timed call never pays a failed compilation.
_NEEDS_FEWER_STAGES: set = set()
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # FlexAttention's dtypes
# kernel_options FlexAttention takes; a "fwd_" / "bwd_" prefix limits one to that pass
KERNEL_OPTION_KEYS = (
    "BLOCK_M", "BLOCK_N", "BLOCK_M1", "BLOCK_N1", "BLOCK_M2", "BLOCK_N2", "num_warps",
    "num_stages", "PRESCALE_QK",
)
TILE_CANDIDATES = (64, 32)  # square forward tiles tried below the sparse block
# slot codes in the per-pattern block table
SLOT_EMPTY, SLOT_FULL, SLOT_DIAG, SLOT_PARTIAL0 = 0, 1, 2, 3
MAX_TABLE_BYTES = 2**31  # refuse layouts whose block table (P nb^2 entries) would be larger
BLOCK_MASK_CACHE_SIZE = 16
STRUCTURE_DEPTH = 4  # FlexLayout -> BlockMask -> mask_mod closure -> tensors
RECOMPILE_LIMIT = 256  # dynamo recompilations allowed (one per layout / block / shape family)
# FlexAttention's backward does not compile with sparse blocks below 128 (torch
# 2.11 on the H200): when gradients are needed, smaller layouts are re-blocked exactly to it.
MIN_BACKWARD_BLOCK = 128


def _flex_module():
    try:
        from torch.nn.attention import flex_attention as fa
    except ImportError as exc:  # torch < 2.5
        raise BackendUnavailable(f"backend 'flex' needs torch >= 2.5 ({exc})") from None
    return fa


@functools.lru_cache(maxsize=1)
def compiled_flex_attention():
    """``torch.compile(flex_attention)``, made once per process. Each layout brings its own
    mask_mod (and each block size its own kernel), so one process measuring many layouts
    recompiles more than dynamo's default limit of 8 allows, after which it would silently run
    the unfused eager version; the limit is raised to RECOMPILE_LIMIT. ``dynamic=False``: every
    shape gets its own static kernel (as FlexAttention's own benchmarks compile it); the
    dynamic-shape recompile dynamo would otherwise make on the second shape also hit an
    inductor C++ codegen error on the CPU (torch 2.13)."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name,
                    max(getattr(torch._dynamo.config, name), RECOMPILE_LIMIT))
    return torch.compile(_flex_module().flex_attention, dynamic=False)


# --------------------------------------------------------------------------- backend interface
def check_available(device: torch.device, dtype: torch.dtype) -> None:
    _flex_module()
    if torch.device(device).type != "cuda":
        raise BackendUnavailable(
            "backend 'flex' needs a CUDA GPU: FlexAttention on the CPU has no backward "
            "(torch 2.13); run it on the GPU machine"
        )
    if dtype not in SUPPORTED_DTYPES:
        raise BackendUnavailable(
            f"backend 'flex' does not support dtype={dtype}: use float32, bfloat16 or float16"
        )


def supports(layout: Layout) -> str | None:
    if _table_bytes(layout) > MAX_TABLE_BYTES:
        return (
            f"its block table needs {_table_bytes(layout) / 2**30:.1f} GiB (patterns x nb^2): use "
            "a coarser block for flex"
        )
    return None


def config_space(layout: Layout, head_dim: int, dtype: torch.dtype) -> list[dict]:
    """FlexAttention's forward tiles at the layout's block: the default (tiles = block below
    128, FlexAttention's own choice at 128) and square tiles of 64 / 32 below that. The block
    granularity itself is the autotuner's axis (it re-blocks the layout and asks again)."""
    space: list[dict] = [{}]
    for tile in TILE_CANDIDATES:
        if tile < layout.block:
            space.append({"BLOCK_M": tile, "BLOCK_N": tile})
    return space


def attention(q, k, v, layout: Layout, scale: float, config: dict | None = None):
    """q, k, v [B, H, N, D] -> out [B, H, N, D] through compiled FlexAttention."""
    return flex_forward(q, k, v, layout, scale, config, compiled=True)


# --------------------------------------------------------------------------- the BlockMask
@dataclass(frozen=True, eq=False)
class FlexLayout:
    """A layout prepared for FlexAttention on one device."""

    block_mask: object  # torch.nn.attention.flex_attention.BlockMask, [1, H or 1, nb, nb]
    compiled_block_mask: object  # the same lists, a table-free mask_mod where that is exact
    gather: torch.Tensor | None  # int64 [H, N]: original token at each layout position
    scatter: torch.Tensor | None  # int64 [H, N]: layout position of each original token
    slots: torch.Tensor  # int8 / int16 [P, nb, nb]: the block table the mask_mod reads


def _table_bytes(layout: Layout) -> int:
    plan = plan_for(layout, "cpu")
    width = 1 if layout.masks.shape[0] + SLOT_PARTIAL0 <= 127 else 2
    return plan.n_patterns * plan.n_blocks**2 * width


def _rows_of_entries(row_ptr: torch.Tensor) -> torch.Tensor:
    """int64 [E]: global row id (p * nb + r) of each entry of CSR pointers [P, nb + 1]."""
    lengths = (row_ptr[:, 1:] - row_ptr[:, :-1]).reshape(-1)
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=row_ptr.device), lengths)


def _ordered_lists(rows, cols, n_rows: int, width: int):
    """(counts int32 [n_rows], indices int32 [n_rows, width]) from entries sorted by row."""
    counts = torch.bincount(rows, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    idx = torch.zeros(n_rows, width, dtype=torch.int32, device=rows.device)
    idx[rows, rank] = cols.to(torch.int32)
    return counts.to(torch.int32), idx


def _mask_bytes(words: torch.Tensor, block: int, device) -> torch.Tensor:
    """The plan's packed masks int32 [M, b, W] (bit j % 32 of word j // 32) as bytes uint8
    [M or 1, b, 4 W] (bit j % 8 of byte j // 8). Byte-wide on purpose: Triton pipelines a
    4-byte gather inside the mask_mod with cp.async into (num_stages - 1) shared buffers of
    BLOCK_M x BLOCK_N x 4 bytes (2 x 64 KiB at FlexAttention's sm90 default 128 x 128, 3
    stages: the 'Required: 247808' shared-memory failure), while a 1-byte gather stays a plain
    load. No partial block: one zero row keeps the lookup well defined."""
    if words.shape[0] == 0:
        return torch.zeros(1, block, max(1, -(-block // 8)), dtype=torch.uint8, device=device)
    shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int64, device=words.device)
    parts = (words.to(torch.int64).unsqueeze(-1) >> shifts) & 0xFF  # [M, b, W, 4]
    return parts.reshape(words.shape[0], words.shape[1], -1).to(torch.uint8).contiguous()


def band_bounds(layout: Layout) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per head, the interval [lo, hi) of q - k (layout order) that reproduces the layout exactly
    on every causal-diagonal and partial block, or None when some head has none.

    Compiled FlexAttention applies the mask_mod only to the blocks in the partial lists (full
    blocks skip it, empty ones are never visited), so on those blocks the table lookups of
    ``_make_mask_mod`` can be replaced by ``lo[h] <= q - k < hi[h]``: causal, fixed and strided
    (diagonal blocks only, [0, b)), local and sliding windows ([0, W)) qualify; the merged
    strided head (its stride diagonals) does not. The table reads cost a scattered gather per
    (q, k) of every masked tile; lo[h] and hi[h] are one scalar read per program. Returns int32
    tensors [H] (CPU)."""
    plan = plan_for(layout, "cpu")
    b, nb = layout.block, plan.n_blocks
    rows = _rows_of_entries(plan.row_ptr.long())
    masked = plan.col_kind != FULL
    pattern = rows[masked] // nb
    d = rows[masked] % nb - plan.col_idx[masked].long()
    combos = torch.stack([pattern, d, plan.col_kind[masked].long(), plan.col_mask[masked].long()],
                         1).unique(dim=0)
    if combos.shape[0] > MAX_BAND_COMBOS:
        return None
    tril = torch.ones(b, b, dtype=torch.bool).tril()
    masks = unpack_masks(plan.masks, b) if plan.masks.shape[0] else None
    within_block = torch.arange(b).view(b, 1) - torch.arange(b).view(1, b)  # i - j
    allowed = [[] for _ in range(plan.n_patterns)]
    refused = [[] for _ in range(plan.n_patterns)]
    for p, dd, kind, mid in combos.tolist():
        m = tril if kind == DIAG else masks[mid]
        delta = dd * b + within_block
        allowed[p].append(delta[m])
        refused[p].append(delta[~m])
    lo = torch.zeros(plan.n_patterns, dtype=torch.int32)
    hi = torch.ones(plan.n_patterns, dtype=torch.int32)  # a pattern without masked blocks
    for p in range(plan.n_patterns):
        if not allowed[p]:
            continue
        yes, no = torch.cat(allowed[p]), torch.cat(refused[p])
        if yes.numel() == 0:
            return None
        lo[p], hi[p] = int(yes.min()), int(yes.max()) + 1
        if ((no >= lo[p]) & (no < hi[p])).any():
            return None
    head_pattern = plan.head_pattern.long()
    return lo[head_pattern], hi[head_pattern]


def _band_mask_mod(lo: torch.Tensor, hi: torch.Tensor):
    """``lo[h] <= q - k < hi[h]`` (see ``band_bounds``; exact only where compiled)."""

    def mask_mod(b, h, q_idx, kv_idx):
        diff = q_idx - kv_idx
        return (diff >= lo[h]) & (diff < hi[h])

    return mask_mod


def _make_mask_mod(slots, packed, head_pattern, block: int):
    """Exact token predicate from the block table (see the module docstring)."""

    def mask_mod(b, h, q_idx, kv_idx):
        qi, kj = q_idx % block, kv_idx % block
        slot = slots[head_pattern[h], q_idx // block, kv_idx // block].to(torch.int32)
        mid = torch.clamp(slot - SLOT_PARTIAL0, min=0)
        byte = packed[mid, qi, kj // 8].to(torch.int32)
        bit = (byte >> (kj % 8)) & 1
        return (
            (slot == SLOT_FULL)
            | ((slot == SLOT_DIAG) & (qi >= kj))
            | ((slot >= SLOT_PARTIAL0) & (bit == 1))
        )

    return mask_mod


def build_flex_layout(layout: Layout, device) -> FlexLayout:
    """Turn ``layout``'s plan into a BlockMask on ``device`` (uncached; see ``flex_layout``)."""
    fa = _flex_module()
    device = torch.device(device)
    why = supports(layout)
    if why is not None:
        raise BackendUnavailable(f"backend 'flex' cannot run this layout: {why}")
    plan = plan_for(layout, device)
    n_pat, nb, b, heads = plan.n_patterns, plan.n_blocks, layout.block, layout.heads
    row_ptr = plan.row_ptr.long()
    rows = _rows_of_entries(row_ptr)
    cols, kind = plan.col_idx.long(), plan.col_kind.long()
    is_full = kind == FULL
    n_rows = n_pat * nb
    full_n, full_idx = _ordered_lists(rows[is_full], cols[is_full], n_rows, nb)
    part_n, part_idx = _ordered_lists(rows[~is_full], cols[~is_full], n_rows, nb)

    code = torch.where(
        is_full, SLOT_FULL, torch.where(kind == DIAG, SLOT_DIAG, SLOT_PARTIAL0 + plan.col_mask)
    )
    width = torch.int8 if layout.masks.shape[0] + SLOT_PARTIAL0 <= 127 else torch.int16
    slots = torch.zeros(n_rows * nb, dtype=width, device=device)
    slots[rows * nb + cols] = code.to(width)
    slots = slots.reshape(n_pat, nb, nb)
    packed = _mask_bytes(plan.masks, b, device)
    head_pattern = plan.head_pattern.long()

    def per_head(t):  # [P * nb, ...] -> [1, H or 1, nb, ...]
        t = t.reshape(n_pat, nb, *t.shape[1:])
        t = t if n_pat == 1 else t.index_select(0, head_pattern)
        return t.unsqueeze(0).contiguous()

    lists = (per_head(part_n), per_head(part_idx), per_head(full_n), per_head(full_idx))

    def block_mask_with(mask_mod):
        return fa.BlockMask.from_kv_blocks(*lists, BLOCK_SIZE=(b, b), mask_mod=mask_mod,
                                           seq_lengths=(layout.n_ctx, layout.n_ctx))

    block_mask = block_mask_with(_make_mask_mod(slots, packed, head_pattern, b))
    band = band_bounds(layout)
    compiled_block_mask = block_mask
    if band is not None:
        compiled_block_mask = block_mask_with(_band_mask_mod(*(t.to(device) for t in band)))
    gather = scatter = None
    if layout.perms is not None:
        ident = torch.arange(layout.n_ctx)
        gather = torch.stack(
            [ident if layout.perm_of_head(h) is None else layout.perm_of_head(h)
             for h in range(heads)]
        )
        scatter = torch.empty_like(gather)
        scatter.scatter_(1, gather, ident.expand(heads, -1).contiguous())
        gather, scatter = gather.to(device), scatter.to(device)
    return FlexLayout(block_mask, compiled_block_mask, gather, scatter, slots)


def call_layout(layout: Layout, block: int | None, needs_grad: bool) -> Layout:
    """The layout a call runs: re-blocked exactly to ``block`` (config), or to 128 when the
    backward runs on a smaller block; LayoutError names a bad block."""
    if block is None and needs_grad and layout.block < MIN_BACKWARD_BLOCK:
        block = MIN_BACKWARD_BLOCK
    if block is not None and block != layout.block:
        layout = layout.reblock(int(block))
    return layout


def tensor_bytes(*objs) -> int:
    """Bytes of the distinct tensor storages held by ``objs`` (tensors, or objects whose
    attributes, or whose functions' closures, hold them: a BlockMask and its mask_mod)."""
    seen: dict[int, int] = {}

    def visit(x, depth: int) -> None:
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif depth and callable(x) and getattr(x, "__closure__", None):
            for cell in x.__closure__:
                visit(cell.cell_contents, depth - 1)
        elif depth and hasattr(x, "__dict__"):
            for v in vars(x).values():
                visit(v, depth - 1)
        elif depth and isinstance(x, (tuple, list)):
            for v in x:
                visit(v, depth - 1)

    for obj in objs:
        visit(obj, STRUCTURE_DEPTH)
    return sum(seen.values())


def structure_bytes(layout: Layout, device, config=None, grad: bool = False) -> int:
    """Bytes FlexAttention keeps for ``layout`` between calls (the backend interface's optional
    ``structure_bytes``): both BlockMasks' kv and q index lists, their mask_mods' tables and
    the per-head gathers, at the block a call with ``config`` (and gradients: ``grad``) runs."""
    lay = call_layout(layout, dict(config or {}).get("block"), grad)
    return tensor_bytes(flex_layout(lay, device))


@functools.lru_cache(maxsize=BLOCK_MASK_CACHE_SIZE)
def _flex_layout_cached(layout: Layout, device: str) -> FlexLayout:
    return build_flex_layout(layout, device)


def flex_layout(layout: Layout, device) -> FlexLayout:
    """The BlockMask of ``layout`` on ``device``, cached by (layout content, device); it
    broadcasts over the batch, so one serves every B."""
    return _flex_layout_cached(layout, str(torch.device(device)))


class _Permute(torch.autograd.Function):
    """y[:, h, i] = x[:, h, index[h, i]] for a per-head permutation ``index`` whose inverse is
    ``inverse``. Its backward is the inverse gather, not the scatter-add autograd derives for
    torch.gather (atomics over an index expanded across D). torch.gather measured faster than
    an index_select over rows: the strided forward at N = 2048..8192, B x N = 65536, H = 8,
    D = 64 took 0.59-0.61 ms with gather (reports/standard_run1/ at the git tag reports-archive)
    and 1.40-1.42 ms with index_select (reports/standard/h200/, same problems), on one H200."""

    @staticmethod
    def forward(ctx, x, index, inverse):
        ctx.save_for_backward(inverse)
        return _gather(x, index)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return _gather(grad, inverse), None, None


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    bsz, heads, n, d = x.shape
    return torch.gather(x, 2, index.view(1, heads, n, 1).expand(bsz, heads, n, d))


def permute(x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """x [B, H, N, D] -> x[:, h, index[h]] per head (differentiable; ``inverse`` undoes it)."""
    return _Permute.apply(x, index, inverse)


def flex_forward(q, k, v, layout: Layout, scale: float, config=None, compiled: bool = True,
                 kernel_backend: str | None = None):
    """FlexAttention over ``layout``; ``compiled=False`` runs PyTorch's eager FlexAttention
    (slow, forward only on the CPU: for tests). ``kernel_backend``: FlexAttention's
    ``kernel_options["BACKEND"]`` ('FLASH' for the ``flex_flash`` peer; None: its default)."""
    config = dict(config or {})
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    layout = call_layout(layout, config.pop("block", None), needs_grad)
    unknown = {key for key in config if key.removeprefix("fwd_").removeprefix("bwd_")
               not in KERNEL_OPTION_KEYS}
    if unknown:
        raise ValueError(
            f"config keys {sorted(unknown)} are unknown to backend 'flex': use 'block' or "
            f"{', '.join(KERNEL_OPTION_KEYS)} (optionally prefixed fwd_ / bwd_)"
        )
    if layout.block < DEFAULT_BLOCK:
        # the forward kernel's tiles must divide the sparse block: match them by default
        config.setdefault("BLOCK_M", layout.block)
        config.setdefault("BLOCK_N", layout.block)
    if kernel_backend is not None:
        config["BACKEND"] = kernel_backend
    prepared = flex_layout(layout, q.device)
    if prepared.gather is not None:
        q, k, v = (permute(t, prepared.gather, prepared.scatter) for t in (q, k, v))
    fn = compiled_flex_attention() if compiled else _flex_module().flex_attention
    fallback_key = (layout.content_hash, q.dtype, q.shape[-1], q.requires_grad)
    if (compiled and fallback_key in _NEEDS_FEWER_STAGES
            and not {"num_stages", "fwd_num_stages"} & set(config)):
        config["fwd_num_stages"] = FALLBACK_NUM_STAGES
    block_mask = prepared.compiled_block_mask if compiled else prepared.block_mask
    try:
        out = fn(q, k, v, block_mask=block_mask, scale=scale, kernel_options=config or None)
    except Exception as exc:
        # torch 2.11 on the H200: with the table mask_mod reading 4-byte words, the default
        # forward config asked for 247,808 bytes of shared memory (limit 232,448) and inductor
        # gave up (see _mask_bytes). If a default config still does not fit, retry once with
        # one forward pipeline stage fewer, as its message advises; tuned configs that set the
        # stages themselves are left to fail (the autotuner records them).
        if ("out of resource" not in str(exc) or not compiled
                or {"num_stages", "fwd_num_stages"} & set(config)):
            raise
        _NEEDS_FEWER_STAGES.add(fallback_key)  # later calls go straight to the fallback
        # fwd_: an unprefixed num_stages would also override the backward's default
        config = {**config, "fwd_num_stages": FALLBACK_NUM_STAGES}
        out = fn(q, k, v, block_mask=block_mask, scale=scale, kernel_options=config)
    if prepared.scatter is not None:
        out = permute(out, prepared.scatter, prepared.gather)
    return out


# --------------------------------------------------------------------------- the naive baseline
def flex_block_mask_from_predicate(
    fn, n_ctx: int, heads: int | None = None, block: int = DEFAULT_BLOCK, device="cuda",
    compile_mask: bool | None = None,
):
    """A BlockMask the way a FlexAttention user builds one from a token predicate:
    ``create_block_mask`` over ``mask_mod(b, h, q, k) = fn(q, k)`` (or ``fn(h, q, k)`` when
    ``fn`` takes three arguments), at FlexAttention's default block 128 unless told. ``heads``:
    None broadcasts one mask over all heads. ``compile_mask``: build with ``_compile=True``
    (default on CUDA, as users do for long sequences)."""
    fa = _flex_module()
    n_args = len(inspect.signature(fn).parameters)
    if n_args == 3:
        def mask_mod(b, h, q_idx, kv_idx):
            return fn(h, q_idx, kv_idx)
    elif n_args == 2:
        def mask_mod(b, h, q_idx, kv_idx):
            return fn(q_idx, kv_idx)
    else:
        raise ValueError("fn must take (q_idx, k_idx) or (h, q_idx, k_idx)")
    device = torch.device(device)
    if compile_mask is None:
        compile_mask = device.type == "cuda"
    return fa.create_block_mask(
        mask_mod, None, heads, n_ctx, n_ctx, device=device, BLOCK_SIZE=block,
        _compile=compile_mask,
    )


def flex_with_block_mask(q, k, v, block_mask, scale: float, kernel_options=None,
                         compiled: bool = True):
    """Compiled FlexAttention with a ready BlockMask (q, k, v [B, H, N, D], original order)."""
    fn = compiled_flex_attention() if compiled else _flex_module().flex_attention
    return fn(q, k, v, block_mask=block_mask, scale=scale, kernel_options=kernel_options)
