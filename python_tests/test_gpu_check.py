"""scripts/gpu_check.sh --dry-run: the one-call GPU check runs end to end without a GPU (its GPU
steps listed, the rest executed at tiny sizes on the CPU), so it is ready for the day a GPU is lent."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_STEPS = ("nvidia_smi", "build", "kernel_images", "memcheck", "racecheck")
CPU_STEPS = ("environment", "cuda_tests", "bench_hamming", "bench_hamming_k4096", "bench_binarize", "train_data", "train")


def test_dry_run_runs_every_step_it_can(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], env=env, capture_output=True,
                          text=True, timeout=600)
    summary = (tmp_path / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = {line.split()[0]: line for line in summary.splitlines() if line.strip()}
    for name in GPU_STEPS:
        assert "skipped (dry run)" in lines[name], lines[name]
    for name in CPU_STEPS:
        assert " rc=0 " in lines[name], lines[name]
        assert (tmp_path / f"{name}.log").exists()
    metrics = json.loads((tmp_path / "train_run" / "metrics.json").read_text())
    assert metrics, "the training run wrote no metrics"
    assert json.loads((tmp_path / "bench_hamming_k4096.json").read_text())
