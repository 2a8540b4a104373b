"""The dense reference: chunked exact attention against the obvious masked softmax, its
gradients against autograd through the plain version, empty rows, dtypes, permutations."""

import math

import pytest
import torch

import stbench
from stbench.layouts import Layout
from stbench.reference import dense

DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
# Chunked vs plain reference in the same dtype: both run the same products in that dtype, so
# they differ only by accumulation order; calibrated at ~10x the observed max-abs gaps
# (fp64 1e-15, fp32 4e-7, fp16 1e-3, bf16 1.6e-2 on N(0,1) inputs, values of order 1).
ATOL = {torch.float64: 1e-12, torch.float32: 5e-6, torch.float16: 1e-2, torch.bfloat16: 8e-2}


def layout_from_token_mask(tm: torch.Tensor, block: int, perm=None, head_perm=None) -> Layout:
    """A Layout whose LAYOUT-ORDER mask is ``tm`` (bool [H, N, N]); with ``perm`` ([P, N]) and
    ``head_perm`` the original-order mask is the permuted one."""
    h, n, _ = tm.shape
    nb = n // block
    hi, qi, ki = torch.meshgrid(
        torch.arange(h), torch.arange(nb), torch.arange(nb), indexing="ij"
    )
    bm = tm.reshape(h, nb, block, nb, block).permute(0, 1, 3, 2, 4).reshape(-1, block, block)
    return Layout.from_block_masks(
        n, h, block, "test", hi.flatten(), qi.flatten(), ki.flatten(), bm, perms=perm,
        head_perm=head_perm,
    )


def random_layout(gen, heads=3, n=64, block=16, density=0.3, empty_rows=(5,), permuted=True):
    tm = torch.rand(heads, n, n, generator=gen) < density
    tm |= torch.eye(n, dtype=torch.bool)
    for r in empty_rows:
        tm[:, r] = False
    if not permuted:
        return layout_from_token_mask(tm, block)
    perm = torch.randperm(n, generator=gen).unsqueeze(0)
    head_perm = tuple(0 if h % 2 == 0 else -1 for h in range(heads))
    return layout_from_token_mask(tm, block, perm, head_perm)


def causal_layout(n=64, heads=2, block=16) -> Layout:
    tm = torch.ones(heads, n, n, dtype=torch.bool).tril()
    return layout_from_token_mask(tm, block)


def obvious(q, k, v, mask, scale):
    """softmax over the allowed keys, rows with none -> 0; fp64."""
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, -math.inf)
    p = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)
    return p @ v


def qkv(gen, shape, dtype=torch.float64, grad=True):
    return [
        torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(grad)
        for _ in range(3)
    ]


@pytest.mark.parametrize("permuted", [False, True])
def test_forward_matches_obvious_fp64(gen, permuted):
    L = random_layout(gen, permuted=permuted)
    q, k, v = qkv(gen, (2, L.heads, L.n_ctx, 8), grad=False)
    ref = obvious(q, k, v, L.token_mask(), 0.37)
    for chunk_bytes in (1, dense.DEFAULT_CHUNK_BYTES):
        out = dense.attention(q, k, v, L, 0.37, {"chunk_bytes": chunk_bytes})
        torch.testing.assert_close(out, ref, atol=1e-13, rtol=0)
    torch.testing.assert_close(dense.dense_attention_reference(q, k, v, L, 0.37), ref,
                               atol=1e-13, rtol=0)


def test_empty_rows_give_zeros_and_finite_grads(gen):
    L = random_layout(gen, empty_rows=(0, 5, 40), permuted=True)
    q, k, v = qkv(gen, (2, L.heads, L.n_ctx, 8))
    out = dense.attention(q, k, v, L, 0.5, {"chunk_bytes": 1})
    rows = ~L.token_mask().any(-1)  # [H, N]
    assert torch.equal(rows.sum(1), torch.full((L.heads,), 3))  # layout rows 0, 5, 40
    assert torch.equal(out[:, rows], torch.zeros_like(out[:, rows]))
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    for g in grads:
        assert torch.isfinite(g).all()
    assert torch.equal(grads[0][:, rows], torch.zeros_like(grads[0][:, rows]))


