"""The Layout type: which (query, key) token pairs may attend, stored as non-empty blocks.

A Layout describes ``H`` heads over ``N = n_ctx`` tokens at block size ``b`` (a power of two,
16..128, dividing ``N``); ``nb = N // b`` blocks per side. Only non-empty blocks are stored. Each
block has coordinates (query block, key block), a kind -- ``FULL`` (every pair allowed), ``DIAG``
(a diagonal block whose mask is lower-triangular, key <= query inside the block) or ``PARTIAL``
(an explicit bitmask) -- and, for PARTIAL blocks, an index into ``masks``, bool ``[M, b, b]``, the
distinct intra-block masks (deduplicated, in a canonical order).

Heads with identical block lists share one *pattern* (``head_pattern[h]``): the block lists of
the ``P`` distinct patterns are stored once, concatenated, sorted by (query block, key block)
within each pattern (``pat_q``, ``pat_k`` int32, ``pat_kinds`` int8, ``pat_mask_ids`` int32,
pattern p at ``pat_ptr[p] .. pat_ptr[p + 1] - 1``). Memory is O(entries of distinct patterns +
M b^2), never O(N^2): eight identical heads cost one head.

The per-head view of the contract -- parallel 1-D tensors of length ``nnz`` sorted by (head,
query block, key block): ``heads_idx``, ``q_blocks``, ``k_blocks`` (int32), ``kinds`` (int8),
``mask_ids`` (int32, -1 unless PARTIAL) -- is materialised on first use (O(nnz) memory).

Blocks are in the layout's own token order. A layout may carry, per head, a permutation of the
tokens (the Sparse Transformer's strided transpose): ``perms`` is int64 ``[Q, N]`` with
``perms[p, i]`` = the ORIGINAL token at layout position ``i``, and ``head_perm[h]`` is the row of
``perms`` head ``h`` uses (-1: identity). The exact semantics in original order are

    token_mask()[h, perm[i], perm[j]] = layout-order mask[h, i, j].
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from .blockmasks import (  # noqa: F401  (re-exported: other modules import them from here)
    CHUNK_ELEMENTS,
    DIAG,
    FULL,
    KIND_NAMES,
    PARTIAL,
    canonical_masks,
    classify_blocks,
    dedup_masks,
    pack_bits,
    tril_mask,
)
from .blocksize import change_block
from .errors import LayoutError
from .size import check_size

ALLOWED_BLOCKS = (16, 32, 64, 128)


def check_block(block: int, n_ctx: int | None = None) -> None:
    """Raise LayoutError unless ``block`` is a power of two in 16..128 dividing ``n_ctx``."""
    if not isinstance(block, int) or block not in ALLOWED_BLOCKS:
        raise LayoutError(
            f"block={block!r} is not supported: use a power of two in 16..128 "
            f"(one of {ALLOWED_BLOCKS})"
        )
    if n_ctx is not None:
        if not isinstance(n_ctx, int) or n_ctx <= 0:
            raise LayoutError(f"n_ctx={n_ctx!r} must be a positive int")
        if n_ctx % block:
            raise LayoutError(
                f"n_ctx={n_ctx} is not a multiple of block={block}: pad the sequence to "
                f"{-(-n_ctx // block) * block} or choose a block that divides it"
            )


def check_heads(heads: int) -> None:
    if not isinstance(heads, int) or heads <= 0:
        raise LayoutError(f"heads={heads!r} must be a positive int")


Entries = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # q, k, kinds, mask_ids


def tile_heads(patterns: list[Entries], head_pattern) -> tuple[torch.Tensor, ...]:
    """Per-head entries from patterns: head h gets ``patterns[head_pattern[h]]``. Returns
    (heads_idx int32, q int32, k int32, kinds int8, mask_ids int32), each written once."""
    sizes = [patterns[p][0].numel() for p in head_pattern]
    total = sum(sizes)
    h = torch.empty(total, dtype=torch.int32)
    out = [torch.empty(total, dtype=dt) for dt in (torch.int32, torch.int32, torch.int8, torch.int32)]
    s = 0
    for head, (p, n) in enumerate(zip(head_pattern, sizes)):
        h[s : s + n] = head
        for dst, src in zip(out, patterns[p]):
            dst[s : s + n] = src  # copy_ converts dtypes
        s += n
    return (h, *out)


def _same_entries(a: Entries, b: Entries) -> bool:
    return a[0].numel() == b[0].numel() and all(torch.equal(x, y) for x, y in zip(a, b))


@dataclass(frozen=True, eq=False)
class Layout:
    """An exact block-sparse attention pattern. Build one with the generators in
    ``stbench.layouts`` (or ``Layout.from_parts``); see the module docstring for the fields."""

    n_ctx: int
    heads: int
    block: int
    name: str
    pat_q: torch.Tensor  # int32 [E]
    pat_k: torch.Tensor  # int32 [E]
    pat_kinds: torch.Tensor  # int8 [E]
    pat_mask_ids: torch.Tensor  # int32 [E]
    pat_ptr: tuple[int, ...]  # P + 1 offsets into the pat_* arrays
    head_pattern: tuple[int, ...]  # per head: its pattern
    masks: torch.Tensor  # bool [M, b, b]
    perms: torch.Tensor | None = None  # int64 [Q, N]: layout position -> original token
    head_perm: tuple[int, ...] | None = None  # per head: row of perms, or -1

    # ------------------------------------------------------------------ construction
    @staticmethod
    def from_patterns(
        n_ctx: int,
        heads: int,
        block: int,
        name: str,
        patterns: list[Entries],
        head_pattern,
        masks: torch.Tensor | None = None,
        perms: torch.Tensor | None = None,
        head_perm=None,
    ) -> "Layout":
        """Trusted constructor: each pattern's entries (q, k, kinds, mask_ids) must already be
        sorted by (q, k) without duplicates (the generators' contract, checked by the tests
        against ``from_parts``). Identical patterns are merged, unused ones dropped, patterns
        ordered by first use and the mask table made canonical."""
        head_pattern = [int(p) for p in head_pattern]
        if len(head_pattern) != heads:
            raise LayoutError(f"head_pattern must give one pattern per head ({heads})")
        if masks is None:
            masks = torch.zeros(0, block, block, dtype=torch.bool)
        order: list[int] = []  # distinct patterns in order of first use
        remap: dict[int, int] = {}
        for p in head_pattern:
            if p in remap:
                continue
            same = next((i for i, o in enumerate(order) if _same_entries(patterns[o], patterns[p])),
                        None)
            remap[p] = len(order) if same is None else same
            if same is None:
                order.append(p)
        ptr = [0]
        for o in order:
            ptr.append(ptr[-1] + patterns[o][0].numel())
        cols = []
        for i, dt in enumerate((torch.int32, torch.int32, torch.int8, torch.int32)):
            parts = [patterns[o][i].to(dt) for o in order]
            cols.append(parts[0].contiguous() if len(parts) == 1 else torch.cat(parts))
        mids, masks = canonical_masks(cols[3], masks.to(torch.bool))
        if perms is not None and head_perm is None:
            head_perm = (0,) * heads
        if perms is not None and all(x == -1 for x in head_perm):
            perms, head_perm = None, None
        if perms is None:
            head_perm = None
        return Layout(
            n_ctx=n_ctx, heads=heads, block=block, name=name, pat_q=cols[0], pat_k=cols[1],
            pat_kinds=cols[2], pat_mask_ids=mids, pat_ptr=tuple(ptr),
            head_pattern=tuple(remap[p] for p in head_pattern), masks=masks.contiguous(),
            perms=perms, head_perm=None if head_perm is None else tuple(int(x) for x in head_perm),
        )

    @staticmethod
    def from_sorted(
        n_ctx, heads, block, name, heads_idx, q_blocks, k_blocks, kinds, mask_ids=None,
        masks=None, perms=None, head_perm=None,
    ) -> "Layout":
        """Trusted constructor from per-head entries already sorted by (head, q, k) and unique;
        identical heads are stored once."""
        n = kinds.numel()
        if mask_ids is None:
            mask_ids = torch.full((n,), -1, dtype=torch.int32)
        heads_idx = heads_idx.to(torch.int32)
        bounds = torch.searchsorted(
            heads_idx, torch.arange(heads + 1, dtype=torch.int32)
        ).tolist()
        patterns = [
            (q_blocks[s:e], k_blocks[s:e], kinds[s:e], mask_ids[s:e])
            for s, e in zip(bounds[:-1], bounds[1:])
        ]
        return Layout.from_patterns(
            n_ctx, heads, block, name, patterns, range(heads), masks, perms, head_perm
        )

    @staticmethod
    def from_parts(
        n_ctx: int,
        heads: int,
        block: int,
        name: str,
        heads_idx,
        q_blocks,
        k_blocks,
        kinds,
        mask_ids=None,
        masks=None,
        perms=None,
        head_perm=None,
    ) -> "Layout":
        """Checked constructor from per-head entries in any order: validates, sorts by (head,
        q block, k block), and checks that no block appears twice. ``mask_ids``/``masks`` may be
        omitted when no block is PARTIAL."""
        check_block(block, n_ctx)
        check_heads(heads)
        nb = n_ctx // block
        h = torch.as_tensor(heads_idx).to(torch.int64).reshape(-1)
        qb = torch.as_tensor(q_blocks).to(torch.int64).reshape(-1)
        kb = torch.as_tensor(k_blocks).to(torch.int64).reshape(-1)
        kd = torch.as_tensor(kinds).to(torch.int8).reshape(-1)
        n = h.numel()
        if not (qb.numel() == kb.numel() == kd.numel() == n):
            raise LayoutError("heads_idx, q_blocks, k_blocks and kinds must have one length")
        if masks is None:
            masks = torch.zeros(0, block, block, dtype=torch.bool)
        masks = torch.as_tensor(masks).to(torch.bool)
        if masks.dim() != 3 or masks.shape[1:] != (block, block):
            raise LayoutError(f"masks must be bool [M, {block}, {block}], got {tuple(masks.shape)}")
        if mask_ids is None:
            mask_ids = torch.full((n,), -1, dtype=torch.int32)
        mid = torch.as_tensor(mask_ids).to(torch.int32).reshape(-1)
        if n:
            if h.min() < 0 or h.max() >= heads:
                raise LayoutError(f"a head index is outside 0..{heads - 1}")
            if min(qb.min(), kb.min()) < 0 or max(qb.max(), kb.max()) >= nb:
                raise LayoutError(f"a block index is outside 0..{nb - 1}")
            partial = kd == PARTIAL
            if (mid[partial] < 0).any() or (mid[partial] >= masks.shape[0]).any():
                raise LayoutError("a PARTIAL block has no valid mask id")
            mid = torch.where(partial, mid, torch.full_like(mid, -1))
            if ((kd == DIAG) & (qb != kb)).any():
                raise LayoutError("a DIAG (causal-diagonal) block must lie on the diagonal")
        key = (h * nb + qb) * nb + kb
        key, order = torch.sort(key)
        if n > 1 and (key[1:] == key[:-1]).any():
            raise LayoutError("a block appears twice: merge duplicates with layouts.union")
        if perms is not None:
            perms = torch.as_tensor(perms).to(torch.int64)
            if perms.dim() == 1:
                perms = perms.unsqueeze(0)
            if perms.shape[1] != n_ctx:
                raise LayoutError(f"perms must be [P, n_ctx={n_ctx}], got {tuple(perms.shape)}")
            if head_perm is None:
                head_perm = (0,) * heads
            head_perm = tuple(int(x) for x in head_perm)
            if len(head_perm) != heads or any(x < -1 or x >= perms.shape[0] for x in head_perm):
                raise LayoutError("head_perm must give, per head, a row of perms or -1")
            ref = torch.arange(n_ctx)
            for p in perms:
                if not torch.equal(torch.sort(p).values, ref):
                    raise LayoutError("each row of perms must be a permutation of 0..n_ctx-1")
            if all(x == -1 for x in head_perm):
                perms, head_perm = None, None
        elif head_perm is not None:
            raise LayoutError("head_perm given without perms")
        return Layout.from_sorted(
            n_ctx, heads, block, name, h[order], qb[order].to(torch.int32),
            kb[order].to(torch.int32), kd[order], mid[order], masks, perms, head_perm,
        )

    @staticmethod
    def from_block_masks(
        n_ctx, heads, block, name, heads_idx, q_blocks, k_blocks, block_masks, perms=None,
        head_perm=None,
    ) -> "Layout":
        """Build from explicit token masks of candidate blocks (bool [n, b, b]); empty blocks
        are dropped, full / causal-diagonal / partial blocks are recognised exactly."""
        qb = torch.as_tensor(q_blocks)
        kb = torch.as_tensor(k_blocks)
        keep, kinds, mask_ids, masks = classify_blocks(torch.as_tensor(block_masks), qb, kb)
        return Layout.from_parts(
            n_ctx, heads, block, name, torch.as_tensor(heads_idx)[keep], qb[keep], kb[keep],
            kinds[keep], mask_ids[keep], masks, perms, head_perm,
        )

    # ------------------------------------------------------------------ basic properties
    @property
    def n_blocks(self) -> int:
        """Blocks per side, nb = N / b."""
        return self.n_ctx // self.block

    @property
    def n_patterns(self) -> int:
        """Distinct block lists stored."""
        return len(self.pat_ptr) - 1

    def pattern(self, p: int) -> Entries:
        """Views (q, k, kinds, mask_ids) of pattern p's entries, sorted by (q, k)."""
        s, e = self.pat_ptr[p], self.pat_ptr[p + 1]
        return self.pat_q[s:e], self.pat_k[s:e], self.pat_kinds[s:e], self.pat_mask_ids[s:e]

    def head_entries(self, h: int) -> Entries:
        """Views (q, k, kinds, mask_ids) of head h's entries, sorted by (q, k)."""
        return self.pattern(self.head_pattern[h])

    @functools.cached_property
    def head_sizes(self) -> tuple[int, ...]:
        """Non-empty blocks per head."""
        return tuple(self.pat_ptr[p + 1] - self.pat_ptr[p] for p in self.head_pattern)

    @property
    def nnz(self) -> int:
        """Number of non-empty blocks over all heads."""
        return sum(self.head_sizes)

    @functools.cached_property
    def head_ranges(self) -> tuple[tuple[int, int], ...]:
        """Per head, its range [start, stop) in the per-head arrays (``heads_idx`` ...)."""
        out, s = [], 0
        for n in self.head_sizes:
            out.append((s, s + n))
            s += n
        return tuple(out)

    @functools.cached_property
    def head_classes(self) -> tuple[int, ...]:
        """Per head, the first head with the same block list and the same permutation: heads of
        one class share one pattern in the device plan."""
        first: dict[tuple[int, int], int] = {}
        out = []
        for h, p in enumerate(self.head_pattern):
            key = (p, -1 if self.head_perm is None else self.head_perm[h])
            out.append(first.setdefault(key, h))
        return tuple(out)

    # ------------------------------------------------------------------ per-head view
    @functools.cached_property
    def _per_head(self) -> tuple[torch.Tensor, ...]:
        if self.head_pattern == tuple(range(self.n_patterns)):  # nothing shared: no copy
            sizes = torch.tensor(self.head_sizes, dtype=torch.int64)
            h = torch.repeat_interleave(torch.arange(self.heads, dtype=torch.int32), sizes)
            return h, self.pat_q, self.pat_k, self.pat_kinds, self.pat_mask_ids
        pats = [self.pattern(p) for p in range(self.n_patterns)]
        return tile_heads(pats, self.head_pattern)

    @property
    def heads_idx(self) -> torch.Tensor:
        """int32 [nnz]: head of each block (per-head view, sorted by head, q, k)."""
        return self._per_head[0]

    @property
    def q_blocks(self) -> torch.Tensor:
        """int32 [nnz]: query block of each block (per-head view)."""
        return self._per_head[1]

    @property
    def k_blocks(self) -> torch.Tensor:
        """int32 [nnz]: key block of each block (per-head view)."""
        return self._per_head[2]

    @property
    def kinds(self) -> torch.Tensor:
        """int8 [nnz]: FULL / DIAG / PARTIAL of each block (per-head view)."""
        return self._per_head[3]

    @property
    def mask_ids(self) -> torch.Tensor:
        """int32 [nnz]: row of ``masks`` for PARTIAL blocks, -1 otherwise (per-head view)."""
        return self._per_head[4]

    def __repr__(self) -> str:
        return (
            f"Layout({self.name!r}, n_ctx={self.n_ctx}, heads={self.heads}, block={self.block}, "
            f"nnz={self.nnz}, block_density={self.block_density:.4g}, "
            f"token_density={self.token_density:.4g}, permuted={self.perms is not None})"
        )

    @functools.cached_property
    def content_hash(self) -> str:
        """Hex digest of everything that defines the pattern (not the name). Patterns are
        stored canonically (merged, in order of first use; canonical mask table), so equal
        patterns hash equally."""
        d = hashlib.blake2b(digest_size=16)
        d.update(np.array([self.n_ctx, self.heads, self.block], dtype=np.int64).tobytes())
        d.update(np.array(self.head_pattern + self.pat_ptr, dtype=np.int64).tobytes())
        for t in (self.pat_q, self.pat_k, self.pat_kinds, self.pat_mask_ids, self.masks):
            d.update(t.contiguous().numpy())  # buffer protocol: no copy
        if self.perms is not None:
            d.update(self.perms.contiguous().numpy())
            d.update(np.array(self.head_perm, dtype=np.int64).tobytes())
        return d.hexdigest()

    def __hash__(self) -> int:
        return hash(self.content_hash)

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and self.content_hash == other.content_hash

    def _pairs(self, kinds: torch.Tensor, mask_ids: torch.Tensor) -> torch.Tensor:
        b = self.block
        per_mask = self.masks.reshape(self.masks.shape[0], b * b).sum(1)
        out = torch.full((kinds.numel(),), b * b, dtype=torch.int64)
        out[kinds == DIAG] = b * (b + 1) // 2
        partial = kinds == PARTIAL
        out[partial] = per_mask[mask_ids[partial].long()]
        return out

    @functools.cached_property
    def pairs_per_block(self) -> torch.Tensor:
        """int64 [nnz]: allowed (query, key) pairs in each block of the per-head view."""
        return self._pairs(self.kinds, self.mask_ids)

    @functools.cached_property
    def allowed_pairs_per_head(self) -> torch.Tensor:
        """int64 [H]: allowed (query, key) pairs per head (the FLOP count's numerator)."""
        per_pattern = [
            int(self._pairs(*self.pattern(p)[2:]).sum()) for p in range(self.n_patterns)
        ]
        return torch.tensor([per_pattern[p] for p in self.head_pattern], dtype=torch.int64)

    @property
    def allowed_pairs(self) -> int:
        """Allowed (query, key) pairs summed over heads."""
        return int(self.allowed_pairs_per_head.sum())

    @property
    def token_density(self) -> float:
        """Allowed pairs over H * N * N."""
        return self.allowed_pairs / (self.heads * self.n_ctx**2)

    @property
    def block_density(self) -> float:
        """Non-empty blocks over H * nb * nb."""
        return self.nnz / (self.heads * self.n_blocks**2)

    # ------------------------------------------------------------------ permutations
    def perm_of_head(self, h: int) -> torch.Tensor | None:
        """int64 [N]: original token at each layout position of head h, or None (identity)."""
        if self.perms is None or self.head_perm[h] < 0:
            return None
        return self.perms[self.head_perm[h]]

    # ------------------------------------------------------------------ materialising
    def _tile_masks(self, kinds: torch.Tensor, mask_ids: torch.Tensor) -> torch.Tensor:
        """bool [n, b, b]: token masks of blocks with these kinds and mask ids."""
        b = self.block
        out = torch.ones(kinds.numel(), b, b, dtype=torch.bool)
        out[kinds == DIAG] = tril_mask(b)
        partial = kinds == PARTIAL
        if partial.any():
            out[partial] = self.masks[mask_ids[partial].long()]
        return out

    def block_token_masks(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """bool [n, b, b]: the token mask of blocks ``index`` of the per-head view (default:
        all; mind the memory, nnz * b^2 bytes)."""
        if index is None:
            return self._tile_masks(self.kinds, self.mask_ids)
        idx = torch.as_tensor(index).long()
        return self._tile_masks(self.kinds[idx], self.mask_ids[idx])

    @property
    def block_mask(self) -> torch.Tensor:
        """bool [H, nb, nb]: the blocks the kernels compute, in the layout's own order."""
        nb = self.n_blocks
        out = torch.zeros(self.heads, nb, nb, dtype=torch.bool)
        for h in range(self.heads):
            q, k, _, _ = self.head_entries(h)
            out[h, q.long(), k.long()] = True
        return out

    def layout_order_rows(self, h: int, q_start: int, q_stop: int) -> torch.Tensor:
        """bool [q_stop - q_start, N]: head h's mask for layout positions q_start..q_stop-1
        (block-aligned), in the layout's own order."""
        b, n = self.block, self.n_ctx
        if q_start % b or q_stop % b or not 0 <= q_start <= q_stop <= n:
            raise LayoutError("row range must be block-aligned inside 0..n_ctx")
        qb0, qb1 = q_start // b, q_stop // b
        q, k, kinds, mids = self.head_entries(h)
        lo, hi = torch.searchsorted(q, torch.tensor([qb0, qb1], dtype=q.dtype)).tolist()
        out = torch.zeros(qb1 - qb0, b, self.n_blocks, b, dtype=torch.bool)
        if hi > lo:
            tm = self._tile_masks(kinds[lo:hi], mids[lo:hi])
            out[q[lo:hi].long() - qb0, :, k[lo:hi].long(), :] = tm
        return out.reshape(q_stop - q_start, n)

    def token_mask_rows(self, h: int, queries: torch.Tensor) -> torch.Tensor:
        """bool [len(queries), N]: head h's exact mask for ORIGINAL query indices ``queries``,
        keys in ORIGINAL order. Memory O(len(queries) * N)."""
        queries = torch.as_tensor(queries, dtype=torch.int64)
        perm = self.perm_of_head(h)
        pos = queries if perm is None else self.inverse_perm(h)[queries]
        b = self.block
        qblocks = torch.unique(pos // b)
        out = torch.zeros(queries.numel(), self.n_ctx, dtype=torch.bool)
        for qb in qblocks.tolist():
            rows = self.layout_order_rows(h, qb * b, qb * b + b)
            which = (pos // b) == qb
            out[which] = rows[pos[which] - qb * b]
        if perm is not None:
            out_orig = torch.empty_like(out)
            out_orig[:, perm] = out
            out = out_orig
        return out

    def inverse_perm(self, h: int) -> torch.Tensor | None:
        """int64 [N]: layout position of each original token for head h, or None."""
        perm = self.perm_of_head(h)
        if perm is None:
            return None
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(self.n_ctx)
        return inv

    def token_mask(self) -> torch.Tensor:
        """bool [H, N, N]: the exact pattern in ORIGINAL token order (O(H N^2) memory)."""
        n = self.n_ctx
        out = torch.zeros(self.heads, n, n, dtype=torch.bool)
        for h in range(self.heads):
            rows = self.layout_order_rows(h, 0, n)
            perm = self.perm_of_head(h)
            if perm is not None:
                rows = _permute_square(rows, perm)
            out[h] = rows
        return out

    # ------------------------------------------------------------------ transforms
    def renamed(self, name: str) -> "Layout":
        """The same pattern under another name."""
        return _replace(self, name=name)

    def reblock(self, block: int) -> "Layout":
        """The same token pattern at ``block`` (a power of two in 16..128 dividing n_ctx), exact
        (see ``layouts.blocksize``). The permutation is kept."""
        check_block(block, self.n_ctx)
        if block == self.block:
            return self
        split = max(1, self.block // block) ** 2  # a block splits into at most this many
        check_size(f"{self.name} at block {block}", self.pat_q.numel() * split)
        # work on the distinct patterns only (one head each), then give every head its pattern
        patterns = [self.pattern(p) for p in range(self.n_patterns)]
        one = Layout.from_patterns(self.n_ctx, self.n_patterns, self.block, self.name, patterns,
                                   range(self.n_patterns), self.masks)
        R = change_block(one, block)
        return Layout.from_patterns(
            self.n_ctx, self.heads, block, self.name, [R.head_entries(p) for p in range(R.heads)],
            self.head_pattern, R.masks, self.perms, self.head_perm,
        )


def _replace(layout: Layout, **changes) -> Layout:
    fields = {
        k: getattr(layout, k)
        for k in (
            "n_ctx", "heads", "block", "name", "pat_q", "pat_k", "pat_kinds", "pat_mask_ids",
            "pat_ptr", "head_pattern", "masks", "perms", "head_perm",
        )
    }
    fields.update(changes)
    return Layout(**fields)


def _permute_square(m: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Return M' with M'[perm[i], perm[j]] = M[i, j] for a square bool matrix."""
    out = torch.empty_like(m)
    out[perm.unsqueeze(1), perm.unsqueeze(0)] = m
    return out
