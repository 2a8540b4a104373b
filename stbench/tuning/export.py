"""Make the shipped picks file (``tuning/shipped.py``) from committed results: data made by a
command, never typed by hand.

    stbench tune --export-picks reports/standard/h200 reports/standard-picks/h200 ... --gpu h200

Sources are results folders (the files their manifest lists as results, else every ``*.jsonl``)
or single JSONL files of result rows. Rule:

- a row counts when it is a sweep row (``kind`` 'sweep') of one of our backends (not a peer, not
  the reference), ``status`` 'ok' with a median, measured on this GPU model, over a named layout
  spec (``stbench.problems.LAYOUT_SPECS``);
- per problem (spec, N, H, B, D, dtype, mode) and backend, a row with a tuned configuration
  (``tuned``, or a non-empty ``config``: a pick re-measured with ``--picks``) wins over one at
  the backend's default (``config`` {}), which is the backend's pick only where it has no tuned
  row (e.g. a backend whose defaults are its tuning, measured beside the others); among those,
  the newest row wins (its timestamp; kernels change, so the last measurement of a
  configuration is the one that stands);
- a problem's picks are its backends' winners, fastest first;
- its hashes are those of the spec built today at N and H, re-blocked to every block it takes;
  a row whose own layout hash is not among them measured another pattern and is left out.

What was left out, and why, comes back as notes.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import replace
from pathlib import Path

from stbench import backends, layouts, manifest, problems, results
from stbench.tuning import shipped

RULE = ("newest ok sweep row per (problem, backend) of our backends, a tuned one before a "
        "default configuration; picks fastest first; hashes of the spec rebuilt at every block")
DEFAULT_LOST = "not tuned (a default configuration where the backend has a tuned row)"


def source_files(source) -> list[Path]:
    """The JSONL files of one source: a file, or a folder's manifest results (else its files)."""
    source = Path(source)
    if source.is_dir() and manifest.path_of(source).exists():
        listed = manifest.read(source).results
        if listed:
            return [source / name for name in listed]
    return results.results_files(source)


@functools.lru_cache(maxsize=64)
def pattern_hashes(spec_name: str, n_ctx: int, heads: int) -> tuple[dict, str, float]:
    """({block: content hash}, layout name, token density) of the named spec at N and H."""
    spec = replace(problems.layout_spec(spec_name), fit_block=True)
    lay = spec.build(n_ctx, heads)
    hashes = {}
    for b in layouts.ALLOWED_BLOCKS:
        try:
            hashes[str(b)] = lay.reblock(b).content_hash
        except (layouts.LayoutError, ValueError):  # the pattern does not exist at this block
            continue
    return hashes, lay.name, lay.token_density


def _ours(name: str) -> bool:
    info = backends.REGISTRY.get(name)
    return info is not None and not (info.peer or info.reference)


def _why_left_out(row, gpu: str) -> str | None:
    if row.kind != "sweep" or row.status != "ok" or row.median_ms is None:
        return "not an ok sweep row"
    if not _ours(row.backend):
        return "a peer or the reference"
    if shipped.gpu_model((row.env or {}).get("gpu")) != gpu:
        return f"measured on another GPU ({(row.env or {}).get('gpu')})"
    if row.layout not in problems.LAYOUT_SPECS:
        return f"layout {row.layout!r} is not a named spec"
    return None


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when under it (no local paths in the file)."""
    try:
        return Path(os.path.relpath(path.resolve(), Path.cwd())).as_posix()
    except ValueError:
        return path.name


def export_picks(sources, gpu: str, command: str = "") -> tuple[dict, list[str]]:
    """(shipped picks document for ``gpu``, notes on what was left out)."""
    winners: dict = {}  # (problem key, backend) -> (tuned, timestamp, order, row, source)
    defaults: dict = {}  # (problem key, backend) -> default-configuration rows counted
    left_out: dict = {}
    files = []
    order = 0
    for source in sources:
        for path in source_files(source):
            rows = results.read_rows(path)
            files.append({"path": _shown(path), "rows": len(rows)})
            for row in rows:
                order += 1
                why = _why_left_out(row, gpu)
                if why is not None:
                    left_out[why] = left_out.get(why, 0) + 1
                    continue
                key = ((row.layout, row.n_ctx, row.heads, row.batch, row.head_dim, row.dtype,
                        row.mode), row.backend)
                tuned = bool(row.tuned or row.config)
                if not tuned:
                    defaults[key] = defaults.get(key, 0) + 1
                cand = (tuned, row.timestamp or "", order, row, _shown(path))
                if key not in winners or cand[:3] > winners[key][:3]:
                    winners[key] = cand
    lost = sum(n for key, n in defaults.items() if winners[key][0])
    if lost:
        left_out[DEFAULT_LOST] = lost
    by_problem: dict = {}
    for (prob, _), (_, stamp, _, row, src) in winners.items():
        hashes, name, density = pattern_hashes(row.layout, row.n_ctx, row.heads)
        if row.layout_hash is not None and row.layout_hash not in hashes.values():
            why = "its layout hash is not the spec's today (another pattern)"
            left_out[why] = left_out.get(why, 0) + 1
            continue
        entry = by_problem.setdefault(prob, {
            "layout": row.layout, "layout_name": name, "token_density": round(density, 6),
            "n_ctx": row.n_ctx, "heads": row.heads, "batch": row.batch,
            "head_dim": row.head_dim, "dtype": row.dtype, "mode": row.mode, "hashes": hashes,
            "picks": []})
        entry["picks"].append({"backend": row.backend, "block": row.block,
                               "config": dict(row.config), "median_ms": row.median_ms,
                               "source": src, "timestamp": stamp})
    for entry in by_problem.values():
        entry["picks"].sort(key=lambda p: p["median_ms"])
    device_names = sorted({w[3].env.get("gpu") for w in winners.values() if w[3].env})
    data = {
        "format": shipped.FORMAT, "version": shipped.VERSION, "gpu": gpu,
        "device_name": device_names[0] if len(device_names) == 1 else ", ".join(device_names),
        "command": command, "rule": RULE, "sources": files,
        "problems": [by_problem[k] for k in sorted(by_problem)],
    }
    notes = [f"{n} rows left out: {why}" for why, n in sorted(left_out.items())]
    return shipped.validate(data), notes


def write(data: dict, path) -> Path:
    """Write a shipped picks document (validated) as JSON, one key per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(shipped.validate(data), indent=1) + "\n", encoding="utf-8")
    return path
