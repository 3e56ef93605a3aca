"""Tests of cibhash_ext.transforms: the batched augmentation and the paper's PIL pipeline."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from cibhash_ext.transforms import (
    AugmentConfig,
    BatchAugment,
    BatchNormalize,
    TwoViews,
    EvalTransform,
    build_pil_transform,
)


def identity_config(**changes):
    cfg = AugmentConfig.small_grayscale()
    settings = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "hflip_p": 0.0, "jitter_p": 0.0, "erase_p": 0.0}
    return dataclasses.replace(cfg, **{**settings, **changes})


@pytest.fixture
def images():
    return torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_identity_settings_only_normalise(images):
    cfg = identity_config()
    out = BatchAugment(cfg)(images, generator=torch.Generator().manual_seed(0))
    expected = (images.float() / 255 - cfg.mean[0]) / cfg.std[0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(BatchNormalize(cfg)(images), expected, atol=1e-6, rtol=0)


def test_flip_with_probability_one_mirrors(images):
    cfg = identity_config(hflip_p=1.0)
    out = BatchAugment(cfg)(images)
    expected = (images.flip(-1).float() / 255 - cfg.mean[0]) / cfg.std[0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_erasing_sets_a_rectangle_to_the_mean(images):
    cfg = identity_config(erase_p=1.0, erase_scale=(0.1, 0.1), erase_ratio=(1.0, 1.0))
    out = BatchAugment(cfg)(images.clamp(min=200), generator=torch.Generator().manual_seed(1))
    zeros = (out == 0).sum(dim=(1, 2, 3))
    side = round((0.1 ** 0.5) * 28)
    assert zeros.tolist() == [side * side] * len(images)


def test_random_views_differ_and_are_reproducible(images):
    aug = BatchAugment(AugmentConfig.small_grayscale())
    a = aug(images, generator=torch.Generator().manual_seed(3))
    b = aug(images, generator=torch.Generator().manual_seed(3))
    c = aug(images, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (6, 1, 28, 28) and a.dtype == torch.float32


def test_rgb_paper_settings_batch_and_resize():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    cfg = dataclasses.replace(AugmentConfig.paper(), size=48, hue=0.0)
    out = BatchAugment(cfg)(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 48, 48) and torch.isfinite(out).all()
    # Grayscale input under RGB (ImageNet) normalisation is repeated to three channels.
    assert BatchNormalize(cfg)(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape == (2, 3, 48, 48)
    with pytest.raises(ValueError, match="hue"):
        BatchAugment(AugmentConfig.paper())


def test_paper_pil_pipeline():
    cfg = AugmentConfig.paper()
    assert (cfg.size, cfg.crop_scale, cfg.jitter_p, cfg.grayscale_p, cfg.blur_kernel, cfg.blur_p) == (
        224, (0.5, 1.0), 0.7, 0.2, 3, 0.5
    )
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    v1, v2 = TwoViews(build_pil_transform(cfg))(image)
    assert v1.shape == v2.shape == (3, 224, 224) and not torch.equal(v1, v2)
    evaluation = EvalTransform((3, 224, 224), cfg.mean, cfg.std)
    e1, e2 = evaluation(image), evaluation(image)
    assert e1.shape == (3, 224, 224) and torch.equal(e1, e2)
    # The evaluation view is the PIL bilinear resize, then the batch normalisation of the same pixels.
    from torchvision.transforms.functional import pil_to_tensor

    resized = pil_to_tensor(image.resize((224, 224), Image.BILINEAR))[None]
    assert torch.equal(e1, BatchNormalize(dataclasses.replace(cfg, size=0))(resized)[0])
    names = repr(build_pil_transform(cfg))
    for part in ("RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGrayscale", "GaussianBlur", "Normalize"):
        assert part in names


@pytest.mark.parametrize(
    "changes,match",
    [({"hflip_p": 1.5}, "hflip_p"), ({"crop_scale": (0.0, 1.0)}, "crop_scale"), ({"std": (0.0,), "mean": (0.5,)}, "std"),
     ({"interpolation": "lanczos"}, "interpolation must be one of bilinear, bicubic, nearest, got 'lanczos'")],
)
def test_config_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        AugmentConfig(**changes)


def test_the_interpolation_reaches_every_resize():
    """A pretrained model's interpolation (bicubic) in the PIL crop, the eval transform, the batch
    augmentation and the batch resize; bilinear stays what every earlier run used."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import pil_to_tensor

    bicubic = AugmentConfig(size=12, hue=0.0, interpolation="bicubic")
    crop = next(t for t in build_pil_transform(bicubic).transforms if type(t).__name__ == "RandomResizedCrop")
    assert crop.interpolation == InterpolationMode.BICUBIC
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8))
    view = EvalTransform((3, 12, 12), bicubic.mean, bicubic.std, "bicubic")(image)
    pixels = pil_to_tensor(image.resize((12, 12), Image.BICUBIC))[None]
    torch.testing.assert_close(view, BatchNormalize(dataclasses.replace(bicubic, size=0))(pixels)[0], rtol=0, atol=0)
    batch, bilinear = pil_to_tensor(image)[None], dataclasses.replace(bicubic, interpolation="bilinear")
    assert not torch.equal(BatchNormalize(bicubic)(batch), BatchNormalize(bilinear)(batch))
    seeded = [BatchAugment(c)(batch, generator=torch.Generator().manual_seed(0)) for c in (bicubic, bilinear)]
    assert not torch.equal(*seeded)


