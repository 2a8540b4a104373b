"""The FlashAttention-4 peers: ``fa4`` (flash_attn.cute directly) and ``flex_flash``
(FlexAttention's FLASH backend).

On the CPU (no flash-attn-4, no GPU): the registry rows, the unavailability messages, the exact
full / causal / token-window detection, the block lists and mask tables handed to FA4 against slow
obvious constructions, and ``supports``. The ``gpu`` tests run both against dense, forward and
gradients (skipped where flash-attn-4 is not installed)."""

import pytest
import torch

import stbench
from stbench import backends, layouts
from stbench.accuracy import within
from stbench.backends import BackendUnavailable
from stbench.kernels import fa4, flex_flash
from stbench.layouts.plan import unpack_masks
from stbench.reference import dense

PEERS = ("fa4", "flex_flash")


def permuted(layout, gen):
    """``layout`` with a random token permutation on every head (same blocks)."""
    perm = torch.randperm(layout.n_ctx, generator=gen).unsqueeze(0)
    return layouts.Layout.from_parts(
        layout.n_ctx, layout.heads, layout.block, layout.name + "-perm", layout.heads_idx,
        layout.q_blocks, layout.k_blocks, layout.kinds, layout.mask_ids, layout.masks, perm,
        (0,) * layout.heads)


def random_partial(gen, n=256, heads=2, block=128, empty_rows=(3, 140)):
    tm = torch.rand(heads, n, n, generator=gen) < 0.3
    tm[:, list(empty_rows)] = False
    return layouts.from_token_mask(tm, block=block, name="random")


# --------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", PEERS)
def test_registry_rows(name):
    info = backends.info(name)
    assert name in backends.names()
    assert info.peer and info.backward and info.needs_gpu and not info.reference
    assert "stbench[fa4]" in info.install_hint


