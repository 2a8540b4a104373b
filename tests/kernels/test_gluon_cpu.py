"""Gluon backend on the CPU: the config space and its fit rules, what the backend accepts and
refuses (with the reason), the registry row, and an AOT build of the forward for sm_90 whose
SASS must show the Hopper path (wgmma, TMA, no spills in the FULL-tile loop)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from stbench import backends, layouts
from stbench.backends import BackendUnavailable

gluon_backend = pytest.importorskip("stbench.kernels.gluon.backend")
from stbench.kernels.gluon import config as gconfig  # noqa: E402
from stbench.kernels.triton import config as triton_config  # noqa: E402

AOT_TIMEOUT_S = 300  # one variant's build on a busy 2-core machine (about 20 s alone)


def test_registry_row():
    info = backends.info("gluon")
    assert info.needs_gpu and info.backward and not info.peer
    assert "gluon" in backends.names()


def test_refuses_cpu_and_fp32():
    with pytest.raises(BackendUnavailable, match="CUDA"):
        gluon_backend.check_available(torch.device("cpu"), torch.bfloat16)
    with pytest.raises(BackendUnavailable, match="dtype"):
        gluon_backend.check_available(torch.device("cpu"), torch.float32)
    assert "gluon" not in backends.available("cpu", torch.bfloat16)


@pytest.mark.parametrize("layout, why", [
    (layouts.causal(1024, block=128, heads=2), None),
    (layouts.fixed(2048, block=128, stride=512, heads=2), None),
    (layouts.causal(1024, block=64, heads=2), "block 64"),
    (layouts.strided(4096, block=128, stride=32, heads=2), "permutes"),
])
def test_supports(layout, why):
    got = gluon_backend.supports(layout)
    assert (got is None) if why is None else (why in got)


def test_head_dims():
    gluon_backend.check_head_dim(64)
    gluon_backend.check_head_dim(128)
    with pytest.raises(ValueError, match="head_dim=32"):
        gluon_backend.check_head_dim(32)


def test_config_validation():
    assert gconfig.GluonConfig.from_dict(None) == gconfig.GluonConfig()
    with pytest.raises(ValueError, match="unknown gluon config keys"):
        gconfig.GluonConfig.from_dict({"BLOCK_M": 128})
    with pytest.raises(ValueError, match="stages=4"):
        gconfig.GluonConfig(stages=4)
    with pytest.raises(ValueError, match="bwd_kernel='cuda'"):
        gconfig.GluonConfig(bwd_kernel="cuda")
    with pytest.raises(ValueError, match=r"rows=256 is not supported: use one of \(128, 192\)"):
        gconfig.GluonConfig(rows=256)


def test_fit_and_resolve():
    # "auto": this backend's backward where it builds (D = 64), else the Triton backend's
    assert gconfig.resolve_config(64, None) == gconfig.GluonConfig(bwd_kernel="gluon")
    assert gconfig.resolve_config(128, None) == gconfig.GluonConfig(bwd_kernel="triton")
    assert gconfig.resolve_config(64, {"bwd_kernel": "triton"}).bwd_kernel == "triton"
    assert gconfig.resolve_config(128, {"stages": 3, "p_smem": False}).stages == 3
    with pytest.raises(ValueError, match="shared memory"):
        gconfig.resolve_config(128, {"stages": 3})  # K / V ring of 3 plus P slots at D = 128
    assert gconfig.resolve_config(64, {"bwd_kernel": "gluon"}).bwd_kernel == "gluon"
    with pytest.raises(ValueError, match="head_dim"):
        gconfig.resolve_config(128, {"bwd_kernel": "gluon"})  # its accumulators spill at 128
    # three consumers: D = 64 only; Q, the ring and P slots for 192 rows fit at 3 stages
    assert gconfig.resolve_config(64, {"rows": 192, "stages": 3}).rows == 192
    with pytest.raises(ValueError, match="rows=192 .* use rows=128"):
        gconfig.resolve_config(128, {"rows": 192, "bwd_kernel": "triton"})
    # not in the tuner's space until measured on a GPU
    assert all(c.rows == 128 for c in gconfig.forward_variants(64))


@pytest.mark.parametrize("head_dim", (64, 128))
def test_config_space(head_dim):
    lay = layouts.causal(4096, block=128, heads=2)
    space = gconfig.config_space(lay, head_dim, torch.bfloat16)
    assert space[0] == gconfig.resolve_config(head_dim, None).as_dict()
    assert all(c["bwd_kernel"] != "auto" for c in space)
    assert len({tuple(sorted(c.items())) for c in space}) == len(space)
    for c in space:
        assert gconfig.fits(gconfig.GluonConfig(**c), head_dim) is None
    assert {c["stages"] for c in space} == {2, 3}
    assert {(c["pingpong"], c["p_smem"]) for c in space} == {(a, b) for a in (True, False)
                                                            for b in (True, False)}
    # the backward's tiles vary with the default forward; each variant is a Triton config
    default_fwd = {k: v for k, v in space[0].items()
                   if k not in gconfig.BWD_KEYS and k != "bwd_kernel"}
    bwd = [c for c in space if {k: c[k] for k in default_fwd} == default_fwd
           and c != space[0]]
    assert {(c["BWD_BLOCK_M"], c["BWD_BLOCK_N"]) for c in bwd} >= {(64, 64), (128, 128)}
    assert any(c["dq_atomic"] for c in bwd)
    assert any(c["bwd_kernel"] == "gluon" for c in space) == (head_dim == 64)
    assert any(c["bwd_kernel"] == "triton" for c in bwd)
    for c in bwd:
        triton_config.KernelConfig(**{k: c[k] for k in gconfig.BWD_KEYS})


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [{}, {"stages": 3}, {"p_smem": False, "pingpong": False},
                                 {"rows": 192}], ids=str)
def test_aot_build_sm90(cfg):
    """Builds for sm_90 without a GPU (in a process without TRITON_INTERPRET, under which Gluon
    does not compile); the SASS issues wgmma (HGMMA) and TMA loads, shared memory fits, the
    FULL-tile loop (consumer 0's first loop) keeps its values in registers, and with three
    consumers (rows=192, 13 warps at a lower register cap) no loop spills."""
    from stbench.kernels.gluon.forward import SMEM_LIMIT

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-P", "-m", "stbench.kernels.gluon.aot", "--json",
                          json.dumps(cfg), "64"], capture_output=True, text=True, env=env,
                         timeout=AOT_TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-2000:]
    build = json.loads(run.stdout.strip().splitlines()[-1])
    assert build["counts"]["HGMMA"] > 0 and build["counts"]["UTMALDG"] > 0
    assert build["shared"] <= SMEM_LIMIT
    _, full = build["loops"][0]
    assert full["HGMMA"] > 0 and full["STL"] == 0, f"spills in the FULL-tile loop: {full}"
    # 64 exponentials a thread a step (2 rows x 32 columns) and 2 for the rescale
    assert full["MUFU"] == 66, full
    if cfg.get("rows") == 192:
        assert build["stack"] == 0 and build["counts"]["LDL"] == 0, build


@pytest.mark.slow
def test_warp_specialize_probe_has_no_shared_memory_of_its_own():
    """The racecheck control (probe.py) builds for sm_90 with only the warp_specialize
    lowering's partition-state bytes in shared memory: the workers read their partition index
    a byte at a time after the CTA-wide named barrier 1, as in the forward and backward."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-P", "-m", "stbench.kernels.gluon.aot", "--probe"],
                         capture_output=True, text=True, env=env, timeout=AOT_TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-2000:]
    state = json.loads(run.stdout.strip().splitlines()[-1])
    assert state["shared"] <= 32 and state["byte_reads"] >= 1, state
    assert state["barrier_1_syncs"] >= 2, state


