"""HammingIndex: search against the NumPy oracle with planted ties and user ids, remove_ids, argument
errors, memory-mapped chunked search and its memory use, and faiss interop (the file format is
tested in test_index_file.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from cibhash_ext import pack_bits
from cibhash_ext.index import HammingIndex
from conftest import DEVICES, clear_padding, random_codes


def make_codes(n: int, nbits: int, seed: int, duplicates: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return clear_padding(random_codes(n, (nbits + 7) // 8, gen, duplicates=duplicates), nbits)


def shuffled_ids(n: int, seed: int) -> torch.Tensor:
    """Ids whose order differs from insertion order, so the tie rule on positions is visible."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)) * 3 + 10


def expected_topk(oracle, queries, database, ids, k):
    dist, pos = oracle.topk(queries.numpy(), database.numpy(), k)
    return dist, ids.numpy()[pos]


def build(nbits=20, n=200, seed=0, with_ids=True):
    codes = make_codes(n, nbits, seed, duplicates=n // 3)
    index = HammingIndex(nbits)
    ids = shuffled_ids(n, seed) if with_ids else torch.arange(n)
    index.add(codes, ids if with_ids else None)
    return index, codes, ids


# ----------------------------------------------------------------------------------------------
# add / search / range_search / remove_ids
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbits", [1, 12, 64, 200])
def test_search_matches_oracle_with_ties_and_user_ids(oracle, nbits):
    index, codes, ids = build(nbits, n=150, seed=nbits)
    queries = torch.cat([codes[:3], make_codes(5, nbits, 99)])
    k = 40
    dist, got_ids = index.search(queries, k)
    want_d, want_ids = expected_topk(oracle, queries, codes, ids, k)
    assert (np.diff(want_d, axis=1) == 0).any(), "ties must be planted"
    assert dist.dtype == torch.int32 and got_ids.dtype == torch.int64 and dist.shape == (8, k)
    np.testing.assert_array_equal(dist.numpy(), want_d)
    np.testing.assert_array_equal(got_ids.numpy(), want_ids)


@pytest.mark.parametrize("nbits", [12, 64])
def test_range_search_matches_oracle(oracle, nbits):
    index, codes, ids = build(nbits, n=150, seed=3)
    queries = torch.cat([codes[:2], make_codes(4, nbits, 7)])
    radius = nbits * 2 // 5
    lims, dist, got_ids = index.range_search(queries, radius)
    want_lims, want_d, want_pos = oracle.radius(queries.numpy(), codes.numpy(), radius)
    assert want_lims[-1] > len(queries)
    np.testing.assert_array_equal(lims.numpy(), want_lims)
    np.testing.assert_array_equal(dist.numpy(), want_d)
    np.testing.assert_array_equal(got_ids.numpy(), ids.numpy()[want_pos])


def test_unpacked_and_packed_codes_are_the_same_index():
    nbits = 13
    bits = torch.randint(0, 2, (30, nbits), generator=torch.Generator().manual_seed(1))
    packed = pack_bits(bits)
    variants = [packed, packed.numpy(), bits, bits.bool(), bits.float(), (bits * 2 - 1).to(torch.int8),
                (bits * 2 - 1).double().numpy()]
    results = []
    for codes in variants:
        index = HammingIndex(nbits)
        index.add(codes)
        assert torch.equal(index.codes, packed)
        results.append(index.search(bits.float() * 2 - 1, 30))
    for d, i in results[1:]:
        assert torch.equal(d, results[0][0]) and torch.equal(i, results[0][1])


@pytest.mark.parametrize("stored_ids", [False, True])
@pytest.mark.parametrize("size", [0, 1, 3, 64, 65, 300, 1_500])
def test_remove_ids_keeps_every_other_row_in_order(stored_ids, size):
    """Removals of a few ids (copied run by run) and of many (gathered; from 1,000 ids looked up
    through NumPy) leave exactly the other rows, in order, with sequential ids (positions = id -
    id_base, here a slice's base of 100) and stored ones; ids repeated, absent or negative change
    nothing."""
    n = 2_000
    codes = make_codes(n + 100, 24, seed=31)
    whole = HammingIndex(24)
    stored = torch.from_numpy(np.random.default_rng(2).permutation(10 * n)[: n + 100]) + 10**6
    whole.add(codes, stored if stored_ids else None)
    index = whole.slice(100, n + 100)
    ids = index.ids
    picked = np.random.default_rng(size).choice(n, size, replace=False)
    if size >= 3:
        picked[:3] = [0, n - 1, 1]  # the first rows and the last
    gone = ids[torch.from_numpy(picked).long()]
    asked = torch.cat([gone, gone[:2], torch.tensor([-7, 10**12, 99])])  # 99: below the slice's base
    assert index.remove_ids(asked) == size
    keep = torch.ones(n, dtype=torch.bool)
    keep[torch.from_numpy(picked).long()] = False
    assert torch.equal(index.codes, codes[100:][keep]) and torch.equal(index.ids, ids[keep])


def test_default_ids_are_sequential_after_the_largest():
    index = HammingIndex(8)
    index.add(make_codes(3, 8, 0))
    index.add(make_codes(2, 8, 1), ids=torch.tensor([50, 40]))
    index.add(make_codes(2, 8, 2))
    assert index.ids.tolist() == [0, 1, 2, 50, 40, 51, 52] and len(index) == 7


def test_remove_ids_compacts_in_insertion_order(oracle):
    index, codes, ids = build(16, n=120, seed=5)
    gone = ids[::3]
    assert index.remove_ids(torch.cat([gone, torch.tensor([-5, 10**9])])) == len(gone)
    assert index.remove_ids(gone.numpy()) == 0
    keep = torch.ones(120, dtype=torch.bool)
    keep[::3] = False
    assert len(index) == int(keep.sum()) and torch.equal(index.ids, ids[keep])
    queries = codes[:4]
    dist, got = index.search(queries, 50)
    want_d, want_ids = expected_topk(oracle, queries, codes[keep], ids[keep], 50)
    assert (np.diff(want_d, axis=1) == 0).any()
    np.testing.assert_array_equal(dist.numpy(), want_d)
    np.testing.assert_array_equal(got.numpy(), want_ids)
    # Removed ids may be added again; they go after the survivors.
    index.add(codes[:1], ids=gone[:1])
    assert index.ids[-1] == gone[0]


def test_slice_shares_codes_and_keeps_ids():
    index, codes, ids = build(24, n=50, seed=2)
    part = index.slice(10, 30)
    assert part.codes.data_ptr() == index.codes[10].data_ptr() and torch.equal(part.ids, ids[10:30])
    plain = HammingIndex(24)
    plain.add(codes)
    assert plain.slice(10, 30).ids.tolist() == list(range(10, 30))
    with pytest.raises(ValueError, match="start and stop"):
        index.slice(30, 10)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda ix: ix.add([[1, 2]]), TypeError, "codes must be a torch.Tensor or numpy array, got list"),
        (lambda ix: ix.add(torch.zeros(3, 2, 5, dtype=torch.uint8)), ValueError, "codes must be 2-D"),
        (lambda ix: ix.add(torch.zeros(3, 5, dtype=torch.uint8)), ValueError, r"2 columns \(packed uint8\) or 12"),
        (lambda ix: ix.add(torch.zeros(3, 2, dtype=torch.int32)), TypeError, "must be packed uint8 codes, got torch.int32"),
        (lambda ix: ix.add(torch.full((3, 2), 255, dtype=torch.uint8)), ValueError, "bits set beyond nbits=12"),
        (lambda ix: ix.add(torch.full((3, 12), 0.5)), ValueError, r"\{0, 1\} or \{-1, \+1\}"),
        (lambda ix: ix.add(torch.zeros(3, 2, dtype=torch.uint8), ids=torch.tensor([1, 2, 1])), ValueError, r"duplicates \[1\]"),
        (lambda ix: ix.add(torch.zeros(3, 2, dtype=torch.uint8), ids=torch.tensor([1, 2])), ValueError, r"ids must have shape \(3,\)"),
        (lambda ix: ix.add(torch.zeros(1, 2, dtype=torch.uint8), ids=torch.tensor([0.5])), TypeError, "ids must hold integers"),
        (lambda ix: ix.add(torch.zeros(1, 2, dtype=torch.uint8), ids=torch.tensor([4])), ValueError, r"already in the index: \[4\]"),
        (lambda ix: ix.search(torch.zeros(2, 2, dtype=torch.uint8), 0), ValueError, "k must be >= 1, got 0"),
        (lambda ix: ix.search(torch.zeros(2, 2, dtype=torch.uint8), 9), ValueError, r"k must be <= .* \(5\), got 9"),
        (lambda ix: ix.search(torch.zeros(2, 3, dtype=torch.uint8), 1), ValueError, "queries must have 2 columns"),
        (lambda ix: ix.search(torch.zeros(2, 2, dtype=torch.uint8), 2.0), TypeError, "k must be an int"),
        (lambda ix: ix.range_search(torch.zeros(2, 2, dtype=torch.uint8), -1), ValueError, "radius must be >= 0"),
        (lambda ix: ix.remove_ids([1]), TypeError, "ids must be a torch.Tensor or numpy array of integers, got list"),
        (lambda ix: ix.add(torch.zeros(2, 2, dtype=torch.uint8), ids=np.array([7, 2**63], np.uint64)), ValueError,
         r"ids must be < 2\^63 \(they are stored as int64\), got uint64 ids \[9223372036854775808\]"),
        (lambda ix: ix.add(torch.zeros(1, 2, dtype=torch.uint8), ids=torch.tensor([2**64 - 1], dtype=torch.uint64)),
         ValueError, r"got uint64 ids \[18446744073709551615\]"),
        (lambda ix: ix.add(torch.zeros(1, 2, dtype=torch.uint8), ids=np.array([True])), TypeError,
         "ids must hold integers, got torch.bool"),
        (lambda ix: ix.remove_ids(np.array([2**64 - 1], np.uint64)), ValueError, "ids must be < 2\\^63"),
    ],
)
def test_argument_errors_name_the_argument(call, error, match):
    index = HammingIndex(12)
    index.add(torch.zeros(5, 2, dtype=torch.uint8))
    with pytest.raises(error, match=match):
        call(index)


