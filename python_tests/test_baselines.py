"""Sanity tests of the LSH and ITQ baselines."""

import numpy as np
import pytest
import torch

from cibhash_ext.baselines import ITQ, LSH
from cibhash_ext.evaluation import mean_average_precision


def clusters(n_per=60, classes=6, dim=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 4
    labels = torch.arange(classes).repeat_interleave(n_per)
    x = centres[labels] + torch.randn(len(labels), dim, generator=g)
    return x, labels


def test_lsh_is_sign_of_random_projection_and_seeded():
    x, _ = clusters()
    a, b = LSH(24, seed=3).fit(x), LSH(24, seed=3).fit(x)
    assert torch.equal(a.encode(x), b.encode(x))
    bits = ((x.double() - x.double().mean(0)) @ a.projection > 0).numpy()
    assert np.array_equal(a.encode(x).numpy(), np.packbits(bits, axis=1, bitorder="little"))
    assert not torch.equal(a.encode(x), LSH(24, seed=4).fit(x).encode(x))


def test_itq_rotation_is_orthogonal_and_loss_decreases():
    x, _ = clusters()
    itq = ITQ(16, iterations=50).fit(x)
    loss = itq.quantization_loss
    assert len(loss) == 50
    assert all(b <= a + 1e-6 * abs(a) for a, b in zip(loss, loss[1:]))
    assert loss[-1] < loss[0] * 0.98
    # projection = PCA basis @ rotation: its columns stay orthonormal.
    gram = itq.projection.t() @ itq.projection
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=1e-8, rtol=0)


def test_itq_retrieves_clusters_better_than_lsh_and_chance():
    x, labels = clusters()
    scores = {}
    for name, hasher in (("itq", ITQ(16)), ("lsh", LSH(16))):
        codes = hasher.fit(x).encode(x)
        scores[name] = mean_average_precision(codes, codes, labels, labels, 60)
    assert scores["itq"] > 0.9
    assert scores["itq"] > scores["lsh"]
    assert scores["lsh"] > 0.3  # chance is about 1/6


def test_errors():
    with pytest.raises(ValueError, match="nbits"):
        ITQ(0)
    with pytest.raises(ValueError, match="nbits <= feature dimension"):
        ITQ(64).fit(torch.randn(100, 10))
    with pytest.raises(RuntimeError, match="before fit"):
        LSH(8).encode(torch.randn(3, 4))
    with pytest.raises(ValueError, match="features"):
        LSH(8).fit(torch.randn(10, 4)).encode(torch.randn(3, 5))


def test_itq_pca_from_gram_matrix_when_rows_are_few():
    # Fewer rows than features: the principal directions come from the Gram matrix; they must agree
    # (up to sign) with the covariance route, i.e. be orthonormal and span the same subspace.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 200, generator=g, dtype=torch.float64) @ torch.randn(200, 200, generator=g, dtype=torch.float64)
    itq = ITQ(8, iterations=0).fit(x)
    xc = x - x.mean(0)
    eigvals, eigvecs = torch.linalg.eigh(xc.t() @ xc)
    top = eigvecs[:, eigvals.argsort(descending=True)[:8]]
    torch.testing.assert_close(itq.projection.t() @ itq.projection, torch.eye(8, dtype=torch.float64), atol=1e-8, rtol=0)
    torch.testing.assert_close(top @ top.t() @ itq.projection, itq.projection, atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match="rank"):
        ITQ(40).fit(torch.randn(30, 200))
