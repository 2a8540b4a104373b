"""The GPU tools of the CLI, on the CPU: ``stbench profile`` (its Nsight Compute summary and the
ncu command it builds), ``stbench sanitize`` (the runs it plans and how it reads the
sanitizer's verdict) and ``stbench sass`` (AOT-compiled SASS, no GPU needed)."""

import stat

import pytest
import torch

from stbench import ncu, sass
from stbench.cli import main
from stbench.commands import sanitize

HEADER = ["ID", "Kernel Name", "gpu__time_duration.sum", "dram__bytes.sum.per_second",
          "launch__shared_mem_per_block_static", "launch__shared_mem_per_block_dynamic",
          "launch__occupancy_limit_registers", "launch__occupancy_limit_shared_mem",
          "launch__occupancy_limit_warps",
          "smsp__average_warps_issue_stalled_wait_per_issue_active.ratio",
          "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",
          "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",
          "smsp__average_warps_issue_stalled_selected_per_issue_active.ratio"]
UNITS = ["", "", "msecond", "Tbyte/s", "Kbyte/block", "byte/block", "block", "block", "block",
         "", "", "", ""]
ROW = ["0", "my_kernel", "2.5", "1.2", "1.024", "2,048", "2", "2", "8", "0.5", "3.25", "1.5",
       "1"]


def _raw_page(folder):
    lines = ['"==PROF== noise"'] + [",".join(f'"{x}"' for x in r) for r in (HEADER, UNITS, ROW)]
    (folder / "k_fwd.raw.csv").write_text("\n".join(lines) + "\n")


def test_a_raw_page_becomes_one_table_row(tmp_path):
    """Units converted (ms -> us, TB/s x time -> MB, Kbyte/block -> KiB), the occupancy limiter
    and the top stalls picked."""
    _raw_page(tmp_path)
    (kern,) = ncu.read_raw(tmp_path / "k_fwd.raw.csv")
    assert abs(ncu.seconds(kern) - 2.5e-3) < 1e-12
    assert abs(ncu.dram_bytes(kern, 2.5e-3) - 3.0e9) < 1.0  # 1.2 TB/s x 2.5 ms
    assert abs(ncu.kib(kern, "launch__shared_mem_per_block_static") - 1.0) < 1e-9
    assert ncu.kib(kern, "launch__shared_mem_per_block_dynamic") == 2.0
    assert ncu.limiter(kern) == "2 (registers/shared_mem)"
    assert ncu.top_stalls(kern) == "barrier 3.25, long_scoreboard 1.50, selected 1.00"
    row = ncu.table(tmp_path).splitlines()[2].split("|")
    assert row[1].strip() == "k_fwd" and row[2].strip() == "my_kernel"
    assert row[4].strip() == "2500.0" and row[5].strip() == "3000.0"  # us, MB
    assert row[15].strip() == "3"  # KiB of shared memory, static + dynamic


def test_profile_summary_prints_the_table(tmp_path, capsys):
    _raw_page(tmp_path)
    assert main(["profile", "--summary", str(tmp_path)]) == 0
    assert "| k_fwd | my_kernel |" in capsys.readouterr().out


def test_profile_builds_one_ncu_command_around_its_workload(tmp_path, capsys):
    assert main(["profile", "--backend", "triton", "--layout", "st_mix", "--n-ctx", "4096",
                 "--mode", "fwd+bwd", "--config", '{"BLOCK_M": 64}', "--out", str(tmp_path),
                 "--dry-run"]) == 0
    argv = capsys.readouterr().out.split()
    for flag in ("--clock-control", "--profile-from-start", "--target-processes"):
        assert flag in argv
    assert argv[argv.index("--profile-from-start") + 1] == "off"
    assert argv[argv.index("-o") + 1] == str(tmp_path / "triton_st_mix_4096_fwd_bwd")
    tail = argv[argv.index("stbench"):]
    assert tail[:3] == ["stbench", "profile", "--workload"]
    assert tail[tail.index("--mode") + 1] == "fwd+bwd" and '{"BLOCK_M":' in tail


def test_profile_source_adds_the_per_instruction_stall_samples(tmp_path, capsys):
    assert main(["profile", "--backend", "triton", "--layout", "causal", "--n-ctx", "4096",
                 "--out", str(tmp_path), "--source", "--dry-run"]) == 0
    argv = capsys.readouterr().out.split()
    sections = [argv[i + 1] for i, a in enumerate(argv) if a == "--section"]
    assert "SourceCounters" in sections and "WarpStateStats" in sections


SOURCE_PAGE = "\n".join([  # two kernels of ncu's source page, as --csv prints them
    '"Kernel Name","_bwd_kernel",',
    '"Address","Source","Warp Stall Sampling (All Samples)","stall_barrier","stall_long_sb",'
    '"stall_long_sb (Not Issued)"',
    '"0x7f0000000100","  LDC R1, c[0x0][0x28]","10","0","10","10"',
    '"0x7f0000000230","  @!P1 BRA 0x7f0000000100","60","5","55","55"',
    '"0x7f0000000240","  NOP","30","30","0","0"',
    '"Kernel Name","_other",',
    '"Address","Source","Warp Stall Sampling (All Samples)","stall_barrier"',
    '"0x10","  EXIT","0","0"',
]) + "\n"


def test_a_source_page_lists_each_kernels_hottest_instructions(tmp_path):
    (tmp_path / "g.source.csv").write_text(SOURCE_PAGE)
    pages = ncu.read_source(tmp_path / "g.source.csv")
    assert list(pages) == ["_bwd_kernel", "_other"]
    assert pages["_bwd_kernel"][1]["stalls"] == {"barrier": 5.0, "long_sb": 55.0}
    md = ncu.hot_instructions(tmp_path, top=2).splitlines()
    rows = [line for line in md if line.startswith("| +")]
    assert rows == ["| +0x130 | `@!P1 BRA 0x7f0000000100` | 60.0 | long_sb 55.0, barrier 5.0 |",
                    "| +0x140 | `NOP` | 30.0 | barrier 30.0 |"]
    assert not any("_other" in line for line in md)  # no samples: not listed


