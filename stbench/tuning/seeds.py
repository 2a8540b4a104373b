"""Where the tuner's search starts: the best known configurations of one backend for a problem.

In order (``known_configs``), each a (block, config):

1. this problem's pick in the local tuning cache (this environment) and in the picks shipped
   for this GPU model (``tuning/shipped.py``);
2. the same, tuned for the other mode (a forward pick's tiles for a forward+backward search,
   and the other way round);
3. the shipped picks of the same layout spec, heads, head dim and dtype at the nearest N below
   and above (tiles that win at N = 32768 are the likely winners at 65536).

``indices`` maps them onto a search's candidates (the same block, and the candidate's config
agreeing with every key the known one names: known configs from older results may lack a key the
space has since gained); those the space does not hold are dropped. The strategies evaluate the
known candidates first and descend from the best of them (``tuning/local.py``).
"""

from __future__ import annotations

import json

from stbench.tuning import cache, shipped

MAX_SEEDS = 8
MODES = ("fwd", "fwd+bwd")


def _cache_configs(layout_hash, problem, mode, name, cache_path) -> list[tuple]:
    try:
        e = cache.lookup(layout_hash, problem.batch, problem.head_dim, problem.dtype, mode,
                         "time", path=cache_path)
    except Exception:  # noqa: BLE001 - a broken cache only loses a start
        return []
    per = ((e or {}).get("per_backend") or {}).get(name)
    if not isinstance(per, dict) or not isinstance(per.get("config"), dict):
        return []
    return [(per.get("block"), per["config"])]


def _shipped_configs(prob: dict | None, name: str) -> list[tuple]:
    if prob is None:
        return []
    return [(p["block"], p["config"]) for p in prob["picks"] if p["backend"] == name]


def known_configs(problem, layout, name: str, *, cache_path=None, gpu=None,
                  shipped_path=None) -> list[tuple]:
    """[(block, config)] best known first, for backend ``name`` on ``problem`` (``layout``: its
    layout as built); gpu / shipped_path: which shipped picks (default: this machine's GPU)."""
    other = MODES[1 - MODES.index(problem.mode)]
    out = []
    for mode in (problem.mode, other):
        out += _cache_configs(layout.content_hash, problem, mode, name, cache_path)
        out += _shipped_configs(
            shipped.lookup(layout.content_hash, problem.batch, problem.head_dim, problem.dtype,
                           mode, gpu=gpu, path=shipped_path), name)
    same = [p for p in shipped.problems(gpu=gpu, path=shipped_path)
            if (p["layout"], p["heads"], p["head_dim"], p["dtype"], p["mode"]) == (
                problem.layout.name, problem.heads, problem.head_dim, problem.dtype,
                problem.mode) and p["n_ctx"] != problem.n_ctx]
    below = [p for p in same if p["n_ctx"] < problem.n_ctx]
    above = [p for p in same if p["n_ctx"] > problem.n_ctx]
    for near in (max(below, key=lambda p: p["n_ctx"], default=None),
                 min(above, key=lambda p: p["n_ctx"], default=None)):
        out += _shipped_configs(near, name)
    seen, unique = set(), []
    for block, config in out:
        key = (block, json.dumps(config, sort_keys=True))
        if key not in seen:
            seen.add(key)
            unique.append((block, config))
    return unique[:MAX_SEEDS]


def _agrees(cand_config: dict, known: dict, keys_of) -> bool:
    return all(k in cand_config and cand_config[k] == v for k, v in keys_of(known).items())


def indices(cands, known, keys_of=dict) -> list[int]:
    """Indices into ``cands`` (Candidates) of the ``known`` (block, config) pairs, in order, each
    the first candidate at that block agreeing with every key of ``keys_of(config)``."""
    out = []
    for block, config in known:
        for i, c in enumerate(cands):
            if c.block == block and _agrees(c.config, config, keys_of):
                if i not in out:
                    out.append(i)
                break
    return out
