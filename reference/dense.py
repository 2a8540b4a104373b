"""The dense reference backend: exact masked attention, chunked so its memory stays bounded.

Semantics (DESIGN.md), for q, k, v of shape [B, H, N, D]:

    out[b, h, i] = sum_j p_ij v[b, h, j],   p_i = softmax_j(scale * q_i . k_j)
                                            over the j with layout.token_mask()[h, i, j];

a row with no allowed key gives zeros (never NaN) and zero gradients.

Algorithm (one head at a time, ``c`` query rows at a time):

    if head h carries a permutation: gather q, k, v into the layout's own order (exact: the
        mask in that order is the layout's block list; un-permute the result at the end)
    for each chunk of c query rows (block-aligned, layout order):
        mask  = the chunk's rows of the head's mask, built on the tensors' device from the
                device plan's CSR lists (full / causal-diagonal / partial bitmask blocks)
        s     = scale * q_c @ k^T                    [B, c, N], masked to -inf
        m     = rowmax(s) (0 on empty rows);  l = rowsum(exp(s - m))
        out_c = (exp(s - m) / l) @ v                 empty rows: l = 0, exp = 0 -> out_c = 0
        lse_c = m + log(l)                           fp32, fp64 for fp64 inputs (-inf on empty
                                                     rows), kept for backward
    backward, same chunks (flash-style recomputation, nothing N x N is kept):
        p = exp(s - lse);  dV += p^T dO_c;  dP = dO_c v^T;  delta = rowsum(dO_c * out_c)
        dS = p * (dP - delta);  dQ_c = scale * dS k;  dK += scale * dS^T q_c

Precision: matrix products run in the input dtype (fp64/fp32/bf16/fp16), as PyTorch's own
attention would; the softmax and the dK/dV accumulators over chunks use fp32 (fp64 for fp64
inputs), as PyTorch's softmax does internally. The accuracy rule (stbench/accuracy.py) compares
a kernel in dtype T with this reference in T and in fp64.

Memory bound: the forward keeps only ``out`` and ``lse`` (fp32, B*H*N*4 bytes; fp64: 8). A
chunk holds at most about six [B, c, N] score-sized tiles (the product in the input dtype, the
fp32 scores / probabilities, their cast back; the backward adds dP and dS) plus three [c, N]
bool tensors (the mask, its negation, the gathered block masks). The chunk is chosen so one fp32
tile B * c * N * 4 bytes (8 for fp64) is at most ``chunk_bytes`` (default 256 MB,
``config={"chunk_bytes": ...}``) and at least one block of rows (a budget below B * b * N * 4
bytes is raised to that), so the peak beyond inputs, outputs and gradients is about
6 * chunk_bytes + 3 * c * N bytes, independent of H and never N x N: with the default, at most
about 1.7 GB. Example: N = 65536, B = 1, fp32: c = 1024 rows, a 256 MB tile and a 64 MB mask per
chunk, where the N x N scores of one head alone would need 16 GB. Measured on the 2-core CPU
dev box with ``python -m stbench.reference.dense --n-ctx 65536 --heads 1`` (fp32, B = 1,
D = 64, causal at block 64): peak RSS 1.53 GB in all (the process and its inputs: 0.29 GB);
forward 28 s and backward 98 s on an idle machine (185 s / 258 s under load).

``dense_attention_reference`` is the plain version for small tests: per-head masks materialised
([H, N, N] bool) and autograd through ordinary torch ops.
"""

from __future__ import annotations

import math

import torch

from stbench.errors import BackendUnavailable
from stbench.layouts import DIAG, FULL, Layout, plan_for

DEFAULT_CHUNK_BYTES = 256 * 2**20  # one fp32 [B, c, N] score tile per chunk at most
SUPPORTED_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------- backend interface
def check_available(device: torch.device, dtype: torch.dtype) -> None:
    """The dense reference runs on any device torch does, in the four float dtypes."""
    if dtype not in SUPPORTED_DTYPES:
        raise BackendUnavailable(
            f"backend 'dense' does not support dtype={dtype}: use one of "
            f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}"
        )


def config_space(layout: Layout, head_dim: int, dtype: torch.dtype) -> list[dict]:
    """Nothing to tune: the reference is the yardstick, not a competitor."""
    return [{}]


def supports(layout: Layout) -> str | None:
    """Every layout."""
    return None


def attention(q, k, v, layout: Layout, scale: float, config: dict | None = None):
    """Chunked exact attention; q, k, v [B, H, N, D] -> out [B, H, N, D], differentiable.

    ``config``: optional ``{"chunk_bytes": int}``, the budget of one fp32 score tile."""
    chunk_bytes = int((config or {}).get("chunk_bytes", DEFAULT_CHUNK_BYTES))
    if chunk_bytes <= 0:
        raise ValueError(f"config['chunk_bytes']={chunk_bytes} must be a positive int")
    return DenseAttention.apply(q, k, v, layout, float(scale), chunk_bytes)