@pytest.mark.slow
def test_aot_build_backward_sm90():
    """The warp-specialised backward builds for sm_90: wgmma and TMA in the SASS, shared memory
    fits; each entry loop (three tile kinds x two consumers, consumer 0's first) issues wgmma,
    64 exponentials a thread (two steps of 64 keys x 64 queries over 128 threads) and one TMA
    reduce-add of dQ (no atomics), and the FULL loops, which carry most of the work, keep their
    values in registers."""
    from stbench.kernels.gluon.forward import SMEM_LIMIT

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-P", "-m", "stbench.kernels.gluon.aot", "--backward",
                          "64"], capture_output=True, text=True, env=env, timeout=AOT_TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-2000:]
    build = json.loads(run.stdout.strip().splitlines()[-1])
    assert build["counts"]["UTMALDG"] > 0 and build["shared"] <= SMEM_LIMIT
    entries = [c for _, c in build["loops"] if c["MUFU"] > 0][:6]
    assert len(entries) == 6, build["loops"]
    for c in entries:
        assert c["HGMMA"] > 0 and c["MUFU"] == 64, c
        assert c["UTMAREDG"] == 1 and c["REDG"] == 0, c
    for c in (entries[0], entries[3]):  # FULL; at most two scalars reloaded a step
        assert c["STL"] == 0 and c["LDL"] <= 2, f"spills in a FULL entry loop: {c}"
