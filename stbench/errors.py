"""Error types shared across the package, at the bottom of the import graph (this module
imports nothing of ours): a kernel raises BackendUnavailable without importing the registry
(stbench/backends.py, which re-exports these names)."""


class BackendUnavailable(RuntimeError):
    """A backend cannot run here; the message says why and how to fix it."""


class UnknownBackend(ValueError):
    """No backend of that name is registered."""
