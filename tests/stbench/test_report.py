"""The report from a synthetic results folder: REPORT.md sections, speedups, PNGs."""

import json

import pytest

from stbench import plots, report, results

ENV = {"gpu": "NVIDIA H200", "gpu_memory_bytes": 150 * 2**30, "torch": "2.11"}


def _row(layout, n, backend, ms, mode="fwd", status="ok", **kw):
    b = 65536 // n
    d = dict(batch=b, heads=8, n_ctx=n, head_dim=64, dtype="bfloat16", mode=mode, layout=layout,
             block=128, token_density=0.5 if layout == "causal" else 0.01, block_density=0.5,
             layout_hash="h", nnz=10, backend=backend, status=status, env=ENV,
             median_ms=ms if status == "ok" else None, tflops=1.0 if status == "ok" else None,
             peak_bytes=1000 * n if status == "ok" else None, inputs_bytes=3 * 2 * b * 8 * n * 64,
             plan_bytes=4096)
    d.update(kw)
    return results.ResultRow(**d)


@pytest.fixture
def folder(tmp_path):
    rows = []
    for layout in ("causal", "st_mix"):
        for n in (1024, 4096, 16384):
            k = n / 1024
            for mode, f in (("fwd", 1.0), ("fwd+bwd", 3.5)):
                rows.append(_row(layout, n, "flex", 2.0 * k * f, mode))
                rows.append(_row(layout, n, "triton", 1.0 * k * f, mode, tuned=True,
                                 config={"BLOCK_M": 64}, block=64))
    rows.append(_row("causal", 16384, "cupy", None, status="oom", error="CUDA out of memory"))
    rows.append(_row("st_mix", 1024, "sdpa", None, status="unsupported", error="not causal"))
    results.append_rows(tmp_path / "results.jsonl", rows)
    results.append_rows(tmp_path / "tune.jsonl", [
        _row("causal", 1024, "triton", 1.0, kind="tune"),
        _row("causal", 1024, "triton", None, kind="tune", status="compile_error", error="ptxas"),
        _row("causal", 1024, "triton", None, kind="tune", status="unsupported",
             error="constraint: block 16: too small"),
    ])
    (tmp_path / "tune_eval.jsonl").write_text(json.dumps({
        "schema": "stbench-tune-eval", "version": 1, "problem": "causal N=1024", "ratio": 1.01,
        "candidates": 40, "tune_evaluated": 12, "tune_s": 9.5, "exhaustive_s": 30.0,
        "best": {"median_ms": 1.0}, "pick": {"median_ms": 1.01}, "lookup_warm_ms": 0.02,
        "lookup_cold_ms": 1.2}) + "\n")
    return tmp_path


def test_report_writes_markdown_and_pngs(folder):
    path = report.write_report(folder)
    text = path.read_text()
    for section in ("## Environment", "## Rows by backend and status",
                    "## Median time (ms), forward", "## Speedup over the fastest peer, forward",
                    "## Speedup over the fastest peer, forward + backward",
                    "## Side by side: our fastest backend against the fastest peer, forward",
                    "## Autotuner's choices", "## Tuning candidates by outcome",
                    "## Autotuner against exhaustive search", "## Failures",
                    "CUDA out of memory", "## Unsupported combinations", "NVIDIA H200"):
        assert section in text, section
    # triton is exactly 2x faster than flex everywhere in the synthetic data
    sp, base = report.speedup_table(report.load(folder)[0], "fwd")
    assert base == "peer"
    assert sp["triton"].tolist() == pytest.approx([2.0] * 6)
    for name in ("time_vs_n_fwd", "time_vs_n_fwd_bwd", "memory_vs_n_fwd", "memory_vs_n_fwd_bwd",
                 "tflops_vs_density"):
        png = folder / f"{name}.png"
        assert png.stat().st_size > 10_000
        assert png.read_bytes()[:4] == b"\x89PNG"
        assert f"({name}.png)" in text


