"""Training and evaluation runs of CIBHash: configuration, run directory, checkpoints, resume.

A run directory holds ``config.json`` (the resolved configuration), ``checkpoint.pt`` (written
atomically after every epoch, loaded weights-only), ``train.log`` (a line per epoch),
``metrics.json`` and, from :mod:`cibhash_ext.report`, ``report.md`` with its plots.
Randomness of epoch e comes from generators seeded by (seed, e), and the checkpoint keeps model,
optimiser, scheduler and RNG states, so ``resume`` continues a killed run to the same result.

Under torchrun (``torchrun --nproc_per_node N -m cibhash_ext train ...``) the same function trains
with DistributedDataParallel: ``batch_size`` is per process, each global batch of N x batch_size
images is split over the processes by a DistributedSampler, batch norm and (with ``global_batch``)
the contrastive negatives span the global batch (:mod:`cibhash_ext.distributed`), and only rank 0
writes the run directory and evaluates.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import sys
import time
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from cibhash_ext import distributed, ops
from cibhash_ext.baselines import ITQ, LSH
from cibhash_ext.data import IMAGE_EXTENSIONS, ImageSet, RetrievalData, load_dataset
from cibhash_ext.evaluation import evaluate_codes
from cibhash_ext.losses import CIBHashLoss
from cibhash_ext.models import BACKBONES, CIBHashModel, build_backbone
from cibhash_ext.report import draw_run_grid, write_report
from cibhash_ext.transforms import (
    AugmentConfig,
    BatchAugment,
    BatchNormalize,
    TwoViews,
    build_eval_transform,
    build_pil_transform,
)

LOG = logging.getLogger("cibhash_ext")
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
GRID_FILE = "retrieval.png"
LOG_FILE = "train.log"
AUGMENT_PRESETS = ("auto", "paper", "small_grayscale")
# Settings that may differ between a run and its resumption without changing the result's meaning.
_RESUMABLE_CHANGES = ("threads", "progress", "workers", "eval_curves")


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run. Defaults are the Fashion-MNIST recipe of benchmarks/QUALITY.md.

    Attributes:
        dataset (str): one of :data:`cibhash_ext.data.DATASETS`.
        data_root (str, optional): dataset folder (Fashion-MNIST has a default).
        train_size (int, optional): train on a random subset of this many training images.
        query_size, database_size (int, optional): truncate the query / database sets (quick runs).
        query_per_class, train_per_class (int, optional): split sizes of cifar10 and image_folder
            (None: the loader's protocol defaults).
        backbone (str): one of :data:`cibhash_ext.models.BACKBONES`.
        backbone_weights (str, optional): local weights file (vgg16: required).
        convnet_widths (tuple[int, ...]): channels of the convnet backbone's three conv blocks.
        convnet_fc (int): width of the convnet's fully connected feature layer.
        mlp_widths (tuple[int, ...]): hidden widths of the mlp backbone.
        code_lengths (tuple[int, ...]): code lengths trained jointly on one backbone.
        hidden (int): hash-head hidden width.
        epochs, batch_size (int): schedule length and images per batch and process (each gives two views).
        lr, weight_decay (float): AdamW settings (weight_decay 0 is Adam, as the paper).
        schedule (str): "onecycle" (warm-up then cosine decay) or "constant" (the paper).
        warmup (float): one-cycle warm-up fraction.
        temperature (tuple[float, ...], optional): NT-Xent temperature, one for all code lengths or one
            per length (paper: 0.3). None is the Fashion-MNIST recipe: 0.15 up to 16 bits, 0.1 above.
        beta (float): KL weight (paper: 0.001).
        kl_eps (float, optional): None = exact KL; 1e-8 = the public code's form.
        stochastic (bool): stochastic binary layer while training (paper); False = public-code variant.
        global_batch (bool): with several processes, contrast each code against the codes of every
            process (the negatives of one process with the global batch); False keeps each process's
            own batch, as data-parallel SimCLR code without a gather does. No effect in one process.
        augment_preset (str): "auto" (small_grayscale for the convnet on 1-channel images, else paper),
            "paper" or "small_grayscale".
        augment (dict): overrides of :class:`cibhash_ext.transforms.AugmentConfig` fields.
        pipeline (str): "auto" (batched augmentation for in-memory images, PIL otherwise), "batch", "pil".
        bf16 (bool): bfloat16 autocast for the backbone (CPU and CUDA).
        channels_last (bool): channels-last memory format for the convnet.
        device (str): "cpu" or "cuda".
        threads (int, optional): torch intra-op threads.
        workers (int): DataLoader workers of the PIL pipeline.
        seed (int): seed of everything random.
        topk (int, optional): K of mAP@K; None = the dataset's protocol.
        baselines (tuple[str, ...]): classical baselines evaluated on pixels ("lsh", "itq").
        eval_curves (bool): also compute precision@N and precision-recall curves.
        progress (bool): show progress bars.
    """

    dataset: str = "fashion_mnist"
    data_root: str | None = None
    train_size: int | None = None
    query_size: int | None = None
    database_size: int | None = None
    query_per_class: int | None = None
    train_per_class: int | None = None
    backbone: str = "mlp"
    backbone_weights: str | None = None
    convnet_widths: tuple[int, ...] = (32, 64, 64)
    convnet_fc: int = 512
    mlp_widths: tuple[int, ...] = (1024, 1024)
    code_lengths: tuple[int, ...] = (16, 32, 64)
    hidden: int = 1024
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "onecycle"
    warmup: float = 0.1
    temperature: tuple[float, ...] | None = None
    beta: float = 1e-3
    kl_eps: float | None = None
    stochastic: bool = True
    global_batch: bool = True
    augment_preset: str = "auto"
    augment: dict = dataclasses.field(default_factory=dict)
    pipeline: str = "auto"
    bf16: bool = True
    channels_last: bool = True
    device: str = "cpu"
    threads: int | None = None
    workers: int = 0
    seed: int = 0
    topk: int | None = None
    baselines: tuple[str, ...] = ("lsh", "itq")
    eval_curves: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        self.convnet_widths = tuple(int(v) for v in self.convnet_widths)
        self.mlp_widths = tuple(int(v) for v in self.mlp_widths)
        self.code_lengths = tuple(int(v) for v in self.code_lengths)
        self.baselines = tuple(self.baselines)
        if isinstance(self.temperature, (int, float)):
            self.temperature = (float(self.temperature),)
        if self.temperature is not None:
            self.temperature = tuple(float(t) for t in self.temperature)
        if self.temperature is not None and (
            len(self.temperature) not in (1, len(self.code_lengths)) or any(t <= 0 for t in self.temperature)
        ):
            raise ValueError(
                f"temperature must be one value > 0 or one per code length {self.code_lengths}, got {self.temperature}"
            )
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if not self.code_lengths or any(v <= 0 for v in self.code_lengths):
            raise ValueError(f"code_lengths must be positive integers, got {self.code_lengths}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (NT-Xent needs negatives), got {self.batch_size}")
        if self.schedule not in ("onecycle", "constant"):
            raise ValueError(f"schedule must be 'onecycle' or 'constant', got {self.schedule!r}")
        if self.augment_preset not in AUGMENT_PRESETS:
            raise ValueError(f"augment_preset must be one of {', '.join(AUGMENT_PRESETS)}, got {self.augment_preset!r}")
        if self.pipeline not in ("auto", "batch", "pil"):
            raise ValueError(f"pipeline must be 'auto', 'batch' or 'pil', got {self.pipeline!r}")
        unknown = set(self.augment) - {f.name for f in dataclasses.fields(AugmentConfig)}
        if unknown:
            raise ValueError(f"unknown augment settings {sorted(unknown)}; valid: {[f.name for f in dataclasses.fields(AugmentConfig)]}")
        bad = set(self.baselines) - {"lsh", "itq"}
        if bad:
            raise ValueError(f"baselines must be among 'lsh', 'itq', got {sorted(bad)}")

    @classmethod
    def paper(cls, **changes) -> "TrainConfig":
        """The paper's settings (Qiu et al. 2021, Sec. 4.1): frozen ImageNet VGG-16 (weights from a local
        file), 224x224 views with the paper's augmentations, Adam lr 1e-3 with a constant schedule,
        batch 64, 60 epochs, tau 0.3, beta 0.001. The paper trains one model per code length; here the
        lengths share the backbone, which is frozen, so the heads train exactly as separate models would."""
        settings = dict(backbone="vgg16", augment_preset="paper", pipeline="pil", epochs=60, batch_size=64, lr=1e-3,
                        weight_decay=0.0, schedule="constant", temperature=(0.3,), beta=1e-3, stochastic=True)
        settings.update(changes)
        return cls(**settings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The inverse of :meth:`to_dict`; a ``resolved`` entry (written to config.json for readers) is ignored."""
        values = {k: v for k, v in values.items() if k != "resolved"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown configuration keys {sorted(unknown)}")
        return cls(**values)

    def temperature_for(self, length: int) -> float:
        """The NT-Xent temperature of the code length ``length``."""
        if self.temperature is None:
            # Measured on Fashion-MNIST (benchmarks/QUALITY.md): short codes want a softer temperature.
            return 0.15 if length <= 16 else 0.1
        if len(self.temperature) == 1:
            return self.temperature[0]
        return self.temperature[self.code_lengths.index(length)]

    def dataset_options(self) -> dict:
        if self.dataset == "fashion_mnist":
            return {"train_size": self.train_size, "query_size": self.query_size, "database_size": self.database_size, "seed": self.seed}
        if self.dataset in ("cifar10", "image_folder"):
            options = {"seed": self.seed, "query_per_class": self.query_per_class, "train_per_class": self.train_per_class}
            return {k: v for k, v in options.items() if v is not None}
        return {}

    def augment_config(self, channels: int) -> AugmentConfig:
        preset = self.augment_preset
        if preset == "auto":
            preset = "small_grayscale" if self.backbone in ("convnet", "mlp") and channels == 1 else "paper"
        base = AugmentConfig.small_grayscale() if preset == "small_grayscale" else AugmentConfig.paper()
        return dataclasses.replace(base, **self.augment)


def progress(iterable, desc: str, total: int | None = None, enabled: bool = True, unit: str = "it"):
    """A progress bar with rate and ETA on stderr (tqdm), or the bare iterable when disabled."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


def _epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + salt) % (2**63))


