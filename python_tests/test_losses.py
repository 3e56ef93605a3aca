"""Tests of cibhash_ext.losses against an independent NumPy transcription of the paper's formulas."""

import numpy as np
import pytest
import torch

from cibhash_ext.losses import (
    CIBHashLoss,
    bernoulli_kl_logits,
    bit_balance_penalty,
    nt_xent_codes,
    nt_xent_features,
    symmetric_kl_stop_gradient,
)


def np_nt_xent(b1: np.ndarray, b2: np.ndarray, tau: float) -> float:
    """NT-Xent written loop by loop: cosine of +-1 codes, positive = other view, 2N - 2 negatives."""
    s = np.concatenate([2.0 * b1 - 1, 2.0 * b2 - 1]).astype(np.float64)
    n2, length = s.shape
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        sims = np.array([s[i] @ s[k] / length / tau for k in range(n2) if k != i])
        total += -(s[i] @ s[pos] / length / tau) + np.log(np.exp(sims).sum())
    return total / n2


def np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))).sum(axis=1)


def np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def np_sym_kl(z1, z2):
    p1, p2 = np_sigmoid(z1), np_sigmoid(z2)
    return 0.5 * (np_kl(p1, p2).mean() + np_kl(p2, p1).mean())


@pytest.mark.parametrize("n,length,tau", [(2, 16, 0.3), (5, 7, 0.3), (8, 64, 0.5), (3, 32, 1.0)])
def test_nt_xent_matches_numpy(n, length, tau):
    g = torch.Generator().manual_seed(n * 100 + length)
    b1 = torch.randint(0, 2, (n, length), generator=g).float()
    b2 = torch.randint(0, 2, (n, length), generator=g).float()
    got = nt_xent_codes(b1, b2, tau).item()
    assert got == pytest.approx(np_nt_xent(b1.numpy(), b2.numpy(), tau), rel=1e-5)


def test_nt_xent_identical_views_lower_than_random_views():
    g = torch.Generator().manual_seed(0)
    b1 = torch.randint(0, 2, (16, 32), generator=g).float()
    same = nt_xent_codes(b1, b1.clone()).item()
    other = nt_xent_codes(b1, torch.randint(0, 2, (16, 32), generator=g).float()).item()
    assert same < other - 1.0


def test_symmetric_kl_matches_numpy_and_is_zero_for_equal_views():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 16, generator=g, dtype=torch.float64), torch.randn(6, 16, generator=g, dtype=torch.float64)
    got = symmetric_kl_stop_gradient(z1, z2).item()
    assert got == pytest.approx(np_sym_kl(z1.numpy(), z2.numpy()), rel=1e-5)
    assert got > 0.1
    assert symmetric_kl_stop_gradient(z1, z1.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_public_code_form_matches_numpy_with_eps():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    p1, p2 = np_sigmoid(z1.double().numpy()), np_sigmoid(z2.double().numpy())
    eps = 1e-8

    def kl(p, q):
        return (p * (np.log(p + eps) - np.log(q + eps)) + (1 - p) * (np.log(1 - p + eps) - np.log(1 - q + eps))).sum(1)

    expected = 0.5 * (kl(p1, p2).mean() + kl(p2, p1).mean())
    assert symmetric_kl_stop_gradient(z1, z2, eps=eps).item() == pytest.approx(expected, rel=1e-4)


def test_kl_from_logits_is_finite_when_saturated():
    z1 = torch.tensor([[40.0, -40.0]])
    z2 = torch.tensor([[-40.0, 40.0]])
    kl = bernoulli_kl_logits(z1, z2)
    # Each bit: KL ~ log(1 / sigmoid(-40)) = 40.
    assert torch.isfinite(kl).all() and kl.item() == pytest.approx(80.0, rel=1e-3)


def test_kl_stop_gradient_on_target_side():
    # d/dz1 of 0.5 * [KL(p1 || sg p2) + KL(p2 || sg p1)] is 0.5 * d/dz1 KL(p1 || p2) only: the second
    # term's dependence on z1 is cut. Checked against NumPy central differences of that first term.
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    symmetric_kl_stop_gradient(z1, z2).backward()
    a, b = z1.detach().numpy(), z2.numpy()
    h = 1e-6
    numeric = np.zeros_like(a)
    for idx in np.ndindex(*a.shape):
        up, down = a.copy(), a.copy()
        up[idx] += h
        down[idx] -= h
        f = lambda x: 0.5 * np_kl(np_sigmoid(x), np_sigmoid(b)).mean()  # noqa: E731
        numeric[idx] = (f(up) - f(down)) / (2 * h)
    np.testing.assert_allclose(z1.grad.numpy(), numeric, rtol=1e-5, atol=1e-9)
    full = np.zeros_like(a)
    for idx in np.ndindex(*a.shape):
        up, down = a.copy(), a.copy()
        up[idx] += h
        down[idx] -= h
        full[idx] = (np_sym_kl(up, b) - np_sym_kl(down, b)) / (2 * h)
    assert np.abs(full - numeric).max() > 1e-3  # without the stop-gradient the gradient would differ


def test_cibhash_loss_combines_terms():
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    b1, b2 = (z1 > 0).float(), (z2 > 0).float()
    loss = CIBHashLoss(temperature=0.3, beta=0.5)
    expected = np_nt_xent(b1.numpy(), b2.numpy(), 0.3) + 0.5 * np_sym_kl(z1.double().numpy(), z2.double().numpy())
    assert loss(b1, b2, z1, z2).item() == pytest.approx(expected, rel=1e-5)
    assert "temperature=0.3, beta=0.5" in repr(loss)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: nt_xent_codes(torch.zeros(4, 8), torch.zeros(4, 9)), "same shape"),
        (lambda: nt_xent_codes(torch.zeros(1, 8), torch.zeros(1, 8)), "at least 2"),
        (lambda: nt_xent_codes(torch.zeros(4, 8), torch.zeros(4, 8), 0.0), "temperature"),
        (lambda: nt_xent_codes(torch.zeros(4, 8, dtype=torch.int64), torch.zeros(4, 8, dtype=torch.int64)), "floating"),
        (lambda: CIBHashLoss(beta=-1.0), "beta"),
        (lambda: CIBHashLoss(kl_eps=0.0), "kl_eps"),
    ],
)
def test_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# --- the options from later methods: debiased negatives, a memory bank, bit balance ---


