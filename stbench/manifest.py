"""The manifest of a results folder: what ran, on which code, when, where and for how long.

Every folder ``reports/<suite>/<gpu>/`` holds one run (the current one for that GPU model) and a
``manifest.json`` beside its files::

    {"schema": "stbench.manifest", "schema_version": 1,
     "description": "one line: what this run measures",
     "command": "stbench sweep --preset standard --out DIR --isolate --tune",
     "commit": "90e973a...",            # the code that was measured
     "date": "2026-11-28T15:20:41+00:00",  # when the run started (UTC, ISO 8601)
     "duration_s": 516.0, "rows": 350,
     "world_size": 2,                   # processes (GPUs) the run was sharded over
     "environment": {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130", ...},
     "results": ["results.jsonl"],      # files of result rows (stbench.results) in this folder
     "parts": [...],                    # optional: a run made of several commands
     "compare": {"ours": [...], "against": [...]},  # optional: the README's comparison
     "plots": ["time_vs_n_fwd.png"],    # optional: the key pictures
     "notes": "..."}                    # optional: what a reader must know to read the numbers

A run made of several commands (split over GPUs, or a forward run and a later forward+backward
run) lists each in ``parts``: ``{"files", "command", "commit", "date", "duration_s",
"description"}``; the top-level fields then describe the whole. Reading validates the schema and
every field and names the file, the field and the fix of anything wrong.

``write_for_run(out_dir, command, started, finished)`` writes the manifest of a run that has
just finished in this process (the sweep calls it at the end of a run).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from stbench.files import write_atomically

SCHEMA = "stbench.manifest"
SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
PART_KEYS = ("files", "command", "commit", "date", "duration_s", "description")


class ManifestError(ValueError):
    """A manifest is missing or not valid; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Manifest:
    description: str  # one line: what the run measures
    command: str  # the command that made the files (for several parts: the first, or a summary)
    commit: str | None  # git commit of the measured code (None outside a git checkout)
    date: str  # start of the run, ISO 8601 with a time zone
    duration_s: float | None  # wall time of the run (None when not recorded)
    rows: int | None  # result rows (sweep rows of ``results``), None when the run has none
    environment: dict = field(default_factory=dict)  # stbench.environment's fields
    results: tuple[str, ...] = ()  # result-row JSONL files, relative to the folder
    parts: tuple[dict, ...] = ()
    compare: dict = field(default_factory=dict)  # {"ours": [...], "against": [...]}
    plots: tuple[str, ...] = ()
    notes: str = ""
    world_size: int | None = None  # processes the run was sharded over (None: not recorded)

    def to_dict(self) -> dict:
        d = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION}
        d.update(asdict(self))
        for key in ("results", "parts", "plots"):
            d[key] = list(d[key])
        return d


_FIELDS = {f.name for f in fields(Manifest)}
_REQUIRED = ("description", "command", "commit", "date", "duration_s", "rows")


def _check_date(value, where: str) -> None:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ManifestError(f"{where}: date={value!r} must be ISO 8601 with a time zone, "
                            "e.g. '2026-11-28T15:20:41+00:00'")


def _check_number(d: dict, key: str, kind, where: str) -> None:
    v = d.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, kind) or v < 0):
        raise ManifestError(f"{where}: {key}={v!r} must be a non-negative number or null")


