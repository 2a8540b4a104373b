"""The environment a measurement was taken in: GPU, driver, CUDA, library versions, git sha.

Every result row and every tuning-cache key carries it. No hostname or user name is recorded:
a row names its machine by ``host_id``, a digest of the hostname (it tells the hosts of a
multi-node run apart; run ``host_id`` on a machine to recognise its rows). The GPU is the
process's current CUDA device (the rank's own under torchrun, once it has called
``torch.cuda.set_device``).
Versions are read from package metadata, never by importing the package (importing triton here
would fix its mode before ``TRITON_INTERPRET`` can be set); subprocesses use fixed argv lists.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
import re
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

SUBPROCESS_TIMEOUT_S = 5
HOST_ID_HEX = 10  # hex digits of the hostname digest in ``host_id``
# Distribution names under which CuPy is installed (wheels are per CUDA major version).
CUPY_DISTRIBUTIONS = ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy")


@dataclass(frozen=True)
class Environment:
    gpu: str | None  # device name, None on a CPU-only machine
    gpu_count: int
    gpu_memory_bytes: int | None  # total memory of device 0
    driver: str | None  # NVIDIA driver version (nvidia-smi), None when unknown
    cuda: str | None  # CUDA version torch was built with
    torch: str
    triton: str | None
    cupy: str | None
    python: str
    git_sha: str | None  # None outside a git checkout
    git_dirty: bool | None  # uncommitted changes to tracked files
    triton_interpret: bool  # Triton kernels ran under the CPU interpreter

    def to_dict(self) -> dict:
        return asdict(self)


def gpu_model(device_name: str | None) -> str | None:
    """The GPU model as a folder- and file-friendly name: 'NVIDIA H200' -> 'h200',
    'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'; None for no name (no GPU) or nothing left."""
    if not device_name:
        return None
    name = device_name.lower().removeprefix("nvidia").strip()
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or None


@functools.lru_cache(maxsize=1)
def host_id() -> str:
    """This machine's name in result rows: ``host-`` and a BLAKE2b digest of its hostname."""
    digest = hashlib.blake2b(socket.gethostname().encode(), digest_size=8).hexdigest()
    return f"host-{digest[:HOST_ID_HEX]}"


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _run(argv: list[str], cwd: Path | None = None) -> str | None:
    try:
        proc = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _driver_version() -> str | None:
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def _git(repo: Path) -> tuple[str | None, bool | None]:
    sha = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    if sha is None:
        return None, None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
    return sha, (bool(status) if status is not None else None)


@functools.lru_cache(maxsize=1)
def _versions() -> dict:
    import os

    cuda_ok = torch.cuda.is_available()
    index = torch.cuda.current_device() if cuda_ok else None
    return dict(
        gpu=torch.cuda.get_device_name(index) if cuda_ok else None,
        gpu_count=torch.cuda.device_count() if cuda_ok else 0,
        gpu_memory_bytes=torch.cuda.get_device_properties(index).total_memory if cuda_ok else None,
        driver=_driver_version() if cuda_ok else None,
        cuda=torch.version.cuda,
        torch=torch.__version__,
        triton=_dist_version("triton"),
        cupy=_dist_version(*CUPY_DISTRIBUTIONS),
        python=platform.python_version(),
        triton_interpret=os.environ.get("TRITON_INTERPRET") == "1",
    )


@functools.lru_cache(maxsize=1)
def collect() -> Environment:
    """The current environment (cached for the process)."""
    sha, dirty = _git(Path(__file__).resolve().parent.parent)
    return Environment(git_sha=sha, git_dirty=dirty, **_versions())


def cache_fields() -> list:
    """The environment fields a tuning result depends on, without running git."""
    v = _versions()
    return [v["gpu"], v["driver"], v["cuda"], v["torch"], v["triton"], v["cupy"],
            v["triton_interpret"]]
