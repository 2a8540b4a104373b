"""A sweep's grid (``SweepConfig``, from a preset or a TOML file), its groups and its picks.

Presets are the TOML files in ``stbench/sweep/presets/`` (``SweepConfig.preset(name)``); a
custom grid is a TOML file with the same keys (``SweepConfig.from_toml``). Rows are grouped by
(N, layout, dtype) (``plan_groups``): one layout, one set of seeded inputs and one dense
reference per mode serve every backend of the group. ``load_picks`` reads the (block, config)
of each ok row of an earlier results file, for ``--picks``.

An output folder holds ``results.jsonl`` (the rows), ``tune.jsonl`` / ``tune.json`` (with
``--tune``) and the scratch folder ``WORK_DIR`` (worker task files and logs).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from stbench import backends, results
from stbench.problems import STANDARD_BLOCK, LayoutSpec, Problem, layout_spec

PRESET_DIR = Path(__file__).resolve().parent / "presets"
WORK_DIR = ".work"
TUNE_CACHE = "tune.json"


def preset_names() -> list[str]:
    """The presets shipped in ``stbench/sweep/presets``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


class SweepError(ValueError):
    """A sweep configuration or output folder is invalid; the message says how to fix it."""


@dataclass(frozen=True)
class SweepConfig:
    """A grid. ``batch`` = max(1, tokens // N) unless ``batch`` is set. Layout names refer to
    ``problems.LAYOUT_SPECS`` or to ``[layout.NAME]`` tables (builder, block, parameters);
    ``block`` (if set) overrides every spec's block; ``fit_block`` builds a pattern that cannot
    exist at its block at the largest block that fits (the row records the block); ``max_n``
    caps N per backend (the dense reference is quadratic); ``triton_interpret`` runs Triton under
    its interpreter when there is no GPU."""

    name: str
    ns: tuple[int, ...]
    layouts: tuple[LayoutSpec, ...]
    backends: tuple[str, ...]
    modes: tuple[str, ...] = ("fwd", "fwd+bwd")
    dtypes: tuple[str, ...] = ("bfloat16",)
    tokens: int = 65536
    batch: int | None = None
    heads: int = 8
    head_dim: int = 64
    warmup_ms: float = 25
    rep_ms: float = 100
    flush_l2: bool = True
    min_reps: int = 3
    row_timeout_s: float = 300
    max_n: tuple[tuple[str, int], ...] = ()
    triton_interpret: bool = False
    tune_backends: tuple[str, ...] = ()  # () = every backend of the grid
    tune_strategy: str = "local"
    tune_rep_ms: float = 40
    tune_max_evals: int | None = None  # candidates measured per (problem, backend); None: no cap
    precompile_workers: int = 0  # processes compiling kernels ahead of timing; 0: off
    seed: int = 0
    description: str = ""
    source: dict = field(default_factory=dict, compare=False, repr=False)

    KEYS = ("name", "description", "ns", "layouts", "backends", "modes", "dtypes", "tokens",
            "batch", "heads", "head_dim", "block", "warmup_ms", "rep_ms", "flush_l2",
            "min_reps", "row_timeout_s", "max_n", "triton_interpret", "tune_backends",
            "tune_strategy", "tune_rep_ms", "tune_max_evals", "precompile_workers", "seed",
            "layout", "fit_block")

    @staticmethod
    def from_dict(d: dict, where: str = "sweep config") -> "SweepConfig":
        unknown = sorted(set(d) - set(SweepConfig.KEYS))
        if unknown:
            raise SweepError(
                f"{where}: unknown keys {unknown}; known: {', '.join(SweepConfig.KEYS)}")
        for k in ("ns", "layouts", "backends"):
            if not d.get(k):
                raise SweepError(f"{where}: '{k}' must be a non-empty list")
        defs = d.get("layout", {})
        specs = []
        for name in d["layouts"]:
            if name in defs:
                t = dict(defs[name])
                builder = t.pop("builder", name)
                block = t.pop("block", d.get("block", STANDARD_BLOCK))
                reblock = t.pop("reblock", None)
                try:
                    specs.append(LayoutSpec(name, builder, block, tuple(sorted(t.items())),
                                            reblock=reblock))
                except ValueError as exc:
                    raise SweepError(f"{where}: [layout.{name}]: {exc}") from None
            else:
                s = layout_spec(name)
                if "block" in d:
                    s = replace(s, block=d["block"])
                specs.append(s)
        if d.get("fit_block"):
            specs = [replace(s, fit_block=True) for s in specs]
        for b in d["backends"]:
            backends.info(b)  # UnknownBackend names the registered ones
        workers = d.get("precompile_workers", 0)
        if not isinstance(workers, int) or workers < 0:
            raise SweepError(f"{where}: precompile_workers={workers!r} must be an int >= 0 "
                             "(0: compile on first call; N: N processes compile ahead)")
        kw = {k: d[k] for k in ("name", "tokens", "batch", "heads", "head_dim", "warmup_ms",
                                "rep_ms", "flush_l2", "min_reps", "row_timeout_s",
                                "triton_interpret", "tune_strategy", "tune_rep_ms",
                                "tune_max_evals", "precompile_workers", "seed",
                                "description") if k in d}
        for k in ("modes", "dtypes", "tune_backends"):
            if k in d:
                kw[k] = tuple(d[k])
        try:
            return SweepConfig(
                ns=tuple(int(n) for n in d["ns"]), layouts=tuple(specs),
                backends=tuple(d["backends"]),
                max_n=tuple(sorted((str(k), int(v)) for k, v in d.get("max_n", {}).items())),
                source=dict(d), **kw,
            )
        except TypeError as exc:
            raise SweepError(f"{where}: {exc}") from None

    @staticmethod
    def from_toml(path) -> "SweepConfig":
        path = Path(path)
        try:
            d = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SweepError(f"{path}: cannot read the sweep config ({exc})") from None
        d.setdefault("name", path.stem)
        return SweepConfig.from_dict(d, str(path))

    @staticmethod
    def preset(name: str) -> "SweepConfig":
        path = PRESET_DIR / f"{name}.toml"
        if not path.exists():
            raise SweepError(f"preset {name!r} does not exist: use one of "
                             f"{', '.join(preset_names())} or --config FILE.toml")
        return SweepConfig.from_toml(path)

    def with_overrides(self, **changes) -> "SweepConfig":
        """The same grid with some keys replaced (None values ignored), revalidated."""
        d = dict(self.source)
        d.update({k: v for k, v in changes.items() if v is not None})
        return SweepConfig.from_dict(d, f"{self.name} with overrides")

    def batch_for(self, n: int) -> int:
        return self.batch or max(1, self.tokens // n)

    def spec(self, name: str) -> LayoutSpec:
        return next(s for s in self.layouts if s.name == name)

    def problem(self, n, layout_name, dtype, mode) -> Problem:
        return Problem(self.spec(layout_name), n, self.batch_for(n), self.heads, self.head_dim,
                       dtype, mode, self.seed)


@dataclass(frozen=True)
class Group:
    n: int
    layout: str
    dtype: str
    items: tuple[tuple[str, str], ...]  # (mode, backend), in run order


def plan_groups(cfg: SweepConfig) -> list[Group]:
    return [
        Group(n, spec.name, dtype, tuple((m, b) for m in cfg.modes for b in cfg.backends))
        for n in cfg.ns for spec in cfg.layouts for dtype in cfg.dtypes
    ]


def item_key(cfg: SweepConfig, group: Group, mode: str, backend: str) -> str:
    return results.row_key("sweep", backend, group.layout, group.n, cfg.batch_for(group.n),
                           cfg.heads, cfg.head_dim, group.dtype, mode)


def load_picks(path) -> dict:
    """{(backend, layout, N, mode, dtype): (block, config)} of the 'ok' sweep rows of an earlier
    results file: ``--picks`` re-measures exactly those configurations (say, after a kernel
    change) instead of tuning or taking defaults."""
    path = Path(path)
    if not path.exists():
        raise SweepError(f"--picks {path}: no such results file (give a results.jsonl)")
    return {(r.backend, r.layout, r.n_ctx, r.mode, r.dtype): (r.block, r.config or None)
            for r in results.read_rows(path) if r.status == "ok" and r.kind == "sweep"}


def pick_key(prob: Problem, backend: str) -> tuple:
    return (backend, prob.layout.name, prob.n_ctx, prob.mode, prob.dtype)


def use_interpreter_if_no_gpu(cfg: SweepConfig) -> None:
    """Run Triton under its interpreter when the config asks for it and there is no GPU (set
    before the backend is first imported)."""
    if cfg.triton_interpret and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
