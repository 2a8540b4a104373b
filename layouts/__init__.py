"""Layouts: what may attend to what. Generators return exact, inspectable ``Layout`` objects."""

from .layout import (
    ALLOWED_BLOCKS,
    DIAG,
    FULL,
    PARTIAL,
    Layout,
    LayoutError,
)
from .plan import Plan, build_plan, plan_for

__all__ = [
    "ALLOWED_BLOCKS", "DIAG", "FULL", "PARTIAL", "Layout", "LayoutError", "Plan", "build_plan",
    "plan_for",
]
