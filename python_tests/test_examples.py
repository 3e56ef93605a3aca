"""The scripts in examples/ run as a user runs them, on tiny data."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PIL import Image

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _run(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_train_on_a_folder_then_search_by_image(tmp_path):
    rng = np.random.default_rng(2)
    photos = tmp_path / "photos"
    for i in range(48):
        (photos / f"set{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(photos / f"set{i % 2}" / f"{i}.png")
    # The default route (the photos recipe: the frozen EfficientNet-Lite0 and its feature cache when
    # installed), small: 32x32 views, 2 epochs.
    out = _run("train_on_a_folder.py", str(photos), "--run-dir", str(tmp_path / "run"), "--epochs", "2",
               "--batch-size", "16", "--image-size", "32")
    assert "64 bits: copy recall@1" in out and "run directory:" in out
    assert (tmp_path / "run" / "report.md").is_file()
    query = photos / "set1" / "7.png"
    lines = _run("search_by_image.py", str(tmp_path / "run"), str(photos), str(query), "-k", "3").splitlines()
    assert len(lines) == 3 and lines[0].startswith("1. ") and all("(distance " in line for line in lines)
    # The image itself is found at distance 0, unless three files before it in the sorted listing
    # share its code (ties go to the lower index; how many codes collide after 2 epochs depends on
    # the thread count).
    assert "(distance 0)" in lines[0]
    assert any(str(query) in line and "(distance 0)" in line for line in lines) or all(
        "(distance 0)" in line for line in lines)


def test_own_training_loop():
    out = _run("own_training_loop.py", "--steps", "60", "--bits", "16")
    losses = [float(line.split("loss ")[1]) for line in out.splitlines() if line.startswith("step ")]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert "nearest code is its twin's" in out
