"""The persistent tuning cache: one JSON file, data only, tolerant of corruption.

Location: ``$STBENCH_CACHE_DIR/tune.json``, else ``~/.cache/stbench/tune.json`` (or pass a path).
Format::

    {"format": "stbench-tune-cache", "version": 1,
     "entries": {KEY: {"env": [...], "layout_hash": ..., "batch": ..., "head_dim": ...,
                       "dtype": ..., "mode": ..., "objective": ..., "backend": ...,
                       "config": {...}, "block": ..., "median_ms": ..., "peak_bytes": ...,
                       "per_backend": {NAME: {"config": {...}, "block": ..., "median_ms": ...}},
                       "tuned_at": ...}}}

KEY joins the environment fields (GPU, driver, CUDA, torch, triton, cupy versions, interpreter),
the layout's content hash (which fixes N, H, block and the pattern), batch, head dim, dtype, mode
and objective. Entries of other environments stay in the file and are ignored. A file that is
not valid JSON or not in this format is reported with a warning and ignored; the next save moves
it to ``tune.json.bad-<time>`` (named in a warning) before writing a new one. Saves hold a file
lock around their read-modify-write (``stbench.locks``), so processes saving at once lose
nothing, and are atomic (temporary file + rename).

Lookups (``lookup``) go through an in-memory index rebuilt only when the file changes (its
mtime and size), so a cached pick costs a dictionary access.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

from stbench import environment, locks
from stbench.files import write_atomically

FORMAT = "stbench-tune-cache"
VERSION = 1
FILE_NAME = "tune.json"
LOCK_TIMEOUT_S = 60  # a save holds the lock for milliseconds; longer means a stuck process


def default_path() -> Path:
    root = os.environ.get("STBENCH_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "stbench"
    return base / FILE_NAME


def env_fields() -> list:
    """GPU, driver, CUDA, torch, triton, cupy, interpreter (not the git sha: retuning on every
    commit would make the cache useless)."""
    return environment.cache_fields()


def entry_key(env: list, layout_hash: str, batch: int, head_dim: int, dtype: str, mode: str,
              objective: str) -> str:
    return json.dumps([env, layout_hash, batch, head_dim, dtype, mode, objective])


def _empty() -> dict:
    return {"format": FORMAT, "version": VERSION, "entries": {}}


class CacheError(ValueError):
    """The cache cannot be written (a folder given as its path, no permission, held too long by
    another process); the message names the path and the fix."""


def _read(path: Path) -> tuple[dict, str | None]:
    """(the cache's contents, None) or (an empty cache, why the file cannot be used)."""
    if not path.exists():
        return _empty(), None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _empty(), f"is unreadable ({exc})"
    if (not isinstance(data, dict) or data.get("format") != FORMAT
            or not isinstance(data.get("entries"), dict)):
        return _empty(), f"is not a {FORMAT} file"
    if data.get("version") != VERSION:
        return _empty(), (f"has version {data.get('version')!r}, this stbench writes {VERSION} "
                          "(stale)")
    entries = {k: v for k, v in data["entries"].items() if _valid_entry(v)}
    if len(entries) != len(data["entries"]):
        warnings.warn(f"tuning cache {path}: ignoring {len(data['entries']) - len(entries)} "
                      "malformed entries")
    return {"format": FORMAT, "version": VERSION, "entries": entries}, None


def load(path=None) -> dict:
    """The cache's contents; an absent file is empty, a bad one is warned about and ignored (the
    next save moves it to a backup)."""
    path = Path(path) if path is not None else default_path()
    data, problem = _read(path)
    if problem:
        warnings.warn(f"tuning cache {path} {problem}; ignoring it, it will be moved to a backup "
                      "on the next save")
    return data


def _valid_entry(e) -> bool:
    return (isinstance(e, dict) and isinstance(e.get("backend"), str)
            and isinstance(e.get("config"), dict) and isinstance(e.get("layout_hash"), str)
            and isinstance(e.get("env"), list) and isinstance(e.get("batch"), int)
            and isinstance(e.get("block"), int))


def save_entry(entry: dict, path=None) -> Path:
    """Add or replace one entry: read-modify-write under a file lock (no entry of a process
    saving at the same time is lost), written atomically (temporary file + rename). A file that
    cannot be used is first moved to ``<path>.bad-<time>``, with a warning naming it."""
    path = Path(path) if path is not None else default_path()
    if path.is_dir():
        raise CacheError(f"tuning cache path {path} is a folder: give a file path, e.g. "
                         f"{path / FILE_NAME}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = locks.acquire(path.with_name(f".{path.name}.lock"), timeout_s=LOCK_TIMEOUT_S)
    except locks.LockBusy as exc:
        raise CacheError(f"tuning cache {path} stayed locked by {exc.holder} for "
                         f"{LOCK_TIMEOUT_S} s: retry when it has finished") from None
    except OSError as exc:
        raise CacheError(f"tuning cache {path}: cannot write in {path.parent} ({exc.strerror}): "
                         "choose another path (--cache, or STBENCH_CACHE_DIR)") from None
    with lock:
        data, problem = _read(path)
        if problem:
            backup = _move_aside(path)
            warnings.warn(f"tuning cache {path} {problem}: moved it to {backup} and started a "
                          "new cache")
        key = entry_key(entry["env"], entry["layout_hash"], entry["batch"], entry["head_dim"],
                        entry["dtype"], entry["mode"], entry["objective"])
        data["entries"][key] = entry
        write_atomically(path, json.dumps(data, indent=1, sort_keys=True, allow_nan=False))
    return path


def _move_aside(path: Path) -> Path:
    """Rename ``path`` to a free ``<path>.bad-<UTC time>[-n]`` and return the new path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    backup = path.with_name(f"{path.name}.bad-{stamp}")
    n = 1
    while backup.exists():
        backup = path.with_name(f"{path.name}.bad-{stamp}-{n}")
        n += 1
    os.replace(path, backup)
    return backup


@functools.lru_cache(maxsize=4)
def _index(path: str, mtime_ns: int, size: int) -> dict:
    """(env, layout_hash, head_dim, dtype, mode, objective) -> [(batch, entry)]."""
    index: dict = {}
    for e in load(path)["entries"].values():
        k = (json.dumps(e["env"]), e["layout_hash"], e.get("head_dim"), e.get("dtype"),
             e.get("mode"), e.get("objective"))
        index.setdefault(k, []).append((e["batch"], e))
    return index


def lookup(layout_hash: str, batch: int, head_dim: int, dtype: str, mode: str,
           objective: str = "time", path=None, env: list | None = None) -> dict | None:
    """The cached entry for this problem in this environment: exact batch if tuned, else the
    nearest tuned batch (in log scale); None when nothing matches."""
    path = Path(path) if path is not None else default_path()
    try:
        st = path.stat()
    except OSError:
        return None
    index = _index(str(path), st.st_mtime_ns, st.st_size)
    env = env if env is not None else env_fields()
    cands = index.get((json.dumps(env), layout_hash, head_dim, dtype, mode, objective))
    if not cands:
        return None
    return min(cands, key=lambda be: abs(math.log(be[0] / batch)))[1]


def json_safe(obj):
    """``obj`` (dicts, lists, numbers) with every non-finite float made None: JSON has no inf."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
