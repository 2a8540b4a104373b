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

from stbench.files import write_atomically

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "compile_error", "runtime_error", "incorrect", "unsupported", "timeout")
KINDS = ("sweep", "tune")  # a sweep row, or a tuning candidate
RESULTS_FILE = "results.jsonl"  # a sweep's rows
TUNE_FILE = "tune.jsonl"  # the tuner's candidate rows
NOT_ROWS = ("tune_eval.jsonl",)  # JSONL files of a results folder in another schema
CUT_SUFFIX = ".cut"  # <file>.cut: last lines cut off by a killed writer, moved out of the file
BAD_SUFFIX = ".bad"  # <file>.bad: unreadable lines set aside by `sweep --resume --skip-bad-lines`
SKIP_OPTION = "--skip-bad-lines"


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
    """Append rows to a JSONL file (created with its folders), one write per row, flushed. A
    last line cut off by a crash is repaired first (``repair_cut_line``), never buried."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_cut_line(path)
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row.to_dict(), sort_keys=True, allow_nan=False) + "\n")
            f.flush()


def repair_cut_line(path) -> None:
    """Make ``path`` end with a newline, as before a crash. A last line without one is kept (its
    newline added) when it is a whole row; otherwise it was cut off mid-write: it is moved to
    ``<path>.cut`` and truncated away, with a warning naming both (its row, absent from the
    file, is what ``--resume`` measures again)."""
    path = Path(path)
    if not path.is_file() or not path.stat().st_size:
        return
    with path.open("rb+") as f:
        f.seek(-1, 2)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        start = data.rfind(b"\n") + 1  # the cut line's first byte
        line = data.count(b"\n", 0, start) + 1
        tail = data[start:]
        if _parses_as_row(tail):
            f.seek(0, 2)
            f.write(b"\n")
            return
        aside = path.with_name(path.name + CUT_SUFFIX)
        with aside.open("ab") as g:
            g.write(tail + b"\n")
        f.truncate(start)
    warnings.warn(f"{path}:{line}: a line cut off mid-write ({len(tail)} bytes, "
                  f"a killed writer) was moved to {aside}")


def _parses_as_row(line: bytes) -> bool:
    try:
        row_from_dict(json.loads(line.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, ResultsError):
        return False
    return True


def _scan(path: Path):
    """(rows, unreadable lines [(line number, why)], the partial last line's number or None)."""
    if not path.exists():
        raise ResultsError(f"{path}: no such results file (run `stbench sweep --out DIR` first)")
    if not path.is_file():
        raise ResultsError(f"{path} is not a file: give a results JSONL file or its folder")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read it ({exc.strerror}): check its permissions"
                           ) from None
    lines = text.split("\n")
    rows, bad, partial = [], [], None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(row_from_dict(json.loads(line), f"{path}:{i}"))
        except json.JSONDecodeError as exc:
            if i == len(lines) and not text.endswith("\n"):
                partial = i  # a writer cut off (or still writing): not an error
            else:
                bad.append((i, f"not valid JSON ({exc.msg})"))
        except ResultsError as exc:
            bad.append((i, str(exc).removeprefix(f"{path}:{i}: ")))
    return rows, bad, partial


def read_rows(path, *, skip_bad_lines: bool = False) -> list[ResultRow]:
    """Read and validate a JSONL results file. A last line cut short by a crash (no newline, not
    JSON) is skipped with a warning; any other unreadable line raises ResultsError naming the
    file, the line and the option; with ``skip_bad_lines`` it is skipped with a warning."""
    path = Path(path)
    rows, bad, partial = _scan(path)
    if partial is not None:
        warnings.warn(f"{path}:{partial}: skipping a partial last line (a crash mid-write?)")
    for i, why in bad:
        if not skip_bad_lines:
            raise ResultsError(f"{path}:{i}: {why}: fix or delete line {i}, or pass "
                               f"{SKIP_OPTION} to skip unreadable lines with a warning")
        warnings.warn(f"{path}:{i}: skipping an unreadable line ({why})")
    return rows


def set_bad_lines_aside(path) -> int:
    """Move every unreadable line of ``path`` to ``<path>.bad`` (one warning per line, naming
    it) and rewrite ``path`` without them (atomically); returns how many were moved."""
    path = Path(path)
    _, bad, _ = _scan(path)
    if not bad:
        return 0
    numbers = {i for i, _ in bad}
    lines = path.read_bytes().split(b"\n")
    aside = path.with_name(path.name + BAD_SUFFIX)
    with aside.open("ab") as g:
        g.write(b"".join(lines[i - 1] + b"\n" for i in sorted(numbers)))
    write_atomically(path, b"\n".join(x for i, x in enumerate(lines, 1) if i not in numbers))
    for i, why in bad:
        warnings.warn(f"{path}:{i}: skipping an unreadable line ({why}); moved to {aside}")
    return len(bad)


def results_files(folder) -> list[Path]:
    """The JSONL files of a results folder (sorted)."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise ResultsError(f"{folder}: no such folder or file")
    return sorted(p for p in folder.glob("*.jsonl") if p.name not in NOT_ROWS)


def read_folder(folder, *, skip_bad_lines: bool = False) -> list[ResultRow]:
    """All rows of every ``*.jsonl`` in ``folder`` (or of one file)."""
    rows = []
    for p in results_files(folder):
        rows.extend(read_rows(p, skip_bad_lines=skip_bad_lines))
    return rows
