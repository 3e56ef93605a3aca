"""The public Python API as a user calls it: train on a folder, a tensor or a Dataset (with or without
labels), a custom backbone and transform, load_model + encode (equal to ``cibhash encode``), the
weights-only export, torch.export and torch.compile of a training step."""

from __future__ import annotations

import json
import logging
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cibhash_ext as ch
from cibhash_ext import HammingIndex, encode, load_model, train
from cibhash_ext.cli import main as cibhash

PUBLIC = ("pack_bits", "unpack_bits", "stochastic_binarize", "hamming_distance", "hamming_topk", "hamming_radius",
          "StochasticBinaryLayer", "CIBHashLoss", "CIBHashModel", "TrainConfig", "train", "load_model", "encode",
          "HammingIndex", "ShardedHammingIndex", "MIHIndex", "IDSelectorRange", "IDSelectorBatch", "hamming_topk_filtered",
          "hamming_radius_filtered")
TINY = dict(backbone="convnet", epochs=2, batch_size=16, code_lengths=(16, 32), hidden=64, convnet_widths=(8, 16, 16), convnet_fc=64,
            augment={"size": 16}, progress=False, threads=1, baselines=("itq",), eval_curves=False)


def _planted_images(n: int, size: int = 24, seed: int = 0) -> np.ndarray:
    """n RGB images [n, size, size, 3] uint8: noise plus a bright square at one of four places."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 70, (n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        y, x = [(2, 2), (2, 12), (12, 2), (12, 12)][i % 4]
        images[i, y : y + 10, x : x + 10] = 220
    return images


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """64 PNG files in nested folders, plus one corrupt file and one empty file."""
    root = tmp_path_factory.mktemp("photos")
    for i, img in enumerate(_planted_images(64)):
        sub = root / f"part{i % 3}" / ("deep" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(sub / f"img{i:02d}.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def folder_run(folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "photos"
    with pytest.warns(UserWarning, match="skipped 2 unreadable image file"):
        result = train(data=str(folder), run_dir=run, **{**TINY, "epochs": 12})
    return run, result


def test_the_public_names_are_importable_from_the_top_level():
    for name in PUBLIC:
        assert name in ch.__all__ and getattr(ch, name) is not None


def test_a_folder_of_unlabelled_images_trains_and_reports_diagnostics(folder_run):
    run, (run_dir, metrics) = folder_run
    assert run_dir == str(run)
    assert metrics["labels"] is False and metrics["dataset"] == "folder"
    assert (metrics["queries"], metrics["database"]) == (6, 64)  # 10 % held out; the database holds all 64
    for method in ("cibhash", "itq"):
        for length in ("16", "32"):
            entry = metrics[method][length]
            assert set(entry["copy_recall"]) == {"1", "10"} and 0 <= entry["copy_recall"]["1"] <= 1
            assert len(entry["codes"]["bit_balance"]) == int(length)
    report = (run / "report.md").read_text()
    assert "Augmented-copy retrieval" in report and "mAP" not in report
    for name in ("config.json", "checkpoint.pt", "model.pt", "metrics.json", "report.md", "retrieval.png",
                 "nn_distance.png", "bit_balance.png", "train.log"):
        assert (run / name).is_file(), name
    stored = json.loads((run / "config.json").read_text())
    assert (stored["dataset"], stored["backbone"], stored["resolved"]["input_shape"]) == ("folder", "convnet", [3, 16, 16])


def test_an_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images under"):
        train(data=str(tmp_path / "empty"), run_dir=tmp_path / "run", **TINY)
    assert not (tmp_path / "run").exists()


def test_load_model_and_encode_match_the_cli(folder_run, folder, tmp_path):
    run, _ = folder_run
    model = load_model(run)
    assert not model.module.training and callable(model.transform) and model.code_lengths == (16, 32)
    files = sorted(str(p) for p in folder.rglob("img*.png"))[:5]
    out = tmp_path / "codes.npz"
    assert cibhash(["encode", str(run), *files, "--out", str(out), "--no-progress"]) == 0
    cli_codes = np.load(out)
    from_paths = encode(model, files)
    assert set(from_paths) == {16, 32}
    assert np.array_equal(from_paths[32].numpy(), cli_codes["codes_32"])
    pil_images = [Image.open(f) for f in files]
    assert torch.equal(encode(model, pil_images, nbits=16), from_paths[16])
    tensor = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
    assert encode(model, tensor, nbits=32).shape == (5, 4)
    with pytest.raises(ValueError, match="one of the model's code lengths"):
        encode(model, files, nbits=64)


def test_weights_only_export_and_torch_export(folder_run):
    run, _ = folder_run
    state = torch.load(run / "model.pt", weights_only=True)
    assert {"format", "config", "input_shape", "state_dict", "sha256"} <= set(state)
    model = load_model(run)
    program = ch.export_encoder(model)
    x = torch.randn(5, *model.input_shape)
    exported = program.module()(x)
    with torch.no_grad():
        eager = model.module.encode(x)
    assert [t.shape for t in exported] == [(5, 2), (5, 4)]
    assert all(torch.equal(e, eager[v]) for e, v in zip(exported, model.code_lengths))


class _Backbone(nn.Module):
    """A backbone with no out_features: its width comes from a dry run."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(24))

    def forward(self, x):
        return self.net(x)