def test_uint64_ids_are_kept_exactly_or_refused():
    index = HammingIndex(8)
    index.add(torch.zeros(2, 1, dtype=torch.uint8), ids=np.array([5, 2**63 - 1], np.uint64))
    assert index.ids.tolist() == [5, 2**63 - 1]
    # 2^63 + 5 would wrap to a negative id; refused, and the index is unchanged.
    with pytest.raises(ValueError, match="ids must be < 2\\^63"):
        index.add(torch.zeros(1, 1, dtype=torch.uint8), ids=np.array([2**63 + 5], np.uint64))
    assert len(index) == 2
    # Big-endian ids (as np.load may return them) are values, not byte patterns.
    index.add(torch.zeros(2, 1, dtype=torch.uint8), ids=np.array([2**40, 7], ">u8"))
    assert index.ids.tolist() == [5, 2**63 - 1, 2**40, 7]


def test_constructor_errors():
    with pytest.raises(ValueError, match="nbits must be >= 1, got 0"):
        HammingIndex(0)
    with pytest.raises(TypeError, match="nbits must be an int, got float"):
        HammingIndex(8.0)


@pytest.mark.parametrize("device", DEVICES)
def test_to_device_gives_the_same_results(device):
    index, codes, _ = build(64, n=100, seed=4)
    want = index.search(codes[:5], 20)
    moved = index.to(device)
    assert moved is index and index.device.type == device
    got = index.search(codes[:5].to(device), 20)
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


