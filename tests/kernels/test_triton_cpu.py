"""Triton backend under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without a
GPU), beyond the conformance test's default configs (test_conformance.py: every shared case
in every dtype): tiles smaller and larger than the layout block, asymmetric and transposed
backward tiles, the permutation under them, empty rows, the TMA forward, the exact split of the
merged strided head; forward and gradients against the dense float64 reference with the
accuracy rule of stbench/accuracy.py.

Shapes stay tiny (N <= 256, D = 32): the interpreter costs ~7 ms per 64 x 64 block product.
On a GPU the same tests run compiled."""

from __future__ import annotations

import pytest
import torch

from stbench import accuracy, layouts
from stbench.layouts import Layout
from stbench.layouts.cases import CASES
from stbench.reference.dense import dense_attention_reference

triton_backend = pytest.importorskip("stbench.kernels.triton.backend")

SMALL = dict(BLOCK_M=32, BLOCK_N=32, BWD_BLOCK_M=32, BWD_BLOCK_N=32)


def _check(layout: Layout, gen, device, config=None, batch=1, head_dim=32, dtype=torch.float32,
           grads=True):
    """Forward (and gradients) of the triton backend against the dense reference."""
    shape = (batch, layout.heads, layout.n_ctx, head_dim)
    q, k, v, do = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(4))
    scale = head_dim**-0.5
    leaves64 = [t.clone().requires_grad_() for t in (q, k, v)]
    ref64 = dense_attention_reference(*leaves64, layout, scale)
    leaves_t = [t.to(dtype).clone().requires_grad_() for t in (q, k, v)]
    ref_t = dense_attention_reference(*leaves_t, layout, scale)
    ins = [t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v)]
    out = triton_backend.attention(*ins, layout, scale, config)
    ok, err, tol = accuracy.within(out.cpu(), ref64, ref_t, dtype)
    assert ok, f"forward rel_err {err:.3g} > tol {tol:.3g} ({layout!r}, {config})"
    if not grads:
        return out
    ref64.backward(do)
    ref_t.backward(do.to(dtype))
    out.backward(do.to(device=device, dtype=dtype))
    for name, a, r64, rt in zip("qkv", ins, leaves64, leaves_t):
        ok, err, tol = accuracy.within(a.grad.cpu(), r64.grad, rt.grad, dtype)
        assert ok, f"d{name} rel_err {err:.3g} > tol {tol:.3g} ({layout!r}, {config})"
    return out


@pytest.mark.parametrize(
    "config",
    [
        dict(BLOCK_M=64, BLOCK_N=16, BWD_BLOCK_M=16, BWD_BLOCK_N=64),  # tiles < block, > block
        dict(BLOCK_M=16, BLOCK_N=64, BWD_BLOCK_M=64, BWD_BLOCK_N=32),  # gathered keys, pads
        dict(BWD_BLOCK_M=64, BWD_BLOCK_N=64, DQ_BLOCK_N=16, DKV_BLOCK_M=32),  # asymmetric bwd
        dict(BWD_BLOCK_M=64, BWD_BLOCK_N=32, DKV_BLOCK_M=128),  # dK/dV: 32 keys x 128 queries
        # dK/dV held as [D, keys] (scores as queries x keys), under 128- and 16-query tiles
        dict(BWD_BLOCK_M=64, BWD_BLOCK_N=32, DKV_BLOCK_M=128, dkv_transposed=True),
        dict(BWD_BLOCK_M=16, BWD_BLOCK_N=32, dkv_transposed=True),
        # dQ by atomic adds from the dK/dV kernel, in both dK/dV orientations
        dict(BWD_BLOCK_M=64, BWD_BLOCK_N=32, DKV_BLOCK_M=128, dq_atomic=True),
        dict(BWD_BLOCK_M=16, BWD_BLOCK_N=32, dkv_transposed=True, dq_atomic=True),
    ],
    ids=["tall", "wide", "asym_bwd", "dkv_tall", "dkv_transposed", "dkv_transposed_16",
         "dq_atomic", "dq_atomic_transposed"],
)
def test_tiles_decoupled_from_block(config, gen, device):
    """Block 32 partial / empty blocks under tiles both finer and coarser than the block."""
    layout = CASES["random_blocks"].build(128, 2, 32, seed=1)
    _check(layout, gen, device, config)


def test_random_token_mask_empty_rows(gen, device):
    """Block 16 exact masks with whole empty query rows and key columns: zeros, no NaN."""
    layout = CASES["random_tokens"].build(96, 2, 16, seed=2)
    out = _check(layout, gen, device, dict(BLOCK_M=32, BLOCK_N=32, BWD_BLOCK_M=16,
                                           BWD_BLOCK_N=32), batch=2)
    empty = ~layout.token_mask().any(-1)  # [H, N]
    assert empty.any(), "the case must contain empty rows"
    assert torch.equal(out.detach().cpu()[:, empty], torch.zeros_like(out.detach().cpu()[:, empty]))


