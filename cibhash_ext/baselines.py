"""Classical hashing baselines for every report: LSH (random projections) and ITQ (Gong & Lazebnik,
"Iterative Quantization", CVPR 2011: PCA, then a rotation that minimises the quantisation loss).

Both take feature matrices (e.g. flattened pixels), fit on training rows and return packed codes
in the layout of :func:`cibhash_ext.ops.pack_bits`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cibhash_ext import ops

__all__ = ["LSH", "ITQ"]


def _as_matrix(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have a row per item [N, ...], got shape {tuple(x.shape)}")
    return x.reshape(len(x), -1).double()


def _principal_directions(xc: Tensor, k: int) -> Tensor:
    """Top-k principal directions [D, k] of centred rows, from the smaller of the D x D covariance and
    the N x N Gram matrix (few images of many pixels: the Gram matrix is far cheaper)."""
    n, d = xc.shape
    if n >= d:
        eigvals, eigvecs = torch.linalg.eigh(xc.t() @ xc)
        return eigvecs[:, eigvals.argsort(descending=True)[:k]]
    eigvals, eigvecs = torch.linalg.eigh(xc @ xc.t())
    order = eigvals.argsort(descending=True)[:k]
    if k > n or eigvals[order].min() <= 1e-9 * eigvals.max().clamp(min=1e-300):
        raise ValueError(f"ITQ needs nbits <= the rank of the training data, got nbits={k} for {n} rows")
    return xc.t() @ eigvecs[:, order] / eigvals[order].sqrt()


class _Hasher:
    nbits: int
    mean: Tensor | None = None
    projection: Tensor | None = None

    def encode(self, x: Tensor, chunk: int = 8192) -> Tensor:
        """Packed codes of the rows of ``x``.

        Args:
            x (Tensor[N, ...], any real dtype): features, flattened per row.
            chunk (int): rows per matrix product.

        Returns:
            Tensor[N, ceil(nbits / 8)], uint8.
        """
        if self.projection is None:
            raise RuntimeError(f"{type(self).__name__}.encode called before fit")
        if x.reshape(len(x), -1).shape[1] != self.projection.shape[0]:
            raise ValueError(f"x has {x.reshape(len(x), -1).shape[1]} features, fit saw {self.projection.shape[0]}")
        parts = [ops.pack_bits((_as_matrix(x[i : i + chunk], "x") - self.mean) @ self.projection) for i in range(0, len(x), chunk)]
        return torch.cat(parts) if parts else torch.zeros(0, (self.nbits + 7) // 8, dtype=torch.uint8)


class LSH(_Hasher):
    """Sign random projections of centred features: bit j = 1[(x - mean) . w_j > 0], w_j ~ N(0, I).

    Args:
        nbits (int): code length.
        seed (int): seed of the projections.
    """

    def __init__(self, nbits: int, seed: int = 0) -> None:
        if nbits <= 0:
            raise ValueError(f"nbits must be > 0, got {nbits}")
        self.nbits = nbits
        self.seed = seed

    def fit(self, x: Tensor) -> "LSH":
        """Centres on the rows of ``x`` (Tensor[N, ...]) and draws the projections."""
        x = _as_matrix(x, "x")
        self.mean = x.mean(dim=0)
        g = torch.Generator().manual_seed(self.seed)
        self.projection = torch.randn(x.shape[1], self.nbits, generator=g, dtype=torch.float64)
        return self


class ITQ(_Hasher):
    """Iterative quantisation: PCA to ``nbits`` dimensions, then ``iterations`` alternating steps of
    B = sign(V R) and the orthogonal Procrustes rotation R maximising tr(B^T V R).

    Args:
        nbits (int): code length (at most the feature dimension).
        iterations (int): rotation updates (50 in the paper).
        seed (int): seed of the initial random rotation.
    """

    def __init__(self, nbits: int, iterations: int = 50, seed: int = 0) -> None:
        if nbits <= 0:
            raise ValueError(f"nbits must be > 0, got {nbits}")
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        self.nbits = nbits
        self.iterations = iterations
        self.seed = seed
        self.quantization_loss: list[float] = []

    def fit(self, x: Tensor) -> "ITQ":
        """Fits PCA and the rotation on the rows of ``x`` (Tensor[N, ...]); records the loss per iteration."""
        x = _as_matrix(x, "x")
        if self.nbits > x.shape[1]:
            raise ValueError(f"ITQ needs nbits <= feature dimension, got nbits={self.nbits} for {x.shape[1]} features")
        self.mean = x.mean(dim=0)
        xc = x - self.mean
        pca = _principal_directions(xc, self.nbits)
        v = xc @ pca
        g = torch.Generator().manual_seed(self.seed)
        rotation, _ = torch.linalg.qr(torch.randn(self.nbits, self.nbits, generator=g, dtype=torch.float64))
        self.quantization_loss = []
        for _ in range(self.iterations):
            projected = v @ rotation
            b = torch.where(projected >= 0, 1.0, -1.0).double()
            self.quantization_loss.append(float(((b - projected) ** 2).sum()))
            u, _, wt = torch.linalg.svd(v.t() @ b)
            rotation = u @ wt
        self.projection = pca @ rotation
        return self
