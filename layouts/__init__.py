"""Layouts: what may attend to what. Generators return exact, inspectable ``Layout`` objects."""

from .generators import (
    bigbird,
    causal,
    fixed,
    from_block_mask,
    from_predicate,
    from_token_mask,
    local,
    longformer,
    merged_strided,
    sliding_window,
    st_mix,
    strided,
    variable,
)
from .layout import (
    ALLOWED_BLOCKS,
    DIAG,
    FULL,
    PARTIAL,
    Layout,
    LayoutError,
)
from .plan import Plan, build_plan, plan_for
from .size import LayoutSizeError, set_size_limit, size_limit
from .transforms import reblock, stack_heads, union

__all__ = [
    "ALLOWED_BLOCKS", "DIAG", "FULL", "PARTIAL", "Layout", "LayoutError", "LayoutSizeError",
    "Plan", "build_plan", "plan_for", "set_size_limit", "size_limit",
    # generators
    "bigbird", "causal", "fixed", "from_block_mask", "from_predicate", "from_token_mask",
    "local", "longformer", "merged_strided", "sliding_window", "st_mix", "strided", "variable",
    # transforms
    "reblock", "stack_heads", "union",
]
