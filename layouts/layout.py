"""The Layout type: which (query, key) token pairs may attend, stored as non-empty blocks.

A Layout describes ``H`` heads over ``N = n_ctx`` tokens at block size ``b`` (a power of two,
16..128, dividing ``N``); ``nb = N // b`` blocks per side. Only non-empty blocks are stored, as
parallel 1-D tensors of length ``nnz`` sorted by (head, query block, key block):

- ``heads_idx``, ``q_blocks``, ``k_blocks``: int32 coordinates of each non-empty block;
- ``kinds``: int8, ``FULL`` (every pair allowed), ``DIAG`` (a diagonal block whose mask is
  lower-triangular, key <= query inside the block) or ``PARTIAL`` (an explicit bitmask);
- ``mask_ids``: int32 index into ``masks`` for PARTIAL blocks, -1 otherwise;
- ``masks``: bool ``[M, b, b]``, the distinct intra-block masks (deduplicated);

so memory is O(nnz + M * b^2), never O(N^2).

Blocks are in the layout's own token order. A layout may carry, per head, a permutation of the
tokens (the Sparse Transformer's strided transpose): ``perms`` is int64 ``[P, N]`` with
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

FULL, DIAG, PARTIAL = 0, 1, 2
KIND_NAMES = {FULL: "full", DIAG: "causal-diagonal", PARTIAL: "partial"}
ALLOWED_BLOCKS = (16, 32, 64, 128)
# Bound on the elements of any temporary bool tensor made while classifying or materialising.
CHUNK_ELEMENTS = 1 << 24


class LayoutError(ValueError):
    """A layout parameter is invalid; the message names the parameter and the fix."""


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


@functools.lru_cache(maxsize=8)
def tril_mask(block: int) -> torch.Tensor:
    """bool [b, b]: key <= query inside a diagonal block."""
    return torch.ones(block, block, dtype=torch.bool).tril_()


def pack_bits(masks: torch.Tensor) -> torch.Tensor:
    """bool [n, b, b] -> int64 [n, b*b/64]: a compact, exact key per mask (for dedup/compare)."""
    n = masks.shape[0]
    packed = np.packbits(masks.reshape(n, masks.shape[1] * masks.shape[2]).numpy(), axis=1)  # uint8 [n, b*b/8]
    return torch.from_numpy(np.ascontiguousarray(packed).view(np.int64))


def dedup_masks(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct masks of bool [n, b, b]: returns (unique bool [M, b, b], inverse int64 [n]).

    Compares bit-packed keys (8x smaller than the bools), so it stays fast for many blocks."""
    n, b, _ = masks.shape
    if n == 0:
        return masks.reshape(0, b, b).clone(), torch.zeros(0, dtype=torch.int64)
    keys = pack_bits(masks.contiguous())
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    m = int(inverse.max()) + 1
    first = torch.full((m,), n, dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(n), reduce="amin")
    return masks[first].contiguous(), inverse


