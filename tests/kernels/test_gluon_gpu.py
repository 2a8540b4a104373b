"""Gluon backend on an H200 (sm_90) against the dense reference (dense_check.py), fresh seeded
inputs per test. Marked ``gpu``: skipped without CUDA. Run on the GPU machine:
``python3 -m pytest -m gpu tests/kernels/test_gluon_gpu.py``."""

from __future__ import annotations

import pytest
import torch

from dense_check import check_against_dense
from stbench import layouts
from stbench.backends import BackendUnavailable
from stbench.layouts.cases import CASES

gluon_backend = pytest.importorskip("stbench.kernels.gluon.backend")
from stbench.kernels.gluon import config as gconfig  # noqa: E402

pytestmark = pytest.mark.gpu

N = 2048


def _case(name, n_ctx, heads, g):
    """A shared conformance case (stbench.layouts.cases) at block 128, seeded from ``g``."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
    return CASES[name].build(n_ctx=n_ctx, heads=heads, block=128, seed=seed)


LAYOUTS = {
    "causal": lambda h, g: layouts.causal(N, block=128, heads=h),
    "fixed": lambda h, g: layouts.fixed(N, block=128, stride=512, heads=h),
    "local": lambda h, g: layouts.local(N, block=128, window=256, heads=h),
    # partial blocks (MASKED tiles), an empty query-block row and key-block column
    "random_blocks": lambda h, g: _case("random_blocks", N, h, g),
    # an exact token mask, not causal: partial blocks everywhere, empty query rows
    "random_tokens": lambda h, g: _case("random_tokens", 1024, h, g),
    # a different pattern per head (FULL / CAUSAL / MASKED tiles in one launch)
    "mixed": lambda h, g: layouts.stack_heads(layouts.causal(N, block=128, heads=1),
                                              _case("random_blocks", N, 1, g)),
}
DTYPES = (torch.bfloat16, torch.float16)


def _run(layout, dtype, head_dim, gen, batch=2, config=None, grads=True):
    check_against_dense(gluon_backend.attention, layout, dtype, head_dim, gen, batch, config,
                        grads)


@pytest.mark.parametrize("dtype", [pytest.param(d, marks=pytest.mark.smoke)
                                   if d == torch.bfloat16 else d for d in DTYPES], ids=str)
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layouts_dtypes(name, dtype, gen):
    """The default config on every kind of tile list, forward and gradients."""
    heads = 1 if name == "mixed" else 2
    _run(LAYOUTS[name](heads, gen), dtype, 64, gen)


@pytest.mark.parametrize("cfg", [c.as_dict() for c in gconfig.forward_variants(64)[1:]],
                         ids=lambda c: "-".join(f"{k}{c[k]}" for k in ("stages", "pingpong",
                                                                          "p_smem")))
def test_forward_variants(cfg, gen):
    """Every forward schedule of the tuner's space, forward only, on causal and partial blocks
    with empty rows."""
    _run(LAYOUTS["causal"](2, gen), torch.bfloat16, 64, gen, config=cfg, grads=False)
    _run(LAYOUTS["random_blocks"](2, gen), torch.bfloat16, 64, gen, config=cfg, grads=False)


THREE = ({"rows": 192}, {"rows": 192, "pingpong": False, "p_smem": False},
         {"rows": 192, "stages": 3})


@pytest.mark.parametrize("cfg", THREE, ids=lambda c: "-".join(f"{k}{x}" for k, x in c.items()))
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_three_consumers(name, cfg, gen):
    """192-row CTAs over the union lists (union.py): every kind of entry on each side, NONE
    included, the last CTA's rows past N (16 blocks: 3 does not divide), forward and the LSE
    the backward reads."""
    heads = 1 if name == "mixed" else 2
    _run(LAYOUTS[name](heads, gen), torch.bfloat16, 64, gen, config=cfg)


@pytest.mark.parametrize("n_ctx", (1152, 896, 640), ids=lambda n: f"blocks{n // 128}")
def test_three_consumers_block_counts(n_ctx, gen):
    """A block count 3 divides, and two where the last CTA has one or two consumers past N
    (they load the head's last Q rows and store nothing); fp16, B = 3."""
    _run(layouts.causal(n_ctx, block=128, heads=2), torch.float16, 64, gen, batch=3,
         config={"rows": 192})


@pytest.mark.parametrize("variant", gconfig.BWD_VARIANTS,
                         ids=lambda v: "-".join(f"{k}{x}" for k, x in v.items()))
def test_backward_variants(variant, gen):
    """Every backward of the tuner's space, gradients against dense, on partial blocks with
    empty rows and on a different pattern per head."""
    _run(LAYOUTS["random_blocks"](2, gen), torch.bfloat16, 64, gen, config=variant)
    _run(LAYOUTS["mixed"](1, gen), torch.bfloat16, 64, gen, config=variant)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_gluon_backward_layouts(name, dtype, gen):
    """The warp-specialised backward (bwd_kernel='gluon') on every kind of tile list: FULL,
    CAUSAL and MASKED entries, empty query rows and key columns, a pattern per head."""
    heads = 1 if name == "mixed" else 2
    _run(LAYOUTS[name](heads, gen), dtype, 64, gen, config={"bwd_kernel": "gluon"})


def test_gluon_backward_long_rows(gen):
    """Long key columns (causal N = 8192, 64 steps for the first key tile) and B x H = 8 CTAs
    a key tile: the two-slot dS^T exchange and the Q / dO ring over many phases."""
    _run(layouts.causal(8192, block=128, heads=4), torch.bfloat16, 64, gen, batch=2,
         config={"bwd_kernel": "gluon"})


@pytest.mark.parametrize("cfg", ({}, {"p_smem": False, "stages": 3}), ids=str)
def test_head_dim_128(cfg, gen):
    _run(LAYOUTS["random_blocks"](2, gen), torch.bfloat16, 128, gen, config=cfg)
    _run(LAYOUTS["causal"](2, gen), torch.bfloat16, 128, gen, config=cfg, grads=False)


def test_standard_shape_causal(gen):
    """B x N = 65536 at N = 16384 (B = 4, H = 8): long rows of FULL tiles, forward only."""
    _run(layouts.causal(16384, block=128, heads=8), torch.bfloat16, 64, gen, batch=4,
         grads=False)


def test_refusals(gen):
    """What the kernel does not build is refused with the reason, never run wrongly."""
    with pytest.raises(BackendUnavailable, match="dtype"):
        gluon_backend.check_available(torch.device("cuda"), torch.float32)
    q = torch.randn(1, 2, 1024, 32, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="head_dim"):
        gluon_backend.attention(q, q, q, layouts.causal(1024, block=128, heads=2), 0.2)
    q128 = torch.randn(1, 2, 1024, 128, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="bwd_kernel='gluon'"):
        gluon_backend.attention(q128, q128, q128, layouts.causal(1024, block=128, heads=2), 0.1,
                                {"bwd_kernel": "gluon"})
    q = torch.randn(1, 2, 1024, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(BackendUnavailable, match="block 64"):
        gluon_backend.attention(q, q, q, layouts.causal(1024, block=64, heads=2), 0.2)


def test_warp_specialize_probe(capsys):
    """The racecheck control (probe.py): every partition of every CTA writes its own slice."""
    from stbench.kernels.gluon import probe

    probe.run()
    assert "every partition wrote its slice" in capsys.readouterr().out
