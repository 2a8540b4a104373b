"""Layout generators, one small module per family; all are re-exported by ``stbench.layouts``."""

from .deepspeed import bigbird, longformer, sliding_window, variable
from .fixed import fixed
from .local import causal, local
from .masks import from_block_mask, from_predicate, from_token_mask
from .mix import st_mix
from .strided import merged_strided, strided, strided_perm

__all__ = [
    "bigbird", "causal", "fixed", "from_block_mask", "from_predicate", "from_token_mask",
    "local", "longformer", "merged_strided", "sliding_window", "st_mix", "strided",
    "strided_perm", "variable",
]
