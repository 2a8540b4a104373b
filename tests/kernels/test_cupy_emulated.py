"""The CuPy backend's CUDA kernels, run on the CPU through the emulation (kernels/cupy/emulate.py:
the same source, inline PTX swapped for C++, one fiber per CUDA thread), against the dense
reference with stbench.accuracy's rule, forward and dq / dk / dv. Covers both kernel families
(tensor-core mma, scalar), both 16-bit dtypes and float32, blocks 16..128, the permutation,
partial bitmasks, empty rows, 1..8 warps per CTA, 16 and 32 query rows per warp, BLOCK_N = 128
(the one-stage forward) over FULL / DIAG / PARTIAL steps in one row; and the wgmma forward
(sm_90a, st_fwd_wgmma.cu) on the emulator's reading of wgmma, with the mma.sync backward on its
lse. Each case builds two small shared libraries with g++ (cached on disk) and runs in a few
seconds; skipped without a C++ compiler."""

from __future__ import annotations

import math

import pytest
import torch

from stbench import accuracy, layouts
from stbench.kernels.cupy import emulate
from stbench.kernels.cupy.checks import reference
from stbench.layouts.cases import CASES

why = emulate.available()
pytestmark = pytest.mark.skipif(why is not None, reason=str(why))

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
MMA = "mma"


