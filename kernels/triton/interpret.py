"""Compatibility shim for Triton's CPU interpreter (TRITON_INTERPRET=1) under NumPy >= 2.3.

The interpreter (triton 3.6) keeps every scalar as a 1-element array and converts it for
``range(start, end)`` with ``int(array)``, which NumPy >= 2.3 refuses for arrays that are not
0-dimensional ("only 0-dimensional arrays can be converted to Python scalars"). Loop bounds
loaded from memory, which every kernel here uses, then fail. ``apply()`` wraps the
interpreter's tensor patch so ``__index__`` goes through ``.item()``; it changes nothing when
the interpreter is off or compiled kernels run on a GPU.
"""

from __future__ import annotations

import os


def apply() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_stbench_shim", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._stbench_shim = True
    interpreter._patch_lang_tensor = patched
