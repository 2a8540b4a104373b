"""scripts/gpu_fwd_variants.py's CPU side: bar labels name the backend and what tells its
configurations apart, and the plot skips step lines and rows that failed their check."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_fwd_variants.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_fwd_variants", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(backend, config, ok=True, ms=1.0):
    return {"backend": backend, "layout": "causal", "n_ctx": 1024, "config": config, "ok": ok,
            "median_ms": ms if ok else None, "p20_ms": ms * 0.9, "p80_ms": ms * 1.1}


def test_labels():
    mod = _load()
    assert mod.label(_row("flex", None)) == "flex"
    assert mod.label(_row("triton", None)) == "triton default"
    cfg = {"fwd_loads": "tma", "BLOCK_M": 128, "BLOCK_N": 64, "num_stages": 3}
    assert mod.label(_row("triton", cfg)) == "triton tma 128x64 s3"
    cfg = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 2, "BWD_BLOCK_M": 64, "BWD_BLOCK_N": 32}
    assert mod.label(_row("triton", cfg)) == "triton default 64x32 w2 bwd 64x32"
    cfg.update(DKV_BLOCK_M=128, dkv_transposed=True)  # backward variants tell bars apart
    assert mod.label(_row("triton", cfg)) == "triton default 64x32 w2 bwd 64x32 dkv_m128 dkv^T"
    assert mod.label({**_row("triton", cfg), "tag": "base"}).endswith("dkv^T [base]")
    cfg.update(split_union=True)  # keys it has no short form for, as key=value
    assert mod.label(_row("triton", cfg)).endswith("dkv^T split_union=True")
    cfg = {"kernel": "mma", "BLOCK_M": 128, "BLOCK_N": 64, "WARP_M": 32}
    assert mod.label(_row("cupy", cfg)) == "cupy 128x64 32 rows/warp"
    assert mod.label(_row("cupy", {"kernel": "wgmma"})) == "cupy wgmma 64x64"
    assert mod.label(_row("cupy", {"kernel": "wgmma", "BLOCK_M": 128})) == "cupy wgmma 128x64"


def test_plot_skips_step_lines_and_failed_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    mod = _load()
    src = tmp_path / "rows.jsonl"
    src.write_text("=== step (cap 100s)\n" + "\n".join(
        json.dumps(r) for r in (_row("flex", None), _row("triton", None, ms=0.5),
                                _row("triton", {"fwd_loads": "tma"}, ok=False))) + "\n")
    png = tmp_path / "out.png"
    assert mod.main(["--plot", str(src), str(png)]) == 0
    assert png.stat().st_size > 1000
