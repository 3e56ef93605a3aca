"""The configuration of a training run: the :class:`TrainConfig` dataclass, its recipes and checks.

One setting is declared once, here: the command line generates ``cibhash train``'s options from the
fields (:mod:`cibhash_ext.cli.train`), ``config.json`` of a run is :meth:`TrainConfig.to_dict`, and
:func:`load_config` reads a config file, a dict or a TrainConfig.

The fields' defaults are neutral: the paper's method with nothing added. What a dataset trains best
with is a recipe, a data file ``cibhash_ext/recipes/<name>.json`` (its ``settings``, and per backbone
``by_backbone``), named by the dataset registry (:data:`cibhash_ext.data.DATASET_REGISTRY`);
:func:`load_config` merges the recipes under the user's file and flags and records their names in
the ``recipe`` setting. A new setting is its field, whose default must be the behaviour before it (a
run written before it then loads with its meaning), plus, where it applies, one recipe line.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import os
import types
import typing
import warnings
from typing import Any, Literal

from cibhash_ext.backbones import check_hub_name, hub_frozen, is_hub_backbone, preprocessing
from cibhash_ext.data import DATASET_REGISTRY
from cibhash_ext.files import read_json
from cibhash_ext.models import BACKBONES, CUSTOM_BACKBONE, Backbone, ConvnetHead, missing_packages
from cibhash_ext.transforms import AugmentConfig

__all__ = ["TrainConfig", "load_config", "stored_config", "check_device", "choices", "read_recipe", "recipe_names",
           "with_recipes", "AUGMENT_PRESETS", "AugmentPreset", "BackboneChoice", "Baseline", "Pipeline", "Schedule"]

# The closed choices of the settings, declared once: the checks and the command line read them.
# A backbone is one of these names, or "torchvision:NAME" / "timm:NAME" (cibhash_ext.backbones).
BackboneChoice = Literal["auto", Backbone, "custom"]
Schedule = Literal["onecycle", "constant"]
AugmentPreset = Literal["auto", "paper", "small_grayscale"]
Pipeline = Literal["auto", "batch", "pil"]
Baseline = Literal["lsh", "itq"]
AUGMENT_PRESETS: tuple[str, ...] = typing.get_args(AugmentPreset)
# The split settings; each dataset reads some of them (DATASET_REGISTRY) and giving another is an error.
_SPLIT_SETTINGS = ("train_size", "query_size", "database_size", "query_per_class", "train_per_class", "validation")
# Input side of the trained-from-scratch backbones on image files when no size is set: 224 (the
# paper's, for VGG-16) would make their first layer enormous.
FILE_INPUT_SIZE = 64


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run. The defaults are neutral (the paper's method, nothing added); the
    recipe of a dataset (:func:`load_config` merges it under the user's settings) holds what that
    dataset trains best with: on Fashion-MNIST, the measured recipe of benchmarks/QUALITY.md.

    Attributes:
        dataset (str): one of :data:`cibhash_ext.data.DATASETS`; "folder" is every image under
            ``data_root``, without labels; "tensor" and "dataset" are Python data given to
            :func:`cibhash_ext.train` (a run of those cannot reload its data by itself).
        data_root (str, optional): dataset folder (Fashion-MNIST has a default).
        train_size (int, optional): train on a random subset of this many training images.
        query_size (int, optional): fashion_mnist: keep the first N queries; folder and Python data:
            hold out N images as queries (default: 10 %, at most 1,000).
        database_size (int, optional): fashion_mnist: keep the first N database images (quick runs).
        query_per_class, train_per_class (int, optional): split sizes of cifar10 and image_folder
            (None: the loader's protocol defaults).
        validation (bool): fashion_mnist: the validation split for tuning, inside the train images
            alone (queries: 5,000 of them, fixed; database and training set: the other 55,000), so
            that no choice is made on the test queries.
        backbone (str): one of :data:`cibhash_ext.models.BACKBONES`, or "auto": the convnet (on
            Fashion-MNIST its features and codes beat the pixel mlp's at equal time once the
            neighbours are refreshed; benchmarks/QUALITY.md). The trained-from-scratch backbones
            (and a module passed from Python, "custom") see in-memory images at their size and image
            files at 64x64 unless ``augment`` sets ``size``. "torchvision:NAME" (any classification
            model of torchvision.models) or "timm:NAME" (with timm installed): that model without its
            classifier (pooled features), its input size, mean, std and interpolation from its own
            meta (``augment`` overrides them).
        backbone_weights (str, optional): local weights file (vgg16: required; torchvision:NAME and
            timm:NAME: a state dict of the whole model, else random weights with a warning). Nothing is
            downloaded; a trained run reloads without it (its model.pt holds the weights).
        backbone_frozen (bool, optional): torchvision:NAME and timm:NAME only: frozen (always in eval
            mode, as the paper's VGG-16) or fine-tuned. None: frozen with a weights file, fine-tuned
            from random weights without one.
        convnet_widths (tuple[int, ...]): channels of the convnet backbone's three conv blocks.
        convnet_fc (int): width of the convnet's fully connected feature layer.
        convnet_head (str): how the convnet's last feature map reaches that layer: "flatten" (every
            position, the default: 0.045-0.051 mAP@1000 above "pool" on the validation split,
            benchmarks/QUALITY.md, "The convnet head") or "pool" (global average pooling).
        mlp_widths (tuple[int, ...]): hidden widths of the mlp backbone.
        code_lengths (tuple[int, ...]): code lengths trained jointly on one backbone.
        hidden (int): hash-head hidden width.
        epochs (int): schedule length. Fashion-MNIST's recipe: what fits the 20-minute budget on 2 CPU
            threads, 40 with the convnet and 80 with the mlp (benchmarks/QUALITY.md).
        batch_size (int): images per batch and process (each gives two views); capped at each
            process's share of a smaller training set, with a warning.
        lr, weight_decay (float): AdamW settings (weight_decay 0 is Adam, as the paper).
        schedule (str): "onecycle" (warm-up then cosine decay) or "constant" (the paper).
        warmup (float): one-cycle warm-up fraction.
        temperature (tuple[float, ...], optional): NT-Xent temperature, one for all code lengths or one
            per length (paper: 0.3). None: 0.15 up to 16 bits, 0.2 above, measured on Fashion-MNIST
            (with neighbour positives, 0.2 keeps the precision-recall curve above ITQ's at high recall
            where 0.1 did not, for 0.003 of mAP@1000; benchmarks/QUALITY.md).
        beta (float): KL weight (paper: 0.001).
        kl_eps (float, optional): None = exact KL; 1e-8 = the public code's form.
        stochastic (bool): stochastic binary layer while training (paper); False = public-code variant.
        global_batch (bool): with several processes, contrast each code against the codes of every
            process (the negatives of one process with the global batch); False keeps each process's
            own batch, as data-parallel SimCLR code without a gather does. No effect in one process.
        balance (float): weight of the bit-balance penalty on the codes (0: off, the paper's).
        debias (float): tau+ of the debiased contrastive loss, the assumed share of same-class images
            among the negatives (Chuang et al. 2020; 0: off, the paper's).
        memory (int): a memory bank of this many recent codes as extra negatives (MeCoQ; 0: off).
        neighbours (int, optional): neighbour positives: the second view of an image is a view of
            one of its k nearest training images in pixel space (:mod:`cibhash_ext.neighbours`;
            NNCLR's idea, Dwibedi et al. 2021). 0: off, the paper's two views of one image.
            Fashion-MNIST's recipe: 10 (+0.02 mAP at every length on the validation split;
            benchmarks/QUALITY.md); none elsewhere (pixel neighbours of photos seldom show the same
            kind of object).
        neighbour_refresh (int, optional): every this many epochs, find the neighbours again, in the
            space of the model's own backbone features (each training image without augmentation, the
            model in eval mode; cosine similarity of the features as they are), so that the
            positives get purer as the features improve. 0: the pixel neighbours for the whole
            run. Fashion-MNIST's recipe: 10 (+0.02 mAP at every length on the validation split;
            benchmarks/QUALITY.md). A recipe's value applies only with neighbour positives on.
        feature_loss (float, optional): weight of an auxiliary NT-Xent on a linear projection (128
            wide) of the backbone features, with the same pairs of views as the codes' loss
            (:func:`cibhash_ext.losses.nt_xent_features`; SimCLR's loss, Chen et al. 2020). It gives the
            backbone a gradient that does not pass through the binary layer. 0: off, the paper's.
            Fashion-MNIST's recipe: 1 (measured on the validation split; benchmarks/QUALITY.md).
        feature_temperature (float): the temperature of that loss (0.1 beat 0.2 on Fashion-MNIST).
        feature_cache (int): frozen backbones in eval mode (efficientnet_lite0, a frozen torchvision:NAME
            or timm:NAME, a frozen module from Python): pass this many
            augmented views of every training image through the backbone once, before training, and
            train the hash heads on two of them per image and epoch (:mod:`cibhash_ext.feature_cache`).
            0: off, fresh views through the backbone at every step.
        augment_preset (str): "auto" (small_grayscale for the convnet and mlp on 1-channel images, else
            paper), "paper" or "small_grayscale" (whose crops are milder with neighbour positives).
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
        evaluate (bool): evaluate and write the report after training.
        progress (bool): show progress bars.
        recipe (tuple[str, ...], optional): the recipes merged under the user's settings, in order
            (:func:`recipe_names` lists them; ``paper`` is the paper's settings, Qiu et al. 2021,
            Sec. 4.1). None: the dataset's own recipe. :func:`load_config` merges them and a run
            records the names it trained with; a TrainConfig built directly holds its arguments alone.
    """

    dataset: str = "fashion_mnist"
    data_root: str | None = None
    train_size: int | None = None
    query_size: int | None = None
    database_size: int | None = None
    query_per_class: int | None = None
    train_per_class: int | None = None
    validation: bool = False
    backbone: BackboneChoice = "auto"
    backbone_weights: str | None = None
    backbone_frozen: bool | None = None
    convnet_widths: tuple[int, ...] = (32, 64, 64)
    convnet_fc: int = 512
    convnet_head: ConvnetHead = "flatten"
    mlp_widths: tuple[int, ...] = (1024, 1024)
    code_lengths: tuple[int, ...] = (16, 32, 64)
    hidden: int = 1024
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: Schedule = "onecycle"
    warmup: float = 0.1
    temperature: tuple[float, ...] | None = None
    beta: float = 1e-3
    kl_eps: float | None = None
    stochastic: bool = True
    global_batch: bool = True
    balance: float = 0.0
    debias: float = 0.0
    memory: int = 0
    neighbours: int = 0
    neighbour_refresh: int = dataclasses.field(default=0, metadata={"requires": "neighbours"})
    feature_loss: float = 0.0
    feature_temperature: float = 0.1
    feature_cache: int = 0
    augment_preset: AugmentPreset = "auto"
    augment: dict = dataclasses.field(default_factory=dict)
    pipeline: Pipeline = "auto"
    bf16: bool = True
    channels_last: bool = True
    device: str = "cpu"
    threads: int | None = None
    workers: int = 0
    seed: int = 0
    topk: int | None = None
    baselines: tuple[Baseline, ...] = ("lsh", "itq")
    eval_curves: bool = True
    evaluate: bool = True
    progress: bool = True
    recipe: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.temperature, (int, float)) and not isinstance(self.temperature, bool):
            self.temperature = (float(self.temperature),)
        _check_types(self)
        self.convnet_widths = tuple(int(v) for v in self.convnet_widths)
        self.mlp_widths = tuple(int(v) for v in self.mlp_widths)
        self.code_lengths = tuple(int(v) for v in self.code_lengths)
        self.baselines = tuple(self.baselines)
        if self.temperature is not None:
            self.temperature = tuple(float(t) for t in self.temperature)
        if self.recipe is not None:
            self.recipe = tuple(self.recipe)
        if self.backbone == "auto":
            self.backbone = "convnet"
        self.validate()

    def validate(self) -> None:
        """Checks every setting; raises ValueError naming the setting, what it must be and what it is."""
        if self.dataset not in DATASET_REGISTRY:
            raise ValueError(f"dataset must be one of {', '.join(DATASET_REGISTRY)}, got {self.dataset!r}")
        if self.temperature is not None and (
            len(self.temperature) not in (1, len(self.code_lengths)) or any(t <= 0 for t in self.temperature)
        ):
            raise ValueError(
                f"temperature must be one value > 0 or one per code length {self.code_lengths}, got {self.temperature}"
            )
        hub = is_hub_backbone(self.backbone)
        if hub:
            check_hub_name(self.backbone)
        elif self.backbone not in (*BACKBONES, CUSTOM_BACKBONE):
            raise ValueError(f"backbone must be one of auto, {', '.join(BACKBONES)}, torchvision:NAME or timm:NAME, "
                             f"got {self.backbone!r}")
        if self.backbone_frozen is not None and not hub:
            raise ValueError(f"backbone_frozen applies to torchvision:NAME and timm:NAME backbones only, got "
                             f"backbone_frozen {self.backbone_frozen} with backbone {self.backbone}")
        if not self.code_lengths or any(v <= 0 for v in self.code_lengths):
            raise ValueError(f"code_lengths must be positive integers, got {self.code_lengths}")
        for name in ("epochs", "hidden", "convnet_fc"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_size", "query_size", "database_size", "query_per_class", "train_per_class", "threads",
                     "topk"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (NT-Xent needs negatives), got {self.batch_size}")
        if not self.lr > 0 or self.weight_decay < 0 or self.beta < 0 or not 0 <= self.warmup < 1:
            raise ValueError(f"expected lr > 0, weight_decay >= 0, beta >= 0 and 0 <= warmup < 1, got lr "
                             f"{self.lr}, weight_decay {self.weight_decay}, beta {self.beta}, warmup {self.warmup}")
        if self.balance < 0 or not 0 <= self.debias < 1 or self.memory < 0 or self.neighbours < 0:
            raise ValueError(f"expected balance >= 0, 0 <= debias < 1, memory >= 0 and neighbours >= 0, got balance "
                             f"{self.balance}, debias {self.debias}, memory {self.memory}, neighbours {self.neighbours}")
        if self.neighbour_refresh < 0 or (self.neighbour_refresh and not self.neighbours):
            raise ValueError(f"neighbour_refresh must be >= 0, and 0 without neighbour positives, got neighbour_refresh "
                             f"{self.neighbour_refresh} with neighbours {self.neighbours}")
        if self.feature_loss < 0 or not self.feature_temperature > 0:
            raise ValueError(f"expected feature_loss >= 0 and feature_temperature > 0, got feature_loss "
                             f"{self.feature_loss} and feature_temperature {self.feature_temperature}")
        # A module from Python ("custom") is checked when the run starts (feature_cache.check_cacheable).
        cacheable = self.backbone in ("efficientnet_lite0", CUSTOM_BACKBONE) or (
            hub and hub_frozen(self.backbone_weights, self.backbone_frozen))
        if self.feature_cache and (self.feature_cache < 2 or not cacheable):
            raise ValueError(f"feature_cache must be 0 or at least 2 views with a frozen backbone in eval mode "
                             f"(efficientnet_lite0, a frozen torchvision:NAME or timm:NAME), got {self.feature_cache} "
                             f"with backbone {self.backbone}"
                             + (" (not frozen)" if hub and not cacheable else ""))
        for name in ("schedule", "augment_preset", "pipeline", "convnet_head"):
            if getattr(self, name) not in choices(name):
                raise ValueError(f"{name} must be one of {', '.join(choices(name))}, got {getattr(self, name)!r}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        fields = [f.name for f in dataclasses.fields(AugmentConfig)]
        unknown = set(self.augment) - set(fields)
        if unknown:
            raise ValueError(f"unknown augment settings {sorted(unknown)}; valid: {fields}")
        unknown = sorted(set(self.recipe or ()) - set(recipe_names()))
        if unknown:
            raise ValueError(f"recipe must be among {', '.join(recipe_names())}, got {', '.join(unknown)}")
        bad = set(self.baselines) - set(choices("baselines"))
        if bad:
            raise ValueError(f"baselines must be among 'lsh', 'itq', got {sorted(bad)}")
        reads = DATASET_REGISTRY[self.dataset].options
        ignored = [name for name in _SPLIT_SETTINGS if getattr(self, name) not in (None, False) and name not in reads]
        if ignored:
            reads = ", ".join(reads) or "none of them"
            raise ValueError(f"dataset {self.dataset!r} does not use {', '.join(ignored)} (it reads {reads})")

    @classmethod
    def paper(cls, **changes) -> "TrainConfig":
        """The paper's settings (the ``paper`` recipe, :func:`read_recipe`) with ``changes`` on top."""
        return load_config(None, recipe=("paper",), **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The inverse of :meth:`to_dict` (no recipe is merged); a ``resolved`` entry (written to
        config.json for readers) is ignored."""
        if not isinstance(values, dict):
            raise ValueError(f"a configuration must be a JSON object of settings, got a {type(values).__name__}")
        values = {k: v for k, v in values.items() if k != "resolved"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown configuration keys {sorted(unknown)}")
        return cls(**values)

    def temperature_for(self, length: int) -> float:
        """The NT-Xent temperature of the code length ``length``."""
        if self.temperature is None:
            # Measured on Fashion-MNIST with neighbour positives (benchmarks/QUALITY.md).
            return 0.15 if length <= 16 else 0.2
        if len(self.temperature) == 1:
            return self.temperature[0]
        return self.temperature[self.code_lengths.index(length)]

    def dataset_options(self) -> dict:
        """The split options of the configured dataset (those it reads and that are set), plus the seed."""
        entry = DATASET_REGISTRY[self.dataset]
        options = {name: getattr(self, name) for name in entry.options if getattr(self, name) not in (None, False)}
        return {**options, "seed": self.seed} if entry.seeded else options

    def augment_config(self, channels: int, in_memory: bool = True) -> AugmentConfig:
        """The view augmentation of images with ``channels`` channels, in memory or loaded from files."""
        preset = self.augment_preset
        if preset == "auto":
            preset = "small_grayscale" if self.backbone in ("convnet", "mlp") and channels == 1 else "paper"
        base = AugmentConfig.small_grayscale(self.neighbours > 0) if preset == "small_grayscale" else AugmentConfig.paper()
        if preset == "paper" and self.backbone in ("convnet", "mlp", CUSTOM_BACKBONE) and "size" not in self.augment:
            base = dataclasses.replace(base, size=0 if in_memory else FILE_INPUT_SIZE)
        if is_hub_backbone(self.backbone):
            meta = preprocessing(self.backbone)
            base = dataclasses.replace(base, size=meta.size, mean=meta.mean, std=meta.std,
                                       interpolation=meta.interpolation)
        return dataclasses.replace(base, **self.augment)


def choices(name: str) -> tuple[str, ...]:
    """The closed set of values of the setting ``name`` (its ``Literal`` type), or () for an open one;
    ``dataset`` reads the dataset registry and ``recipe`` the recipe files."""
    if name == "dataset":
        return tuple(DATASET_REGISTRY)
    if name == "recipe":
        return recipe_names()
    hint = typing.get_type_hints(TrainConfig)[name]
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def check_device(device: str | object) -> None:
    """Raises a ValueError when ``device`` is a CUDA device and torch sees no GPU."""
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but no CUDA GPU is visible to torch")


def stored_config(values: dict) -> TrainConfig:
    """The configuration a run wrote (its ``config.json``, checkpoint or ``model.pt``), without recipes:
    a setting missing from it because the run predates the setting takes its neutral default, the
    behaviour before it, and a run that left the temperature to a default that has changed since
    keeps the temperatures it trained with (the ``resolved`` entry of its ``config.json``).

    Raises:
        ValueError: ``values`` is not a JSON object of known, valid settings.
    """
    if not isinstance(values, dict):
        return TrainConfig.from_dict(values)
    cfg = TrainConfig.from_dict(values)
    trained = (values.get("resolved") or {}).get("temperature")
    if cfg.temperature is None and isinstance(trained, dict) and sorted(trained) == sorted(map(str, cfg.code_lengths)):
        temperatures = tuple(float(trained[str(v)]) for v in cfg.code_lengths)
        if temperatures != tuple(cfg.temperature_for(v) for v in cfg.code_lengths):
            cfg = dataclasses.replace(cfg, temperature=temperatures)
    return cfg


def load_config(config: "TrainConfig | dict | str | os.PathLike | None" = None, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a TrainConfig, a dict of settings, or a JSON config file (a run's ``config.json``
    is one), with ``overrides`` applied on top. The settings of a dict, a file or ``overrides`` alone
    are merged over their recipes (:func:`with_recipes`); a TrainConfig is complete already.

    Raises:
        FileNotFoundError: the config file does not exist.
        ValueError: the file is not a JSON object of known settings, or a setting is invalid.
    """
    if isinstance(config, TrainConfig):
        return TrainConfig.from_dict({**config.to_dict(), **overrides})
    if config is None:
        values: dict = {}
    elif isinstance(config, dict):
        values = dict(config)
    elif isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        values = read_json(path, "config file")
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a JSON object of settings, got a {type(values).__name__}")
    else:
        raise TypeError(f"config must be a TrainConfig, a dict or a path, got {type(config).__name__}")
    values = {k: v for k, v in values.items() if k != "resolved"}
    values.update(overrides)
    return TrainConfig.from_dict(with_recipes(values))


def recipe_names() -> tuple[str, ...]:
    """The recipes there are: the files ``cibhash_ext/recipes/<name>.json``."""
    folder = importlib.resources.files("cibhash_ext") / "recipes"
    return tuple(sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".json")))


@functools.cache
def read_recipe(name: str) -> dict:
    """The recipe ``name``: ``about`` (what it is, where it was measured), ``settings`` and, per backbone,
    ``by_backbone`` (settings that apply on top with that backbone).

    Raises:
        ValueError: there is no such recipe.
    """
    if name not in recipe_names():
        raise ValueError(f"recipe must be one of {', '.join(recipe_names())}, got {name!r}")
    text = (importlib.resources.files("cibhash_ext") / "recipes" / f"{name}.json").read_text()
    return json.loads(text)


def with_recipes(values: dict) -> dict:
    """The settings ``values`` (a user's file and flags) merged over their recipes: ``values["recipe"]``,
    or the dataset's recipe (:data:`~cibhash_ext.data.DATASET_REGISTRY`) when it is None or absent.
    Each recipe's settings apply, then its ``by_backbone`` settings of the run's backbone, then the
    user's; ``augment`` merges key by key. A recipe's value of a setting that requires another one
    (``neighbour_refresh`` requires ``neighbours``) is left out when that one is off. The result
    records the recipes applied in ``recipe``."""
    user = {k: v for k, v in values.items() if not (k == "backbone" and v == "auto")}
    names = user.get("recipe")
    if names is None:
        entry = DATASET_REGISTRY.get(user.get("dataset", _DEFAULT.dataset))
        names = (entry.recipe,) if entry is not None and entry.recipe else ()
    names = tuple(names) if isinstance(names, (list, tuple)) else names  # a wrong type is the checks' to report
    recipes = [read_recipe(name) for name in names] if isinstance(names, tuple) else []
    backbone = user.get("backbone") or next((r["settings"]["backbone"] for r in reversed(recipes)
                                             if "backbone" in r["settings"]), _DEFAULT.backbone)
    command = None if "backbone" in user else missing_packages(backbone)
    if command:
        warnings.warn(f"the {'+'.join(names)} recipe's backbone {backbone} is not installed ({command}); training "
                      f"the small CNN from scratch instead", stacklevel=2)
        backbone = _DEFAULT.backbone
    merged: dict = {}
    for recipe in recipes:
        for layer in (recipe.get("settings", {}), recipe.get("by_backbone", {}).get(backbone, {})):
            merged.update({k: v for k, v in layer.items() if k != "augment"})
            merged["augment"] = {**merged.get("augment", {}), **layer.get("augment", {})}
    if not merged.get("augment"):
        merged.pop("augment", None)
    if "backbone" in merged:
        merged["backbone"] = backbone
    for name, field in _FIELDS.items():
        required = field.metadata.get("requires")
        if required and name in merged and name not in user and not {**merged, **user}.get(required):
            del merged[name]
    if isinstance(user.get("augment"), dict) and "augment" in merged:
        user["augment"] = {**merged["augment"], **user["augment"]}
    return {**merged, **user, "recipe": names}


def _check_types(cfg: TrainConfig) -> None:
    """Each field holds a value of its declared type (a config.json may say "10" where 10 belongs)."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if not _is_instance(value, hints[field.name]):
            raise ValueError(
                f"setting {field.name!r} must be {_describe(hints[field.name])}, got {value!r} ({type(value).__name__})"
            )


def _is_instance(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str or origin is Literal:  # the value of a Literal is checked by validate
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, (tuple, list)) and all(_is_instance(v, args[0]) for v in value)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if args and type(None) in args and origin is not tuple:
        return " or ".join(_describe(a) for a in args if a is not type(None)) + " or null"
    if origin is tuple:
        return f"a list of {_describe(args[0])}"
    if origin is Literal:
        return "a string"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "an object"}.get(hint, str(hint))


_FIELDS = {field.name: field for field in dataclasses.fields(TrainConfig)}
_DEFAULT = TrainConfig()
