"""The README: its generated sections equal what the committed reports/ and the CLI give, its
Python examples run as written, and the generator's pieces on synthetic folders."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stbench import manifest, readme, results
from stbench.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SNIPPET_TIMEOUT_S = 600  # the API example runs the dense reference at N = 4096 on a CPU


def test_generated_sections_are_current():
    stale = readme.stale_sections(README, ROOT / "reports")
    assert not stale, (f"README.md's generated sections {stale} are out of date: run "
                       "`stbench report --readme` and commit the result")


def test_every_committed_manifest_is_valid():
    folders = readme.suite_folders(ROOT / "reports")
    assert folders, "reports/<suite>/<gpu>/ folders with a manifest"
    for folder in folders:
        manifest.read(folder)  # raises ManifestError naming the file and the field


def python_snippets(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("index", range(len(python_snippets(README.read_text()))))
def test_readme_python_examples_run_as_written(index, tmp_path):
    """Each ```python block of the README in a fresh interpreter, as a user without a GPU runs
    it: no Triton interpreter (so `auto` falls back to the dense reference), an empty tuning
    cache, outside the source tree (the installed package is imported)."""
    code = python_snippets(README.read_text())[index]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["STBENCH_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=SNIPPET_TIMEOUT_S)
    assert proc.returncode == 0, f"README example {index} failed:\n{code}\n{proc.stderr[-3000:]}"


def test_cli_section_lists_every_subcommand():
    text = readme.cli_section(build_parser())
    sub = readme._subparsers(build_parser())
    for name in sub.choices:
        assert f"`stbench {name}" in text, name
    assert "`stbench model train`" in text and "`stbench layouts show`" in text
    assert "`quick`" in text and "`standard`" in text


def test_render_replaces_only_between_markers():
    begin, end = readme.BEGIN.format(name="cli"), readme.END.format(name="cli")
    text = f"intro\n{begin}\nold\n{end}\noutro\n"
    out = readme.render(text, {"cli": "new\n"})
    assert out == f"intro\n{begin}\nnew\n{end}\noutro\n"
    with pytest.raises(readme.ReadmeError, match="stbench:results:begin"):
        readme.render(text, {"results": "x\n"})


def _row(backend, n, ms, mode="fwd", stamp="2026-01-01T00:00:00+00:00"):
    return results.ResultRow(
        batch=1, heads=8, n_ctx=n, head_dim=64, dtype="bfloat16", mode=mode, layout="causal",
        block=128, token_density=0.5, block_density=0.5, layout_hash="h", nnz=1,
        backend=backend, status="ok", median_ms=ms, timestamp=stamp)


def _suite(tmp_path, files, **kw):
    folder = tmp_path / "reports" / "demo" / "h200"
    for name, rows in files.items():
        results.append_rows(folder / name, rows)
    manifest.write(folder, manifest.Manifest(
        description="a demo", command="stbench sweep", commit="abc", date="2026-01-01T00:00:00+00:00",
        duration_s=1.0, rows=sum(len(r) for r in files.values()), results=tuple(files), **kw))
    return folder


def test_results_section_compares_within_a_run_and_the_newest_run_wins(tmp_path):
    later = "2026-02-01T00:00:00+00:00"
    _suite(tmp_path, {
        "old.jsonl": [_row("triton", 1024, 1.0), _row("flex", 1024, 2.0),
                      _row("triton", 2048, 2.0), _row("flex", 2048, 3.0)],
        "new.jsonl": [_row("triton", 1024, 1.0, stamp=later), _row("flex", 1024, 1.5, stamp=later),
                      _row("sdpa", 1024, 1.25, stamp=later)],
    })
    text = readme.results_section(tmp_path / "reports", tmp_path)
    assert "### demo (H200)" in text
    # N = 1024 from the newer run (its fastest peer, sdpa: 1.25 / 1.0), 2048 from the older
    assert "| causal | fwd | triton 2 (N = 2048) | flex 3 | 1.25 1.50 |" in text
    assert "[manifest](reports/demo/h200/manifest.json)" in text


def test_results_section_of_an_explicit_comparison_and_of_logs(tmp_path):
    folder = _suite(tmp_path, {"results.jsonl": [_row("triton", 1024, 1.0),
                                                 _row("cupy", 1024, 2.0)]},
                    compare={"ours": ["cupy"], "against": ["triton"]}, notes="read this")
    (folder / "tests.log").write_text("== 12 passed, 3 warnings in 4.5s (0:00:04) ==\n"
                                      "========= ERROR SUMMARY: 0 errors\n")
    text = readme.results_section(tmp_path / "reports", tmp_path)
    assert "Speedup = triton's median time / cupy's" in text
    assert "| causal | fwd | cupy 2 (N = 1024) | triton 1 | 0.50 |" in text
    assert "pytest: 12 passed; ERROR SUMMARY: 0 errors" in text
    assert "_read this_" in text
