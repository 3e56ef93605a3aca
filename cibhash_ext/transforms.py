"""Augmentations that make the two views of an image for CIBHash training.

Two families, configured by one :class:`AugmentConfig`:

* :func:`build_pil_transform` - the paper's per-image torchvision pipeline (RandomResizedCrop 224,
  flip, colour jitter, grayscale, Gaussian blur, ImageNet normalisation; Qiu et al. 2021, Sec. 4.1),
  run in DataLoader workers on PIL images.
* :class:`BatchAugment` - the same kind of operations drawn independently per image but applied to
  a whole uint8/float batch at once (one ``grid_sample`` for crop + flip), which is what makes
  training on 28x28 images cheap on a CPU; it adds random erasing, which suits small grayscale images.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AugmentConfig",
    "build_pil_transform",
    "EvalTransform",
    "TwoViews",
    "BatchAugment",
    "BatchNormalize",
    "resize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclasses.dataclass
class AugmentConfig:
    """Settings of the view augmentations. The defaults are the paper's (Qiu et al. 2021, Sec. 4.1).

    Attributes:
        size (int): output side in pixels (224 in the paper); 0 keeps the input size.
        crop_scale (tuple[float, float]): area fraction range of the random resized crop.
        crop_ratio (tuple[float, float]): aspect-ratio range of the random resized crop.
        hflip_p (float): probability of a horizontal flip.
        brightness, contrast, saturation, hue (float): colour-jitter strengths (torchvision's meaning).
        jitter_p (float): probability of applying the colour jitter.
        grayscale_p (float): probability of converting to grayscale (RGB inputs only).
        blur_kernel (int): Gaussian blur kernel size; 0 disables the blur.
        blur_sigma (tuple[float, float]): Gaussian blur sigma range.
        blur_p (float): probability of the blur.
        erase_p (float): probability of random erasing (0 in the paper).
        erase_scale (tuple[float, float]): erased area fraction range.
        erase_ratio (tuple[float, float]): erased rectangle aspect-ratio range.
        rotate (float): largest rotation in degrees, drawn uniformly in [-rotate, rotate] (0: none,
            the paper's).
        translate (float): largest shift as a fraction of the side, per axis (0: none, the paper's).
        mean (tuple[float, ...]): per-channel normalisation mean.
        std (tuple[float, ...]): per-channel normalisation standard deviation.
        interpolation (str): resampling of the crops and resizes: "bilinear", "bicubic" or "nearest"
            (a pretrained model's own, :mod:`cibhash_ext.backbones`).
    """

    size: int = 224
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.7
    grayscale_p: float = 0.2
    blur_kernel: int = 3
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 0.5
    erase_p: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.25)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    rotate: float = 0.0
    translate: float = 0.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio", "blur_sigma", "erase_scale", "erase_ratio", "mean", "std"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        for name in ("hflip_p", "jitter_p", "grayscale_p", "blur_p", "erase_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {self.size}")
        if not 0 <= self.rotate <= 180 or not 0 <= self.translate <= 1:
            raise ValueError(f"expected 0 <= rotate <= 180 and 0 <= translate <= 1, got {self.rotate} and {self.translate}")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(f"mean and std must have the same length and std > 0, got {self.mean} and {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    @classmethod
    def paper(cls) -> "AugmentConfig":
        """The paper's recipe for 224x224 RGB images."""
        return cls()

    @classmethod
    def small_grayscale(cls, neighbours: bool = False) -> "AugmentConfig":
        """Recipe for 28x28 grayscale images (Fashion-MNIST), chosen by the runs in benchmarks/QUALITY.md.

        Random resized crop of 50-100 % of the area at the native size (80-100 % lost 0.02 mAP, 30-100 %
        gained nothing), or of 70-100 % with neighbour positives (``neighbours``: the neighbour brings
        the variation; 70-100 % gained 0.005-0.012 mAP over 50-100 % there, no crop lost 0.01),
        horizontal flip, brightness/contrast jitter, random erasing with p 0.5; no hue/saturation/grayscale
        (one channel) and no blur (not tried).
        """
        return cls(
            size=0,
            crop_scale=(0.7, 1.0) if neighbours else (0.5, 1.0),
            hflip_p=0.5,
            brightness=0.4,
            contrast=0.4,
            saturation=0.0,
            hue=0.0,
            jitter_p=0.8,
            grayscale_p=0.0,
            blur_kernel=0,
            blur_p=0.0,
            erase_p=0.5,
            mean=FASHION_MNIST_MEAN,
            std=FASHION_MNIST_STD,
        )


def build_pil_transform(cfg: AugmentConfig) -> Callable:
    """The paper's per-image training transform (PIL image -> normalised float tensor [C, H, W]).

    Args:
        cfg (AugmentConfig): the settings; ``size`` must be > 0.

    Returns:
        A torchvision ``Compose``.
    """
    from torchvision import transforms as T

    if cfg.size <= 0:
        raise ValueError(f"build_pil_transform needs cfg.size > 0, got {cfg.size}")
    steps: list = []
    if cfg.rotate > 0 or cfg.translate > 0:
        steps.append(T.RandomAffine(cfg.rotate, translate=(cfg.translate, cfg.translate) if cfg.translate else None))
    steps.append(T.RandomResizedCrop(cfg.size, scale=cfg.crop_scale, ratio=cfg.crop_ratio,
                                     interpolation=T.InterpolationMode(cfg.interpolation)))
    if cfg.hflip_p > 0:
        steps.append(T.RandomHorizontalFlip(cfg.hflip_p))
    if cfg.jitter_p > 0:
        jitter = T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
        steps.append(T.RandomApply([jitter], p=cfg.jitter_p))
    if cfg.grayscale_p > 0:
        steps.append(T.RandomGrayscale(cfg.grayscale_p))
    if cfg.blur_kernel > 0 and cfg.blur_p > 0:
        steps.append(T.RandomApply([T.GaussianBlur(cfg.blur_kernel, sigma=cfg.blur_sigma)], p=cfg.blur_p))
    steps += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    if cfg.erase_p > 0:
        steps.append(T.RandomErasing(cfg.erase_p, scale=cfg.erase_scale, ratio=cfg.erase_ratio))
    return T.Compose(steps)


class EvalTransform:
    """The deterministic view of one image for a trained model: convert to its mode ("L"/"RGB"),
    resize to its input size, scale to [0, 1] and normalise. PIL image -> Tensor[C, H, W].

    Args:
        input_shape (Sequence[int]): the model's input [C, H, W].
        mean, std (Sequence[float]): per-channel normalisation.
        interpolation (str): "bilinear", "bicubic" or "nearest".
    """

    def __init__(self, input_shape: Sequence[int], mean: Sequence[float], std: Sequence[float],
                 interpolation: str = "bilinear") -> None:
        from torchvision import transforms as T

        channels, height, width = (int(v) for v in input_shape)
        self.mode = "L" if channels == 1 else "RGB"
        self.input_shape = [channels, height, width]
        self.mean, self.std, self.interpolation = tuple(mean), tuple(std), interpolation
        self._steps = T.Compose([T.Resize((height, width), interpolation=T.InterpolationMode(interpolation)),
                                 T.ToTensor(), T.Normalize(self.mean, self.std)])

    def __call__(self, image) -> Tensor:
        return self._steps(image.convert(self.mode))

    def __repr__(self) -> str:
        return f"EvalTransform(input_shape={self.input_shape}, mean={self.mean}, std={self.std})"


class TwoViews:
    """Applies a transform twice to the same image: the two views of CIBHash."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image):
        return self.transform(image), self.transform(image)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator) * (hi - lo) + lo


def _gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-(x[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    return k / k.sum(dim=1, keepdim=True)


class BatchAugment(nn.Module):
    """Per-image random augmentation applied to a whole batch at once.

    Each image gets its own random resized crop and flip (one affine ``grid_sample`` for the batch),
    brightness/contrast (and, for RGB, saturation) jitter, grayscale, Gaussian blur and random
    erasing, then normalisation. Hue jitter is not supported here (use :func:`build_pil_transform`).

    Args:
        cfg (AugmentConfig): the settings.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        if cfg.hue != 0:
            raise ValueError(f"BatchAugment does not support hue jitter; set hue=0, got {cfg.hue}")
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augments a batch.

        Args:
            images (Tensor[N, C, H, W], uint8 in [0, 255] or floating in [0, 1]): the images.
            generator (torch.Generator, optional): CPU generator for every random draw.

        Returns:
            Tensor[N, C, S, S] (or [N, C, H, W] when ``cfg.size`` is 0), float32, normalised.
        """
        cfg = self.cfg
        x = _to_float(images, self.mean.shape[1])
        n, c, h, w = x.shape
        out_h, out_w = (cfg.size, cfg.size) if cfg.size > 0 else (h, w)

        # Random resized crop + flip as one affine map of the normalised [-1, 1] coordinates.
        area = _uniform(n, *cfg.crop_scale, generator)
        ratio = torch.exp(_uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), generator))
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sx)
        ty = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sy)
        flip = torch.where(torch.rand(n, generator=generator) < cfg.hflip_p, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = sx * flip
        theta[:, 0, 2] = tx
        theta[:, 1, 1] = sy
        theta[:, 1, 2] = ty
        # Rotation and shift, drawn only when asked for (the other draws keep their order).
        if cfg.rotate > 0:
            angle = _uniform(n, -math.radians(cfg.rotate), math.radians(cfg.rotate), generator)
            cos, sin = torch.cos(angle), torch.sin(angle)
            rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
            theta[:, :, :2] = theta[:, :, :2] @ rotation
        if cfg.translate > 0:
            theta[:, :, 2] += _uniform(2 * n, -2 * cfg.translate, 2 * cfg.translate, generator).view(n, 2)
        grid = F.affine_grid(theta.to(x.device), [n, c, out_h, out_w], align_corners=False)
        x = F.grid_sample(x, grid, mode=cfg.interpolation, padding_mode="zeros", align_corners=False)

        if cfg.jitter_p > 0:
            apply = (torch.rand(n, generator=generator) < cfg.jitter_p).float()
            shape = (n, 1, 1, 1)
            b = 1 + (_uniform(n, -cfg.brightness, cfg.brightness, generator) * apply).view(shape)
            ct = 1 + (_uniform(n, -cfg.contrast, cfg.contrast, generator) * apply).view(shape)
            s = 1 + (_uniform(n, -cfg.saturation, cfg.saturation, generator) * apply).view(shape)
            x = (x * b.to(x)).clamp(0, 1)
            gray = _luma(x)
            x = ((x - gray.mean(dim=(2, 3), keepdim=True)) * ct.to(x) + gray.mean(dim=(2, 3), keepdim=True)).clamp(0, 1)
            if c == 3 and cfg.saturation > 0:
                x = ((x - _luma(x)) * s.to(x) + _luma(x)).clamp(0, 1)
        if c == 3 and cfg.grayscale_p > 0:
            to_gray = (torch.rand(n, generator=generator) < cfg.grayscale_p).view(n, 1, 1, 1).to(x.device)
            x = torch.where(to_gray, _luma(x).expand_as(x), x)
        if cfg.blur_kernel > 0 and cfg.blur_p > 0:
            sigma = _uniform(n, *cfg.blur_sigma, generator)
            blur = torch.rand(n, generator=generator) < cfg.blur_p
            k = _gaussian_kernels(sigma, cfg.blur_kernel).to(x)
            pad = cfg.blur_kernel // 2
            # Separable blur with a different kernel per image: images become groups of a grouped conv.
            y = x.reshape(1, n * c, out_h, out_w)
            kh = k.repeat_interleave(c, dim=0).view(n * c, 1, 1, -1)
            y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), kh, groups=n * c)
            y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), kh.transpose(2, 3), groups=n * c)
            x = torch.where(blur.view(n, 1, 1, 1).to(x.device), y.view(n, c, out_h, out_w), x)

        x = (x - self.mean) / self.std

        if cfg.erase_p > 0:
            erase = torch.rand(n, generator=generator) < cfg.erase_p
            e_area = _uniform(n, *cfg.erase_scale, generator)
            e_ratio = torch.exp(_uniform(n, math.log(cfg.erase_ratio[0]), math.log(cfg.erase_ratio[1]), generator))
            eh = (torch.sqrt(e_area * e_ratio) * out_h).round().clamp(1, out_h).long()
            ew = (torch.sqrt(e_area / e_ratio) * out_w).round().clamp(1, out_w).long()
            y0 = (torch.rand(n, generator=generator) * (out_h - eh + 1).float()).long()
            x0 = (torch.rand(n, generator=generator) * (out_w - ew + 1).float()).long()
            rows = torch.arange(out_h)[None, :]
            cols = torch.arange(out_w)[None, :]
            in_rows = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])
            in_cols = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])
            mask = (in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None]).unsqueeze(1)
            # Erased pixels become 0 after normalisation: the dataset mean, as torchvision's RandomErasing.
            x = x.masked_fill(mask.to(x.device), 0.0)
        return x

    def extra_repr(self) -> str:
        return repr(self.cfg)


class BatchNormalize(nn.Module):
    """Deterministic evaluation counterpart of :class:`BatchAugment`: resize (if ``size`` > 0) and normalise."""

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        self.size, self.interpolation = cfg.size, cfg.interpolation
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """Tensor[N, C, H, W] (uint8 or float in [0, 1]) -> normalised float32 Tensor[N, C', S, S]."""
        x = _to_float(images, self.mean.shape[1])
        if self.size > 0 and tuple(x.shape[-2:]) != (self.size, self.size):
            x = resize(x, (self.size, self.size), self.interpolation)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"size={self.size}"


def resize(x: Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> Tensor:
    """A float batch [N, C, H, W] resized to ``size`` (antialiased, as PIL resizes, where the mode allows)."""
    if interpolation == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=interpolation, align_corners=False, antialias=True)


def _to_float(images: Tensor, channels: int) -> Tensor:
    """uint8 [0, 255] or float [0, 1] images as float32 [0, 1], grayscale repeated to RGB when the
    normalisation is per RGB channel (a grayscale dataset under an ImageNet backbone)."""
    if images.dim() != 4:
        raise ValueError(f"images must be a 4-D batch [N, C, H, W], got shape {tuple(images.shape)}")
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != channels:
        raise ValueError(f"images have {x.shape[1]} channels but the normalisation has {channels}")
    return x


def _luma(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
