"""cibhash_ext: unsupervised binary hash codes (CIBHash) with fused C++/CUDA kernels for the
stochastic binary layer and exact Hamming search on bit-packed codes.

The user-facing names: the ops (``pack_bits`` ... ``hamming_radius``), the layer, loss and model
(``StochasticBinaryLayer``, ``CIBHashLoss``, ``CIBHashModel``), training (``TrainConfig``, ``train``),
inference (``load_model``, ``encode``) and search (``HammingIndex`` with
``IDSelectorRange`` / ``IDSelectorBatch`` filters, ``MIHIndex``, ``ShardedHammingIndex``).
"""

from .config import TrainConfig
from .encode import Encoder, encode, export_encoder, load_model
from .index import HammingIndex, IDSelectorBatch, IDSelectorRange
from .layers import StochasticBinaryLayer
from .losses import CIBHashLoss
from .mih import MIHIndex
from .models import CIBHashModel
from .ops import (
    hamming_distance,
    hamming_radius,
    hamming_radius_filtered,
    hamming_topk,
    hamming_topk_filtered,
    pack_bits,
    stochastic_binarize,
    unpack_bits,
)
from .sharded_index import ShardedHammingIndex
from .training import TrainResult, train

__all__ = [
    "pack_bits",
    "unpack_bits",
    "stochastic_binarize",
    "hamming_distance",
    "hamming_topk",
    "hamming_radius",
    "hamming_topk_filtered",
    "hamming_radius_filtered",
    "StochasticBinaryLayer",
    "CIBHashLoss",
    "CIBHashModel",
    "TrainConfig",
    "TrainResult",
    "train",
    "load_model",
    "Encoder",
    "encode",
    "export_encoder",
    "HammingIndex",
    "IDSelectorRange",
    "IDSelectorBatch",
    "MIHIndex",
    "ShardedHammingIndex",
]
__version__ = "0.1.0"
