"""What a new user meets first: help texts and docs that cite only files of the repository,
and a report that says when its times are not kernel timings and fits exponents only where
there are enough points."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from stbench import plots, report, results
from stbench.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"TARGETS\.md|\.\./shared/")  # files of the workspace, not of the repository


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_help_texts_cite_no_file_outside_the_repository():
    for p in _parsers(build_parser()):
        assert not OUTSIDE.search(p.format_help()), p.prog


@pytest.mark.parametrize("path", ["README.md", *sorted(str(p.relative_to(ROOT))
                                                       for p in (ROOT / "docs").glob("*.md"))])
def test_docs_cite_no_file_outside_the_repository(path):
    assert not OUTSIDE.search((ROOT / path).read_text()), path


def test_readme_examples_define_n_ctx_and_build_strided_and_st_mix():
    """tests/stbench/test_readme.py runs these snippets as written; this checks that the ones
    that failed below N = 4096 (strided) and N = 32768 (st_mix) are among them, at a defined N."""
    text = (ROOT / "README.md").read_text()
    tour = next(s for s in re.findall(r"```python\n(.*?)```", text, flags=re.S)
                if "layouts.strided(" in s)
    assert re.search(r"^n_ctx = \d+", tour, flags=re.M) and "layouts.st_mix(n_ctx" in tour


def _row(n, ms, reps, env):
    return results.ResultRow(
        batch=1, heads=2, n_ctx=n, head_dim=32, dtype="float32", mode="fwd", layout="causal",
        block=32, token_density=0.5, block_density=0.5, layout_hash="h", nnz=1,
        backend="dense", status="ok", median_ms=ms, reps=reps, env=env)


@pytest.mark.parametrize("env, banner", [
    ({"gpu": None, "triton_interpret": True},
     "Measured on a CPU and under Triton's interpreter: not kernel timings."),
    ({"gpu": "NVIDIA H200", "triton_interpret": True},
     "Measured under Triton's interpreter: not kernel timings."),
    ({"gpu": "NVIDIA H200", "triton_interpret": False}, None),
])
def test_report_marks_cpu_and_interpreter_timings(env, banner, tmp_path):
    results.append_rows(tmp_path / "results.jsonl",
                        [_row(256, 2.0, 1, env), _row(512, 1.0, 9, env)])
    text = report.write_report(tmp_path).read_text()
    if banner:
        assert f"> **{banner}" in text
    else:
        assert "not kernel timings" not in text
    assert "1 of 2 timed rows were measured with a single repetition" in text


def test_exponents_need_four_points_and_say_when_a_point_was_timed_once():
    """Two noisy CPU points gave 'dense (N^-4.80)'; below MIN_FIT_POINTS there is no fit."""
    assert plots.MIN_FIT_POINTS == 4
    assert plots.exponent_label("dense", [1024, 2048], [4.0, 0.15], [1, 1]) == "dense"
    assert plots.fit_exponent([1024, 2048, 4096], [1, 4, 16]) is None
    ns = [1024, 2048, 4096, 8192]
    ms = [n**2 / 1e6 for n in ns]
    assert plots.exponent_label("dense", ns, ms, [5] * 4) == "dense (N^2.00)"
    assert plots.exponent_label("dense", ns, ms, [5, 1, 5, 5]) == "dense (N^2.00, 1 rep)"
