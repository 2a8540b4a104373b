"""Compile kernels ahead of timing, in worker processes side by side.

A backend compiles on its first call with a new configuration: Triton JIT-compiles each
(kernel, constexprs, argument specialisation), CuPy runs NVRTC per kernel variant,
FlexAttention runs TorchInductor per layout and shape. Each takes one CPU core for seconds; the
tuned standard sweep spent 9.4 of its 15.4 minutes there, one compilation after another
(reports/standard/h200). All three keep what they compile on disk, keyed by what determines the
binary (Triton: ``TRITON_CACHE_DIR``, default ``~/.triton/cache``; CuPy: ``CUPY_CACHE_DIR``,
default ``~/.cupy/kernel_cache``; TorchInductor: its FX-graph, AOTAutograd and Triton caches under
``TORCHINDUCTOR_CACHE_DIR``). So a pool of worker processes that makes each call once — the same
problem, inputs of the same shapes, strides and dtype, the same backend call
(``measure.closure``) — leaves the compiled code on disk, and the timing process's first call
loads it instead of compiling.

Triton's and CuPy's kernels do not depend on N (Triton specialises integer arguments only on
divisibility by 16, and N is a multiple of the layout block), so jobs that differ only in N
share one compile key (``Job.compile_key``): ``Precompiler.run(jobs)`` makes one chain of them,
smallest N first, and a worker runs the chain until one job succeeds; a key done once is not
run again. Where an N specialises differently after all, the timing process compiles that one
itself (slower, still correct). FlexAttention compiles per shape (``dynamic=False``), so its key
includes N and the batch. ``run`` blocks until every chain has ended, so no worker's kernel runs
while the calling process times anything. A job's failure is only reported back (the timing
process meets it again and records it as a row). Workers are started with ``spawn`` (CUDA state
must not be forked) and keep their CUDA context between batches; each frees its tensors after a
chain. A worker's standard output goes to its standard error, so that a sweep worker's stdout
(the protocol of ``stbench/sweep/worker.py``) carries only its own lines.

A kernel that hangs (a warp-specialised forward did, on the H200) would block ``run`` for good
and then the timing process too. So when no chain of a batch ends for ``stall_s``
seconds, the chains still in flight are taken to hang: their compile keys go into ``hung``, the
workers are killed (their CUDA contexts, and the hung kernels with them, go away) and ``run``
returns. The autotuner scores a candidate whose key hung as a ``timeout`` row without running
it in the timing process. A chain that merely waited in the queue when the pool was killed is
reported as not run and compiles on its first timed call, as without a precompiler.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from stbench import backends
from stbench.distributed import use_device
from stbench.problems import Problem
from stbench.tuning.measure import closure

COMPILED_BACKENDS = ("triton", "gluon", "cupy", "flex")  # backends whose first call compiles
SHAPE_SPECIALISED = ("flex",)  # backends that compile per (N, batch)
ERROR_CHARS = 300
STALL_S = 240  # no chain of a batch ended for this long: the ones in flight hang
# Fault injection for tests: "hang:BACKEND" makes a worker's first call of BACKEND sleep.
FAULT_ENV = "STBENCH_PRECOMPILE_FAULT"


@dataclass(frozen=True)
class Job:
    """One first call to make: ``backend`` with ``config`` (JSON text; "null": the default) on
    ``problem``'s layout re-blocked to ``block`` (None: as built), in ``problem.mode``."""

    problem: Problem
    backend: str
    block: int | None = None
    config: str = "null"

    @staticmethod
    def of(problem: Problem, backend: str, block: int | None = None,
           config: dict | None = None) -> "Job":
        return Job(problem, backend, block, json.dumps(config, sort_keys=True))

    def compile_key(self) -> tuple:
        """What determines the compiled kernels (N and the batch only where they do)."""
        p = self.problem
        shape = (p.n_ctx, p.batch) if self.backend in SHAPE_SPECIALISED else ()
        return (self.backend, p.mode, p.layout, p.heads, p.head_dim, p.dtype, self.block,
                self.config, *shape)


@dataclass(frozen=True)
class Outcome:
    job: Job
    seconds: float
    error: str | None


