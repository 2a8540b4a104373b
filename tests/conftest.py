"""Test set-up: Triton's interpreter when there is no GPU (set before triton is imported), the
``gpu`` marker's skip, and seeded random generators."""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

FAST = os.environ.get("STBENCH_FAST") == "1"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine: tox -e gpu)")
    skip_slow = pytest.mark.skip(reason="STBENCH_FAST=1 skips slow tests")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and FAST:
            item.add_marker(skip_slow)


@pytest.fixture
def gen(request):
    """A torch.Generator seeded from the test's name: fresh inputs per test, reproducible."""
    import zlib

    g = torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
    return g


@pytest.fixture
def device():
    return torch.device("cuda" if HAS_CUDA else "cpu")
