"""The feature cache of a frozen backbone: K augmented views of every training image passed through
the backbone once, so that each epoch trains the hash heads alone on two cached views per image.

A frozen backbone in eval mode (``efficientnet_lite0``, a frozen torchvision or timm model) maps a
view to the same features in every epoch, so training on cached features is training on those K
views with the backbone run live; what changes is that each epoch draws its two views of an image
among the same K instead of fresh ones. The paper's VGG-16 keeps its dropout active while training,
so its features are not fixed and it cannot be cached.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from cibhash_ext import distributed
from cibhash_ext.models import CIBHashModel, FrozenBackbone
from cibhash_ext.pipeline import ImagePairs, autocast, epoch_generator, epoch_order, epoch_partners, to_model_input

__all__ = ["CachedViewPairs", "check_cacheable", "feature_cache"]


def check_cacheable(model: CIBHashModel) -> None:
    """Raises a ValueError unless the model's backbone is frozen and always in eval mode."""
    backbone = model.backbone
    if not isinstance(backbone, FrozenBackbone) or backbone.train_mode:
        kind = "keeps its dropout active while training" if isinstance(backbone, FrozenBackbone) else "trains"
        raise ValueError(f"feature_cache needs a frozen backbone in eval mode (a FrozenBackbone with train_mode "
                         f"False, as efficientnet_lite0 or a frozen torchvision:NAME); this backbone "
                         f"({type(backbone.module if isinstance(backbone, FrozenBackbone) else backbone).__name__}) "
                         f"{kind}, so its features change from epoch to epoch")


@torch.no_grad()
def feature_cache(model: CIBHashModel, source: ImagePairs, views: int, device: str = "cpu",
                  bf16: bool = False) -> Tensor:
    """The backbone features of ``views`` augmented views of every training image of ``source``.

    Returns:
        Tensor[N, K, D] on the CPU, in the dtype the backbone gives (bfloat16 under ``bf16``): entry
        [i, k] is what the backbone gives for view k of image i (:meth:`ImagePairs.views`).
    """
    check_cacheable(model)
    rows = []
    for view in range(views):
        parts = []
        for x in source.views(view):
            with autocast(device, bf16):
                parts.append(model.backbone(to_model_input(x, device, False)).cpu())
        rows.append(torch.cat(parts))
    return torch.stack(rows, dim=1)


class CachedViewPairs:
    """The view source of cached features: each epoch, this process's batches of two different
    cached views of each image (the second of its partner with neighbour positives), in the order
    and with the partners that :class:`~cibhash_ext.pipeline.ImagePairs` uses for the same epoch
    (:func:`cibhash_ext.pipeline.epoch_order`).

    Args:
        cache (Tensor[N, K, D]): :func:`feature_cache`.
        batch_size (int): images per batch and process.
        seed (int): the run's seed.
    """

    features = True  # the batches are backbone features, for the hash heads alone

    def __init__(self, cache: Tensor, batch_size: int, seed: int) -> None:
        self.cache, self.batch_size, self.seed = cache, batch_size, seed

    def batches(self, epoch: int, neighbours: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """(features of view 1, features of view 2) batches of epoch ``epoch`` (0-based)."""
        cache = self.cache
        n, k = cache.shape[:2]
        g = epoch_generator(self.seed, epoch, salt=2 * distributed.rank())
        partners = epoch_partners(self.seed, neighbours, epoch)
        for index in epoch_order(self.seed, n, epoch, self.batch_size):
            first = torch.randint(k, (len(index),), generator=g)
            second = (first + 1 + torch.randint(k - 1, (len(index),), generator=g)) % k
            yield cache[index, first], cache[index if partners is None else partners[index], second]