def _check_strings(value, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise ManifestError(f"{where}: {key} must be a list of non-empty strings")
    return tuple(value)


def _check_part(part, where: str) -> dict:
    if not isinstance(part, dict):
        raise ManifestError(f"{where}: each of parts must be a JSON object")
    unknown = sorted(part.keys() - set(PART_KEYS))
    missing = [k for k in ("files", "command", "commit", "date") if k not in part]
    if unknown or missing:
        raise ManifestError(f"{where}: a part has unknown keys {unknown} / lacks {missing}; "
                            f"a part has the keys {list(PART_KEYS)}")
    _check_strings(part["files"], "parts[].files", where)
    _check_date(part["date"], f"{where} (a part)")
    _check_number(part, "duration_s", (int, float), where)
    return part


def from_dict(d, where: str = "manifest") -> Manifest:
    """Validate a decoded manifest and build it; ManifestError names ``where`` and the field."""
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(d).__name__}")
    if d.get("schema") != SCHEMA:
        raise ManifestError(f"{where}: schema={d.get('schema')!r}, expected {SCHEMA!r} "
                            "(not an stbench manifest?)")
    if d.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(f"{where}: schema_version={d.get('schema_version')!r}, this stbench "
                            f"reads version {SCHEMA_VERSION}: rewrite it with this version")
    body = {k: v for k, v in d.items() if k not in ("schema", "schema_version")}
    unknown = sorted(body.keys() - _FIELDS)
    missing = [k for k in _REQUIRED if k not in body]
    if unknown:
        raise ManifestError(f"{where}: unknown keys {unknown}; the keys are {sorted(_FIELDS)}")
    if missing:
        raise ManifestError(f"{where}: missing keys {missing}")
    for key in ("description", "command"):
        if not isinstance(body[key], str) or not body[key].strip():
            raise ManifestError(f"{where}: {key} must be a non-empty string")
    if body["commit"] is not None and not isinstance(body["commit"], str):
        raise ManifestError(f"{where}: commit must be a git sha (string) or null")
    _check_date(body["date"], where)
    _check_number(body, "duration_s", (int, float), where)
    _check_number(body, "rows", int, where)
    _check_number(body, "world_size", int, where)
    for key in ("environment", "compare"):
        if not isinstance(body.get(key, {}), dict):
            raise ManifestError(f"{where}: {key} must be a JSON object")
    for key in ("results", "plots"):
        body[key] = _check_strings(body.get(key, []), key, where)
    if not isinstance(body.get("parts", []), list):
        raise ManifestError(f"{where}: parts must be a list")
    body["parts"] = tuple(_check_part(p, where) for p in body.get("parts", []))
    compare = body.get("compare", {})
    for key, names in compare.items():
        if key not in ("ours", "against"):
            raise ManifestError(f"{where}: compare has the keys 'ours' and 'against', not {key!r}")
        _check_strings(names, f"compare.{key}", where)
    if not isinstance(body.get("notes", ""), str):
        raise ManifestError(f"{where}: notes must be a string")
    return Manifest(**body)


def path_of(folder) -> Path:
    """The manifest file of a results folder (or the file itself when given one)."""
    p = Path(folder)
    return p if p.suffix == ".json" else p / MANIFEST_FILE


def read(folder) -> Manifest:
    """Read and validate ``folder/manifest.json``."""
    path = path_of(folder)
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (write one with stbench.manifest.write, or "
                            "rerun the command that made the folder)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    m = from_dict(d, str(path))
    base = path.parent
    for name in list(m.results) + list(m.plots) + [f for p in m.parts for f in p["files"]]:
        if not (base / name).exists():
            raise ManifestError(f"{path}: names {name!r}, which is not in {base}")
    return m


def write(folder, manifest: Manifest) -> Path:
    """Write ``folder/manifest.json`` atomically (validated first); returns its path."""
    d = manifest.to_dict()
    from_dict(json.loads(json.dumps(d)))  # the same checks as reading
    path = path_of(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, json.dumps(d, indent=2, sort_keys=False) + "\n")


def _as_datetime(t) -> datetime:
    if isinstance(t, datetime):
        return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(float(t), tz=timezone.utc)


def write_for_run(out_dir, command: str, started, finished, description: str | None = None,
                  world_size: int | None = None) -> Path:
    """Write the manifest of a run that just finished in this process into ``out_dir``.

    ``command``: the command line as run (a string); ``started`` / ``finished``: datetimes or
    ``time.time()`` values; ``world_size``: the processes a sharded run used. Counts the sweep
    rows of ``out_dir``'s result files and records this process's environment (its git sha is
    the measured code). Returns the manifest's path.
    """
    from stbench import environment, results

    out_dir = Path(out_dir)
    start, end = _as_datetime(started), _as_datetime(finished)
    files = [p for p in results.results_files(out_dir) if p.name != results.TUNE_FILE]
    rows = sum(1 for p in files for r in results.read_rows(p) if r.kind == "sweep")
    env = environment.collect().to_dict()
    m = Manifest(
        description=description or f"stbench run: {command}",
        command=command, commit=env.get("git_sha"), date=start.isoformat(timespec="seconds"),
        duration_s=round((end - start).total_seconds(), 1), rows=rows, environment=env,
        results=tuple(p.name for p in files),
        plots=tuple(sorted(p.name for p in out_dir.glob("*.png"))), world_size=world_size,
    )
    return write(out_dir, m)
