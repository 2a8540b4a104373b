"""scripts/ncu_summary.py on a synthetic Nsight Compute raw page: units converted (ms -> us,
TB/s x time -> MB, Kbyte/block -> KiB), the occupancy limiter and the top stalls picked."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ncu_summary.py"

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


def _load():
    spec = importlib.util.spec_from_file_location("ncu_summary", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_raw_page_becomes_one_table_row(tmp_path):
    mod = _load()
    lines = ['"==PROF== noise"'] + [",".join(f'"{x}"' for x in r) for r in (HEADER, UNITS, ROW)]
    (tmp_path / "k_fwd.raw.csv").write_text("\n".join(lines) + "\n")
    (kern,) = mod.read_raw(tmp_path / "k_fwd.raw.csv")
    assert abs(mod.seconds(kern) - 2.5e-3) < 1e-12
    assert abs(mod.dram_bytes(kern, 2.5e-3) - 3.0e9) < 1.0  # 1.2 TB/s x 2.5 ms
    assert abs(mod.kib(kern, "launch__shared_mem_per_block_static") - 1.0) < 1e-9
    assert mod.kib(kern, "launch__shared_mem_per_block_dynamic") == 2.0
    assert mod.limiter(kern) == "2 (registers/shared_mem)"
    assert mod.top_stalls(kern) == "barrier 3.25, long_scoreboard 1.50, selected 1.00"
    row = mod.table(tmp_path).splitlines()[2].split("|")
    assert row[1].strip() == "k_fwd" and row[2].strip() == "my_kernel"
    assert row[4].strip() == "2500.0" and row[5].strip() == "3000.0"  # us, MB
    assert row[15].strip() == "3"  # KiB of shared memory, static + dynamic
