"""The training loop of CIBHash and :func:`train`, the one entry point that trains a model on a
dataset, a folder of images or Python data, then evaluates it and writes the run directory.

The checkpoint (:mod:`cibhash_ext.run_dir`) keeps model, optimiser, scheduler and RNG states after
every epoch (and the neighbour table once it comes from the model's features), and each epoch's
randomness is seeded by (seed, epoch), so ``resume`` continues a killed run to the same result (with
the same thread count: float reductions depend on it).

Under torchrun (``torchrun --nproc_per_node N -m cibhash_ext train ...``) the same function trains
with DistributedDataParallel: ``batch_size`` is per process, each global batch of N x batch_size
images is split over the processes by a DistributedSampler, batch norm and (with ``global_batch``)
the contrastive negatives span the global batch (:mod:`cibhash_ext.distributed`), and only rank 0
writes the run directory and evaluates.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from cibhash_ext import distributed, run_dir as runs
from cibhash_ext.config import TrainConfig, check_device, load_config
from cibhash_ext.data import DATASETS, RetrievalData, as_retrieval_data, load_dataset
from cibhash_ext.encode import Encoder
from cibhash_ext.feature_cache import CachedViewPairs, check_cacheable, feature_cache
from cibhash_ext.losses import CIBHashLoss, TrainingObjective
from cibhash_ext.models import CUSTOM_BACKBONE, CIBHashModel, build_model
from cibhash_ext.pairing import NeighbourPairs, SameImage
from cibhash_ext.pipeline import ImagePairs, autocast, epoch_generator, to_model_input
from cibhash_ext.plan import RunPlan
from cibhash_ext.progress import progress
from cibhash_ext.transforms import EvalTransform

__all__ = ["train", "TrainResult", "train_step", "wrap_for_processes", "build_objective"]

LOG = logging.getLogger("cibhash_ext")
# Settings that may differ between a run and its resumption without changing the result's meaning.
# The recipes only supply settings, which are compared themselves (runs written before recipes record none).
_RESUMABLE_CHANGES = ("threads", "progress", "workers", "eval_curves", "evaluate", "recipe")


class TrainResult(NamedTuple):
    """What :func:`train` returns: the run directory and the metrics written to ``metrics.json``
    (None on the ranks other than 0 of a multi-process run)."""

    run_dir: str
    metrics: dict | None


def _data_settings(data) -> dict:
    """The dataset settings that ``data`` (a name, a folder, a Dataset or a tensor) implies."""
    if data is None or isinstance(data, RetrievalData):
        return {}
    if isinstance(data, (str, os.PathLike)):
        if os.fspath(data) in DATASETS:
            return {"dataset": os.fspath(data)}
        return {"dataset": "folder", "data_root": os.fspath(data)}
    if isinstance(data, Tensor):
        return {"dataset": "tensor"}
    if isinstance(data, torch.utils.data.Dataset):
        return {"dataset": "dataset"}
    raise TypeError(f"data must be a dataset name, a folder path, a Dataset, an image tensor or a RetrievalData, "
                    f"got {type(data).__name__}")


def _load_data(cfg: TrainConfig, data) -> RetrievalData:
    if data is None or isinstance(data, (str, os.PathLike)):
        return load_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options())
    return as_retrieval_data(data, cfg.query_size, cfg.train_size, cfg.seed)


def train(
    config: TrainConfig | dict | str | os.PathLike | None = None,
    *,
    data=None,
    model: nn.Module | None = None,
    run_dir: str | os.PathLike | None = None,
    transform: Callable | None = None,
    resume: bool = False,
    force: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    **overrides,
) -> TrainResult:
    """Trains CIBHash, evaluates it (against LSH and ITQ on pixels) and writes the run directory.

    Args:
        config (TrainConfig, dict or path, optional): the settings; a path names a JSON config file
            (a run's ``config.json`` is one). Defaults: the Fashion-MNIST recipe.
        data (optional): a dataset name (:data:`cibhash_ext.data.DATASETS`), a folder of images (no
            labels needed), a ``torch.utils.data.Dataset`` of images or (image, label) pairs, a uint8
            or float image tensor [N, C, H, W], or a loaded RetrievalData. Default: the configured dataset.
        model (nn.Module, optional): a backbone mapping images [N, C, H, W] to features [N, D]
            (D from its ``out_features``, else from a dry run); replaces the configured backbone.
        run_dir (str, optional): the run directory (default ``runs/<dataset>-<time>``); it must not
            hold another run unless ``resume``, nor be a non-empty unrelated folder unless ``force``.
        transform (callable, optional): replaces the built-in augmentation: maps one PIL image to its
            two views, normalised tensors of the model's input shape (lightly's convention).
        resume (bool): continue the run in ``run_dir`` from its last checkpoint (from the start if it
            was killed before one); the configuration must match the stored one (apart from threads,
            workers, progress, eval_curves and evaluate).
        force (bool): write a new run into a non-empty folder that is not a run.
        on_epoch_end (callable, optional): called as ``f(epoch, record)`` after each checkpoint.
        **overrides: settings of :class:`~cibhash_ext.config.TrainConfig` applied on top of ``config``.

    Returns:
        TrainResult: (run_dir, metrics).
    """
    settings = {**_data_settings(data), **overrides}
    if model is not None:
        settings["backbone"] = CUSTOM_BACKBONE
    cfg = load_config(config, **settings)
    run_dir = os.fspath(run_dir) if run_dir is not None else os.path.join(
        "runs", f"{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    if resume:
        runs.prepare(run_dir, resume=True)
        stored = runs.load_run_config(run_dir).to_dict()
        current = cfg.to_dict()
        diff = sorted(k for k in current if k not in _RESUMABLE_CHANGES and json.dumps(current[k]) != json.dumps(stored[k]))
        if diff:
            raise ValueError(f"--resume with a different configuration than the run in {run_dir}: {diff} differ")
        resume = os.path.isfile(os.path.join(run_dir, runs.CHECKPOINT_FILE))
    elif distributed.rank() == 0:
        runs.prepare(run_dir, resume=False, force=force)
    check_device(cfg.device)
    # Data and model first: a missing dataset or weights file fails before the run directory is written.
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = _load_data(cfg, data)
    plan = RunPlan.resolve(cfg, data)
    if plan.batch_size < cfg.batch_size and distributed.rank() == 0:
        processes = "1 process" if plan.processes == 1 else f"{plan.processes} processes"
        warnings.warn(f"batch size capped at {plan.batch_size}: the training set ({len(data.train)} images) is "
                      f"smaller than one global batch ({processes} x batch {cfg.batch_size})", stacklevel=2)
    torch.manual_seed(cfg.seed)  # the model's initial weights
    hashing_model = build_model(cfg, plan.input_shape, backbone=model)
    if cfg.feature_cache:
        check_cacheable(hashing_model)
    if distributed.rank() != 0:
        _train(cfg, plan, run_dir, resume, data, hashing_model, transform, on_epoch_end)
        return TrainResult(run_dir, None)
    os.makedirs(run_dir, exist_ok=True)
    runs.write_config(run_dir, cfg, plan.resolved())
    handler = runs.log_to_file(run_dir)
    try:
        return TrainResult(run_dir, _train(cfg, plan, run_dir, resume, data, hashing_model, transform, on_epoch_end))
    finally:
        LOG.removeHandler(handler)
        handler.close()


def wrap_for_processes(model: CIBHashModel, device: str) -> nn.Module:
    """The module to call for training: ``model`` itself in one process; under torch.distributed,
    DistributedDataParallel over ``model`` (on ``device``) with its batch norms turned into
    global-batch ones (parameters are shared, so ``model`` stays the one to save and evaluate)."""
    if not distributed.is_distributed():
        return model
    distributed.convert_batchnorm(model)
    device_ids = [torch.cuda.current_device()] if torch.device(device).type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def build_objective(cfg: TrainConfig, temperatures: dict[int, float], model: CIBHashModel) -> TrainingObjective:
    """The objective the configuration describes: one CIBHashLoss per code length at its temperature
    (the run's plan), and the feature loss when it is on."""
    criteria = {v: CIBHashLoss(temperatures[v], cfg.beta, cfg.kl_eps, cfg.global_batch, cfg.balance, cfg.debias,
                               cfg.memory) for v in cfg.code_lengths}
    return TrainingObjective(criteria, model.binary, cfg.feature_loss, cfg.feature_temperature, cfg.global_batch)


def train_step(net: nn.Module, objective: TrainingObjective, view1: Tensor, view2: Tensor,
               generator: torch.Generator | None = None, *, device: str = "cpu", bf16: bool = False,
               channels_last: bool = False, features: bool = False) -> dict[str, Tensor]:
    """Forward and backward of one batch (both views); gradients accumulated into the parameters
    (averaged over processes by DDP when ``net`` is wrapped). ``device``, ``bf16`` and
    ``channels_last`` say how the model runs (a run's :class:`~cibhash_ext.plan.RunPlan`). With
    ``features`` the views are cached backbone features and the heads alone run.

    Returns:
        dict[str, Tensor[]]: ``loss`` (the total the gradients are of) and each term of the
        objective by name, detached.
    """
    if features:
        x = torch.cat([view1, view2]).to(device)
    else:
        x = to_model_input(torch.cat([view1, view2]), device, channels_last)
    inputs = {"features": x} if features else {"images": x}
    with autocast(device, bf16):
        if objective.feature_loss:
            logits, projections = net(**inputs, with_projection=True)
        else:
            logits, projections = net(**inputs), None
    loss, terms = objective(logits, projections, generator)
    loss.backward()
    return {"loss": loss.detach(), **{name: value.detach() for name, value in terms.items()}}


def _make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int):
    if cfg.schedule == "onecycle":
        # OneCycleLR divides by zero when the warm-up ends exactly at the first step (warmup x steps
        # == 1, e.g. 10 steps at 0.1: a small folder); a hair less is that limit, where it does not.
        warmup = cfg.warmup * (1 - 1e-9) if cfg.warmup * steps == 1 else cfg.warmup
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=warmup)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _pairing(cfg: TrainConfig, plan: RunPlan, data: RetrievalData) -> SameImage | NeighbourPairs:
    """The pairing strategy: neighbour positives when on, else the two views of one image."""
    if not cfg.neighbours:
        return SameImage()
    view = EvalTransform(plan.input_shape, plan.augment.mean, plan.augment.std, plan.augment.interpolation)
    return NeighbourPairs(data.train, cfg.neighbours, cfg.neighbour_refresh, view, plan.device, plan.bf16,
                          plan.channels_last, cfg.workers)


