"""Tuned picks shipped with stbench, one file per GPU model: what ``backend='auto'`` (and a named
backend called without a config) runs when the local tuning cache has no entry for this
environment.

Files: ``stbench/tuning/shipped/<gpu>.json`` (package data), written by ``stbench tune
--export-picks`` (``tuning/export.py``) from committed results, never by hand. Format::

    {"format": "stbench-shipped-picks", "version": 1, "gpu": "h200", "device_name": "NVIDIA H200",
     "command": "stbench tune --export-picks ...", "rule": "...", "sources": [...],
     "problems": [{"layout": SPEC, "layout_name": ..., "token_density": ..., "n_ctx": N,
                   "heads": H, "batch": B, "head_dim": D, "dtype": ..., "mode": "fwd",
                   "hashes": {"16": HASH, "32": ..., "64": ..., "128": ...},
                   "picks": [{"backend": ..., "block": ..., "config": {...}, "median_ms": ...,
                              "source": FILE, "timestamp": ...}, ...]}]}     # fastest first

A problem is keyed by its token pattern (``hashes``: ``Layout.content_hash`` of the pattern at
every block it re-blocks to, which fixes N, H and the pattern; the spec name and token density
say which it is), batch, head dim, dtype and mode. A layout matches when its content hash is one
of a problem's hashes and D, dtype and mode are equal; among the matches the nearest batch (in
log scale) wins, as in the local cache. GPU model: the device name lower-cased without the
vendor, non-alphanumerics as '-' ("NVIDIA H200" -> "h200").
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from pathlib import Path

from stbench import environment

FORMAT = "stbench-shipped-picks"
VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
PROBLEM_KEYS = {"layout": str, "layout_name": str, "token_density": float, "n_ctx": int,
                "heads": int, "batch": int, "head_dim": int, "dtype": str, "mode": str,
                "hashes": dict, "picks": list}
PICK_KEYS = {"backend": str, "block": int, "config": dict, "median_ms": float}
MODES = ("fwd", "fwd+bwd")


class ShippedPicksError(ValueError):
    """A shipped picks file is not valid; the message names the file and what is wrong."""


gpu_model = environment.gpu_model  # 'NVIDIA H200' -> 'h200' (the picks files' names)


def current_gpu() -> str | None:
    """The GPU model of this machine (device 0), None without a GPU."""
    return gpu_model(environment.cache_fields()[0])


def path_for(gpu: str) -> Path:
    return SHIPPED_DIR / f"{gpu}.json"


def _check(cond: bool, path, what: str) -> None:
    if not cond:
        raise ShippedPicksError(f"{path}: {what} (regenerate it: stbench tune --export-picks)")


def validate(data, path="shipped picks") -> dict:
    """``data`` if it is a valid shipped picks document, else ShippedPicksError naming the
    first problem."""
    _check(isinstance(data, dict) and data.get("format") == FORMAT, path, f"not a {FORMAT} file")
    _check(data.get("version") == VERSION, path,
           f"version {data.get('version')!r}, this stbench reads {VERSION}")
    _check(isinstance(data.get("gpu"), str), path, "no 'gpu' model")
    _check(isinstance(data.get("problems"), list), path, "no 'problems' list")
    for i, p in enumerate(data["problems"]):
        where = f"problems[{i}]"
        _check(isinstance(p, dict), path, f"{where} is not an object")
        for key, typ in PROBLEM_KEYS.items():
            ok = isinstance(p.get(key), (int, float) if typ is float else typ)
            _check(ok and not isinstance(p.get(key), bool), path,
                   f"{where}.{key} missing or not {typ.__name__}")
        _check(p["mode"] in MODES, path, f"{where}.mode={p['mode']!r}: use one of {MODES}")
        _check(bool(p["hashes"]) and all(isinstance(h, str) for h in p["hashes"].values()),
               path, f"{where}.hashes must map blocks to content hashes")
        _check(bool(p["picks"]), path, f"{where}.picks is empty")
        for j, pick in enumerate(p["picks"]):
            _check(isinstance(pick, dict), path, f"{where}.picks[{j}] is not an object")
            for key, typ in PICK_KEYS.items():
                ok = isinstance(pick.get(key), (int, float) if typ is float else typ)
                _check(ok, path, f"{where}.picks[{j}].{key} missing or not {typ.__name__}")
        times = [pick["median_ms"] for pick in p["picks"]]
        _check(times == sorted(times), path, f"{where}.picks are not fastest first")
    return data


def read(path) -> dict:
    """A shipped picks file, validated (ShippedPicksError when it is not valid)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShippedPicksError(f"{path}: unreadable ({exc})") from None
    return validate(data, path)


@functools.lru_cache(maxsize=8)
def _load(path: str) -> dict | None:
    """The file's contents; None when it is absent, and (with a warning) when it is not valid:
    shipped data never breaks ``stbench.attention``."""
    if not Path(path).exists():
        return None
    try:
        return read(path)
    except ShippedPicksError as exc:
        warnings.warn(f"ignoring the shipped tuned picks: {exc}")
        return None


@functools.lru_cache(maxsize=8)
def _index(path: str) -> dict:
    """content hash -> [problem]: the file's problems under each of their hashes."""
    index: dict = {}
    for p in (_load(path) or {}).get("problems", ()):
        for h in set(p["hashes"].values()):
            index.setdefault(h, []).append(p)
    return index


def _gpu_path(gpu: str | None, path) -> str | None:
    if path is not None:
        return str(path)
    gpu = gpu if gpu is not None else current_gpu()
    return None if gpu is None else str(path_for(gpu))


def lookup(layout_hash: str, batch: int, head_dim: int, dtype: str, mode: str, *,
           gpu: str | None = None, path=None) -> dict | None:
    """The shipped problem for this pattern (any block), D, dtype and mode, nearest in batch;
    None when this GPU model (default: this machine's) ships nothing that matches."""
    where = _gpu_path(gpu, path)
    if where is None:
        return None
    cands = [p for p in _index(where).get(layout_hash, ())
             if (p["head_dim"], p["dtype"], p["mode"]) == (head_dim, dtype, mode)]
    if not cands:
        return None
    return min(cands, key=lambda p: abs(math.log(p["batch"] / batch)))


def problems(*, gpu: str | None = None, path=None) -> list[dict]:
    """Every shipped problem of this GPU model (default: this machine's), in file order."""
    where = _gpu_path(gpu, path)
    return list((_load(where) or {}).get("problems", ())) if where is not None else []
