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
(sorts, bincounts, cumsums); no Python loop runs over blocks, only over patterns.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, fields

import torch

from .layout import PARTIAL, Layout

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


def _head_keys(layout: Layout) -> list[str]:
    """A digest per head of its entries and permutation: equal digests share a pattern."""
    counts = torch.bincount(layout.heads_idx.long(), minlength=layout.heads).tolist()
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    keys = []
    for h in range(layout.heads):
        s, e = starts[h], starts[h + 1]
        d = hashlib.blake2b(digest_size=16)
        for t in (layout.q_blocks, layout.k_blocks, layout.kinds, layout.mask_ids):
            d.update(t[s:e].numpy().tobytes())
        d.update(str(-1 if layout.head_perm is None else layout.head_perm[h]).encode())
        keys.append(d.hexdigest())
    return keys


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


def _csr(major: torch.Tensor, n_major: int, n_groups: int, group: torch.Tensor) -> torch.Tensor:
    """Row pointers [n_groups, n_major + 1] for entries sorted by (group, major)."""
    counts = torch.bincount(group * n_major + major, minlength=n_groups * n_major)
    ptr = torch.zeros(n_groups * n_major + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    # row r of group g spans ptr[g*n + r] .. ptr[g*n + r + 1]; lay it out as [G, n + 1]
    idx = torch.arange(n_groups).unsqueeze(1) * n_major + torch.arange(n_major + 1).unsqueeze(0)
    return ptr[idx]


def build_plan(layout: Layout) -> Plan:
    """Compile ``layout`` into a Plan on the CPU (uncached; use ``plan_for``)."""
    nb = layout.n_blocks
    keys = _head_keys(layout)
    pattern_of_key: dict[str, int] = {}
    head_pattern = []
    representative = []
    for h, k in enumerate(keys):
        if k not in pattern_of_key:
            pattern_of_key[k] = len(representative)
            representative.append(h)
        head_pattern.append(pattern_of_key[k])
    n_pat = len(representative)
    pattern_of_head = torch.tensor(head_pattern, dtype=torch.int64)

    # keep the entries of representative heads, relabel head -> pattern
    is_rep = torch.zeros(layout.heads, dtype=torch.bool)
    is_rep[representative] = True
    keep = is_rep[layout.heads_idx.long()]
    pat = pattern_of_head[layout.heads_idx[keep].long()]
    qb = layout.q_blocks[keep].long()
    kb = layout.k_blocks[keep].long()
    kind = layout.kinds[keep]
    mask = layout.mask_ids[keep]
    # representatives are in ascending head order, so patterns are too: entries stay sorted
    row_ptr = _csr(qb, nb, n_pat, pat)

    tkey = (pat * nb + kb) * nb + qb
    order = torch.sort(tkey).indices
    col_ptr = _csr(kb[order], nb, n_pat, pat[order])

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

    row_len = (row_ptr[:, 1:] - row_ptr[:, :-1]) if nb else torch.zeros(1)
    col_len = (col_ptr[:, 1:] - col_ptr[:, :-1]) if nb else torch.zeros(1)
    return Plan(
        n_ctx=layout.n_ctx,
        heads=layout.heads,
        block=layout.block,
        layout_hash=layout.content_hash,
        head_pattern=pattern_of_head.to(torch.int32),
        row_ptr=row_ptr.to(torch.int32),
        col_idx=kb.to(torch.int32),
        col_kind=kind.clone(),
        col_mask=mask.clone(),
        col_ptr=col_ptr.to(torch.int32),
        row_idx=qb[order].to(torch.int32),
        row_kind=kind[order],
        row_mask=mask[order],
        masks=pack_masks(layout.masks),
        perm=perm,
        inv_perm=inv_perm,
        pattern_perm=pattern_perm,
        max_row_len=int(row_len.max()) if row_len.numel() else 0,
        max_col_len=int(col_len.max()) if col_len.numel() else 0,
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


def partial_entries(plan: Plan) -> int:
    """Number of PARTIAL entries (the ones that read a bitmask)."""
    return int((plan.col_kind == PARTIAL).sum())