def atomic_save(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: a reader never sees half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(obj, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def _prepare_input(model_cfg: TrainConfig, x: Tensor) -> Tensor:
    x = x.to(model_cfg.device, non_blocking=True)
    if model_cfg.channels_last and model_cfg.backbone == "convnet":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _autocast(cfg: TrainConfig):
    return torch.autocast(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16)


class _PILViews(torch.utils.data.Dataset):
    """Two augmented views (or one evaluation view) of each image of an ImageSet, through PIL."""

    def __init__(self, images: ImageSet, transform: Callable, mode: str) -> None:
        self.images, self.transform, self.mode = images, transform, mode

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images.pil(i).convert(self.mode))


def build_model(cfg: TrainConfig, shape: Sequence[int]) -> CIBHashModel:
    """The model a configuration describes for input images of ``shape`` [C, H, W] (see
    :func:`input_shape`); backbone weights load from local files only."""
    channels, height, width = (int(v) for v in shape)
    if cfg.backbone in ("convnet", "mlp") and height != width:
        raise ValueError(f"the {cfg.backbone} backbone needs square images, got {height}x{width}; set --aug size=S")
    backbone = build_backbone(
        cfg.backbone, channels, cfg.backbone_weights, cfg.convnet_widths, cfg.convnet_fc, height, cfg.mlp_widths
    )
    model = CIBHashModel(backbone, cfg.code_lengths, cfg.hidden, cfg.stochastic).to(cfg.device)
    if cfg.channels_last and cfg.backbone == "convnet":
        model = model.to(memory_format=torch.channels_last)
    return model


def input_shape(cfg: TrainConfig, data: RetrievalData) -> list[int]:
    """[C, H, W] of the images the model sees: in-memory images at their size unless resized."""
    aug = cfg.augment_config(data.channels)
    if aug.size > 0:
        return [len(aug.mean), aug.size, aug.size]
    if not data.train.in_memory:
        raise ValueError("images loaded from files need a fixed input size: set --aug size=S (S > 0)")
    return [len(aug.mean), *map(int, data.train.images.shape[2:])]


def _use_batch_pipeline(cfg: TrainConfig, images: ImageSet, aug: AugmentConfig) -> bool:
    if cfg.pipeline == "batch":
        if not images.in_memory:
            raise ValueError("pipeline='batch' needs an in-memory dataset (fashion_mnist, cifar10); use 'pil'")
        return True
    if cfg.pipeline == "pil":
        return False
    return images.in_memory and aug.hue == 0


def _epoch_sampler(cfg: TrainConfig, n: int, epoch: int) -> torch.utils.data.DistributedSampler:
    """This process's share of the epoch's shuffled order. The order depends on (seed, epoch) only,
    so the global batches are the same for any number of processes: rank r takes every R-th image."""
    sampler = torch.utils.data.DistributedSampler(
        range(n), num_replicas=distributed.world_size(), rank=distributed.rank(), shuffle=True,
        seed=cfg.seed, drop_last=True,
    )
    sampler.set_epoch(epoch)
    return sampler


def _train_batches(cfg: TrainConfig, data: RetrievalData, aug: AugmentConfig, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields this process's (view1, view2) batches of one epoch, both pipelines seeded by (seed, epoch, rank)."""
    images = data.train
    g = _epoch_generator(cfg.seed, epoch, salt=2 * distributed.rank())
    sampler = _epoch_sampler(cfg, len(images), epoch)
    n_batches = _n_batches(cfg, data)
    if _use_batch_pipeline(cfg, images, aug):
        augment = BatchAugment(aug)
        order = torch.tensor(list(sampler), dtype=torch.int64)
        for b in range(n_batches):
            batch = images.images[order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
            views = augment(torch.cat([batch, batch]), generator=g)
            yield views[: cfg.batch_size], views[cfg.batch_size :]
        return
    mode = "RGB" if len(aug.mean) == 3 else "L"
    dataset = _PILViews(images, TwoViews(build_pil_transform(aug)), mode)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, num_workers=cfg.workers, generator=g,
    )
    yield from itertools.islice(loader, n_batches)


def _n_batches(cfg: TrainConfig, data: RetrievalData) -> int:
    """Steps per epoch: global batches of world_size x batch_size images."""
    global_batch = cfg.batch_size * distributed.world_size()
    n = len(data.train) // global_batch
    if n == 0:
        raise ValueError(
            f"the training set ({len(data.train)} images) is smaller than one global batch ({global_batch} = "
            f"{distributed.world_size()} processes x batch {cfg.batch_size})"
        )
    return n


def _make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=cfg.warmup)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _setup_logging(run_dir: str) -> logging.Handler:
    LOG.setLevel(logging.INFO)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in LOG.handlers):
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(console)
    handler = logging.FileHandler(os.path.join(run_dir, LOG_FILE))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOG.addHandler(handler)
    return handler