def np_contrastive(b1, b2, tau, bank=None, tau_plus=0.0) -> float:
    """NT-Xent (tau_plus 0) or the debiased loss of Chuang et al. 2020, anchor by anchor."""
    s = np.concatenate([2.0 * b1 - 1, 2.0 * b2 - 1]).astype(np.float64)
    extra = np.zeros((0, s.shape[1])) if bank is None else 2.0 * bank - 1
    n2, length = s.shape
    total = 0.0
    for i in range(n2):
        pos_index = (i + n2 // 2) % n2
        pos = np.exp(s[i] @ s[pos_index] / length / tau)
        negs = [np.exp(s[i] @ s[k] / length / tau) for k in range(n2) if k not in (i, pos_index)]
        negs += [np.exp(s[i] @ e / length / tau) for e in extra]
        m = len(negs)
        if tau_plus == 0:
            ng = sum(negs)
        else:
            ng = max((sum(negs) - tau_plus * m * pos) / (1 - tau_plus), m * np.exp(-1 / tau))
        total += -np.log(pos / (pos + ng))
    return total / n2


@pytest.mark.parametrize("tau_plus", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("with_bank", [False, True])
def test_debiased_loss_and_extra_negatives_match_numpy(tau_plus, with_bank):
    g = torch.Generator().manual_seed(7)
    b1 = torch.randint(0, 2, (6, 24), generator=g).float()
    b2 = b1.clone()
    b2[:, :5] = 1 - b2[:, :5]  # positives close, so the floor and the correction both matter
    bank = torch.randint(0, 2, (9, 24), generator=g).to(torch.uint8) if with_bank else None
    got = nt_xent_codes(b1, b2, 0.2, negatives=bank, debias=tau_plus)
    expected = np_contrastive(b1.numpy(), b2.numpy(), 0.2, None if bank is None else bank.numpy(), tau_plus)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_the_floor_of_the_debiased_estimate_is_reached():
    # Identical views and a large tau+: the corrected negative sum falls below M e^{-1/tau}.
    b = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0], [0, 1, 1, 1]])
    got = nt_xent_codes(b, b.clone(), 0.5, debias=0.9)
    assert got.item() == pytest.approx(np_contrastive(b.numpy(), b.numpy(), 0.5, None, 0.9), rel=1e-6)
    s = 2 * b.numpy() - 1
    pos, negs = np.exp(1 / 0.5), [np.exp(s[0] @ s[k] / 4 / 0.5) for k in (1, 2, 1, 2)]
    assert (sum(negs) - 0.9 * 4 * pos) / 0.1 < 4 * np.exp(-1 / 0.5)  # the floor is what counts here


