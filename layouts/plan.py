"""The device plan: the one index format every backend consumes.

A Layout compiles once (cached by its content hash) into per-pattern CSR lists. Heads whose block
lists and permutation are identical share one *pattern* (``head_pattern[h]``), so a layout whose
heads all agree costs one head's worth of index memory. With ``P`` patterns, ``nb`` blocks per
side, ``E`` stored entries over all patterns and ``M`` distinct partial masks:

Forward (per pattern p, query block r: entries ``row_ptr[p, r] .. row_ptr[p, r + 1] - 1``):
    row_ptr  int32 [P, nb + 1]   global offsets into the entry arrays below
    col_idx  int32 [E]           key block of each entry, ascending within a row
    col_kind int8  [E]           FULL=0 / DIAG=1 (causal diagonal) / PARTIAL=2
    col_mask int32 [E]           row of ``masks`` for PARTIAL entries, -1 otherwise
Backward (per pattern p, key block c: entries ``col_ptr[p, c] .. col_ptr[p, c + 1] - 1``):
    col_ptr  int32 [P, nb + 1]
    row_idx  int32 [E]           query block of each entry, ascending within a column
    row_kind int8  [E], row_mask int32 [E]   as above
Bitmasks:
    masks    int32 [M, b, W]     W = ceil(b / 32); bit (j % 32) of word j // 32 in row i is 1
                                 iff query i may attend key j inside the block
Permutation (the strided transpose), if any:
    perm     int32 [Q, N]        layout position -> original token;  inv_perm its inverse
    pattern_perm int32 [P]       row of ``perm`` each pattern uses, -1: identity

Memory: 4 * (2 (nb + 1) P) + 2 * 9 E + 4 b W M (+ 8 Q N) bytes. Building is vectorised
(bincounts, cumsums, a radix argsort per pattern); no Python loop runs over blocks, only over
patterns. The entry arrays may share memory with the Layout's (a view when one pattern).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass, fields

import numpy as np
import torch

from .layout import Layout

PLAN_CACHE_SIZE = 32


@dataclass(frozen=True, eq=False)
class Plan:
    """Compiled index lists of a Layout; see the module docstring for shapes."""

    n_ctx: int
    heads: int
    block: int
    layout_hash: str
    head_pattern: torch.Tensor  # int32 [H]
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    col_kind: torch.Tensor
    col_mask: torch.Tensor
    col_ptr: torch.Tensor
    row_idx: torch.Tensor
    row_kind: torch.Tensor
    row_mask: torch.Tensor
    masks: torch.Tensor
    perm: torch.Tensor | None
    inv_perm: torch.Tensor | None
    pattern_perm: torch.Tensor  # int32 [P]
    max_row_len: int
    max_col_len: int

    @property
    def n_blocks(self) -> int:
        return self.n_ctx // self.block

    @property
    def n_patterns(self) -> int:
        return int(self.row_ptr.shape[0])

    @property
    def n_entries(self) -> int:
        return int(self.col_idx.numel())

    @property
    def device(self) -> torch.device:
        return self.col_idx.device

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }

    @property
    def nbytes(self) -> int:
        """Bytes held by the plan's tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to(self, device) -> "Plan":
        """A copy on ``device`` (cached: asking twice returns the same object)."""
        device = torch.device(device)
        if device == self.device:
            return self
        return _plan_on_device(self, str(device))


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """bool [M, b, b] -> int32 [M, b, ceil(b/32)] (bit j % 32 of word j // 32)."""
    m, b, _ = masks.shape
    width = min(32, b)
    words = -(-b // 32)
    bits = masks.reshape(m, b, words, width).to(torch.int64)
    shifts = torch.arange(width, dtype=torch.int64)
    val = (bits << shifts).sum(-1)
    val = torch.where(val >= 2**31, val - 2**32, val)
    return val.to(torch.int32).contiguous()


def unpack_masks(packed: torch.Tensor, block: int) -> torch.Tensor:
    """Inverse of pack_masks: int32 [M, b, W] -> bool [M, b, b]."""
    width = min(32, block)
    shifts = torch.arange(width, dtype=torch.int64, device=packed.device)
    bits = (packed.to(torch.int64).unsqueeze(-1) >> shifts) & 1
    return bits.reshape(packed.shape[0], block, block).to(torch.bool)


def _stable_order(keys: torch.Tensor, n_keys: int) -> torch.Tensor:
    """Stable argsort of small non-negative int keys (< n_keys): numpy's radix sort on uint16
    when the keys fit (O(n)), else torch's stable sort."""
    if n_keys <= 1 << 16:
        return torch.from_numpy(np.argsort(keys.numpy().astype(np.uint16), kind="stable"))
    return torch.sort(keys, stable=True).indices


def build_plan(layout: Layout) -> Plan:
    """Compile ``layout`` into a Plan on the CPU (uncached; use ``plan_for``).

    Heads with identical block lists and permutation (``layout.head_classes``) share a pattern.
    Per pattern (a Python loop over patterns only): its entries are the layout's stored pattern
    (already sorted by query block, then key block; used as is, no copy), ``row_ptr`` comes from a bincount
    of query blocks, and the transposed lists from a stable radix argsort of key blocks, so the
    query blocks within each column stay ascending. O(E) time and memory beyond the result."""
    nb = layout.n_blocks
    classes = layout.head_classes
    representative = sorted(set(classes))
    pattern_of_rep = {h: p for p, h in enumerate(representative)}
    head_pattern = torch.tensor([pattern_of_rep[c] for c in classes], dtype=torch.int32)
    n_pat = len(representative)

    fwd = {k: [] for k in ("col_idx", "col_kind", "col_mask")}
    bwd = {k: [] for k in ("row_idx", "row_kind", "row_mask")}
    row_ptr = torch.zeros(n_pat, nb + 1, dtype=torch.int64)
    col_ptr = torch.zeros(n_pat, nb + 1, dtype=torch.int64)
    max_row = max_col = 0
    offset = 0
    for p, h in enumerate(representative):
        qb, kb, kind, mask = layout.head_entries(h)  # views of the layout's shared pattern
        n = qb.numel()
        rows = torch.bincount(qb, minlength=nb) if n else torch.zeros(nb, dtype=torch.int64)
        cols = torch.bincount(kb, minlength=nb) if n else torch.zeros(nb, dtype=torch.int64)
        torch.cumsum(rows, 0, out=row_ptr[p, 1:])
        torch.cumsum(cols, 0, out=col_ptr[p, 1:])
        row_ptr[p] += offset
        col_ptr[p] += offset
        max_row = max(max_row, int(rows.max()) if nb else 0)
        max_col = max(max_col, int(cols.max()) if nb else 0)
        order = _stable_order(kb, nb)
        fwd["col_idx"].append(kb)
        fwd["col_kind"].append(kind)
        fwd["col_mask"].append(mask)
        # index_select: ~2.5x faster than advanced indexing for these large gathers
        bwd["row_idx"].append(torch.index_select(qb, 0, order))
        bwd["row_kind"].append(torch.index_select(kind, 0, order))
        bwd["row_mask"].append(torch.index_select(mask, 0, order))
        offset += n
    cat = {k: (v[0] if len(v) == 1 else torch.cat(v)) for k, v in {**fwd, **bwd}.items()}

    # permutations: one row per distinct permutation actually used
    perm = inv_perm = None
    pattern_perm = torch.full((n_pat,), -1, dtype=torch.int32)
    if layout.perms is not None:
        used = sorted({layout.head_perm[h] for h in representative if layout.head_perm[h] >= 0})
        remap = {old: new for new, old in enumerate(used)}
        for p, h in enumerate(representative):
            if layout.head_perm[h] >= 0:
                pattern_perm[p] = remap[layout.head_perm[h]]
        perm = layout.perms[used]
        inv_perm = torch.empty_like(perm)
        inv_perm.scatter_(1, perm, torch.arange(layout.n_ctx).expand_as(perm).contiguous())
        perm, inv_perm = perm.to(torch.int32), inv_perm.to(torch.int32)

    return Plan(
        n_ctx=layout.n_ctx,
        heads=layout.heads,
        block=layout.block,
        layout_hash=layout.content_hash,
        head_pattern=head_pattern,
        row_ptr=row_ptr.to(torch.int32),
        col_idx=cat["col_idx"],
        col_kind=cat["col_kind"],
        col_mask=cat["col_mask"],
        col_ptr=col_ptr.to(torch.int32),
        row_idx=cat["row_idx"],
        row_kind=cat["row_kind"],
        row_mask=cat["row_mask"],
        masks=pack_masks(layout.masks),
        perm=perm,
        inv_perm=inv_perm,
        pattern_perm=pattern_perm,
        max_row_len=max_row,
        max_col_len=max_col,
    )


_CACHE: OrderedDict[str, Plan] = OrderedDict()
_LOCK = threading.Lock()


def plan_for(layout: Layout, device="cpu") -> Plan:
    """The plan of ``layout`` on ``device``, built once per layout content (LRU-cached)."""
    key = layout.content_hash
    with _LOCK:
        plan = _CACHE.get(key)
        if plan is not None:
            _CACHE.move_to_end(key)
    if plan is None:
        plan = build_plan(layout)
        with _LOCK:
            _CACHE[key] = plan
            while len(_CACHE) > PLAN_CACHE_SIZE:
                _CACHE.popitem(last=False)
    return plan.to(device)


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def _plan_on_device(plan: Plan, device: str) -> Plan:
    """Plans hash by identity, so each CPU plan is copied to a device once."""
    moved = {k: v.to(device) for k, v in plan.tensors().items()}
    return Plan(**{**{f.name: getattr(plan, f.name) for f in fields(plan)}, **moved})