def _train(cfg: TrainConfig, plan: RunPlan, run_dir: str, resume: bool, data: RetrievalData, model: CIBHashModel,
           transform: Callable | None, on_epoch_end: Callable[[int, dict], None] | None) -> dict | None:
    from cibhash_ext.run_eval import Evaluation, evaluate_model, finish_run

    objective = build_objective(cfg, plan.temperatures, model)
    rank, steps = distributed.rank(), plan.steps_per_epoch
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    scheduler = _make_scheduler(cfg, optimizer, cfg.epochs * steps)
    start_epoch, history, train_seconds, state = 0, [], 0.0, {}
    if resume:
        state = runs.load_checkpoint(run_dir)
        start_epoch, history, train_seconds = _restore(state, run_dir, model, optimizer, scheduler, objective, plan)
        LOG.info("resuming %s after epoch %d of %d", run_dir, start_epoch, cfg.epochs)
    net = wrap_for_processes(model, plan.device)
    LOG.info(
        "training CIBHash on %s (%d images), backbone %s, codes %s bits, %d epochs of %d batches of %d x %d images, "
        "%d threads", data.name, len(data.train), cfg.backbone, "/".join(map(str, cfg.code_lengths)), cfg.epochs,
        steps, plan.processes, plan.batch_size, torch.get_num_threads(),
    )
    prepared = time.time()
    pairing = _pairing(cfg, plan, data)
    source = _view_source(cfg, plan, model, data, transform)
    prepare_seconds = time.time() - prepared
    pairing.load_checkpoint_state(state)
    for epoch in range(start_epoch, cfg.epochs):
        # Global RNG (dropout) seeded per epoch too, so an epoch is the same with or without a resume before it.
        torch.manual_seed(cfg.seed * 1_000_003 + epoch + 7_919 * rank)
        model.train()
        started = time.time()
        pairing.before_epoch(epoch, model)
        batches = progress(source.batches(epoch, pairing.table), f"epoch {epoch + 1}/{cfg.epochs}", steps,
                           cfg.progress and rank == 0, "batch")
        sums = _train_epoch(net, objective, optimizer, scheduler, batches, epoch_generator(cfg.seed, epoch, 2 * rank + 1),
                            plan, source.features, epoch)
        record = _epoch_record(epoch, sums, steps, len(cfg.code_lengths), time.time() - started, scheduler)
        train_seconds += record["seconds"]
        history.append(record)
        if rank == 0:
            runs.save_checkpoint(run_dir, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng_cpu": torch.get_rng_state(), "epoch": epoch, "history": history, "train_seconds": train_seconds,
                "config": cfg.to_dict(), "input_shape": list(plan.input_shape), "processes": plan.processes,
                **objective.checkpoint_state(), **pairing.checkpoint_state(epoch),
            })
        LOG.info("epoch %d/%d loss %.4f (mean per code length; %s) lr %.2e time %.1fs", epoch + 1, cfg.epochs,
                 record["loss"], ", ".join(f"{k} {v:.4f}" for k, v in record["losses"].items()), record["lr"],
                 record["seconds"])
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    LOG.info("training done in %.1fs", train_seconds)
    if rank != 0:
        return None
    runs.save_weights(run_dir, model, cfg, plan.input_shape)
    metrics = (evaluate_model(Evaluation.of(cfg, data, plan.augment), Encoder.of(model, cfg, plan.input_shape), data,
                              run_dir) if cfg.evaluate else {})
    # seconds: the epochs; prepare_seconds: the neighbour table and feature cache (of the last start).
    metrics["train"] = {"seconds": train_seconds, "prepare_seconds": prepare_seconds, "history": history,
                        "threads": torch.get_num_threads(), "processes": plan.processes}
    return finish_run(run_dir, metrics)


