"""Stand-ins for kernel trees in the CPU tests of stbench.regress: backend modules over the
dense reference with a chosen fault, tiny problems, a quick timer (imported by file name:
tests/regress is on sys.path)."""

from __future__ import annotations

import math
import random

import torch

from stbench import timing
from stbench.backends import BackendUnavailable
from stbench.problems import LayoutSpec, Problem
from stbench.reference import dense
from stbench.regress.problems import Entry
from stbench.tuning.measure import BenchSettings

FAST_BENCH = BenchSettings(warmup_ms=0, rep_ms=2, flush_l2=False, min_reps=3)
TINY_SPEC = LayoutSpec("causal", "causal", block=16)
WRONG_FACTOR = 0.5  # a 'wrong' stub halves its output: far beyond any tolerance


class VirtualClock:
    """A deterministic stand-in for the timer: a stub's call spends its ``cost_ms`` on this
    clock, times a seeded log-normal factor of spread ``noise``; ``bench(fn)`` is the clock's
    advance over one call. A shared CPU's jitter (tens of ms) cannot flip a verdict."""

    def __init__(self, noise: float = 0.01, seed: int = 0):
        self.ms = 0.0
        self.noise = noise
        self.slowness = 1.0  # > 1: the whole machine runs slower (drift)
        self.rng = random.Random(seed)

    def spend(self, ms: float) -> None:
        self.ms += ms * self.slowness * math.exp(self.rng.gauss(0.0, self.noise))

    def bench(self, fn, **_):
        start = self.ms
        fn()
        t = self.ms - start
        return timing.Timing(t, t, t, 1, "cpu")


class StubBackend:
    """The registry interface over ``dense.attention``; ``fault``: None, 'wrong' (output
    halved), 'error' (raises), 'unsupported' (refuses); each call spends ``cost_ms`` on
    ``clock`` (when given)."""

    def __init__(self, fault: str | None = None, cost_ms: float = 1.0,
                 clock: VirtualClock | None = None):
        self.fault = fault
        self.cost_ms = cost_ms
        self.clock = clock
        self.calls = 0

    def check_available(self, device, dtype):
        if self.fault == "unsupported":
            raise BackendUnavailable("the stub refuses this problem")

    def attention(self, q, k, v, layout, scale, config=None):
        self.calls += 1
        if self.fault == "error":
            raise RuntimeError("the stub kernel crashed")
        out = dense.attention(q, k, v, layout, scale)
        if self.fault == "wrong":
            out = out * WRONG_FACTOR
        if self.clock is not None:
            self.clock.spend(self.cost_ms)
        return out


class StubSide:
    """A kernel tree stand-in: ``module(backend)`` from a dict; absent: unavailable."""

    def __init__(self, label: str = "stub", **modules):
        self.label = label
        self.modules = modules

    def module(self, backend):
        if backend not in self.modules:
            raise BackendUnavailable(f"{self.label} has no backend {backend!r}")
        return self.modules[backend]

    def close(self):
        pass


def tiny_entries(backend: str = "triton", modes=("fwd",), n_ctx: int = 64) -> list[Entry]:
    """Causal at block 16, N = 64, B = 1, H = 2, D = 16, float32."""
    return [Entry(backend, Problem(TINY_SPEC, n_ctx, 1, heads=2, head_dim=16, dtype="float32",
                                   mode=m)) for m in modes]


CPU = torch.device("cpu")


FAKE_BACKEND = """
from stbench.reference import dense


def check_available(device, dtype):
    pass


def attention(q, k, v, layout, scale, config=None):
    from .op import poisoned  # imported lazily, as the real backends do

    out = dense.attention(q, k, v, layout, scale)
    return out * 0 if poisoned(config) else out
"""
FAKE_OP = """
import torch


@torch.library.custom_op("stbench::fake_tree_op", mutates_args=())
def fake_tree_op(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


def poisoned(config):
    return bool(config and config.get("poison"))
"""


def write_fake_tree(root, backend_source: str = FAKE_BACKEND):
    """A checkout-shaped folder whose kernels/triton is the dense reference (CPU, instant)."""
    pkg = root / "kernels" / "triton"
    pkg.mkdir(parents=True)
    (root / "kernels" / "__init__.py").write_text('"""fake kernels"""\n')
    (pkg / "__init__.py").write_text("")
    (pkg / "backend.py").write_text(backend_source)
    (pkg / "op.py").write_text(FAKE_OP)
    return root
