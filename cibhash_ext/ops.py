"""Public ops of cibhash_ext: bit packing, the stochastic binary layer and exact Hamming search.

Every op runs on CPU and CUDA tensors and is registered with ``torch.library`` (schemas in
``csrc/cibhash_ext.cpp``), with fake kernels for ``torch.compile`` and an autograd formula for the
binary layer. When the compiled library cannot be loaded (or ``CIBHASH_NO_EXTENSION=1``), every op
runs the pure-PyTorch reference of :mod:`cibhash_ext._reference` instead: the same results to the
bit, much slower; one warning at import says why. Packed codes use the FAISS binary layout: a code of L bits is ``ceil(L/8)`` uint8
bytes, bit j is bit ``j % 8`` of byte ``j // 8`` (``numpy.packbits(bits, bitorder="little")``).
Everywhere, equal Hamming distances are ordered by the lower database index.
"""

from __future__ import annotations

import torch

from . import _reference
from ._extension import LOAD_ERROR

__all__ = [
    "pack_bits",
    "unpack_bits",
    "stochastic_binarize",
    "hamming_distance",
    "hamming_topk",
    "hamming_radius",
]

_OPS = "cibhash_ext"


def _op(name: str):
    """The compiled op ``name``, or its pure-PyTorch reference when the library is not loaded."""
    if LOAD_ERROR is not None:
        return getattr(_reference, name)
    return getattr(getattr(torch.ops, _OPS), name)


