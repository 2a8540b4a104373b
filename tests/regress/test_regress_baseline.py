"""The baseline file: written atomically and read back; every malformed line named with its
file and line; the GPU model must match; environment changes listed; the problem set."""

from __future__ import annotations

import pytest

from stbench import backends
from stbench.regress import baseline, problems

HEADER = dict(env={"gpu": "NVIDIA H200", "torch": "2.11"}, manifest={"commit": "abc"},
              settings={"passes": 3}, references={"matmul": {"median_ms": 0.2,
                                                             "times_ms": [0.2]}})
ENTRY = {k: None for k in baseline.ENTRY_KEYS if k != "kind"}
ENTRY.update(key="triton|causal|x", status="ok", value=1.5, noise=0.01, median_ms=1.0,
             times_ms=[1.0], units=[1.5])


def test_round_trip(tmp_path):
    path = baseline.write(tmp_path / "b" / "h200.jsonl", HEADER, [ENTRY])
    b = baseline.read(path)
    assert b.env["gpu"] == "NVIDIA H200" and b.reference_ms() == {"matmul": 0.2}
    assert b.entries["triton|causal|x"]["value"] == 1.5
    assert not list(path.parent.glob(".*tmp"))  # no temporary file left


@pytest.mark.parametrize("text, match", [
    ("", "empty"),
    ("not json\n", ":1: not valid JSON"),
    ('{"kind": "header"}\n', "missing keys"),
    ('[1]\n', "JSON object"),
])
def test_bad_files_name_the_line(tmp_path, text, match):
    path = tmp_path / "b.jsonl"
    path.write_text(text)
    with pytest.raises(baseline.BaselineError, match=match):
        baseline.read(path)


def test_bad_entry_and_schema_version(tmp_path):
    path = baseline.write(tmp_path / "b.jsonl", HEADER, [{**ENTRY, "value": "fast"}])
    with pytest.raises(baseline.BaselineError, match=r":2: value='fast'"):
        baseline.read(path)
    text = path.read_text().replace('"schema_version": 1', '"schema_version": 99')
    path.write_text(text)
    with pytest.raises(baseline.BaselineError, match="schema_version"):
        baseline.read(path)
    with pytest.raises(baseline.BaselineError, match="--update-baseline"):
        baseline.read(tmp_path / "missing.jsonl")


def test_gpu_must_match_and_changes_are_listed(tmp_path):
    b = baseline.read(baseline.write(tmp_path / "b.jsonl", HEADER, []))
    baseline.check_gpu(b, {"gpu": "NVIDIA H200"})
    with pytest.raises(baseline.BaselineError, match="H100"):
        baseline.check_gpu(b, {"gpu": "NVIDIA H100 80GB HBM3"})
    diffs = baseline.env_differences(b.env, {"gpu": "NVIDIA H200", "torch": "2.12"})
    assert any(d.startswith("torch: baseline 2.11, here 2.12") for d in diffs)


def test_a_baseline_timed_another_way_is_refused_with_the_fix(tmp_path):
    header = {**HEADER, "settings": {"bench": {"hide_host": True}}}
    b = baseline.read(baseline.write(tmp_path / "b.jsonl", header, []))
    baseline.check_timer(b, {"hide_host": True})
    with pytest.raises(baseline.BaselineError, match="device time.*--update-baseline"):
        baseline.check_timer(b, {"hide_host": False})
    old = baseline.read(baseline.write(tmp_path / "old.jsonl", HEADER, []))  # no bench settings
    with pytest.raises(baseline.BaselineError, match="host work included"):
        baseline.check_timer(old, {"hide_host": True})


def test_gpu_slug_and_default_path():
    assert baseline.gpu_slug("NVIDIA H200") == "h200"
    assert baseline.gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert baseline.gpu_slug(None) == "cpu"
    assert str(baseline.default_path("NVIDIA H200")) == "reports/baselines/h200.jsonl"


def test_the_problem_set_covers_every_kernel_backend_and_builds():
    names = problems.kernel_backends()
    assert "triton" in names and "cupy" in names
    assert not any(backends.info(n).peer or backends.info(n).reference for n in names)
    probs = problems.regress_problems()
    assert {p.layout.name for p in probs} == set(problems.REGRESS_LAYOUTS)
    assert {p.mode for p in probs} == {"fwd", "fwd+bwd"}
    assert all(p.batch * p.n_ctx == 65536 for p in probs)
    for p in probs:
        if p.mode == "fwd":
            assert p.build_layout().n_ctx == p.n_ctx  # st_mix fits a smaller block at 4096
    entries = problems.regress_entries()
    assert len(entries) == len(names) * len(probs)
    assert len({e.key for e in entries}) == len(entries)
    with pytest.raises(ValueError, match="reference"):
        problems.regress_entries(["dense"])