def load_checkpoint(run_dir: str) -> dict:
    """Loads ``run_dir/checkpoint.pt`` weights-only (no code runs on load)."""
    path = os.path.join(run_dir, CHECKPOINT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint in {run_dir}: expected {path} (train a model there first)")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_run_config(run_dir: str) -> TrainConfig:
    """The resolved configuration stored in ``run_dir/config.json``."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a run directory: {path} is missing")
    with open(path) as fh:
        return TrainConfig.from_dict(json.load(fh))


def train(
    cfg: TrainConfig,
    run_dir: str,
    resume: bool = False,
    data: RetrievalData | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> dict:
    """Trains CIBHash, evaluates it against the baselines and writes the run directory.

    Args:
        cfg (TrainConfig): the run's configuration.
        run_dir (str): the run directory (created; must not hold another run unless ``resume``).
        resume (bool): continue the run in ``run_dir`` from its last checkpoint; the configuration
            must match the stored one (apart from threads, workers, progress and eval_curves).
        data (RetrievalData, optional): an already loaded dataset (else loaded from ``cfg``).
        on_epoch_end (callable, optional): called as ``f(epoch, record)`` after each checkpoint.

    Returns:
        dict: the metrics written to ``metrics.json``; None on the ranks other than 0 of a
        multi-process run (rank 0 evaluates and writes alone).
    """
    config_path = os.path.join(run_dir, CONFIG_FILE)
    if resume:
        stored = load_run_config(run_dir).to_dict()
        current = cfg.to_dict()
        diff = sorted(k for k in current if k not in _RESUMABLE_CHANGES and json.dumps(current[k]) != json.dumps(stored[k]))
        if diff:
            raise ValueError(f"--resume with a different configuration than the run in {run_dir}: {diff} differ")
    elif os.path.exists(os.path.join(run_dir, CHECKPOINT_FILE)):
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")
    # Data and model first: a missing dataset or weights file fails before the run directory exists.
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options())
    torch.manual_seed(cfg.seed)  # the model's initial weights
    model = build_model(cfg, input_shape(cfg, data))
    if distributed.rank() != 0:
        return _train(cfg, run_dir, resume, data, model, on_epoch_end)
    os.makedirs(run_dir, exist_ok=True)
    # The settings that presets and defaults resolve to, stored beside the configuration for readers.
    resolved = {"augment": dataclasses.asdict(cfg.augment_config(data.channels)),
                "temperature": {str(v): cfg.temperature_for(v) for v in cfg.code_lengths},
                "input_shape": input_shape(cfg, data), "processes": distributed.world_size()}
    _write_json({**cfg.to_dict(), "resolved": resolved}, config_path)
    handler = _setup_logging(run_dir)
    try:
        return _train(cfg, run_dir, resume, data, model, on_epoch_end)
    finally:
        LOG.removeHandler(handler)
        handler.close()


def wrap_for_processes(model: CIBHashModel, cfg: TrainConfig) -> nn.Module:
    """The module to call for training: ``model`` itself in one process; under torch.distributed,
    DistributedDataParallel over ``model`` with its batch norms turned into global-batch ones
    (parameters are shared, so ``model`` stays the one to save and evaluate)."""
    if not distributed.is_distributed():
        return model
    distributed.convert_batchnorm(model)
    device_ids = [torch.cuda.current_device()] if torch.device(cfg.device).type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def train_step(net: nn.Module, model: CIBHashModel, criteria: dict, view1: Tensor, view2: Tensor,
               binarize_gen: torch.Generator, cfg: TrainConfig) -> Tensor:
    """Forward and backward of one batch (both views): the loss summed over code lengths, gradients
    accumulated into the parameters (averaged over processes by DDP when ``net`` is wrapped)."""
    x = _prepare_input(cfg, torch.cat([view1, view2]))
    with _autocast(cfg):
        logits = net(x)
    loss = x.new_zeros((), dtype=torch.float32)
    for length, z in logits.items():
        z1, z2 = z[: len(view1)], z[len(view1) :]
        b1 = ops.stochastic_binarize(z1, model.binary.stochastic, binarize_gen)
        b2 = ops.stochastic_binarize(z2, model.binary.stochastic, binarize_gen)
        loss = loss + criteria[length](b1, b2, z1, z2)
    loss.backward()
    return loss.detach()


def _train(cfg, run_dir, resume, data, model, on_epoch_end) -> dict | None:
    aug = cfg.augment_config(data.channels)
    criteria = {v: CIBHashLoss(cfg.temperature_for(v), cfg.beta, cfg.kl_eps, cfg.global_batch) for v in cfg.code_lengths}
    rank, processes = distributed.rank(), distributed.world_size()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_batches = _n_batches(cfg, data)
    scheduler = _make_scheduler(cfg, optimizer, cfg.epochs * n_batches)
    start_epoch, history, train_seconds = 0, [], 0.0
    if resume:
        state = load_checkpoint(run_dir)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if int(state.get("processes", 1)) != processes:
            raise ValueError(
                f"{run_dir} was trained by {state.get('processes', 1)} processes; resume it with as many "
                f"(got {processes}): the global batch and the schedule depend on it"
            )
        start_epoch, history, train_seconds = int(state["epoch"]) + 1, list(state["history"]), float(state["train_seconds"])
        LOG.info("resuming %s after epoch %d of %d", run_dir, start_epoch, cfg.epochs)
    net = wrap_for_processes(model, cfg)
    LOG.info(
        "training CIBHash on %s (%d images), backbone %s, codes %s bits, %d epochs of %d batches of %d x %d images, "
        "%d threads", data.name, len(data.train), cfg.backbone, "/".join(map(str, cfg.code_lengths)), cfg.epochs,
        n_batches, processes, cfg.batch_size, torch.get_num_threads(),
    )
    for epoch in range(start_epoch, cfg.epochs):
        # Global RNG (dropout) seeded per epoch too, so an epoch is the same with or without a resume before it.
        torch.manual_seed(cfg.seed * 1_000_003 + epoch + 7_919 * rank)
        binarize_gen = _epoch_generator(cfg.seed, epoch, salt=2 * rank + 1)
        model.train()
        started, loss_sum = time.time(), 0.0
        batches = progress(
            _train_batches(cfg, data, aug, epoch), f"epoch {epoch + 1}/{cfg.epochs}", n_batches,
            cfg.progress and rank == 0, "batch",
        )
        for view1, view2 in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = train_step(net, model, criteria, view1, view2, binarize_gen, cfg)
            optimizer.step()
            scheduler.step()
            # The mean over processes is the global batch's loss, and all ranks stop together on NaN.
            loss_sum += float(distributed.all_reduce_mean(loss))
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"the loss became {loss_sum} in epoch {epoch + 1}; lower --lr")
        seconds = time.time() - started
        train_seconds += seconds
        record = {"epoch": epoch + 1, "loss": loss_sum / n_batches / len(cfg.code_lengths), "seconds": seconds,
                  "lr": scheduler.get_last_lr()[0]}
        history.append(record)
        if rank == 0:
            atomic_save(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng_cpu": torch.get_rng_state(), "epoch": epoch, "history": history, "train_seconds": train_seconds,
                 "config": cfg.to_dict(), "input_shape": input_shape(cfg, data), "processes": processes},
                os.path.join(run_dir, CHECKPOINT_FILE),
            )
        LOG.info("epoch %d/%d loss %.4f (mean per code length) lr %.2e time %.1fs", epoch + 1, cfg.epochs,
                 record["loss"], record["lr"], seconds)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    LOG.info("training done in %.1fs", train_seconds)
    if rank != 0:
        return None
    metrics = evaluate_run(cfg, model, data, run_dir)
    metrics["train"] = {"seconds": train_seconds, "history": history, "threads": torch.get_num_threads(),
                        "processes": processes}
    _write_json(metrics, os.path.join(run_dir, METRICS_FILE))
    LOG.info("report: %s", write_report(run_dir, GRID_FILE))
    return metrics


@torch.no_grad()
def encode_images(cfg: TrainConfig, model: CIBHashModel, images: ImageSet, batch_size: int = 1024, desc: str = "encode") -> dict[int, Tensor]:
    """Deterministic packed codes of every image of an ImageSet, per code length.

    Returns:
        dict mapping L to Tensor[N, ceil(L / 8)], uint8.
    """
    channels = int(images.images.shape[1]) if images.in_memory else 3
    aug = cfg.augment_config(channels)
    model.eval()
    parts: dict[int, list[Tensor]] = {v: [] for v in cfg.code_lengths}
    if images.in_memory:
        normalize = BatchNormalize(aug)
        chunks = (normalize(images.images[i : i + batch_size]) for i in range(0, len(images), batch_size))
    else:
        mode = "RGB" if len(aug.mean) == 3 else "L"
        chunks = torch.utils.data.DataLoader(
            _PILViews(images, build_eval_transform(aug), mode), batch_size=batch_size, num_workers=cfg.workers
        )
    total = (len(images) + batch_size - 1) // batch_size
    for x in progress(chunks, desc, total, cfg.progress, "batch"):
        with _autocast(cfg):
            codes = model.encode(_prepare_input(cfg, x))
        for v, c in codes.items():
            parts[v].append(c.cpu())
    return {v: torch.cat(p) if p else torch.zeros(0, (v + 7) // 8, dtype=torch.uint8) for v, p in parts.items()}


def pixel_features(images: ImageSet, size: int = 32) -> Tensor:
    """Flattened pixels for the classical baselines: in-memory images as they are, files resized to size x size."""
    if images.in_memory:
        return images.images.reshape(len(images), -1)
    from torchvision.transforms.functional import pil_to_tensor

    rows = [pil_to_tensor(images.pil(i).convert("RGB").resize((size, size))).flatten() for i in range(len(images))]
    return torch.stack(rows) if rows else torch.zeros(0, 3 * size * size, dtype=torch.uint8)


def evaluate_run(cfg: TrainConfig, model: CIBHashModel, data: RetrievalData, run_dir: str | None = None) -> dict:
    """Encodes queries and database, evaluates CIBHash and the baselines (on pixels) at every code length."""
    topk = cfg.topk or data.topk
    started = time.time()
    query_codes = encode_images(cfg, model, data.query, desc="encode queries")
    database_codes = encode_images(cfg, model, data.database, desc="encode database")
    encode_seconds = time.time() - started
    results: dict = {"cibhash": {}, "dataset": data.name, "topk": topk, "queries": len(data.query),
                     "database": len(data.database), "encode_seconds": encode_seconds}
    for v in cfg.code_lengths:
        results["cibhash"][str(v)] = evaluate_codes(
            query_codes[v], database_codes[v], data.query.labels, data.database.labels, v, topk, cfg.eval_curves
        )
    if cfg.baselines:
        train_x = pixel_features(data.train).float()
        query_x, database_x = pixel_features(data.query).float(), pixel_features(data.database).float()
        for name in cfg.baselines:
            results[name] = {}
            for v in cfg.code_lengths:
                if name == "itq" and v > train_x.shape[1]:
                    continue
                hasher = (ITQ(v, seed=cfg.seed) if name == "itq" else LSH(v, seed=cfg.seed)).fit(train_x)
                results[name][str(v)] = evaluate_codes(
                    hasher.encode(query_x), hasher.encode(database_x), data.query.labels, data.database.labels, v,
                    topk, cfg.eval_curves,
                )
    if run_dir is not None and len(data.query) and len(data.database):
        longest = max(cfg.code_lengths)
        draw_run_grid(data, query_codes[longest], database_codes[longest], os.path.join(run_dir, GRID_FILE))
    results["eval_seconds"] = time.time() - started
    summary = "  ".join(
        f"{v} bits: " + " ".join(f"{m} {results[m][str(v)]['map']:.4f}" for m in ("cibhash", *cfg.baselines) if str(v) in results.get(m, {}))
        for v in cfg.code_lengths
    )
    LOG.info("mAP@%d  %s  (evaluation %.1fs)", topk, summary, results["eval_seconds"])
    return results


def evaluate(run_dir: str, threads: int | None = None, progress_bars: bool = True) -> dict:
    """Re-evaluates the model of a run directory from its checkpoint and rewrites ``metrics.json``."""
    cfg = load_run_config(run_dir)
    cfg.progress = progress_bars
    if threads:
        torch.set_num_threads(threads)
    state = load_checkpoint(run_dir)
    data = load_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options())
    model = build_model(cfg, state["input_shape"])
    model.load_state_dict(state["model"])
    handler = _setup_logging(run_dir)
    try:
        metrics = evaluate_run(cfg, model, data, run_dir)
    finally:
        LOG.removeHandler(handler)
        handler.close()
    metrics["train"] = {"seconds": float(state["train_seconds"]), "history": list(state["history"]),
                        "epochs_done": int(state["epoch"]) + 1}
    _write_json(metrics, os.path.join(run_dir, METRICS_FILE))
    LOG.info("report: %s", write_report(run_dir, GRID_FILE))
    return metrics


def image_files(inputs: Sequence[str]) -> list[str]:
    """The image files among ``inputs`` (files, or folders searched recursively in sorted order)."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            for dirpath, _, names in sorted(os.walk(item)):
                files += [os.path.join(dirpath, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {list(inputs)}")
    return files


def encode_run(
    run_dir: str,
    inputs: Sequence[str] | None = None,
    split: str | None = None,
    batch_size: int = 512,
    threads: int | None = None,
    progress_bars: bool = True,
) -> tuple[list[str], dict[int, Tensor]]:
    """Packed codes, at every code length of a trained run, of image files or of a split of the
    run's dataset (exactly one of ``inputs`` and ``split``).

    Args:
        run_dir (str): a run directory written by :func:`train`.
        inputs (sequence of str, optional): image files or folders (searched recursively, sorted).
        split (str, optional): "query", "database" or "train" of the run's dataset.
        batch_size (int): images per forward pass.
        threads (int, optional): torch intra-op threads.
        progress_bars (bool): show a progress bar.

    Returns:
        (names, codes): one name per image (its path, or its position in the split) and a dict
        mapping L to Tensor[n, ceil(L / 8)] uint8 in the same order.
    """
    if bool(inputs) == bool(split):
        raise ValueError("give either image files/folders or --split, not both and not neither")
    if split is not None and split not in ("query", "database", "train"):
        raise ValueError(f"split must be 'query', 'database' or 'train', got {split!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if threads:
        torch.set_num_threads(threads)
    cfg = load_run_config(run_dir)
    cfg.progress = progress_bars
    state = load_checkpoint(run_dir)
    channels, height, width = (int(v) for v in state["input_shape"])
    if split:
        data = load_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options())
        images = getattr(data, split)
        names = [str(i) for i in range(len(images))]
    else:
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        names = image_files(inputs)
        mode = "L" if channels == 1 else "RGB"
        pixels = []
        for f in names:
            with Image.open(f) as img:
                pixels.append(pil_to_tensor(img.convert(mode).resize((width, height), Image.BILINEAR)))
        images = ImageSet(torch.zeros(len(names), dtype=torch.int64), images=torch.stack(pixels))
    model = build_model(cfg, state["input_shape"])
    model.load_state_dict(state["model"])
    return names, encode_images(cfg, model, images, batch_size=batch_size)
