"""How the second view of each training image is chosen: a view of the image itself (the paper's
pairs), or a view of one of its nearest neighbours (neighbour positives), with the neighbours found
again from the model's features every few epochs and kept in the checkpoint once they come from them.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import Tensor

from cibhash_ext import distributed
from cibhash_ext.data import ImageSet
from cibhash_ext.models import CIBHashModel
from cibhash_ext.neighbours import image_neighbours, nearest_neighbours
from cibhash_ext.pipeline import autocast, eval_batches, to_model_input
from cibhash_ext.transforms import EvalTransform

__all__ = ["SameImage", "NeighbourPairs"]

LOG = logging.getLogger("cibhash_ext")


class SameImage:
    """The paper's pairs: both views come from the same image; nothing to find, refresh or store."""

    table: Tensor | None = None

    def before_epoch(self, epoch: int, model: CIBHashModel) -> None:
        """Nothing changes between epochs."""

    def checkpoint_state(self, epoch: int) -> dict:
        return {}

    def load_checkpoint_state(self, state: dict) -> None:
        """Nothing was stored."""


class NeighbourPairs:
    """Neighbour positives (NNCLR's idea, Dwibedi et al. 2021; :mod:`cibhash_ext.neighbours`): the
    second view of image i is a view of one of its ``k`` nearest training images, first in pixel space,
    then, every ``refresh`` epochs (0: never), in the space of the model's own backbone features.

    Args:
        images (ImageSet): the training images.
        k (int): neighbours per image.
        refresh (int): find the neighbours again from the features every this many epochs (0: never).
        transform (EvalTransform): each image as the model sees it when encoding (no augmentation).
        device (str), bf16 (bool), channels_last (bool): how the model runs (the run's plan).
        workers (int): DataLoader workers for image files.

    Attributes:
        table (Tensor[N, k], int64): the current neighbours, most similar first.
    """

    def __init__(self, images: ImageSet, k: int, refresh: int, transform: EvalTransform, device: str, bf16: bool,
                 channels_last: bool, workers: int = 0) -> None:
        self.images, self.k, self.refresh, self.transform = images, k, refresh, transform
        self.device, self.bf16, self.channels_last, self.workers = device, bf16, channels_last, workers
        started = time.time()
        self.table = image_neighbours(images, k)
        LOG.info("neighbour positives: the %d nearest of each training image in pixel space, found in %.1fs",
                 k, time.time() - started)

    def before_epoch(self, epoch: int, model: CIBHashModel) -> None:
        """At each multiple of ``refresh`` (not the first epoch), the neighbours found again from ``model``."""
        if not (self.refresh and epoch and epoch % self.refresh == 0):
            return
        started = time.time()
        self.table = self._feature_neighbours(model)
        LOG.info("neighbour positives: the %d nearest of each training image in the space of the backbone's "
                 "features after epoch %d, found in %.1fs", self.k, epoch, time.time() - started)

    def checkpoint_state(self, epoch: int) -> dict:
        """What the checkpoint after ``epoch`` keeps: the table once it comes from the features (the
        pixel table is found again on a resume)."""
        return {"neighbours": self.table.int()} if self.refresh and epoch >= self.refresh else {}

    def load_checkpoint_state(self, state: dict) -> None:
        """Takes the table a checkpoint kept (found in feature space before the run stopped)."""
        if "neighbours" in state:
            self.table = state["neighbours"].long()

    @torch.no_grad()
    def _feature_neighbours(self, model: CIBHashModel) -> Tensor:
        """Each training image once, as the model sees it when encoding (eval mode), then
        :func:`nearest_neighbours` on the backbone features as they are. Rank 0 computes the table
        and every rank receives it."""
        table = torch.empty(len(self.images), self.k, dtype=torch.int64)
        if distributed.rank() == 0:
            model.eval()
            with autocast(self.device, self.bf16):
                features = torch.cat([model.backbone(to_model_input(x, self.device, self.channels_last)).float().cpu()
                                      for x in eval_batches(self.images, self.transform, 1024, self.workers)])
            model.train()
            table = nearest_neighbours(features, self.k, dims=None)
        return distributed.broadcast(table.to(self.device)).cpu()
