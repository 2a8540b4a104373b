"""A sweep killed at any moment resumes into a readable, complete, duplicate-free results file;
unreadable lines are named (and skipped with --skip-bad-lines); one sweep per output folder."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
import warnings

import pytest

from stbench import backends, cli, results
from stbench.sweep import SweepConfig, SweepError, run_sweep

KILL_WAIT_S = 120  # the subprocess sweep's first row (imports included) on a busy machine


def _row(**kw):
    base = dict(batch=2, heads=8, n_ctx=1024, head_dim=64, dtype="bfloat16", mode="fwd",
                layout="causal", block=128, token_density=0.5, block_density=0.56,
                layout_hash="abc", nnz=36, backend="dense", status="ok", median_ms=1.5)
    base.update(kw)
    return results.ResultRow(**base)


def _config_text(**kw):
    d = {"name": "dur", "ns": [256], "layouts": ["causal", "local"], "backends": ["dense"],
         "modes": ["fwd"], "dtypes": ["float32"], "heads": 2, "head_dim": 16,
         "tokens": 256, "warmup_ms": 1, "rep_ms": 2, "min_reps": 2, "flush_l2": False,
         "block": 32, **kw}
    return "\n".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + "\n"


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "dur.toml"
    path.write_text(_config_text())
    return SweepConfig.from_toml(path)


def _check_complete(out, cfg):
    """The file reads without a warning, holds every row of the grid once."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = results.read_rows(out / results.RESULTS_FILE)
    keys = [r.key() for r in rows]
    assert len(keys) == len(set(keys)), "duplicate rows"
    assert len(rows) == len(cfg.ns) * len(cfg.layouts) * len(cfg.modes) * len(cfg.backends)
    assert all(r.status == "ok" for r in rows)
    return rows


# ------------------------------------------------------------------------ a cut-off last line
def test_a_cut_last_line_is_repaired_at_every_byte_before_appending(tmp_path):
    p = tmp_path / results.RESULTS_FILE
    results.append_rows(p, [_row(), _row(backend="sdpa")])
    full = p.read_bytes()
    start = full.rindex(b"\n", 0, len(full) - 1) + 1  # the last line's first byte
    for cut in range(start + 1, len(full)):  # every cut of the last line, newline included
        p.write_bytes(full[:cut])
        cut_file = p.with_name(p.name + results.CUT_SUFFIX)
        cut_file.unlink(missing_ok=True)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            results.append_rows(p, [_row(backend="flex")])
        complete = cut == len(full) - 1  # only the newline was missing: the row is whole
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no partial line left to warn about
            back = [r.backend for r in results.read_rows(p)]
        assert back == (["dense", "sdpa", "flex"] if complete else ["dense", "flex"]), cut
        if not complete:
            assert cut_file.read_bytes() == full[start:cut] + b"\n"
            assert any(f"{p}:2" in str(x.message) and str(cut_file) in str(x.message)
                       for x in w)


def test_a_sweep_resumes_after_a_cut_at_any_point_of_its_last_line(tmp_path, cfg):
    out = tmp_path / "out"
    run_sweep(cfg, out, progress=False)
    full_rows = _check_complete(out, cfg)
    data = (out / results.RESULTS_FILE).read_bytes()
    start = data.rindex(b"\n", 0, len(data) - 1) + 1
    for cut in (start + 1, start + 150, len(data) - 1, len(data)):
        (out / results.RESULTS_FILE).write_bytes(data[:cut])
        counts = run_sweep(cfg, out, resume=True, progress=False)
        rows = _check_complete(out, cfg)
        assert {r.key() for r in rows} == {r.key() for r in full_rows}
        assert counts.get("ok", 0) == (0 if cut >= len(data) - 1 else 1)


