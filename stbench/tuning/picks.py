"""What ``stbench.attention`` runs when it is given no config: the tuned pick for the layout, the
inputs' shape and the call's mode, checked before it is used.

Mode: 'fwd+bwd' when q, k or v requires grad and grad mode is on, else 'fwd'. A pick is used only
in the mode it was tuned for (a forward+backward pick's forward tiles are not the fastest
forward's). Where the picks come from, in order:

1. the local tuning cache's entry for this environment (``tuning.cache``): for ``auto`` its
   overall best (maybe at another block), then its best at the layout's own block; for a named
   backend, that backend's best (``per_backend``);
2. the tuned picks shipped for this GPU model (``tuning.shipped``), fastest first (for a named
   backend, its own);
3. ``auto``: the first of ``backends.AUTO_FALLBACK_ORDER`` that runs here, at its built-in
   config; a named backend: its built-in config (``config=None``).

``auto`` takes compiled backends before interpreted ones: on a CPU a GPU backend runs only under
Triton's interpreter (``backends.interpreted``), so 1-3 are gone through once without those
backends and, only if nothing else runs, once with them.

Each pick is checked (``why_not``): a registered backend that runs here (device, dtype, head
dim), a block the layout re-blocks to exactly (the token pattern, so the answer, is unchanged)
and that the backend supports, and a config whose keys and values the backend's configuration
space has. A pick that fails is skipped, and the choice made says why in one warning
(``TunedPickWarning``, once per process and problem); nothing here raises for a bad cache or
shipped entry. A choice is memoised per (backend, layout, shape, dtype, device, mode, cache file
version), so a repeated call costs a dictionary lookup.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from stbench import backends, layouts
from stbench.tuning import cache, shipped

OBJECTIVE = "time"
MEMO_SIZE = 256
# _warn <- _choose <- <lambda> <- _Memo.get <- choose <- api.resolve_backend <- attention <- caller
WARN_STACKLEVEL = 8


class TunedPickWarning(UserWarning):
    """A tuned pick was skipped; the message says which, why, and what runs instead."""


@dataclass(frozen=True)
class Choice:
    """What to run: ``backend`` at ``config`` (None: its built-in one) on the layout re-blocked
    to ``block``; ``source`` says where it came from ('cache', 'shipped', 'default')."""

    backend: str
    config: dict | None
    block: int
    source: str


class _Memo:
    """A bounded least-recently-used memo keyed by plain values (a layout enters by its content
    hash, so the memo never keeps a layout alive)."""

    def __init__(self, size: int):
        self.size, self.items = size, OrderedDict()

    def get(self, key, compute):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = compute()
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return value

    def clear(self) -> None:
        self.items.clear()


_CHOICES = _Memo(MEMO_SIZE)
_CHECKS = _Memo(MEMO_SIZE)


def call_mode(*tensors: torch.Tensor) -> str:
    """'fwd+bwd' when a gradient will be taken through the call, else 'fwd'."""
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return "fwd+bwd" if grads else "fwd"


@functools.lru_cache(maxsize=16)
def reblocked(layout: layouts.Layout, block: int) -> layouts.Layout:
    """``layout`` at another block size, built once per (layout content, block)."""
    return layout.reblock(block)


def _space_error(module, name: str, config: dict, layout, head_dim: int, dtype) -> str | None:
    """Why ``config`` is not in backend ``name``'s configuration space, or None."""
    space = module.config_space(layout, head_dim, dtype) if hasattr(module, "config_space") \
        else [{}]
    values: dict = {}
    for cfg in space:
        for k, v in cfg.items():
            values.setdefault(k, []).append(v)
    for k, v in config.items():
        if k not in values:
            return (f"config key {k!r} is unknown to backend {name!r} (its keys: "
                    f"{', '.join(sorted(values)) or 'none'})")
        if not any(v == w and type(v) is type(w) for w in values[k]):
            return f"config[{k!r}]={v!r} is not a value backend {name!r} takes here"
    return None


def _why_not(name, config, block, layout, head_dim: int, dtype, device) -> str | None:
    if not isinstance(name, str) or name not in backends.REGISTRY:
        return f"backend {name!r} is not registered"
    if not isinstance(config, dict):
        return f"config {config!r} is not a dict"
    if block not in layouts.ALLOWED_BLOCKS:
        return f"block {block!r} is not one of {layouts.ALLOWED_BLOCKS}"
    why = backends.unavailable_reason(name, device, dtype, head_dim=head_dim)
    if why is not None:
        return why
    try:
        target = reblocked(layout, block)
    except (layouts.LayoutError, ValueError) as exc:
        return f"the layout does not re-block to {block} ({exc})"
    module = backends.load(name)
    why = module.supports(target) if hasattr(module, "supports") else None
    return why or _space_error(module, name, config, target, head_dim, dtype)


def why_not(pick: dict, layout, head_dim: int, dtype, device) -> str | None:
    """None if ``pick`` ({"backend", "config", "block"}) can run ``layout`` here, else why."""
    try:
        device = torch.device(device)
        key = (pick.get("backend"), json.dumps(pick.get("config"), sort_keys=True),
               pick.get("block"), layout.content_hash, head_dim, dtype, device)
        return _CHECKS.get(key, lambda: _why_not(pick.get("backend"), pick.get("config"),
                                                 pick.get("block"), layout, head_dim, dtype,
                                                 device))
    except Exception as exc:  # noqa: BLE001 - a bad entry must never break attention()
        return f"the pick could not be checked ({type(exc).__name__}: {exc})"


