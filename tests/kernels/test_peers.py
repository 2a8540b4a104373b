"""The peers: SDPA (full / causal layouts only) and FlexAttention (BlockMask from the plan).

On the CPU, SDPA runs for real; FlexAttention's BlockMask and mask_mod are checked through its
uncompiled forward (the compiled kernel and every backward need CUDA: the ``gpu`` tests)."""

import pytest
import torch

import stbench
from stbench import layouts
from stbench.accuracy import within
from stbench.backends import BackendUnavailable
from stbench.kernels import flex, sdpa
from stbench.reference import dense

DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def qkv(gen, shape, dtype=torch.float64, device="cpu", grad=False):
    return [
        torch.randn(*shape, generator=gen, dtype=torch.float64)
        .to(device=device, dtype=dtype)
        .requires_grad_(grad)
        for _ in range(3)
    ]


def partial_layout(gen, n=128, heads=2, block=16, empty_rows=(3, 70)):
    """Random token mask (partial blocks, empty rows), head 1 carrying a permutation."""
    tm = torch.rand(heads, n, n, generator=gen) < 0.25
    tm[:, list(empty_rows)] = False
    base = layouts.from_token_mask(tm, block=block)
    perm = torch.randperm(n, generator=gen).unsqueeze(0)
    return stbench.layouts.Layout.from_parts(
        n, heads, block, "random-perm", base.heads_idx, base.q_blocks, base.k_blocks,
        base.kinds, base.mask_ids, base.masks, perm, (-1,) + (0,) * (heads - 1),
    )


def test_partial_layout_helper_has_everything(gen):
    L = partial_layout(gen)
    assert (L.kinds == layouts.PARTIAL).any() and L.perms is not None
    assert (~L.token_mask().any(-1)).any()


# --------------------------------------------------------------------------- SDPA
def test_sdpa_detects_full_and_causal():
    assert sdpa.dense_kind(layouts.causal(128, block=32, heads=2)) == "causal"
    full = layouts.from_block_mask(torch.ones(2, 4, 4, dtype=torch.bool), block=32, causal=False)
    assert sdpa.dense_kind(full) == "full"
    for L in (
        layouts.local(128, block=32, window=64, heads=2),
        layouts.strided(256, block=16, stride=16, heads=1),
        layouts.fixed(256, block=16, stride=64, heads=2, num_verts=2),
        layouts.from_block_mask(torch.ones(1, 4, 4, dtype=torch.bool).tril(), block=32,
                                causal=False),  # lower blocks all full: not causal
    ):
        assert sdpa.dense_kind(L) is None
        assert "neither full nor plain causal" in sdpa.supports(L)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["causal", "full"])
def test_sdpa_matches_dense(gen, device, dtype, kind):
    if kind == "causal":
        L = layouts.causal(96, block=32, heads=3)
    else:
        L = layouts.from_block_mask(torch.ones(3, 3, 3, dtype=torch.bool), block=32,
                                    causal=False)
    q, k, v = qkv(gen, (2, 3, 96, 40), dtype, device, grad=True)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = stbench.attention(q, k, v, L, backend="sdpa")
    ref64 = dense.attention(q64, k64, v64, L, 40**-0.5)
    ref_t = dense.attention(q, k, v, L, 40**-0.5)
    ok, err, tol = within(out, ref64, ref_t)
    assert ok, (err, tol)
    do = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    g = torch.autograd.grad(out, (q, k, v), do)
    g64 = torch.autograd.grad(ref64, (q64, k64, v64), do.double())
    g_t = torch.autograd.grad(ref_t, (q, k, v), do)
    for a, b, c in zip(g, g64, g_t):
        ok, err, tol = within(a, b, c)
        assert ok, (err, tol)


def test_sdpa_refuses_sparse_layout(gen):
    L = layouts.local(128, block=32, window=64, heads=1)
    q, k, v = qkv(gen, (1, 1, 128, 8))
    with pytest.raises(BackendUnavailable, match="neither full nor plain causal"):
        stbench.attention(q, k, v, L, backend="sdpa")
    assert "sdpa" not in stbench.backends.available("cpu", torch.float32, L)
    assert "sdpa" in stbench.backends.available("cpu", torch.float32,
                                                 layouts.causal(128, block=32))


# --------------------------------------------------------------------------- FlexAttention
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_flex_unavailable_on_cpu_says_why():
    reason = stbench.backends.unavailable_reason("flex", "cpu")
    assert reason is not None and "CUDA" in reason


