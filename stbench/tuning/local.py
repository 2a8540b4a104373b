"""A cheaper search: a few seeded starts, then greedy descent over one-parameter neighbours.

Candidates are points in a discrete space whose coordinates are the layout block and the
backend's config keys (``coords(c)``). Algorithm:

    known    = candidates known to be good (``known``: the tuner passes the best known
               configurations, tuning/autotune.py), evaluated first
    current  = descend(the best known)                       (when there are known ones)
    starts   = the first candidate of each block (a backend lists its default config first)
               + the first candidate of each value of a string-valued key (a kernel variant:
                 one-knob steps cannot cross between variants whose other knobs differ)
               + ``random_starts`` others drawn with a seeded RNG
    if the best start beats current: current = descend(the best start)
    descend(c): repeat: evaluate every unevaluated candidate that differs from c in exactly
             one coordinate; move to the best if it improves, else stop

Under a budget the known candidates and their neighbourhood come first, so a search seeded
with the known best reaches it (and what lies one knob away) within a few evaluations.

``prepare(cands)``, when given, is called with each batch of candidates about to be evaluated
(the starts, then each round's unevaluated neighbours, cut to the budget left) before any of
them is scored, so their kernels can be compiled side by side (``tuning/precompile.py``).

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

RANDOM_STARTS = 2


def coords(cand) -> dict:
    """The coordinates of a candidate: its block and its config's (key, value) pairs."""
    return {"block": cand.block, **cand.config}


def differs_in_one(a: dict, b: dict) -> bool:
    keys = a.keys() | b.keys()
    return sum(a.get(k) != b.get(k) for k in keys) == 1


def start_indices(cands: Sequence, seed: int = 0, random_starts: int = RANDOM_STARTS) -> list[int]:
    """Indices of the starts: the first candidate of each block, then of each value of each
    string-valued config key (a categorical variant), then ``random_starts`` others drawn with
    a seeded RNG (the same list for the same candidates and seed)."""
    seen, starts = set(), []
    for i, c in enumerate(cands):
        if ("block", c.block) not in seen:
            seen.add(("block", c.block))
            starts.append(i)
    for i, c in enumerate(cands):
        variants = {(k, v) for k, v in c.config.items() if isinstance(v, str)} - seen
        if variants:
            seen |= variants
            if i not in starts:
                starts.append(i)
    rest = [i for i in range(len(cands)) if i not in starts]
    rng = random.Random(seed)
    return starts + rng.sample(rest, min(random_starts, len(rest)))


def search(candidates: Sequence, evaluate: Callable[[object], float], *, seed: int = 0,
           random_starts: int = RANDOM_STARTS, max_rounds: int = 8, budget: int | None = None,
           prepare: Callable[[list], None] | None = None, known: Sequence[int] = ()):
    """The best candidate found (lowest finite score) or None; ``evaluate`` as in exhaustive.
    ``budget`` caps the evaluations (None: no cap): once spent, an unevaluated candidate
    scores infinity, so the search keeps the best it has measured. ``prepare``: see above.
    ``known``: indices of candidates to start from first."""
    if not candidates:
        return None
    cands = list(candidates)
    scores: dict[int, float] = {}

    def prepare_batch(indices: list[int]) -> None:
        if prepare is None:
            return
        todo = [i for i in dict.fromkeys(indices) if i not in scores]
        if budget is not None:
            todo = todo[:max(0, budget - len(scores))]
        if todo:
            prepare([cands[i] for i in todo])

    def score(i: int) -> float:
        if i not in scores:
            if budget is not None and len(scores) >= budget:
                return math.inf
            scores[i] = evaluate(cands[i])
        return scores[i]

    def descend(current: int) -> int:
        for _ in range(max_rounds):
            here = coords(cands[current])
            neigh = [i for i in range(len(cands))
                     if i != current and differs_in_one(here, coords(cands[i]))]
            if not neigh:
                break
            prepare_batch(neigh)
            best = min(neigh, key=score)
            if score(best) < score(current):
                current = best
            else:
                break
        return current

    current = None
    known = [i for i in dict.fromkeys(known) if 0 <= i < len(cands)]
    if known:
        prepare_batch(known)
        current = descend(min(known, key=score))
    starts = start_indices(cands, seed, random_starts)
    prepare_batch(starts)
    best_start = min(starts, key=score)
    if current is None or score(best_start) < score(current):
        current = descend(best_start)
    return cands[current] if math.isfinite(score(current)) else None
