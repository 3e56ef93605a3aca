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

import functools
import operator
import warnings

import torch

from . import _extension, _reference
from ._extension import LOAD_ERROR

__all__ = [
    "pack_bits",
    "unpack_bits",
    "stochastic_binarize",
    "hamming_distance",
    "hamming_topk",
    "hamming_radius",
    "hamming_topk_filtered",
    "hamming_radius_filtered",
]

_OPS = "cibhash_ext"
_BINARIZE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# As csrc/ops/pack_bits.h: float8, quantized and sub-byte types are refused.
_PACK_BITS_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16,
                     torch.uint32, torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64)


@functools.cache
def _op(name: str):
    """The compiled op ``name``, whose bad inputs raise the documented TypeError / ValueError, or its
    checked pure-PyTorch reference when the library is not loaded. Made once per op: a search of one
    query after a scan that evicted the caches spent about 7 us making it again."""
    if LOAD_ERROR is not None:
        return _checked_reference(name)
    check, op = _CHECKS[name], getattr(getattr(torch.ops, _OPS), name)

    def run(*args):
        # The compiled op checks its inputs, but the stable ABI can only raise RuntimeError. On such a
        # failure the Python checks run and raise the documented TypeError / ValueError with the same
        # expectation; running them on every call instead cost 12 us (against 3-6 us for a small
        # search). While torch.compile traces, the fake kernels make the checks.
        if torch.compiler.is_compiling():
            return op(*args)
        try:
            return op(*args)
        except RuntimeError:
            problem = _input_error(check, args)
            if problem is None:
                raise
        raise problem from None  # the bad input, not the C++ RuntimeError it caused

    return run


def kernel(name: str):
    """The op ``name`` without the Python wrapper's checks, for callers whose inputs are already
    checked (the indexes): the compiled op's ``default`` overload, or the checked reference when the
    library is not loaded. The wrapper's checks and lookups cost about 15 us on a search of one query
    whose scan evicted the caches."""
    if LOAD_ERROR is not None:
        return _checked_reference(name)
    return getattr(getattr(torch.ops, _OPS), name).default


def _input_error(check, args) -> Exception | None:
    """The TypeError / ValueError ``check(*args)`` raises, or None when the inputs pass."""
    try:
        check(*args)
    except (TypeError, ValueError) as error:
        return error
    return None


