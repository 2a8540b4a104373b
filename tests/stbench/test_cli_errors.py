"""The CLI's error handling as a user meets it: every known error is one line on stderr and exit
code 2 (130 for Ctrl-C), never a traceback; a bug still shows its traceback; and the messages
that used to mislead (swapped tensor axes, ``--out`` naming a file, a misspelled generator
argument in a TOML layout table, ``--ns abc``, ``check --block 24``) each say what is wrong."""

from __future__ import annotations

import json

import pytest
import torch

import stbench
from stbench import cli, layouts, manifest, results
from stbench.backends import BackendUnavailable
from stbench.commands import layouts as layouts_cmd
from stbench.layouts import LayoutError
from stbench.sweep import SweepConfig, SweepError


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"stbench {command}: error: "), err
    return err


@pytest.mark.parametrize("exc, text", [
    (LayoutError("block=24 is not supported"), "block=24 is not supported"),
    (BackendUnavailable("backend 'cupy' needs a GPU"), "needs a GPU"),
    (results.ResultsError("r.jsonl:3: not valid JSON"), "r.jsonl:3: not valid JSON"),
    (manifest.ManifestError("manifest.json: no 'command'"), "no 'command'"),
    (SweepError("preset 'x' does not exist"), "preset 'x' does not exist"),
    (SweepError("grid.toml: bad value\n  at line 3"), "grid.toml: bad value; at line 3"),
    (FileNotFoundError(2, "No such file or directory", "/no/such.jsonl"),
     "/no/such.jsonl: no such file or directory"),
    (NotADirectoryError(20, "Not a directory", "/tmp/file/x"), "/tmp/file/x: not a directory"),
    (PermissionError(13, "Permission denied", "/root/x"), "/root/x: permission denied"),
])
def test_known_errors_are_one_line_and_exit_code_2(exc, text, monkeypatch, capsys):
    def boom(args):
        raise exc

    monkeypatch.setattr(layouts_cmd, "cmd_list", boom)
    assert cli.main(["layouts", "list"]) == 2
    assert text in _one_error_line(capsys, "layouts list")


def test_a_plain_value_error_of_stbench_is_a_user_error(capsys):
    assert cli.main(["tune", "--block", "32"]) == 2  # ValueError raised in stbench.commands.tune
    assert "--block goes with --configs" in _one_error_line(capsys, "tune")


def test_debug_adds_the_traceback(monkeypatch, capsys):
    def boom(args):
        raise LayoutError("block=24 is not supported")

    monkeypatch.setattr(layouts_cmd, "cmd_list", boom)
    assert cli.main(["--debug", "layouts", "list"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: block=24 is not supported\n")


def test_ctrl_c_is_one_line_and_exit_code_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(layouts_cmd, "cmd_list", interrupted)
    assert cli.main(["layouts", "list"]) == cli.EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "stbench layouts list: interrupted\n"


@pytest.mark.parametrize("make", [
    lambda: RuntimeError("a bug"),
    lambda: json.loads("{"),  # a ValueError raised inside a library, not by stbench
    lambda: {}["missing"],
])
def test_a_bug_keeps_its_traceback(make, monkeypatch):
    def boom(args):
        make()
        raise RuntimeError("a bug")

    monkeypatch.setattr(layouts_cmd, "cmd_list", boom)
    with pytest.raises((RuntimeError, ValueError, KeyError)):
        cli.main(["layouts", "list"])


# ------------------------------------------------------------------------ the user's cases
def test_swapped_axes_get_a_hint():
    lay = layouts.causal(64, block=16, heads=4)
    q = torch.randn(1, 64, 4, 8)  # [B, N, H, D]
    with pytest.raises(ValueError, match=r"axes look swapped.*\[B, H, N, D\].*transpose\(1, 2\)"):
        stbench.attention(q, q, q, lay, backend="dense")


@pytest.mark.parametrize("argv", [
    ["sweep", "--preset", "quick", "--out", "{file}", "--no-progress"],
    ["layouts", "show", "causal", "--n-ctx", "64", "--out", "{file}"],
])
def test_out_naming_a_file_is_one_line(argv, tmp_path, capsys):
    f = tmp_path / "results.jsonl"
    f.write_text("")
    command = " ".join(a for a in argv[:2] if not a.startswith("-"))
    capsys.readouterr()
    assert cli.main([a.replace("{file}", str(f)) for a in argv]) == 2
    assert f"--out {f} is a file, not a folder" in _one_error_line(capsys, command)


BAD_TABLE = """
ns = [256]
layouts = ["mine"]
backends = ["dense"]
modes = ["fwd"]
dtypes = ["float32"]

[layout.mine]
builder = "strided"
block = 16
strid = 64
"""


def test_misspelled_generator_argument_is_caught_when_the_config_loads(tmp_path, monkeypatch,
                                                                        capsys):
    path = tmp_path / "grid.toml"
    path.write_text(BAD_TABLE)
    with pytest.raises(SweepError, match=r"\[layout\.mine\].*no parameter strid.*takes stride"):
        SweepConfig.from_toml(path)

    def never(*a, **kw):
        raise AssertionError("the sweep started (and its progress bar) before the check")

    monkeypatch.setattr("stbench.sweep.run_sweep", never)
    assert cli.main(["sweep", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = _one_error_line(capsys, "sweep")
    assert "[layout.mine]" in err and "strid" in err and "stride" in err


@pytest.mark.parametrize("argv", [
    ["sweep", "--preset", "quick", "--out", "o", "--ns", "abc"],
    ["tune", "--evaluate", "--ns", "abc"],
    ["memory", "--n-ctx", "abc"],
])
def test_a_bad_list_of_n_names_the_option(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    opt = argv[-2]
    assert f"argument {opt}: 'abc' is not a list of integers" in err and "<lambda>" not in err


def test_check_with_a_bad_block_says_so_once(capsys):
    assert cli.main(["check", "--block", "24"]) == 2
    assert "--block 24: use one of 16, 32, 64, 128" in _one_error_line(capsys, "check")
    assert cli.main(["check", "--n-ctx", "100", "--block", "16"]) == 2
    assert "not a multiple of --block 16" in _one_error_line(capsys, "check")


def test_check_prints_a_repeated_error_once():
    from stbench.commands.check import CheckRow, check_table

    rows = [CheckRow("-", name, "-", 64, 2, 16, "error", message="layout not built: boom")
            for name in ("causal", "local", "fixed")]
    notes = check_table(rows).notes
    assert notes == ("error on causal, local, fixed: layout not built: boom",)
