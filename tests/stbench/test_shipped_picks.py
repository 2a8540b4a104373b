"""The shipped tuned picks: the committed file is valid, loads, matches the layouts built today
and traces every pick to a committed result row; the export command's rule on synthetic rows."""

import json
from pathlib import Path

import pytest

from stbench import problems, results
from stbench.cli import main
from stbench.tuning import export, shipped

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_GPUS = ("h200",)
HASH_CHECK_MAX_N = 8192  # rebuilding the specs above this costs seconds each on a CPU


@pytest.mark.parametrize("gpu", SHIPPED_GPUS)
def test_the_shipped_file_is_valid_and_a_standard_problem_finds_its_pick(gpu):
    data = shipped.read(shipped.path_for(gpu))
    assert data["gpu"] == gpu and data["problems"]
    assert data["command"].startswith("stbench tune --export-picks ")
    prob = problems.standard_problem("causal", 4096)
    for mode in ("fwd", "fwd+bwd"):
        hit = shipped.lookup(prob.build_layout().content_hash, prob.batch, prob.head_dim,
                             prob.dtype, mode, gpu=gpu)
        assert hit is not None and hit["mode"] == mode and hit["n_ctx"] == 4096
        assert hit["picks"][0]["backend"] in ("triton", "cupy", "gluon")
    assert shipped.gpu_model("NVIDIA H200") == "h200" and shipped.gpu_model(None) is None


@pytest.mark.parametrize("gpu", SHIPPED_GPUS)
def test_shipped_hashes_are_the_specs_built_today(gpu):
    """A change to the generators or the content hash would orphan the picks silently."""
    for p in shipped.read(shipped.path_for(gpu))["problems"]:
        if p["n_ctx"] <= HASH_CHECK_MAX_N:
            hashes, name, density = export.pattern_hashes(p["layout"], p["n_ctx"], p["heads"])
            assert (hashes, name) == (p["hashes"], p["layout_name"]), (p["layout"], p["n_ctx"])
            assert round(density, 6) == p["token_density"]


@pytest.mark.parametrize("gpu", SHIPPED_GPUS)
def test_every_shipped_pick_is_a_committed_result_row(gpu):
    """Data made by a command from committed results: each pick is a row of its source."""
    data = shipped.read(shipped.path_for(gpu))
    rows = {s["path"]: results.read_rows(ROOT / s["path"]) for s in data["sources"]}
    for p in data["problems"]:
        for pick in p["picks"]:
            assert any(
                (r.backend, r.layout, r.n_ctx, r.batch, r.mode, r.block, r.config,
                 r.median_ms, r.timestamp) == (pick["backend"], p["layout"], p["n_ctx"],
                                               p["batch"], p["mode"], pick["block"],
                                               pick["config"], pick["median_ms"],
                                               pick["timestamp"])
                for r in rows[pick["source"]]), (p["layout"], p["n_ctx"], p["mode"], pick)


def test_a_broken_shipped_file_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": shipped.FORMAT, "version": 99}))
    with pytest.raises(shipped.ShippedPicksError, match="version 99"):
        shipped.read(path)
    with pytest.warns(UserWarning, match="ignoring the shipped tuned picks"):
        assert shipped.lookup("h", 1, 64, "bfloat16", "fwd", path=path) is None
    shipped._load.cache_clear()
    shipped._index.cache_clear()


# ----------------------------------------------------------------- the export rule
def _row(backend="triton", ms=1.0, stamp="2026-01-02T00:00:00+00:00", gpu="NVIDIA H200",
         n=256, mode="fwd", **kw):
    lay = problems.layout_spec("causal").build(n, 2, 64)
    base = dict(batch=1, heads=2, n_ctx=n, head_dim=64, dtype="bfloat16", mode=mode,
                layout="causal", block=64, token_density=lay.token_density,
                block_density=lay.block_density, layout_hash=lay.content_hash, nnz=lay.nnz,
                backend=backend, status="ok", config={"BLOCK_M": 64}, median_ms=ms,
                timestamp=stamp, kind="sweep", tuned=True, env={"gpu": gpu})
    base.update(kw)
    return results.ResultRow(**base)


def test_export_keeps_the_newest_tuned_row_of_our_backends_fastest_first(tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "new.jsonl"
    results.append_rows(old / "results.jsonl", [
        _row(ms=0.5, stamp="2026-01-01T00:00:00+00:00", config={"BLOCK_M": 128}),  # older
        _row("cupy", ms=0.9, config={"kernel": "mma"}),
        _row("flex", ms=0.1, config={}),  # a peer
        _row("dense", ms=0.2, config={}),  # the reference
        _row(ms=0.3, tuned=False, config={}),  # a default, not a pick
        _row(ms=0.3, gpu="NVIDIA A100"),  # another GPU
        _row(ms=0.3, layout_hash="not-the-spec", mode="fwd+bwd"),  # another pattern
        _row(ms=0.3, status="oom", median_ms=None, mode="fwd+bwd"),
    ])
    results.append_rows(new, [_row(ms=1.0, tuned=False, config={"BLOCK_M": 64}),  # --picks
                              _row(ms=2.0, n=512, mode="fwd+bwd")])
    out = tmp_path / "picks.json"
    assert main(["tune", "--export-picks", str(old), str(new), "--gpu", "h200",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    data = shipped.read(out)
    assert data["command"] == f"stbench tune --export-picks {old} {new} --gpu h200"
    by = {(p["n_ctx"], p["mode"]): p for p in data["problems"]}
    assert set(by) == {(256, "fwd"), (512, "fwd+bwd")}
    assert [(x["backend"], x["config"], x["median_ms"]) for x in by[(256, "fwd")]["picks"]] == [
        ("cupy", {"kernel": "mma"}, 0.9), ("triton", {"BLOCK_M": 64}, 1.0)]
    assert set(by[(256, "fwd")]["hashes"]) == {"16", "32", "64", "128"}
    for why in ("a peer or the reference", "not tuned", "another GPU", "another pattern",
                "not an ok sweep row"):
        assert why in err


def test_export_takes_a_default_only_where_the_backend_has_no_tuned_row(tmp_path, capsys):
    """A backend measured only at its default (gluon beside the tuned triton in the hopper run)
    is picked at its default ({}); a default of a backend with a tuned row is not."""
    src = tmp_path / "results.jsonl"
    results.append_rows(src, [
        _row("gluon", ms=0.4, tuned=False, config={}, block=128),
        _row(ms=0.6, config={"BLOCK_M": 64}),
        _row(ms=0.3, tuned=False, config={}, stamp="2026-02-01T00:00:00+00:00"),  # newer
    ])
    out = tmp_path / "picks.json"
    assert main(["tune", "--export-picks", str(src), "--gpu", "h200", "--out", str(out)]) == 0
    assert "1 rows left out: not tuned" in capsys.readouterr().err
    (prob,) = shipped.read(out)["problems"]
    assert [(x["backend"], x["config"]) for x in prob["picks"]] == [
        ("gluon", {}), ("triton", {"BLOCK_M": 64})]


def test_export_needs_a_gpu_model(tmp_path, capsys):
    assert main(["tune", "--export-picks", str(tmp_path)]) == 2
    assert "--export-picks needs --gpu" in capsys.readouterr().err