STALLING_SWEEP = textwrap.dedent("""
    import sys, time
    from stbench import cli
    from stbench.reference import dense

    measure = dense.attention

    def stall_on_local(q, k, v, layout, *args, **kw):  # the second group never ends
        if layout.name.startswith("local"):
            time.sleep(3600)
        return measure(q, k, v, layout, *args, **kw)

    dense.attention = stall_on_local
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_a_sweep_killed_by_sigkill_resumes_and_reports(tmp_path):
    """The user's sequence: a real sweep process SIGKILLed while it runs, its last line cut to
    150 bytes (killed mid-write), --resume, report."""
    config = tmp_path / "dur.toml"
    config.write_text(_config_text())
    out = tmp_path / "out"
    argv = ["sweep", "--config", str(config), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-P", "-c", STALLING_SWEEP, *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = out / results.RESULTS_FILE
    deadline = time.time() + KILL_WAIT_S
    while time.time() < deadline and not (res.exists() and res.read_bytes().endswith(b"\n")):
        time.sleep(0.05)
    assert proc.poll() is None  # running: stalled in its second row
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = res.read_bytes()
    assert first.count(b"\n") == 1
    res.write_bytes(first[:150])
    assert cli.main(argv + ["--resume"]) == 0  # the dead sweep's lock does not block it
    _check_complete(out, SweepConfig.from_toml(config))
    assert cli.main(["report", str(out)]) == 0


# ------------------------------------------------------------------------ unreadable lines
def _file_with_a_bad_middle_line(path):
    results.append_rows(path, [_row()])
    with path.open("a") as f:
        f.write('{"batch": 2, "he{"not": "json"\n')
    results.append_rows(path, [_row(backend="sdpa")])


def test_a_bad_line_names_file_line_and_the_option(tmp_path):
    p = tmp_path / results.RESULTS_FILE
    _file_with_a_bad_middle_line(p)
    with pytest.raises(results.ResultsError, match="--skip-bad-lines") as info:
        results.read_rows(p)
    assert f"{p}:2" in str(info.value)
    with pytest.warns(UserWarning, match=f"{p}:2"):
        rows = results.read_rows(p, skip_bad_lines=True)
    assert [r.backend for r in rows] == ["dense", "sdpa"]
    assert cli.main(["report", str(tmp_path)]) == 2
    with pytest.warns(UserWarning, match=f"{p}:2"):
        assert cli.main(["report", str(tmp_path), "--skip-bad-lines"]) == 0


def test_resume_sets_bad_lines_aside_with_skip_bad_lines(tmp_path, cfg):
    out = tmp_path / "out"
    run_sweep(cfg, out, progress=False)
    res = out / results.RESULTS_FILE
    lines = res.read_text().splitlines(keepends=True)
    res.write_text(lines[0] + lines[1][:40] + "\n" + "".join(lines[2:]))  # row 2 damaged
    with pytest.raises(results.ResultsError, match=f"{res}:2.*--skip-bad-lines"):
        run_sweep(cfg, out, resume=True, progress=False)
    with pytest.warns(UserWarning, match=f"{res}:2"):
        counts = run_sweep(cfg, out, resume=True, progress=False, skip_bad_lines=True)
    assert counts["ok"] == 1  # the damaged row measured again
    _check_complete(out, cfg)
    assert res.with_name(res.name + results.BAD_SUFFIX).read_text() == lines[1][:40] + "\n"


# ------------------------------------------------------------------------ one sweep per folder
@pytest.fixture
def gated_backend(monkeypatch):
    """A backend whose first call waits until the test opens the gate (a sweep in progress)."""
    started, gate = threading.Event(), threading.Event()
    mod = types.ModuleType("stbench_gated_backend")
    mod.check_available = lambda device, dtype: None
    mod.config_space = lambda layout, head_dim, dtype: [{}]

    first = []

    def attention(q, k, v, layout, scale, config=None):
        first.append(first[0] if first else threading.get_ident())
        if threading.get_ident() != first[0]:
            raise RuntimeError("a second sweep measured a row")
        started.set()
        gate.wait(KILL_WAIT_S)
        return backends.load("dense").attention(q, k, v, layout, scale)

    mod.attention = attention
    monkeypatch.setitem(sys.modules, "stbench_gated_backend", mod)
    monkeypatch.setitem(backends.REGISTRY, "gated", backends.BackendInfo(
        "gated", "stbench_gated_backend", ("torch",), "", needs_gpu=False, backward=True))
    return started, gate


def test_a_second_sweep_on_the_same_out_refuses_naming_the_holder(tmp_path, gated_backend):
    started, gate = gated_backend
    path = tmp_path / "dur.toml"
    path.write_text(_config_text(backends=["gated"], layouts=["causal"]))
    cfg = SweepConfig.from_toml(path)
    out = tmp_path / "out"
    first = threading.Thread(target=run_sweep, args=(cfg, out), kwargs={"progress": False})
    first.start()
    try:
        assert started.wait(KILL_WAIT_S)
        with pytest.raises(SweepError) as info:
            run_sweep(cfg, out, resume=True, progress=False)
        msg = str(info.value)
        assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg and "--out" in msg
    finally:
        gate.set()
        first.join()
    (row,) = results.read_rows(out / results.RESULTS_FILE)
    assert row.status == "ok"
    assert run_sweep(cfg, out, resume=True, progress=False)["skipped"] == 1  # lock released


def test_out_naming_a_file_is_a_clear_error(tmp_path, cfg):
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(SweepError, match="--out.*is a file"):
        run_sweep(cfg, f, progress=False)


def test_a_folder_given_as_a_results_file_is_a_clear_error(tmp_path):
    with pytest.raises(results.ResultsError, match="is not a file"):
        results.read_rows(tmp_path)