def test_tensor_data_with_a_custom_backbone(tmp_path):
    images = torch.from_numpy(_planted_images(80, 16)[..., :1]).permute(0, 3, 1, 2).contiguous()
    backbone = _Backbone()
    run_dir, metrics = train(data=images, model=backbone, run_dir=tmp_path / "run",
                            **{**TINY, "augment": {}, "augment_preset": "small_grayscale"})
    assert metrics["labels"] is False and metrics["dataset"] == "tensor"
    model = load_model(run_dir, backbone=_Backbone())
    assert model.module.heads["16"].net[0].in_features == 24
    with pytest.raises(ValueError, match="custom backbone"):
        load_model(run_dir)


def test_grayscale_tensor_data_with_a_custom_backbone_evaluates_with_the_pixel_baselines(tmp_path):
    """1-channel images under a custom backbone get the RGB (paper) augmentation by default; the
    augmented copies of the held-out images keep the images' one channel, so LSH and ITQ on pixels
    encode the copies as they were fitted (784 values each), and CIBHash finds the originals."""
    images = torch.from_numpy(_planted_images(60, 28)[..., :1]).permute(0, 3, 1, 2).contiguous()
    backbone = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 16))
    run_dir, metrics = train(data=images, model=backbone, run_dir=tmp_path / "run",
                             **{**TINY, "augment": {}, "epochs": 1, "code_lengths": (16,), "baselines": ("lsh", "itq")})
    assert metrics["labels"] is False and metrics["queries"] == 6 and metrics["database"] == 60
    assert {"cibhash", "lsh", "itq"} <= set(metrics) and 0 <= metrics["itq"]["16"]["copy_recall"]["1"] <= 1
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["resolved"]["input_shape"] == [3, 28, 28]


