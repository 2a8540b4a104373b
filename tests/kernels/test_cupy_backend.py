"""The CuPy backend: availability messages, config space and validation (CPU), and forward and
gradients against the dense reference (GPU, marked ``gpu``): every layout generator x dtype x
head dim 32 / 64 / 128, tensor-core tiles and the scalar kernel. Tolerances: stbench.accuracy
(rel_err <= 2 x the reference's own error in the dtype + a per-dtype floor)."""

from __future__ import annotations

import os

import pytest
import torch

from stbench import backends
from stbench.backends import BackendUnavailable
from stbench.kernels.cupy import backend
from stbench.kernels.cupy.config import (
    WGMMA_BLOCK_M, WGMMA_CAPABILITY, config_space, resolve_config,
)
from stbench.kernels.cupy.kernel_args import launch_geometry, variants_for
from stbench.kernels.cupy.checks import CHECK_N_CTX, case_layout, check_case
from stbench.layouts import causal
from stbench.layouts.cases import CASES

HAS_CUDA = torch.cuda.is_available()


# ------------------------------------------------------------------ CPU: availability, configs
def test_unavailable_on_cpu_says_why():
    why = backends.unavailable_reason("cupy", "cpu", torch.float16)
    assert why is not None
    assert "cupy" in why.lower() or "cuda" in why.lower()


def test_float64_is_unsupported_with_the_fix():
    try:
        import cupy  # noqa: F401
    except ImportError:
        pytest.skip("cupy not installed: check_available stops at the import")
    with pytest.raises(BackendUnavailable, match="float64.*float16"):
        backend.check_available(torch.device("cuda"), torch.float64)


def test_cpu_device_is_refused_with_the_fix():
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="stbench\\[cupy\\]"):
            backend.check_available(torch.device("cpu"), torch.float16)
        return
    with pytest.raises(BackendUnavailable, match="CUDA GPUs only"):
        backend.check_available(torch.device("cpu"), torch.float16)


@pytest.mark.parametrize("block", [16, 32, 64, 128])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_config_space_fits_the_block(block, head_dim):
    lay = causal(4 * block, block=block, heads=1)
    space = config_space(lay, head_dim, torch.bfloat16)
    mma = [c for c in space if c["kernel"] == "mma"]
    assert mma and mma == space  # the scalar kernel is for what the tensor cores cannot run
    # the default first (where the tuner's local search starts), every config once
    assert mma[0] == resolve_config(None, block, head_dim, torch.bfloat16)
    assert len({tuple(sorted(c.items())) for c in mma}) == len(mma)
    for c in mma:
        assert c["BLOCK_M"] <= block and c["BLOCK_N"] <= block
        assert block % c["BLOCK_M"] == 0 and block % c["BLOCK_N"] == 0
        assert c == resolve_config(c, block, head_dim, torch.bfloat16)


def test_float32_and_odd_head_dims_use_the_scalar_kernel():
    lay = causal(256, block=64, heads=1)
    assert config_space(lay, 64, torch.float32) == [{"kernel": "scalar"}]
    assert config_space(lay, 40, torch.float16) == [{"kernel": "scalar"}]
    assert resolve_config(None, 64, 64, torch.float32) == {"kernel": "scalar"}
    assert resolve_config(None, 64, 64, torch.float16)["kernel"] == "mma"
    assert resolve_config(None, 64, 64, torch.float16, (7, 5)) == {"kernel": "scalar"}


