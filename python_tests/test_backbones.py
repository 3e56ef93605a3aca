"""torchvision and timm backbones by name: preprocessing from the model's meta, the head removed,
weights from a local file (random weights saved to tmp_path: nothing is downloaded), frozen or
fine-tuned training, the feature cache, and a run that reloads without the weights file."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cibhash_ext import encode, load_model, train
from cibhash_ext.backbones import HubBackbone, Preprocessing, hub_backbone, preprocessing
from cibhash_ext.cli import main as cibhash
from cibhash_ext.config import TrainConfig
from cibhash_ext.models import FrozenBackbone

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TINY = dict(epochs=1, batch_size=8, code_lengths=(16,), hidden=32, augment={"size": 32}, progress=False, threads=1,
            baselines=(), eval_curves=False)


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    """A torchvision resnet18 state dict (random weights, classifier included, as torchvision's files)."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """24 small RGB PNG files."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


def test_the_preprocessing_comes_from_the_models_meta():
    assert preprocessing("torchvision:resnet18") == Preprocessing(224, *IMAGENET, "bilinear")
    assert preprocessing("torchvision:efficientnet_b3") == Preprocessing(300, *IMAGENET, "bicubic")
    aug = TrainConfig(dataset="folder", backbone="torchvision:efficientnet_b3").augment_config(3, in_memory=False)
    assert (aug.size, aug.mean, aug.std, aug.interpolation) == (300, *IMAGENET, "bicubic")
    # A grayscale dataset: the model still sees RGB at its own normalisation; ``augment`` overrides the size.
    aug = TrainConfig(dataset="tensor", backbone="torchvision:resnet18", augment={"size": 32}).augment_config(1)
    assert (aug.size, aug.mean, aug.std, aug.interpolation) == (32, *IMAGENET, "bilinear")


def test_a_bad_name_is_a_one_line_error_naming_what_is_expected():
    with pytest.raises(ValueError, match=r"torchvision:NAME needs NAME among the \d+ classification models of "
                       r"torchvision.models.list_models\(\) .*got 'resnet_nope'") as info:
        TrainConfig(backbone="torchvision:resnet_nope")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="backbone must be one of auto, convnet, .*torchvision:NAME or timm:NAME, "
                       "got 'resnet18'"):
        TrainConfig(backbone="resnet18")
    with pytest.raises(ValueError, match="backbone_frozen applies to torchvision:NAME and timm:NAME backbones only"):
        TrainConfig(backbone="convnet", backbone_frozen=True)
    with pytest.raises(ValueError, match="feature_cache .* frozen backbone .*torchvision:resnet18 \\(not frozen\\)"):
        TrainConfig(backbone="torchvision:resnet18", feature_cache=2)


def test_the_command_line_takes_a_named_backbone_and_refuses_a_bad_one(capsys):
    assert cibhash(["train", "--backbone", "torchvision:nope", "--dataset", "folder", "--data-root", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "got 'nope'" in err and len(err.splitlines()) == 1
    assert "torchvision:NAME" in TrainConfig.__doc__ and "backbone_frozen" in TrainConfig.__doc__


def test_the_head_is_removed_and_the_weights_come_from_the_file(resnet18_weights):
    import torchvision

    net = hub_backbone("torchvision:resnet18", resnet18_weights)
    reference = torchvision.models.resnet18()
    reference.load_state_dict(torch.load(resnet18_weights, weights_only=True))
    reference.fc = torch.nn.Identity()
    net.eval(), reference.eval()
    x = torch.randn(2, 3, 32, 32)
    assert net.out_features == 512
    torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)
    # Grayscale batches are repeated to RGB; the last Linear of a Sequential classifier goes too.
    torch.testing.assert_close(net(x[:, :1]), reference(x[:, :1].expand(-1, 3, -1, -1)), rtol=0, atol=0)
    with pytest.warns(UserWarning, match="no weights file given .* random weights"):
        small = hub_backbone("torchvision:mobilenet_v3_small")
    assert small.eval()(x).shape == (2, 1024) and small.out_features == 1024
    with pytest.raises(ValueError, match="is not a state dict of this model"):
        hub_backbone("torchvision:mobilenet_v3_small", resnet18_weights)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hub_backbone("torchvision:resnet18", resnet18_weights.parent / "missing.pth")


@pytest.mark.parametrize("frozen", [True, False])
def test_a_run_trains_frozen_or_fine_tuned_and_reloads_without_the_weights_file(photos, resnet18_weights, tmp_path,
                                                                               frozen):
    weights = tmp_path / "copy.pth"
    weights.write_bytes(resnet18_weights.read_bytes())
    run_dir, metrics = train(data=str(photos), run_dir=tmp_path / "run", backbone="torchvision:resnet18",
                             backbone_weights=str(weights), backbone_frozen=None if frozen else False, **TINY)
    assert metrics["labels"] is False and len(metrics["train"]["history"]) == 1
    os.remove(weights)  # the run's model.pt holds the backbone's weights
    model = load_model(run_dir)
    backbone = model.module.backbone
    assert isinstance(backbone, FrozenBackbone) == frozen and model.input_shape == (3, 32, 32)
    net = backbone.module if frozen else backbone
    assert isinstance(net, HubBackbone)
    stored = torch.load(resnet18_weights, weights_only=True)
    same = torch.equal(net.net.conv1.weight, stored["conv1.weight"])
    assert same == frozen  # frozen: the file's weights; fine-tuned: trained away from them
    files = sorted(str(p) for p in photos.iterdir())[:5]
    again = load_model(run_dir)
    torch.testing.assert_close(encode(model, files, nbits=16), encode(again, files, nbits=16), rtol=0, atol=0)


def test_a_frozen_named_backbone_trains_on_its_feature_cache(photos, resnet18_weights, tmp_path):
    run_dir, metrics = train(data=str(photos), run_dir=tmp_path / "run", backbone="torchvision:resnet18",
                             backbone_weights=str(resnet18_weights), feature_cache=2, evaluate=False, **TINY)
    assert "feature cache: 2 views of each training image" in (tmp_path / "run" / "train.log").read_text()
    assert np.isfinite(metrics["train"]["history"][0]["loss"])


def test_a_timm_backbone_without_timm_installed_is_a_one_line_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ValueError, match=r"backbone timm:NAME needs the timm package, which is not installed "
                       r"\(pip install timm"):
        TrainConfig(backbone="timm:resnet18")


def test_a_timm_backbone_by_name():
    timm = pytest.importorskip("timm", reason="timm is optional and not installed")
    assert preprocessing("timm:test_resnet") == Preprocessing(160, (0.5,) * 3, (0.5,) * 3, "bilinear")
    assert preprocessing("timm:resnet18") == Preprocessing(224, *IMAGENET, "bicubic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = hub_backbone("timm:test_resnet").eval()
    reference = timm.create_model("test_resnet", num_classes=0).eval()
    reference.load_state_dict(net.net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, net.out_features) and net.out_features == reference.num_features
    torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="timm:NAME needs NAME among timm.list_models.*got 'nope'"):
        TrainConfig(backbone="timm:nope")
