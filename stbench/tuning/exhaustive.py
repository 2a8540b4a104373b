"""Exhaustive search: evaluate every candidate, keep the best (the yardstick for cheaper ones)."""

from __future__ import annotations

import math
from typing import Callable, Sequence


PREPARE_BATCH = 32  # candidates handed to ``prepare`` at a time


def search(candidates: Sequence, evaluate: Callable[[object], float], *, seed: int = 0,
           budget: int | None = None, prepare: Callable[[list], None] | None = None,
           known: Sequence[int] = ()):
    """The candidate with the lowest finite ``evaluate`` score, or None if none is valid.
    ``evaluate`` returns a score to minimise (math.inf for an invalid candidate); ``budget``
    caps the number of evaluations (None: all). ``seed`` is unused (deterministic order).
    ``prepare(batch)``, when given, is called with each next PREPARE_BATCH candidates before
    they are evaluated (to compile them side by side: ``tuning/precompile.py``). ``known``:
    indices of candidates evaluated first (under a budget, the known best is never cut)."""
    first = [i for i in dict.fromkeys(known) if 0 <= i < len(candidates)]
    firsts = set(first)
    order = first + [i for i in range(len(candidates)) if i not in firsts]
    cands = [candidates[i] for i in order]
    cands = cands[:budget] if budget is not None else cands
    best, best_score = None, math.inf
    for i, cand in enumerate(cands):
        if prepare is not None and i % PREPARE_BATCH == 0:
            prepare(cands[i:i + PREPARE_BATCH])
        score = evaluate(cand)
        if score < best_score:
            best, best_score = cand, score
    return best