def layouts_for_flex(gen):
    return [
        layouts.causal(128, block=16, heads=2),
        layouts.local(128, block=16, window=40, heads=2),
        layouts.strided(256, block=16, stride=16, heads=2),
        layouts.fixed(256, block=32, stride=64, heads=2, num_verts=2),
        partial_layout(gen),
    ]


def test_flex_block_mask_matches_plan(gen):
    for L in layouts_for_flex(gen):
        bm = flex.flex_layout(L, "cpu").block_mask
        dense_blocks = bm.to_dense()[0].bool()  # [H or 1, nb, nb]
        assert torch.equal(dense_blocks.expand(L.heads, -1, -1), L.block_mask), L.name
        full = torch.zeros_like(L.block_mask)
        sel = L.kinds == layouts.FULL
        full[L.heads_idx[sel].long(), L.q_blocks[sel].long(), L.k_blocks[sel].long()] = True
        assert torch.equal(bm.full_kv_num_blocks[0].expand(L.heads, -1).long(), full.sum(-1))
        assert bm.BLOCK_SIZE == (L.block, L.block)


def test_flex_mask_mod_exact_everywhere(gen):
    """The mask_mod reproduces the layout-order token mask at every (q, k) (small N)."""
    for L in layouts_for_flex(gen):
        mm = flex.flex_layout(L, "cpu").block_mask.mask_mod
        n = L.n_ctx
        qi = torch.arange(n).view(n, 1)
        ki = torch.arange(n).view(1, n)
        for h in range(L.heads):
            got = mm(torch.tensor(0), torch.tensor(h), qi, ki)
            assert torch.equal(got, L.layout_order_rows(h, 0, n)), (L.name, h)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_eager_forward_matches_dense(gen):
    for L in layouts_for_flex(gen):
        q, k, v = qkv(gen, (2, L.heads, L.n_ctx, 8), torch.float32)
        out = flex.flex_forward(q, k, v, L, 0.3, compiled=False)
        ref = dense.attention(q, k, v, L, 0.3)
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_config_space_and_errors(gen):
    L = layouts.fixed(256, block=32, stride=64, heads=2, num_verts=2)
    assert flex.config_space(L, 64, torch.bfloat16) == [{}]  # tiles = block 32
    space = flex.config_space(L.reblock(128), 64, torch.bfloat16)
    assert space == [{}, {"BLOCK_M": 64, "BLOCK_N": 64}, {"BLOCK_M": 32, "BLOCK_N": 32}]
    q, k, v = qkv(gen, (1, 2, 256, 8), torch.float32)
    with pytest.raises(ValueError, match="unknown to backend 'flex'"):
        flex.flex_forward(q, k, v, L, 0.3, {"BLOCK_Q": 16}, compiled=False)
    out = flex.flex_forward(q, k, v, L, 0.3, {"block": 64}, compiled=False)  # exact reblock
    torch.testing.assert_close(out, dense.attention(q, k, v, L, 0.3), atol=2e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests cover the compiled path")
def test_flex_compiled_forward_on_cpu(gen):
    """The compiled path (inductor lowers our mask_mod: block table, packed bits) on the CPU,
    forward only (FlexAttention has no CPU backward); two layouts = two compilations."""
    for L in (partial_layout(gen, n=128, block=32), layouts.strided(256, block=16, stride=16,
                                                                    heads=2)):
        q, k, v = qkv(gen, (1, L.heads, L.n_ctx, 16), torch.float32)
        out = flex.flex_forward(q, k, v, L, 0.3, compiled=True)
        torch.testing.assert_close(out, dense.attention(q, k, v, L, 0.3), atol=2e-6, rtol=0)


def test_flex_block_mask_from_predicate_cpu():
    n, stride = 256, 32

    def union(q, k):  # the paper's merged strided head, as a FlexAttention user writes it
        return (k <= q) & (((q - k) < stride) | ((q - k) % stride == 0))

    bm = flex.flex_block_mask_from_predicate(union, n, block=128, device="cpu")
    L = layouts.merged_strided(n, block=128, stride=stride, heads=1)
    assert torch.equal(bm.to_dense()[0, 0].bool(), L.block_mask[0])
    assert bm.BLOCK_SIZE == (128, 128)


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, marks=pytest.mark.smoke),
                                   torch.float16, torch.float32], ids=str)