@pytest.mark.parametrize("argv, says", [
    (["profile", "--summary", "EMPTY"], "no NAME.raw.csv"),
    (["profile", "--layout", "causal"], "--backend is required"),
    (["profile", "--backend", "nope"], "not registered"),
    (["profile", "--backend", "triton", "--layout", "nope"], "not a known spec"),
    (["profile", "--backend", "triton", "--dry-run"], "--out DIR is required"),
    (["sanitize", "--backends", "triton", "--tools", "memchek"], "--tools memchek"),
    (["sanitize", "--backends", "nope"], "not registered"),
    (["sanitize", "--backends", "triton", "--head-dims", "0"], "--head-dims"),
    (["sanitize", "--backends", "gluon", "--block", "100"], "--block 100"),
    (["sanitize", "--backends", "gluon", "--block", "128", "--n-ctx", "320"], "--n-ctx 320"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, says, tmp_path, capsys):
    argv = [str(tmp_path) if a == "EMPTY" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's answer")
def test_profile_workload_needs_a_gpu(capsys):
    assert main(["profile", "--workload", "--backend", "triton", "--n-ctx", "1024"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_sanitize_plans_a_warm_run_then_each_tool_per_head_dim(capsys):
    assert main(["sanitize", "--backends", "cupy", "--tools", "memcheck,racecheck",
                 "--head-dims", "32,128", "--config", '{"BLOCK_M": 64}', "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == [
        "warm_d32", "memcheck_d32", "racecheck_d32", "warm_d128", "memcheck_d128",
        "racecheck_d128"]
    assert "--tool memcheck --error-exitcode 9" in lines[1]
    assert "-m stbench check --backends cupy" in lines[1] and "--head-dim 32" in lines[1]
    assert '--config {"BLOCK_M": 64}' in lines[4]
    assert "compute-sanitizer" not in lines[0]


def test_sanitize_reads_the_sanitizers_error_summary(tmp_path, capsys):
    """A sanitizer that reports errors fails the run; the plain run passes (dense on the CPU)."""
    fake = tmp_path / "fake-sanitizer"
    fake.write_text("#!/bin/sh\necho '========= ERROR SUMMARY: 3 errors'\nexit 9\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "san"
    code = main(["sanitize", "--backends", "dense", "--dtypes", "float32", "--head-dims", "16",
                 "--n-ctx", "128", "--batch", "1", "--layouts", "causal,local",
                 "--sanitizer", str(fake), "--out", str(out)])
    assert code == 1
    lines = (out / "SUMMARY.txt").read_text().splitlines()
    assert lines[0] == "warm_d16: exit code 0: ok"
    assert lines[1] == "memcheck_d16: exit code 9, 3 sanitizer errors: FAILED"
    assert "checks passed" in (out / "warm_d16.log").read_text()
    assert sanitize.errors_reported("========= ERROR SUMMARY: 0 errors") == 0
    assert sanitize.errors_reported("no summary") is None


def test_sanitize_passes_the_block_to_its_workload(capsys):
    assert main(["sanitize", "--backends", "gluon", "--head-dims", "64", "--block", "128",
                 "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("--block 128" in ln for ln in lines)


def test_sanitize_fails_a_run_that_checked_nothing(tmp_path):
    """Every case skipped (here: a block the backend does not run) is no evidence: FAILED."""
    fake = tmp_path / "fake-sanitizer"
    fake.write_text("#!/bin/sh\necho '0 of 0 checks passed'\n"
                    "echo '========= ERROR SUMMARY: 0 errors'\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "san"
    code = main(["sanitize", "--backends", "dense", "--dtypes", "float32", "--head-dims", "16",
                 "--n-ctx", "128", "--batch", "1", "--layouts", "causal", "--block", "64",
                 "--sanitizer", str(fake), "--out", str(out)])
    assert code == 1
    lines = (out / "SUMMARY.txt").read_text().splitlines()
    assert lines[0] == "warm_d16: exit code 0: ok"
    assert lines[1].startswith("memcheck_d16: exit code 0, 0 sanitizer errors, no check ran")
    assert lines[1].endswith("FAILED")
    assert sanitize.checks_run("7 of 8 checks passed, 1 FAILED") == 8
    assert sanitize.checks_run("no summary") is None


SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0020*/                   LDSM.16.M88.4 R8, [R2] ;
        /*0030*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0040*/               @P0 BRA 0x10 ;
        /*0050*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0060*/               @P1 BRA 0x50 ;
        /*0070*/                   EXIT ;
"""


def test_first_step_length_takes_the_first_innermost_mma_loop():
    assert sass.first_step_length(SASS) == 4  # 0x10 .. 0x40
    assert sass.first_step_length("/*0000*/ EXIT ;") is None


@pytest.mark.slow
def test_sass_compiles_a_kernel_for_sm90_without_a_gpu(tmp_path, monkeypatch):
    """Through a fresh process: the kernels must be defined compiled, not interpreted."""
    import subprocess
    import sys

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the command drops it for its own kernels
    out = tmp_path / "sass.txt"
    proc = subprocess.run([sys.executable, "-P", "-m", "stbench", "sass", "--only", "delta",
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "PTX target: sm_90a" in text and "ERROR" not in text
    (row,) = [ln for ln in text.splitlines() if ln.startswith("delta")]
    assert int(row.split()[5]) > 0  # registers per thread, from ptxas -v
