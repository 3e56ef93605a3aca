"""The input pipeline: :class:`ImagePairs`, the view source of images (the two augmented views of
each training batch, from in-memory tensors by batched augmentation or from image files and datasets
through PIL and a DataLoader), the one epoch order of every view source (:func:`epoch_order`), and
the evaluation view of images.

Randomness of epoch e comes from generators seeded by (seed, e, rank), so an epoch is the same
with or without a resume before it, and the global batches are the same for any number of processes.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Iterator

import torch
from torch import Tensor

from cibhash_ext import distributed
from cibhash_ext.config import Pipeline
from cibhash_ext.data import ImageSet, RetrievalData
from cibhash_ext.neighbours import draw_partners
from cibhash_ext.transforms import (
    AugmentConfig,
    BatchAugment,
    BatchNormalize,
    EvalTransform,
    TwoViews,
    build_pil_transform,
    resize,
)

__all__ = [
    "ImagePairs",
    "ImageViews",
    "NeighbourViews",
    "autocast",
    "capped_batch",
    "epoch_generator",
    "epoch_order",
    "epoch_partners",
    "epoch_sampler",
    "eval_batches",
    "input_shape",
    "n_batches",
    "pil_augmentation",
    "to_model_input",
    "use_batch_pipeline",
]


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """The CPU generator of one epoch's draws (``salt`` separates the streams of one epoch)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + salt) % (2**63))