def _cache_picks(entry: dict | None, name: str, layout) -> list[dict]:
    """The candidate picks of a cache entry, best first (for 'auto', or for backend ``name``)."""
    if not isinstance(entry, dict):
        return []
    same = entry.get("same_block")
    same = dict(same, block=layout.block) if isinstance(same, dict) else None
    if name != "auto":
        per = entry.get("per_backend")
        per = per.get(name) if isinstance(per, dict) else None
        return [p for p in (per, entry, same) if isinstance(p, dict) and p.get("backend") == name]
    return [p for p in (entry, same) if p is not None]


def _cache_stamp(path) -> tuple | None:
    """(path, mtime, size) of the cache file: a new save makes a new memo key."""
    path = Path(path) if path is not None else cache.default_path()
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_mtime_ns, st.st_size)


def choose(name: str, layout, q: torch.Tensor, mode: str, cache_path=None,
           shipped_path=None) -> Choice | None:
    """The backend, config and block to run ``name`` ('auto' or a registered backend) on
    ``layout`` for q [B, H, N, D] in ``mode`` (see the module docstring); None when 'auto'
    finds nothing that runs here."""
    args = (name, int(q.shape[0]), int(q.shape[-1]), q.dtype, q.device, mode,
            _cache_stamp(cache_path), None if shipped_path is None else str(shipped_path),
            shipped.current_gpu() if shipped_path is None else None)
    return _CHOICES.get((layout.content_hash, *args), lambda: _choose(layout, *args))


def _choose(layout, name, batch, head_dim, dtype, device, mode, stamp, shipped_path,
            gpu) -> Choice | None:
    dt = str(dtype).removeprefix("torch.")
    found: list[tuple[str, dict]] = []
    if stamp is not None:
        try:
            entry = cache.lookup(layout.content_hash, batch, head_dim, dt, mode, OBJECTIVE,
                                 path=stamp[0])
            found += [("cache", p) for p in _cache_picks(entry, name, layout)]
        except Exception:  # noqa: BLE001 - a broken cache must never break attention()
            pass
    prob = shipped.lookup(layout.content_hash, batch, head_dim, dt, mode, gpu=gpu,
                          path=shipped_path)
    if prob is not None:
        found += [("shipped", p) for p in prob["picks"] if name in ("auto", p["backend"])]
    skipped, choice = [], None
    for allow_interpreted in ((False, True) if name == "auto" else (True,)):
        for source, pick in found:
            why = why_not(pick, layout, head_dim, dtype, device)
            if why is None:
                if not allow_interpreted and _interpreted(pick["backend"], device):
                    continue  # it runs, but a compiled backend may too
                choice = Choice(pick["backend"], dict(pick["config"]), pick["block"], source)
                break
            if (source, pick.get("backend"), pick.get("block"), why) not in skipped:
                skipped.append((source, pick.get("backend"), pick.get("block"), why))
        if choice is None:
            choice = _fallback(name, layout, head_dim, dtype, device, allow_interpreted)
        if choice is not None:
            break
    if skipped:
        _warn(name, skipped, choice, stamp)
    return choice


def _interpreted(name, device) -> bool:
    return name in backends.REGISTRY and backends.interpreted(name, device)


def _fallback(name, layout, head_dim, dtype, device, allow_interpreted) -> Choice | None:
    if name != "auto":
        return Choice(name, None, layout.block, "default")
    for cand in backends.AUTO_FALLBACK_ORDER:
        if not allow_interpreted and backends.interpreted(cand, device):
            continue
        if backends.unavailable_reason(cand, device, dtype, layout, head_dim) is None:
            return Choice(cand, None, layout.block, "default")
    return None


def _warn(name, skipped, choice: Choice | None, stamp) -> None:
    where = {"cache": f"the tuning cache {stamp[0] if stamp else ''}".rstrip(),
             "shipped": "the shipped picks"}
    why = "; ".join(f"{b} at block {blk} from {where[src]}: {w}" for src, b, blk, w in skipped)
    if choice is None:
        runs = "nothing else runs here"
    else:
        runs = (f"running {choice.backend} at its "
                f"{'tuned' if choice.config is not None else 'built-in'} config"
                f"{'' if choice.source == 'default' else ' from ' + where[choice.source]}")
    warnings.warn(f"stbench.attention(backend={name!r}): skipped tuned picks ({why}); {runs}",
                  TunedPickWarning, stacklevel=WARN_STACKLEVEL)


def clear() -> None:
    """Forget every memoised choice and check (after the registry or the shipped files change)."""
    for memo in (_CHOICES, _CHECKS):
        memo.clear()
    for cached in (reblocked, shipped._load, shipped._index):
        cached.cache_clear()


def cached_pick(layout, q, path=None) -> tuple[str, dict] | None:
    """(backend, config) in the local cache for this layout AT ITS OWN BLOCK and q's shape,
    dtype, mode and this environment, when it can run here; else None."""
    try:
        entry = cache.lookup(layout.content_hash, int(q.shape[0]), int(q.shape[-1]),
                             str(q.dtype).removeprefix("torch."), call_mode(q), OBJECTIVE,
                             path=path)
    except Exception:  # noqa: BLE001 - a broken cache must never break attention()
        return None
    same = _cache_picks(entry, "auto", layout)[1:]
    if same and why_not(same[0], layout, int(q.shape[-1]), q.dtype, q.device) is None:
        return same[0]["backend"], same[0]["config"]
    return None
