"""pytest-benchmark regression guard for the kernels at small sizes; not part of the test suite.

    pytest benchmarks/test_regression.py                       # time and print
    pytest benchmarks/test_regression.py --benchmark-autosave  # keep a baseline in .benchmarks/
    pytest benchmarks/test_regression.py --benchmark-compare --benchmark-compare-fail=median:25%

Each benchmark first checks its op against cibhash_ext/_reference.py. Threads: 1, or
CIBHASH_BENCH_THREADS. benchmarks/conftest.py keeps this file out of runs that do not name it.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed (pip install pytest-benchmark)")

from cibhash_ext import _reference, hamming_radius, hamming_topk, pack_bits, stochastic_binarize  # noqa: E402

N, Q = 20_000, 64


@pytest.fixture(scope="module", autouse=True)
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("CIBHASH_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


def codes(rows: int, bits: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (rows, bits // 8), dtype=torch.uint8, generator=gen)


@pytest.mark.parametrize("bits,k", [(16, 100), (32, 1000), (64, 100), (128, 10)])
def test_hamming_topk(benchmark, bits, k):
    queries, database = codes(Q, bits, 1), codes(N, bits, 2)
    dist, idx = benchmark(hamming_topk, queries, database, k)
    ref_dist, ref_idx = _reference.hamming_topk(queries, database, k)
    assert torch.equal(dist, ref_dist) and torch.equal(idx, ref_idx)


@pytest.mark.parametrize("bits,radius", [(64, 20), (128, 50)])
def test_hamming_radius(benchmark, bits, radius):
    queries, database = codes(Q, bits, 3), codes(N, bits, 4)
    lims, dist, idx = benchmark(hamming_radius, queries, database, radius)
    ref = _reference.hamming_radius(queries, database, radius)
    assert int(lims[-1]) > Q  # the radius really selects codes
    assert torch.equal(lims, ref[0]) and torch.equal(dist, ref[1]) and torch.equal(idx, ref[2])


def test_pack_bits(benchmark):
    logits = torch.randn(N, 64, generator=torch.Generator().manual_seed(5))
    packed = benchmark(pack_bits, logits)
    assert torch.equal(packed, _reference.pack_bits(logits))


@pytest.mark.parametrize("shape", [(4096, 64), (64, 64)])
def test_stochastic_binarize_forward_backward(benchmark, shape):
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(shape, generator=gen).requires_grad_(True)
    grad = torch.randn(shape, generator=gen)

    def forward_backward():
        logits.grad = None
        bits = stochastic_binarize(logits)
        bits.backward(grad)
        return bits

    bits = benchmark(forward_backward)
    assert set(torch.unique(bits).tolist()) <= {0.0, 1.0}
    assert torch.equal(logits.grad, _reference.stochastic_binarize_backward(grad, logits.detach()))