def test_flex_compiled_fwd_bwd_matches_dense(gen, dtype):
    for L in layouts_for_flex(gen):
        L = L.reblock(128) if L.n_ctx % 128 == 0 else L  # backward compiles at block 128
        q, k, v = qkv(gen, (2, L.heads, L.n_ctx, 64), dtype, "cuda", grad=True)
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        out = stbench.attention(q, k, v, L, backend="flex")
        ref64 = dense.attention(q64, k64, v64, L, 0.125)
        ref_t = dense.attention(q, k, v, L, 0.125)
        ok, err, tol = within(out, ref64, ref_t)
        assert ok, (L.name, err, tol)
        do = torch.randn_like(out)
        g = torch.autograd.grad(out, (q, k, v), do)
        g64 = torch.autograd.grad(ref64, (q64, k64, v64), do.double())
        g_t = torch.autograd.grad(ref_t, (q, k, v), do)
        for a, b, c in zip(g, g64, g_t):
            ok, err, tol = within(a, b, c)
            assert ok, (L.name, err, tol)


@pytest.mark.gpu
def test_flex_compiled_small_block_forward(gen):
    L = layouts.fixed(512, block=32, stride=128, heads=2, num_verts=2)
    q, k, v = qkv(gen, (1, 2, 512, 64), torch.bfloat16, "cuda")
    for config in flex.config_space(L, 64, torch.bfloat16):
        out = flex.attention(q, k, v, L, 0.125, config)
        ok, err, tol = within(out, dense.attention(*(t.double() for t in (q, k, v)), L, 0.125),
                              dense.attention(q, k, v, L, 0.125))
        assert ok, (config, err, tol)


BAND_LAYOUTS = [
    lambda: layouts.causal(512, block=64, heads=2),
    lambda: layouts.local(512, block=32, window=100, heads=2),  # window edge inside a block
    lambda: layouts.fixed(512, block=32, stride=128, heads=4, num_verts=2),
    lambda: layouts.strided(512, block=16, stride=32, heads=2),  # layout order (transposed)
    lambda: layouts.st_mix(512, block=16, stride=32, heads=4),  # two patterns, two bands
    lambda: layouts.sliding_window(512, block=32, heads=2),
]


@pytest.mark.parametrize("make", BAND_LAYOUTS)
def test_flex_band_mask_is_exact_on_every_masked_block(make):
    """Where band_bounds gives [lo, hi), lo <= q - k < hi equals the layout's own mask (layout
    order) on every causal-diagonal and partial block: the blocks compiled flex masks."""
    L = make()
    lo, hi = flex.band_bounds(L)
    b = L.block
    for h in range(L.heads):
        rows = L.layout_order_rows(h, 0, L.n_ctx)  # bool [N, N], layout order
        q, k = L.heads_idx == h, L.kinds != layouts.FULL
        for qb, kb in zip(L.q_blocks[q & k].tolist(), L.k_blocks[q & k].tolist()):
            qi = torch.arange(qb * b, qb * b + b).view(-1, 1)
            ki = torch.arange(kb * b, kb * b + b).view(1, -1)
            band = ((qi - ki) >= lo[h]) & ((qi - ki) < hi[h])
            assert torch.equal(band, rows[qb * b:qb * b + b, kb * b:kb * b + b])


def test_flex_band_mask_refused_where_it_cannot_be_exact(gen):
    assert flex.band_bounds(layouts.merged_strided(512, block=16, stride=128, heads=2)) is None
    assert flex.band_bounds(partial_layout(gen)) is None


def test_flex_permutation_gathers_rows_and_inverts_in_backward(gen):
    """The permutation around FlexAttention: forward = x[:, h, index[h]], backward = the inverse
    gather (the same gradient autograd derives for torch.gather, without its scatter-add)."""
    lay = layouts.st_mix(256, block=16, stride=16, heads=4)  # odd heads permuted, even plain
    prepared = flex.flex_layout(lay, "cpu")
    x = torch.randn(3, 4, 256, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    y = flex.permute(x, prepared.gather, prepared.scatter)
    idx = prepared.gather.view(1, 4, 256, 1).expand(3, 4, 256, 8)
    expect = torch.gather(x, 2, idx)
    assert torch.equal(y, expect)
    g = torch.randn_like(y)
    (got,) = torch.autograd.grad(y, x, g)
    (want,) = torch.autograd.grad(expect, x, g)
    assert torch.equal(got, want)
    back = flex.permute(y, prepared.scatter, prepared.gather)
    assert torch.equal(back, x)
