"""The result schema: one ``ResultRow`` per measured (problem, layout, backend, config) and
append-only JSONL files of them.

A row is flat JSON apart from ``env`` and ``config`` (dicts) so that ``pandas.DataFrame(rows)``
is the table. Times are milliseconds, memory bytes, throughput TFLOP/s. Failures are rows:
``status`` says which (see ``STATUSES``) and ``error`` says why. Reading validates the schema
version and the keys of every line and names the file and line of anything wrong.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "compile_error", "runtime_error", "incorrect", "unsupported", "timeout")
KINDS = ("sweep", "tune")  # a sweep row, or a tuning candidate
RESULTS_FILE = "results.jsonl"  # a sweep's rows
TUNE_FILE = "tune.jsonl"  # the tuner's candidate rows
NOT_ROWS = ("tune_eval.jsonl",)  # JSONL files of a results folder in another schema


class ResultsError(ValueError):
    """A results file is not valid; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class ResultRow:
    # problem
    batch: int
    heads: int
    n_ctx: int
    head_dim: int
    dtype: str  # "bfloat16", "float16", "float32", "float64"
    mode: str  # "fwd" or "fwd+bwd"
    # layout
    layout: str  # the layout spec's name (e.g. "st_mix", "paper_fixed")
    block: int | None  # the block size the backend computed at (None: not built)
    token_density: float | None
    block_density: float | None
    layout_hash: str | None
    nnz: int | None
    # what ran
    backend: str
    status: str
    config: dict = field(default_factory=dict)
    error: str | None = None
    # correctness against the dense reference (stbench.accuracy's rule)
    err: float | None = None
    tol: float | None = None
    check: str | None = None  # how it was checked: "full", "rows:R", "skipped: why"
    # time (ms) and throughput
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    reps: int | None = None
    prepare_ms: float | None = None
    tflops: float | None = None  # allowed-pair FLOPs (the shared numerator) / median time
    block_tflops: float | None = None  # FLOPs of the blocks actually computed / median time
    # memory (bytes): peak during one call beyond what was allocated before it, and its split
    peak_bytes: int | None = None
    inputs_bytes: int | None = None  # q, k, v (and dO for fwd+bwd)
    workspace_bytes: int | None = None  # peak minus outputs (and gradients)
    plan_bytes: int | None = None  # the layout's device plan
    # the backend's per-layout structures kept between calls: our device plan for our backends,
    # FlexAttention's BlockMask (index lists and mask tables) for its peers; None: not reported
    structure_bytes: int | None = None
    # bookkeeping
    kind: str = "sweep"
    tuned: bool = False  # the config was picked by the autotuner
    device: str | None = None  # where it ran: "cuda:1", "cpu" (None in rows before it was kept)
    host: str | None = None  # which machine (environment.host_id: a digest, not the hostname)
    env: dict = field(default_factory=dict)
    timestamp: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ResultsError(f"status={self.status!r} is not one of {STATUSES}")
        if self.kind not in KINDS:
            raise ResultsError(f"kind={self.kind!r} is not one of {KINDS}")

    def key(self) -> str:
        """Identity of the measurement (what ``--resume`` skips): everything but the outcome."""
        return row_key(
            self.kind, self.backend, self.layout, self.n_ctx, self.batch, self.heads,
            self.head_dim, self.dtype, self.mode, self.config if self.kind != "sweep" else None,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: _finite_or_none(v) for k, v in d.items()}