# --------------------------------------------------------------------------- helpers
def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax / accumulator dtype: fp64 for fp64 inputs, fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_rows(
    layout: Layout, batch: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES, itemsize: int = 4
) -> int:
    """Query rows per chunk: a multiple of the block with B * c * N * itemsize <= chunk_bytes
    (itemsize of the softmax dtype; at least one block, at most N)."""
    b, n = layout.block, layout.n_ctx
    rows = chunk_bytes // max(1, batch * n * itemsize)
    return max(b, min(n, rows // b * b))


def _block_table(layout: Layout, device: torch.device) -> torch.Tensor:
    """bool [2 + M, b, b] on ``device``: row 0 full, row 1 causal diagonal, 2 + m partial mask m."""
    b = layout.block
    full = torch.ones(1, b, b, dtype=torch.bool)
    tril = torch.ones(b, b, dtype=torch.bool).tril_().unsqueeze(0)
    return torch.cat([full, tril, layout.masks]).to(device)


def layout_rows_mask(layout, plan, table, h: int, start: int, stop: int, device) -> torch.Tensor:
    """bool [stop - start, N] on ``device``: head h's mask for layout positions start..stop-1
    (block-aligned), keys in layout order, built from the plan's CSR lists (``plan`` on CPU,
    ``table`` from ``_block_table``). Memory O((stop - start) * N)."""
    b, nb = layout.block, layout.n_blocks
    qb0, qb1 = start // b, stop // b
    pat = int(plan.head_pattern[h])
    ptr = plan.row_ptr[pat, qb0 : qb1 + 1].long()
    e0, e1 = int(ptr[0]), int(ptr[-1])
    out = torch.zeros(qb1 - qb0, b, nb, b, dtype=torch.bool, device=device)
    if e1 > e0:
        rows = torch.repeat_interleave(torch.arange(qb1 - qb0), ptr[1:] - ptr[:-1])
        cols = plan.col_idx[e0:e1].long()
        kind = plan.col_kind[e0:e1].long()
        which = torch.where(
            kind == FULL, 0, torch.where(kind == DIAG, 1, 2 + plan.col_mask[e0:e1].long())
        )
        out[rows.to(device), :, cols.to(device), :] = table[which.to(device)]
    return out.reshape(stop - start, layout.n_ctx)


def _head_inputs(layout: Layout, h: int, tensors, device):
    """Head h's slices of ``tensors`` ([B, H, N, ...]) in layout order, and the permutation."""
    perm = layout.perm_of_head(h)
    if perm is None:
        return [t[:, h] for t in tensors], None
    perm = perm.to(device)
    return [t[:, h].index_select(1, perm) for t in tensors], perm


def _scores(q_c, k_t, mask, scale, acc):
    """fp32 (fp64) masked scores [B, c, N]: the product in the input dtype, then scaled."""
    s = torch.matmul(q_c, k_t).to(acc).mul_(scale)
    return s.masked_fill_(~mask, -math.inf)


# --------------------------------------------------------------------------- autograd function
class DenseAttention(torch.autograd.Function):
    """Chunked exact attention; forward keeps out and lse only (see the module docstring)."""

    @staticmethod
    def forward(ctx, q, k, v, layout: Layout, scale: float, chunk_bytes: int):
        bsz, heads, n, _ = q.shape
        dtype, acc, device = q.dtype, acc_dtype(q.dtype), q.device
        plan = plan_for(layout, "cpu")
        table = _block_table(layout, device)
        c = chunk_rows(layout, bsz, chunk_bytes, acc.itemsize)
        out = torch.empty_like(q)
        lse = torch.empty(bsz, heads, n, dtype=acc, device=device)
        with torch.no_grad():
            for h in range(heads):
                (qh, kh, vh), perm = _head_inputs(layout, h, (q, k, v), device)
                k_t = kh.transpose(1, 2)
                out_h = torch.empty_like(qh)
                lse_h = torch.empty(bsz, n, dtype=acc, device=device)
                for s0 in range(0, n, c):
                    s1 = min(n, s0 + c)
                    mask = layout_rows_mask(layout, plan, table, h, s0, s1, device)
                    s = _scores(qh[:, s0:s1], k_t, mask, scale, acc)
                    m = s.amax(-1, keepdim=True)
                    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
                    e = s.sub_(m).exp_()
                    l = e.sum(-1, keepdim=True)
                    p = e.div_(torch.where(l > 0, l, torch.ones_like(l))).to(dtype)
                    out_h[:, s0:s1] = torch.matmul(p, vh)
                    lse_h[:, s0:s1] = (m + torch.log(l)).squeeze(-1)
                if perm is None:
                    out[:, h], lse[:, h] = out_h, lse_h
                else:
                    out[:, h, perm], lse[:, h, perm] = out_h, lse_h
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.scale, ctx.chunk = layout, scale, c
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        layout, scale, c = ctx.layout, ctx.scale, ctx.chunk
        bsz, heads, n, _ = q.shape
        dtype, acc, device = q.dtype, acc_dtype(q.dtype), q.device
        plan = plan_for(layout, "cpu")
        table = _block_table(layout, device)
        d_out = d_out.to(dtype)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        for h in range(heads):
            (qh, kh, vh, oh, doh, lh), perm = _head_inputs(
                layout, h, (q, k, v, out, d_out, lse), device
            )
            k_t, v_t = kh.transpose(1, 2), vh.transpose(1, 2)
            lse_safe = torch.where(torch.isfinite(lh), lh, torch.zeros_like(lh)).to(acc)
            dq_h = torch.empty_like(qh)
            dk_h = torch.zeros(kh.shape, dtype=acc, device=device)
            dv_h = torch.zeros(vh.shape, dtype=acc, device=device)
            for s0 in range(0, n, c):
                s1 = min(n, s0 + c)
                mask = layout_rows_mask(layout, plan, table, h, s0, s1, device)
                p_acc = _scores(qh[:, s0:s1], k_t, mask, scale, acc)
                p_acc = p_acc.sub_(lse_safe[:, s0:s1, None]).exp_()  # masked / empty rows: 0
                do_c, q_c = doh[:, s0:s1], qh[:, s0:s1]
                dv_h += torch.matmul(p_acc.to(dtype).transpose(1, 2), do_c).to(acc)
                d_p = torch.matmul(do_c, v_t).to(acc)
                delta = (do_c.to(acc) * oh[:, s0:s1].to(acc)).sum(-1, keepdim=True)
                d_s = p_acc.mul_(d_p.sub_(delta)).to(dtype)
                dq_h[:, s0:s1] = torch.matmul(d_s, kh) * scale
                dk_h += torch.matmul(d_s.transpose(1, 2), q_c).to(acc)
            dk_h.mul_(scale)
            if perm is None:
                dq[:, h], dk[:, h], dv[:, h] = dq_h, dk_h.to(dtype), dv_h.to(dtype)
            else:
                dq[:, h, perm], dk[:, h, perm], dv[:, h, perm] = (
                    dq_h, dk_h.to(dtype), dv_h.to(dtype)
                )
        return dq, dk, dv, None, None, None


# --------------------------------------------------------------------------- plain reference
def dense_attention_reference(q, k, v, layout: Layout, scale: float | None = None):
    """The obvious version, for small problems: materialises ``layout.token_mask()`` ([H, N, N]
    bool) and the [B, H, N, N] scores; autograd through torch ops. Same semantics and dtype
    policy as ``attention`` (products in the input dtype, softmax in fp32 / fp64); empty rows
    give zeros and zero gradients."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    acc = acc_dtype(q.dtype)
    mask = layout.token_mask().to(q.device)  # [H, N, N]
    nonempty = mask.any(-1, keepdim=True)  # [H, N, 1]
    s = torch.matmul(q, k.transpose(-1, -2)).to(acc) * scale  # [B, H, N, N]
    # empty rows: softmax over zeros (finite), then multiplied by 0 -> zero output and gradient
    s = s.masked_fill(~mask, -math.inf).masked_fill(~nonempty, 0.0)
    p = torch.softmax(s, dim=-1) * nonempty
    return torch.matmul(p.to(q.dtype), v)


# --------------------------------------------------------------------------- memory demo
def main(argv=None) -> int:
    """Time the chunked reference on causal attention and print the peak resident memory:
    ``python -m stbench.reference.dense --n-ctx 65536 --heads 1`` (fp32, B = 1, D = 64)."""
    import argparse
    import resource
    import time

    from stbench import layouts

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--n-ctx", type=int, default=65536)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    def peak_gb() -> float:  # ru_maxrss is in KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    layout = layouts.causal(args.n_ctx, block=args.block, heads=args.heads)
    gen = torch.Generator().manual_seed(0)
    shape = (1, args.heads, args.n_ctx, args.head_dim)
    q, k, v = (torch.randn(*shape, generator=gen).to(args.device).requires_grad_()
               for _ in range(3))
    print(f"inputs ready: peak RSS {peak_gb():.2f} GB", flush=True)
    t0 = time.perf_counter()
    out = attention(q, k, v, layout, args.head_dim**-0.5)
    t1 = time.perf_counter()
    print(f"forward {t1 - t0:.1f} s, peak RSS {peak_gb():.2f} GB", flush=True)
    out.backward(torch.ones_like(out))
    t2 = time.perf_counter()
    print(f"backward {t2 - t1:.1f} s, peak RSS {peak_gb():.2f} GB", flush=True)
    if args.device.startswith("cuda"):
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GB")
    finite = all(bool(torch.isfinite(t.grad).all()) for t in (q, k, v))
    print(f"finite gradients: {finite}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