def _train_epoch(net: nn.Module, objective: TrainingObjective, optimizer: torch.optim.Optimizer, scheduler,
                 batches, binarize_gen: torch.Generator, plan: RunPlan, features: bool, epoch: int) -> dict[str, float]:
    """One epoch's steps over ``batches`` of (view1, view2); returns the sums of its losses by name."""
    sums: dict[str, float] = {}
    for view1, view2 in batches:
        optimizer.zero_grad(set_to_none=True)
        losses = train_step(net, objective, view1, view2, binarize_gen, device=plan.device, bf16=plan.bf16,
                            channels_last=plan.channels_last, features=features)
        optimizer.step()
        scheduler.step()
        _accumulate(sums, losses, epoch)
    return sums


def _restore(state: dict, run_dir: str, model: CIBHashModel, optimizer, scheduler, objective: TrainingObjective,
             plan: RunPlan) -> tuple[int, list, float]:
    """Loads a checkpoint's states; returns (first epoch to train, history, training seconds so far)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    objective.load_checkpoint_state(state)
    if int(state.get("processes", 1)) != plan.processes:
        raise ValueError(
            f"{run_dir} was trained by {state.get('processes', 1)} processes; resume it with as many "
            f"(got {plan.processes}): the global batch and the schedule depend on it"
        )
    return int(state["epoch"]) + 1, list(state["history"]), float(state["train_seconds"])


def _view_source(cfg: TrainConfig, plan: RunPlan, model: CIBHashModel, data: RetrievalData,
                 transform: Callable | None) -> ImagePairs | CachedViewPairs:
    """Where the views come from: the training images, or with ``feature_cache`` the cached backbone
    features of K views of each (a function of the data and the seed, so a resumed run computes it
    again to the same values)."""
    images = ImagePairs(data.train, plan.augment, plan.batch_size, cfg.seed, cfg.pipeline, cfg.workers, transform)
    if not cfg.feature_cache:
        return images
    started = time.time()
    cache = feature_cache(model, images, cfg.feature_cache, plan.device, plan.bf16)
    LOG.info("feature cache: %d views of each training image through the frozen backbone in %.1fs (%.0f MiB)",
             cfg.feature_cache, time.time() - started, cache.numel() * cache.element_size() / 2**20)
    return CachedViewPairs(cache, plan.batch_size, cfg.seed)


def _accumulate(sums: dict, losses: dict[str, Tensor], epoch: int) -> None:
    """Adds one step's losses, averaged over processes, to the epoch's sums; all ranks stop together on NaN."""
    # The mean over processes is the global batch's loss: one exchange for every term.
    means = distributed.all_reduce_mean(torch.stack(list(losses.values()))).tolist()
    for name, value in zip(losses, means):
        sums[name] = sums.get(name, 0.0) + value
    if not math.isfinite(sums["loss"]):
        raise FloatingPointError(f"the loss became {sums['loss']} in epoch {epoch + 1}; lower --lr")


def _epoch_record(epoch: int, sums: dict, steps: int, lengths: int, seconds: float, scheduler) -> dict:
    """One epoch's history entry: ``loss`` (per step and code length, as runs have always recorded it),
    then the mean of each term per step (``losses``)."""
    return {"epoch": epoch + 1, "loss": sums["loss"] / steps / lengths, "seconds": seconds,
            "lr": scheduler.get_last_lr()[0], "losses": {k: v / steps for k, v in sums.items() if k != "loss"}}
