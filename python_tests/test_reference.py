"""The pure-PyTorch reference ops against independent NumPy transcriptions and known answers."""

import numpy as np
import pytest
import torch

from cibhash_ext import _reference as ref
from conftest import clear_padding, random_codes

WIDTHS = [1, 8, 16, 24, 32, 64, 96, 128, 200, 256]


@pytest.mark.parametrize("nbits", WIDTHS)
def test_pack_unpack_match_numpy(nbits, oracle):
    x = torch.randn(13, nbits, generator=torch.Generator().manual_seed(nbits))
    packed = ref.pack_bits(x)
    np.testing.assert_array_equal(packed.numpy(), oracle.pack(x.numpy() > 0))
    bits = np.unpackbits(packed.numpy(), axis=-1, bitorder="little")[:, :nbits]
    np.testing.assert_array_equal(ref.unpack_bits(packed, nbits).numpy(), bits)


def test_philox_known_answers():
    # Known-answer vectors of Random123's philox4x32-10 (kat_vectors): counter, key -> output.
    cases = [
        ([0, 0, 0, 0], (0, 0), [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, (0xFFFFFFFF, 0xFFFFFFFF), [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        (
            [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
            (0xA4093822, 0x299F31D0),
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
        ),
    ]
    for counter, key, expected in cases:
        got = ref.philox4x32_10([torch.tensor([c], dtype=torch.int64) for c in counter], key)
        assert [int(v) for v in got] == expected


def test_uniforms_match_numpy_philox(oracle):
    seed, offset, n = 0x123456789ABCDEF, 0xFEDCBA987654321, 1001
    g = np.arange((n + 3) // 4, dtype=np.uint64)
    m32 = np.uint64(0xFFFFFFFF)
    counter = [g & m32, g >> np.uint64(32), np.full_like(g, offset & 0xFFFFFFFF), np.full_like(g, offset >> 32)]
    words = np.stack(oracle.philox4x32_10(counter, (seed & 0xFFFFFFFF, seed >> 32)), axis=1).reshape(-1)[:n]
    expected = (words >> np.uint64(8)).astype(np.float32) * np.float32(2.0**-24)
    np.testing.assert_array_equal(ref.uniforms(n, seed, offset).numpy(), expected)


def test_sigmoid_exact_is_accurate_and_total():
    z = torch.cat([torch.linspace(-100, 100, 200001), torch.tensor([0.0, -0.0, 88.0, -88.0, 1e30, -1e30])])
    p = ref.sigmoid_exact(z)
    truth = torch.sigmoid(z.double())
    err = (p.double() - truth).abs()
    normal = z.abs() <= 86
    assert (err[normal] / truth[normal]).max().item() < 3 * 2.0**-24  # a few float32 ulp
    assert err[~normal].max().item() < 1e-37  # below -87 the kernel returns 0, not a subnormal
    assert p.min() >= 0 and p.max() <= 1
    special = ref.sigmoid_exact(torch.tensor([float("inf"), -float("inf"), float("nan")]))
    assert special[0] == 1 and special[1] == 0 and torch.isnan(special[2])


def numpy_sigmoid_exact(z: np.ndarray) -> np.ndarray:
    """Independent float32 transcription of sigmoid_exact in csrc/ops/binarize_math.h."""
    f = np.float32
    z = z.astype(f)
    x = -np.abs(z)
    n = np.floor(x * f(1.44269504088896341) + f(0.5))
    r = (x - n * f(0.693359375)) - n * f(-2.12194440e-4)
    y = np.full_like(r, f(1.9875691500e-4))
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        y = y * r + f(c)
    y = (y * (r * r) + r) + f(1.0)
    scale = ((np.maximum(n, -126).astype(np.int32) + 127) << 23).view(f)
    t = np.where(x < -87, f(0), y * scale)
    d = t + f(1)
    return np.where(z >= 0, f(1) / d, t / d).astype(f)


def test_sigmoid_exact_matches_numpy_transcription():
    z = torch.randn(100000, generator=torch.Generator().manual_seed(0)) * 12
    with np.errstate(over="ignore", invalid="ignore"):
        np.testing.assert_array_equal(ref.sigmoid_exact(z).numpy(), numpy_sigmoid_exact(z.numpy()))


@pytest.mark.parametrize("nbits", [8, 24, 64, 200])
@pytest.mark.parametrize("q,n", [(0, 5), (3, 0), (1, 1), (7, 300)])
def test_hamming_reference_matches_numpy(nbits, q, n, oracle):
    gen = torch.Generator().manual_seed(q * 1000 + n + nbits)
    nbytes = (nbits + 7) // 8
    queries = clear_padding(random_codes(q, nbytes, gen), nbits)
    database = clear_padding(random_codes(n, nbytes, gen, duplicates=n // 3), nbits)
    dist = ref.hamming_distance(queries, database)
    np.testing.assert_array_equal(dist.numpy(), oracle.distances(queries.numpy(), database.numpy()).reshape(q, n))
    if n:
        for k in {1, min(5, n), n}:
            d, i = ref.hamming_topk(queries, database, k)
            od, oi = oracle.topk(queries.numpy(), database.numpy(), k)
            np.testing.assert_array_equal(d.numpy(), od.reshape(q, k))
            np.testing.assert_array_equal(i.numpy(), oi.reshape(q, k))
    for radius in (0, nbits // 2 - 2, nbits):
        lims, d, i = ref.hamming_radius(queries, database, radius)
        ol, od, oi = oracle.radius(queries.numpy(), database.numpy(), radius)
        np.testing.assert_array_equal(lims.numpy(), ol)
        np.testing.assert_array_equal(d.numpy(), od)
        np.testing.assert_array_equal(i.numpy(), oi)