def test_speedup_over_the_fastest_peer(folder):
    """fa4 ran causal only, faster than flex there: it is the denominator on those rows and flex
    on the others; the reference and peers themselves get no speedup column."""
    results.append_rows(folder / "results.jsonl", [
        _row("causal", n, "fa4", n / 1024 * 0.5) for n in (1024, 4096, 16384)])
    df = report.load(folder)[0]
    sbs = report.side_by_side(df, "fwd")
    causal = sbs.loc["causal"]
    assert causal["against"].tolist() == ["fa4"] * 3
    assert causal["speedup"].tolist() == pytest.approx([0.5] * 3)
    assert sbs.loc["st_mix"]["against"].tolist() == ["flex"] * 3
    assert sbs.loc["st_mix"]["speedup"].tolist() == pytest.approx([2.0] * 3)
    sp, base = report.speedup_table(df, "fwd")
    assert base == "peer" and "fa4" not in sp.columns and "flex" not in sp.columns
    text = report.write_report(folder).read_text()
    assert "## Speedup over the fastest peer, forward" in text


def test_resumed_duplicates_keep_the_last_row(folder):
    results.append_rows(folder / "results.jsonl", [_row("causal", 1024, "flex", 4.0)])
    df = report.load(folder)[0]
    sel = df[(df.layout == "causal") & (df.n_ctx == 1024) & (df.backend == "flex")
             & (df["mode"] == "fwd")]
    assert sel.median_ms.tolist() == [4.0]


def test_fit_exponent_recovers_a_power_law():
    ns = [1024, 2048, 4096, 8192]
    assert plots.fit_exponent(ns, [n**1.5 for n in ns]) == pytest.approx(1.5)
    assert plots.fit_exponent([1024], [1.0]) is None


def test_report_of_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(results.ResultsError, match="no result rows"):
        report.write_report(tmp_path)


def test_side_by_side_takes_the_fastest_of_each_side(folder):
    results.append_rows(folder / "results.jsonl", [
        _row("causal", 1024, "sdpa", 1.6), _row("causal", 1024, "cupy", 0.5)])
    sbs = report.side_by_side(report.load(folder)[0], "fwd")
    first = sbs.loc[("causal", 1024)]
    assert (first.ours, first.against) == ("cupy", "sdpa")
    assert first.speedup == pytest.approx(1.6 / 0.5)
    assert sbs.loc[("st_mix", 4096)].speedup == pytest.approx(2.0)
    # an explicit comparison: cupy's throughput against triton's
    vs = report.side_by_side(report.load(folder)[0], "fwd", ours=["cupy"], against=["triton"])
    assert list(vs.index) == [("causal", 1024)]
    assert vs.speedup.iloc[0] == pytest.approx(1.0 / 0.5)


def test_the_latest_row_counts_across_files(folder):
    later = _row("causal", 1024, "flex", 9.0, timestamp="2099-01-01T00:00:00+00:00")
    earlier = _row("causal", 1024, "flex", 7.0, timestamp="2000-01-01T00:00:00+00:00")
    results.append_rows(folder / "a.jsonl", [later])
    results.append_rows(folder / "b.jsonl", [earlier])
    df = report.load(folder)[0]
    sel = df[(df.layout == "causal") & (df.n_ctx == 1024) & (df.backend == "flex")
             & (df["mode"] == "fwd")]
    assert sel.median_ms.tolist() == [9.0]


def test_report_opens_with_the_manifest(folder):
    from stbench import manifest

    manifest.write(folder, manifest.Manifest(
        description="a synthetic run", command="stbench sweep --preset quick --out DIR",
        commit="abc1234", date="2026-01-02T03:04:05+00:00", duration_s=12.0, rows=26,
        results=("results.jsonl",), notes="read me first"))
    text = report.write_report(folder).read_text()
    head = text[:text.index("## Environment")]
    for expected in ("a synthetic run", "`stbench sweep --preset quick --out DIR`",
                     "commit abc1234", "12 s", "read me first"):
        assert expected in head, expected
