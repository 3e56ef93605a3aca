"""Retrieval datasets with their query / database / training splits; nothing is downloaded, ever.

Loaders: Fashion-MNIST (IDX .gz files, the Debian package ``dataset-fashion-mnist``), CIFAR-10 (the
python pickle batches), NUS-WIDE and MS-COCO (image-list files: one path and a multi-hot label vector
per line, the common deep-hashing protocol), any ImageFolder tree (labelled by class folder), any
folder of images without labels (``folder``), and Python data (a tensor of images or a
``torch.utils.data.Dataset``, labelled or not) through :func:`as_retrieval_data`. Each returns a
:class:`RetrievalData`; a missing dataset raises :class:`DatasetNotFoundError` saying what is expected.

Without labels the split is the held-out protocol: some images are held out of training as queries,
the database holds every image, and ``RetrievalData.copy_targets`` gives the database row of each
query's original, so that retrieval of augmented copies measures the codes (see
:mod:`cibhash_ext.diagnostics`).
"""

from __future__ import annotations

import _codecs
import dataclasses
import functools
import gzip
import os
import pickle
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

try:
    from numpy._core import multiarray as _np_multiarray, numeric as _np_numeric
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _np_multiarray, numeric as _np_numeric

from cibhash_ext.files import image_files, load_image, readable_images, skipped_warning