# ----------------------------------------------------------------------------------------------
# Memory-mapped, chunked search
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", [9, 150, 10**6])  # 3 rows, 50 rows, one chunk
def test_chunked_mmap_search_equals_in_memory(tmp_path, chunk_bytes):
    index, codes, _ = build(20, n=300, seed=11)  # duplicates straddle the chunk borders
    index.save(tmp_path / "a.idx")
    mapped = HammingIndex.load(tmp_path / "a.idx", chunk_bytes=chunk_bytes)
    assert mapped.is_mmap and isinstance(mapped._snapshot().codes, np.memmap)
    queries = torch.cat([codes[:5], make_codes(3, 20, 1)])
    for k in (1, 7, 300):
        want = index.search(queries, k)
        got = mapped.search(queries, k)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), k
    for got, want in zip(mapped.range_search(queries, 6), index.range_search(queries, 6)):
        assert torch.equal(got, want)


def _anon_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssAnon:"))


def memory_probe(path: str, queries_path: str, out_path: str) -> None:
    """Runs in a fresh interpreter: the anonymous memory a mapped search and an in-memory load add."""
    queries = torch.from_numpy(np.load(queries_path))
    warm = HammingIndex(128)  # thread pools and allocator caches first, so they are not counted
    warm.add(queries)
    warm.search(queries, 1)
    before = _anon_kib()
    mapped = HammingIndex.load(path, mmap=True, verify=True, chunk_bytes=1 << 20)
    dist, ids = mapped.search(queries, 10)
    grown = _anon_kib() - before
    before = _anon_kib()
    copied = HammingIndex.load(path, mmap=False)
    copy_grown = _anon_kib() - before
    np.savez(out_path, dist=dist.numpy(), ids=ids.numpy(), grown=grown, copy_grown=copy_grown, n=len(copied))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RssAnon from /proc/self/status (Linux)")
