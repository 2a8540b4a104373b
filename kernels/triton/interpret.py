"""Compatibility shims for Triton's CPU interpreter (TRITON_INTERPRET=1), triton 3.6.

1. The interpreter keeps every scalar as a 1-element array and converts it for
   ``range(start, end)`` with ``int(array)``, which NumPy >= 2.3 refuses for arrays that are
   not 0-dimensional ("only 0-dimensional arrays can be converted to Python scalars"). Loop
   bounds loaded from memory, which every kernel here uses, then fail: ``__index__`` is routed
   through the first element instead.
2. The interpreter stores bfloat16 as raw uint16 bits and its ``tl.dot`` multiplies those
   integers (a 16 x 16 bf16 dot is off by ~3e10): bf16 operands are converted to float32 first
   (exact: every bf16 is a float32), as the tensor cores do.

``apply()`` changes nothing when the interpreter is off or compiled kernels run on a GPU.
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

    import numpy as np
    import triton.language as tl

    builder = interpreter.InterpreterBuilder
    dot = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        def f32(x):
            if x.dtype.scalar == tl.bfloat16:
                data = interpreter._convert_float(x.data, tl.bfloat16, tl.float32, None)
                return interpreter.TensorHandle(
                    data.view(np.float32).reshape(x.data.shape), tl.float32
                )
            return x

        return dot(self, f32(a), f32(b), d, input_precision, max_num_imprecise_acc)

    builder.create_dot = create_dot
