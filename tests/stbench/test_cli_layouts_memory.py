"""`stbench layouts` and `stbench memory`: exit codes, tables, JSON and the pictures written."""

import json

import pytest

from stbench.cli import main


def test_layouts_list(capsys):
    assert main(["layouts", "list", "--width", "200"]) == 0
    out = capsys.readouterr().out
    for name in ("causal", "local", "strided", "merged_strided", "fixed"):
        assert name in out
    assert "num_verts=1" in out


def test_layouts_show_table_and_pictures(tmp_path, capsys):
    out_dir = tmp_path / "pics"
    rc = main(["layouts", "show", "fixed", "--n-ctx", "512", "--stride", "128", "--heads", "2",
               "--out", str(out_dir), "--width", "200"])
    assert rc == 0
    out = capsys.readouterr().out
    for b in ("16", "32", "64", "128"):
        assert f"│ {b:>5} │" in out
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == sorted(
        ["fixed_l_128_c_32__n512_b32_heads.png", "fixed_l_128_c_32__n512_b32_query.png"]
        + [f"fixed_l_128_c_32__n512_b32_h{h}.png" for h in range(2)]
    )


def test_layouts_show_json_reports_unbuildable_blocks(capsys):
    rc = main(["layouts", "show", "strided", "--n-ctx", "1024", "--stride", "32", "--json"])
    assert rc == 0
    rows = {r["block"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[32]["nnz"] == 32 * 1 and rows[32]["permuted"]  # 32 diagonal blocks
    assert "block" in rows[64]["error"]  # n_ctx / stride = 32 is not a multiple of 64


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nosuch", "--n-ctx", "64"], "unknown layout 'nosuch'"),
        (["causal", "--n-ctx", "64", "--stride", "4"], "has no parameter stride"),
        (["causal", "--n-ctx", "64", "--param", "colour=1"], "has no parameter colour"),
    ],
)
def test_layouts_show_errors_name_the_fix(argv, message, capsys):
    assert main(["layouts", "show", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("stbench layouts show: error: ")
    assert len(err.splitlines()) == 1


def test_memory_seed_table(capsys):
    assert main(["memory", "--seed-table", "--width", "250"]) == 0
    out = capsys.readouterr().out
    for text in ("1.0 GB", "16 MB", "9.6 GB", "151 MB", "154 GB", "2.4 GB", "590 GB", "9.2 GB"):
        assert text in out
    assert main(["memory", "--seed-table", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["stored_model"] for r in rows] == ["1.0 GB", "9.6 GB", "154 GB", "590 GB"]
    assert [r["recomputed_model"] for r in rows] == ["16 MB", "151 MB", "2.4 GB", "9.2 GB"]


def test_memory_with_layout_json(capsys):
    rc = main(["memory", "--n-ctx", "1024,2048", "--layout", "causal", "--heads", "2",
               "--layers", "3", "--dtype", "bfloat16", "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["n_ctx"] for r in rows] == [1024, 2048]
    r = rows[0]
    assert r["dense_stored"] == 1024**2 * 2 * 3 * 2
    assert r["dense_recomputed"] == 1024**2 * 2 * 2
    assert r["sparse_exact"] == 2 * (1024 * 1025 // 2) * 3 * 2
    assert r["sparse_stored"] == 2 * (32 * 33 // 2) * 32 * 32 * 3 * 2


def test_memory_layout_error_is_a_row_and_exit_1(capsys):
    rc = main(["memory", "--n-ctx", "1000", "--layout", "causal", "--width", "250"])
    assert rc == 1
    assert "not a multiple of block=32" in capsys.readouterr().out


def test_memory_rejects_bad_n(capsys):
    with pytest.raises(SystemExit):
        main(["memory", "--n-ctx", "0"])
    assert "positive integers" in capsys.readouterr().err