class _Labelled(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.images = _planted_images(60, 20)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return Image.fromarray(self.images[i]), i % 4


def test_a_labelled_dataset_and_an_own_two_view_transform(tmp_path):
    from torchvision import transforms as T

    calls = []
    view = T.Compose([T.RandomResizedCrop(16, scale=(0.6, 1.0)), T.ToTensor(),
                      T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def two_views(image):  # lightly's convention: one image in, its two views out
        calls.append(image.size)
        return view(image), view(image)

    _, metrics = train(data=_Labelled(), transform=two_views, run_dir=tmp_path / "run", **TINY)
    assert calls and metrics.get("labels", True) is True
    assert "map" in metrics["cibhash"]["16"] and metrics["queries"] == 6 and metrics["database"] == 54
    assert metrics["itq"]["16"]["map"] > 0.5  # the planted squares are easy for ITQ on pixels


def test_a_library_call_installs_no_console_handler(folder_run):
    # The run's train.log handler is removed when train() returns; a console one is never added.
    assert not [h for h in logging.getLogger("cibhash_ext").handlers if isinstance(h, logging.StreamHandler)]


def test_config_as_a_dict_a_file_and_overrides(tmp_path, folder):
    from cibhash_ext.config import load_config

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"epochs": 7, "code_lengths": [8]}))
    assert load_config(str(path), lr=0.01).epochs == 7 and load_config(str(path), lr=0.01).lr == 0.01
    assert load_config({"epochs": 3}).epochs == 3
    with pytest.raises(ValueError, match="'epochs' must be an integer"):
        load_config({"epochs": "3"})
    with pytest.raises(ValueError, match="does not use train_size"):
        load_config(dataset="coco", train_size=1000)


def test_a_compiled_training_step_has_no_graph_break():
    torch.manual_seed(0)
    model = ch.CIBHashModel(nn.Sequential(nn.Flatten(), nn.Linear(64, 32)), (16,), hidden=32, in_features=32)
    loss_fn = ch.CIBHashLoss(temperature=0.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(view1, view2):
        z1, z2 = model(view1)[16], model(view2)[16]
        loss = loss_fn(model.binarize(z1), model.binarize(z2), z1, z2)
        loss.backward()
        return loss.detach()

    compiled = torch.compile(step, fullgraph=True)
    x1, x2 = torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8)
    # The backward inside the graph too: torch 2.14 traces Tensor.backward() with this switch.
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        loss = compiled(x1, x2)
    grads = [p.grad.clone() for p in model.parameters()]
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    opt.step()


def test_index_search_returns_the_query_image_itself_first(folder_run, folder, tmp_path, capsys):
    run, _ = folder_run
    index_path = tmp_path / "photos.idx"
    assert cibhash(["index", "build", "--run", str(run), str(folder), "-o", str(index_path), "--no-progress"]) == 0
    warning = capsys.readouterr().err
    assert warning.startswith("cibhash index build: warning: skipped 2 unreadable image file(s):")
    assert warning.count("\n") == 1 and "corrupt.jpg" in warning and "empty.png" in warning
    index = HammingIndex.load(str(index_path))
    files = json.loads((tmp_path / "photos.idx.names.json").read_text())["names"]
    assert len(files) == 64  # the two unreadable files are not indexed
    model = load_model(run)
    unique = 0
    for f in files[:10]:
        out = tmp_path / "q.npz"
        assert cibhash(["encode", str(run), f, "--out", str(out), "--no-progress"]) == 0
        capsys.readouterr()
        assert cibhash(["search", str(index_path), str(out), "--key", "codes_32", "-k", "3", "--names",
                        "--format", "json"]) == 0
        found = json.loads(capsys.readouterr().out)["results"][0]
        assert found["distances"][0] == 0
        same = int((index.search(encode(model, [f], nbits=32), 64)[0] == 0).sum())
        if same == 1:  # a code no other image shares: the image itself comes first
            unique += 1
            assert found["names"][0] == f
    assert unique >= 1


def test_rgb_tensor_data_with_the_paper_augmentation_trains_at_its_own_size(tmp_path):
    # RGB in memory with hue jitter: the PIL pipeline, at the images' own 20x20 (CIFAR-10's path).
    images = torch.from_numpy(_planted_images(48, 20)).permute(0, 3, 1, 2).contiguous()
    _, metrics = train(data=images, run_dir=tmp_path / "run", **{**TINY, "augment": {}})
    assert json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]["input_shape"] == [3, 20, 20]
    assert metrics["labels"] is False and "16" in metrics["cibhash"]