def _mixed_kinds(n: int, heads: int, block: int) -> layouts.Layout:
    """Causal token mask, n = 4 blocks (512 at block 128): block row 3 holds FULL (3, 0),
    PARTIAL (3, 1) (key block + 7 dropped from its rows), FULL (3, 2) and DIAG (3, 3) entries,
    so one walk switches between the unmasked and masked step bodies; query 2 block + 44 block /
    128 (300 at block 128) attends to nothing (block row 2 all PARTIAL, an empty row beside
    full ones)."""
    mask = torch.ones(heads, n, n, dtype=torch.bool).tril()
    mask[:, 3 * block:, block + 7] = False
    mask[:, 2 * block + 44 * block // 128] = False
    return layouts.from_token_mask(mask, block=block, name=f"mixed_kinds_b{block}")


def _layout(name: str, n: int, block: int) -> layouts.Layout:
    """A shared case (stbench.layouts.cases), or "mixed_kinds": the kernel-specific layout
    above, with 2 heads."""
    if name == "mixed_kinds":
        return _mixed_kinds(n, 2, block)
    return CASES[name].build(n, 2, block)


# (layout case, layout block, n_ctx, dtype, head_dim, config)
CASES_RUN = [
    ("causal", 64, 128, F16, 32, {"kernel": MMA, "BLOCK_M": 16, "BLOCK_N": 16}),
    ("causal", 128, 256, BF16, 64, {"kernel": MMA, "BLOCK_M": 128, "BLOCK_N": 32}),
    ("merged_strided", 16, 128, BF16, 32, {"kernel": MMA, "BLOCK_M": 16, "BLOCK_N": 16}),
    ("st_mix", 32, 512, F16, 16, {"kernel": MMA, "BLOCK_M": 32, "BLOCK_N": 16}),
    ("random_tokens", 32, 128, F16, 32, {"kernel": MMA, "BLOCK_M": 32, "BLOCK_N": 32}),
    ("fixed", 32, 256, F16, 128, {"kernel": MMA, "BLOCK_M": 32, "BLOCK_N": 32}),
    ("causal", 128, 256, F16, 64, {"kernel": MMA, "BLOCK_M": 128, "BLOCK_N": 64, "WARP_M": 32}),
    ("st_mix", 32, 512, BF16, 32, {"kernel": MMA, "BLOCK_M": 32, "BLOCK_N": 16, "WARP_M": 32}),
    ("block_mask", 64, 256, BF16, 64, {"kernel": MMA, "BLOCK_M": 64, "BLOCK_N": 64}),
    # BLOCK_N = 128 (one K / V stage in the forward, the backward clamped to 64 rows) over
    # FULL, DIAG and PARTIAL steps in one row and an empty row; DIAG chunks wholly below a
    # warp's rows (unmasked) at BLOCK_M = 32 in block 128
    ("mixed_kinds", 128, 512, BF16, 64, {"kernel": MMA, "BLOCK_M": 64, "BLOCK_N": 128}),
    ("causal", 128, 256, F16, 32, {"kernel": MMA, "BLOCK_M": 128, "BLOCK_N": 128}),
    ("mixed_kinds", 128, 512, F16, 64,
     {"kernel": MMA, "BLOCK_M": 32, "BLOCK_N": 32, "WARP_M": 32}),
    ("strided", 16, 256, F32, 40, {"kernel": "scalar"}),
    ("random_tokens", 32, 128, BF16, 32, {"kernel": "scalar"}),
]


def _ids(case):
    name, block, n, dtype, d, cfg = case
    tiles = "" if cfg["kernel"] == "scalar" else f"-m{cfg['BLOCK_M']}n{cfg['BLOCK_N']}"
    tiles += f"w{cfg['WARP_M']}" if "WARP_M" in cfg else ""
    return (f"{name}_b{block}-N{n}-{str(dtype).removeprefix('torch.')}-d{d}-{cfg['kernel']}"
            f"{tiles}")


@pytest.mark.parametrize("case", CASES_RUN, ids=[_ids(c) for c in CASES_RUN])
def test_emulated_kernels_match_reference(case, gen):
    _check_against_dense(*case, gen)


def _check_against_dense(name, block, n, dtype, d, cfg, gen, batch=1):
    """Forward (out, and empty rows exactly 0) and dq / dk / dv of the emulated kernels against
    the dense reference, 2 heads."""
    lay = _layout(name, n, block)
    shape = (batch, 2, n, d)
    q64, k64, v64, do64 = (torch.randn(shape, generator=gen, dtype=torch.float64)
                           for _ in range(4))
    scale = 1.0 / math.sqrt(d)
    out, lse, grads = emulate.run(*(t.to(dtype) for t in (q64, k64, v64)), lay, scale, cfg,
                                  dout=do64.to(dtype))

    def ref(dt):
        q, k, v = (t.detach().to(dt).clone().requires_grad_() for t in (q64, k64, v64))
        o = reference(q, k, v, lay, scale)
        o.backward(do64.to(dt))
        return o.detach(), (q.grad, k.grad, v.grad)

    ref64, g64 = ref(torch.float64)
    ref_t, g_t = ref(dtype)
    for label, x, x64, xt in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref64, *g64),
                                 (ref_t, *g_t)):
        ok, err, tol = accuracy.within(x, x64, xt, dtype)
        assert ok, f"{label}: rel_err {err:.3g} > tolerance {tol:.3g}"
    empty = ~lay.token_mask().any(-1)  # [H, N]: rows with no allowed key
    if empty.any():
        assert (out[:, empty] == 0).all() and torch.isfinite(out).all()
        assert (lse[:, empty] == -math.inf).all()
    assert torch.isfinite(lse[:, ~empty]).all()


# (layout case, layout block, n_ctx, dtype, head_dim, batch): the wgmma forward (64 x 64
# tiles, head dim 64)
WGMMA = {"kernel": "wgmma"}
WGMMA_CASES = [
    ("causal", 64, 128, BF16, 64, 1),
    # FULL, PARTIAL, FULL, DIAG steps in one row (masked and unmasked bodies); an empty row
    ("mixed_kinds", 64, 256, F16, 64, 1),
    # rows gathered and scattered through the permutation
    ("strided", 64, 256, BF16, 64, 1),
    # two query tiles per layout block (DIAG chunk skipping at qin0 = 64), batch 2
    ("causal", 128, 256, F16, 64, 2),
]
WGMMA_128 = {"kernel": "wgmma", "BLOCK_M": 128}  # two warpgroups sharing each K / V tile
WGMMA_128_CASES = [
    ("causal", 128, 256, BF16, 64, 1),
    ("mixed_kinds", 128, 512, F16, 64, 1),
]


