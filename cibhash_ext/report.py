"""Markdown report of a run with PNG plots, CIBHash vs LSH vs ITQ per code length: with labels the mAP
table, precision-recall curves and precision@N; without labels the diagnostics of
:mod:`cibhash_ext.diagnostics` (augmented-copy recall, bit balance and correlation, buckets,
nearest-neighbour distances); and a grid of queries with their top retrieved images.

Reads ``metrics.json`` of a run directory (written by :mod:`cibhash_ext.training`); the retrieval
grid needs the model and the dataset.
"""

from __future__ import annotations

import json
import os

import torch

from cibhash_ext import ops
from cibhash_ext.files import atomic_write, write_text

__all__ = ["write_report", "draw_run_grid", "plot_retrieval_grid", "plot_pr_curves", "plot_precision_at_n",
           "plot_nn_distances", "plot_bit_balance", "grid_images"]

METHOD_LABELS = {"cibhash": "CIBHash", "lsh": "LSH", "itq": "ITQ"}
# Frame colours of the retrieval grid: the query, a relevant / irrelevant hit, and a hit when
# there are no labels to judge it.
QUERY_FRAME, RELEVANT_FRAME, IRRELEVANT_FRAME, NEUTRAL_FRAME = (40, 80, 230), (30, 170, 60), (220, 30, 30), (150, 150, 150)


def _methods(metrics: dict) -> list[str]:
    return [m for m in ("cibhash", "lsh", "itq") if m in metrics]


def _lengths(metrics: dict) -> list[str]:
    return sorted(metrics["cibhash"], key=int)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_per_length(
    metrics: dict, path: str, series, xlabel: str, ylabel: str, xlim=None, marker=".", reference: float | None = None
) -> None:
    """One panel per code length with one line per method; ``series(entry)`` gives (x, y) or None;
    ``reference`` draws a dashed horizontal line at that y."""
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
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, dpi=110, format="png")
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


def plot_nn_distances(metrics: dict, path: str) -> None:
    """Distribution of each database code's Hamming distance to its nearest other database code (over
    the sampled codes of :func:`cibhash_ext.diagnostics.code_statistics`), one panel per code length,
    every method."""

    def series(entry):
        hist = entry.get("codes", {}).get("nn_distance_histogram")
        total = sum(hist) if hist else 0
        return (list(range(len(hist))), [h / total for h in hist]) if total else None

    _plot_per_length(metrics, path, series, "Hamming distance to the nearest other code", "fraction of codes")


def plot_bit_balance(metrics: dict, path: str) -> None:
    """Fraction of database codes with each bit set (0.5 is balanced), one panel per code length,
    every method."""

    def series(entry):
        balance = entry.get("codes", {}).get("bit_balance")
        return (list(range(len(balance))), balance) if balance else None

    _plot_per_length(metrics, path, series, "bit", "fraction of ones", reference=0.5)