def to_model_input(x: Tensor, device: str | torch.device, channels_last: bool) -> Tensor:
    """A batch on the model's device, channels-last when the model is."""
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(device: str | torch.device, bf16: bool):
    """bfloat16 autocast for the backbone on ``device`` (a no-op context when ``bf16`` is False)."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)


class ImageViews(torch.utils.data.Dataset):
    """``transform`` of each image of an ImageSet, through PIL. With ``skip_unreadable`` (training),
    an image file that cannot be decoded mid-epoch is named in a warning and replaced by the next
    readable image: never a crash mid-epoch. Otherwise (encoding) it is an error naming the file."""

    def __init__(self, images: ImageSet, transform: Callable, mode: str, skip_unreadable: bool = False) -> None:
        self.images, self.transform, self.mode, self.skip_unreadable = images, transform, mode, skip_unreadable

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int):
        """Image ``i`` as PIL (the next readable one with ``skip_unreadable``)."""
        if not self.skip_unreadable:
            return self.images.pil(i, self.mode)
        for step in range(len(self.images)):
            j = (i + step) % len(self.images)
            try:
                return self.images.pil(j, self.mode)
            except ValueError as exc:
                warnings.warn(f"skipped an unreadable image: {exc}", stacklevel=2)
        raise ValueError("no image of the set can be read")

    def __getitem__(self, i: int):
        return self.transform(self.image(i))


class NeighbourViews(ImageViews):
    """Training views with neighbour positives: the first view of image i from image i, the second
    from its partner ``partners[i]``, each the matching view of the two-view ``transform``."""

    def __init__(self, images: ImageSet, transform: Callable, mode: str, partners: Tensor) -> None:
        super().__init__(images, transform, mode, skip_unreadable=True)
        self.partners = partners

    def __getitem__(self, i: int):
        if isinstance(self.transform, TwoViews):
            return self.transform.transform(self.image(i)), self.transform.transform(self.image(int(self.partners[i])))
        # A two-view transform gives both views at once: one of each call is not used.
        return self.transform(self.image(i))[0], self.transform(self.image(int(self.partners[i])))[1]


def input_shape(aug: AugmentConfig, data: RetrievalData) -> list[int]:
    """[C, H, W] of the images the model sees under the augmentation ``aug``: in-memory images at
    their size unless resized."""
    if aug.size > 0:
        return [len(aug.mean), aug.size, aug.size]
    if not data.train.in_memory:
        raise ValueError("images loaded from files need a fixed input size: set --aug size=S (S > 0)")
    return [len(aug.mean), *map(int, data.train.images.shape[2:])]


def pil_augmentation(aug: AugmentConfig, images: ImageSet) -> Callable:
    """The per-image (PIL) training augmentation of ``images``; in-memory images without a set size
    (through PIL for hue jitter, or for the copies of the held-out protocol) keep their own side."""
    if aug.size == 0:
        aug = dataclasses.replace(aug, size=int(images.images.shape[-1]))
    return build_pil_transform(aug)


def use_batch_pipeline(pipeline: Pipeline, images: ImageSet, aug: AugmentConfig, transform: Callable | None) -> bool:
    """Whether the views of ``images`` come from batched augmentation ("batch"; the default for
    in-memory images without hue jitter) rather than from PIL, one image at a time ("pil")."""
    if transform is not None:
        return False
    if pipeline == "batch":
        if not images.in_memory:
            raise ValueError("pipeline='batch' needs an in-memory dataset (fashion_mnist, cifar10, a tensor); use 'pil'")
        return True
    if pipeline == "pil":
        return False
    return images.in_memory and aug.hue == 0


def epoch_sampler(seed: int, n: int, epoch: int) -> torch.utils.data.DistributedSampler:
    """This process's share of the epoch's shuffled order. The order depends on (seed, epoch) only,
    so the global batches are the same for any number of processes: rank r takes every R-th image."""
    sampler = torch.utils.data.DistributedSampler(
        range(n), num_replicas=distributed.world_size(), rank=distributed.rank(), shuffle=True,
        seed=seed, drop_last=True,
    )
    sampler.set_epoch(epoch)
    return sampler


def epoch_order(seed: int, n: int, epoch: int, batch_size: int) -> list[Tensor]:
    """The batches of one epoch, the one order that every view source (images in memory, image
    files, cached features) follows: this process's share of the epoch's shuffled order
    (:func:`epoch_sampler`) cut into :func:`n_batches` batches of ``batch_size`` indices (int64)."""
    order = torch.tensor(list(epoch_sampler(seed, n, epoch)), dtype=torch.int64)
    return [order[b * batch_size : (b + 1) * batch_size] for b in range(n_batches(batch_size, n))]


def epoch_partners(seed: int, neighbours: Tensor | None, epoch: int) -> Tensor | None:
    """The partner of each training image in one epoch (None without neighbour positives): one
    global draw from (seed, epoch), the same on every process, and nothing drawn when off."""
    return None if neighbours is None else draw_partners(neighbours, epoch_generator(seed, epoch, salt=-1))


def capped_batch(batch_size: int, images: int) -> int:
    """The batch per process of a run on ``images`` training images: ``batch_size``, capped at each
    process's share of the training set, so that a set smaller than one global batch trains in one
    step per epoch.

    Raises:
        ValueError: a process would get fewer than 2 images (NT-Xent needs a negative).
    """
    processes = distributed.world_size()
    if images // processes < 2:
        raise ValueError(f"the training set ({images} images) is too small: each of the {processes} processes needs "
                         f"at least 2 images per batch")
    return min(batch_size, images // processes)


def n_batches(batch_size: int, images: int) -> int:
    """Steps per epoch over ``images`` training images: global batches of world_size x batch_size images."""
    global_batch = batch_size * distributed.world_size()
    n = images // global_batch
    if n == 0:
        raise ValueError(
            f"the training set ({images} images) is smaller than one global batch ({global_batch} = "
            f"{distributed.world_size()} processes x batch {batch_size}): lower --batch-size"
        )
    return n


class ImagePairs:
    """The view source of images: each epoch, this process's batches of two augmented views of each
    training image, in the epoch's order (:func:`epoch_order`) and seeded by (seed, epoch, rank).

    Args:
        images (ImageSet): the training images.
        aug (AugmentConfig): the built-in augmentation.
        batch_size (int): images per batch and process.
        seed (int): the run's seed.
        pipeline (str): "auto", "batch" or "pil" (:func:`use_batch_pipeline`).
        workers (int): DataLoader workers of the PIL pipeline.
        transform (callable, optional): replaces the built-in augmentation: maps one PIL image to
            its two views (tensors), as lightly's transforms do.
    """

    features = False  # the batches are images, for the whole model

    def __init__(self, images: ImageSet, aug: AugmentConfig, batch_size: int, seed: int, pipeline: Pipeline = "auto",
                 workers: int = 0, transform: Callable | None = None) -> None:
        self.images, self.aug, self.batch_size, self.seed = images, aug, batch_size, seed
        self.workers, self.transform = workers, transform
        self.batched = use_batch_pipeline(pipeline, images, aug, transform)
        self.mode = "RGB" if len(aug.mean) == 3 else "L"

    def batches(self, epoch: int, neighbours: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """(view1, view2) batches of epoch ``epoch`` (0-based). With ``neighbours`` (Tensor[N, k], int64:
        :func:`cibhash_ext.neighbours.image_neighbours`), the second view of each image is a view of one
        of its neighbours, drawn per epoch from (seed, epoch) alone."""
        images = self.images
        g = epoch_generator(self.seed, epoch, salt=2 * distributed.rank())
        batches = epoch_order(self.seed, len(images), epoch, self.batch_size)
        partners = epoch_partners(self.seed, neighbours, epoch)
        if self.batched:
            augment = BatchAugment(self.aug)
            for index in batches:
                second = index if partners is None else partners[index]
                views = augment(torch.cat([images.images[index], images.images[second]]), generator=g)
                yield views[: len(index)], views[len(index) :]
            return
        two_views = self.transform if self.transform is not None else TwoViews(pil_augmentation(self.aug, images))
        views = (ImageViews(images, two_views, self.mode, skip_unreadable=True) if partners is None
                 else NeighbourViews(images, two_views, self.mode, partners))
        yield from torch.utils.data.DataLoader(views, batch_sampler=[b.tolist() for b in batches],
                                               num_workers=self.workers, generator=g)

    def views(self, view: int) -> Iterator[Tensor]:
        """View ``view`` (0 <= view < K) of every training image, in batches, in the order of the set;
        seeded by (seed, view) alone (the feature cache's views). A two-view ``transform`` gives its
        view ``view % 2``."""
        images = self.images
        g = epoch_generator(self.seed, view, salt=-2)
        if self.batched:
            augment = BatchAugment(self.aug)
            for start in range(0, len(images), self.batch_size):
                yield augment(images.images[start : start + self.batch_size], generator=g)
            return
        transform = self.transform
        one_view = pil_augmentation(self.aug, images) if transform is None else (lambda image: transform(image)[view % 2])
        with torch.random.fork_rng(devices=[]):  # the caller's global generator is left as it was
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))  # torchvision's transforms draw from it
            yield from torch.utils.data.DataLoader(ImageViews(images, one_view, self.mode, skip_unreadable=True),
                                                   batch_size=self.batch_size, num_workers=self.workers, generator=g)


def eval_batches(images: ImageSet, transform: EvalTransform, batch_size: int, workers: int = 0) -> Iterator[Tensor]:
    """Normalised evaluation batches of an ImageSet, in order: in-memory images resized and
    normalised as a batch, files and dataset items one by one through ``transform``."""
    if images.in_memory:
        normalize = BatchNormalize(AugmentConfig(size=0, mean=transform.mean, std=transform.std))
        height, width = transform.input_shape[1:]
        for i in range(0, len(images), batch_size):
            x = normalize(images.images[i : i + batch_size])
            if tuple(x.shape[-2:]) != (height, width):
                x = resize(x, (height, width), transform.interpolation)
            yield x
        return
    yield from torch.utils.data.DataLoader(ImageViews(images, transform, transform.mode), batch_size=batch_size,
                                           num_workers=workers)
