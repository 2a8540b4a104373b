"""CuTe DSL mask_mods for the ``fa4`` peer (imported only where flash-attn-4 runs).

FA4 calls a mask_mod on the blocks of its block-sparse "mask" lists (never on FULL blocks) as
``mask_mod(batch, head, q_idx, kv_idx, seqlen_info, aux_tensors)`` with one-element Int32
TensorSSA indices (the query and key token positions in the layout's order) and keeps the score
where it returns true. Both masks are exact on every block they see (``kernels/fa4.py``):

- ``band_mask``: ``lo[h] <= q - k < hi[h]``; aux ``(lo, hi)``, int32 [H];
- ``table_mask(b)``: the bit ``k % b`` of row ``q % b`` of the packed words of slot
  ``slots[head_pattern[h], q // b, k // b]``; aux ``(slots [P, nb, nb], head_pattern [H],
  words [3 + M, b, ceil(b / 32)])``, int32 (``fa4.table_mask_tensors``).

FA4 keys its compile cache by the mask_mod's source and captured values, so one kernel serves
every layout of a kind and block size; the layout itself travels in the aux tensors.
"""

from __future__ import annotations

import functools

import cutlass
import cutlass.cute as cute
from flash_attn.cute import utils

WORD_BITS = 32


@cute.jit
def band_mask(batch, head, q_idx, kv_idx, seqlen_info, aux_tensors):
    lo, hi = aux_tensors[0], aux_tensors[1]
    h = head[0]
    delta = q_idx - kv_idx
    return ((delta >= utils.scalar_to_ssa(lo[h], cutlass.Int32))
            & (delta < utils.scalar_to_ssa(hi[h], cutlass.Int32)))


@functools.lru_cache(maxsize=None)
def table_mask(block: int):
    """The exact table mask for layouts at ``block`` (see the module docstring)."""

    @cute.jit
    def mask(batch, head, q_idx, kv_idx, seqlen_info, aux_tensors):
        slots, head_pattern, words = aux_tensors[0], aux_tensors[1], aux_tensors[2]
        q, k = q_idx[0], kv_idx[0]
        slot = slots[head_pattern[head[0]], q // block, k // block]
        col = k % block
        word = words[slot, q % block, col // WORD_BITS]
        bit = (word >> (col % WORD_BITS)) & 1
        return (utils.scalar_to_ssa(bit, cutlass.Int32)
                == utils.scalar_to_ssa(1, cutlass.Int32))

    return mask


def mask_mod(kind: str | None, block: int):
    """The mask_mod for ``kind`` ('band', 'table' or None: every block FULL, no mask)."""
    if kind is None:
        return None
    return band_mask if kind == "band" else table_mask(block)
