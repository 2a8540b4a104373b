"""Triton backend on the GPU at standard-like sizes, every dtype, against the dense reference
(float64 and same-dtype, the rule of stbench/accuracy.py). Marked ``gpu``: skipped without CUDA.
Run on the GPU machine: ``python3 -m pytest -m gpu tests/kernels/test_triton_gpu.py``."""

from __future__ import annotations

import pytest
import torch

from dense_check import check_against_dense
from stbench import accuracy, layouts
from stbench.reference import dense

triton_backend = pytest.importorskip("stbench.kernels.triton.backend")

pytestmark = pytest.mark.gpu

LAYOUTS = {
    "causal": lambda n, h: layouts.causal(n, block=128, heads=h),
    "local": lambda n, h: layouts.local(n, block=64, window=256, heads=h),
    "strided": lambda n, h: layouts.strided(n, block=64, stride=32, heads=h),
    "fixed16": lambda n, h: layouts.fixed(n, block=16, stride=128, heads=h, num_verts=2,
                                          vertsize=2),
    "union16": lambda n, h: layouts.merged_strided(n, block=16, stride=128, heads=h),
}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _run(layout, dtype, head_dim, gen, batch=2, config=None, grads=True):
    check_against_dense(triton_backend.attention, layout, dtype, head_dim, gen, batch, config,
                        grads)


# the smoke tier (-m smoke): every layout family in bf16
SMOKE_DTYPES = [pytest.param(d, marks=pytest.mark.smoke) if d == torch.bfloat16 else d
                for d in DTYPES]


