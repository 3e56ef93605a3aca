"""Nearest-neighbour positives: each training image's k nearest neighbours among the training images,
in pixel space and later in the space of the model's own features, and the partner drawn from them
for the second view of each epoch.

With neighbour positives the second view of an image is an augmented view of one of its neighbours
instead of the image itself, so the contrastive loss pulls neighbourhoods together, not only the
copies of one image. The idea is NNCLR's ("With a Little Help from My Friends", Dwibedi et al., ICCV
2021), with the first neighbours taken from the pixels, as the neighbour structure of unsupervised
hashing (SSDH, Yang et al., IJCAI 2018), and found again every few epochs from the backbone's
features (``TrainConfig.neighbour_refresh``; the training loop calls :func:`nearest_neighbours` on
them). No label is read.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cibhash_ext.data import ImageSet

__all__ = ["nearest_neighbours", "image_neighbours", "draw_partners", "THUMBNAIL_SIDE", "PCA_DIMS"]

# Image files are compared as grayscale thumbnails of this side; in-memory images at their own size.
THUMBNAIL_SIDE = 32
# Rows are centred and projected on this many principal axes before the cosine similarity: on Fashion-MNIST
# the same neighbours as the full pixels (82 % same class among 10, both) at a quarter of the cost.
PCA_DIMS = 64
_BLOCK = 4096


def nearest_neighbours(rows: Tensor, k: int, dims: int | None = PCA_DIMS) -> Tensor:
    """The k nearest neighbours of each row among the other rows by cosine similarity, of the rows
    centred and projected on their ``dims`` leading principal axes (exact eigendecomposition,
    deterministic), or of the rows as they are.

    Args:
        rows (Tensor[N, D] or Tensor[N, C, H, W], any real dtype): one image's pixels or features per row.
        k (int): neighbours per image, 1 <= k < N.
        dims (int, optional): principal axes kept (all D when D is smaller); None: the rows as they
            are, neither centred nor projected (the model's features, ``TrainConfig.neighbour_refresh``).

    Returns:
        Tensor[N, k], int64: neighbour indices, most similar first; an image is never its own
        neighbour. The same input gives the same table (float sums depend on the thread count).

    Cost: O(N^2 dims) multiply-adds in blocks of 4,096 rows (about 10 s for 60,000 images on 2 threads
    at 64 dims).
    """
    flat = rows.reshape(len(rows), -1)
    if not 1 <= k < len(flat):
        raise ValueError(f"neighbours must be between 1 and the number of training images - 1 ({len(flat) - 1}), got {k}")
    x = flat.float() if dims is None else _principal_coordinates(flat, dims)
    x = torch.nn.functional.normalize(x, dim=1)
    table = []
    for start in range(0, len(x), _BLOCK):
        similarity = x[start : start + _BLOCK] @ x.T
        own = torch.arange(len(similarity))
        similarity[own, own + start] = -float("inf")
        table.append(similarity.topk(k, dim=1).indices)
    return torch.cat(table)


def _principal_coordinates(flat: Tensor, dims: int) -> Tensor:
    """Rows centred and projected on their ``dims`` leading principal axes, float32 (all axes when
    there are fewer). Mean and scatter matrix in float64, a block at a time: memory O(N dims), not
    O(N D) in float64."""
    blocks = range(0, len(flat), _BLOCK)
    mean = sum(flat[i : i + _BLOCK].double().sum(dim=0) for i in blocks) / len(flat)
    if flat.shape[1] > dims:
        scatter = sum((b := flat[i : i + _BLOCK].double() - mean).T @ b for i in blocks)
        axes = torch.linalg.eigh(scatter)[1][:, -dims:]
    else:
        axes = torch.eye(flat.shape[1], dtype=torch.float64)
    return torch.cat([((flat[i : i + _BLOCK].double() - mean) @ axes).float() for i in blocks])


def image_neighbours(images: ImageSet, k: int) -> Tensor:
    """:func:`nearest_neighbours` of the pixels of an ImageSet: in-memory images as they are, files and
    dataset items as grayscale thumbnails of side :data:`THUMBNAIL_SIDE` (one decoding pass over the set).

    Raises:
        ValueError: an image file cannot be read (the message names it).
    """
    if images.in_memory:
        return nearest_neighbours(images.images, k)
    side = (THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    thumbs = torch.stack([
        torch.frombuffer(bytearray(images.pil(i, "L").resize(side).tobytes()), dtype=torch.uint8)
        for i in range(len(images))
    ])
    return nearest_neighbours(thumbs, k)


def draw_partners(neighbours: Tensor, generator: torch.Generator) -> Tensor:
    """One neighbour of every image, uniformly among its k, for one epoch.

    Args:
        neighbours (Tensor[N, k], int64): from :func:`nearest_neighbours`.
        generator (torch.Generator): the epoch's draw.

    Returns:
        Tensor[N], int64: the partner of image i is entry i.
    """
    pick = torch.randint(neighbours.shape[1], (len(neighbours),), generator=generator)
    return neighbours.gather(1, pick[:, None]).squeeze(1)
