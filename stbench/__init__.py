"""stbench: autotuning and benchmarking of block-sparse attention (Sparse Transformer patterns).

    import stbench
    from stbench import layouts
    L = layouts.fixed(4096, block=32, stride=128, heads=8)
    out = stbench.attention(q, k, v, L, backend="auto")
"""

from stbench import layouts  # noqa: F401  (stbench.layouts, mapped from layouts/)
from stbench.api import attention, validate_inputs  # noqa: F401
from stbench.backends import BackendUnavailable, UnknownBackend  # noqa: F401

__version__ = "0.1.0"
__all__ = ["attention", "layouts", "BackendUnavailable", "UnknownBackend", "validate_inputs"]