def test_rotation_and_shift_are_drawn_only_when_asked_for():
    base = AugmentConfig.small_grayscale()
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    plain = BatchAugment(base)(images, generator=torch.Generator().manual_seed(1))
    zero = BatchAugment(dataclasses.replace(base, rotate=0.0, translate=0.0))(images, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain, zero)  # off: the same random stream as before the options existed
    # A pure rotation of a centred disc, with no crop, flip, jitter or erasing, keeps the disc.
    still = AugmentConfig(size=0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0,
                          hue=0.0, grayscale_p=0.0, blur_kernel=0, mean=(0.0,), std=(1.0,), rotate=180.0)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    disc = (((yy - 13.5) ** 2 + (xx - 13.5) ** 2) < 64).float()[None, None]
    rotated = BatchAugment(still)(disc.expand(8, 1, 28, 28), generator=torch.Generator().manual_seed(2))
    assert (rotated - disc).abs().mean() < 0.02
    bar = torch.zeros(1, 1, 28, 28)
    bar[..., 12:16, 2:26] = 1  # a horizontal bar: a rotation of 30-180 degrees moves it
    turned = BatchAugment(still)(bar.expand(8, 1, 28, 28), generator=torch.Generator().manual_seed(2))
    assert (turned - bar).abs().sum(dim=(1, 2, 3)).max() > 20
    shifted = BatchAugment(dataclasses.replace(still, rotate=0.0, translate=0.2))(
        disc.expand(8, 1, 28, 28), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(shifted.sum(dim=(1, 2, 3)), disc.sum().expand(8), rtol=0.05)  # moved, not cut
    assert (shifted - disc).abs().sum(dim=(1, 2, 3)).max() > 10
    names = repr(build_pil_transform(dataclasses.replace(AugmentConfig.paper(), rotate=10.0, translate=0.1)))
    assert "RandomAffine" in names and "RandomAffine" not in repr(build_pil_transform(AugmentConfig.paper()))


def _ks_distance(samples: np.ndarray, cdf) -> float:
    """Kolmogorov-Smirnov distance between the samples' empirical law and ``cdf``."""
    x = np.sort(samples)
    f = cdf(x)
    n = len(x)
    return float(max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max()))


