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
