"""Backbones named from torchvision or timm ("torchvision:NAME", "timm:NAME"): the classifier head
removed (pooled features [N, D]), weights from a local file only, and the input preprocessing
(size, mean, std, interpolation) read from the model's own meta, as timm's ``resolve_data_config``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import torch
from torch import Tensor, nn

__all__ = ["HUB_PREFIXES", "HubBackbone", "Preprocessing", "check_hub_name", "hub_backbone", "hub_frozen",
           "is_hub_backbone", "preprocessing"]

HUB_PREFIXES = ("torchvision:", "timm:")
# What an ImageNet classifier expects where its meta says nothing (torchvision's and timm's defaults).
_DEFAULT_SIZE, _DEFAULT_INTERPOLATION = 224, "bilinear"
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """The input a pretrained model expects: square side, per-channel mean and std, interpolation."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str


def is_hub_backbone(name: str) -> bool:
    """Whether ``name`` names a torchvision or timm model ("torchvision:NAME", "timm:NAME")."""
    return isinstance(name, str) and name.startswith(HUB_PREFIXES)


def hub_frozen(weights_path: str | None, frozen: bool | None) -> bool:
    """Whether a named model trains frozen: as set, else frozen with pretrained weights (the paper's
    route) and fine-tuned from its random initialisation without them."""
    return weights_path is not None if frozen is None else frozen


def _split(name: str) -> tuple[str, str]:
    source, _, model = name.partition(":")
    return source, model


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _timm():
    try:
        import timm
    except ImportError:
        raise ValueError("backbone timm:NAME needs the timm package, which is not installed "
                         "(pip install timm, or cibhash_ext[timm])") from None
    return timm


def check_hub_name(name: str) -> None:
    """Raises a one-line ValueError unless ``name`` is "torchvision:NAME" with NAME a classification
    model of ``torchvision.models``, or "timm:NAME" with NAME a model of an installed timm."""
    source, model = _split(name)
    if source == "torchvision":
        names = _torchvision_names()
        if model not in names:
            raise ValueError(f"backbone torchvision:NAME needs NAME among the {len(names)} classification models of "
                             f"torchvision.models.list_models() (resnet18, mobilenet_v3_small, vit_b_16, ...), "
                             f"got {model!r}")
    elif source == "timm":
        timm = _timm()
        if not timm.is_model(model):
            raise ValueError(f"backbone timm:NAME needs NAME among timm.list_models() (resnet18, "
                             f"efficientnet_b0, vit_small_patch16_224, ...), got {model!r}")
    else:
        raise ValueError(f"expected a backbone named torchvision:NAME or timm:NAME, got {name!r}")


def preprocessing(name: str) -> Preprocessing:
    """The preprocessing of a named model from its meta, read without downloading anything:
    torchvision's default ``Weights`` transforms (crop size, mean, std, interpolation), timm's
    ``pretrained_cfg`` through ``timm.data.resolve_data_config``; ImageNet's at 224 where the
    model has no such meta."""
    source, model = _split(name)
    if source == "torchvision":
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(model)
        except (KeyError, ValueError):
            weights = None
        if weights is None or not list(weights):
            return Preprocessing(_DEFAULT_SIZE, _IMAGENET_MEAN, _IMAGENET_STD, _DEFAULT_INTERPOLATION)
        meta = weights.DEFAULT.transforms()
        return Preprocessing(int(meta.crop_size[0]), tuple(meta.mean), tuple(meta.std), meta.interpolation.value)
    timm = _timm()
    pretrained = timm.models.get_pretrained_cfg(model)
    config = timm.data.resolve_data_config({}, pretrained_cfg=pretrained.to_dict() if pretrained else {})
    interpolation = config["interpolation"] if config["interpolation"] in ("bilinear", "bicubic", "nearest") \
        else _DEFAULT_INTERPOLATION
    return Preprocessing(int(config["input_size"][-1]), tuple(config["mean"]), tuple(config["std"]), interpolation)


class HubBackbone(nn.Module):
    """A torchvision or timm classifier without its head: images [N, 3, H, W] (grayscale [N, 1, H, W]
    repeated to RGB) -> pooled features [N, out_features].

    Args:
        net (nn.Module): the classifier, its head already removed.
        out_features (int): the feature width.
        name (str): "torchvision:NAME" or "timm:NAME", shown by ``repr``.
    """

    def __init__(self, net: nn.Module, out_features: int, name: str) -> None:
        super().__init__()
        self.net, self.out_features, self.name = net, out_features, name

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(x).flatten(1)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_features={self.out_features}"


def _remove_torchvision_head(net: nn.Module, name: str) -> int:
    """Replaces the last Linear layer (torchvision registers the classifier last: ``fc``,
    ``classifier[-1]``, ``heads.head``, ``head``) by the identity; returns its input width."""
    last = None
    for path, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last = path
    if last is None:
        raise ValueError(f"backbone {name}: expected a classifier ending in a Linear layer to remove, found none "
                         f"(its head is not a Linear layer)")
    parent, _, child = last.rpartition(".")
    owner = net.get_submodule(parent) if parent else net
    width = getattr(owner, child).in_features
    setattr(owner, child, nn.Identity())
    return width


def _load_state(net: nn.Module, name: str, weights_path: str) -> None:
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"backbone {name}: the weights file {weights_path} does not exist (a state dict of "
                                f"the model saved with torch.save; nothing is downloaded)")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any file that does not load into the model is the user's wrong file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"backbone {name}: {weights_path} is not a state dict of this model: {reason}") from None


def hub_backbone(name: str, weights_path: str | os.PathLike | None = None, load_weights: bool = True) -> HubBackbone:
    """A named torchvision or timm model with its classifier head removed (not frozen).

    Args:
        name (str): "torchvision:NAME" (a ``torchvision.models`` classification constructor) or
            "timm:NAME" (``timm.create_model``; timm is optional).
        weights_path (str, optional): a state dict of the whole model, classifier included (as
            torchvision's and timm's weight files are), loaded before the head is removed. None:
            random initialisation, with a warning.
        load_weights (bool): False builds the architecture alone, for weights that come from a
            run's state dict (the file is then not read, nor needed).

    Returns:
        HubBackbone mapping images to pooled features [N, D].

    Raises:
        ValueError: an unknown name, or a weights file that does not fit the model.
        FileNotFoundError: ``weights_path`` is not a file.
    """
    check_hub_name(name)
    source, model = _split(name)
    if source == "torchvision":
        import torchvision

        net = torchvision.models.get_model(model, weights=None)
    else:
        net = _timm().create_model(model, pretrained=False)
    if load_weights and weights_path is not None:
        _load_state(net, name, os.fspath(weights_path))
    elif load_weights:
        warnings.warn(f"backbone {name}: no weights file given (--backbone-weights FILE), so it starts from random "
                      f"weights and trains from scratch", stacklevel=3)
    if source == "torchvision":
        width = _remove_torchvision_head(net, name)
    else:
        net.reset_classifier(0)
        width = int(net.num_features)
    return HubBackbone(net, width, name)
