"""pytest-benchmark over the regression problem set (stbench.regress.problems): every kernel
backend x layout x N x fwd / fwd+bwd, each checked against the dense reference first (a wrong
answer fails the test), then timed with CUDA events inside ``benchmark.pedantic`` (the L2
flushed before each round, outside the timed region). ``extra_info`` carries TFLOP/s (the
shared numerator of stbench.timing), peak memory, the layout and its block, the config.

    pytest -m benchmark tests/benchmarks --benchmark-autosave              # save a run
    pytest -m benchmark tests/benchmarks --benchmark-compare \\
        --benchmark-compare-fail=median:5%                                 # against the last

``STBENCH_KERNELS_DIR=PATH`` times another kernel tree (a checkout, or its kernels folder;
``stbench regress --kernels-dir``'s loader) instead of the installed kernels: a planted fault
(``python -m stbench.regress.plant``) against a save of the installed ones.

Marked ``gpu`` (skipped without CUDA, with the reason) and pytest-benchmark's ``benchmark``
(run it without xdist: the plugin does not time under ``-n``). The same-run gate with drift
taken out is ``stbench regress``; this module is for users of pytest-benchmark's own tooling.
"""

from __future__ import annotations

import os

import pytest
import torch

from stbench.regress.problems import regress_entries

ROUNDS = 20  # timed rounds per entry (pytest-benchmark's statistics over them)
WARMUP_ROUNDS = 3
L2_FLUSH_BYTES = 256 * 2**20  # as stbench.timing: larger than any GPU's L2

pytestmark = [pytest.mark.gpu, pytest.mark.benchmark(group="kernels")]
ENTRIES = regress_entries()


def _resolved_config(module, backend: str, layout, prob, device) -> dict | str:
    """The configuration the backend runs when given none (its default, or its shipped pick),
    as a dict; "backend default" for the peers, which take no configuration."""
    if backend == "triton":
        return module.resolve_config(layout, prob.head_dim, prob.torch_dtype, None).as_dict()
    if backend == "gluon":
        return module.resolve_config(prob.head_dim, None).as_dict()
    if backend == "cupy":
        cap = torch.cuda.get_device_capability(device)
        return module.resolve_config(None, layout.block, prob.head_dim, prob.torch_dtype, cap)
    return "backend default"


@pytest.fixture(scope="module")
def kernels():
    """The side under test: the installed kernels, or the tree of ``STBENCH_KERNELS_DIR``."""
    from stbench.regress import trees

    path = os.environ.get("STBENCH_KERNELS_DIR")
    side = trees.KernelTree.from_dir(path) if path else trees.InstalledKernels()
    yield side
    side.close()


@pytest.fixture(scope="module")
def flush_buffer():
    return torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.key.replace("|", "-"))
def test_kernel(entry, benchmark, flush_buffer, kernels):
    pytest.importorskip("pytest_benchmark")
    from stbench import backends, timing
    from stbench.regress.devclock import DeviceClock
    from stbench.regress.sample import (
        check_side, make_inputs, make_reference, unavailable,
    )
    from stbench.tuning.measure import closure

    device, prob = torch.device("cuda"), entry.problem
    try:
        module = kernels.module(entry.backend)
    except backends.BackendUnavailable as exc:
        pytest.skip(str(exc))
    layout = prob.build_layout()
    why = unavailable(module, device, prob, layout)
    if why is not None:
        pytest.skip(why)
    inputs = make_inputs(prob, device, seed=0)
    outcome = check_side(module, prob, layout, inputs,
                         make_reference(prob, layout, inputs, None, seed=0), device)
    assert outcome.status == "ok", f"{entry.label()}: {outcome.status}: {outcome.error}"
    grads = list(inputs.qkv) if prob.mode == "fwd+bwd" else []
    run = closure(module, *inputs.qkv, layout, prob.head_dim ** -0.5, None, prob.mode, inputs.do)

    def setup():
        for t in grads:
            t.grad = None
        flush_buffer.zero_()

    clock = DeviceClock(device)
    benchmark._timer = clock.seconds  # rounds measured in CUDA-event time (devclock docstring)
    benchmark.pedantic(clock.timed(run), setup=setup, rounds=ROUNDS,
                       warmup_rounds=WARMUP_ROUNDS, iterations=1)
    setup()
    stats = getattr(benchmark, "stats", None)
    median_ms = stats.stats.median * 1e3 if stats is not None else None
    flops = timing.attention_flops(layout, prob.batch, prob.head_dim, prob.mode)
    benchmark.extra_info.update(
        backend=entry.backend, layout=prob.layout.name, block=layout.block,
        block_density=layout.block_density, n_ctx=prob.n_ctx, batch=prob.batch,
        heads=prob.heads, head_dim=prob.head_dim, dtype=prob.dtype, mode=prob.mode,
        config=_resolved_config(module, entry.backend, layout, prob, device),
        tflops=timing.tflops(flops, median_ms), peak_bytes=timing.peak_memory(run),
        err=outcome.err, tol=outcome.tol, timer="cuda events")