def row_key(kind, backend, layout, n_ctx, batch, heads, head_dim, dtype, mode, config=None) -> str:
    cfg = json.dumps(config, sort_keys=True) if config else ""
    return (f"{kind}|{backend}|{layout}|N={n_ctx}|B={batch}|H={heads}|D={head_dim}|{dtype}|"
            f"{mode}|{cfg}")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _finite_or_none(v):
    """JSON has no inf / NaN: a non-finite float is written as null (the row's error says why)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


_FIELDS = {f.name: f for f in fields(ResultRow)}
_REQUIRED = {
    n for n, f in _FIELDS.items() if f.default is MISSING and f.default_factory is MISSING
}
_INT = ("batch", "heads", "n_ctx", "head_dim", "block", "nnz", "reps", "peak_bytes",
        "inputs_bytes", "workspace_bytes", "plan_bytes", "structure_bytes", "schema_version")
_FLOAT = ("token_density", "block_density", "err", "tol", "median_ms", "p20_ms", "p80_ms",
          "prepare_ms", "tflops", "block_tflops")
_STR = ("dtype", "mode", "layout", "backend", "status", "kind")
_OPTIONAL_STR = ("device", "host")


def row_from_dict(d: dict, where: str = "row") -> ResultRow:
    """Validate a decoded JSON object and build the row; ResultsError names ``where``."""
    if not isinstance(d, dict):
        raise ResultsError(f"{where}: expected a JSON object, got {type(d).__name__}")
    version = d.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(
            f"{where}: schema_version={version!r}, this stbench reads version {SCHEMA_VERSION}: "
            "rerun the sweep with this version, or read the file with the stbench that wrote it"
        )
    missing = sorted(_REQUIRED - d.keys())
    if missing:
        raise ResultsError(f"{where}: missing keys {missing}")
    unknown = sorted(d.keys() - _FIELDS.keys())
    if unknown:
        raise ResultsError(f"{where}: unknown keys {unknown} (not a stbench result row?)")
    for name in _INT:
        v = d.get(name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise ResultsError(f"{where}: {name}={v!r} must be an integer or null")
    for name in _FLOAT:
        v = d.get(name)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise ResultsError(f"{where}: {name}={v!r} must be a number or null")
    for name in _STR:
        if name in d and not isinstance(d[name], str):
            raise ResultsError(f"{where}: {name}={d[name]!r} must be a string")
    for name in _OPTIONAL_STR:
        v = d.get(name)
        if v is not None and not isinstance(v, str):
            raise ResultsError(f"{where}: {name}={v!r} must be a string or null")
    for name in ("config", "env"):
        if name in d and not isinstance(d[name], dict):
            raise ResultsError(f"{where}: {name} must be a JSON object")
    try:
        return ResultRow(**d)
    except ResultsError as exc:
        raise ResultsError(f"{where}: {exc}") from None


def append_rows(path, rows) -> None:
    """Append rows to a JSONL file (created with its folders), one write per row, flushed; a
    partial last line left by a crash is closed first so that the file stays line-aligned."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    needs_newline = False
    if path.exists() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, 2)
            needs_newline = f.read(1) != b"\n"
    with path.open("a", encoding="utf-8") as f:
        if needs_newline:
            f.write("\n")
        for row in rows:
            f.write(json.dumps(row.to_dict(), sort_keys=True, allow_nan=False) + "\n")
            f.flush()


def read_rows(path, *, tolerate_partial_last_line: bool = True) -> list[ResultRow]:
    """Read and validate a JSONL results file. A last line cut short by a crash (no newline, not
    JSON) is skipped with a warning; anything else wrong raises ResultsError with file:line."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"{path}: no such results file (run `stbench sweep --out DIR` first)")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            last = i == len(lines) and not text.endswith("\n")
            if last and tolerate_partial_last_line:
                warnings.warn(f"{path}:{i}: skipping a partial last line (a crash mid-write?)")
                continue
            raise ResultsError(f"{path}:{i}: not valid JSON ({exc.msg}); is this a JSONL "
                               "results file written by stbench?") from None
        rows.append(row_from_dict(obj, f"{path}:{i}"))
    return rows


def results_files(folder) -> list[Path]:
    """The JSONL files of a results folder (sorted)."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise ResultsError(f"{folder}: no such folder or file")
    return sorted(p for p in folder.glob("*.jsonl") if p.name not in NOT_ROWS)


def read_folder(folder) -> list[ResultRow]:
    """All rows of every ``*.jsonl`` in ``folder`` (or of one file)."""
    rows = []
    for p in results_files(folder):
        rows.extend(read_rows(p))
    return rows