def plot_retrieval_grid(
    query_images: torch.Tensor,
    query_labels: torch.Tensor | None,
    database_images: torch.Tensor,
    database_labels: torch.Tensor | None,
    query_codes: torch.Tensor,
    database_codes: torch.Tensor,
    path: str,
    top: int = 10,
    cell: int = 64,
) -> None:
    """A row per query: the query, then its ``top`` nearest database images by Hamming distance
    ((distance, index) order), framed green when relevant (same label, or a shared label), red
    otherwise, grey when there are no labels; the query is framed blue and each retrieved image
    shows its distance.

    Drawn as one mosaic with PIL (a grid of matplotlib axes takes seconds).

    Args:
        query_images (Tensor[Q, C, H, W], uint8), database_images (Tensor[N, C, H, W], uint8): pixels.
        query_labels, database_labels: class indices [Q] / [N] or multi-hot [Q, C] / [N, C], or
            both None (an unlabelled dataset).
        query_codes (Tensor[Q, B], uint8), database_codes (Tensor[N, B], uint8): packed codes.
        path (str): output PNG.
        top (int): retrieved images per query.
        cell (int): side of one image in pixels.
    """
    from PIL import Image, ImageDraw

    from cibhash_ext.evaluation import relevance

    if (query_labels is None) != (database_labels is None):
        raise ValueError(
            "query_labels and database_labels must both be tensors or both be None, got "
            f"{type(query_labels).__name__} and {type(database_labels).__name__}"
        )
    dist, idx = ops.hamming_topk(query_codes, database_codes, min(top, len(database_codes)))
    rel = None if query_labels is None else relevance(query_labels, database_labels[idx])
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
        paste(r, 0, query_images[r], QUERY_FRAME)
        for c in range(idx.shape[1]):
            colour = NEUTRAL_FRAME if rel is None else RELEVANT_FRAME if rel[r, c] else IRRELEVANT_FRAME
            paste(r, c + 1, database_images[idx[r, c]], colour, f"d={int(dist[r, c])}")
    with atomic_write(path) as fh:
        mosaic.save(fh, format="PNG")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _labelled_sections(metrics: dict, run_dir: str, lengths: list[str], methods: list[str]) -> list[str]:
    """The protocol line, the mAP and radius-2 tables and the curve plots of a labelled run."""
    lines = [
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
    return lines


def _unlabelled_sections(metrics: dict, run_dir: str, lengths: list[str], methods: list[str]) -> list[str]:
    """The protocol line, the augmented-copy recall and code-statistics tables and their plots of a
    run without labels (entries written by :func:`cibhash_ext.diagnostics.evaluate_unlabelled`)."""
    n = metrics.get("database")
    protocol = metrics.get("protocol", "augmented copies of the queries searched against the database that holds their originals")
    lines = [
        f"Queries {metrics.get('queries')}, database {n}, no labels: {protocol}. Ranking by Hamming distance, "
        "ties to the lower database index. Baselines (LSH, ITQ) hash the same inputs, same split.",
        "",
        "## Augmented-copy retrieval",
        "",
        "Fraction of queries whose original is among their k nearest database codes.",
        "",
        "| method | recall@k | " + " | ".join(f"{v} bits" for v in lengths) + " |",
        "|---|---|" + "---|" * len(lengths),
    ]
    entries = [metrics[m][v] for m in methods for v in lengths if v in metrics[m]]
    ks = sorted({k for e in entries for k in e.get("copy_recall", {})}, key=int)
    for method in methods:
        for k in ks:
            cells = [_fmt(metrics[method].get(v, {}).get("copy_recall", {}).get(k)) for v in lengths]
            lines.append(f"| {METHOD_LABELS[method]} | recall@{k} | " + " | ".join(cells) + " |")
    samples = {e["codes"].get("nn_distance_sample") for e in entries if "codes" in e}
    over = f"over {samples.pop()} sampled codes" if len(samples) == 1 and None not in samples else "over a sample"
    lines += [
        "",
        "## Codes",
        "",
        f"Statistics of the {n} database codes. Balance error: mean over bits of |p - 0.5|, p the fraction of "
        "codes with the bit set (max: the worst bit). Bit correlation: |Pearson correlation| between two bits, "
        "over all pairs of bits (a constant bit counts as 0). Largest bucket: the most codes sharing one code. "
        f"NN distance: Hamming distance from a database code to its nearest other database code, {over}.",
        "",
        "| method | bits | balance error | max balance error | mean abs. bit correlation | max abs. bit correlation "
        "| distinct codes / N | largest bucket | mean NN distance |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        for v in lengths:
            stats = metrics[method].get(v, {}).get("codes")
            if stats is None:
                continue
            distinct = stats.get("distinct_codes")
            if distinct is None:
                distinct_cell = "-"
            else:
                distinct_cell = f"{distinct / n:.4f} ({distinct})" if n else str(distinct)
            nn_mean = stats.get("nn_distance_mean")
            cells = [
                _fmt(stats.get("balance_error")), _fmt(stats.get("max_balance_error")),
                _fmt(stats.get("bit_correlation_mean_abs")), _fmt(stats.get("bit_correlation_max_abs")),
                distinct_cell, str(stats.get("largest_bucket", "-")), "-" if nn_mean is None else f"{nn_mean:.2f}",
            ]
            lines.append(f"| {METHOD_LABELS[method]} | {v} | " + " | ".join(cells) + " |")
    if any("codes" in e for e in entries):
        plot_nn_distances(metrics, os.path.join(run_dir, "nn_distance.png"))
        plot_bit_balance(metrics, os.path.join(run_dir, "bit_balance.png"))
        lines += ["", "## Nearest-neighbour distances", "",
                  "Distribution of the Hamming distance from a database code to its nearest other database code "
                  "(0: the code is shared).", "", "![nearest-neighbour distances](nn_distance.png)",
                  "", "## Bit balance", "", "Fraction of database codes with each bit set; 0.5 (dashed) is balanced.",
                  "", "![bit balance](bit_balance.png)"]
    return lines


def write_report(run_dir: str, grid: str | None = None) -> str:
    """Writes ``report.md`` and its plots into a run directory from its ``metrics.json``.

    A run whose metrics say ``"labels": false`` gets the unlabelled diagnostics (augmented-copy
    recall, code statistics, ``nn_distance.png``, ``bit_balance.png``) instead of mAP and its curves.

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
    labelled = metrics.get("labels", True) is not False
    lines = [f"# CIBHash run: {metrics.get('dataset', '?')}", ""]
    sections = _labelled_sections if labelled else _unlabelled_sections
    lines += sections(metrics, run_dir, lengths, methods)
    if grid:
        caption = (
            "Each row: a query (blue), then its nearest database images at the longest code length; "
            "green = relevant, red = not."
            if labelled else
            "Each row: a query (blue), then its nearest database images at the longest code length, each with "
            "its Hamming distance d; there are no labels, so the frames are grey."
        )
        lines += ["", "## Retrieval examples", "", caption, "", f"![retrieval]({grid})"]
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
    write_text(path, "\n".join(lines) + "\n")
    return path


def grid_images(images, indices: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Pixels of ``images[indices]`` (an ImageSet) for the retrieval grid: in-memory images as they
    are, files loaded and resized to size x size. Returns Tensor[K, C, H, W], uint8."""
    if images.in_memory:
        return images.images[indices]
    from torchvision.transforms.functional import pil_to_tensor

    return torch.stack([pil_to_tensor(images.pil(int(i)).convert("RGB").resize((size, size))) for i in indices])


def draw_run_grid(data, query_codes: torch.Tensor, database_codes: torch.Tensor, path: str, queries: int = 8, top: int = 10) -> None:
    """Retrieval grid for ``queries`` queries spread evenly over the query set.

    Args:
        data: holds ``query`` and ``database`` image sets (``ImageSet``: ``.labels`` a tensor or None,
            ``.in_memory``, ``.images`` or ``.pil(i)``); row i of ``query_codes`` encodes query image i.
        query_codes (Tensor[Q, B], uint8), database_codes (Tensor[N, B], uint8): packed codes.
        path (str): output PNG.
        queries (int): rows of the grid. top (int): retrieved images per row.
    """
    nq = len(query_codes)
    picks = torch.linspace(0, nq - 1, min(queries, nq)).round().long()
    _, idx = ops.hamming_topk(query_codes[picks], database_codes, min(top, len(database_codes)))
    used = idx.flatten().unique()
    remap = torch.full((len(database_codes),), -1, dtype=torch.int64)
    remap[used] = torch.arange(len(used))
    # Only the retrieved database rows are loaded; their codes keep the original order, so the
    # (distance, index) ranking on the subset is the ranking on the whole database.
    query_labels, database_labels = data.query.labels, data.database.labels
    plot_retrieval_grid(
        grid_images(data.query, picks), None if query_labels is None else query_labels[picks],
        grid_images(data.database, used), None if database_labels is None else database_labels[used],
        query_codes[picks], database_codes[used], path, top,
    )