@pytest.mark.parametrize("case", WGMMA_CASES,
                         ids=[f"{c[0]}_b{c[1]}-N{c[2]}-{str(c[3]).removeprefix('torch.')}-B{c[5]}"
                              for c in WGMMA_CASES])
def test_emulated_wgmma_forward_matches_reference(case, gen):
    """st_fwd_wgmma (SS wgmma for S = Q K^T, RS wgmma for O += P V, the online softmax on the
    accumulator fragment) and the mma.sync backward on its lse, against dense. Shows the kernel
    consistent with the emulator's reading of wgmma (st_wgmma_emu.cuh), not that reading
    against the hardware: the GPU probe test, then the GPU check (NOTES.md)."""
    name, block, n, dtype, d, batch = case
    _check_against_dense(name, block, n, dtype, d, WGMMA, gen, batch=batch)


@pytest.mark.parametrize("case", WGMMA_128_CASES,
                         ids=[f"{c[0]}_b{c[1]}-N{c[2]}-{str(c[3]).removeprefix('torch.')}"
                              for c in WGMMA_128_CASES])
def test_emulated_wgmma_forward_two_warpgroups(case, gen):
    """BLOCK_M = 128: warpgroup 1 reads Q rows 64..127 (8 row groups into the Q tile), both
    share K / V; causal (its first warpgroup's rows fully masked in the second key chunk) and
    FULL / PARTIAL / DIAG steps with an empty row."""
    name, block, n, dtype, d, batch = case
    _check_against_dense(name, block, n, dtype, d, WGMMA_128, gen, batch=batch)


def test_check_case_judges_the_emulated_kernels():
    """checks.check_case (what the GPU tests run) on the CPU emulation:
    a right kernel is 'ok', a wrong one 'incorrect', a failing one a row, not a raise."""
    from stbench.kernels.cupy.checks import check_case

    cfg = {"kernel": MMA, "BLOCK_M": 16, "BLOCK_N": 16}
    kw = dict(n_ctx=128, heads=2, batch=1, device="cpu")
    ok = check_case("merged_strided", F16, 32, cfg, runner=emulate.attention, **kw)
    assert ok.status == "ok" and ok.out_err < ok.out_tol and ok.grad_err < ok.grad_tol, ok

    def wrong(q, k, v, layout, scale, config):
        return emulate.attention(q, k, v, layout, scale * 1.5, config)

    bad = check_case("merged_strided", F16, 32, cfg, runner=wrong, **kw)
    assert bad.status == "incorrect", bad

    def broken(*args):
        raise RuntimeError("launch failed")

    row = check_case("merged_strided", F16, 32, cfg, runner=broken, **kw)
    assert row.status == "runtime_error" and "launch failed" in row.error


# ------------------------------------------------------------------ the backend's own launch path
class _EmuKernel:
    """Stands for a cupy.RawKernel (``.kernel``, its cupy Function, is what the backend calls):
    launches the emulated kernel with the backend's arguments, device addresses as Python ints
    and scalars as numpy values, as CuPy packs them."""

    def __init__(self, variant, name):
        self.variant, self.name = variant, name
        self.kernel = self

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        import ctypes

        import numpy as np

        assert shared_mem == 0 and stream is not None  # torch's stream, passed explicitly
        box = emulate._Args()
        vals = []
        for a in args:
            if type(a) is int:  # a tensor's data_ptr(); the backend keeps the tensor alive
                vals.append(ctypes.c_void_p(a))
            elif isinstance(a, np.integer):
                vals.append(int(a))
            elif isinstance(a, np.floating):
                vals.append(float(a))
            else:
                raise TypeError(f"unexpected kernel argument {type(a).__name__}")
        lib = emulate.load(self.variant)
        getattr(lib, f"emu_{self.name}")(grid[0], grid[1], block[0], box.pack(vals))