__all__ = [
    "DATASETS",
    "DATASET_REGISTRY",
    "DatasetEntry",
    "DatasetNotFoundError",
    "ImageSet",
    "RetrievalData",
    "as_retrieval_data",
    "load_dataset",
    "load_fashion_mnist",
    "load_cifar10",
    "load_image_lists",
    "load_image_folder",
    "load_folder",
]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_VALIDATION_SEED = 20261201  # fixed: the validation queries never change with --seed
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were expected; the message says what to do."""


@dataclasses.dataclass
class ImageSet:
    """A list of images, with labels or without, held in memory (``images``), as files (``paths``) or
    as the items of a ``torch.utils.data.Dataset`` (``items``).

    Attributes:
        labels (Tensor[N], int64 class indices, Tensor[N, C], uint8 multi-hot, or None: unlabelled).
        images (Tensor[N, C, H, W], uint8, optional): in-memory pixels.
        paths (list[str], optional): image files, loaded with PIL when needed.
        items (tuple[Dataset, list[int]], optional): a dataset whose item i (or its first element)
            is a PIL image or a [C, H, W] tensor, and the dataset indices in this set's order.
    """

    labels: Tensor | None
    images: Tensor | None = None
    paths: list[str] | None = None
    items: tuple | None = None

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.images, self.paths, self.items)) != 1:
            raise ValueError("an ImageSet holds exactly one of images, paths and items")
        if self.labels is not None and len(self.labels) != self._count():
            raise ValueError(f"labels has {len(self.labels)} rows but there are {self._count()} images")

    def _count(self) -> int:
        if self.images is not None:
            return len(self.images)
        return len(self.paths) if self.paths is not None else len(self.items[1])

    def __len__(self) -> int:
        return self._count()

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def subset(self, index: Tensor | Sequence[int]) -> "ImageSet":
        """The images at ``index`` (a 1-D integer tensor or sequence), in that order."""
        index = torch.as_tensor(index, dtype=torch.int64)
        labels = self.labels[index] if self.labels is not None else None
        if self.images is not None:
            return ImageSet(labels, images=self.images[index])
        if self.paths is not None:
            return ImageSet(labels, paths=[self.paths[i] for i in index.tolist()])
        dataset, order = self.items
        return ImageSet(labels, items=(dataset, [order[i] for i in index.tolist()]))

    def pil(self, i: int, mode: str = "RGB"):
        """Image ``i`` as a PIL image in ``mode`` ("L" or "RGB").

        Raises:
            ValueError: image ``i`` is a file that cannot be read (the message names it).
        """
        from PIL import Image

        if self.images is not None:
            arr = self.images[i].permute(1, 2, 0).numpy()
            return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).convert(mode)
        if self.paths is not None:
            return load_image(self.paths[i], mode)
        dataset, order = self.items
        return _to_pil(_image_of(dataset[order[i]])).convert(mode)


def _image_of(item):
    """The image of a dataset item: the item itself, or the first element of an (image, label) pair."""
    return item[0] if isinstance(item, (tuple, list)) else item


def _to_pil(image):
    from PIL import Image
    from torchvision.transforms.functional import to_pil_image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, Tensor):
        return to_pil_image(image)
    raise TypeError(f"dataset items must be PIL images or [C, H, W] tensors (or (image, label) pairs), "
                    f"got {type(image).__name__}")


@dataclasses.dataclass
class RetrievalData:
    """A dataset split for hashing: train on ``train``, rank ``database`` for each ``query``.

    Attributes:
        name (str): dataset name.
        train, query, database (ImageSet): the three splits.
        multi_label (bool): labels are multi-hot; relevance = at least one shared label. Otherwise
            relevance = same class.
        topk (int): the K of the protocol's mAP@K.
        class_names (tuple[str, ...]): names of the labels.
        copy_targets (Tensor[Q], int64, optional): without labels, the database row that holds each
            query's original image (the held-out protocol).
    """

    name: str
    train: ImageSet
    query: ImageSet
    database: ImageSet
    multi_label: bool
    topk: int
    class_names: tuple[str, ...] = ()
    copy_targets: Tensor | None = None

    @property
    def channels(self) -> int:
        """Image channels (1 or 3): in-memory sets know it, files are loaded as RGB."""
        return int(self.train.images.shape[1]) if self.train.in_memory else 3

    @property
    def labelled(self) -> bool:
        """Whether queries and database carry labels (retrieval metrics) or not (diagnostics)."""
        return self.query.labels is not None and self.database.labels is not None


def _missing(name: str, root: str, expected: Sequence[str], how: str) -> DatasetNotFoundError:
    listing = "\n".join(f"  {os.path.join(root, f)}" for f in expected)
    return DatasetNotFoundError(f"{name} not found: expected these files\n{listing}\n{how}")


def _read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (gzip-compressed or not): big-endian dims, then unsigned bytes."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _sample_train(n: int, train_size: int | None, seed: int) -> Tensor:
    if train_size is None or train_size >= n:
        return torch.arange(n)
    if train_size <= 0:
        raise ValueError(f"train_size must be > 0, got {train_size}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:train_size].sort().values


def load_fashion_mnist(
    root: str = FASHION_MNIST_ROOT,
    train_size: int | None = None,
    query_size: int | None = None,
    database_size: int | None = None,
    seed: int = 0,
    validation: bool = False,
) -> RetrievalData:
    """Fashion-MNIST: queries = the 10,000 test images, database = training set = the 60,000 train images.

    With ``validation``, the test images are not used at all: 5,000 train images (a fixed random
    choice) are the queries, the other 55,000 the database and the training set. Tune on this split.

    Args:
        root (str): folder with the four IDX .gz files (the Debian package ``dataset-fashion-mnist``
            installs them in /usr/share/datasets/fashion-mnist).
        train_size (int, optional): train on a random subset of this many train images.
        query_size, database_size (int, optional): keep only the first so many queries / database
            images (quick runs; the protocol uses all).
        seed (int): seed of the training subset.

    Returns:
        RetrievalData with 1x28x28 uint8 images and int64 labels, mAP@1000.
    """
    paths = [os.path.join(root, f) for f in FASHION_MNIST_FILES]
    if not all(os.path.isfile(p) for p in paths):
        raise _missing(
            "Fashion-MNIST", root, FASHION_MNIST_FILES,
            "Install it with: apt-get install dataset-fashion-mnist (Debian/Ubuntu), or pass the folder that "
            "holds these files with --data-root.",
        )
    x_train, y_train, x_test, y_test = (_read_idx(p) for p in paths)
    if x_train.shape[0] != y_train.shape[0] or x_test.shape[0] != y_test.shape[0]:
        raise ValueError(f"Fashion-MNIST in {root}: images and labels differ in count")
    images_train = torch.from_numpy(x_train.copy()).unsqueeze(1)
    images_test = torch.from_numpy(x_test.copy()).unsqueeze(1)
    labels_train = torch.from_numpy(y_train.astype(np.int64))
    labels_test = torch.from_numpy(y_test.astype(np.int64))
    database = ImageSet(labels_train, images=images_train)
    query = ImageSet(labels_test, images=images_test)
    if validation:
        order = torch.randperm(len(database), generator=torch.Generator().manual_seed(FASHION_MNIST_VALIDATION_SEED))
        query = database.subset(order[:5000].sort().values)
        database = database.subset(order[5000:].sort().values)
    train = database.subset(_sample_train(len(database), train_size, seed))
    if query_size is not None:
        query = query.subset(torch.arange(min(query_size, len(query))))
    if database_size is not None:
        database = database.subset(torch.arange(min(database_size, len(database))))
    name = "fashion_mnist_validation" if validation else "fashion_mnist"
    return RetrievalData(name, train, query, database, False, 1000, FASHION_MNIST_CLASSES)


def _per_class_split(labels: Tensor, query_per_class: int, train_per_class: int, seed: int):
    """Random per-class query / train picks; the database is everything that is not a query."""
    g = torch.Generator().manual_seed(seed)
    query, train = [], []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        if len(members) < query_per_class + 1:
            raise ValueError(
                f"class {c} has {len(members)} images, too few for query_per_class={query_per_class}"
            )
        query.append(members[:query_per_class])
        train.append(members[query_per_class : query_per_class + train_per_class])
    query_idx = torch.cat(query).sort().values
    train_idx = torch.cat(train).sort().values
    is_query = torch.zeros(len(labels), dtype=torch.bool)
    is_query[query_idx] = True
    database_idx = (~is_query).nonzero().flatten()
    return train_idx, query_idx, database_idx


# Every global a CIFAR-10 python batch may reference: numpy arrays (protocols 0-4 rebuild them with
# _reconstruct + ndarray + dtype, protocol 5 with _frombuffer; numpy 1.x wrote numpy.core, numpy 2.x
# writes numpy._core), numpy scalars, and _codecs.encode, which Python 3 uses for bytes under
# protocols 0-2. None of them runs anything but numpy's own array and dtype constructors.
_CIFAR_GLOBALS = {
    **{
        (module, name): obj
        for prefix in ("numpy.core", "numpy._core")
        for module, name, obj in (
            (f"{prefix}.multiarray", "_reconstruct", _np_multiarray._reconstruct),
            (f"{prefix}.multiarray", "scalar", _np_multiarray.scalar),
            (f"{prefix}.numeric", "_frombuffer", _np_numeric._frombuffer),
        )
    },
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only dicts, lists, bytes, str, numbers and numpy arrays: a batch file cannot run code."""

    def __init__(self, file) -> None:
        super().__init__(file, encoding="bytes")

    def find_class(self, module: str, name: str):
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"its pickle references {module}.{name}, but a batch holds only dicts, lists, bytes, str, int "
                "and numpy arrays (refused; nothing was run)"
            ) from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("its pickle holds a persistent id (refused; nothing was run)")


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The images uint8 [n, 3, 32, 32] and labels int64 [n] of one batch, read without running code."""
    try:
        with open(path, "rb") as fh:
            batch = _CifarUnpickler(fh).load()
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path} is not a CIFAR-10 batch: {error}") from None
    except OSError:
        raise
    except Exception as error:  # a truncated or garbled pickle fails in many ways; name the file
        raise ValueError(f"{path} is not a CIFAR-10 batch: {type(error).__name__}: {error}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels', got {keys}")
    images = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if labels.ndim != 1 or images.size != labels.size * 3 * 32 * 32:
        raise ValueError(
            f"{path} is not a CIFAR-10 batch: expected a list of n labels and n images of 3x32x32 bytes, got "
            f"labels of shape {labels.shape} and {images.size} image bytes"
        )
    return images.reshape(-1, 3, 32, 32), labels


def load_cifar10(
    root: str, query_per_class: int = 100, train_per_class: int = 1000, seed: int = 0, topk: int = 1000
) -> RetrievalData:
    """CIFAR-10 from the python pickle batches, split per class as in the deep-hashing protocol.

    All 60,000 images are pooled; ``query_per_class`` per class are the queries, the rest the
    database, and ``train_per_class`` per class of the database the training set (the paper's
    split: 100 / the rest / 1,000 per class).

    Args:
        root (str): the ``cifar-10-batches-py`` folder (or its parent).
        query_per_class, train_per_class (int): split sizes.
        seed (int): seed of the split.
        topk (int): K of mAP@K.

    Returns:
        RetrievalData with 3x32x32 uint8 images and int64 labels.

    Raises:
        DatasetNotFoundError: a batch file is missing.
        ValueError: a batch is not a CIFAR-10 batch. The pickles are read with an unpickler that
            admits only dicts, lists, bytes, str, numbers and numpy arrays, so a batch that would
            run code (any other global) is refused before anything of it runs; the message names
            the file and the global.
    """
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if not os.path.isfile(os.path.join(root, files[0])) and os.path.isdir(os.path.join(root, "cifar-10-batches-py")):
        root = os.path.join(root, "cifar-10-batches-py")
    if not all(os.path.isfile(os.path.join(root, f)) for f in files):
        raise _missing(
            "CIFAR-10", root, files,
            "Unpack cifar-10-python.tar.gz (the 'CIFAR-10 python version') and pass its cifar-10-batches-py "
            "folder with --data-root.",
        )
    images, labels = [], []
    for f in files:
        batch_images, batch_labels = _read_cifar_batch(os.path.join(root, f))
        images.append(batch_images)
        labels.append(batch_labels)
    all_set = ImageSet(torch.from_numpy(np.concatenate(labels)), images=torch.from_numpy(np.concatenate(images)))
    train_idx, query_idx, database_idx = _per_class_split(all_set.labels, query_per_class, train_per_class, seed)
    return RetrievalData(
        "cifar10", all_set.subset(train_idx), all_set.subset(query_idx), all_set.subset(database_idx),
        False, topk, CIFAR10_CLASSES,
    )


def read_image_list(list_file: str, root: str) -> ImageSet:
    """Reads an image-list file: per line an image path (relative to ``root``) and 0/1 labels.

    Args:
        list_file (str): the list file.
        root (str): folder the paths are relative to.

    Returns:
        ImageSet of paths with Tensor[N, C] uint8 multi-hot labels.
    """
    paths, rows = [], []
    with open(list_file) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                row = [int(v) for v in parts[1:]]
            except ValueError as exc:
                raise ValueError(f"{list_file}:{lineno}: labels must be 0/1 integers, got {parts[1:]}") from exc
            if not row or any(v not in (0, 1) for v in row):
                raise ValueError(f"{list_file}:{lineno}: expected a path then a 0/1 label vector, got {line.strip()!r}")
            if rows and len(row) != len(rows[0]):
                raise ValueError(f"{list_file}:{lineno}: {len(row)} labels, earlier lines have {len(rows[0])}")
            paths.append(os.path.join(root, parts[0]))
            rows.append(row)
    if not rows:
        raise ValueError(f"{list_file} lists no images")
    return ImageSet(torch.tensor(rows, dtype=torch.uint8), paths=paths)


def load_image_lists(
    name: str,
    root: str,
    train_list: str = "train.txt",
    query_list: str = "test.txt",
    database_list: str = "database.txt",
    topk: int = 5000,
) -> RetrievalData:
    """A multi-label dataset given as three image-list files (the NUS-WIDE / MS-COCO protocol).

    Args:
        name (str): dataset name for messages and reports.
        root (str): folder holding the list files; image paths in them are relative to it.
        train_list, query_list, database_list (str): list file names (relative to ``root``).
        topk (int): K of mAP@K (5000 in the protocol).

    Returns:
        RetrievalData of image files with multi-hot labels; relevance = at least one shared label.
    """
    lists = (train_list, query_list, database_list)
    if not all(os.path.isfile(os.path.join(root, f)) for f in lists):
        raise _missing(
            name, root, lists,
            "Each line of a list file is an image path relative to that folder and a 0/1 label vector "
            "(the common deep-hashing protocol files); pass the folder with --data-root.",
        )
    train, query, database = (read_image_list(os.path.join(root, f), root) for f in lists)
    if not train.labels.shape[1] == query.labels.shape[1] == database.labels.shape[1]:
        raise ValueError(f"{name}: the list files have different label counts")
    return RetrievalData(name, train, query, database, True, topk)


def load_image_folder(
    root: str, query_per_class: int = 100, train_per_class: int = 500, seed: int = 0, topk: int = 1000
) -> RetrievalData:
    """Any ImageFolder tree (``root/<class>/<image>``), split per class like CIFAR-10.

    Args:
        root (str): the tree's root.
        query_per_class, train_per_class (int): split sizes; the database is every non-query image.
        seed (int): seed of the split.
        topk (int): K of mAP@K.
    """
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"image folder not found: {root} (expected {root}/<class name>/<image files>)")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    try:
        paths = image_files([os.path.join(root, cls) for cls in classes])
    except ValueError:
        raise DatasetNotFoundError(
            f"no images under {root}: expected {root}/<class name>/<image files> (any format PIL reads)"
        ) from None
    class_of = {cls: c for c, cls in enumerate(classes)}
    labels = [class_of[os.path.relpath(path, root).split(os.sep, 1)[0]] for path in paths]
    all_set = ImageSet(torch.tensor(labels, dtype=torch.int64), paths=paths)
    train_idx, query_idx, database_idx = _per_class_split(all_set.labels, query_per_class, train_per_class, seed)
    return RetrievalData(
        "image_folder", all_set.subset(train_idx), all_set.subset(query_idx), all_set.subset(database_idx),
        False, topk, tuple(classes),
    )


def _checked_files(paths: list[str]) -> list[str]:
    """The readable images among ``paths``; the others are named in one warning (never a crash later)."""
    good, bad = readable_images(paths)
    if bad:
        warnings.warn(skipped_warning(bad), stacklevel=3)
    return good


def holdout_split(all_set: ImageSet, name: str, query_size: int | None, train_size: int | None, seed: int,
                  topk: int = 1000) -> RetrievalData:
    """The held-out protocol: ``query_size`` random images (default 10 %, at most 1,000) are the
    queries and are left out of training; ``train_size`` limits training to a random subset of the
    rest. Without labels the database is every image (it holds each query's original, found again
    from an augmented copy); with labels it is every image but the queries (relevance = same label).
    """
    n = len(all_set)
    if n < 2:
        raise ValueError(f"{name}: need at least 2 images (one to train on, one held out), got {n}")
    holdout = min(1000, max(1, n // 10)) if query_size is None else query_size
    if not 1 <= holdout < n:
        raise ValueError(f"{name}: query_size must be between 1 and {n - 1} (the images minus one), got {holdout}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    query_idx = order[:holdout].sort().values
    rest = order[holdout:]
    if train_size is not None:
        rest = rest[:train_size]
    train_idx = rest.sort().values
    if all_set.labels is not None:
        database = all_set.subset(order[holdout:].sort().values)
        return RetrievalData(name, all_set.subset(train_idx), all_set.subset(query_idx), database, False, topk)
    return RetrievalData(name, all_set.subset(train_idx), all_set.subset(query_idx), all_set, False, topk,
                         copy_targets=query_idx)


def load_folder(root: str, query_size: int | None = None, train_size: int | None = None, seed: int = 0) -> RetrievalData:
    """Every image under ``root`` (any nesting), without labels, split by :func:`holdout_split`.

    Unreadable files are skipped with one warning naming them.

    Args:
        root (str): the folder.
        query_size (int, optional): images held out as queries (default 10 %, at most 1,000).
        train_size (int, optional): train on a random subset of this many of the other images.
        seed (int): seed of the split.
    """
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"image folder not found: {root}")
    try:
        paths = image_files([root])
    except ValueError:
        raise DatasetNotFoundError(f"no images under {root} (no file of a format PIL reads)") from None
    paths = _checked_files(paths)
    if not paths:
        raise DatasetNotFoundError(f"no readable images under {root}")
    return holdout_split(ImageSet(None, paths=paths), "folder", query_size, train_size, seed)


def as_retrieval_data(data, query_size: int | None = None, train_size: int | None = None, seed: int = 0) -> RetrievalData:
    """Python data as a dataset: a RetrievalData as it is, a uint8/float tensor of images
    [N, C, H, W] (float in [0, 1]), or a ``torch.utils.data.Dataset`` whose items are images or
    (image, int label) pairs; split by :func:`holdout_split`.
    """
    if isinstance(data, RetrievalData):
        return data
    if isinstance(data, Tensor):
        if data.dim() != 4 or data.shape[1] not in (1, 3) or not (data.dtype == torch.uint8 or data.is_floating_point()):
            raise ValueError(f"an image tensor must be uint8 or float [N, C, H, W] with C = 1 or 3, got "
                             f"{data.dtype} of shape {tuple(data.shape)}")
        images = data if data.dtype == torch.uint8 else (data.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return holdout_split(ImageSet(None, images=images.cpu().contiguous()), "tensor", query_size, train_size, seed)
    if isinstance(data, torch.utils.data.Dataset):
        if not hasattr(data, "__len__"):
            raise TypeError("a Dataset used as training data must have a length (a map-style dataset)")
        n = len(data)
        if n == 0:
            raise ValueError("the dataset is empty")
        first = data[0]
        labels = None
        if isinstance(first, (tuple, list)) and len(first) >= 2 and isinstance(first[1], (int, np.integer, Tensor)):
            # torchvision datasets list their labels in .targets; others are read item by item.
            targets = getattr(data, "targets", None)
            if targets is None or len(targets) != n:
                targets = [data[i][1] for i in range(n)]
            labels = torch.tensor([int(t) for t in targets], dtype=torch.int64)
        _to_pil(_image_of(first))  # fails early on an unsupported item type
        return holdout_split(ImageSet(labels, items=(data, list(range(n)))), "dataset", query_size, train_size, seed)
    raise TypeError(f"data must be a dataset name, a folder path, a Dataset or an image tensor, got {type(data).__name__}")


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """One dataset of the registry: how it loads, which settings it reads, which recipe it trains with.

    Attributes:
        loader (callable, optional): ``loader(root, **options)`` -> RetrievalData; None for Python data
            given to :func:`cibhash_ext.train` (a run of it cannot reload its data by itself).
        options (tuple[str, ...]): the split settings of :class:`~cibhash_ext.config.TrainConfig` it
            reads; giving another one is an error.
        default_root (str, optional): where it is found without ``data_root``.
        seeded (bool): its split takes the run's seed.
        recipe (str, optional): the recipe (``cibhash_ext/recipes/<recipe>.json``) under the user's settings.
    """

    loader: Callable[..., RetrievalData] | None
    options: tuple[str, ...] = ()
    default_root: str | None = None
    seeded: bool = True
    recipe: str | None = None


# Every dataset name a configuration may hold, in the order the command line lists them.
DATASET_REGISTRY: dict[str, DatasetEntry] = {
    "fashion_mnist": DatasetEntry(load_fashion_mnist, ("train_size", "query_size", "database_size", "validation"),
                                  default_root=FASHION_MNIST_ROOT, recipe="fashion_mnist"),
    "cifar10": DatasetEntry(load_cifar10, ("query_per_class", "train_per_class")),
    "nus_wide": DatasetEntry(functools.partial(load_image_lists, "nus_wide"), seeded=False, recipe="photos"),
    "coco": DatasetEntry(functools.partial(load_image_lists, "coco"), seeded=False, recipe="photos"),
    "image_folder": DatasetEntry(load_image_folder, ("query_per_class", "train_per_class"), recipe="photos"),
    "folder": DatasetEntry(load_folder, ("train_size", "query_size"), recipe="photos"),
    "tensor": DatasetEntry(None, ("train_size", "query_size")),
    "dataset": DatasetEntry(None, ("train_size", "query_size")),
}
# The datasets loaded by name (from the command line or ``train(data=name)``).
DATASETS = tuple(name for name, entry in DATASET_REGISTRY.items() if entry.loader is not None)


def load_dataset(name: str, root: str | None = None, **options) -> RetrievalData:
    """Loads a dataset by name (one of :data:`DATASETS`) with its split options."""
    entry = DATASET_REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    if entry.loader is None:
        raise ValueError(f"this run was trained on Python data ({name}); pass the data again (data=...) "
                         "or use cibhash_ext.encode with the model")
    root = root or entry.default_root
    if root is None:
        raise ValueError(f"dataset {name!r} needs --data-root (only fashion_mnist has a default location)")
    return entry.loader(root, **options)
