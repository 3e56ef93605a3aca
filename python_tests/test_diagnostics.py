"""Tests of cibhash_ext.diagnostics against independent NumPy computations, with planted ties,
duplicates and constant bits."""

import numpy as np
import pytest
import torch

from cibhash_ext import ops
from cibhash_ext.diagnostics import code_statistics, copy_recall, evaluate_unlabelled


def pack(bits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.packbits(bits.astype(np.uint8), axis=-1, bitorder="little"))


def np_bits(codes: torch.Tensor, nbits: int) -> np.ndarray:
    return np.unpackbits(codes.numpy(), axis=-1, bitorder="little")[:, :nbits]


def np_distances(queries: torch.Tensor, database: torch.Tensor) -> np.ndarray:
    xor = queries.numpy()[:, None, :] ^ database.numpy()[None, :, :]
    return np.unpackbits(xor, axis=-1).sum(-1).astype(np.int64)


def np_copy_recall(queries, database, targets, ks):
    dist = np_distances(queries, database)
    order = np.argsort(dist, axis=1, kind="stable")  # stable: ties to the lower index
    rank = np.argmax(order == targets.numpy()[:, None], axis=1)
    return {str(k): float(np.mean(rank < k)) if len(rank) else 0.0 for k in ks}


def np_correlation_offdiag(bits: np.ndarray) -> np.ndarray:
    x = bits.astype(np.float64)
    const = x.std(axis=0) == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(x, rowvar=False)
    corr[const, :] = 0.0
    corr[:, const] = 0.0
    return np.abs(corr[~np.eye(x.shape[1], dtype=bool)])


def np_nn_distances(codes: torch.Tensor, rows: np.ndarray) -> np.ndarray:
    dist = np_distances(codes[torch.from_numpy(rows)], codes)
    dist[np.arange(len(rows)), rows] = 10**9  # exclude the row itself
    return dist.min(axis=1)


def random_codes(n, nbits, seed, p=0.5):
    rng = np.random.default_rng(seed)
    return (rng.random((n, nbits)) < p).astype(np.uint8)


def test_copy_recall_matches_numpy_on_noisy_copies():
    nbits = 24
    db_bits = random_codes(300, nbits, 0)
    targets = torch.from_numpy(np.random.default_rng(1).choice(300, 90, replace=False)).long()
    noisy = db_bits[targets.numpy()] ^ random_codes(90, nbits, 2, p=0.15)
    database, queries = pack(db_bits), pack(noisy)
    got = copy_recall(queries, database, targets, ks=(1, 5, 10), chunk=7)
    want = np_copy_recall(queries, database, targets, (1, 5, 10))
    assert got == pytest.approx(want, abs=1e-12)
    assert 0.0 < got["1"] < got["10"] < 1.0  # the case discriminates: neither trivial nor saturated


def test_copy_recall_tie_goes_to_the_lower_database_index():
    nbits = 16
    db_bits = np.zeros((4, nbits), np.uint8)
    db_bits[0, 0] = 1          # competitor: distance 1 from the query, lower index
    db_bits[2, 1] = 1          # target: also distance 1
    db_bits[1] = 1             # far away
    db_bits[3, :8] = 1         # far away
    database, queries = pack(db_bits), pack(np.zeros((1, nbits), np.uint8))
    targets = torch.tensor([2])
    dist = np_distances(queries, database)[0]
    assert dist[0] == dist[2] == dist.min()  # the tie is really planted
    got = copy_recall(queries, database, targets, ks=(1, 2, 3))
    assert got == {"1": 0.0, "2": 1.0, "3": 1.0}
    assert got == np_copy_recall(queries, database, targets, (1, 2, 3))


def test_copy_recall_clips_k_and_keeps_the_requested_key():
    database = pack(random_codes(5, 8, 3))
    got = copy_recall(database[[4, 1]], database, torch.tensor([4, 1]), ks=(1, 10))
    assert set(got) == {"1", "10"} and got["10"] == 1.0


def test_copy_recall_without_queries_is_zero():
    database = pack(random_codes(5, 8, 3))
    empty = torch.zeros(0, 1, dtype=torch.uint8)
    assert copy_recall(empty, database, torch.zeros(0, dtype=torch.int64)) == {"1": 0.0, "10": 0.0}


def test_code_statistics_match_numpy_with_duplicates_and_a_constant_bit():
    nbits, n = 21, 120  # not a multiple of 8: padding bits exist and must not count
    bits = random_codes(n, nbits, 4)
    bits[:, 5] = 1                       # a constant bit
    bits[:, 9] = bits[:, 3]              # a perfectly correlated pair
    bits[40] = bits[7]                   # duplicates: a bucket of 3
    bits[77] = bits[7]
    codes = pack(bits)
    stats = code_statistics(codes, nbits, sample=n)

    p = bits.mean(axis=0)
    assert stats["bit_balance"] == pytest.approx(p.tolist(), abs=1e-12)
    assert stats["bit_balance"][5] == 1.0
    assert stats["balance_error"] == pytest.approx(np.abs(p - 0.5).mean(), abs=1e-12)
    assert stats["max_balance_error"] == pytest.approx(0.5)
    off = np_correlation_offdiag(bits)
    assert np.isfinite(stats["bit_correlation_mean_abs"]) and np.isfinite(stats["bit_correlation_max_abs"])
    assert stats["bit_correlation_mean_abs"] == pytest.approx(off.mean(), abs=1e-9)
    assert stats["bit_correlation_max_abs"] == pytest.approx(1.0, abs=1e-9)
    assert stats["bit_correlation_max_abs"] == pytest.approx(off.max(), abs=1e-9)

    uniq, counts = np.unique(bits, axis=0, return_counts=True)
    assert stats["distinct_codes"] == len(uniq) == n - 2
    assert stats["largest_bucket"] == counts.max() == 3

    nn = np_nn_distances(codes, np.arange(n))
    assert nn[7] == nn[40] == nn[77] == 0  # the duplicates' nearest other row is a copy
    assert stats["nn_distance_histogram"] == np.bincount(nn, minlength=nbits + 1).tolist()
    assert len(stats["nn_distance_histogram"]) == nbits + 1
    assert stats["nn_distance_mean"] == pytest.approx(nn.mean())
    assert stats["nn_distance_sample"] == n
    assert stats["nn_distance_histogram"][0] == 3 and stats["nn_distance_mean"] > 0


