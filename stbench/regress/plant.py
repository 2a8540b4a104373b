"""Planted faults for proving the regression gate: write a COPY of a kernel tree with one
backend deliberately slowed or broken, to be used as ``stbench ab --head-dir`` /
``--base-dir`` or ``stbench regress --kernels-dir``. Nothing here changes the installed
kernels; the fault exists only in the copy.

    python -m stbench.regress.plant --backend triton --fault slow:0.05 --out /tmp/slow
    python -m stbench.regress.plant --backend triton --fault drop-block --out /tmp/wrong
    python -m stbench.regress.plant --fault 'config:{"num_stages": 1}' --out /tmp/tiles

Faults (code appended to the copy's ``<backend>/backend.py``, rebinding its ``attention``):

    slow:F       every call takes about (1 + F) times as long: on a call with new shapes or a new
                 layout the original forward (and forward+backward) is timed (after a warm-up
                 call), then each call queues a spin of F x the forward time after the forward
                 (``torch.cuda._sleep``, calibrated to the clock) and, through a hook on the
                 output's gradient, F x the backward time before the backward. A proportional
                 slowdown of every problem, the same on every GPU.
    drop-block   the kernel never sees the layout's first stored block (head 0, query block 0:
                 the first key block it attends to), so those queries' outputs are wrong; the
                 dense check (which always looks at the first query block) must call it wrong.
    config:JSON  every call runs this (partial) configuration, the backend's own keys, whatever
                 the caller asked for: a forced poor tile configuration.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .problems import package_of
from .trees import KERNELS, TreeError, kernels_dir_of, repo_root

FAULTS = ("slow:F", "drop-block", "config:JSON")
MARK = "# ---- planted fault (stbench.regress.plant) ----"

_COMMON = '''
{mark}
# fault: {fault}
import time as _plant_time

import torch as _plant_torch

_planted_attention = attention
'''

_SLOW = '''
_PLANT_FRACTION = {fraction!r}
_PLANT_WARM_CALLS = 1
_PLANT_TIMED_CALLS = 3
_plant_costs = {{}}
_plant_cycles = {{}}


def _plant_clock_ms(device, fn):
    """Wall (CPU) or CUDA-event time of fn() in ms."""
    if device.type == "cuda":
        start = _plant_torch.cuda.Event(enable_timing=True)
        end = _plant_torch.cuda.Event(enable_timing=True)
        _plant_torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t = _plant_time.perf_counter()
    fn()
    return (_plant_time.perf_counter() - t) * 1e3


def _plant_cycles_per_ms(device):
    if device not in _plant_cycles:
        probe = 10_000_000
        ms = min(_plant_clock_ms(device, lambda: _plant_torch.cuda._sleep(probe))
                 for _ in range(3))
        _plant_cycles[device] = probe / ms
    return _plant_cycles[device]


def _plant_spin(ms, device):
    if ms <= 0:
        return
    if device.type == "cuda":
        _plant_torch.cuda._sleep(max(1, int(ms * _plant_cycles_per_ms(device))))
    else:
        end = _plant_time.perf_counter() + ms / 1e3
        while _plant_time.perf_counter() < end:
            pass


def _plant_best_ms(device, fn):
    for _ in range(_PLANT_WARM_CALLS):
        _plant_clock_ms(device, fn)
    return min(_plant_clock_ms(device, fn) for _ in range(_PLANT_TIMED_CALLS))


def _plant_cost(q, k, v, layout, scale, config, grad):
    key = (tuple(q.shape), q.dtype, str(q.device), layout.content_hash, repr(config), grad)
    if key not in _plant_costs:
        a, b, c = (t.detach() for t in (q, k, v))

        def fwd():
            with _plant_torch.no_grad():
                _planted_attention(a, b, c, layout, scale, config)

        fwd_ms = _plant_best_ms(q.device, fwd)
        bwd_ms = 0.0
        if grad:
            qa, kb, vc = (t.detach().clone().requires_grad_() for t in (q, k, v))
            do = _plant_torch.randn_like(qa)

            def fwd_bwd():
                out = _planted_attention(qa, kb, vc, layout, scale, config)
                _plant_torch.autograd.grad(out, (qa, kb, vc), do)

            bwd_ms = max(0.0, _plant_best_ms(q.device, fwd_bwd) - fwd_ms)
        _plant_costs[key] = (fwd_ms, bwd_ms)
    return _plant_costs[key]


def attention(q, k, v, layout, scale, config=None):
    grad = _plant_torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    fwd_ms, bwd_ms = _plant_cost(q, k, v, layout, scale, config, grad)
    out = _planted_attention(q, k, v, layout, scale, config)
    _plant_spin(_PLANT_FRACTION * fwd_ms, q.device)
    if out.requires_grad:
        def _slow_backward(g):
            _plant_spin(_PLANT_FRACTION * bwd_ms, g.device)
            return g

        out.register_hook(_slow_backward)
    return out
'''

_DROP = '''
_plant_dropped = {{}}


def _plant_drop_first_block(layout):
    """The layout without its first stored block (head 0, first query block, first key block)."""
    key = layout.content_hash
    if key not in _plant_dropped:
        from stbench.layouts import Layout

        _plant_dropped[key] = Layout.from_parts(
            layout.n_ctx, layout.heads, layout.block, layout.name, layout.heads_idx[1:],
            layout.q_blocks[1:], layout.k_blocks[1:], layout.kinds[1:], layout.mask_ids[1:],
            layout.masks, layout.perms, layout.head_perm)
    return _plant_dropped[key]


def attention(q, k, v, layout, scale, config=None):
    return _planted_attention(q, k, v, _plant_drop_first_block(layout), scale, config)
'''

_CONFIG = '''
_PLANT_CONFIG = {config!r}


def attention(q, k, v, layout, scale, config=None):
    return _planted_attention(q, k, v, layout, scale, {{**(config or {{}}), **_PLANT_CONFIG}})
'''


def fault_code(fault: str) -> str:
    """The code appended to a backend module for ``fault`` (ValueError naming the forms)."""
    head = _COMMON.format(mark=MARK, fault=fault)
    if fault == "drop-block":
        return head + _DROP.format()
    kind, _, arg = fault.partition(":")
    if kind == "slow":
        try:
            fraction = float(arg)
        except ValueError:
            fraction = -1.0
        if not 0 < fraction <= 10:
            raise ValueError(f"--fault {fault!r}: slow:F needs a fraction 0 < F <= 10, e.g. "
                             "slow:0.05 for 5% slower")
        return head + _SLOW.format(fraction=fraction)
    if kind == "config":
        try:
            config = json.loads(arg)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--fault {fault!r}: config:JSON is not JSON ({exc.msg})") from None
        if not isinstance(config, dict) or not config:
            raise ValueError(f"--fault {fault!r}: config:JSON must be a non-empty JSON object")
        return head + _CONFIG.format(config=config)
    raise ValueError(f"--fault {fault!r} is unknown: use one of {', '.join(FAULTS)}")


def write_planted(source, out, backend: str, fault: str) -> Path:
    """Copy the kernel tree ``source`` (a checkout, or its kernels folder) to ``out/kernels``
    with ``fault`` planted in ``backend``'s backend module; returns ``out`` (usable as a
    checkout by --head-dir / --base-dir / --kernels-dir)."""
    code = fault_code(fault)
    rel = package_of(backend)  # 'triton.backend'
    src = kernels_dir_of(Path(source))
    out = Path(out)
    dest = out / KERNELS
    if dest.exists():
        raise TreeError(f"{dest} exists: pass a new --out folder (nothing was overwritten)")
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = dest.joinpath(*rel.split(".")).with_suffix(".py")
    if not target.is_file():
        shutil.rmtree(dest)
        raise TreeError(f"{src} has no {target.relative_to(dest)}: backend {backend!r} is not "
                        "in that tree")
    with target.open("a", encoding="utf-8") as f:
        f.write(code)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m stbench.regress.plant",
        description="Write a copy of a kernel tree with a planted fault in one backend (to "
        "prove that stbench ab / regress catch it). Faults: slow:F (every call about 1 + F "
        "times as long), drop-block (the layout's first block never computed: wrong), "
        "config:JSON (a forced configuration).")
    p.add_argument("--backend", default="triton", help="the backend to plant the fault in")
    p.add_argument("--fault", required=True, help=f"one of {', '.join(FAULTS)}")
    p.add_argument("--out", required=True, help="a new folder; the copy goes to OUT/kernels")
    p.add_argument("--from", dest="source", default=None,
                   help="the tree to copy (a checkout or its kernels folder; default: this "
                   "checkout)")
    args = p.parse_args(argv)
    try:
        out = write_planted(args.source or repo_root(), args.out, args.backend, args.fault)
    except (ValueError, OSError) as exc:
        print(f"plant: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
