"""The CuPy backend's CUDA sources build for sm_90, on the CPU, with the defines the backend uses.

Variants come from the backend's own ``config_space`` and ``variants_for`` (the default, the
smallest and the last tile configuration, scalar kernel), over dtypes, head dims, blocks and the
plan flags (permutation, partial blocks), plus the wgmma forward (``{"kernel": "wgmma"}``,
outside ``config_space`` until a GPU has checked it; built for sm_90a), so what compiles here is
what NVRTC compiles on the GPU. nvcc runs 2 at a time; about 25 s on 2 cores. Skipped, with
the reason, where nvcc is absent. Where NVRTC is loadable through CuPy (no GPU needed) the same
source also goes through NVRTC, the GPU's compiler.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from stbench.kernels.cupy.config import WGMMA_CAPABILITY, config_space, resolve_config
from stbench.kernels.cupy.kernel_args import variants_for
from stbench.kernels.cupy.compile import FILES, KERNEL_DIR, Variant, nvcc_command, read_source
from stbench.layouts import Layout

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH (install the CUDA toolkit)")


def _layout(block: int) -> Layout:
    return Layout.from_parts(4 * block, 1, block, "one", [0], [0], [0], [1])


def _cases() -> list[Variant]:
    """(dtype, head dim, block, permuted, partial) cases, each with the first and last config."""
    cases = [
        (torch.float16, 64, 64, True, True),
        (torch.bfloat16, 128, 128, False, True),
        (torch.bfloat16, 32, 16, True, False),
        (torch.float16, 128, 32, False, False),
        (torch.float32, 64, 128, True, True),
        (torch.bfloat16, 48, 16, False, True),  # head dim not a multiple of 32: scalar only
    ]
    out: list[Variant] = []
    for dtype, d, block, perm, partial in cases:
        space = config_space(_layout(block), d, dtype)
        mma = [c for c in space if c["kernel"] == "mma"]
        picks = mma[:2] + mma[-1:] + [c for c in space if c["kernel"] == "scalar"]
        for cfg in picks:
            for v in variants_for(cfg, dtype, d, block, perm, partial):
                if v not in out:
                    out.append(v)
    # the wgmma forward is not in config_space (unverified on a GPU): its variants by config
    for dtype, block, perm, partial, m in ((torch.bfloat16, 64, True, True, 64),
                                           (torch.float16, 128, False, False, 64),
                                           (torch.bfloat16, 128, True, True, 128)):
        cfg = resolve_config({**WGMMA, "BLOCK_M": m}, block, 64, dtype,
                                     WGMMA_CAPABILITY)
        for v in variants_for(cfg, dtype, 64, block, perm, partial):
            if v not in out:
                out.append(v)
    return out


WGMMA = {"kernel": "wgmma"}
VARIANTS = _cases()


def test_every_cu_file_is_covered():
    on_disk = {p.name for p in KERNEL_DIR.glob("*.cu")}
    assert on_disk == {f for f, _ in FILES.values()}
    assert {v.path.name for v in VARIANTS} == on_disk


def test_sources_need_no_system_header():
    """NVRTC has no CUDA headers on its path here or there: the sources include only ours."""
    for name, _ in FILES.values():
        text = read_source(name)
        assert "#include" not in text, name


# the head dim 128 dK/dV kernel holds K, V and the dK, dV accumulators at 255 registers and
# spills up to 96 bytes (ptxas, sm_90); every other variant spills nothing
MAX_SPILL_BYTES = 96


@needs_nvcc
def test_nvcc_builds_every_variant():
    def build(v: Variant) -> tuple[Variant, subprocess.CompletedProcess, str]:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, v.label() + ".cu")
            Path(src).write_text(v.source())
            cmd = nvcc_command(v, src, os.path.join(tmp, "k.cubin"), extra=("-Xptxas", "-v"))
            return v, subprocess.run(cmd, capture_output=True, text=True, timeout=300), tmp

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(build, VARIANTS))
    failed = [f"{v.label()}:\n{r.stderr[-2000:]}" for v, r, _ in results if r.returncode]
    assert not failed, "\n\n".join(failed)
    for v, r, _ in results:
        # every kernel of the file is in the cubin, and none spills more than MAX_SPILL_BYTES
        for name in v.kernel_names:
            assert f"Compiling entry function '{name}'" in r.stderr, (v.label(), name)
        spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", r.stderr)]
        assert len(spills) == len(v.kernel_names) and max(spills) <= MAX_SPILL_BYTES, (
            v.label(), spills)
        assert "error" not in r.stderr.lower(), (v.label(), r.stderr)


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton

        p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        return str(p) if p.exists() else None
    except ImportError:
        return None


@needs_nvcc
@pytest.mark.parametrize("family", ["fwd_mma", "bwd_mma"])
def test_tensor_core_instructions_in_sass(family, tmp_path):
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (CUDA toolkit or triton's bundled copy)")
    v = Variant(family, 2, 64, 64, 64, 64, True, True)
    src = tmp_path / "k.cu"
    src.write_text(v.source())
    cubin = tmp_path / "k.cubin"
    subprocess.run(nvcc_command(v, str(src), str(cubin)), check=True, capture_output=True)
    sass = subprocess.run([tool, "--dump-sass", str(cubin)], capture_output=True, text=True).stdout
    assert "HMMA.16816.F32.BF16" in sass  # tensor cores
    assert "LDGSTS.E.BYPASS.128" in sass  # tiles copied 16 bytes at a time by cp.async
    assert "LDSM.16.M88.4" in sass and "LDSM.16.MT88.4" in sass  # ldmatrix, plain and .trans


def _nvrtc_compile():
    try:
        import cupy  # noqa: F401
        from cupy.cuda import compiler
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001  (no cupy, or no loadable libnvrtc)
        return None, f"NVRTC through CuPy is not loadable here ({type(exc).__name__})"
    return compiler, None


# BLOCK_M -> the most registers a thread may use: 3 CTAs (12 warps) per SM at one warpgroup
# (65536 / (3 x 128) = 170), 2 CTAs (16 warps) at two (65536 / (2 x 256) = 128; ptxas takes
# 128 there on its own)
WGMMA_MAX_REGS = {64: 170, 128: 128}


@needs_nvcc
@pytest.mark.parametrize("block_m", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_wgmma_forward_builds_for_sm90a(dtype, block_m, tmp_path):
    """st_fwd_wgmma.cu (the variant with every plan feature: permutation, partial blocks) builds
    with nvcc for sm_90a, its own architecture; no spills, no ptxas note that it serialized the
    wgmma; registers within WGMMA_MAX_REGS (ptxas 13.0: 113 at BLOCK_M 64, 128 at 128). The
    SASS holds the warpgroup MMA (HGMMA 64x64x16: 4 for S = Q K^T, 4 for O += P V), its
    fences, the proxy fence and the 16-byte cp.async."""
    cfg = resolve_config({**WGMMA, "BLOCK_M": block_m}, block_m, 64, dtype,
                            WGMMA_CAPABILITY)
    v, _ = variants_for(cfg, dtype, 64, block_m, True, True)
    assert v.arch == "sm_90a"
    src = tmp_path / "k.cu"
    src.write_text(v.source())
    cubin = tmp_path / "k.cubin"
    res = subprocess.run(nvcc_command(v, str(src), str(cubin), extra=("-Xptxas", "-v")),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Compiling entry function 'st_fwd_wgmma' for 'sm_90a'" in res.stderr
    assert " 0 bytes spill stores" in res.stderr, res.stderr
    # ptxas's note when it serializes wgmma ("wgmma.mma_async instructions are serialized")
    assert "serialized" not in res.stderr and "wgmma.mma_async" not in res.stderr, res.stderr
    regs = int(re.search(r"Used (\d+) registers", res.stderr).group(1))
    print(f"st_fwd_wgmma {v.label()}: {regs} registers")  # pytest -s shows it
    assert regs <= WGMMA_MAX_REGS[block_m], res.stderr
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (CUDA toolkit or triton's bundled copy)")
    sass = subprocess.run([tool, "--dump-sass", str(cubin)], capture_output=True, text=True).stdout
    hgmma = "HGMMA.64x64x16.F32.BF16" if dtype == torch.bfloat16 else "HGMMA.64x64x16.F32 "
    assert sass.count(hgmma) == 8, sass.count(hgmma)  # 4 for S = Q K^T, 4 for O += P V
    assert "WARPGROUP.ARRIVE" in sass and "WARPGROUP.DEPBAR" in sass
    assert "FENCE.VIEW.ASYNC.S" in sass and "LDGSTS.E.BYPASS.128" in sass


def test_nvrtc_builds_a_variant_per_file():
    compiler, why = _nvrtc_compile()
    if compiler is None:
        pytest.skip(why)
    for v in (
        Variant("fwd_mma", 1, 64, 64, 64, 64, True, True),
        Variant("bwd_mma", 2, 32, 32, 32, 32, True, True),
        Variant("scalar", 0, 48, 16, 0, 0, False, True),
    ):
        prog = compiler._NVRTCProgram(v.source(), "k.cu", method="cubin")
        cubin, _ = prog.compile(v.options() + ("-ftz=true", "--gpu-architecture=sm_90"))  # as CuPy
        assert cubin[:4] == b"\x7fELF", v.label()
        for name in v.kernel_names:  # every kernel of the file, by its extern "C" name
            assert name.encode() in cubin, (v.label(), name)


def test_nvrtc_builds_the_wgmma_forward_with_cupys_options():
    """The wgmma variant's options name sm_90a; CuPy's RawModule appends the device's
    ``-arch=sm_90`` (and -ftz, --device-as-default-execution-space). NVRTC 13 must still build
    for sm_90a: wgmma does not assemble for plain sm_90, so a cubin coming back shows it did."""
    compiler, why = _nvrtc_compile()
    if compiler is None:
        pytest.skip(why)
    v = Variant("fwd_wgmma", 2, 64, 64, 64, 64, True, True)
    assert "--gpu-architecture=sm_90a" in v.options()
    cupy_adds = ("-ftz=true", "-arch=sm_90", "--device-as-default-execution-space")
    prog = compiler._NVRTCProgram(v.source(), "k.cu", method="cubin")
    cubin, _ = prog.compile(v.options() + cupy_adds)
    assert cubin[:4] == b"\x7fELF"
    plain = tuple(o for o in v.options() if "sm_90a" not in o)
    with pytest.raises(Exception, match="wgmma"):
        compiler._NVRTCProgram(v.source(), "k.cu", method="cubin").compile(plain + cupy_adds)


# ------------------------------------------------------------------ the wgmma probe (sm_90a)
@needs_nvcc
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_wgmma_probe_builds_for_sm90a(dtype, tmp_path):
    """probes/st_wgmma_probe.cu builds with nvcc for sm_90a (wgmma exists only on the
    arch-specific target), every probe kernel is in the cubin, nothing spills, and the SASS
    holds the warpgroup MMA (HGMMA 64x64x16) with its fences and the 16-byte cp.async."""
    from stbench.kernels.cupy import wgmma_probe

    src = tmp_path / "probe.cu"
    src.write_text(wgmma_probe.source())
    cubin = tmp_path / "probe.cubin"
    cmd = wgmma_probe.nvcc_command(dtype, str(src), str(cubin)) + ["-Xptxas", "-v"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in wgmma_probe.KERNELS:
        assert f"Compiling entry function '{name}' for 'sm_90a'" in res.stderr, name
    assert "spill stores" in res.stderr and " 0 bytes spill stores" in res.stderr
    assert "bytes spill stores" not in res.stderr.replace(" 0 bytes spill stores", "")
    # ptxas says so when it has to serialize wgmma (e.g. accumulators it cannot keep in place)
    assert "wgmma" not in res.stderr.lower(), res.stderr
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (CUDA toolkit or triton's bundled copy)")
    sass = subprocess.run([tool, "--dump-sass", str(cubin)], capture_output=True, text=True).stdout
    # fp16 is the default input type: its SASS name carries no suffix
    assert "HGMMA.64x64x16.F32" in sass
    assert ("HGMMA.64x64x16.F32.BF16" in sass) == (dtype == torch.bfloat16)
    assert "WARPGROUP.ARRIVE" in sass and "WARPGROUP.DEPBAR" in sass  # wgmma.fence, wait_group
    assert "FENCE.VIEW.ASYNC.S" in sass  # fence.proxy.async.shared::cta
    assert "LDGSTS.E.BYPASS.128" in sass


def test_wgmma_probe_builds_with_nvrtc_for_sm90a():
    """The probe through NVRTC with --gpu-architecture=sm_90a, as the GPU probe test
    builds it on the GPU (no system header, a cubin comes back)."""
    compiler, why = _nvrtc_compile()
    if compiler is None:
        pytest.skip(why)
    from stbench.kernels.cupy import wgmma_probe

    assert "#include" not in wgmma_probe.source()
    for dtype in (torch.bfloat16, torch.float16):
        prog = compiler._NVRTCProgram(wgmma_probe.source(), "probe.cu", method="cubin")
        cubin, _ = prog.compile(wgmma_probe.nvrtc_options(dtype))
        assert cubin[:4] == b"\x7fELF"