@pytest.fixture
def emulated_backend(monkeypatch):
    """backend.attention with CuPy replaced by the emulation: the Launcher, the pointer
    hand-over, the argument lists, the autograd Function and the backward run as on the GPU."""
    import sys
    import types
    from contextlib import nullcontext

    from stbench.kernels.cupy import backend, launcher

    fake = types.SimpleNamespace(
        cuda=types.SimpleNamespace(Device=lambda i: nullcontext(),
                                   ExternalStream=lambda ptr, dev: ("stream", ptr, dev)),
    )
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(launcher, "get_kernel", lambda v, name, index: _EmuKernel(v, name))
    monkeypatch.setattr(backend, "check_available", lambda device, dtype: None)
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: types.SimpleNamespace(cuda_stream=7))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    launcher.launcher_for.cache_clear()
    launcher._cupy_stream.cache_clear()
    yield backend
    launcher.launcher_for.cache_clear()
    launcher._cupy_stream.cache_clear()


@pytest.mark.parametrize("cfg, dtype", [(None, BF16), ({"kernel": "scalar"}, F32)],
                         ids=["mma-default-bf16", "scalar-fp32"])
def test_backend_attention_path_with_emulated_kernels(emulated_backend, cfg, dtype, gen):
    from stbench.kernels.cupy.checks import check_case

    row = check_case("st_mix", dtype, 32, cfg, n_ctx=512, heads=2, batch=1, device="cpu",
                     runner=emulated_backend.attention, block=32)
    assert row.status == "ok", row
    # no grad wanted: the plain forward path
    lay = _layout("causal", 128, 64)
    q = torch.randn(1, 2, 128, 32, generator=gen).to(dtype)
    out = emulated_backend.attention(q, q, q, lay, 0.2, cfg)
    ref = reference(q.double(), q.double(), q.double(), lay, 0.2)
    assert (out.double() - ref).abs().max() < 1e-2


@pytest.mark.parametrize("family, dtype, d", [("bwd_mma", BF16, 64), ("bwd_mma", F16, 16),
                                              ("scalar", F32, 40), ("scalar", BF16, 128)])
def test_delta_kernel_matches_torch_rowsum(family, dtype, d, gen):
    """st_bwd_delta (one warp per row, float32 products and sum) against rowsum(dO * O) in
    float32; 3 x 5 x 7 = 105 rows, not a multiple of the 8 rows a CTA takes (the tail)."""
    from stbench.kernels.cupy.compile import DTYPE_CODES, Variant
    from stbench.kernels.cupy.kernel_args import row_delta

    tiles = {} if family == "scalar" else {"block_m": 16, "block_n": 16}
    variant = Variant(family, DTYPE_CODES[dtype], d, 16, **tiles)
    dout, out = (torch.randn(3, 5, 7, d, generator=gen).to(dtype) for _ in range(2))
    got = emulate.kernel_delta(variant, emulate._as_bits(dout), emulate._as_bits(out))
    want = row_delta(dout, out)
    assert got.dtype == torch.float32 and got.shape == (3, 5, 7)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the wgmma probe (sm_90a)
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_wgmma_probe_kernels_under_the_emulator(dtype):
    """The probe kernels (probes/st_wgmma_probe.cu), emulated:
    every case that follows this project's reading of the PTX ISA matches torch (S = Q K^T with
    both operands K-major, A V with V MN-major from shared memory and with A in registers, and
    the S accumulators repacked as the A fragment of P V), and the LBO / SBO-swapped controls
    do not. This checks the kernels' bookkeeping against the emulator's reading
    (st_wgmma_emu.cuh), NOT the reading against the hardware: that is the GPU probe's job."""
    from stbench.kernels.cupy import wgmma_probe

    a, b, c = wgmma_probe.inputs(dtype, seed=1)
    rows = []
    for case in wgmma_probe.CASES:
        d, d2 = emulate.run_wgmma_probe(case, a, b, c)
        rows.append(wgmma_probe.judge(case, a, b, c, d, d2))
        assert rows[-1]["match"] == case.follows_reading, rows[-1]
    assert wgmma_probe.verdict(rows) == "reading confirmed"
