"""The committed per-GPU baseline of ``stbench regress``: ``reports/baselines/<gpu>.jsonl``.

Line 1, the header: ``{"kind": "header", "schema_version": 1, "env": {...}, "manifest":
{command, commit, date, duration_s}, "settings": {...}, "references": {name: {"median_ms",
"times_ms"}}}``; then one line per measured entry (``kind: "entry"``, the fields of
``gate.Measured``). The file is data: read back with every line validated, each problem named
with its file and line. Written only by ``stbench regress --update-baseline``, atomically.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stbench import environment
from stbench.files import write_atomically

SCHEMA_VERSION = 1
BASELINE_DIR = Path("reports") / "baselines"
HEADER_KEYS = ("kind", "schema_version", "env", "manifest", "settings", "references")
ENTRY_KEYS = ("kind", "key", "backend", "layout", "block", "n_ctx", "batch", "heads",
              "head_dim", "dtype", "mode", "status", "error", "err", "tol", "times_ms", "units",
              "median_ms", "value", "noise", "tflops")
# environment fields whose change is reported beside the verdicts (the GPU model must match)
ENV_WATCHED = ("driver", "cuda", "torch", "triton", "cupy")


class BaselineError(ValueError):
    """A baseline file is missing or invalid; the message names the file, line and the fix."""


def gpu_slug(name: str | None) -> str:
    """A folder-friendly GPU model name: 'NVIDIA H200' -> 'h200'; no GPU -> 'cpu'."""
    if not name:
        return "cpu"
    return environment.gpu_model(name) or "gpu"


def default_path(gpu: str | None) -> Path:
    return BASELINE_DIR / f"{gpu_slug(gpu)}.jsonl"


def manifest(argv, started: float, ended: float, env: environment.Environment) -> dict:
    """What made a file: the command, the commit (and whether the tree was dirty), the date and
    how long it took."""
    from datetime import datetime, timezone

    return dict(
        command=" ".join(["stbench", *argv]) if argv is not None else " ".join(sys.argv),
        commit=env.git_sha, dirty=env.git_dirty,
        date=datetime.fromtimestamp(ended, timezone.utc).isoformat(timespec="seconds"),
        duration_s=round(ended - started, 1),
    )


@dataclass(frozen=True)
class Baseline:
    path: Path
    env: dict
    manifest: dict
    settings: dict
    references: dict  # name -> {"median_ms": float | None, "times_ms": [...]}
    entries: dict = field(default_factory=dict)  # key -> entry dict

    def reference_ms(self) -> dict[str, float | None]:
        return {k: v.get("median_ms") for k, v in self.references.items()}


def write(path, header: dict, entries: list[dict]) -> Path:
    """Write the baseline atomically (a temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"kind": "header", "schema_version": SCHEMA_VERSION, **header},
                        sort_keys=True, allow_nan=False)]
    lines += [json.dumps({"kind": "entry", **e}, sort_keys=True, allow_nan=False)
              for e in entries]
    return write_atomically(path, "\n".join(lines) + "\n")


def _need(obj: dict, keys, where: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise BaselineError(f"{where}: missing keys {missing}: not a stbench regress baseline? "
                            "write one with `stbench regress --update-baseline`")


def read(path) -> Baseline:
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"{path}: no baseline there: write one on this GPU with "
                            "`stbench regress --update-baseline` (and commit it), or pass "
                            "--baseline FILE")
    header, entries = None, {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BaselineError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise BaselineError(f"{where}: expected a JSON object")
        if header is None:
            _need(obj, HEADER_KEYS, where)
            if obj["kind"] != "header" or obj["schema_version"] != SCHEMA_VERSION:
                raise BaselineError(
                    f"{where}: header kind={obj['kind']!r} schema_version="
                    f"{obj['schema_version']!r}; this stbench reads version {SCHEMA_VERSION}: "
                    "rewrite it with `stbench regress --update-baseline`")
            for k in ("env", "manifest", "settings", "references"):
                if not isinstance(obj[k], dict):
                    raise BaselineError(f"{where}: {k} must be a JSON object")
            header = obj
            continue
        _need(obj, ENTRY_KEYS, where)
        if obj["kind"] != "entry" or not isinstance(obj["key"], str):
            raise BaselineError(f"{where}: expected an entry line with a string key")
        for k in ("value", "noise", "median_ms"):
            v = obj[k]
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                raise BaselineError(f"{where}: {k}={v!r} must be a number or null")
        entries[obj["key"]] = obj
    if header is None:
        raise BaselineError(f"{path}: empty: write it with `stbench regress --update-baseline`")
    return Baseline(path, header["env"], header["manifest"], header["settings"],
                    header["references"], entries)


def env_differences(baseline_env: dict, env: dict) -> list[str]:
    """One line per watched field that differs between the baseline's environment and ours."""
    return [f"{k}: baseline {baseline_env.get(k)}, here {env.get(k)}" for k in ENV_WATCHED
            if baseline_env.get(k) != env.get(k)]


def check_timer(baseline: Baseline, bench: dict) -> None:
    """BaselineError when the baseline's timer differs from this run's (``hide_host``: device
    time only, or the call's host work included): their times are not comparable."""
    def timer(b: dict) -> str:
        return "device time" if b.get("hide_host", False) else "host work included"

    then, now = timer(baseline.settings.get("bench", {})), timer(bench)
    if then != now:
        raise BaselineError(
            f"{baseline.path}: timed with {then}, this run times with {now}: write a new "
            "baseline with --update-baseline")


def check_gpu(baseline: Baseline, env: dict) -> None:
    """BaselineError when the baseline was measured on another GPU model."""
    if baseline.env.get("gpu") != env.get("gpu"):
        raise BaselineError(
            f"{baseline.path}: measured on {baseline.env.get('gpu')!r}, this is "
            f"{env.get('gpu')!r}: use this GPU's baseline ({default_path(env.get('gpu'))}) or "
            "write one with --update-baseline")
