"""cibhash_ext: unsupervised binary hash codes (CIBHash) with fused C++/CUDA kernels for the
stochastic binary layer and exact Hamming search on bit-packed codes."""

from .index import HammingIndex
from .ops import hamming_distance, hamming_radius, hamming_topk, pack_bits, stochastic_binarize, unpack_bits
from .sharded_index import ShardedHammingIndex

__all__ = [
    "pack_bits",
    "unpack_bits",
    "stochastic_binarize",
    "hamming_distance",
    "hamming_topk",
    "hamming_radius",
    "HammingIndex",
    "ShardedHammingIndex",
]
__version__ = "0.1.0"