def classify_blocks(
    block_masks: torch.Tensor, q_blocks: torch.Tensor, k_blocks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Classify token masks of blocks.

    block_masks: bool [n, b, b]; q_blocks, k_blocks: int [n].
    Returns (keep bool [n], kinds int8 [n], mask_ids int32 [n], masks bool [M, b, b]): empty
    blocks are marked keep=False; mask_ids index the deduplicated ``masks`` for PARTIAL blocks.
    """
    n, b, _ = block_masks.shape
    counts = block_masks.reshape(n, b * b).sum(1)
    keep = counts > 0
    full = counts == b * b
    is_diag_pos = torch.as_tensor(q_blocks) == torch.as_tensor(k_blocks)
    tril = tril_mask(b)
    is_tril = counts == b * (b + 1) // 2
    if is_tril.any():
        cand = is_tril.nonzero().squeeze(1)
        is_tril[cand] = (block_masks[cand] == tril).reshape(cand.numel(), b * b).all(1)
    kinds = torch.full((n,), PARTIAL, dtype=torch.int8)
    kinds[full] = FULL
    kinds[is_diag_pos & is_tril & ~full] = DIAG
    mask_ids = torch.full((n,), -1, dtype=torch.int32)
    partial = keep & (kinds == PARTIAL)
    if partial.any():
        masks, inverse = dedup_masks(block_masks[partial])
        mask_ids[partial] = inverse.to(torch.int32)
    else:
        masks = torch.zeros(0, b, b, dtype=torch.bool)
    return keep, kinds, mask_ids, masks


@dataclass(frozen=True, eq=False)
class Layout:
    """An exact block-sparse attention pattern. Build one with the generators in
    ``stbench.layouts``; see the module docstring for the fields' shapes and meaning."""

    n_ctx: int
    heads: int
    block: int
    name: str
    heads_idx: torch.Tensor  # int32 [nnz]
    q_blocks: torch.Tensor  # int32 [nnz]
    k_blocks: torch.Tensor  # int32 [nnz]
    kinds: torch.Tensor  # int8 [nnz]
    mask_ids: torch.Tensor  # int32 [nnz]
    masks: torch.Tensor  # bool [M, b, b]
    perms: torch.Tensor | None = None  # int64 [P, N]: layout position -> original token
    head_perm: tuple[int, ...] | None = None  # per head: row of perms, or -1

    # ------------------------------------------------------------------ construction
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
        """Canonical constructor: validates, sorts by (head, q block, k block), and checks that
        no block appears twice. ``mask_ids``/``masks`` may be omitted when no block is PARTIAL."""
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
        return Layout(
            n_ctx=n_ctx,
            heads=heads,
            block=block,
            name=name,
            heads_idx=h[order].to(torch.int32),
            q_blocks=qb[order].to(torch.int32),
            k_blocks=kb[order].to(torch.int32),
            kinds=kd[order],
            mask_ids=mid[order],
            masks=masks.contiguous(),
            perms=perms,
            head_perm=head_perm,
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
    def nnz(self) -> int:
        """Number of non-empty blocks over all heads."""
        return int(self.kinds.numel())

    def __repr__(self) -> str:
        return (
            f"Layout({self.name!r}, n_ctx={self.n_ctx}, heads={self.heads}, block={self.block}, "
            f"nnz={self.nnz}, block_density={self.block_density:.4g}, "
            f"token_density={self.token_density:.4g}, permuted={self.perms is not None})"
        )

    @functools.cached_property
    def content_hash(self) -> str:
        """Hex digest of everything that defines the pattern (not the name)."""
        d = hashlib.blake2b(digest_size=16)
        d.update(np.array([self.n_ctx, self.heads, self.block], dtype=np.int64).tobytes())
        for t in (self.heads_idx, self.q_blocks, self.k_blocks, self.kinds, self.mask_ids):
            d.update(t.numpy().tobytes())
        d.update(self.masks.numpy().tobytes())
        if self.perms is not None:
            d.update(self.perms.numpy().tobytes())
            d.update(np.array(self.head_perm, dtype=np.int64).tobytes())
        return d.hexdigest()

    def __hash__(self) -> int:
        return hash(self.content_hash)

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and self.content_hash == other.content_hash

    @functools.cached_property
    def pairs_per_block(self) -> torch.Tensor:
        """int64 [nnz]: allowed (query, key) pairs in each stored block."""
        b = self.block
        per_mask = self.masks.reshape(self.masks.shape[0], b * b).sum(1)
        out = torch.full((self.nnz,), b * b, dtype=torch.int64)
        out[self.kinds == DIAG] = b * (b + 1) // 2
        partial = self.kinds == PARTIAL
        out[partial] = per_mask[self.mask_ids[partial].long()]
        return out

    @functools.cached_property
    def allowed_pairs_per_head(self) -> torch.Tensor:
        """int64 [H]: allowed (query, key) pairs per head (the FLOP count's numerator)."""
        out = torch.zeros(self.heads, dtype=torch.int64)
        out.index_add_(0, self.heads_idx.long(), self.pairs_per_block)
        return out

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
    def block_token_masks(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """bool [n, b, b]: the token mask of stored blocks ``index`` (default: all; mind the
        memory, nnz * b^2 bytes)."""
        b = self.block
        idx = torch.arange(self.nnz) if index is None else torch.as_tensor(index).long()
        kinds = self.kinds[idx]
        out = torch.ones(idx.numel(), b, b, dtype=torch.bool)
        out[kinds == DIAG] = tril_mask(b)
        partial = kinds == PARTIAL
        if partial.any():
            out[partial] = self.masks[self.mask_ids[idx[partial]].long()]
        return out

    @property
    def block_mask(self) -> torch.Tensor:
        """bool [H, nb, nb]: the blocks the kernels compute, in the layout's own order."""
        nb = self.n_blocks
        out = torch.zeros(self.heads, nb, nb, dtype=torch.bool)
        out[self.heads_idx.long(), self.q_blocks.long(), self.k_blocks.long()] = True
        return out

    def layout_order_rows(self, h: int, q_start: int, q_stop: int) -> torch.Tensor:
        """bool [q_stop - q_start, N]: head h's mask for layout positions q_start..q_stop-1
        (block-aligned), in the layout's own order."""
        b, n = self.block, self.n_ctx
        if q_start % b or q_stop % b or not 0 <= q_start <= q_stop <= n:
            raise LayoutError("row range must be block-aligned inside 0..n_ctx")
        qb0, qb1 = q_start // b, q_stop // b
        sel = (self.heads_idx == h) & (self.q_blocks >= qb0) & (self.q_blocks < qb1)
        idx = sel.nonzero().squeeze(1)
        out = torch.zeros(qb1 - qb0, b, self.n_blocks, b, dtype=torch.bool)
        if idx.numel():
            tm = self.block_token_masks(idx)
            out[self.q_blocks[idx].long() - qb0, :, self.k_blocks[idx].long(), :] = tm
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
        """The same token pattern at another block size, exact (see ``layouts.reblock``)."""
        from .transforms import reblock

        return reblock(self, block)


def _replace(layout: Layout, **changes) -> Layout:
    fields = {
        k: getattr(layout, k)
        for k in (
            "n_ctx", "heads", "block", "name", "heads_idx", "q_blocks", "k_blocks", "kinds",
            "mask_ids", "masks", "perms", "head_perm",
        )
    }
    fields.update(changes)
    return Layout(**fields)


def _permute_square(m: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Return M' with M'[perm[i], perm[j]] = M[i, j] for a square bool matrix."""
    out = torch.empty_like(m)
    out[perm.unsqueeze(1), perm.unsqueeze(0)] = m
    return out
