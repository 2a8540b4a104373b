"""The tuning cache under concurrency: saves from several processes at once are all kept (a
cache that cannot be read is moved to a backup: test_autotune)."""

import subprocess
import sys
import textwrap

import pytest

from stbench.tuning import cache

SAVES_PER_PROCESS = 100
PROCESSES = 2
START_WAIT_S = 120  # both processes' imports on a busy machine

SAVER = textwrap.dedent("""
    import os, sys, time
    from stbench.tuning import cache

    path, who, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    deadline = time.time() + float(sys.argv[5])
    while not os.path.exists(go) and time.time() < deadline:  # start together
        time.sleep(0.001)
    for i in range(n):
        cache.save_entry({"env": ["test"], "layout_hash": f"{who}-{i}", "batch": 4,
                          "head_dim": 64, "dtype": "bfloat16", "mode": "fwd",
                          "objective": "time", "backend": "dense", "config": {}, "block": 64},
                         path)
""")


def _entry(**kw):
    e = {"env": ["test"], "layout_hash": "abc", "batch": 4, "head_dim": 64, "dtype": "bfloat16",
         "mode": "fwd", "objective": "time", "backend": "dense", "config": {}, "block": 64}
    e.update(kw)
    return e


def test_saves_from_two_processes_at_once_are_all_kept(tmp_path):
    path, go = tmp_path / "tune.json", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-P", "-c", SAVER, str(path), f"p{w}",
                               str(SAVES_PER_PROCESS), str(go), str(START_WAIT_S)])
             for w in range(PROCESSES)]
    go.touch()
    assert [p.wait() for p in procs] == [0] * PROCESSES
    entries = cache.load(path)["entries"]
    assert len(entries) == PROCESSES * SAVES_PER_PROCESS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "tune.json"]  # no lock, no tmp


def test_a_cache_path_naming_a_folder_is_a_clear_error(tmp_path):
    with pytest.raises(cache.CacheError, match="is a folder.*tune.json"):
        cache.save_entry(_entry(), tmp_path)
