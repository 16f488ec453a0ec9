"""Smoke check that the benchmark still runs (tiny sizes; not a timed test)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_sim_prints_the_summary_line():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_sim.py"), "--samples", "100",
         "--clients", "10", "--per-round", "2", "--paper-clients", "10",
         "--paper-per-round", "5", "--local-epochs", "1", "--threads", "2",
         "--fedsgd-images", "10", "--fedsgd-batch", "4"],
        capture_output=True, text=True, check=True).stdout
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"fedavg/centralized=\d+\.\d\d paper-scale=\d+\.\d\d "
                        r"scoring/round=\d+\.\d\d pruned/masked=\d+\.\d\d "
                        r"channels-last/contiguous=\d+\.\d\d bf16/fp32=\d+\.\d\d "
                        r"bf16/fp32-eval=\d+\.\d\d fedsgd-batched/loop=\d+\.\d\d "
                        r"fedavg-batched/loop=\d+\.\d\d", last), last
