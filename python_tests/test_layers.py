"""Tests of cibhash_ext.layers: the stochastic binary layer and its straight-through gradient."""

import pytest
import torch

from cibhash_ext.layers import StochasticBinaryLayer
from cibhash_ext.losses import CIBHashLoss
from cibhash_ext.models import HashHead


def test_eval_and_deterministic_variant_threshold_at_zero():
    z = torch.tensor([[-2.0, -1e-6, 0.0, 1e-6, 3.0]])
    expected = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]])
    layer = StochasticBinaryLayer().eval()
    assert torch.equal(layer(z), expected)
    deterministic = StochasticBinaryLayer(stochastic=False).train()
    assert torch.equal(deterministic(z), expected)


def test_training_draws_bernoulli_bits_reproducibly():
    layer = StochasticBinaryLayer().train()
    z = torch.full((20000,), 0.8473)  # sigmoid = 0.7
    b1 = layer(z, generator=torch.Generator().manual_seed(5))
    b2 = layer(z, generator=torch.Generator().manual_seed(5))
    assert torch.equal(b1, b2)
    assert set(b1.unique().tolist()) == {0.0, 1.0}
    assert b1.mean().item() == pytest.approx(0.7, abs=0.015)


def test_straight_through_gradient_reaches_the_head():
    torch.manual_seed(0)
    head = HashHead(12, 16, hidden=32)
    layer = StochasticBinaryLayer().train()
    x = torch.randn(6, 12)
    z = head(x)
    z.retain_grad()
    weights = torch.randn(6, 16)
    (layer(z) * weights).sum().backward()
    p = torch.sigmoid(z.detach())
    torch.testing.assert_close(z.grad, weights * p * (1 - p))
    for name, param in head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_gradient_of_the_full_loss_flows_into_every_head_parameter():
    torch.manual_seed(1)
    head = HashHead(10, 32, hidden=16)
    layer = StochasticBinaryLayer().train()
    x1, x2 = torch.randn(8, 10), torch.randn(8, 10)
    z1, z2 = head(x1), head(x2)
    loss = CIBHashLoss(beta=0.0)(layer(z1), layer(z2), z1, z2)  # beta 0: the gradient is the contrastive term's only
    loss.backward()
    for name, param in head.named_parameters():
        assert param.grad.abs().sum() > 0, name


def test_settings_and_errors():
    assert "stochastic=False" in repr(StochasticBinaryLayer(stochastic=False))
    with pytest.raises(TypeError, match="stochastic"):
        StochasticBinaryLayer(stochastic="yes")
