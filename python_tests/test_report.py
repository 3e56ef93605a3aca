"""Tests of cibhash_ext.report on a synthetic metrics file."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cibhash_ext import ops
from cibhash_ext.report import plot_retrieval_grid, write_report


def fake_metrics():
    def block(m):
        return {"map": m, "topk": 1000, "precision_radius2": m / 2,
                "precision_at_n": {"100": m, "1000": m - 0.1},
                "pr_curve": {"radius": [0, 1, 2], "precision": [0.9, m, 0.1], "recall": [0.0, 0.5, 1.0]}}

    return {"dataset": "fashion_mnist", "queries": 10, "database": 60, "topk": 1000, "eval_seconds": 3.0,
            "cibhash": {"16": block(0.7), "64": block(0.8123)}, "itq": {"16": block(0.6), "64": block(0.7)},
            "lsh": {"16": block(0.4), "64": block(0.6)},
            "train": {"seconds": 12.0, "threads": 2, "history": [{"epoch": 1, "loss": 5.5, "seconds": 12.0}]}}


def test_report_has_the_map_table_and_plots(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(fake_metrics()))
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 1}))
    path = write_report(str(tmp_path), grid="retrieval.png")
    text = open(path).read()
    assert "| method | 16 bits | 64 bits |" in text
    assert "| CIBHash | 0.7000 | 0.8123 |" in text
    assert "| ITQ | 0.6000 | 0.7000 |" in text and "| LSH | 0.4000 | 0.6000 |" in text
    assert "![precision-recall](pr_curve.png)" in text and "![retrieval](retrieval.png)" in text
    for name in ("pr_curve.png", "precision_at_n.png"):
        with Image.open(tmp_path / name) as img:
            assert img.size[0] > 400


def test_retrieval_grid_marks_relevant_images(tmp_path):
    labels = torch.tensor([0, 0, 1, 1, 0])
    images = (labels * 255).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    codes = ops.pack_bits(torch.nn.functional.one_hot(labels, 8).float())
    plot_retrieval_grid(images[:2], labels[:2], images, labels, codes[:2], codes, str(tmp_path / "grid.png"), top=4)
    with Image.open(tmp_path / "grid.png") as img:
        rgb = img.convert("RGB")
        colours = {tuple(c) for c in np.asarray(rgb).reshape(-1, 3).tolist()}
    assert any(r < 80 and g > 100 and b < 80 for r, g, b in colours)  # green frames (relevant)
    assert any(r > 200 and g < 60 and b < 60 for r, g, b in colours)  # red frames (not relevant)


def test_missing_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        write_report(str(tmp_path))