def test_search_of_an_index_larger_than_its_memory_budget(tmp_path):
    """The documented equivalent of "larger than RAM": in a fresh process, a 24 MiB file searched
    with a 1 MiB chunk budget grows the anonymous memory (RssAnon) by far less than the file
    (mapped file pages are page cache, reclaimable, and not anonymous); reading the same file into
    memory does grow it by the file's size, which shows the measurement sees a copy."""
    nbits, n = 128, 3 << 19  # 1.5M codes x 16 bytes = 24 MiB
    codes = np.random.default_rng(0).integers(0, 256, (n, 16), dtype=np.uint8)
    codes[-1] = codes[0]  # a tie between the first and the last chunk
    index = HammingIndex(nbits)
    index.add(codes)
    path = tmp_path / "big.idx"
    index.save(path)
    np.save(tmp_path / "queries.npy", codes[[0, 5, 77]])
    want = index.search(torch.from_numpy(codes[[0, 5, 77]]), 10)
    file_kib = os.path.getsize(path) // 1024

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    probe = f"import sys; sys.path.insert(0, {tests_dir!r}); import test_index; test_index.memory_probe(*sys.argv[1:])"
    subprocess.run([sys.executable, "-c", probe, str(path), str(tmp_path / "queries.npy"), str(tmp_path / "probe.npz")],
                   check=True, cwd=os.path.dirname(tests_dir), timeout=120)
    result = np.load(tmp_path / "probe.npz")
    np.testing.assert_array_equal(result["dist"], want[0].numpy())
    np.testing.assert_array_equal(result["ids"], want[1].numpy())
    assert result["ids"][0, :2].tolist() == [0, n - 1]
    assert result["grown"] < file_kib // 4, f"anonymous memory grew by {result['grown']} KiB for a {file_kib} KiB file"
    assert result["copy_grown"] > file_kib * 3 // 4 and result["n"] == n


# ----------------------------------------------------------------------------------------------
# faiss
# ----------------------------------------------------------------------------------------------


def _faiss_in_our_order(dist, labels, ids):
    """faiss orders equal distances its own way: map its ids to positions and sort rows by (distance, position)."""
    position = {int(v): p for p, v in enumerate(ids.tolist())}
    pos = np.vectorize(position.__getitem__, otypes=[np.int64])(labels)
    order = np.lexsort((pos, dist), axis=-1)
    return np.take_along_axis(dist, order, -1), np.take_along_axis(labels, order, -1)


@pytest.mark.parametrize("nbits, with_ids", [(64, False), (64, True), (12, True)])
def test_faiss_round_trip_and_identical_results(nbits, with_ids):
    faiss = pytest.importorskip("faiss")
    index, codes, ids = build(nbits, n=90, seed=12, with_ids=with_ids)
    queries = torch.cat([codes[:3], make_codes(4, nbits, 5)])
    fidx = index.to_faiss()
    assert isinstance(fidx, faiss.IndexBinaryIDMap if with_ids else faiss.IndexBinaryFlat) and fidx.ntotal == 90
    # The full ranking: identical distances, and identical ids once faiss's ties follow our rule.
    fd, fl = fidx.search(queries.numpy(), 90)
    d, i = index.search(queries, 90)
    assert (np.diff(fd, axis=1) == 0).any(), "ties must be planted"
    np.testing.assert_array_equal(fd, d.numpy())
    np.testing.assert_array_equal(_faiss_in_our_order(fd, fl, ids)[1], i.numpy())
    fd5, _ = fidx.search(queries.numpy(), 5)
    np.testing.assert_array_equal(fd5, index.search(queries, 5)[0].numpy())
    flims, fdist, flabels = fidx.range_search(queries.numpy(), 5)  # faiss's binary radius is strict: < 5
    lims, dist, rids = index.range_search(queries, 4)
    np.testing.assert_array_equal(flims, lims.numpy())
    for q in range(len(queries)):
        part = slice(flims[q], flims[q + 1])
        got = _faiss_in_our_order(fdist[part], flabels[part], ids)
        np.testing.assert_array_equal(got[0], dist[part].numpy())
        np.testing.assert_array_equal(got[1], rids[part].numpy())
    back = HammingIndex.from_faiss(fidx, nbits=nbits)
    assert back.nbits == nbits and torch.equal(back.codes, codes) and torch.equal(back.ids, ids)
    for got, want in zip(back.search(queries, 90), (d, i)):
        assert torch.equal(got, want)


def test_from_faiss_rejects_other_indexes():
    faiss = pytest.importorskip("faiss")
    with pytest.raises(TypeError, match="IndexBinaryFlat or IndexBinaryIDMap"):
        HammingIndex.from_faiss(faiss.IndexBinaryHash(64, 8))
    with pytest.raises(ValueError, match="nbits=20 needs 3 bytes per code"):
        HammingIndex.from_faiss(faiss.IndexBinaryFlat(64), nbits=20)


def test_faiss_missing_gives_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match="to_faiss needs faiss, which is not installed: pip install faiss-cpu"):
        HammingIndex(8).to_faiss()
    with pytest.raises(ImportError, match="from_faiss needs faiss"):
        HammingIndex.from_faiss(object())


