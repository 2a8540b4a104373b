"""The correctness gate: a backend's output (and gradients) against the dense reference.

Rule (stbench/accuracy.py): each checked tensor T_out in dtype T passes when
``rel_err(T_out, ref64) <= 2 * rel_err(ref_T, ref64) + FLOOR[T]``; the row records the worst
tensor (largest err / tol).

What is checked: batch element 0 of a backend run on the problem's own inputs (the full batch,
so nothing recompiles for the check; dO is zero beyond element 0), against the reference
computed for that element:

- ``full``: every query row, against ``stbench.reference.dense`` (chunked, exact) in float64 and
  in T, when ``H * N^2 <= FULL_CHECK_PAIRS`` (N <= 16384 at H = 8);
- ``rows:R``: beyond that, R query rows per head (whole query blocks in the layout's order:
  the first, the last and seeded random ones), against the same masked softmax evaluated for
  those rows only (their masks found by binary search in the block list), so the check costs
  O(H R N D) instead of O(H N^2 D).

For 'fwd+bwd' the output cotangent dO is random on the checked rows and zero elsewhere, so the
exact dQ, dK, dV of that loss follow from the checked rows alone; dQ, dK and dV are compared too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stbench import accuracy, backends

FULL_CHECK_PAIRS = 8 * 16384**2  # H * N^2 score entries up to which every row is checked
CHECK_ROWS = 384  # query rows per head checked beyond that (3 blocks of 128, more when smaller)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    err: float
    tol: float
    worst: str  # which tensor: "out", "dq", "dk", "dv"
    check: str  # "full" or "rows:R"

    def message(self) -> str:
        return (f"{self.worst}: rel_err {self.err:.3g} > tolerance {self.tol:.3g} "
                f"(check {self.check})")


def check_blocks(layout, count: int, gen: torch.Generator) -> torch.Tensor:
    """Query blocks (layout order) holding about ``count`` rows: the first and the last block
    plus seeded random ones (whole blocks: each one's mask is one binary search away)."""
    nb = layout.n_blocks
    k = max(1, min(-(-count // layout.block), nb))
    middle = torch.randperm(max(nb - 2, 0), generator=gen)[: max(k - 2, 0)] + 1
    return torch.unique(torch.cat([torch.tensor([0, nb - 1]), middle]))


def head_rows(layout, blocks: torch.Tensor) -> torch.Tensor:
    """int64 [H, R]: per head, the ORIGINAL query indices at the layout positions of ``blocks``."""
    pos = (blocks.unsqueeze(1) * layout.block + torch.arange(layout.block)).reshape(-1)
    out = []
    for h in range(layout.heads):
        perm = layout.perm_of_head(h)
        out.append(pos if perm is None else perm[pos])
    return torch.stack(out)


class Reference:
    """The dense reference for one (problem, layout pattern, mode): computed once, then any
    number of backend outputs (any block granularity of the same token pattern) are judged.

    q, k, v: [B, H, N, D] (only batch element 0 is used); layout: any Layout with the token
    pattern; scale: softmax scale; mode: 'fwd' or 'fwd+bwd'."""

    def __init__(self, q, k, v, layout, scale: float, mode: str, seed: int = 0,
                 rows: int | None = None):
        self.dtype = q.dtype
        self.mode = mode
        self.scale = scale
        self.layout = layout
        h, n = layout.heads, layout.n_ctx
        self.q, self.k, self.v = (t.detach()[:1].clone() for t in (q, k, v))
        g = torch.Generator().manual_seed(seed + 7919)
        full = rows is None and h * n * n <= FULL_CHECK_PAIRS
        if full:
            self.rows = None
            self.check = "full"
        else:
            self.blocks = check_blocks(layout, rows or CHECK_ROWS, g)
            self.rows = head_rows(layout, self.blocks)  # [H, R] original query indices
            self.check = f"rows:{self.rows.shape[1]}"
        shape = self.q.shape
        do = torch.randn(shape, generator=g, dtype=torch.float32).to(q.device, self.dtype)
        if self.rows is not None:
            keep = torch.zeros(h, n, dtype=torch.bool)
            keep.scatter_(1, self.rows, True)
            do = do * keep.to(q.device).view(1, h, n, 1).to(do.dtype)
        self.do = do
        self.ref64 = self._run_reference(torch.float64)
        self.ref_same = self._run_reference(self.dtype)

    # ------------------------------------------------------------------ reference runs
    def _run_reference(self, dtype) -> dict:
        grad = self.mode == "fwd+bwd"
        q, k, v = (t.to(dtype).requires_grad_(grad) for t in (self.q, self.k, self.v))
        if self.rows is None:
            out = backends.load("dense").attention(q, k, v, self.layout, self.scale)
        else:
            out = _rows_attention(q, k, v, self.layout, self.scale, self.blocks)
        res = {"out": out.detach()}
        if grad:
            do = self.do.to(dtype)
            if self.rows is not None:
                do = self._take_rows(do)
            dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
            res.update(dq=dq, dk=dk, dv=dv)
        return res

    # ------------------------------------------------------------------ judging
    def run_backend(self, fn, inputs=None) -> dict:
        """Run ``fn(q, k, v) -> out`` (with gradients for 'fwd+bwd') and keep batch element 0.

        inputs: the problem's full (q, k, v) [B, H, N, D]; run at that shape, the backend does
        not recompile for the check (FlexAttention would for a new batch size), and dO is zero
        beyond batch element 0. Default: the checked batch element alone."""
        grad = self.mode == "fwd+bwd"
        full = inputs if inputs is not None else (self.q, self.k, self.v)
        q, k, v = (t.detach().clone().requires_grad_(grad) for t in full)
        out = fn(q, k, v)
        res = {"out": out.detach()[:1]}
        if grad:
            do = torch.zeros_like(out)
            do[:1] = self.do
            dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
            res.update(dq=dq[:1], dk=dk[:1], dv=dv[:1])
        return res

    def judge(self, got: dict) -> Verdict:
        worst = None
        for name, ref64 in self.ref64.items():
            out = got[name]
            if name == "out" and self.rows is not None:
                out = self._take_rows(out)
            err = accuracy.rel_err(out, ref64)
            tol = accuracy.tolerance(self.dtype, accuracy.rel_err(self.ref_same[name], ref64))
            ratio = err / tol if tol > 0 else float("inf")
            if worst is None or ratio > worst[0]:
                worst = (ratio, name, err, tol)
        _, name, err, tol = worst
        return Verdict(err <= tol, err, tol, name, self.check)

    def _take_rows(self, t: torch.Tensor) -> torch.Tensor:
        """[1, H, N, D] -> [1, H, R, D]: each head's checked rows."""
        heads = torch.arange(self.layout.heads, device=t.device).unsqueeze(1)
        return t[0, heads, self.rows.to(t.device)].unsqueeze(0)

    def check_backend(self, fn, inputs=None) -> Verdict:
        return self.judge(self.run_backend(fn, inputs))


def _entry_keys(layout) -> torch.Tensor:
    """int64 [nnz]: (head * nb + q block) * nb + k block of each stored block (sorted, as the
    Layout stores them)."""
    nb = layout.n_blocks
    return ((layout.heads_idx.long() * nb + layout.q_blocks.long()) * nb
            + layout.k_blocks.long())


def block_row_mask(layout, keys: torch.Tensor, h: int, qb: int) -> torch.Tensor:
    """bool [b, N]: head h's mask for the b queries of layout-order query block ``qb`` (keys in
    layout order), from the stored blocks found by binary search: O(log nnz + row's blocks)."""
    b, nb = layout.block, layout.n_blocks
    lo, hi = torch.searchsorted(keys, torch.tensor([(h * nb + qb) * nb, (h * nb + qb + 1) * nb]))
    idx = torch.arange(int(lo), int(hi))
    out = torch.zeros(b, nb, b, dtype=torch.bool)
    if idx.numel():
        out[:, layout.k_blocks[idx].long(), :] = layout.block_token_masks(idx).transpose(0, 1)
    return out.reshape(b, nb * b)


def _rows_attention(q, k, v, layout, scale, blocks):
    """Masked attention for the query rows of layout-order ``blocks`` of each head:
    q, k, v [1, H, N, D] -> out [1, H, R, D], rows in the order of ``head_rows``. Scores and
    softmax in float32 (float64 for float64), products in the inputs' dtype; an empty row is 0."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    dev, b = q.device, layout.block
    keys = _entry_keys(layout)
    outs = []
    for h in range(layout.heads):
        perm = layout.perm_of_head(h)
        qh, kh, vh = q[0, h], k[0, h], v[0, h]
        if perm is not None:  # into the layout's own order, where the mask is the block list
            p = perm.to(dev)
            qh, kh, vh = qh[p], kh[p], vh[p]
        parts = []
        for blk in blocks.tolist():
            mask = block_row_mask(layout, keys, h, blk).to(dev)  # [b, N]
            s = (qh[blk * b: blk * b + b] @ kh.transpose(0, 1)).to(acc) * scale
            s = s.masked_fill(~mask, float("-inf"))
            m = s.amax(dim=1, keepdim=True)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            e = torch.exp(s - m)  # masked entries: exp(-inf) = 0
            denom = e.sum(dim=1, keepdim=True)
            pr = e / torch.where(denom > 0, denom, torch.ones_like(denom))
            parts.append(pr.to(q.dtype) @ vh)
        outs.append(torch.cat(parts))
    return torch.stack(outs).unsqueeze(0)
