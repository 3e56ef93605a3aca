"""Neural-network layers of CIBHash: the stochastic binary layer that turns hash logits into codes.

The functional form is :func:`cibhash_ext.ops.stochastic_binarize` (C++/CUDA kernel with a
straight-through gradient); this module stores its settings and calls it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cibhash_ext import ops

__all__ = ["StochasticBinaryLayer"]


class StochasticBinaryLayer(nn.Module):
    """Binarises logits into {0, 1} codes, stochastically while training.

    In training mode with ``stochastic=True`` each bit is drawn as ``b ~ Bernoulli(sigmoid(z))``
    (Qiu et al., "Unsupervised Hashing with Contrastive Information Bottleneck", IJCAI 2021,
    Sec. 3.2); in evaluation mode, or with ``stochastic=False`` (the public CIBHash code's
    deterministic variant), ``b = 1[z > 0]``. Either way the backward pass is the straight-through
    estimator ``grad * p * (1 - p)`` with ``p = sigmoid(z)``.

    Args:
        stochastic (bool): sample the bits while training. Evaluation is always deterministic.
    """

    def __init__(self, stochastic: bool = True) -> None:
        super().__init__()
        if not isinstance(stochastic, bool):
            raise TypeError(f"stochastic must be a bool, got {type(stochastic).__name__}")
        self.stochastic = stochastic

    def forward(self, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Binarises ``logits``.

        Args:
            logits (Tensor[..., L], floating): hash logits z.
            generator (torch.Generator, optional): source of the Bernoulli draws.

        Returns:
            Tensor[..., L] in the dtype of ``logits``: codes in {0, 1}.
        """
        return ops.stochastic_binarize(logits, stochastic=self.stochastic and self.training, generator=generator)

    def extra_repr(self) -> str:
        return f"stochastic={self.stochastic}"
