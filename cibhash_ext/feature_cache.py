"""The feature cache of a frozen backbone: K augmented views of every training image passed through
the backbone once, so that each epoch trains the hash heads alone on two cached views per image.

A frozen backbone in eval mode (``efficientnet_lite0``, a frozen torchvision or timm model) maps a
view to the same features in every epoch, so training on cached features is training on those K
views with the backbone run live; what changes is that each epoch draws its two views of an image
among the same K instead of fresh ones. The paper's VGG-16 keeps its dropout active while training,
so its features are not fixed and it cannot be cached.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

from cibhash_ext import distributed
from cibhash_ext.config import TrainConfig
from cibhash_ext.data import RetrievalData
from cibhash_ext.models import CIBHashModel, FrozenBackbone
from cibhash_ext.pipeline import (
    ImageViews,
    autocast,
    epoch_generator,
    epoch_order,
    epoch_partners,
    pil_augmentation,
    to_model_input,
    use_batch_pipeline,
)
from cibhash_ext.transforms import AugmentConfig, BatchAugment

__all__ = ["cached_view_batches", "check_cacheable", "feature_cache", "view_images"]


def check_cacheable(model: CIBHashModel) -> None:
    """Raises a ValueError unless the model's backbone is frozen and always in eval mode."""
    backbone = model.backbone
    if not isinstance(backbone, FrozenBackbone) or backbone.train_mode:
        kind = "keeps its dropout active while training" if isinstance(backbone, FrozenBackbone) else "trains"
        raise ValueError(f"feature_cache needs a frozen backbone in eval mode (a FrozenBackbone with train_mode "
                         f"False, as efficientnet_lite0 or a frozen torchvision:NAME); this backbone "
                         f"({type(backbone.module if isinstance(backbone, FrozenBackbone) else backbone).__name__}) "
                         f"{kind}, so its features change from epoch to epoch")


def view_images(cfg: TrainConfig, data: RetrievalData, aug: AugmentConfig, view: int,
                transform: Callable | None = None) -> Iterator[Tensor]:
    """View ``view`` (0 <= view < K) of every training image, in batches, in the order of the set;
    seeded by (seed, view) alone. ``transform`` (a two-view transform) gives its view ``view % 2``."""
    images = data.train
    g = epoch_generator(cfg.seed, view, salt=-2)
    if use_batch_pipeline(cfg, images, aug, transform):
        augment = BatchAugment(aug)
        for start in range(0, len(images), cfg.batch_size):
            yield augment(images.images[start : start + cfg.batch_size], generator=g)
        return
    one_view = pil_augmentation(aug, images) if transform is None else (lambda image: transform(image)[view % 2])
    mode = "RGB" if len(aug.mean) == 3 else "L"
    with torch.random.fork_rng(devices=[]):  # the caller's global generator is left as it was
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))  # torchvision's transforms draw from it
        yield from torch.utils.data.DataLoader(ImageViews(images, one_view, mode, skip_unreadable=True),
                                               batch_size=cfg.batch_size, num_workers=cfg.workers, generator=g)


@torch.no_grad()
def feature_cache(cfg: TrainConfig, model: CIBHashModel, data: RetrievalData, aug: AugmentConfig, views: int,
                  transform: Callable | None = None) -> Tensor:
    """The backbone features of ``views`` augmented views of every training image.

    Returns:
        Tensor[N, K, D] on the CPU, in the dtype the backbone gives (bfloat16 under ``cfg.bf16``): entry
        [i, k] is what the backbone gives for view k of image i (:func:`view_images`).
    """
    check_cacheable(model)
    rows = []
    for view in range(views):
        parts = []
        for x in view_images(cfg, data, aug, view, transform):
            with autocast(cfg.device, cfg.bf16):
                parts.append(model.backbone(to_model_input(x, cfg.device, False)).cpu())
        rows.append(torch.cat(parts))
    return torch.stack(rows, dim=1)


def cached_view_batches(cfg: TrainConfig, cache: Tensor, epoch: int, neighbours: Tensor | None = None,
                        batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """This process's (features of view 1, features of view 2) batches of one epoch: two different
    cached views of each image (the second of its partner with neighbour positives), in the order
    and with the partners that :func:`cibhash_ext.pipeline.train_batches` uses for the same epoch
    (:func:`cibhash_ext.pipeline.epoch_order`), of ``batch_size`` images (default ``cfg.batch_size``)."""
    n, k = cache.shape[:2]
    g = epoch_generator(cfg.seed, epoch, salt=2 * distributed.rank())
    partners = epoch_partners(cfg.seed, neighbours, epoch)
    for index in epoch_order(cfg.seed, n, epoch, cfg.batch_size if batch_size is None else batch_size):
        first = torch.randint(k, (len(index),), generator=g)
        second = (first + 1 + torch.randint(k - 1, (len(index),), generator=g)) % k
        yield cache[index, first], cache[index if partners is None else partners[index], second]
