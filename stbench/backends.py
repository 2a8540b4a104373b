"""The backend registry: one table, lazy imports, equal terms for every backend.

Every backend is a module that defines

    check_available(device: torch.device, dtype: torch.dtype) -> None
        raise BackendUnavailable(reason-with-fix) when it cannot run there;
    attention(q, k, v, layout, scale: float, config: dict | None = None) -> Tensor
        q, k, v [B, H, N, D] -> out [B, H, N, D], the semantics of DESIGN.md, differentiable
        with respect to q, k and v when ``BackendInfo.backward`` is true;
    config_space(layout, head_dim: int, dtype: torch.dtype) -> list[dict]
        the tunable configurations (may be a single ``{}``) for the autotuner;
    supports(layout) -> str | None     (optional)
        None if the layout can run, else the reason it cannot (for example sdpa on a
        layout that is neither full nor causal).

Planning and compilation are cached inside the backend (``layouts.plan_for``), so a second call
with the same layout and shapes times the kernel alone.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

import torch

from .errors import BackendUnavailable, UnknownBackend  # defined there, imported from here too


@dataclass(frozen=True)
class BackendInfo:
    name: str
    module: str  # import path of the module implementing the interface above
    requires: tuple[str, ...]  # top-level packages that must be importable
    install_hint: str  # the fix when a required package is missing
    needs_gpu: bool  # True: only on CUDA tensors (a backend may still add its own CPU path)
    backward: bool  # computes gradients for q, k, v
    reference: bool = False  # the oracle others are checked against
    peer: bool = False  # a competitor measured side by side, not one of ours
    description: str = ""


REGISTRY: dict[str, BackendInfo] = {
    info.name: info
    for info in (
        BackendInfo(
            "dense", "stbench.reference.dense", ("torch",), "pip install torch",
            needs_gpu=False, backward=True, reference=True,
            description="dense masked attention, chunked; the exact reference",
        ),
        BackendInfo(
            "triton", "stbench.kernels.triton.backend", ("triton",), "pip install triton",
            needs_gpu=True, backward=True,
            description="fused block-sparse flash attention in Triton (CPU: TRITON_INTERPRET=1)",
        ),
        BackendInfo(
            "cupy", "stbench.kernels.cupy.backend", ("cupy",), "pip install 'stbench[cupy]'",
            needs_gpu=True, backward=True,
            description="CUDA C++ tensor-core kernels launched through CuPy RawModule",
        ),
        BackendInfo(
            "flex", "stbench.kernels.flex", ("torch",), "pip install 'torch>=2.5'",
            needs_gpu=True, backward=True, peer=True,
            description="PyTorch FlexAttention (compiled), the layout given as a BlockMask",
        ),
        BackendInfo(
            "flex_flash", "stbench.kernels.flex_flash", ("torch", "flash_attn"),
            "pip install 'stbench[fa4]'", needs_gpu=True, backward=True, peer=True,
            description="FlexAttention with BACKEND='FLASH' (FlashAttention-4's CuTe kernels), "
            "the same BlockMask as flex; sm90+",
        ),
        BackendInfo(
            "fa4", "stbench.kernels.fa4", ("torch", "flash_attn"), "pip install 'stbench[fa4]'",
            needs_gpu=True, backward=True, peer=True,
            description="FlashAttention-4 (flash_attn.cute): full / causal / token window, "
            "else its block-sparse tensors from the plan; sm90+",
        ),
        BackendInfo(
            "sdpa", "stbench.kernels.sdpa", ("torch",), "pip install torch",
            needs_gpu=False, backward=True, peer=True,
            description="torch scaled_dot_product_attention; full or causal layouts only",
        ),
        BackendInfo(
            "gluon", "stbench.kernels.gluon.backend", ("triton",), "pip install 'triton>=3.5'",
            needs_gpu=True, backward=True,
            description="hand-scheduled Hopper forward in Gluon (TMA ring, warp-specialised "
                        "wgmma; block 128, 16-bit); backward through the Triton kernels",
        ),
        BackendInfo(
            "flex_predicate", "stbench.flex_predicate", ("torch",), "pip install 'torch>=2.5'",
            needs_gpu=True, backward=True, peer=True,
            description="PyTorch FlexAttention on create_block_mask over the layout's token rule "
            "(the paper's masks, as a user writes them)",
        ),
    )
}

# When nothing is tuned, backend='auto' takes the first of these that can run (compiled ones
# before interpreted ones: ``interpreted``).
AUTO_FALLBACK_ORDER = ("triton", "cupy", "dense")


def names() -> list[str]:
    return list(REGISTRY)


def info(name: str) -> BackendInfo:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownBackend(
            f"backend={name!r} is not registered: choose one of {', '.join(REGISTRY)} or 'auto'"
        ) from None


def load(name: str) -> ModuleType:
    """Import backend ``name``'s module; BackendUnavailable names the missing package."""
    spec = info(name)
    for pkg in spec.requires:
        if importlib.util.find_spec(pkg) is None:
            raise BackendUnavailable(
                f"backend {name!r} needs the package {pkg!r}, which is not installed: "
                f"{spec.install_hint}"
            )
    try:
        return importlib.import_module(spec.module)
    except ImportError as exc:
        raise BackendUnavailable(f"backend {name!r} failed to import ({exc}): {spec.install_hint}")


def unavailable_reason(name: str, device, dtype=torch.float32, layout=None,
                       head_dim: int | None = None) -> str | None:
    """None if backend ``name`` can run on ``device`` with ``dtype`` (and ``layout``, and
    ``head_dim`` where the backend builds only some: its optional ``check_head_dim``), else why."""
    try:
        module = load(name)
        module.check_available(torch.device(device), dtype)
        if head_dim is not None and hasattr(module, "check_head_dim"):
            try:
                module.check_head_dim(head_dim)
            except ValueError as exc:  # the head dim is a property of the inputs, not a bug
                return str(exc)
        if layout is not None and hasattr(module, "supports"):
            return module.supports(layout)
    except BackendUnavailable as exc:
        return str(exc)
    return None


def interpreted(name: str, device) -> bool:
    """Whether backend ``name`` would run emulated on ``device``: a GPU backend given CPU tensors
    runs only under an interpreter (Triton's, with TRITON_INTERPRET=1), tens of times slower
    than a compiled CPU backend."""
    return info(name).needs_gpu and torch.device(device).type == "cpu"


def available(device, dtype=torch.float32, layout=None) -> list[str]:
    """Registered backends that can run here."""
    return [n for n in REGISTRY if unavailable_reason(n, device, dtype, layout) is None]