# ----------------------------------------------------------------------------------------------
# Threads: searches while another thread adds and removes
def test_adds_write_only_their_own_codes_and_never_change_what_an_earlier_state_shows():
    """Small adds go into spare rows after the codes (no copy of the index); the codes and every
    earlier view of them stay as they were added, through growth, a failed add, and a removal."""
    nbits = 64
    codes = make_codes(3_000, nbits, seed=11)
    index, views, added = HammingIndex(nbits), [], 0
    # The first add takes exactly its rows (1,000); a full buffer grows by a quarter (to 1,250, then
    # 1,533 = 1,227 + 1,227 // 4, then 2,000, which the add needs); the adds between fit and move nothing.
    for size, fits in ((1_000, False), (10, False), (10, True), (200, True), (7, True), (300, False), (1, True),
                       (472, False)):
        before = index.codes
        index.add(codes[added : added + size])
        added += size
        assert (index.codes.untyped_storage().data_ptr() == before.untyped_storage().data_ptr()) == fits, added
        views.append((index.codes, codes[:added].clone()))
    with pytest.raises(ValueError, match="ids already in the index"):
        index.add(codes[added : added + 5], torch.tensor([0, 1, 2, 3, 4]))
    assert len(index) == added
    index.add(codes[added : added + 500])
    added += 500
    index.remove_ids(torch.arange(0, 100))
    index.add(codes[added : added + 8])
    added += 8
    for view, want in views:
        assert torch.equal(view, want)
    want_codes = codes[100:added]
    assert torch.equal(index.codes, want_codes)
    assert torch.equal(index.ids, torch.cat([torch.arange(100, added - 8), torch.arange(added - 8, added)]))
    oracle = HammingIndex(nbits)
    oracle.add(want_codes, index.ids)
    queries = make_codes(20, nbits, seed=12)
    for got, want in zip(index.search(queries, 25), oracle.search(queries, 25)):
        assert torch.equal(got, want)


