"""Tests of cibhash_ext.report on a synthetic metrics file."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cibhash_ext import ops
from cibhash_ext.diagnostics import evaluate_unlabelled
from cibhash_ext.report import draw_run_grid, plot_retrieval_grid, write_report


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


def test_labelled_report_has_no_unlabelled_sections(tmp_path):
    for labels in (None, True):
        metrics = fake_metrics()
        if labels is not None:
            metrics["labels"] = labels
        (tmp_path / "metrics.json").write_text(json.dumps(metrics))
        text = open(write_report(str(tmp_path), grid="retrieval.png")).read()
        assert "## mAP@K" in text and "green = relevant, red = not." in text
        for unlabelled in ("Augmented-copy retrieval", "## Codes", "recall@", "nn_distance.png", "bit_balance.png",
                           "no labels"):
            assert unlabelled not in text
        assert not (tmp_path / "nn_distance.png").exists() and not (tmp_path / "bit_balance.png").exists()


def unlabelled_metrics():
    """A metrics.json of an unlabelled run as the training code writes it: every entry from
    evaluate_unlabelled on small codes, a few values pinned, ITQ without the long length."""
    gen = torch.Generator().manual_seed(0)
    entries = {}
    for method in ("cibhash", "lsh", "itq"):
        entries[method] = {}
        for nbits in (16, 64):
            database = ops.pack_bits(torch.randn(40, nbits, generator=gen))
            database[5] = database[3]  # a bucket of 2
            targets = torch.arange(0, 40, 4)
            queries = database[targets].clone()
            queries[:, 0] ^= 1  # one flipped bit: the original is near but not always first
            entries[method][str(nbits)] = evaluate_unlabelled(queries, database, targets, nbits)
    entries["cibhash"]["16"]["copy_recall"] = {"1": 0.5, "10": 0.875}
    entries["cibhash"]["16"]["codes"]["balance_error"] = 0.03125
    del entries["itq"]["64"]
    return {"dataset": "folder", "labels": False, "queries": 10, "database": 40,
            "protocol": "augmented copies of 10 held-out images searched against the 40 database images that hold their originals",
            **entries, "encode_seconds": 1.0, "eval_seconds": 2.0,
            "train": {"seconds": 30.0, "threads": 2, "processes": 1,
                      "history": [{"epoch": 1, "loss": 4.25, "seconds": 30.0, "lr": 0.001}]}}


def test_unlabelled_report_has_the_diagnostics_and_plots(tmp_path):
    metrics = unlabelled_metrics()
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "folder"}))
    text = open(write_report(str(tmp_path), grid="retrieval.png")).read()
    assert "augmented copies of 10 held-out images searched against the 40 database images" in text
    assert "## Augmented-copy retrieval" in text and "## Codes" in text

    def cell(method, nbits, key, k):
        return f"{metrics[method][nbits]['copy_recall'][k]:.4f}"

    assert "| method | recall@k | 16 bits | 64 bits |" in text
    assert f"| CIBHash | recall@1 | 0.5000 | {cell('cibhash', '64', 'copy_recall', '1')} |" in text
    assert f"| CIBHash | recall@10 | 0.8750 | {cell('cibhash', '64', 'copy_recall', '10')} |" in text
    assert f"| LSH | recall@10 | {cell('lsh', '16', 'copy_recall', '10')} | {cell('lsh', '64', 'copy_recall', '10')} |" in text
    assert f"| ITQ | recall@1 | {cell('itq', '16', 'copy_recall', '1')} | - |" in text  # ITQ lacks 64 bits

    for method, label in (("cibhash", "CIBHash"), ("lsh", "LSH"), ("itq", "ITQ")):
        for nbits in ("16", "64"):
            if nbits not in metrics[method]:
                assert f"| {label} | {nbits} |" not in text
                continue
            s = metrics[method][nbits]["codes"]
            row = (f"| {label} | {nbits} | {s['balance_error']:.4f} | {s['max_balance_error']:.4f} | "
                   f"{s['bit_correlation_mean_abs']:.4f} | {s['bit_correlation_max_abs']:.4f} | "
                   f"{s['distinct_codes'] / 40:.4f} ({s['distinct_codes']}) | {s['largest_bucket']} | "
                   f"{s['nn_distance_mean']:.2f} |")
            assert row in text
    s = metrics["cibhash"]["16"]["codes"]
    assert s["largest_bucket"] == 2 and s["distinct_codes"] == 39  # the planted duplicate shows
    assert "| CIBHash | 16 | 0.0312 |" in text and "| 0.9750 (39) | 2 |" in text

    for name in ("nn_distance.png", "bit_balance.png"):
        assert f"]({name})" in text
        with Image.open(tmp_path / name) as img:
            assert img.size[0] > 400
    assert "nearest other database code, over 40 sampled codes." in text
    assert "no labels, so the frames are grey" in text and "![retrieval](retrieval.png)" in text
    assert "## Training" in text and "| 1 | 4.2500 | 30.0 |" in text and "## Configuration" in text
    for labelled in ("mAP", "## Precision", "pr_curve.png", "precision_at_n.png", "green = relevant"):
        assert labelled not in text
    assert not (tmp_path / "pr_curve.png").exists()


def frame_colours(path):
    with Image.open(path) as img:
        return {tuple(c) for c in np.asarray(img.convert("RGB")).reshape(-1, 3).tolist()}


def test_retrieval_grid_without_labels_uses_neutral_frames(tmp_path):
    images = torch.arange(0, 250, 50, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    codes = ops.pack_bits(torch.eye(8)[:5])
    plot_retrieval_grid(images[:2], None, images, None, codes[:2], codes, str(tmp_path / "grid.png"), top=4)
    colours = frame_colours(tmp_path / "grid.png")
    assert (150, 150, 150) in colours and (40, 80, 230) in colours  # neutral hits, blue query
    assert not any(r < 80 and g > 100 and b < 80 for r, g, b in colours)  # no green
    assert not any(r > 200 and g < 60 and b < 60 for r, g, b in colours)  # no red
    with pytest.raises(ValueError, match="both be tensors or both be None"):
        plot_retrieval_grid(images[:2], torch.tensor([0, 1]), images, None, codes[:2], codes, str(tmp_path / "x.png"))


def test_draw_run_grid_on_an_unlabelled_data_stand_in(tmp_path):
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8, generator=gen)
    data = SimpleNamespace(query=SimpleNamespace(labels=None, in_memory=True, images=images[:6]),
                           database=SimpleNamespace(labels=None, in_memory=True, images=images))
    codes = ops.pack_bits(torch.randn(30, 16, generator=gen))
    draw_run_grid(data, codes[:6], codes, str(tmp_path / "grid.png"), queries=4, top=5)
    colours = frame_colours(tmp_path / "grid.png")
    assert (150, 150, 150) in colours and not any(r > 200 and g < 60 and b < 60 for r, g, b in colours)
    with Image.open(tmp_path / "grid.png") as img:
        assert img.size[1] > img.size[0] / 6 * 3  # 4 rows of 6 cells
