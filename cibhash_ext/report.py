"""Markdown report of a run with PNG plots: precision-recall curves, precision@N, the mAP table of
CIBHash vs LSH vs ITQ per code length, and a grid of queries with their top retrieved images.

Reads ``metrics.json`` of a run directory (written by :mod:`cibhash_ext.training`); the retrieval
grid needs the model and the dataset.
"""

from __future__ import annotations

import json
import os

import torch

from cibhash_ext import ops

METHOD_LABELS = {"cibhash": "CIBHash", "lsh": "LSH", "itq": "ITQ"}


def _methods(metrics: dict) -> list[str]:
    return [m for m in ("cibhash", "lsh", "itq") if m in metrics]


def _lengths(metrics: dict) -> list[str]:
    return sorted(metrics["cibhash"], key=int)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_per_length(metrics: dict, path: str, series, xlabel: str, ylabel: str, xlim=None, marker=".") -> None:
    """One panel per code length with one line per method; ``series(entry)`` gives (x, y) or None."""
    plt = _pyplot()
    lengths = _lengths(metrics)
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.8), squeeze=False)
    for ax, length in zip(axes[0], lengths):
        for method in _methods(metrics):
            xy = series(metrics[method].get(length, {}))
            if xy:
                ax.plot(xy[0], xy[1], marker=marker, label=METHOD_LABELS[method])
        ax.set_title(f"{length} bits")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if xlim:
            ax.set_xlim(*xlim)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pr_curves(metrics: dict, path: str) -> None:
    """Precision-recall curves (Hamming radius sweep), one panel per code length, every method."""

    def series(entry):
        curve = entry.get("pr_curve")
        return (curve["recall"], curve["precision"]) if curve else None

    _plot_per_length(metrics, path, series, "recall", "precision", xlim=(0, 1))


def plot_precision_at_n(metrics: dict, path: str) -> None:
    """Precision of the top N retrieved, one panel per code length, every method."""

    def series(entry):
        p_at_n = entry.get("precision_at_n")
        if not p_at_n:
            return None
        ns = sorted(p_at_n, key=int)
        return [int(n) for n in ns], [p_at_n[n] for n in ns]

    _plot_per_length(metrics, path, series, "N (top retrieved)", "precision@N", marker="o")