@pytest.mark.parametrize(
    "config", [None, dict(dkv_transposed=True, BWD_BLOCK_N=16), dict(dq_atomic=True)],
    ids=["default", "dkv_transposed", "dq_atomic"],
)
def test_mixed_permuted_and_plain_heads(config, gen, device):
    """st_mix: head 0 local (identity), head 1 strided (permuted)."""
    layout = CASES["st_mix"].build(128, 2, 16)
    _check(layout, gen, device, config, head_dim=64)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
def test_half_dtypes(dtype, gen, device):
    """16-bit inputs (under the interpreter bf16 dots go through interpret.py's shim)."""
    _check(layouts.fixed(128, block=16, stride=64, heads=2), gen, device, SMALL, dtype=dtype)


def test_deterministic(gen, device):
    layout = layouts.fixed(128, block=16, stride=32, heads=1, num_verts=1, vertsize=1)
    q, k, v = (torch.randn(1, 1, 128, 32, generator=gen).to(device).requires_grad_()
               for _ in range(3))
    runs = []
    for _ in range(2):
        out = triton_backend.attention(q, k, v, layout, 0.2, SMALL)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        runs.append((out.detach(), *grads))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_bad_head_dim_names_it(device):
    layout = layouts.causal(64, block=32, heads=1)
    x = torch.zeros(1, 1, 64, 48, device=device)
    with pytest.raises(ValueError, match="head_dim=48"):
        triton_backend.attention(x, x, x, layout, 0.1)


def test_cpu_without_interpreter_says_how(monkeypatch):
    from stbench.backends import BackendUnavailable

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        triton_backend.check_available(torch.device("cpu"), torch.float32)
    with pytest.raises(BackendUnavailable, match="dtype"):
        triton_backend.check_available(torch.device("cpu"), torch.float64)


def test_unknown_config_key(device):
    layout = layouts.causal(64, block=32, heads=1)
    x = torch.zeros(1, 1, 64, 32, device=device)
    with pytest.raises(ValueError, match="BLOCK_Q"):
        triton_backend.attention(x, x, x, layout, 0.1, {"BLOCK_Q": 64})


def test_dkv_transposed_default_follows_the_key_tile():
    """dkv_transposed=None: transposed for 16-bit inputs under key tiles narrower than 64
    (wgmma needs 64 rows), not for fp32 or wider tiles; an explicit value wins."""
    cfg = triton_backend.KernelConfig(BWD_BLOCK_M=64, BWD_BLOCK_N=32)
    assert cfg.dkv_transposed_for(torch.bfloat16) and cfg.dkv_transposed_for(torch.float16)
    assert not cfg.dkv_transposed_for(torch.float32)
    assert not triton_backend.KernelConfig(BWD_BLOCK_N=64).dkv_transposed_for(torch.bfloat16)
    explicit = triton_backend.KernelConfig(BWD_BLOCK_N=32, dkv_transposed=False)
    assert not explicit.dkv_transposed_for(torch.bfloat16)


def test_config_space_is_valid():
    layout = layouts.causal(256, block=64, heads=1)
    space = triton_backend.config_space(layout, 64, torch.bfloat16)
    assert space and space[0] == triton_backend.default_config(layout, 64, torch.bfloat16).as_dict()
    for cfg in space:
        assert 256 % cfg["BLOCK_M"] == 0 and 256 % cfg["BWD_BLOCK_N"] == 0


def test_compiled_model_calls_op(gen, device):
    """torch.compile over a small model that calls the custom op (aot_eager on the CPU: the op
    is opaque to the compiler; the GPU test compiles with inductor)."""
    layout = layouts.local(64, block=16, window=32, heads=2)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(32, 3 * 32)

        def forward(self, x):  # x: (B, H, N, D)
            q, k, v = self.proj(x).chunk(3, dim=-1)
            return triton_backend.attention(q, k, v, layout, 32**-0.5, SMALL).sum()

    torch.manual_seed(0)
    model = Tiny().to(device)
    x = torch.randn(1, 2, 64, 32, generator=gen).to(device)
    eager = model(x)
    eager.backward()
    g_eager = model.proj.weight.grad.clone()
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager" if device.type == "cpu" else "inductor",
                             fullgraph=True)
    loss = compiled(x)
    loss.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.proj.weight.grad, g_eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_ctx, block, stride", [(512, 16, 32), (768, 32, 48)])
