"""Memory and time against N at a fixed batch: the ``fixed_batch`` preset's grid, the rows'
structure bytes (our plan; FlexAttention's BlockMask, O(blocks^2)), and the report's log-log
plot and slope table (drawn only with enough points) and rows per host and device, from
synthetic rows of known slopes."""

import dataclasses
import types

import pytest

from stbench import backends, layouts, plots, report, results
from stbench.kernels import flex
from stbench.sweep import SweepConfig
from stbench.tuning import measure

NS = (1024, 4096, 16384, 65536)


def test_preset_is_one_sequence_from_1k_to_1m_on_every_backend():
    cfg = SweepConfig.preset("fixed_batch")
    assert cfg.ns[0] == 1024 and cfg.ns[-1] == 1048576 and len(cfg.ns) == 11
    assert {cfg.batch_for(n) for n in cfg.ns} == {1}
    assert (cfg.heads, cfg.head_dim, cfg.dtypes, cfg.modes) == (8, 64, ("bfloat16",),
                                                                 ("fwd", "fwd+bwd"))
    assert set(cfg.backends) == set(backends.names())


def test_flex_blockmask_bytes_grow_with_the_square_of_the_blocks():
    sizes = [flex.structure_bytes(layouts.fixed(n, block=32, stride=128, heads=4), "cpu")
             for n in (1024, 2048, 4096)]
    assert sizes[1] / sizes[0] == pytest.approx(4, rel=0.1)  # nb^2: the dense [H, nb, nb] lists
    assert sizes[2] / sizes[1] == pytest.approx(4, rel=0.1)
    lay = layouts.fixed(4096, block=32, stride=128, heads=4)
    assert flex.structure_bytes(lay, "cpu", grad=True) < sizes[2]  # re-blocked to 128 for bwd


def test_structure_bytes_is_the_backends_own_else_our_plan():
    lay = layouts.causal(256, block=32, heads=2)
    own = types.SimpleNamespace(structure_bytes=lambda layout, device, config, grad: 1234)
    assert measure.structure_bytes(own, "flex", lay, "cpu", {}, False, 99) == 1234
    bare = types.SimpleNamespace()
    assert measure.structure_bytes(bare, "triton", lay, "cpu", {}, False, 99) == 99
    assert measure.structure_bytes(bare, "sdpa", lay, "cpu", {}, False, 99) is None  # a peer
    assert measure.structure_bytes(bare, "dense", lay, "cpu", {}, False, 99) is None


def _row(n, backend, mode, ms, extra, structures, batch=1):
    return results.ResultRow(
        batch=batch, heads=8, n_ctx=n, head_dim=64, dtype="bfloat16", mode=mode,
        layout="st_mix", block=128, token_density=0.01, block_density=0.01, layout_hash="h",
        nnz=1, backend=backend, status="ok", median_ms=ms, p20_ms=ms, p80_ms=ms, reps=3,
        peak_bytes=extra + 4 * 2**20, workspace_bytes=extra, structure_bytes=structures,
        plan_bytes=structures, env={"gpu": "NVIDIA H200"}, timestamp="2026-01-01T00:00:00+00:00",
        device="cuda:0", host="host-a")


def _write(path, rows):
    results.append_rows(path / results.RESULTS_FILE, rows)


def test_report_fits_slopes_and_draws_beside_the_dense_curves(tmp_path):
    rows = []
    for n in NS:
        for mode in ("fwd", "fwd+bwd"):
            rows.append(_row(n, "triton", mode, 1e-3 * n, 16 * n, 4 * n))
            rows.append(dataclasses.replace(  # a second GPU ran flex (a sharded sweep)
                _row(n, "flex", mode, 2e-3 * n, 8 * n, n * n // 1024), device="cuda:1"))
    _write(tmp_path, rows)
    report.write_report(tmp_path)
    text = (tmp_path / "REPORT.md").read_text()
    assert "## Scaling with N at a fixed batch" in text
    assert "## Rows by host and device" in text and "| host-a | cuda:1 | 8 |" in text
    assert (tmp_path / "scaling_vs_n.png").stat().st_size > 10_000
    df, _, _ = report.load(tmp_path)
    slopes = plots.slope_table(df)
    assert slopes.loc[("fwd", "flex"), "structures slope"] == pytest.approx(2.0)
    assert slopes.loc[("fwd+bwd", "triton"), "time slope"] == pytest.approx(1.0)
    assert slopes.loc[("fwd", "triton"), "extra memory slope"] == pytest.approx(1.0)
    secs, extra = plots.dense_curves(df.iloc[0], [1024, 2048])
    assert secs[1] / secs[0] == pytest.approx(4, rel=0.01)  # dense causal: N^2
    assert extra[1] / extra[0] == pytest.approx(4, rel=0.01)


def test_no_scaling_plot_without_enough_points_or_a_fixed_batch(tmp_path):
    few = tmp_path / "few"
    _write(few, [_row(n, "triton", "fwd", 1e-3 * n, n, n) for n in NS[:2]])
    mixed = tmp_path / "mixed"  # B x N fixed, as the standard preset
    _write(mixed, [_row(n, "triton", "fwd", 1.0, n, n, batch=65536 // n) for n in NS])
    for folder in (few, mixed):
        report.write_report(folder)
        assert not (folder / "scaling_vs_n.png").exists()
        assert "Scaling with N" not in (folder / "REPORT.md").read_text()