def test_all_masked_layout(gen):
    L = layout_from_token_mask(torch.zeros(2, 32, 32, dtype=torch.bool), 16)
    assert L.nnz == 0
    q, k, v = qkv(gen, (1, 2, 32, 4))
    out = dense.attention(q, k, v, L, 1.0)
    assert torch.equal(out, torch.zeros_like(out))
    for g in torch.autograd.grad(out.sum(), (q, k, v)):
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("permuted", [False, True])
def test_chunked_matches_plain_with_grads(gen, dtype, permuted):
    # odd shapes: B=3, H=3, D=40
    L = random_layout(gen, heads=3, n=64, block=16, permuted=permuted)
    q, k, v = qkv(gen, (3, 3, 64, 40), dtype)
    do = torch.randn(3, 3, 64, 40, generator=gen, dtype=torch.float64).to(dtype)
    out = dense.attention(q, k, v, L, 40**-0.5, {"chunk_bytes": 1})
    ref = dense.dense_attention_reference(q, k, v, L)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, atol=ATOL[dtype], rtol=0)
    g_out = torch.autograd.grad(out, (q, k, v), do)
    g_ref = torch.autograd.grad(ref, (q, k, v), do)
    for a, b in zip(g_out, g_ref):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, atol=ATOL[dtype], rtol=0)


def test_low_precision_close_to_fp64(gen):
    """The reference in T is as accurate as PyTorch attention in T (rel err vs fp64)."""
    from stbench.accuracy import rel_err

    L = random_layout(gen, permuted=True)
    q, k, v = qkv(gen, (2, L.heads, L.n_ctx, 16), grad=False)
    ref = dense.attention(q, k, v, L, 0.25)
    for dtype, bound in ((torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)):
        out = dense.attention(q.to(dtype), k.to(dtype), v.to(dtype), L, 0.25)
        assert rel_err(out, ref) < bound


def test_gradcheck_fp64(gen):
    # tiny on purpose: full gradcheck perturbs every input element (2 * 3 * 96 forwards)
    L = random_layout(gen, heads=1, n=32, block=16, empty_rows=(3,), permuted=True)
    q, k, v = qkv(gen, (1, 1, 32, 3))
    assert torch.autograd.gradcheck(
        lambda a, b, c: dense.attention(a, b, c, L, 0.7, {"chunk_bytes": 1}), (q, k, v)
    )


@pytest.mark.parametrize("permuted", [False, True])
def test_layout_rows_mask_matches_token_mask_rows(gen, permuted):
    from stbench.layouts import plan_for

    L = random_layout(gen, heads=3, n=64, block=16, permuted=permuted)
    table = dense._block_table(L, torch.device("cpu"))
    plan = plan_for(L, "cpu")
    for h in range(L.heads):
        full = dense.layout_rows_mask(L, plan, table, h, 0, 64, "cpu")
        perm = L.perm_of_head(h)
        rows = L.token_mask_rows(h, torch.arange(64) if perm is None else perm)
        expect = rows if perm is None else rows[:, perm]
        assert torch.equal(full, expect)
        assert torch.equal(dense.layout_rows_mask(L, plan, table, h, 16, 48, "cpu"),
                           full[16:48])


def test_chunk_rows_bound():
    from types import SimpleNamespace

    L = SimpleNamespace(n_ctx=65536, block=64)  # only the sizes matter
    assert dense.chunk_rows(L, 1) == 1024  # 1024 * 65536 * 4 bytes = 256 MB
    assert dense.chunk_rows(L, 1, chunk_bytes=1) == 64  # at least one block
    assert dense.chunk_rows(L, 1, itemsize=8) == 512


def test_registered_as_dense_backend(gen):
    L = causal_layout()
    q, k, v = qkv(gen, (1, 2, 64, 8), grad=False)
    out = stbench.attention(q, k, v, L, backend="dense")
    ref = obvious(q, k, v, L.token_mask(), 8**-0.5)
    torch.testing.assert_close(out, ref, atol=1e-13, rtol=0)
    assert stbench.backends.unavailable_reason("dense", "cpu", torch.float16) is None
    assert dense.config_space(L, 8, torch.float32) == [{}]