def _check_tensor(value, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _check_int(value, name: str, op: str) -> int:
    """``value`` as an int: Python and numpy integers pass; bool, float and str are refused, not rounded."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} {value!r}")


def _check_same_device(queries: torch.Tensor, database: torch.Tensor, op: str) -> None:
    # Checked here too: with a meta tensor on one side the dispatcher would pick the fake kernel.
    if queries.device != database.device:
        raise ValueError(
            f"{op}: expected queries and database on the same device, got {queries.device} and {database.device}"
        )


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
    return _op("unpack_bits")(codes, _check_int(nbits, "nbits", "unpack_bits"))


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"stochastic_binarize: generator must be a torch.Generator or None, got {type(generator).__name__} "
            f"{generator!r}"
        )


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
    _check_generator(generator)
    _check_tensor(logits, "logits")
    # Checked here, before the draw (a refused call leaves the generator alone), with a plain test that
    # torch.compile traces (a torch._check message closure over the tensor would break the graph).
    if logits.dtype not in _BINARIZE_DTYPES:
        raise TypeError(f"stochastic_binarize: expected logits of dtype float32, float16 or bfloat16, got {logits.dtype}")
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
    _check_same_device(queries, database, "hamming_distance")
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
    _check_same_device(queries, database, "hamming_topk")
    return _op("hamming_topk")(queries, database, _check_int(k, "k", "hamming_topk"))


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
    _check_same_device(queries, database, "hamming_radius")
    return _op("hamming_radius")(queries, database, _check_int(radius, "radius", "hamming_radius"))


def hamming_topk_filtered(
    queries: torch.Tensor, database: torch.Tensor, k: int, allow: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`hamming_topk` over the database codes whose bit is set in ``allow`` (CPU only).

    The scan reads every code and checks the bitmap only for codes that beat a query's current
    threshold, so the excluded codes are never copied. Ties go to the lower database index.

    Args:
        queries (Tensor[Q, B], uint8): packed codes.
        database (Tensor[N, B], uint8): packed codes of the same width.
        k (int): k >= 1.
        allow (Tensor[>= ceil(N/8)], uint8): bit ``i % 8`` of byte ``i // 8`` set when code i may be returned.

    Returns:
        (distances Tensor[Q, k'] int32, indices Tensor[Q, k'] int64 into the whole database), where
        k' = min(k, number of allowed codes).
    """
    _check_tensor(queries, "queries")
    _check_tensor(database, "database")
    _check_tensor(allow, "allow")
    _check_same_device(queries, database, "hamming_topk_filtered")
    return _op("hamming_topk_filtered")(queries, database, _check_int(k, "k", "hamming_topk_filtered"), allow)


def hamming_radius_filtered(
    queries: torch.Tensor, database: torch.Tensor, radius: int, allow: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`hamming_radius` over the database codes whose bit is set in ``allow`` (CPU only).

    Args:
        queries (Tensor[Q, B], uint8): packed codes.
        database (Tensor[N, B], uint8): packed codes of the same width.
        radius (int): radius >= 0.
        allow (Tensor[>= ceil(N/8)], uint8): bit ``i % 8`` of byte ``i // 8`` set when code i may be returned.

    Returns:
        (lims Tensor[Q + 1] int64, distances Tensor[M] int32, indices Tensor[M] int64), as :func:`hamming_radius`.
    """
    _check_tensor(queries, "queries")
    _check_tensor(database, "database")
    _check_tensor(allow, "allow")
    _check_same_device(queries, database, "hamming_radius_filtered")
    radius = _check_int(radius, "radius", "hamming_radius_filtered")
    return _op("hamming_radius_filtered")(queries, database, radius, allow)


# The fake kernels make the checks of csrc/ops/*.h with torch._check_type / _check_value (TypeError /
# ValueError, like the real ops), so a traced, fake or meta call fails where the real op would
# instead of returning a tensor of the wrong shape or device.


def _fake_check_codes(t: torch.Tensor, op: str, name: str) -> None:
    torch._check_type(
        t.dtype == torch.uint8, lambda: f"{op}: expected {name} of dtype uint8 (packed codes), got {t.dtype}"
    )
    torch._check_value(
        t.dim() == 2, lambda: f"{op}: expected {name} of shape [rows, bytes_per_code], got a {t.dim()}-d tensor"
    )


def _fake_check_query_database(queries: torch.Tensor, database: torch.Tensor, op: str) -> None:
    _fake_check_codes(queries, op, "queries")
    _fake_check_codes(database, op, "database")
    q_width, db_width = queries.shape[1], database.shape[1]
    torch._check_value(
        q_width == db_width,
        lambda: f"{op}: expected queries and database with the same code width, got {q_width} bytes and "
        f"{db_width} bytes",
    )
    torch._check_value(q_width >= 1, lambda: f"{op}: expected codes of at least 1 byte, got 0")
    torch._check_value(
        queries.device == database.device,
        lambda: f"{op}: expected queries and database on the same device, got {queries.device} and {database.device}",
    )


def _fake_check_logits(logits: torch.Tensor, op: str) -> None:
    torch._check_type(
        logits.dtype in _BINARIZE_DTYPES,
        lambda: f"{op}: expected logits of dtype float32, float16 or bfloat16, got {logits.dtype}",
    )


def _check_pack_bits(x) -> None:
    op = "pack_bits"
    torch._check_value(x.dim() >= 1, lambda: f"{op}: expected x with at least 1 dimension [..., L], got 0-d")
    torch._check_value(x.shape[-1] >= 1, lambda: f"{op}: expected at least 1 bit in the last dimension, got 0")
    torch._check_type(x.dtype in _PACK_BITS_DTYPES, lambda: f"{op}: expected a real, integer or bool tensor, got {x.dtype}")


def _check_unpack_bits(codes, nbits) -> None:
    op = "unpack_bits"
    torch._check_type(codes.dtype == torch.uint8, lambda: f"{op}: expected codes of dtype uint8, got {codes.dtype}")
    torch._check_value(codes.dim() >= 1, lambda: f"{op}: expected codes with at least 1 dimension, got 0-d")
    torch._check_value(nbits >= 1, lambda: f"{op}: expected nbits >= 1, got {nbits}")
    width = codes.shape[-1]
    torch._check_value(
        (nbits + 7) // 8 == width,
        lambda: f"{op}: {nbits} bits need {(nbits + 7) // 8} bytes per code, but codes have {width}",
    )


def _check_binarize_forward(logits, stochastic, seed, offset) -> None:
    _fake_check_logits(logits, "stochastic_binarize_forward")


def _check_binarize_backward(grad_codes, logits) -> None:
    op = "stochastic_binarize_backward"
    _fake_check_logits(logits, op)
    torch._check_value(
        grad_codes.shape == logits.shape,
        lambda: f"{op}: expected grad_codes of shape {tuple(logits.shape)}, got {tuple(grad_codes.shape)}",
    )
    torch._check_type(
        grad_codes.dtype == logits.dtype,
        lambda: f"{op}: expected grad_codes of dtype {logits.dtype}, got {grad_codes.dtype}",
    )
    torch._check_value(
        grad_codes.device == logits.device,
        lambda: f"{op}: expected grad_codes on {logits.device}, got {grad_codes.device}",
    )


def _check_hamming_distance(queries, database) -> None:
    _fake_check_query_database(queries, database, "hamming_distance")


def _check_hamming_topk(queries, database, k) -> None:
    _fake_check_query_database(queries, database, "hamming_topk")
    n = database.shape[0]
    torch._check_value(k >= 1, lambda: f"hamming_topk: expected k >= 1, got {k}")
    torch._check_value(n == 0 or k <= n, lambda: f"hamming_topk: expected k <= database size {n}, got k={k}")


def _check_hamming_radius(queries, database, radius) -> None:
    _fake_check_query_database(queries, database, "hamming_radius")
    torch._check_value(radius >= 0, lambda: f"hamming_radius: expected radius >= 0, got {radius}")


def _check_allow(database, allow, op) -> None:
    torch._check_type(allow.dtype == torch.uint8, lambda: f"{op}: expected allow of dtype uint8 (a bitmap), got {allow.dtype}")
    need = (database.shape[0] + 7) // 8
    torch._check_value(
        allow.dim() == 1 and allow.shape[0] >= need,
        lambda: f"{op}: expected allow of shape [>= {need}] (one bit per database code), got shape {tuple(allow.shape)}",
    )
    torch._check_value(allow.device.type == "cpu", lambda: f"{op}: expected allow on the CPU, got {allow.device}")


def _check_hamming_topk_filtered(queries, database, k, allow) -> None:
    op = "hamming_topk_filtered"
    _fake_check_query_database(queries, database, op)
    _check_allow(database, allow, op)
    torch._check_value(k >= 1, lambda: f"{op}: expected k >= 1, got {k}")


def _check_hamming_radius_filtered(queries, database, radius, allow) -> None:
    op = "hamming_radius_filtered"
    _fake_check_query_database(queries, database, op)
    _check_allow(database, allow, op)
    torch._check_value(radius >= 0, lambda: f"{op}: expected radius >= 0, got {radius}")


# Each op's input checks: run by its fake kernel, and before the reference when the library is not loaded.
_CHECKS = {
    "pack_bits": _check_pack_bits,
    "unpack_bits": _check_unpack_bits,
    "stochastic_binarize_forward": _check_binarize_forward,
    "stochastic_binarize_backward": _check_binarize_backward,
    "hamming_distance": _check_hamming_distance,
    "hamming_topk": _check_hamming_topk,
    "hamming_radius": _check_hamming_radius,
    "hamming_topk_filtered": _check_hamming_topk_filtered,
    "hamming_radius_filtered": _check_hamming_radius_filtered,
}


def _checked_reference(name: str):
    check, reference = _CHECKS[name], getattr(_reference, name)

    def run(*args):
        check(*args)
        return reference(*args)

    return run


def _register_abstract_and_autograd() -> None:
    lib = f"{_OPS}::"

    @torch.library.register_fake(lib + "pack_bits")
    def _(x):
        _check_pack_bits(x)
        return x.new_empty((*x.shape[:-1], (x.shape[-1] + 7) // 8), dtype=torch.uint8)

    @torch.library.register_fake(lib + "unpack_bits")
    def _(codes, nbits):
        _check_unpack_bits(codes, nbits)
        return codes.new_empty((*codes.shape[:-1], nbits), dtype=torch.uint8)

    @torch.library.register_fake(lib + "stochastic_binarize_forward")
    def _(logits, stochastic, seed, offset):
        _check_binarize_forward(logits, stochastic, seed, offset)
        return torch.empty_like(logits)

    @torch.library.register_fake(lib + "stochastic_binarize_backward")
    def _(grad_codes, logits):
        _check_binarize_backward(grad_codes, logits)
        return torch.empty_like(logits)

    @torch.library.register_fake(lib + "hamming_distance")
    def _(queries, database):
        _check_hamming_distance(queries, database)
        return queries.new_empty((queries.shape[0], database.shape[0]), dtype=torch.int32)

    @torch.library.register_fake(lib + "hamming_topk")
    def _(queries, database, k):
        _check_hamming_topk(queries, database, k)
        width = k if database.shape[0] != 0 else 0
        return (
            queries.new_empty((queries.shape[0], width), dtype=torch.int32),
            queries.new_empty((queries.shape[0], width), dtype=torch.int64),
        )

    @torch.library.register_fake(lib + "hamming_radius")
    def _(queries, database, radius):
        _check_hamming_radius(queries, database, radius)
        matches = torch.library.get_ctx().new_dynamic_size()
        return (
            queries.new_empty((queries.shape[0] + 1,), dtype=torch.int64),
            queries.new_empty((matches,), dtype=torch.int32),
            queries.new_empty((matches,), dtype=torch.int64),
        )

    @torch.library.register_fake(lib + "hamming_topk_filtered")
    def _(queries, database, k, allow):
        # The output width, min(k, allowed codes), depends on the bitmap's contents.
        _check_hamming_topk_filtered(queries, database, k, allow)
        width = torch.library.get_ctx().new_dynamic_size()
        return (
            queries.new_empty((queries.shape[0], width), dtype=torch.int32),
            queries.new_empty((queries.shape[0], width), dtype=torch.int64),
        )

    @torch.library.register_fake(lib + "hamming_radius_filtered")
    def _(queries, database, radius, allow):
        _check_hamming_radius_filtered(queries, database, radius, allow)
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


def _register_cuda_reference() -> None:
    """CUDA kernels that run the reference, for a torch with CUDA beside which ``_C_cuda`` did not load
    (or was not built): the first call warns, unless the failed load already did."""
    warned = [_extension.CUDA_LOAD_WARNED]

    def kernel_for(name: str):
        reference = _checked_reference(name)

        def kernel(*args):
            if not warned[0]:
                warned[0] = True
                warnings.warn(
                    f"cibhash_ext's CUDA library is not loaded ({_extension.CUDA_LOAD_ERROR}); CUDA tensors run "
                    "the pure-PyTorch reference instead: the same results, much slower.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return reference(*args)

        return kernel

    for name in _CHECKS:
        torch.library.impl(f"{_OPS}::{name}", "CUDA", kernel_for(name))


if LOAD_ERROR is None:
    _register_abstract_and_autograd()
    if _extension.CUDA_LOAD_ERROR is not None:
        _register_cuda_reference()