@pytest.mark.parametrize(
    "config, match",
    [
        ({"kernel": "mma", "BLOCK_M": 128}, "BLOCK_M"),
        ({"kernel": "mma", "BLOCK_N": 24}, "BLOCK_N"),
        ({"kernel": "tma"}, "kernel"),
        ({"kernel": "mma", "num_warps": 4}, "unknown config keys"),
        ({"kernel": "scalar", "BLOCK_M": 16}, "do not apply"),
        ({"kernel": "mma", "BLOCK_M": 16, "WARP_M": 32}, "WARP_M"),
        ({"kernel": "mma", "WARP_M": 8}, "WARP_M"),
    ],
)
def test_bad_configs_name_the_key(config, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(config, 64, 64, torch.float16)


def test_warp_rows_32_only_where_registers_allow():
    lay = causal(256, block=64, heads=1)
    assert any(c.get("WARP_M") == 32 for c in config_space(lay, 64, torch.float16))
    assert all(c.get("WARP_M", 16) == 16 for c in config_space(lay, 128, torch.float16))
    with pytest.raises(ValueError, match="head dim"):
        resolve_config({"kernel": "mma", "WARP_M": 32}, 64, 128, torch.float16)


def test_mma_on_float32_is_refused_with_the_fix():
    with pytest.raises(BackendUnavailable, match="scalar"):
        resolve_config({"kernel": "mma"}, 64, 64, torch.float32)
    with pytest.raises(BackendUnavailable, match="head dim"):
        resolve_config(None, 64, 256, torch.float32)


def test_wgmma_config_is_validated_with_the_fix():
    """{"kernel": "wgmma"}: by config only; BLOCK_M 64 (default) or 128 (a warpgroup per 64
    rows), BLOCK_N fixed at 64, 16-bit inputs, head dim 64, compute capability 9.0 (sm_90a)."""
    h100 = WGMMA_CAPABILITY
    want = {"kernel": "wgmma", "BLOCK_M": 64, "BLOCK_N": 64}
    want128 = {**want, "BLOCK_M": 128}
    for block in (64, 128):
        assert resolve_config({"kernel": "wgmma"}, block, 64, torch.bfloat16, h100) == want
        assert resolve_config(want, block, 64, torch.float16, h100) == want
    assert resolve_config({"kernel": "wgmma", "BLOCK_M": 128}, 128, 64, torch.float16,
                                  h100) == want128
    fwd, bwd = variants_for(want, torch.bfloat16, 64, 128, True, False)
    assert (fwd.family, fwd.arch, bwd.family, bwd.arch) == ("fwd_wgmma", "sm_90a", "bwd_mma", None)
    assert "--gpu-architecture=sm_90a" in fwd.options()
    assert launch_geometry(want, 512, 6) == ((8, 6, 1), (128, 1, 1), (128, 1, 1))
    # two warpgroups forward; the mma.sync backward's warp per 16 rows
    assert launch_geometry(want128, 512, 6) == ((4, 6, 1), (256, 1, 1), (256, 1, 1))
    # by config only (slower than the best mma.sync tiles on the H200: config_space's docstring)
    for block in (64, 128):
        lay = causal(512, block=block, heads=1)
        assert all(c["kernel"] != "wgmma" for c in config_space(lay, 64, torch.float16))
    with pytest.raises(ValueError, match="BLOCK_N"):
        resolve_config({"kernel": "wgmma", "BLOCK_N": 128}, 128, 64, torch.float16, h100)
    with pytest.raises(ValueError, match="BLOCK_M"):
        resolve_config({"kernel": "wgmma", "BLOCK_M": 32}, 128, 64, torch.float16, h100)
    with pytest.raises(ValueError, match="WARP_M"):
        resolve_config({"kernel": "wgmma", "WARP_M": 16}, 64, 64, torch.float16, h100)
    with pytest.raises(ValueError, match="layout block"):
        resolve_config({"kernel": "wgmma"}, 32, 64, torch.float16, h100)
    with pytest.raises(ValueError, match="layout block"):
        resolve_config({"kernel": "wgmma", "BLOCK_M": 128}, 64, 64, torch.float16, h100)
    for dtype, d, cap, match in ((torch.float32, 64, h100, "float16"),
                                 (torch.float16, 128, h100, "head dim 64"),
                                 (torch.float16, 64, (8, 0), "compute capability 9.0"),
                                 (torch.float16, 64, (10, 0), "compute capability 9.0")):
        with pytest.raises(BackendUnavailable, match=match):
            resolve_config({"kernel": "wgmma"}, 64, d, dtype, cap)


@pytest.mark.parametrize("block", [None, 16, 32, 64, 128])
def test_every_case_builds_at_the_check_sizes(block):
    """The GPU checks build every shared case at n_ctx 512, 2 heads, at its own block and at
    each block the tile and wgmma checks ask for."""
    for name in CASES:
        lay = case_layout(name, block)
        assert lay.n_ctx == CHECK_N_CTX and lay.heads == 2, name
        assert lay.block == (block or CASES[name].block), name


# ------------------------------------------------------------------ GPU: against the reference
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
HEAD_DIMS = [32, 64, 128]
# (case, block): every tile config on block 128, partial blocks, the permutation
TILE_LAYOUTS = [("causal", 128), ("merged_strided", 16), ("st_mix", 32), ("random_tokens", 32)]


def compile_workers() -> int:
    """Processes for the precompile: the host's cores shared among pytest-xdist's workers, at
    most 8. Each process holds a CUDA context: all cores in each of 8 xdist workers (8 x 32
    contexts) ran the H200 out of memory."""
    share = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    return max(1, min(8, (os.cpu_count() or 1) // share))


def _selected_params(request, test_name: str) -> list[dict]:
    """The parameters of this module's selected items of ``test_name`` (so that ``-m smoke``
    or ``-k`` compiles only what the chosen tests run)."""
    return [item.callspec.params for item in request.session.items
            if item.module is request.module and item.originalname == test_name]


@pytest.fixture(scope="module")
def compiled(request):
    """Compile every variant the selected GPU tests use in parallel processes first (NVRTC
    takes 1-3 s a variant; CuPy's disk cache then serves the tests)."""
    from stbench.kernels.cupy.checks import case_variants
    from stbench.kernels.cupy.compile import precompile

    cap = torch.cuda.get_device_capability()
    variants = []
    for p in _selected_params(request, "test_default_config_matches_reference"):
        variants += case_variants(p["layout_name"], p["dtype"], p["head_dim"], None, cap)
    for p in _selected_params(request, "test_every_tile_config_matches_reference"):
        lay = case_layout(p["layout_name"], p["block"])
        for cfg in config_space(lay, p["head_dim"], p["dtype"]) + [{"kernel": "scalar"}]:
            variants += case_variants(lay, p["dtype"], p["head_dim"], cfg, cap)
    errors = {k: v for k, v in precompile(variants, workers=compile_workers()).items() if v}
    assert not errors, errors


def _assert_ok(res):
    assert res.status == "ok", res


@pytest.mark.gpu
@pytest.mark.parametrize("layout_name", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_default_config_matches_reference(layout_name, dtype, head_dim, compiled):
    _assert_ok(check_case(layout_name, dtype, head_dim, None))


@pytest.mark.gpu
@pytest.mark.parametrize("layout_name, block", TILE_LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_every_tile_config_matches_reference(layout_name, block, dtype, head_dim, compiled):
    lay = case_layout(layout_name, block)
    for cfg in config_space(lay, head_dim, dtype) + [{"kernel": "scalar"}]:
        _assert_ok(check_case(layout_name, dtype, head_dim, cfg, block=block))


# (case, block): the wgmma forward needs a layout block of at least 64
WGMMA_LAYOUTS = [("causal", 64), ("causal", 128), ("block_mask", 64), ("random_tokens", 64),
                 ("st_mix", 64)]


@pytest.mark.gpu
@pytest.mark.parametrize("layout_name, block", WGMMA_LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_wgmma_forward_matches_reference(layout_name, block, dtype):
    """The wgmma forward (sm_90a, compute capability 9.0 only) at BLOCK_M 64 and, where the
    layout block allows, 128 (two warpgroups), and the mma.sync backward on its lse, against
    dense."""
    if torch.cuda.get_device_capability() != WGMMA_CAPABILITY:
        pytest.skip("the wgmma kernel runs on compute capability 9.0 only")
    for m in WGMMA_BLOCK_M:
        if block % m == 0:
            _assert_ok(check_case(layout_name, dtype, 64, {"kernel": "wgmma", "BLOCK_M": m},
                                  block=block))


@pytest.mark.gpu
@pytest.mark.smoke
def test_runs_on_the_current_stream_and_through_the_api():
    import stbench

    lay = causal(256, block=64, heads=2)
    q, k, v = (torch.randn(1, 2, 256, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        out = stbench.attention(q, k, v, lay, backend="cupy")
    s.synchronize()
    ref = stbench.attention(q, k, v, lay, backend="dense")
    assert (out.float() - ref.float()).abs().max() < 5e-2


def test_compile_workers_share_the_host_among_xdist_workers(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "8")
    assert compile_workers() == 4
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    assert compile_workers() == 8


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_wgmma_probe_confirms_the_reading(dtype):
    """The wgmma probe (probes/st_wgmma_probe.cu) on the hardware: every case that follows this
    project's reading of the PTX ISA matches torch, and no case with swapped strides does."""
    if torch.cuda.get_device_capability() != WGMMA_CAPABILITY:
        pytest.skip("wgmma needs compute capability 9.0 (sm_90a)")
    import cupy
    import numpy as np
    from cupy.cuda import compiler

    from stbench.kernels.cupy import wgmma_probe as wp

    prog = compiler._NVRTCProgram(wp.source(), "st_wgmma_probe.cu", method="cubin")
    module = cupy.cuda.function.Module()
    module.load(prog.compile(wp.nvrtc_options(dtype))[0])
    a, b, c = wp.inputs(dtype, seed=1)
    bits = [cupy.asarray(x.view(torch.int16).numpy()) for x in (a, b, c)]
    rows = []
    for case in wp.CASES:
        d = cupy.full((wp.TILE, wp.TILE), float("nan"), dtype=cupy.float32)  # poisoned
        d2 = cupy.full_like(d, float("nan"))
        module.get_function(case.kernel)(
            (1, 1, 1), (wp.THREADS, 1, 1), (*bits, d, d2, *(np.int32(x) for x in case.args())))
        cupy.cuda.Device().synchronize()
        rows.append(wp.judge(case, a, b, c, torch.from_numpy(cupy.asnumpy(d)),
                             torch.from_numpy(cupy.asnumpy(d2))))
    assert wp.verdict(rows) == "reading confirmed", rows
