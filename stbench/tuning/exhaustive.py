"""Exhaustive search: evaluate every candidate, keep the best (the yardstick for cheaper ones)."""

from __future__ import annotations

import math
from typing import Callable, Sequence


def search(candidates: Sequence, evaluate: Callable[[object], float], *, seed: int = 0,
           budget: int | None = None):
    """The candidate with the lowest finite ``evaluate`` score, or None if none is valid.
    ``evaluate`` returns a score to minimise (math.inf for an invalid candidate); ``budget``
    caps the number of evaluations (None: all). ``seed`` is unused (deterministic order)."""
    best, best_score = None, math.inf
    for i, cand in enumerate(candidates):
        if budget is not None and i >= budget:
            break
        score = evaluate(cand)
        if score < best_score:
            best, best_score = cand, score
    return best
