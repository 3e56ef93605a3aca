"""Evaluation of a trained model on its dataset, written into the run directory.

With labels: mAP@K, precision within radius 2, precision@N and precision-recall curves
(:mod:`cibhash_ext.evaluation`). Without labels: the held-out protocol's augmented-copy retrieval and
the statistics of the codes (:mod:`cibhash_ext.diagnostics`). Either way LSH and ITQ on pixels are
measured on the same inputs, and ``metrics.json``, ``report.md`` and the plots are written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import torch
from torch import Tensor

from cibhash_ext import run_dir as runs
from cibhash_ext.baselines import ITQ, LSH
from cibhash_ext.config import TrainConfig
from cibhash_ext.data import ImageSet, RetrievalData, load_dataset
from cibhash_ext.diagnostics import evaluate_unlabelled
from cibhash_ext.encode import Encoder, encode_images, load_model
from cibhash_ext.evaluation import evaluate_codes
from cibhash_ext.files import write_json
from cibhash_ext.pipeline import pil_augmentation
from cibhash_ext.report import draw_run_grid, write_report
from cibhash_ext.transforms import AugmentConfig, BatchAugment

__all__ = ["Evaluation", "evaluate", "evaluate_model", "finish_run", "pixel_features", "augmented_copies"]

LOG = logging.getLogger("cibhash_ext")
COPY_PROTOCOL = ("augmented copies of the {q} held-out images (the training augmentation, fixed seed) searched "
                 "against the {n} database images that hold their originals")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """How a run is evaluated: what :func:`evaluate_model` reads, resolved once from the run's
    configuration and data (:meth:`of`).

    Attributes:
        code_lengths (tuple[int, ...]): the code lengths measured.
        topk (int): K of mAP@K (labelled data).
        baselines (tuple[str, ...]): the classical baselines fitted on pixels ("lsh", "itq").
        curves (bool): also precision@N and precision-recall curves (labelled data).
        seed (int): the baselines' seed; the held-out copies' is seed + 1.
        augment (AugmentConfig): the training augmentation, which makes the held-out copies.
        workers (int): DataLoader workers of the encoding.
        progress (bool): show progress bars.
    """

    code_lengths: tuple[int, ...]
    topk: int
    baselines: tuple[str, ...]
    curves: bool
    seed: int
    augment: AugmentConfig
    workers: int = 0
    progress: bool = False

    @classmethod
    def of(cls, cfg: TrainConfig, data: RetrievalData, augment: AugmentConfig | None = None) -> "Evaluation":
        """The evaluation of a run of ``cfg`` on ``data``; ``augment`` is the run's (its plan's),
        else resolved from ``cfg`` and ``data`` as the plan does."""
        if augment is None:
            augment = cfg.augment_config(data.channels, data.train.in_memory)
        return cls(tuple(cfg.code_lengths), cfg.topk or data.topk, tuple(cfg.baselines), cfg.eval_curves, cfg.seed,
                   augment, cfg.workers, cfg.progress)


def pixel_features(images: ImageSet, size: int = 32) -> Tensor:
    """Flattened pixels for the classical baselines: in-memory images as they are, other images
    (files, dataset items) as size x size RGB."""
    if images.in_memory:
        return images.images.reshape(len(images), -1)
    from torchvision.transforms.functional import pil_to_tensor

    rows = [pil_to_tensor(images.pil(i, "RGB").resize((size, size))).flatten() for i in range(len(images))]
    return torch.stack(rows) if rows else torch.zeros(0, 3 * size * size, dtype=torch.uint8)


def _to_uint8(views: Tensor, aug: AugmentConfig, channels: int | None = None) -> Tensor:
    """Normalised views back to uint8 pixels [N, C, H, W]; RGB views of grayscale images (an RGB
    model's input) back to ``channels`` = 1 (their channels are equal: the mean is exact)."""
    mean = torch.tensor(aug.mean).view(1, -1, 1, 1)
    std = torch.tensor(aug.std).view(1, -1, 1, 1)
    pixels = (views * std + mean).clamp(0, 1)
    if channels == 1 and pixels.shape[1] == 3:
        pixels = pixels.mean(dim=1, keepdim=True)
    return (pixels * 255).round().to(torch.uint8)


def augmented_copies(images: ImageSet, aug: AugmentConfig, seed: int) -> ImageSet:
    """One augmented copy of each image with the built-in training augmentation (fixed seed), as
    uint8 pixels: in memory for in-memory images (with their own channels, as the database the
    copies are searched in and the baselines' pixels), PIL images otherwise."""
    if images.in_memory and aug.hue == 0:
        views = BatchAugment(aug)(images.images, generator=torch.Generator().manual_seed(seed))
        return ImageSet(None, images=_to_uint8(views, aug, images.images.shape[1]))
    from torchvision.transforms.functional import to_pil_image

    mode = "RGB" if len(aug.mean) == 3 else "L"
    transform = pil_augmentation(aug, images)
    state = torch.get_rng_state()
    torch.manual_seed(seed)  # torchvision's PIL transforms draw from the global generator
    try:
        channels = images.images.shape[1] if images.in_memory else None
        pixels = [_to_uint8(transform(images.pil(i, mode))[None], aug, channels)[0] for i in range(len(images))]
    finally:
        torch.set_rng_state(state)
    if images.in_memory:
        return ImageSet(None, images=torch.stack(pixels) if pixels else images.images[:0])
    copies = [to_pil_image(p) for p in pixels]
    return ImageSet(None, items=(copies, list(range(len(copies)))))


def _baseline_hashers(how: Evaluation, train_x: Tensor):
    """(name, length, fitted hasher) of each baseline; ITQ is left out where the training pixels
    have fewer rows or columns than bits (its PCA has too few components)."""
    for name in how.baselines:
        for v in how.code_lengths:
            if name == "itq" and v > min(train_x.shape):
                LOG.info("ITQ at %d bits left out: it needs at least %d training images and pixels", v, v)
                continue
            yield name, v, (ITQ(v, seed=how.seed) if name == "itq" else LSH(v, seed=how.seed)).fit(train_x)


def _evaluate_labelled(how: Evaluation, model, data, results, started) -> tuple[Tensor, Tensor, RetrievalData]:
    query_codes = encode_images(model, data.query, 1024, how.workers, how.progress, "encode queries")
    database_codes = encode_images(model, data.database, 1024, how.workers, how.progress, "encode database")
    results["encode_seconds"] = time.time() - started
    for v in how.code_lengths:
        results["cibhash"][str(v)] = evaluate_codes(
            query_codes[v], database_codes[v], data.query.labels, data.database.labels, v, how.topk, how.curves
        )
    if how.baselines:
        train_x = pixel_features(data.train).float()
        query_x, database_x = pixel_features(data.query).float(), pixel_features(data.database).float()
        for name, v, hasher in _baseline_hashers(how, train_x):
            results.setdefault(name, {})[str(v)] = evaluate_codes(
                hasher.encode(query_x), hasher.encode(database_x), data.query.labels, data.database.labels, v,
                how.topk, how.curves,
            )
    return query_codes, database_codes, data


def _evaluate_unlabelled(how: Evaluation, model, data, results, started) -> tuple[Tensor, Tensor, RetrievalData]:
    copies = augmented_copies(data.query, how.augment, how.seed + 1)
    targets = data.copy_targets
    query_codes = encode_images(model, copies, 1024, how.workers, how.progress, "encode copies")
    database_codes = encode_images(model, data.database, 1024, how.workers, how.progress, "encode database")
    results["encode_seconds"] = time.time() - started
    results.update(labels=False, protocol=COPY_PROTOCOL.format(q=len(copies), n=len(data.database)))
    for v in how.code_lengths:
        results["cibhash"][str(v)] = evaluate_unlabelled(query_codes[v], database_codes[v], targets, v)
    if how.baselines:
        database_x = pixel_features(data.database).float()
        if len(data.train) == len(data.database) - len(targets):
            # The database holds every image: the training images are the rows that are not held out
            # (taken from it, not read a second time).
            held_out = torch.zeros(len(database_x), dtype=torch.bool)
            held_out[targets] = True
            train_x = database_x[~held_out]
        else:
            train_x = pixel_features(data.train).float()
        copies_x = _pixels_like(copies, data.database).float()
        for name, v, hasher in _baseline_hashers(how, train_x):
            results.setdefault(name, {})[str(v)] = evaluate_unlabelled(
                hasher.encode(copies_x), hasher.encode(database_x), targets, v)
    return query_codes, database_codes, dataclasses.replace(data, query=copies)


def _pixels_like(copies: ImageSet, database: ImageSet) -> Tensor:
    """Pixel features of the copies comparable with the database's: in-memory copies resized to the
    database images' size when the augmentation changed it."""
    if database.in_memory and copies.in_memory and copies.images.shape[-2:] != database.images.shape[-2:]:
        resized = torch.nn.functional.interpolate(copies.images.float(), size=tuple(database.images.shape[-2:]),
                                                  mode="bilinear", align_corners=False, antialias=True)
        return resized.round().clamp(0, 255).reshape(len(copies), -1)
    return pixel_features(copies)


def evaluate_model(how: Evaluation, model: Encoder, data: RetrievalData, run_dir: str | None = None) -> dict:
    """Encodes the evaluation images and measures CIBHash and the baselines at every code length;
    draws the retrieval grid into ``run_dir``.

    Returns:
        dict: the metrics (see :mod:`cibhash_ext.evaluation` and :mod:`cibhash_ext.diagnostics`).
    """
    started = time.time()
    results: dict = {"cibhash": {}, "dataset": data.name, "queries": len(data.query), "database": len(data.database)}
    if data.labelled:
        results["topk"] = how.topk
        query_codes, database_codes, shown = _evaluate_labelled(how, model, data, results, started)
    else:
        query_codes, database_codes, shown = _evaluate_unlabelled(how, model, data, results, started)
    if run_dir is not None and len(data.query) and len(data.database):
        longest = max(how.code_lengths)
        draw_run_grid(shown, query_codes[longest], database_codes[longest], os.path.join(run_dir, runs.GRID_FILE))
    results["eval_seconds"] = time.time() - started
    LOG.info("%s  (evaluation %.1fs)", _summary(how, results), results["eval_seconds"])
    return results


def _summary(how: Evaluation, results: dict) -> str:
    methods = ("cibhash", *how.baselines)
    if results.get("labels", True):
        head, value = f"mAP@{results['topk']}", lambda e: e["map"]
    else:
        head, value = "copy recall@1", lambda e: e["copy_recall"]["1"]
    cells = "  ".join(
        f"{v} bits: " + " ".join(f"{m} {value(results[m][str(v)]):.4f}" for m in methods if str(v) in results.get(m, {}))
        for v in how.code_lengths
    )
    return f"{head}  {cells}"


def finish_run(run_dir: str, metrics: dict) -> dict:
    """Writes ``metrics.json`` and, when there are evaluation results, the report; returns ``metrics``."""
    write_json(os.path.join(run_dir, runs.METRICS_FILE), metrics)
    if "cibhash" in metrics:
        LOG.info("report: %s", write_report(run_dir, runs.GRID_FILE))
    return metrics


def evaluate(run_dir: str, threads: int | None = None, progress_bars: bool = True) -> dict:
    """Re-evaluates the model of a run directory from its checkpoint and rewrites ``metrics.json``
    and the report."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    model = load_model(run_dir)
    cfg = dataclasses.replace(model.config, progress=progress_bars)
    state = runs.load_checkpoint(run_dir)
    data = load_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options())
    handler = runs.log_to_file(run_dir)
    try:
        metrics = evaluate_model(Evaluation.of(cfg, data), model, data, run_dir)
        metrics["train"] = {"seconds": float(state["train_seconds"]), "history": list(state["history"]),
                            "epochs_done": int(state["epoch"]) + 1}
        return finish_run(run_dir, metrics)
    finally:
        runs.LOG.removeHandler(handler)
        handler.close()