def test_adds_with_ids_refuse_every_id_in_the_index_and_never_change_what_an_earlier_state_shows():
    """Adds with ids (in random order, then none after stored ids) write their ids past the rows any
    state shows and check them against every id added before (kept in sorted runs between adds):
    each earlier add's ids are refused, a removed id can come back, a failed add changes nothing."""
    nbits = 32
    codes = make_codes(2_000, nbits, seed=21)
    pool = torch.from_numpy(np.random.default_rng(5).permutation(10_000))  # distinct ids, random order
    index, views, given, added = HammingIndex(nbits), [], [], 0
    # The ids' buffer grows like the codes' (300 exact, then to 375, 546, 682, 820, 970).
    for size, fits in ((300, False), (5, False), (40, True), (1, True), (200, False), (17, False), (90, True),
                       (3, True), (120, False), (64, False)):
        new = pool[added : added + size]
        before = index._snapshot().ids
        index.add(codes[added : added + size], new)
        after = index._snapshot().ids
        kept = before is not None and after.untyped_storage().data_ptr() == before.untyped_storage().data_ptr()
        assert kept == fits, added
        added += size
        given.append(new)
        views.append((index.ids, torch.cat(given)))
        for earlier in given:
            clash = int(earlier[len(earlier) // 2])
            with pytest.raises(ValueError, match=rf"ids already in the index: \[{clash}\]"):
                index.add(codes[:2], torch.tensor([20_000 + added, clash]))
    assert len(index) == added
    with pytest.raises(ValueError, match=r"ids must be unique, got duplicates \[30000\]"):
        index.add(codes[:3], torch.tensor([30_000, 30_001, 30_000]))
    assert len(index) == added and 30_001 not in index.ids.tolist()
    largest = int(pool[:added].max())
    index.add(codes[added : added + 3])  # no ids: on from the largest id of any add
    assert index.ids[-3:].tolist() == [largest + 1, largest + 2, largest + 3]
    added += 3
    removed = given[0][:10]
    assert index.remove_ids(removed) == 10
    index.add(codes[added : added + 10], removed)  # a removed id is free again
    with pytest.raises(ValueError, match="ids already in the index"):
        index.add(codes[:1], given[0][10:11])
    for view, want in views:
        assert torch.equal(view, want)
    oracle = HammingIndex(nbits)
    oracle.add(torch.cat([codes[10:added], codes[added : added + 10]]), index.ids)
    index.remove_ids(given[1][:2])  # a removal, then an add without ids: on from the largest id
    oracle.remove_ids(given[1][:2])
    assert index._code_rows.buffer is None and index._id_runs is None  # nothing of the old rows kept
    largest = int(index.ids.max())
    index.add(codes[:2])
    oracle.add(codes[:2])
    assert index.ids[-2:].tolist() == [largest + 1, largest + 2] and torch.equal(index.ids, oracle.ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # strided ids: no warning from the lookup
        index.add(codes[:3], torch.arange(40_000, 40_006)[::2])
    oracle.add(codes[:3], torch.arange(40_000, 40_006)[::2])
    queries = make_codes(20, nbits, seed=22)
    for got, want in zip(index.search(queries, 25), oracle.search(queries, 25)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("with_ids", [False, True])
def test_searches_stay_true_while_another_thread_adds_many_small_batches(with_ids):
    """The add path that writes codes (and ids, given in random order) into spare rows, under
    concurrent searches: every (id, distance) a search returns is true of that id's code, and a
    search over a state taken early gives the same results at the end."""
    import threading
    import time

    nbits, base, batch = 64, 20_000, 50
    code_of_id = make_codes(base + 2_000 * batch, nbits, seed=13).numpy()
    order = np.random.default_rng(3).permutation(len(code_of_id)) if with_ids else np.arange(len(code_of_id))

    def rows(start: int, stop: int):
        return code_of_id[order[start:stop]], torch.from_numpy(order[start:stop]) if with_ids else None

    index = HammingIndex(nbits)
    index.add(*rows(0, base))
    early = index._snapshot()
    queries = torch.from_numpy(code_of_id[:8])
    early_result = early.search_positions(queries, 10, index.chunk_bytes)
    stop, failures, counts = threading.Event(), [], {"adds": 0, "searches": 0}

    def writer():
        at = base
        while not stop.is_set() and at + batch <= len(code_of_id):
            index.add(*rows(at, at + batch))
            at += batch
            counts["adds"] += 1

    def searcher(seed: int):
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            q = code_of_id[rng.integers(0, len(code_of_id), 8)]
            dist, ids = (t.numpy() for t in index.search(q, 10))
            true = _hamming_rows(np.repeat(q, 10, axis=0), code_of_id[ids.reshape(-1)]).reshape(dist.shape)
            if not (true == dist).all():
                failures.append("a k-NN (id, distance) pair is not true of that id's code")
            counts["searches"] += 1

    threads = [threading.Thread(target=searcher, args=(s,)) for s in (1, 2)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert counts["adds"] >= 5 and counts["searches"] >= 5, counts
    assert torch.equal(index.codes, torch.from_numpy(code_of_id[order[: len(index)]]))
    assert torch.equal(index.ids, torch.from_numpy(order[: len(index)]))
    for got, want in zip(early.search_positions(queries, 10, index.chunk_bytes), early_result):
        assert torch.equal(got, want)


# ----------------------------------------------------------------------------------------------


def _hamming_rows(queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Distance of query row i to code row i (both packed uint8)."""
    return np.unpackbits(np.bitwise_xor(queries, codes), axis=1).sum(axis=1)


@pytest.mark.parametrize("index_type", ["HammingIndex", "MIHIndex"])
def test_searches_see_one_state_while_another_thread_adds_and_removes(index_type):
    """Every (id, distance) a search returns is true of the code that id was added with, and no search
    raises, while a writer adds and removes; the writer's own changes are all in the final index."""
    import threading
    import time

    from cibhash_ext.mih import MIHIndex

    nbits, base, batch, seconds = 64, 30_000, 400, 2.0
    code_of_id = make_codes(base + 400 * batch, nbits, seed=7).numpy()  # codes of every id ever added
    index = {"HammingIndex": HammingIndex, "MIHIndex": MIHIndex}[index_type](nbits)
    index.add(code_of_id[:base])
    stop = threading.Event()
    failures: list[str] = []
    counts = {"searches": 0, "writes": 0}

    def writer():
        rng = np.random.default_rng(0)
        live, next_id = [], base
        while not stop.is_set() and next_id + batch <= len(code_of_id):
            new = np.arange(next_id, next_id + batch)
            index.add(code_of_id[new], new)
            live.extend(new.tolist())
            next_id += batch
            gone = rng.choice(len(live), size=batch // 2, replace=False)
            removed = index.remove_ids(np.asarray(live)[gone])
            if removed != batch // 2:
                failures.append(f"remove_ids removed {removed}, expected {batch // 2}")
            live = np.delete(np.asarray(live), gone).tolist()
            counts["writes"] += 1
        counts["final_live"] = sorted(live)

    def searcher(seed: int):
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            queries = code_of_id[rng.integers(0, len(code_of_id), 8)]
            try:
                dist, ids = index.search(queries, 10)
                lims, rdist, rids = index.range_search(queries[:2], 20)
            except Exception as exc:  # a failure to report, not to stop the other threads on
                failures.append(f"search raised {type(exc).__name__}: {exc}")
                return
            dist, ids = dist.numpy(), ids.numpy()
            true = _hamming_rows(np.repeat(queries, 10, axis=0), code_of_id[ids.reshape(-1)]).reshape(dist.shape)
            if not (true == dist).all() or (np.diff(dist, axis=1) < 0).any():
                failures.append("a k-NN (id, distance) pair is not true of that id's code, or is out of order")
            rq = np.repeat(np.arange(2), np.diff(lims.numpy()))
            rtrue = _hamming_rows(queries[rq], code_of_id[rids.numpy()])
            if not (rtrue == rdist.numpy()).all() or (rtrue > 20).any():
                failures.append("a range (id, distance) pair is not true of that id's code")
            counts["searches"] += 1

    threads = [threading.Thread(target=searcher, args=(s,)) for s in (1, 2)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert counts["writes"] >= 5 and counts["searches"] >= 5, counts  # both sides really ran together
    assert sorted(index.ids.tolist()) == list(range(base)) + counts["final_live"]
# Filtered search (allow=): against the oracle restricted to the allowed positions
# ----------------------------------------------------------------------------------------------

from cibhash_ext.index import NO_DISTANCE, NO_ID, IDSelectorBatch, IDSelectorRange  # noqa: E402


def filtered_oracle(oracle, queries, codes, ids, allowed_positions, k=None, radius=None):
    """Top-k (padded with (2^31 - 1, -1)) or radius results over the allowed positions only."""
    allowed = np.sort(np.asarray(allowed_positions, dtype=np.int64))
    ids = ids.numpy()
    if radius is not None:
        lims, d, p = oracle.radius(queries.numpy(), codes.numpy()[allowed], radius)
        return np.asarray(lims), np.asarray(d), ids[allowed[np.asarray(p, dtype=np.int64)]]
    width = min(k, allowed.size)
    d = np.full((queries.shape[0], k), NO_DISTANCE, np.int64)
    out = np.full((queries.shape[0], k), NO_ID, np.int64)
    if width:
        dist, pos = oracle.topk(queries.numpy(), codes.numpy()[allowed], width)
        d[:, :width], out[:, :width] = dist, ids[allowed[pos]]
    return d, out


def allowed_positions(kind, ids, n):
    """(allow argument, allowed positions) for each kind of filter."""
    gen = np.random.default_rng(len(kind))
    ids_np = ids.numpy()
    if kind == "sparse_batch":  # gathered
        picked = gen.choice(n, 6, replace=False)
        return IDSelectorBatch(np.concatenate([ids_np[picked], [10**12, -5]])), picked
    if kind == "dense_batch":  # scanned with an allow bitmap
        picked = gen.choice(n, n * 2 // 3, replace=False)
        return torch.from_numpy(ids_np[picked]), picked
    if kind == "id_range":
        lo, hi = int(np.quantile(ids_np, 0.2)), int(np.quantile(ids_np, 0.9))
        return IDSelectorRange(lo, hi), np.nonzero((ids_np >= lo) & (ids_np < hi))[0]
    if kind == "python_range":
        lo, hi = int(np.quantile(ids_np, 0.3)), int(np.quantile(ids_np, 0.7))
        return range(lo, hi), np.nonzero((ids_np >= lo) & (ids_np < hi))[0]
    raise AssertionError(kind)


FILTERS = ["sparse_batch", "dense_batch", "id_range", "python_range"]


@pytest.mark.parametrize("nbits", [12, 64, 200])
@pytest.mark.parametrize("with_ids", [True, False])
@pytest.mark.parametrize("kind", FILTERS)
def test_filtered_search_matches_oracle_with_ties(oracle, nbits, with_ids, kind):
    n = 300
    index, codes, ids = build(nbits, n=n, seed=nbits + 7, with_ids=with_ids)
    allow, positions = allowed_positions(kind, ids, n)
    queries = torch.cat([codes[positions[:3]], make_codes(6, nbits, 5)])
    k = 20
    dist, got = index.search(queries, k, allow=allow)
    want_d, want_ids = filtered_oracle(oracle, queries, codes, ids, positions, k=k)
    np.testing.assert_array_equal(dist.numpy(), want_d)
    np.testing.assert_array_equal(got.numpy(), want_ids)
    if len(positions) >= k:
        assert (np.diff(want_d, axis=1) == 0).any(), "ties must be planted among the allowed codes"
    assert set(got[got >= 0].tolist()) <= set(ids.numpy()[positions].tolist())
    lims, rd, rids = index.range_search(queries, nbits // 3, allow=allow)
    want_l, want_rd, want_rids = filtered_oracle(oracle, queries, codes, ids, positions, radius=nbits // 3)
    assert want_rd.size > 0, "the radius must find allowed codes"
    np.testing.assert_array_equal(lims.numpy(), want_l)
    np.testing.assert_array_equal(rd.numpy(), want_rd)
    np.testing.assert_array_equal(rids.numpy(), want_rids)


def test_filter_paths_are_the_ones_claimed():
    index, codes, ids = build(64, n=320)
    assert index._snapshot().select(IDSelectorBatch(ids[:5])).positions is not None
    assert index._snapshot().select(ids[:300]).bitmap is not None
    plain, _, _ = build(64, n=320, with_ids=False)
    sel = plain._snapshot().select(IDSelectorRange(100, 200))
    assert (sel.start, sel.stop, sel.count, sel.bitmap, sel.positions) == (100, 200, 100, None, None)
    assert plain._snapshot().select(torch.arange(0, 400)).count == 320


def test_empty_all_and_short_filters(oracle):
    index, codes, ids = build(64, n=100)
    queries = codes[:4]
    dist, got = index.search(queries, 5, allow=IDSelectorBatch(torch.tensor([], dtype=torch.int64)))
    assert (dist == NO_DISTANCE).all() and (got == NO_ID).all() and dist.shape == (4, 5)
    lims, rd, rids = index.range_search(queries, 64, allow=range(0, 0))
    assert lims.tolist() == [0] * 5 and rd.numel() == 0 and rids.numel() == 0
    full = index.search(queries, 30, allow=IDSelectorRange(-(2**62), 2**62))
    plain = index.search(queries, 30)
    assert torch.equal(full[0], plain[0]) and torch.equal(full[1], plain[1])
    three = ids[[5, 50, 90]]
    dist, got = index.search(queries, 5, allow=three)
    want_d, want_ids = filtered_oracle(oracle, queries, codes, ids, [5, 50, 90], k=5)
    np.testing.assert_array_equal(dist.numpy(), want_d)
    np.testing.assert_array_equal(got.numpy(), want_ids)
    assert (got[:, 3:] == NO_ID).all() and (got[:, :3] >= 0).all()


def test_filtered_search_after_removals(oracle):
    index, codes, ids = build(32, n=400)
    gone = ids[::3]
    index.remove_ids(gone)
    keep = torch.ones(400, dtype=torch.bool)
    keep[::3] = False
    codes, ids = codes[keep], ids[keep]
    allow_ids = torch.cat([ids[::2], gone[:10]])  # removed ids in the filter are ignored
    positions = np.arange(0, ids.numel(), 2)
    dist, got = index.search(codes[:5], 15, allow=allow_ids)
    want_d, want_ids = filtered_oracle(oracle, codes[:5], codes, ids, positions, k=15)
    np.testing.assert_array_equal(dist.numpy(), want_d)
    np.testing.assert_array_equal(got.numpy(), want_ids)


@pytest.mark.parametrize("kind", FILTERS)
def test_filtered_search_on_a_mapped_index_streams_chunks(oracle, tmp_path, kind):
    n = 1000
    index, codes, ids = build(64, n=n, seed=3)
    index.save(tmp_path / "db.idx")
    mapped = HammingIndex.load(tmp_path / "db.idx", mmap=True, chunk_bytes=8 * 77)  # 72 codes per chunk
    assert mapped.is_mmap
    allow, positions = allowed_positions(kind, ids, n)
    queries = torch.cat([codes[positions[:2]], make_codes(3, 64, 1)])
    dist, got = mapped.search(queries, 12, allow=allow)
    want_d, want_ids = filtered_oracle(oracle, queries, codes, ids, positions, k=12)
    np.testing.assert_array_equal(dist.numpy(), want_d)
    np.testing.assert_array_equal(got.numpy(), want_ids)
    lims, rd, rids = mapped.range_search(queries, 24, allow=allow)
    want_l, want_rd, want_rids = filtered_oracle(oracle, queries, codes, ids, positions, radius=24)
    np.testing.assert_array_equal(lims.numpy(), want_l)
    np.testing.assert_array_equal(rids.numpy(), want_rids)


@pytest.mark.parametrize(
    "allow, error, match",
    [
        ("ids", TypeError, "allow must be None, an IDSelectorRange, an IDSelectorBatch, a range or a tensor of ids, got str"),
        (range(0, 10, 2), ValueError, "allow as a range must have step 1, got step 2"),
        (torch.tensor([1.5]), TypeError, "ids must hold integers, got torch.float32"),
        (torch.zeros(2, 2, dtype=torch.int64), ValueError, r"ids must be 1-D, got shape \(2, 2\)"),
    ],
)
def test_filter_errors_name_the_argument(allow, error, match):
    index, codes, _ = build(16, n=20)
    with pytest.raises(error, match=match):
        index.search(codes[:1], 3, allow=allow)
    with pytest.raises(error, match=match):
        index.range_search(codes[:1], 3, allow=allow)


def test_selector_errors():
    with pytest.raises(ValueError, match="imax must be >= imin=5, got 2"):
        IDSelectorRange(5, 2)
    with pytest.raises(TypeError, match="imin must be an int, got float"):
        IDSelectorRange(1.0, 2)