@pytest.mark.parametrize("dtype", SMOKE_DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layouts_dtypes(name, dtype, gen):
    _run(LAYOUTS[name](2048, 2), dtype, 64, gen)


@pytest.mark.parametrize("head_dim", (32, 128))
def test_head_dims(head_dim, gen):
    _run(layouts.fixed(1024, block=32, stride=128, heads=2), torch.bfloat16, head_dim, gen)


TF32_TOL = 5e-3  # tf32 keeps 10 mantissa bits: ~1e-3 relative error on N(0,1) inputs, D=64


def test_tf32_config(gen):
    """allow_tf32 trades exactness for speed: checked against fp64 at tf32's own tolerance."""
    lay = layouts.causal(1024, block=64, heads=2)
    q, k, v = (torch.randn(1, 2, 1024, 64, generator=gen).cuda() for _ in range(3))
    ref = dense.attention(q.double(), k.double(), v.double(), lay, 0.125)
    out = triton_backend.attention(q, k, v, lay, 0.125, {"allow_tf32": True})
    assert accuracy.rel_err(out, ref) < TF32_TOL


def test_configs_in_space(gen):
    """A spread sample of the tuner's space (every 4th config: compiling all takes minutes)."""
    lay = layouts.fixed(1024, block=32, stride=128, heads=2)
    for cfg in triton_backend.config_space(lay, 64, torch.bfloat16)[::4]:
        _run(lay, torch.bfloat16, 64, gen, batch=1, config=cfg)


def test_compiled_model_inductor(gen):
    lay = layouts.local(1024, block=64, window=128, heads=4)
    proj = torch.nn.Linear(64, 192).cuda().to(torch.bfloat16)

    def model(x):
        q, k, v = proj(x).chunk(3, dim=-1)
        return triton_backend.attention(q, k, v, lay, 0.125).float().square().mean()

    x = torch.randn(2, 4, 1024, 64, generator=gen).cuda().to(torch.bfloat16)
    eager = model(x)
    eager.backward()
    g = proj.weight.grad.clone()
    proj.weight.grad = None
    loss = torch.compile(model, fullgraph=True)(x)
    loss.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(proj.weight.grad, g, rtol=2e-2, atol=2e-2)


PAPER = {
    "paper_fixed": lambda n: layouts.fixed(n, block=32, stride=128, heads=2, num_verts=1,
                                           vertsize=1),
    "paper_union": lambda n: layouts.merged_strided(n, block=16, stride=128, heads=2),
}
PAPER_CONFIGS = (
    pytest.param(None, marks=pytest.mark.smoke),
    {"num_stages": 1},
    {"BLOCK_M": 64, "BLOCK_N": 32},
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_stages": 3},
)


@pytest.mark.parametrize("cfg", PAPER_CONFIGS, ids=str)
@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_masks(name, cfg, gen):
    """The paper's exact masks at their fine blocks, under tiles that gather several blocks."""
    _run(PAPER[name](3072), torch.bfloat16, 64, gen, batch=1, config=cfg)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
def test_split_union(dtype, gen):
    """The merged strided head computed as local + strict strided parts merged by LSE."""
    lay = layouts.merged_strided(4096, block=16, stride=128, heads=2)
    _run(lay, dtype, 64, gen, batch=1, config={"split_union": True})


TMA_CONFIGS = [dict(fwd_loads=loads, BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
               for loads, bm, bn, w, s in triton_backend.TMA_CANDIDATES]


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize(
    "cfg", TMA_CONFIGS, ids=lambda c: "{BLOCK_M}x{BLOCK_N}-w{num_warps}s{num_stages}".format(**c))
def test_tma_forward(cfg, dtype, gen):
    """The tuner's TMA forwards (and the backward from their LSE) on causal and fixed, D = 64,
    against the dense reference."""
    _run(layouts.causal(2048, block=128, heads=2), dtype, 64, gen, config=cfg)
    _run(layouts.fixed(2048, block=128, stride=512, heads=2), dtype, 64, gen, config=cfg)


def test_tma_forward_head_dim_128(gen):
    cfg = dict(fwd_loads="tma", BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
    _run(layouts.causal(2048, block=64, heads=2), torch.bfloat16, 128, gen, config=cfg)




DKV_T_CONFIGS = {
    "dkv_t": dict(dkv_transposed=True, BWD_BLOCK_M=64, BWD_BLOCK_N=32, DKV_BLOCK_M=128),
    "dkv_t_32": dict(dkv_transposed=True, BWD_BLOCK_M=64, BWD_BLOCK_N=32),
    "dkv_t_64": dict(dkv_transposed=True, BWD_BLOCK_M=64, BWD_BLOCK_N=64, bwd_stages=3),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", sorted(DKV_T_CONFIGS))
def test_dkv_transposed(variant, dtype, gen):
    """The transposed dK/dV accumulation (dkv_transposed), compiled, on local at block 64
    (partial blocks: MASKED tiles, causal diagonals; 32-key tiles split its blocks), the
    paper's fixed mask (G > 1 gathers with pads under 32-key tiles at block 32) and strided
    heads (the permutation)."""
    cfg = DKV_T_CONFIGS[variant]
    _run(layouts.local(2048, block=64, window=256, heads=2), dtype, 64, gen, config=cfg)
    _run(PAPER["paper_fixed"](2048), dtype, 64, gen, batch=1, config=cfg)
    _run(layouts.strided(2048, block=64, stride=32, heads=2), dtype, 64, gen, config=cfg)


@pytest.mark.parametrize("dtype", ("bfloat16", "float16", "float32"))
@pytest.mark.parametrize("name", ("causal", "local", "strided", "fixed", "st_mix"))
def test_standard_problem_every_dtype(name, dtype):
    """The standard problem itself at N = 4096 (B = 16, H = 8, D = 64, the layout at
    its block 128, the backend's default config), forward and gradients on fresh inputs,
    judged as the sweep judges a row: sampled query rows of batch element 0 against the
    float64 dense reference, tolerance from the same-dtype reference's own error."""
    from stbench.sweep import SweepConfig
    from stbench.tuning import check

    prob = SweepConfig.preset("standard").problem(4096, name, dtype, "fwd+bwd")
    layout = prob.build_layout()
    scale = prob.head_dim ** -0.5
    q, k, v = (t.detach() for t in prob.inputs("cuda"))
    fresh = [torch.randn_like(t) for t in (q, k, v)]
    ref = check.Reference(*fresh, layout, scale, "fwd+bwd")
    verdict = ref.check_backend(
        lambda a, b, c: triton_backend.attention(a, b, c, layout, scale), inputs=fresh)
    assert verdict.ok, f"{name} {dtype}: {verdict.message()}"
