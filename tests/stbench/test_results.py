"""Result rows: JSONL round trip, validation errors that name the file and line."""

import json
import warnings

import pytest

from stbench import results


def _row(**kw):
    base = dict(batch=2, heads=8, n_ctx=1024, head_dim=64, dtype="bfloat16", mode="fwd",
                layout="causal", block=128, token_density=0.5, block_density=0.56,
                layout_hash="abc", nnz=36, backend="dense", status="ok", median_ms=1.5,
                p20_ms=1.4, p80_ms=1.6, reps=10, config={"BLOCK_M": 64}, env={"gpu": None})
    base.update(kw)
    return results.ResultRow(**base)


def test_round_trip(tmp_path):
    p = tmp_path / "results.jsonl"
    rows = [_row(), _row(backend="sdpa", status="oom", median_ms=None, error="CUDA OOM")]
    results.append_rows(p, rows[:1])
    results.append_rows(p, rows[1:])
    back = results.read_rows(p)
    assert back == rows
    assert back[0].key() != back[1].key()


def test_non_finite_numbers_become_null(tmp_path):
    p = tmp_path / "r.jsonl"
    results.append_rows(p, [_row(status="incorrect", err=float("inf"), error="NaN output")])
    assert json.loads(p.read_text())["err"] is None
    assert results.read_rows(p)[0].err is None


def test_bad_status_is_named():
    with pytest.raises(results.ResultsError, match="status='fast'"):
        _row(status="fast")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(schema_version=99), "schema_version=99"),
        (lambda d: d.pop("backend"), "missing keys \\['backend'\\]"),
        (lambda d: d.update(colour="red"), "unknown keys \\['colour'\\]"),
        (lambda d: d.update(n_ctx="1024"), "n_ctx='1024' must be an integer"),
        (lambda d: d.update(median_ms="fast"), "median_ms='fast' must be a number"),
        (lambda d: d.update(config=[1]), "config must be a JSON object"),
    ],
)
def test_bad_rows_name_file_line_and_key(tmp_path, mutate, match):
    good = _row().to_dict()
    bad = dict(good)
    mutate(bad)
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(results.ResultsError, match=match) as info:
        results.read_rows(p)
    assert f"{p}:2" in str(info.value)


def test_not_json_is_a_clear_error(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text("hello\n" + json.dumps(_row().to_dict()) + "\n")
    with pytest.raises(results.ResultsError, match=":1: not valid JSON"):
        results.read_rows(p)


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(results.ResultsError, match="stbench sweep"):
        results.read_rows(tmp_path / "nope.jsonl")


def test_partial_last_line_is_skipped_and_then_moved_aside(tmp_path):
    p = tmp_path / "r.jsonl"
    results.append_rows(p, [_row()])
    with p.open("a") as f:
        f.write('{"batch": 2, "hea')  # a crash mid-write
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert len(results.read_rows(p)) == 1
    assert any("partial last line" in str(x.message) for x in w)
    with pytest.warns(UserWarning, match="cut off mid-write"):
        results.append_rows(p, [_row(backend="sdpa")])  # moves the broken line aside first
    assert [r.backend for r in results.read_rows(p)] == ["dense", "sdpa"]
    assert (tmp_path / "r.jsonl.cut").read_text() == '{"batch": 2, "hea\n'


def test_read_folder_skips_other_schemas(tmp_path):
    results.append_rows(tmp_path / "results.jsonl", [_row()])
    results.append_rows(tmp_path / "tune.jsonl", [_row(kind="tune")])
    (tmp_path / "tune_eval.jsonl").write_text('{"schema": "stbench-tune-eval"}\n')
    rows = results.read_folder(tmp_path)
    assert sorted(r.kind for r in rows) == ["sweep", "tune"]
