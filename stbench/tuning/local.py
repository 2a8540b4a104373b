"""A cheaper search: a few seeded starts, then greedy descent over one-parameter neighbours.

Candidates are points in a discrete space whose coordinates are the layout block and the
backend's config keys (``coords(c)``). Algorithm:

    starts   = the first candidate of each block (a backend lists its default config first)
               + ``random_starts`` others drawn with a seeded RNG
    current  = the best start
    repeat:  evaluate every unevaluated candidate that differs from ``current`` in exactly one
             coordinate; move to the best if it improves, else stop

Evaluations: about (#blocks + random_starts) + rounds x (#values per coordinate), against the
exhaustive search's #candidates. Every tunable here changes one knob at a time in the backend's
space (tiles, warps, stages, block), so a local optimum in that neighbourhood is what an expert's
one-knob-at-a-time tuning finds; the sweep's item-5 evaluation measures how far it is from the
exhaustive best.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence


def coords(cand) -> dict:
    """The coordinates of a candidate: its block and its config's (key, value) pairs."""
    return {"block": cand.block, **cand.config}


def differs_in_one(a: dict, b: dict) -> bool:
    keys = a.keys() | b.keys()
    return sum(a.get(k) != b.get(k) for k in keys) == 1


def search(candidates: Sequence, evaluate: Callable[[object], float], *, seed: int = 0,
           random_starts: int = 2, max_rounds: int = 8, budget: int | None = None):
    """The best candidate found (lowest finite score) or None; ``evaluate`` as in exhaustive.
    ``budget`` caps the evaluations (None: no cap): once spent, an unevaluated candidate
    scores infinity, so the search keeps the best it has measured."""
    if not candidates:
        return None
    cands = list(candidates)
    scores: dict[int, float] = {}

    def score(i: int) -> float:
        if i not in scores:
            if budget is not None and len(scores) >= budget:
                return math.inf
            scores[i] = evaluate(cands[i])
        return scores[i]

    seen_blocks, starts = set(), []
    for i, c in enumerate(cands):
        if c.block not in seen_blocks:
            seen_blocks.add(c.block)
            starts.append(i)
    rest = [i for i in range(len(cands)) if i not in starts]
    rng = random.Random(seed)
    starts += rng.sample(rest, min(random_starts, len(rest)))
    current = min(starts, key=score)
    for _ in range(max_rounds):
        here = coords(cands[current])
        neigh = [i for i in range(len(cands))
                 if i != current and differs_in_one(here, coords(cands[i]))]
        if not neigh:
            break
        best = min(neigh, key=score)
        if score(best) < score(current):
            current = best
        else:
            break
    return cands[current] if math.isfinite(score(current)) else None