def test_nearest_other_row_when_the_duplicate_has_the_lower_index():
    # Row 2 duplicates row 0: its top-2 search returns (0, row 0), (0, row 2), so the self hit is
    # second; row 0's returns itself first. Both must report 0; row 1 its true distance.
    bits = np.array([[1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0, 0, 0]], np.uint8)
    stats = code_statistics(pack(bits), 8)
    assert stats["nn_distance_histogram"] == [2, 0, 0, 0, 0, 1, 0, 0, 0]


def test_nn_sample_is_seeded_and_bounded():
    nbits, n = 32, 400
    codes = pack(random_codes(n, nbits, 5))
    a, b = code_statistics(codes, nbits, sample=50, seed=3), code_statistics(codes, nbits, sample=50, seed=3)
    assert a == b and a["nn_distance_sample"] == 50 and sum(a["nn_distance_histogram"]) == 50
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(3))[:50].numpy()
    nn = np_nn_distances(codes, rows)
    assert a["nn_distance_histogram"] == np.bincount(nn, minlength=nbits + 1).tolist()
    assert code_statistics(codes, nbits, sample=50, seed=4)["nn_distance_histogram"] != a["nn_distance_histogram"]


def test_single_code_and_single_bit():
    one = code_statistics(pack(np.ones((1, 8), np.uint8)), 8)
    assert one["nn_distance_mean"] is None and one["nn_distance_histogram"] == [0] * 9
    assert one["distinct_codes"] == 1 and one["largest_bucket"] == 1 and one["bit_correlation_max_abs"] == 0.0
    single = code_statistics(pack(np.array([[0], [1], [1]], np.uint8)), 1)
    assert single["bit_balance"] == pytest.approx([2 / 3]) and single["bit_correlation_mean_abs"] == 0.0
    assert single["nn_distance_histogram"] == [2, 1]


def test_evaluate_unlabelled_combines_both():
    nbits = 16
    database = pack(random_codes(50, nbits, 6))
    targets = torch.tensor([3, 9, 20])
    got = evaluate_unlabelled(database[targets], database, targets, nbits)
    assert got["copy_recall"] == {"1": 1.0, "10": 1.0}
    assert got["codes"] == code_statistics(database, nbits)


def test_bad_inputs_raise():
    codes = pack(random_codes(6, 16, 7))
    t = torch.tensor([0, 1])
    with pytest.raises(TypeError, match="query_codes"):
        copy_recall(codes[:2].float(), codes, t)
    with pytest.raises(TypeError, match="database_codes"):
        copy_recall(codes[:2], codes[0], t)
    with pytest.raises(ValueError, match="width"):
        copy_recall(codes[:2], codes[:, :1], t)
    with pytest.raises(TypeError, match="targets"):
        copy_recall(codes[:2], codes, t.int())
    with pytest.raises(ValueError, match="targets"):
        copy_recall(codes[:2], codes, torch.tensor([0]))
    with pytest.raises(ValueError, match="targets must lie in"):
        copy_recall(codes[:2], codes, torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="ks"):
        copy_recall(codes[:2], codes, t, ks=(0,))
    with pytest.raises(TypeError, match="ks"):
        copy_recall(codes[:2], codes, t, ks=10)
    with pytest.raises(ValueError, match="chunk"):
        copy_recall(codes[:2], codes, t, chunk=0)
    with pytest.raises(TypeError, match="codes"):
        code_statistics(codes.numpy(), 16)
    with pytest.raises(ValueError, match="bytes per code"):
        code_statistics(codes, 24)
    with pytest.raises(TypeError, match="nbits"):
        code_statistics(codes, 16.0)
    with pytest.raises(ValueError, match="padding"):
        code_statistics(torch.full((3, 2), 255, dtype=torch.uint8), 12)
    with pytest.raises(ValueError, match="at least one code"):
        code_statistics(codes[:0], 16)
    with pytest.raises(ValueError, match="sample"):
        code_statistics(codes, 16, sample=0)
    with pytest.raises(ValueError, match="query_codes"):
        evaluate_unlabelled(codes[:2], codes, t, 24)


def test_statistics_use_the_packed_layout_of_the_ops():
    # bit_balance follows ops.unpack_bits: bit j is bit j % 8 of byte j // 8.
    codes = ops.pack_bits(torch.tensor([[1.0] + [0.0] * 9, [1.0] * 2 + [0.0] * 8]))
    assert code_statistics(codes, 10)["bit_balance"] == [1.0, 0.5] + [0.0] * 8
