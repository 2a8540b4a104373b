"""torch.distributed for stbench: one process per GPU, started by torchrun, nothing home-made.

torchrun (``torch.distributed.run``) starts the processes and gives each its place in the
environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT);
``init`` joins the process group and binds the process to ``cuda:LOCAL_RANK``
(``torch.cuda.set_device``), or to the CPU where there is no GPU (tests: gloo). Outside torchrun
it returns a single process (rank 0 of 1, no group) and every collective below degrades to the
local value, so callers have one code path.

Process-group backends: NCCL for tensors on GPUs (data-parallel training), gloo for the CPU and
for control messages (the sharded sweep exchanges a few Python objects between long stretches of
measuring, which gloo's CPU transport suits). NVLink multicast (NVLS) is never turned on here:
``NCCL_NVLS_ENABLE`` defaults to 0 before an NCCL group is made, and a value the user set is
kept.

``launch(nproc, argv)`` starts ``python -m stbench ARGV`` on ``nproc`` local processes through
torchrun's own entry point (``--standalone``: a rendezvous on this host with a free port);
``launch_if_asked`` is the ``--devices all|K`` option of ``stbench sweep`` and ``stbench model
train|eval|table2``.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # what torchrun sets for every process
DEFAULT_TIMEOUT_S = 1800  # how long a collective waits for the slowest rank (gloo's default)


class DistributedError(ValueError):
    """A multi-process setting is impossible here; the message names the setting and the fix."""


@dataclass(frozen=True)
class Ranks:
    """This process's place: ``rank`` of ``world_size``, ``local_rank`` of ``local_world_size``
    processes on its host, its ``device`` ("cuda:LOCAL_RANK" or "cpu"), and the process group's
    ``backend`` ("nccl", "gloo"; None: a single process without a group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: str = "cpu"
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True in a process that torchrun started."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def rank_device(local_rank: int, device: str | None) -> str:
    """The device of the process with ``local_rank``: ``cuda:LOCAL_RANK`` when ``device`` is None
    or "cuda" and a GPU is present, "cpu" when asked (or no GPU). An explicit "cuda:N" is refused:
    under torchrun each process takes its own GPU."""
    if device in (None, "auto", "cuda"):
        if not torch.cuda.is_available():
            if device == "cuda":
                raise DistributedError("--device cuda: no CUDA GPU here (use --device cpu)")
            return "cpu"
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DistributedError(
                f"LOCAL_RANK={local_rank} but this host has {count} GPU(s): start at most "
                f"{count} processes per node (--nproc-per-node / --devices)")
        return f"cuda:{local_rank}"
    if device == "cpu":
        return "cpu"
    raise DistributedError(f"--device {device}: under torchrun each process uses "
                           "cuda:LOCAL_RANK; pass --device cuda (or cpu), not a GPU index")


def use_device(device) -> None:
    """Make ``device`` the current CUDA device when it names one with an index: Triton and CuPy
    launch on the current device, whatever device the tensors are on (a sweep's rank, its
    isolation workers and its precompile workers all run on ``cuda:LOCAL_RANK``)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)


def init(device: str | None = None, backend: str | None = None,
         timeout_s: float = DEFAULT_TIMEOUT_S) -> Ranks:
    """Join torchrun's process group (a single process outside torchrun); see the module doc.
    ``backend``: None picks NCCL on GPUs and gloo on the CPU."""
    if not launched():
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return Ranks(device=device)
    import torch.distributed as dist

    env = {k: int(os.environ[k]) for k in TORCHRUN_ENV}
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"]))
    dev = rank_device(env["LOCAL_RANK"], device)
    use_device(dev)
    backend = backend or ("nccl" if dev.startswith("cuda") else "gloo")
    kwargs = {}
    if backend == "nccl":
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # never NVLink multicast (module doc)
        kwargs["device_id"] = torch.device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return Ranks(env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], local_world, dev, backend)


def close(ranks: Ranks) -> None:
    """Leave the process group (nothing for a single process)."""
    import torch.distributed as dist

    if ranks.backend is not None and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device: str | None = None, backend: str | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S):
    """``init`` for the ``with`` block, then ``close``."""
    ranks = init(device, backend, timeout_s)
    try:
        yield ranks
    finally:
        close(ranks)


# ----------------------------------------------------------------------------- collectives
def broadcast(obj, ranks: Ranks):
    """Rank 0's ``obj`` on every rank (a picklable Python object)."""
    if ranks.backend is None:
        return obj
    import torch.distributed as dist

    box = [obj if ranks.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj, ranks: Ranks) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if ranks.backend is None:
        return [obj]
    import torch.distributed as dist

    out = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


def gather(obj, ranks: Ranks) -> list | None:
    """[obj of each rank] on rank 0, None elsewhere."""
    if ranks.backend is None:
        return [obj]
    import torch.distributed as dist

    out = [None] * ranks.world_size if ranks.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_reduce_sum(values, ranks: Ranks) -> list[float]:
    """Element-wise sums over the ranks of a list of numbers, in float64."""
    if ranks.backend is None:
        return [float(v) for v in values]
    import torch.distributed as dist

    device = ranks.device if ranks.backend == "nccl" else "cpu"
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(ranks: Ranks) -> None:
    if ranks.backend is not None:
        import torch.distributed as dist

        dist.barrier()


# ----------------------------------------------------------------------------- launching
def device_count(spec: str) -> int:
    """Processes for ``--devices SPEC``: "all" = every visible GPU, or a positive integer (on a
    machine without a GPU: that many CPU processes, for trying the path out)."""
    if spec == "all":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise DistributedError("--devices all: no CUDA GPU here; give a number of CPU "
                                   "processes (--devices 2) or run on a GPU machine")
        return n
    try:
        n = int(spec)
    except ValueError:
        n = 0
    if n < 1:
        raise DistributedError(f"--devices {spec!r}: write 'all' or a positive integer")
    if torch.cuda.is_available() and n > torch.cuda.device_count():
        raise DistributedError(f"--devices {n}: only {torch.cuda.device_count()} GPU(s) here")
    return n


def without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``NAME VALUE`` / ``NAME=VALUE`` (what a launcher passes on)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def launch_if_asked(devices: str | None, argv: list[str]) -> int | None:
    """``--devices SPEC`` outside torchrun: run ``stbench ARGV`` (without ``--devices``) under
    torchrun and return its exit code; None when this process is to do the work."""
    if not devices or launched():
        return None
    return launch(device_count(devices), without_option(argv, "--devices"))


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m stbench ARGV`` in ``nproc`` processes on this host under torchrun and
    return the exit code (1 when a process failed; torchrun prints which and why)."""
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # the processes import the installed stbench, never a source folder in the current
    # directory (python -P; a checkout's stbench/ lacks the kernels, layouts and reference
    # that the install maps into it)
    os.environ.setdefault("PYTHONSAFEPATH", "1")
    try:
        run.main(["--standalone", f"--nproc-per-node={nproc}", "--module", "stbench", *argv])
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(f"stbench: rank {rank} of {nproc} exited with code {failure.exitcode} (its "
              "output is above)", file=sys.stderr)
        return failure.exitcode if isinstance(failure.exitcode, int) and failure.exitcode > 0 \
            else 1
    return 0