def _check_tensor(value, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """Packs the last dimension of ``x`` into bytes, one bit per element: bit = 1 iff x > 0.

    {0, 1} codes, +-1 codes and raw logits all pack to the same code. NaN packs to 0.

    Args:
        x (Tensor[..., L], any real dtype or bool): values to binarise and pack, L >= 1.

    Returns:
        Tensor[..., ceil(L/8)], uint8: bit j of a row is bit ``j % 8`` of byte ``j // 8``,
        padding bits are 0.
    """
    _check_tensor(x, "x")
    return _op("pack_bits")(x)


def unpack_bits(codes: torch.Tensor, nbits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`.

    Args:
        codes (Tensor[..., B], uint8): packed codes, B = ceil(nbits / 8).
        nbits (int): bits per code.

    Returns:
        Tensor[..., nbits], uint8 with values in {0, 1}.
    """
    _check_tensor(codes, "codes")
    return _op("unpack_bits")(codes, int(nbits))


def _draw_seed_offset(generator: torch.Generator | None) -> torch.Tensor:
    # The Philox key and counter offset come from torch's generator (the default CPU generator
    # unless one is given), so torch.manual_seed makes a run reproducible and CPU and CUDA
    # tensors get the same bits for the same seed. They stay a tensor, so that torch.compile traces
    # the draw and the op without a graph break.
    if generator is None:
        return torch.randint(0, 2**62, (2,))
    return torch.randint(0, 2**62, (2,), generator=generator, device=generator.device)


@torch.library.custom_op(f"{_OPS}::stochastic_binarize", mutates_args=())
def _stochastic_binarize(logits: torch.Tensor, stochastic: bool, seed_offset: torch.Tensor) -> torch.Tensor:
    seed, offset = (int(v) for v in seed_offset.tolist())
    return _op("stochastic_binarize_forward")(logits, stochastic, seed, offset)


@_stochastic_binarize.register_fake
def _(logits, stochastic, seed_offset):
    return torch.empty_like(logits)


def _binarize_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _binarize_backward(ctx, grad_codes):
    (logits,) = ctx.saved_tensors
    return _op("stochastic_binarize_backward")(grad_codes.contiguous(), logits), None, None


_stochastic_binarize.register_autograd(_binarize_backward, setup_context=_binarize_setup_context)

_BINARIZE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def stochastic_binarize(
    logits: torch.Tensor, stochastic: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The stochastic binary layer of CIBHash (Qiu et al., IJCAI 2021, Eq. 5-6).

    Forward: ``p = sigmoid(logits)``; stochastic: ``b = 1[u < p]`` with ``u ~ U(0, 1)`` drawn by a
    Philox4x32-10 generator inside the kernel (no noise tensor), keyed by a seed and offset drawn
    from ``generator``; deterministic: ``b = 1[logits > 0]``. Backward (straight-through, one fused
    kernel): ``grad_logits = grad_b * p * (1 - p)``. NaN logits give bit 0 and a NaN gradient.
    ``torch.compile(fullgraph=True)`` traces it (without a ``generator``).

    Args:
        logits (Tensor[...], float32, float16 or bfloat16): encoder outputs.
        stochastic (bool): sample the bits (training) or threshold at 0 (evaluation).
        generator (torch.Generator, optional): source of the seed; the default CPU generator if None.

    Returns:
        Tensor of the shape and dtype of ``logits`` with values in {0, 1}.
    """
    _check_tensor(logits, "logits")
    if logits.dtype not in _BINARIZE_DTYPES:
        raise TypeError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
    seed_offset = _draw_seed_offset(generator) if stochastic else torch.zeros(2, dtype=torch.int64)
    return _stochastic_binarize(logits, bool(stochastic), seed_offset)


def hamming_distance(queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor:
    """All Hamming distances between packed query and database codes.

    Args:
        queries (Tensor[Q, B], uint8): packed codes.
        database (Tensor[N, B], uint8): packed codes of the same width, on the same device.

    Returns:
        Tensor[Q, N], int32.
    """
    _check_tensor(queries, "queries")
    _check_tensor(database, "database")
    return _op("hamming_distance")(queries, database)


def hamming_topk(queries: torch.Tensor, database: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest database codes of each query by Hamming distance.

    Results are ordered by (distance, index): equal distances go to the lower database index, so
    results are deterministic and identical on CPU and CUDA. Memory is O(Q * k) plus fixed tiles;
    the Q x N distance matrix is never materialised.

    Args:
        queries (Tensor[Q, B], uint8): packed codes.
        database (Tensor[N, B], uint8): packed codes of the same width, on the same device.
        k (int): neighbours per query, 1 <= k <= N. An empty database gives [Q, 0] results.

    Returns:
        (distances Tensor[Q, k] int32, indices Tensor[Q, k] int64)
    """
    _check_tensor(queries, "queries")
    _check_tensor(database, "database")
    return _op("hamming_topk")(queries, database, int(k))


def hamming_radius(
    queries: torch.Tensor, database: torch.Tensor, radius: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every database code within Hamming distance ``<= radius`` of each query.

    The layout is FAISS's ``range_search``: query i's results are ``lims[i]:lims[i+1]``, ordered
    by (distance, index).

    Args:
        queries (Tensor[Q, B], uint8): packed codes.
        database (Tensor[N, B], uint8): packed codes of the same width, on the same device.
        radius (int): radius >= 0.

    Returns:
        (lims Tensor[Q + 1] int64, distances Tensor[M] int32, indices Tensor[M] int64)
    """
    _check_tensor(queries, "queries")
    _check_tensor(database, "database")
    return _op("hamming_radius")(queries, database, int(radius))


def _register_abstract_and_autograd() -> None:
    lib = f"{_OPS}::"

    @torch.library.register_fake(lib + "pack_bits")
    def _(x):
        return x.new_empty((*x.shape[:-1], (x.shape[-1] + 7) // 8), dtype=torch.uint8)

    @torch.library.register_fake(lib + "unpack_bits")
    def _(codes, nbits):
        return codes.new_empty((*codes.shape[:-1], nbits), dtype=torch.uint8)

    @torch.library.register_fake(lib + "stochastic_binarize_forward")
    def _(logits, stochastic, seed, offset):
        return torch.empty_like(logits)

    @torch.library.register_fake(lib + "stochastic_binarize_backward")
    def _(grad_codes, logits):
        return torch.empty_like(logits)

    @torch.library.register_fake(lib + "hamming_distance")
    def _(queries, database):
        return queries.new_empty((queries.shape[0], database.shape[0]), dtype=torch.int32)

    @torch.library.register_fake(lib + "hamming_topk")
    def _(queries, database, k):
        width = k if database.shape[0] != 0 else 0
        return (
            queries.new_empty((queries.shape[0], width), dtype=torch.int32),
            queries.new_empty((queries.shape[0], width), dtype=torch.int64),
        )

    @torch.library.register_fake(lib + "hamming_radius")
    def _(queries, database, radius):
        matches = torch.library.get_ctx().new_dynamic_size()
        return (
            queries.new_empty((queries.shape[0] + 1,), dtype=torch.int64),
            queries.new_empty((matches,), dtype=torch.int32),
            queries.new_empty((matches,), dtype=torch.int64),
        )

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def backward(ctx, grad_codes):
        (logits,) = ctx.saved_tensors
        grad = torch.ops.cibhash_ext.stochastic_binarize_backward(grad_codes.contiguous(), logits)
        return grad, None, None, None

    torch.library.register_autograd(lib + "stochastic_binarize_forward", backward, setup_context=setup_context)


if LOAD_ERROR is None:
    _register_abstract_and_autograd()
