"""The correctness gate: a backend's output (and gradients) against the dense reference.

Rule (stbench/accuracy.py): each checked tensor T_out in dtype T passes when
``rel_err(T_out, ref64) <= 2 * rel_err(ref_T, ref64) + FLOOR[T]``; the row records the worst
tensor (largest err / tol).

What is checked, on the problem's own inputs restricted to batch element 0 (``q[:1]``):

- ``full``: every query row, against ``stbench.reference.dense`` (chunked, exact) in float64 and
  in T, when ``H * N^2 <= FULL_CHECK_PAIRS`` (N <= 16384 at H = 8);
- ``rows:R``: beyond that, R query rows per head (seeded, always including the first and the
  last), against the same masked softmax evaluated for those rows only (``token_mask_rows``), so
  the check costs O(H R N D) instead of O(H N^2 D).

For 'fwd+bwd' the output cotangent dO is random on the checked rows and zero elsewhere, so the
exact dQ, dK, dV of that loss follow from the checked rows alone; dQ, dK and dV are compared too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stbench import accuracy, backends

FULL_CHECK_PAIRS = 8 * 16384**2  # H * N^2 score entries up to which every row is checked
CHECK_ROWS = 256  # query rows per head checked beyond that


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
            r = min(rows or CHECK_ROWS, n)
            pick = torch.randperm(n, generator=g)[: max(r - 2, 0)]
            self.rows = torch.unique(torch.cat([pick, torch.tensor([0, n - 1])]))
            self.check = f"rows:{self.rows.numel()}"
        shape = self.q.shape
        do = torch.randn(shape, generator=g, dtype=torch.float32).to(q.device, self.dtype)
        if self.rows is not None:
            keep = torch.zeros(n, dtype=torch.bool, device=q.device)
            keep[self.rows.to(q.device)] = True
            do = do * keep.view(1, 1, n, 1).to(do.dtype)
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
            out = _rows_attention(q, k, v, self.layout, self.scale, self.rows)
        res = {"out": out.detach()}
        if grad:
            do = self.do.to(dtype)
            if self.rows is not None:
                do = do[:, :, self.rows.to(do.device)]
            dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
            res.update(dq=dq, dk=dk, dv=dv)
        return res

    # ------------------------------------------------------------------ judging
    def run_backend(self, fn) -> dict:
        """Run ``fn(q, k, v) -> out`` on the checked inputs (with gradients for 'fwd+bwd')."""
        grad = self.mode == "fwd+bwd"
        q, k, v = (t.clone().requires_grad_(grad) for t in (self.q, self.k, self.v))
        out = fn(q, k, v)
        res = {"out": out.detach()}
        if grad:
            dq, dk, dv = torch.autograd.grad(out, (q, k, v), self.do)
            res.update(dq=dq, dk=dk, dv=dv)
        return res

    def judge(self, got: dict) -> Verdict:
        worst = None
        for name, ref64 in self.ref64.items():
            out = got[name]
            if name == "out" and self.rows is not None:
                out = out[:, :, self.rows.to(out.device)]
            err = accuracy.rel_err(out, ref64)
            tol = accuracy.tolerance(self.dtype, accuracy.rel_err(self.ref_same[name], ref64))
            ratio = err / tol if tol > 0 else float("inf")
            if worst is None or ratio > worst[0]:
                worst = (ratio, name, err, tol)
        _, name, err, tol = worst
        return Verdict(err <= tol, err, tol, name, self.check)

    def check_backend(self, fn) -> Verdict:
        return self.judge(self.run_backend(fn))


def _rows_attention(q, k, v, layout, scale, rows):
    """Masked attention for query ``rows`` only (original order): q, k, v [1, H, N, D] ->
    out [1, H, R, D]; softmax in float32 (float64 for float64), empty rows give zeros."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    dev = q.device
    rows_dev = rows.to(dev)
    outs = []
    for h in range(layout.heads):
        mask = layout.token_mask_rows(h, rows).to(dev)  # [R, N]
        s = (q[0, h, rows_dev] @ k[0, h].transpose(0, 1)).to(acc) * scale
        s = s.masked_fill(~mask, float("-inf"))
        m = s.amax(dim=1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        e = torch.exp(s - m)  # masked entries: exp(-inf) = 0
        denom = e.sum(dim=1, keepdim=True)
        p = e / torch.where(denom > 0, denom, torch.ones_like(denom))
        outs.append(p.to(q.dtype) @ v[0, h])
    return torch.stack(outs).unsqueeze(0)