@pytest.mark.parametrize("name", PEERS)
def test_unavailable_names_the_fix(name, monkeypatch):
    if fa4._cute_missing() is not None:
        reason = backends.unavailable_reason(name, "cpu", torch.bfloat16)
        assert "stbench[fa4]" in reason and name in reason
    monkeypatch.setattr(fa4, "_cute_missing", lambda: None)
    with pytest.raises(BackendUnavailable, match="CUDA GPU"):
        fa4.require_flash_cute(name, torch.device("cpu"), torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(BackendUnavailable, match="sm90.*sm80"):
        fa4.require_flash_cute(name, torch.device("cuda"), torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with pytest.raises(BackendUnavailable, match="float16 and bfloat16"):
        fa4.require_flash_cute(name, torch.device("cuda"), torch.float32)
    fa4.require_flash_cute(name, torch.device("cuda"), torch.bfloat16)  # would run


def test_missing_flash_attn_4_message(monkeypatch):
    monkeypatch.setattr(fa4.importlib.util, "find_spec", lambda name: None)
    assert "flash-attn-4" in fa4._cute_missing() and "stbench[fa4]" in fa4._cute_missing()


def test_head_dim_limits():
    assert fa4.head_dim_reason(64, sparse=True) is None
    assert fa4.head_dim_reason(256, sparse=False) is None
    assert "8..128" in fa4.head_dim_reason(192, sparse=True)
    assert "multiple of 8" in fa4.head_dim_reason(60, sparse=False)
    assert fa4.head_dim_reason(264, sparse=False) is not None


# --------------------------------------------------------------------------- exact forms
def _band(n, lo, hi):
    d = torch.arange(n).view(n, 1) - torch.arange(n).view(1, n)  # q - k
    return (d >= lo) & (d < hi)


WINDOW_CASES = [  # (layout, token band [lo, hi) it must be detected as)
    (lambda: layouts.local(256, block=16, window=40, heads=2), (0, 40)),
    (lambda: layouts.local(256, block=32, window=64, heads=3), (0, 64)),
    (lambda: layouts.local(256, block=64, window=1, heads=1), (0, 1)),  # the diagonal alone
    (lambda: layouts.from_predicate(256, lambda q, k: (q - k).abs() <= 5, block=32, heads=2),
     (-5, 6)),
    (lambda: layouts.from_predicate(256, lambda q, k: (k - q >= 0) & (k - q < 70), block=32),
     (-69, 1)),
]


@pytest.mark.parametrize("make,band", WINDOW_CASES)
def test_dense_form_detects_token_windows(make, band):
    L = make()
    form = fa4.dense_form(L)
    lo, hi = band
    assert form == fa4.DenseForm("window", hi - 1, -lo)
    # FA4's window: keys q - left <= k <= q + right, the layout's token mask exactly
    expect = _band(L.n_ctx, -form.right, form.left + 1)
    assert torch.equal(L.token_mask(), expect.expand(L.heads, -1, -1))


def test_dense_form_detects_full_and_causal():
    assert fa4.dense_form(layouts.causal(256, block=32, heads=2)) == fa4.DenseForm("causal")
    full = layouts.from_block_mask(torch.ones(2, 4, 4, dtype=torch.bool), block=32, causal=False)
    assert fa4.dense_form(full) == fa4.DenseForm("full")
    # a window covering everything before each query is plain causal
    assert fa4.dense_form(layouts.local(128, block=32, window=128)) == fa4.DenseForm("causal")


def test_dense_form_refuses_everything_else(gen):
    n = 256
    refused = {
        "fixed": layouts.fixed(n, block=32, stride=64, heads=2, num_verts=2),
        "strided (permuted)": layouts.strided(n, block=16, stride=16, heads=2),
        "block-level window": layouts.sliding_window(n, block=32, heads=2),
        "window with a hole": layouts.from_predicate(
            n, lambda q, k: (q - k >= 0) & (q - k < 40) & (q - k != 3), block=32),
        "empty first rows": layouts.from_predicate(
            n, lambda q, k: (q - k >= 2) & (q - k < 40), block=32),
        "window plus a block": layouts.from_token_mask(
            _band(n, 0, 40) | (torch.arange(n).view(n, 1) // 64 == 3)
            & (torch.arange(n).view(1, n) < 32), block=32),
        "two windows": layouts.stack_heads(layouts.local(n, block=32, window=40),
                                           layouts.local(n, block=32, window=72)),
        "random partial": random_partial(gen, block=32),
        "permuted causal": permuted(layouts.causal(n, block=32, heads=2), gen),
        "permuted window": permuted(layouts.local(n, block=32, window=40, heads=2), gen),
    }
    for name, L in refused.items():
        assert fa4.dense_form(L) is None, name


# --------------------------------------------------------------------------- block lists
def _slow_lists(L, by_key: bool):
    """Per (head, block): FULL and masked partner blocks, by loops over the layout's entries."""
    nb = L.n_blocks
    lists = {kind: [[[] for _ in range(nb)] for _ in range(L.heads)] for kind in ("mask", "full")}
    for h, qb, kb, kind in zip(L.heads_idx.tolist(), L.q_blocks.tolist(), L.k_blocks.tolist(),
                               L.kinds.tolist()):
        row, other = (kb, qb) if by_key else (qb, kb)
        lists["full" if kind == layouts.FULL else "mask"][h][row].append(other)
    return lists


SPARSE_LAYOUTS = [
    lambda gen: layouts.causal(512, block=128, heads=2),
    lambda gen: layouts.fixed(1024, block=128, stride=256, heads=4, num_verts=2),
    lambda gen: layouts.st_mix(1024, block=64, stride=16, heads=4),
    lambda gen: layouts.merged_strided(512, block=64, stride=128, heads=2),
    lambda gen: random_partial(gen),
]


@pytest.mark.parametrize("make", SPARSE_LAYOUTS)
def test_block_sparse_lists_match_slow_construction(make, gen):
    L = make(gen)
    for lists, by_key in zip(fa4.block_sparse_lists(L, "cpu"), (False, True)):
        slow = _slow_lists(L, by_key)
        for kind, cnt, idx in (("mask", lists.mask_cnt, lists.mask_idx),
                               ("full", lists.full_cnt, lists.full_idx)):
            assert cnt.dtype == idx.dtype == torch.int32
            cnt = cnt[0].expand(L.heads, -1)
            idx = idx[0].expand(L.heads, -1, -1)
            for h in range(L.heads):
                for r in range(L.n_blocks):
                    want = sorted(slow[kind][h][r])
                    got = idx[h, r, :int(cnt[h, r])]
                    got = got if not by_key else got.sort().values  # forward lists are ordered
                    assert torch.equal(got, torch.tensor(want, dtype=torch.int32)), (kind, h, r)


def _table_lookup(aux, block, h, q, k):
    """The table mask_mod's arithmetic (kernels/fa4_masks.py) on CPU tensors q [n, 1], k [1, n]."""
    slots, head_pattern, words = aux
    slot = slots[head_pattern[h].long(), q // block, k // block].long()
    col = k % block
    word = words[slot, q % block, col // 32].long()
    return ((word >> (col % 32)) & 1) == 1


@pytest.mark.parametrize("make", SPARSE_LAYOUTS)
def test_table_mask_is_exact_on_masked_blocks(make, gen):
    L = make(gen)
    aux = fa4.table_mask_tensors(L, "cpu")
    b, n = L.block, L.n_ctx
    assert all(t.dtype == torch.int32 for t in aux)
    q, k = torch.arange(n).view(n, 1), torch.arange(n).view(1, n)
    for h in range(L.heads):
        got = _table_lookup(aux, b, h, q, k)
        want = L.layout_order_rows(h, 0, n)
        assert torch.equal(got, want), (L.name, h)  # also on FULL blocks: slot 1, all ones


def test_table_rows_and_packing():
    aux = fa4.table_mask_tensors(layouts.causal(256, block=64), "cpu")
    words = aux[2]
    masks = unpack_masks(words[:3], 64)
    assert not masks[0].any() and masks[1].all() and torch.equal(masks[2], masks[1].tril())


def test_prepared_mask_kind(gen):
    assert fa4.fa4_layout(layouts.causal(256, block=128), "cpu").mask == "band"
    full = layouts.from_block_mask(torch.ones(1, 2, 2, dtype=torch.bool), block=128, causal=False)
    assert fa4.fa4_layout(full, "cpu").mask is None
    assert fa4.fa4_layout(random_partial(gen), "cpu").mask == "table"


# --------------------------------------------------------------------------- supports
def test_supports_and_blocks(gen):
    odd = layouts.local(96, block=32, window=40, heads=1)
    assert fa4.supports(odd) is None  # a token window: FA4's own mask, any N
    odd_sparse = layouts.fixed(192, block=32, stride=64, heads=2, num_verts=2)
    for module in (fa4, flex_flash):
        assert "64 or 128" in module.supports(odd_sparse)
        assert module.supports(layouts.fixed(512, block=128, stride=128, heads=2)) is None
    merged = layouts.merged_strided(512, block=128, stride=64, heads=2)
    assert fa4.supports(merged) is None  # the table mask
    assert "table mask_mod" in flex_flash.supports(merged)
    assert "table mask_mod" in flex_flash.supports(random_partial(gen))


def test_sparse_layout_blocks():
    L = layouts.fixed(512, block=32, stride=128, heads=2)
    assert fa4.sparse_layout("fa4", L, {}, needs_grad=False).block == 128
    L64 = L.reblock(64)
    assert fa4.sparse_layout("fa4", L64, {}, needs_grad=False).block == 64
    assert fa4.sparse_layout("fa4", L64, {}, needs_grad=True).block == 128
    with pytest.raises(BackendUnavailable, match="cannot run block 32"):
        fa4.sparse_layout("fa4", L, {"block": 32}, needs_grad=False)
    with pytest.raises(BackendUnavailable, match="re-block"):
        fa4.sparse_layout("flex_flash", layouts.fixed(192, block=32, stride=64, heads=1), {},
                          needs_grad=False)


@pytest.mark.parametrize("mod", [fa4, flex_flash], ids=PEERS)
def test_config_space_and_unknown_keys(mod):
    name = mod.__name__.rsplit(".", 1)[1]
    assert mod.config_space(layouts.causal(256, block=128), 64, torch.bfloat16) == [{}]
    assert mod.config_space(layouts.causal(256, block=64), 64, torch.bfloat16) == [{}]
    assert mod.config_space(layouts.causal(256, block=32), 64, torch.bfloat16) == []
    q = torch.zeros(1, 1, 256, 64)
    with pytest.raises(ValueError, match=f"unknown to backend '{name}'"):
        mod.attention(q, q, q, layouts.causal(256, block=128), 0.125, {"BLOCK_M": 64})


# --------------------------------------------------------------------------- GPU
def _skip_unless(name, dtype=torch.bfloat16):
    why = backends.unavailable_reason(name, "cuda", dtype)
    if why is not None:
        pytest.skip(why)


GPU_LAYOUTS = {  # name -> (maker, the peers that must run it)
    "causal": (lambda gen: layouts.causal(512, block=128, heads=2), PEERS),
    "full": (lambda gen: layouts.from_block_mask(torch.ones(2, 4, 4, dtype=torch.bool),
                                                 block=128, causal=False), PEERS),
    "local": (lambda gen: layouts.local(512, block=128, window=100, heads=2), PEERS),
    "window": (lambda gen: layouts.from_predicate(512, lambda q, k: (q - k).abs() < 70,
                                                  block=64, heads=2), PEERS),
    "fixed": (lambda gen: layouts.fixed(1024, block=128, stride=256, heads=2, num_verts=2),
              PEERS),
    "st_mix": (lambda gen: layouts.st_mix(2048, block=128, stride=16, heads=2), PEERS),
    # re-blocked to 128 for the backward: partial blocks no band describes (the table mask)
    "fixed_b32": (lambda gen: layouts.fixed(512, block=32, stride=128, heads=2), ("fa4",)),
    "random": (lambda gen: random_partial(gen, n=512), ("fa4",)),  # empty rows too
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout_name", list(GPU_LAYOUTS))
@pytest.mark.parametrize("name", PEERS)
def test_peer_fwd_bwd_matches_dense(name, layout_name, dtype, gen):
    _skip_unless(name, dtype)
    make, runs = GPU_LAYOUTS[layout_name]
    L = make(gen)
    q, k, v = (torch.randn(2, L.heads, L.n_ctx, 64, generator=gen).to("cuda", dtype)
               .requires_grad_() for _ in range(3))
    if name not in runs:
        with pytest.raises(BackendUnavailable, match="table mask_mod"):
            stbench.attention(q, k, v, L, backend=name)
        return
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = stbench.attention(q, k, v, L, backend=name)
    ref64 = dense.attention(q64, k64, v64, L, 0.125)
    ref_t = dense.attention(q, k, v, L, 0.125)
    ok, err, tol = within(out, ref64, ref_t)
    assert ok, (err, tol)
    do = torch.randn(out.shape, generator=gen).to(out)
    g = torch.autograd.grad(out, (q, k, v), do)
    g64 = torch.autograd.grad(ref64, (q64, k64, v64), do.double())
    g_t = torch.autograd.grad(ref_t, (q, k, v), do)
    for which, a, b, c in zip("qkv", g, g64, g_t):
        ok, err, tol = within(a, b, c)
        assert ok, (which, err, tol)


@pytest.mark.gpu
@pytest.mark.parametrize("name", PEERS)
def test_peer_refuses_float32_and_wide_heads(name, gen):
    _skip_unless(name)
    assert "float16 and bfloat16" in backends.unavailable_reason(name, "cuda", torch.float32)
    L = layouts.fixed(512, block=128, stride=256, heads=1)  # block-sparse (stride 128: causal)
    assert fa4.dense_form(L) is None
    q = torch.randn(1, 1, 512, 192, generator=gen).to("cuda", torch.bfloat16)
    with pytest.raises(BackendUnavailable, match="head dim 192"):
        stbench.attention(q, q, q, L, backend=name)
