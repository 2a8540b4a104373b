"""The regression problem set, shared by ``stbench regress``, ``stbench ab`` (its default) and the
pytest-benchmark module: every kernel backend x representative layouts x a few N x fwd /
fwd+bwd, on the standard problem of stbench.problems (bf16, H = 8, D = 64, B x N = 65,536
tokens).

Layouts (``stbench.problems`` specs): ``causal`` and ``fixed`` at block 128 (real work),
``local`` at block 128 and ``st_mix`` at the largest block its strided heads allow (very
sparse, memory- and launch-bound), ``paper_fixed`` (the paper's exact mask at its fine block
32). N = 4096 (B = 16) and 16384 (B = 4): long enough that every kernel runs well above the
launch overhead, short enough that the whole set (two backends, both modes) is timed in seconds.

Kernel backends: the registry's backends that are neither a peer nor the reference and whose
module lives in ``stbench.kernels`` (triton, cupy, and any kernel package registered later);
the ones that cannot run here are reported as skipped with the reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from stbench import backends
from stbench.problems import (
    STANDARD_HEAD_DIM, STANDARD_HEADS, Problem, batch_for, layout_spec,
)

KERNEL_PACKAGE = "stbench.kernels."  # where a kernel backend's module lives
REGRESS_LAYOUTS = ("causal", "fixed", "local", "st_mix", "paper_fixed")
REGRESS_NS = (4096, 16384)
REGRESS_MODES = ("fwd", "fwd+bwd")
# layouts whose pattern does not exist at their block for every N (strided heads need
# (N / l) % block == 0): built at the largest block that fits
FIT_BLOCK = ("st_mix",)


def kernel_backends() -> list[str]:
    """Registered kernel backends (not a peer, not the reference, a module in stbench.kernels)."""
    return [name for name, info in backends.REGISTRY.items()
            if not info.peer and not info.reference and info.module.startswith(KERNEL_PACKAGE)]


def package_of(backend: str) -> str:
    """The kernel package a backend's module lives in, relative to ``stbench.kernels``:
    'stbench.kernels.triton.backend' -> 'triton.backend'."""
    info = backends.info(backend)
    if backend not in kernel_backends():
        what = "a peer" if info.peer else "the reference" if info.reference else (
            f"outside {KERNEL_PACKAGE.rstrip('.')}")
        raise ValueError(f"backend {backend!r} is not one of our kernel backends ({what}): use "
                         f"one of {', '.join(kernel_backends())}")
    return info.module[len(KERNEL_PACKAGE):]


@dataclass(frozen=True)
class Entry:
    """One measured thing: a backend on a problem."""

    backend: str
    problem: Problem

    @property
    def key(self) -> str:
        p = self.problem
        return (f"{self.backend}|{p.layout.name}|N={p.n_ctx}|B={p.batch}|H={p.heads}|"
                f"D={p.head_dim}|{p.dtype}|{p.mode}")

    def label(self) -> str:
        return f"{self.backend} {self.problem.label()}"


def regress_problems(layouts=REGRESS_LAYOUTS, ns=REGRESS_NS, modes=REGRESS_MODES,
                     dtype: str = "bfloat16", heads: int = STANDARD_HEADS,
                     head_dim: int = STANDARD_HEAD_DIM, batch: int | None = None
                     ) -> list[Problem]:
    """The problems, layout-major (N, then mode, inside); ``batch`` None: B = 65536 / N."""
    out = []
    for name in layouts:
        spec = layout_spec(name)
        if name in FIT_BLOCK:
            spec = dataclasses.replace(spec, fit_block=True)
        for n in ns:
            for mode in modes:
                out.append(Problem(spec, n, batch or batch_for(n), heads=heads,
                                   head_dim=head_dim, dtype=dtype, mode=mode))
    return out


def regress_entries(backend_names=None, **problem_kw) -> list[Entry]:
    """Every backend (default: ``kernel_backends()``) on every problem, backend-major."""
    names = kernel_backends() if backend_names is None else list(backend_names)
    for n in names:
        package_of(n)  # a peer or the reference is refused with the fix
    probs = regress_problems(**problem_kw)
    return [Entry(b, p) for b in names for p in probs]
