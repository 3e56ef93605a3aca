"""benchmarks/bench_latency.py: it times what it checked (every batch's results equal faiss's), and its
read-bandwidth probe measures a rate."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_small_run_checks_against_faiss_and_prints_every_row():
    pytest.importorskip("faiss", reason="faiss-cpu is not installed (the benchmark's oracle)")
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_latency.py"), "--n", "5000", "--batch", "1", "3",
         "--threads", "1", "--rounds", "1", "--radius", "20"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| 5,000 |")]
    assert [row.split(" | ")[2:4] for row in rows] == [["1", "k-NN"], ["1", "radius 20"], ["3", "k-NN"], ["3", "radius 20"]]
    assert "MISMATCH" not in run.stdout


def test_read_bandwidth_probe_reports_a_rate(tmp_path):
    bench = load_benchmark("bench_latency")
    exe = bench.build_bandwidth_probe(str(tmp_path))
    if exe is None:
        pytest.skip("gcc could not build benchmarks/read_bandwidth.c here")
    rate = bench.read_bandwidth(exe, 1 << 20, 1)
    assert rate is not None and 1e8 < rate < 1e13
    out = subprocess.run([str(exe), "1048576", "1"], capture_output=True, text=True).stdout
    assert re.match(r"[\d.]+ GB/s reading 1048576 bytes with 1 threads", out)