def _ks_two_sample(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    ecdf = lambda s: np.searchsorted(np.sort(s), grid, side="right") / len(s)  # noqa: E731
    return float(np.abs(ecdf(a) - ecdf(b)).max())


def _measured_crops(cfg: AugmentConfig, n: int, side: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Width and height (fractions of the image's) of the crop BatchAugment took of each of n images,
    read off its output: channel 0 of the input is a horizontal ramp and channel 1 a vertical one, and
    bilinear sampling of a ramp is exact, so the output's slope between two interior pixels is the
    crop's side (the only other operation left on is the normalisation by mean 0 and std 1)."""
    cfg = dataclasses.replace(cfg, size=0, hflip_p=0.0, jitter_p=0.0, erase_p=0.0, rotate=0.0, translate=0.0,
                              mean=(0.0, 0.0), std=(1.0, 1.0))
    ramp = torch.arange(side, dtype=torch.float32) / (side - 1)
    images = torch.stack([ramp.expand(side, side), ramp[:, None].expand(side, side)])[None].expand(n, 2, side, side)
    out = BatchAugment(cfg)(images, generator=torch.Generator().manual_seed(seed)).double().numpy()
    first, last, middle = 4, side - 5, side // 2  # interior: never blended with the zero padding
    width = (out[:, 0, middle, last] - out[:, 0, middle, first]) * (side - 1) / (last - first)
    height = (out[:, 1, last, middle] - out[:, 1, first, middle]) * (side - 1) / (last - first)
    return width, height


def test_crop_areas_and_ratios_follow_the_configured_law():
    """The crop of BatchAugment is RandomResizedCrop's: an area uniform in crop_scale (as a fraction of
    the image) and a log-uniform aspect ratio in crop_ratio. Measured on the output, compared with the
    law itself and with torchvision's RandomResizedCrop.get_params sampled as many times."""
    from torchvision.transforms import RandomResizedCrop

    # The measurement itself: the whole image (no crop) reads sides of exactly 1.
    width, height = _measured_crops(identity_config(), 8)
    np.testing.assert_allclose(np.concatenate([width, height]), 1.0, atol=1e-5)
    n, scale, ratio = 4000, (0.3, 0.6), (3 / 4, 4 / 3)  # small enough that no crop is clipped to the image
    width, height = _measured_crops(dataclasses.replace(identity_config(), crop_scale=scale, crop_ratio=ratio), n)
    area, log_ratio = width * height, np.log(width / height)
    # Every crop inside the configured bounds, and the bounds reached: a wrong scale moves one of them.
    assert scale[0] - 1e-4 <= area.min() < scale[0] + 0.005 and scale[1] - 0.005 < area.max() <= scale[1] + 1e-4
    lo, hi = np.log(ratio)
    assert lo - 1e-4 <= log_ratio.min() < lo + 0.01 and hi - 0.01 < log_ratio.max() <= hi + 1e-4
    # The law inside them: areas uniform (not sides uniform, nor areas squared), log-ratios uniform.
    # 1.95 / sqrt(n) is the Kolmogorov-Smirnov critical distance at the 0.001 level (0.031 here).
    critical = 1.95 / np.sqrt(n)
    assert _ks_distance(area, lambda a: (a - scale[0]) / (scale[1] - scale[0])) < critical
    assert _ks_distance(log_ratio, lambda r: (r - lo) / (hi - lo)) < critical
    # And torchvision's sampler of the same scale and ratio (on a large image, so rounding is negligible).
    big = torch.zeros(1, 1000, 1000)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        params = np.array([RandomResizedCrop.get_params(big, list(scale), list(ratio))[2:] for _ in range(n)])
    reference_area = params[:, 0] * params[:, 1] / 1000**2
    assert _ks_two_sample(area, reference_area) < 1.95 * np.sqrt(2 / n)


def test_default_recipe_crops_stay_in_its_scale_range():
    """The Fashion-MNIST recipe's crops (50-100 % of the area; 70-100 % with neighbour positives): a
    crop wider than the image is clipped to it, so every area lies in the range and its lower end is hit."""
    for neighbours, scale in ((False, (0.5, 1.0)), (True, (0.7, 1.0))):
        cfg = AugmentConfig.small_grayscale(neighbours)
        assert cfg.crop_scale == scale
        width, height = _measured_crops(cfg, 2000, seed=1)
        area = width * height
        assert scale[0] - 1e-4 <= area.min() < scale[0] + 0.01 and area.max() <= 1 + 1e-4
        assert width.max() <= 1 + 1e-4 and height.max() <= 1 + 1e-4
    # The PIL pipeline hands the same range to torchvision's RandomResizedCrop.
    crop = next(s for s in build_pil_transform(AugmentConfig.paper()).transforms if type(s).__name__ == "RandomResizedCrop")
    assert (tuple(crop.scale), tuple(crop.ratio)) == (AugmentConfig.paper().crop_scale, AugmentConfig.paper().crop_ratio)
