"""benchmarks/bench_latency.py: it times what it checked (every batch's results equal faiss's), and its
read-bandwidth probe measures a rate."""

import json
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


def test_compare_builds_times_both_builds_of_the_latency_benchmark(tmp_path):
    """benchmarks/compare_builds.py (issue 23's "nothing slower"): one row per case, each build run
    once per round, from the JSON rows bench_latency.py writes."""
    out = tmp_path / "runs.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare_builds.py"), "--old", str(ROOT), "--new", str(ROOT),
         "--bench", "latency", "--latency-n", "3000", "--rounds", "2", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| n=3,000 batch ")]
    assert len(rows) == 10  # batches 1, 2, 4, 8, 16 x (k-NN, radius)
    runs = json.loads(out.read_text())["latency"]
    assert len(runs["old"]) == len(runs["new"]) == 2
    assert all(len(r) == 10 and all(t > 0 for t in r.values()) for r in runs["old"] + runs["new"])
