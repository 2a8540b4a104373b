"""Manifests: written and read back, every bad field named, a finished run's manifest."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from stbench import manifest, results


def _manifest(**kw):
    d = dict(description="a run", command="stbench sweep --preset quick --out DIR",
             commit="abc1234", date="2026-11-28T15:20:51+00:00", duration_s=516.0, rows=2,
             environment={"gpu": "NVIDIA H200"}, results=("results.jsonl",))
    d.update(kw)
    return manifest.Manifest(**d)


def _row():
    return results.ResultRow(batch=1, heads=2, n_ctx=256, head_dim=32, dtype="float32",
                             mode="fwd", layout="causal", block=16, token_density=0.5,
                             block_density=0.5, layout_hash="h", nnz=1, backend="dense",
                             status="ok", median_ms=1.0)


def test_write_then_read_gives_the_same_manifest(tmp_path):
    (tmp_path / "results.jsonl").write_text("")
    (tmp_path / "a.log").write_text("")
    m = _manifest(parts=({"files": ["a.log"], "command": "x", "commit": "abc",
                          "date": "2026-11-28T15:20:51+00:00", "description": "part"},),
                  compare={"ours": ["cupy"], "against": ["triton"]}, notes="n")
    path = manifest.write(tmp_path, m)
    assert path.name == "manifest.json"
    assert json.loads(path.read_text())["schema_version"] == manifest.SCHEMA_VERSION
    assert manifest.read(tmp_path) == m


@pytest.mark.parametrize("change, message", [
    ({"schema": "other"}, "schema='other'"),
    ({"schema_version": 99}, "schema_version=99"),
    ({"date": "yesterday"}, "date='yesterday'"),
    ({"date": "2026-11-28T15:20:51"}, "with a time zone"),
    ({"duration_s": -1}, "duration_s=-1"),
    ({"rows": 1.5}, "rows=1.5"),
    ({"commit": 7}, "commit must be"),
    ({"description": ""}, "description must be"),
    ({"colour": "red"}, "unknown keys \\['colour'\\]"),
    ({"compare": {"mine": ["x"]}}, "compare has the keys"),
    ({"parts": [{"files": ["a"]}]}, "lacks \\['command', 'commit', 'date'\\]"),
    ({"results": "results.jsonl"}, "results must be a list"),
])
def test_a_bad_field_is_named(tmp_path, change, message):
    d = _manifest().to_dict()
    d.update(change)
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(manifest.ManifestError, match=message):
        manifest.read(tmp_path)


def test_missing_key_not_json_and_missing_file_are_clear(tmp_path):
    with pytest.raises(manifest.ManifestError, match="no manifest"):
        manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(manifest.ManifestError, match="not valid JSON"):
        manifest.read(tmp_path)
    d = _manifest().to_dict()
    del d["commit"]
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(manifest.ManifestError, match="missing keys \\['commit'\\]"):
        manifest.read(tmp_path)
    d = _manifest().to_dict()
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(manifest.ManifestError, match="'results.jsonl', which is not in"):
        manifest.read(tmp_path)


def test_write_refuses_an_invalid_manifest(tmp_path):
    with pytest.raises(manifest.ManifestError, match="date="):
        manifest.write(tmp_path, _manifest(date="now"))
    assert not (tmp_path / "manifest.json").exists()


def test_write_for_run_counts_rows_and_records_the_environment(tmp_path):
    results.append_rows(tmp_path / results.RESULTS_FILE, [_row(), _row()])
    results.append_rows(tmp_path / results.TUNE_FILE, [_row()])
    (tmp_path / "time_vs_n_fwd.png").write_bytes(b"\x89PNG")
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    path = manifest.write_for_run(tmp_path, "stbench sweep --preset quick --out X", start,
                                  start + timedelta(seconds=61.25))
    m = manifest.read(path.parent)
    assert (m.rows, m.duration_s, m.date) == (2, 61.2, "2026-01-02T03:04:05+00:00")
    assert m.results == ("results.jsonl",) and m.plots == ("time_vs_n_fwd.png",)
    assert m.command == "stbench sweep --preset quick --out X"
    assert "torch" in m.environment and m.commit == m.environment["git_sha"]