def plot_retrieval_grid(
    query_images: torch.Tensor,
    query_labels: torch.Tensor,
    database_images: torch.Tensor,
    database_labels: torch.Tensor,
    query_codes: torch.Tensor,
    database_codes: torch.Tensor,
    path: str,
    top: int = 10,
    cell: int = 64,
) -> None:
    """A row per query: the query, then its ``top`` nearest database images by Hamming distance
    ((distance, index) order), framed green when relevant (same label, or a shared label), red
    otherwise; the query is framed blue and each retrieved image shows its distance.

    Drawn as one mosaic with PIL (a grid of matplotlib axes takes seconds).

    Args:
        query_images (Tensor[Q, C, H, W], uint8), database_images (Tensor[N, C, H, W], uint8): pixels.
        query_labels, database_labels: class indices [Q] / [N] or multi-hot [Q, C] / [N, C].
        query_codes (Tensor[Q, B], uint8), database_codes (Tensor[N, B], uint8): packed codes.
        path (str): output PNG.
        top (int): retrieved images per query.
        cell (int): side of one image in pixels.
    """
    from PIL import Image, ImageDraw

    from cibhash_ext.evaluation import relevance

    dist, idx = ops.hamming_topk(query_codes, database_codes, min(top, len(database_codes)))
    rel = relevance(query_labels, database_labels[idx])
    rows, cols, border, gap = len(query_codes), idx.shape[1] + 1, 4, 6
    pitch = cell + 2 * border + gap
    mosaic = Image.new("RGB", (cols * pitch + gap, rows * pitch + gap), "white")
    draw = ImageDraw.Draw(mosaic)

    def paste(r, c, img, colour, text=""):
        arr = img.permute(1, 2, 0).numpy()
        tile = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).convert("RGB").resize((cell, cell), Image.NEAREST)
        x, y = gap + c * pitch + (gap if c else 0) // 2, gap + r * pitch
        draw.rectangle([x, y, x + cell + 2 * border - 1, y + cell + 2 * border - 1], fill=colour)
        mosaic.paste(tile, (x + border, y + border))
        if text:
            draw.text((x + border + 2, y + border + 1), text, fill=(255, 255, 0))

    for r in range(rows):
        paste(r, 0, query_images[r], (40, 80, 230))
        for c in range(idx.shape[1]):
            colour = (30, 170, 60) if rel[r, c] else (220, 30, 30)
            paste(r, c + 1, database_images[idx[r, c]], colour, f"d={int(dist[r, c])}")
    mosaic.save(path)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def write_report(run_dir: str, grid: str | None = None) -> str:
    """Writes ``report.md`` and its plots into a run directory from its ``metrics.json``.

    Args:
        run_dir (str): the run directory.
        grid (str, optional): file name of an already drawn retrieval grid to include.

    Returns:
        str: the report's path.
    """
    metrics_path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(metrics_path):
        raise FileNotFoundError(f"no metrics in {run_dir}: expected {metrics_path} (run cibhash train or evaluate)")
    with open(metrics_path) as fh:
        metrics = json.load(fh)
    config = {}
    if os.path.isfile(os.path.join(run_dir, "config.json")):
        with open(os.path.join(run_dir, "config.json")) as fh:
            config = json.load(fh)
    lengths, methods = _lengths(metrics), _methods(metrics)
    lines = [
        f"# CIBHash run: {metrics.get('dataset', '?')}",
        "",
        f"Queries {metrics.get('queries')}, database {metrics.get('database')}, mAP@{metrics.get('topk')}; "
        "ranking by Hamming distance, ties to the lower database index. Baselines on pixels, same split.",
        "",
        "## mAP@K",
        "",
        "| method | " + " | ".join(f"{v} bits" for v in lengths) + " |",
        "|---|" + "---|" * len(lengths),
    ]
    for method in methods:
        cells = [_fmt(metrics[method].get(v, {}).get("map")) for v in lengths]
        lines.append(f"| {METHOD_LABELS[method]} | " + " | ".join(cells) + " |")
    lines += ["", "## Precision within Hamming radius 2", "",
              "| method | " + " | ".join(f"{v} bits" for v in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for method in methods:
        cells = [_fmt(metrics[method].get(v, {}).get("precision_radius2")) for v in lengths]
        lines.append(f"| {METHOD_LABELS[method]} | " + " | ".join(cells) + " |")
    has_curves = any("pr_curve" in metrics["cibhash"][v] for v in lengths)
    if has_curves:
        plot_pr_curves(metrics, os.path.join(run_dir, "pr_curve.png"))
        plot_precision_at_n(metrics, os.path.join(run_dir, "precision_at_n.png"))
        lines += ["", "## Precision-recall (Hamming radius sweep)", "", "![precision-recall](pr_curve.png)",
                  "", "## Precision@N", "", "![precision@N](precision_at_n.png)"]
    if grid:
        lines += ["", "## Retrieval examples", "",
                  "Each row: a query (blue), then its nearest database images at the longest code length; "
                  "green = relevant, red = not.", "", f"![retrieval]({grid})"]
    train = metrics.get("train", {})
    if train.get("history"):
        threads = train.get("threads")
        where = f" ({threads} thread{'s' if threads != 1 else ''})" if threads else ""
        lines += ["", "## Training", "", f"{len(train['history'])} epochs in {train.get('seconds', 0):.0f} s{where}; "
                  f"evaluation {metrics.get('eval_seconds', 0):.0f} s.", "",
                  "| epoch | loss | seconds |", "|---|---|---|"]
        lines += [f"| {h['epoch']} | {h['loss']:.4f} | {h['seconds']:.1f} |" for h in train["history"]]
    if config:
        lines += ["", "## Configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```"]
    path = os.path.join(run_dir, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def grid_images(images, indices: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Pixels of ``images[indices]`` (an ImageSet) for the retrieval grid: in-memory images as they
    are, files loaded and resized to size x size. Returns Tensor[K, C, H, W], uint8."""
    if images.in_memory:
        return images.images[indices]
    from torchvision.transforms.functional import pil_to_tensor

    return torch.stack([pil_to_tensor(images.pil(int(i)).convert("RGB").resize((size, size))) for i in indices])


def draw_run_grid(data, query_codes: torch.Tensor, database_codes: torch.Tensor, path: str, queries: int = 8, top: int = 10) -> None:
    """Retrieval grid for ``queries`` queries spread evenly over the query set."""
    picks = torch.linspace(0, len(data.query) - 1, min(queries, len(data.query))).round().long()
    _, idx = ops.hamming_topk(query_codes[picks], database_codes, min(top, len(database_codes)))
    used = idx.flatten().unique()
    remap = torch.full((len(database_codes),), -1, dtype=torch.int64)
    remap[used] = torch.arange(len(used))
    # Only the retrieved database rows are loaded; their codes keep the original order, so the
    # (distance, index) ranking on the subset is the ranking on the whole database.
    plot_retrieval_grid(
        grid_images(data.query, picks), data.query.labels[picks], grid_images(data.database, used),
        data.database.labels[used], query_codes[picks], database_codes[used], path, top,
    )