def test_memory_bank_holds_the_most_recent_codes_and_resumes():
    loss = CIBHashLoss(temperature=0.3, beta=0.0, memory=5)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 2, (3, 8), generator=g).float() for _ in range(3)]
    first = loss(batches[0], batches[0], batches[0], batches[0])
    assert first.item() == pytest.approx(nt_xent_codes(batches[0], batches[0], 0.3).item())  # empty bank
    loss(batches[1], batches[1], batches[1], batches[1])
    assert torch.equal(loss.bank, torch.cat(batches[:2]).to(torch.uint8)[-5:])
    with_bank = loss(batches[2], batches[2], batches[2], batches[2])
    expected = nt_xent_codes(batches[2], batches[2], 0.3, negatives=torch.cat(batches[:2])[-5:])
    assert with_bank.item() == pytest.approx(expected.item())
    restored = CIBHashLoss(temperature=0.3, beta=0.0, memory=5)
    restored.load_state_dict(loss.state_dict())
    assert torch.equal(restored.bank, loss.bank)


def test_bit_balance_penalty():
    balanced = torch.tensor([[1.0, 0], [0, 1]])
    assert bit_balance_penalty(balanced).item() == 0
    assert bit_balance_penalty(torch.ones(4, 3)).item() == pytest.approx(1.0)
    codes = torch.tensor([[1.0, 1], [1, 0], [1, 0], [0, 0]])  # bit means 0.75 and 0.25
    assert bit_balance_penalty(codes).item() == pytest.approx(4 * 0.0625)
    loss = CIBHashLoss(temperature=0.3, beta=0.0, balance=2.0)
    z = torch.zeros(4, 2)
    assert (loss(codes, codes, z, z) - nt_xent_codes(codes, codes, 0.3)).item() == pytest.approx(2 * 0.25)
    with pytest.raises(ValueError, match="balance >= 0"):
        CIBHashLoss(balance=-1.0)


# --- the auxiliary loss on continuous features ---


def np_nt_xent_features(f1: np.ndarray, f2: np.ndarray, tau: float) -> float:
    """SimCLR's NT-Xent written loop by loop: cosine of feature rows, positive = other view."""
    f = np.concatenate([f1, f2]).astype(np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    n2 = len(f)
    total = 0.0
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        sims = np.array([f[i] @ f[k] / tau for k in range(n2) if k != i])
        total += -(f[i] @ f[pos] / tau) + np.log(np.exp(sims).sum())
    return total / n2


@pytest.mark.parametrize("n,dim,tau", [(2, 3, 0.2), (7, 16, 0.5), (12, 128, 0.1)])
def test_feature_nt_xent_matches_numpy_and_ignores_the_scale_of_a_row(n, dim, tau):
    g = torch.Generator().manual_seed(n + dim)
    f1, f2 = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)
    got = nt_xent_features(f1, f2, tau)
    assert got.item() == pytest.approx(np_nt_xent_features(f1.numpy(), f2.numpy(), tau), rel=1e-5)
    scale = torch.rand(n, 1, generator=g) * 10 + 0.1
    assert nt_xent_features(f1 * scale, f2, tau).item() == pytest.approx(got.item(), rel=1e-5)


def test_feature_nt_xent_of_plus_minus_one_rows_is_the_code_loss():
    # Cosines of +-1 rows are the code similarity: the two losses agree on the same pairs.
    g = torch.Generator().manual_seed(3)
    b1 = torch.randint(0, 2, (9, 32), generator=g).float()
    b2 = torch.randint(0, 2, (9, 32), generator=g).float()
    assert nt_xent_features(b1 * 2 - 1, b2 * 2 - 1, 0.2).item() == pytest.approx(nt_xent_codes(b1, b2, 0.2).item(), rel=1e-6)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: nt_xent_features(torch.randn(4, 8), torch.randn(4, 8), 0.0), "temperature"),
        (lambda: nt_xent_features(torch.randn(1, 8), torch.randn(1, 8)), "at least 2"),
        (lambda: nt_xent_features(torch.randn(4, 8), torch.randn(4, 7)), "same shape"),
    ],
)
def test_feature_nt_xent_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