def test_split_union_exact(n_ctx, block, stride, gen, device):
    """merged_strided split into local + strict strided parts merged by LSE (compose.py):
    forward and gradients equal the dense reference on the unsplit layout."""
    from stbench.kernels.triton.compose import split_merged_strided

    layout = layouts.merged_strided(n_ctx, block=block, stride=stride, heads=2)
    local, stride_part = split_merged_strided(layout)
    tm_a, tm_b = local.token_mask(), stride_part.token_mask()
    assert torch.equal(tm_a | tm_b, layout.token_mask()) and not (tm_a & tm_b).any()
    _check(layout, gen, device, dict(SMALL, split_union=True))
    _check(layout, gen, device, dict(SMALL, split_union=True, dq_atomic=True))  # parts add dQ
    space = triton_backend.config_space(layout, 32, torch.float32)
    assert space[0]["split_union"] and not space[1]["split_union"]


# the forward's TMA loads (kernels/triton/forward.py, fwd_loads="tma"): layouts whose key tiles
# are consecutive rows (no permutation, BLOCK_N within one layout block)
TMA_CASES = {
    "causal 32x32 tiles, block 32": (lambda: layouts.causal(128, block=32, heads=2),
                                     dict(SMALL, BLOCK_M=32, BLOCK_N=32)),
    "causal 64x32 tiles, block 64": (lambda: layouts.causal(128, block=64, heads=2),
                                     dict(SMALL, BLOCK_M=64, BLOCK_N=32)),
    "fixed 32x16, block 16": (lambda: layouts.fixed(128, block=16, stride=64, heads=2,
                                                     num_verts=2, vertsize=1),
                              dict(SMALL, BLOCK_M=32, BLOCK_N=16)),
    "partial blocks, empty rows": (lambda: CASES["random_blocks"].build(128, 2, 32, seed=3),
                                   dict(SMALL, BLOCK_M=32, BLOCK_N=32)),
}


@pytest.mark.parametrize("case", sorted(TMA_CASES))
def test_tma_forward(case, gen, device):
    make, config = TMA_CASES[case]
    _check(make(), gen, device, dict(config, fwd_loads="tma"), dtype=torch.bfloat16)


def test_tma_default_and_fallback():
    """The default takes TMA on dense-ish 16-bit layouts; a tile override that breaks its
    condition falls back to the gather unless fwd_loads is named."""
    lay = layouts.causal(1024, block=128, heads=1)
    assert triton_backend.default_config(lay, 64, torch.bfloat16).fwd_loads == "tma"
    assert triton_backend.default_config(lay, 64, torch.float32).fwd_loads == "gather"
    assert triton_backend.resolve_config(lay, 64, torch.bfloat16, {"BLOCK_N": 128, "BLOCK_M": 64}
                                         ).fwd_loads == "gather"
    strided = layouts.strided(1024, block=16, stride=16, heads=1)
    assert triton_backend.default_config(strided, 64, torch.bfloat16).fwd_loads == "gather"
    space = triton_backend.config_space(lay, 64, torch.bfloat16)
    assert {c["fwd_loads"] for c in space} == {"gather", "tma"}


@pytest.mark.parametrize("layout, config, match", [
    (lambda: layouts.strided(256, block=16, stride=16, heads=1), dict(SMALL, BLOCK_N=16),
     "permutes tokens"),
    (lambda: layouts.causal(256, block=16, heads=1), SMALL, "BLOCK_N=32 gathers blocks of 16"),
])
def test_tma_refuses_gathered_tiles(layout, config, match, device):
    x = torch.zeros(1, 1, 256, 32, device=device, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=match):
        triton_backend.attention(x, x, x, layout(), 0.1, dict(config, fwd_loads="tma"))
    with pytest.raises(ValueError, match="fwd_loads='dma' is not"):
        triton_backend.attention(x, x, x, layout(), 0.1, dict(config, fwd_loads="dma"))


def test_a_layout_with_no_blocks_gives_zeros(gen, device):
    """Nothing allowed anywhere: output and gradients exactly 0 (the contract), no tile list
    to walk."""
    layout = CASES["nothing"].build(64, 2, 16)
    q = torch.randn(1, 2, 64, 32, generator=gen).to(device).requires_grad_()
    out = triton_backend.attention(q, q, q, layout, 0.2, SMALL)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(q.grad, torch.zeros_like(q))


def test_non_positive_scale_names_it(device):
    """The forward takes each row's max before scaling, which needs scale > 0
    (stbench.attention refuses other scales; the backend says so too)."""
    layout = layouts.causal(64, block=32, heads=1)
    x = torch.zeros(1, 1, 64, 32, device=device)
    with pytest.raises(ValueError, match="scale=-0.1 must be positive"):
        triton_backend.attention(x, x, x, layout, -0.1, SMALL)
