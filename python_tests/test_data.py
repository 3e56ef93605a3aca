"""Tests of every dataset loader on small fixture files generated here."""

import gzip
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from cibhash_ext.data import (
    FASHION_MNIST_FILES,
    FASHION_MNIST_ROOT,
    DatasetNotFoundError,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    load_image_lists,
    read_image_list,
)


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_root(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (30, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(30) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (12, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(12) % 10,
    }
    for name, array in arrays.items():
        write_idx(tmp_path / name, array)
    return tmp_path, arrays


def test_fashion_mnist_loader(fashion_root):
    root, arrays = fashion_root
    data = load_fashion_mnist(str(root))
    assert data.train.images.shape == (30, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert np.array_equal(data.database.images[:, 0].numpy(), arrays["train-images-idx3-ubyte.gz"])
    assert np.array_equal(data.query.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte.gz"])
    assert data.query.labels.tolist() == (np.arange(12) % 10).tolist()
    assert data.topk == 1000 and not data.multi_label and data.channels == 1
    small = load_fashion_mnist(str(root), train_size=7, query_size=5, database_size=20, seed=1)
    assert (len(small.train), len(small.query), len(small.database)) == (7, 5, 20)
    # The training subset is a subset of the train images, without repeats.
    rows = {tuple(r.flatten().tolist()) for r in data.database.images}
    assert all(tuple(r.flatten().tolist()) in rows for r in small.train.images)


def test_fashion_mnist_missing_says_what_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_fashion_mnist(str(tmp_path))
    message = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in message and str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_fashion_mnist_corrupt_file(fashion_root):
    root, _ = fashion_root
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(ValueError, match="header says"):
        load_fashion_mnist(str(root))


def test_cifar10_loader_and_per_class_split(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    all_labels = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = list(rng.integers(0, 10, 40))
        labels[:10] = range(10)
        data = rng.integers(0, 256, (40, 3072), dtype=np.uint8)
        all_labels += labels
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)
    data = load_cifar10(str(tmp_path), query_per_class=2, train_per_class=3, seed=0)
    assert data.query.images.shape[1:] == (3, 32, 32)
    assert len(data.query) == 20 and len(data.database) == 240 - 20
    assert torch.bincount(data.query.labels, minlength=10).tolist() == [2] * 10
    assert len(data.train) == 30
    # Queries are not in the database; the training set is drawn from the database.
    q = {r.numpy().tobytes() for r in data.query.images}
    d = [r.numpy().tobytes() for r in data.database.images]
    assert not q & set(d)
    assert {r.numpy().tobytes() for r in data.train.images} <= set(d)
    assert sorted(torch.cat([data.query.labels, data.database.labels]).tolist()) == sorted(all_labels)
    with pytest.raises(DatasetNotFoundError, match="data_batch_1"):
        load_cifar10(str(tmp_path / "nothing"))


def write_images(root, names, size=(12, 10)):
    rng = np.random.default_rng(2)
    for name in names:
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_image_list_loader_multi_hot(tmp_path):
    write_images(tmp_path, [f"img/{i}.png" for i in range(6)])
    rows = {"train.txt": [0, 1], "test.txt": [2, 3], "database.txt": [1, 4, 5]}
    for name, ids in rows.items():
        with open(tmp_path / name, "w") as fh:
            for i in ids:
                fh.write(f"img/{i}.png {i % 2} {int(i > 2)} 1\n")
    data = load_image_lists("nus_wide", str(tmp_path))
    assert data.multi_label and data.topk == 5000 and data.channels == 3
    assert data.database.labels.tolist() == [[1, 0, 1], [0, 1, 1], [1, 1, 1]]
    assert data.query.paths[1] == os.path.join(str(tmp_path), "img/3.png")
    assert data.query.pil(0).size == (12, 10)
    assert load_dataset("coco", str(tmp_path)).name == "coco"
    with pytest.raises(DatasetNotFoundError, match="database.txt"):
        load_image_lists("coco", str(tmp_path / "missing"))


def test_image_list_bad_lines(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("a.png 1 0\nb.png 1\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        read_image_list(str(bad), str(tmp_path))
    bad.write_text("a.png 1 2\n")
    with pytest.raises(ValueError, match="0/1"):
        read_image_list(str(bad), str(tmp_path))


def test_image_folder_loader(tmp_path):
    write_images(tmp_path, [f"{c}/{i}.png" for c in ("cat", "dog", "fox") for i in range(5)])
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"left out 1 file\(s\) that are not images.*dog/notes.txt"):
        data = load_image_folder(str(tmp_path), query_per_class=1, train_per_class=2, seed=0)
    assert data.class_names == ("cat", "dog", "fox")
    for subset in (data.query, data.database):
        assert [os.path.basename(os.path.dirname(p)) for p in subset.paths] == [
            data.class_names[c] for c in subset.labels.tolist()
        ]
    assert len(data.query) == 3 and len(data.database) == 12 and len(data.train) == 6
    assert sorted(data.query.labels.tolist()) == [0, 1, 2]
    assert not set(data.query.paths) & set(data.database.paths)
    with pytest.raises(DatasetNotFoundError, match="class name"):
        load_image_folder(str(tmp_path / "missing"))


def test_load_dataset_errors():
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("mnist", "/tmp")
    with pytest.raises(ValueError, match="--data-root"):
        load_dataset("cifar10")


def test_one_registry_entry_is_all_a_dataset_needs(monkeypatch, tmp_path):
    """The registry is read by the checks, the split options, the command line and the loader."""
    from cibhash_ext.config import TrainConfig, choices
    from cibhash_ext.data import DATASET_REGISTRY, DATASETS, DatasetEntry

    assert choices("dataset") == tuple(DATASET_REGISTRY)
    assert DATASETS == tuple(name for name in DATASET_REGISTRY if name not in ("tensor", "dataset"))
    calls = []

    def loader(root, **options):
        calls.append((root, options))
        return "loaded"

    monkeypatch.setitem(DATASET_REGISTRY, "planted", DatasetEntry(loader, ("train_size",), default_root="/planted"))
    cfg = TrainConfig(dataset="planted", train_size=7, seed=3)
    assert cfg.dataset_options() == {"train_size": 7, "seed": 3}
    assert load_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options()) == "loaded"
    assert calls == [("/planted", {"train_size": 7, "seed": 3})]
    with pytest.raises(ValueError, match=r"dataset 'planted' does not use query_size \(it reads train_size\)"):
        TrainConfig(dataset="planted", query_size=3)
    monkeypatch.setitem(DATASET_REGISTRY, "unseeded", DatasetEntry(loader, seeded=False))
    assert TrainConfig(dataset="unseeded").dataset_options() == {}
    with pytest.raises(ValueError, match="dataset must be one of fashion_mnist, .*planted"):
        TrainConfig(dataset="mnist")


def write_cifar_batches(root, protocol=4, n=20, seed=3):
    """The six batch files in the layout of the real ones (a dict of bytes keys, a uint8 array, lists)."""
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in (np.arange(n) % 10)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)


class _WritesMarker:
    """Unpickling this runs code: it writes a marker file (what a hostile batch would do, harmlessly)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_cifar10_batches_of_every_pickle_protocol_load(tmp_path, protocol):
    write_cifar_batches(tmp_path, protocol)
    data = load_cifar10(str(tmp_path), query_per_class=1, train_per_class=1)
    assert len(data.query) + len(data.database) == 6 * 20
    assert data.query.images.dtype == torch.uint8 and data.query.images.shape[1:] == (3, 32, 32)


def test_cifar10_batch_written_by_numpy_1_loads(tmp_path):
    # numpy 1.x pickles name numpy.core.multiarray where numpy 2.x names numpy._core.multiarray.
    write_cifar_batches(tmp_path, protocol=2)
    blob = (tmp_path / "test_batch").read_bytes()
    assert b"numpy._core.multiarray\n" in blob
    (tmp_path / "test_batch").write_bytes(blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert len(load_cifar10(str(tmp_path), query_per_class=1, train_per_class=1).database) == 6 * 20 - 10


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_cifar10_batch_that_runs_code_is_refused(tmp_path, protocol):
    write_cifar_batches(tmp_path)
    marker = tmp_path / "payload-ran"
    with open(tmp_path / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": _WritesMarker(marker), b"labels": [0]}, fh, protocol=protocol)
    with pytest.raises(ValueError, match=r"data_batch_3 is not a CIFAR-10 batch: .*references (posix|os)\.system"):
        load_cifar10(str(tmp_path))
    assert not marker.exists()


def test_cifar10_batch_errors_name_the_file(tmp_path):
    write_cifar_batches(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="data_batch_2 is not a CIFAR-10 batch"):
        load_cifar10(str(tmp_path))
    with open(tmp_path / "data_batch_2", "wb") as fh:
        pickle.dump([1, 2, 3], fh)
    with pytest.raises(ValueError, match=r"data_batch_2 is not a CIFAR-10 batch: expected a dict with b'data'"):
        load_cifar10(str(tmp_path))
    with open(tmp_path / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2, 3]}, fh)
    with pytest.raises(ValueError, match="data_batch_2 is not a CIFAR-10 batch: expected a list of n labels"):
        load_cifar10(str(tmp_path))


@pytest.mark.skipif(not all(os.path.isfile(os.path.join(FASHION_MNIST_ROOT, f)) for f in FASHION_MNIST_FILES),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_validation_split_never_touches_the_test_images():
    full = load_fashion_mnist()
    val = load_fashion_mnist(validation=True)
    assert (len(val.query), len(val.database), len(val.train)) == (5000, 55000, 55000)
    assert val.name == "fashion_mnist_validation"

    def rows(images, labels):
        return sorted(bytes(r) + bytes([int(y)]) for r, y in zip(images.flatten(1).numpy(), labels.numpy()))

    # Queries and database split the 60,000 train images (with their labels) in two.
    split = rows(torch.cat([val.query.images, val.database.images]), torch.cat([val.query.labels, val.database.labels]))
    assert split == rows(full.database.images, full.database.labels)
    assert torch.equal(val.train.images, val.database.images)
    # The same split for every seed: the queries never move.
    assert torch.equal(load_fashion_mnist(validation=True, seed=5).query.images, val.query.images)