class Precompiler:
    """A pool of ``workers`` processes making first calls on ``device``. Use as a context
    manager, or call ``close()``. The pool starts on the first ``run``."""

    def __init__(self, workers: int, device: str, log_path=None, stall_s: float = STALL_S):
        if workers < 1:
            raise ValueError(f"precompile workers={workers}: use at least 1 (0 turns it off)")
        self.workers = workers
        self.device = str(device)
        self.log_path = log_path  # JSONL: one line per run() (phase, jobs, errors, seconds)
        self.stall_s = stall_s
        self._pool: ProcessPoolExecutor | None = None
        self.done: set[tuple] = set()  # compile keys with a job that ran without error
        self.hung: set[tuple] = set()  # compile keys whose first call did not end (module doc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _kill(self) -> None:
        """Stop the pool now, hung workers included (a plain shutdown would wait for them)."""
        if self._pool is not None:
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.kill()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def hung_error(self, job: "Job") -> str | None:
        """Why ``job`` must not run in this process (its compile key hung in a worker), as a
        ``timeout`` row's error; None when it did not."""
        if job.compile_key() not in self.hung:
            return None
        return (f"its first call hung in a precompile worker (no end in {self.stall_s:g} s): "
                "not run here")

    def run(self, jobs, phase: str = "tune") -> list[Outcome]:
        """Run the chains of the jobs whose compile key is neither done nor hung yet, side by
        side; returns the outcome of each job run."""
        chains: dict[tuple, list[Job]] = {}
        for job in dict.fromkeys(jobs):
            key = job.compile_key()
            if key not in self.done and key not in self.hung:
                chains.setdefault(key, []).append(job)
        if not chains:
            return []
        t0 = time.perf_counter()
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers,
                                             mp_context=mp.get_context("spawn"),
                                             initializer=_init_worker)
        ordered = [sorted(c, key=lambda j: (j.problem.n_ctx, j.problem.batch))
                   for c in chains.values()]
        futures = {self._pool.submit(run_chain, chain, self.device): chain for chain in ordered}
        out, pending, broken = [], set(futures), False
        while pending:
            finished, pending = wait(pending, timeout=self.stall_s, return_when=FIRST_COMPLETED)
            for fut in finished:
                chain = futures[fut]
                try:
                    out.extend(fut.result())
                except Exception as exc:  # noqa: BLE001 - a dead worker: the timing process retries
                    out.extend(Outcome(j, 0.0, f"worker failed: {exc}"[:ERROR_CHARS])
                               for j in chain)
                    broken = True  # a broken pool cannot take more work; the next run starts one
            if not finished:  # nothing ended for stall_s: what is in flight hangs
                for fut in pending:
                    chain = futures[fut]
                    if fut.running():
                        self.hung.add(chain[0].compile_key())
                        out.append(Outcome(chain[0], self.stall_s, f"timeout: no first call "
                                           f"ended within {self.stall_s:g} s (a hang?)"))
                    else:
                        out.append(Outcome(chain[0], 0.0, "not run: the pool was stopped "
                                           "after a hang"))
                self._kill()
                pending = set()
        if broken:
            self.close()
        seconds = time.perf_counter() - t0
        self.done.update(o.job.compile_key() for o in out if o.error is None)
        if self.log_path is not None:
            self._log(phase, out, seconds)
        return out

    def _log(self, phase: str, out: list[Outcome], seconds: float) -> None:
        errors = [o for o in out if o.error]
        line = {"phase": phase, "jobs": len(out),
                "chains": len({o.job.compile_key() for o in out}),
                "workers": self.workers, "seconds": round(seconds, 3),
                "job_seconds": round(sum(o.seconds for o in out), 3), "errors": len(errors),
                "first_errors": [f"{o.job.backend} {o.job.problem.layout.name} "
                                 f"N={o.job.problem.n_ctx}: {o.error}" for o in errors[:3]]}
        path = Path(self.log_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


# ----------------------------------------------------------------------------- in the worker
_CACHE: dict = {}  # this worker's last problem: its layouts (per block) and inputs


def _init_worker() -> None:
    """Worker set-up: stdout onto stderr; TorchInductor compiles in this process alone (the
    pool is the parallelism; by default each worker would start a pool of its own)."""
    sys.stdout.flush()
    os.dup2(2, 1)
    try:
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = 1
    except ImportError:  # a torch without inductor: nothing to set
        pass


def run_chain(chain: list[Job], device: str) -> list[Outcome]:
    """Make the jobs' first calls in order until one succeeds; free this worker's tensors
    after."""
    out = []
    use_device(device)
    try:
        for job in chain:
            t0 = time.perf_counter()
            try:
                first_call(job, torch.device(device))
                error = None
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
            out.append(Outcome(job, time.perf_counter() - t0, error))
            if error is None:
                break
    finally:
        _CACHE.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def first_call(job: Job, device: torch.device) -> None:
    """One call of the job's backend, as ``measure`` makes it (forward, or forward+backward)."""
    if os.environ.get(FAULT_ENV) == f"hang:{job.backend}":
        time.sleep(3600)

    prob = job.problem
    key = (prob.layout, prob.n_ctx, prob.heads, prob.batch, prob.dtype, prob.mode, prob.seed)
    if _CACHE.get("key") != key:
        _CACHE.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _CACHE.update(key=key, layouts={}, inputs=prob.inputs(device))
    layouts = _CACHE["layouts"]
    if job.block not in layouts:
        base = layouts.get(None) or prob.build_layout()
        layouts[None] = base
        layouts[job.block] = base if job.block is None else base.reblock(job.block)
    layout = layouts[job.block]
    q, k, v = _CACHE["inputs"]
    module = backends.load(job.backend)
    do = torch.ones_like(q) if prob.mode == "fwd+bwd" else None
    run = closure(module, q, k, v, layout, prob.head_dim ** -0.5, json.loads(job.config),
                  prob.mode, do)
    try:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        for t in (q, k, v):
            t.grad = None
