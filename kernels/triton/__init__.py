"""Backend ``triton``: fused block-sparse flash attention (forward and backward) in Triton.

Modules: ``backend`` (the registry interface), ``op`` (autograd.Function and the torch.library
custom op), ``forward`` / ``backward`` (kernels), ``tiles`` (tile lists derived from the device
plan), ``compose`` (exact split of the merged strided head), ``config`` (tunables and the
autotuner's space), ``common`` (shared Triton helpers), ``interpret`` (CPU interpreter shims).
Kernel notes and measurements: NOTES.md.
"""
