"""MIHIndex against HammingIndex on the same codes (k-NN and radius, ids, removals, filters, planted
ties, save/load/mmap, 1 and 2 threads), its table choice, the scan fall-back and its errors."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from cibhash_ext import index as index_module
from cibhash_ext import index_file
from cibhash_ext.index import HammingIndex, IDSelectorBatch, IDSelectorRange
from cibhash_ext import mih as mih_module
from cibhash_ext.mih import MIHIndex, choose_tables
from conftest import clear_padding, random_codes


def clustered_codes(n: int, nbits: int, centres: int, flip: float, seed: int, draw: int = 0) -> torch.Tensor:
    """Codes near a few centres (each bit flipped with probability ``flip``), with exact duplicates,
    so near neighbours sit in shared buckets and equal distances occur. The centres depend on
    ``seed`` only; ``draw`` picks another sample around the same centres."""
    centre_bits = np.random.default_rng(seed).integers(0, 2, (centres, nbits), dtype=np.uint8)
    gen = np.random.default_rng([seed, draw])
    bits = centre_bits[gen.integers(0, centres, n)] ^ (gen.random((n, nbits)) < flip).astype(np.uint8)
    bits[n - n // 10 :] = bits[gen.integers(0, n - n // 10, n // 10)]
    return torch.from_numpy(np.packbits(bits, axis=1, bitorder="little"))


def pair(codes: torch.Tensor, nbits: int, ids=None, m=None) -> tuple[MIHIndex, HammingIndex]:
    mih, scan = MIHIndex(nbits, m=m), HammingIndex(nbits)
    mih.add(codes, ids)
    scan.add(codes, ids)
    return mih, scan


def assert_same_knn(mih, scan, queries, k, allow=None):
    got, want = mih.search(queries, k, allow=allow), scan.search(queries, k, allow=allow)
    np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
    np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
    return want


def assert_same_range(mih, scan, queries, radius, allow=None):
    got, want = mih.range_search(queries, radius, allow=allow), scan.range_search(queries, radius, allow=allow)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w.numpy())
    return want


@pytest.mark.parametrize("nbits, m", [(64, None), (64, 2), (64, 5), (32, None), (128, None), (20, 3), (100, 4)])
def test_knn_and_radius_equal_the_scan_with_ties(nbits, m):
    codes = clustered_codes(3000, nbits, centres=40, flip=0.08, seed=nbits)
    ids = torch.randperm(3000, generator=torch.Generator().manual_seed(1)) * 7 + 3
    mih, scan = pair(codes, nbits, ids, m)
    assert len(mih.specs) == (m or len(choose_tables(nbits, 3000)))
    queries = torch.cat([codes[:5], clustered_codes(20, nbits, centres=40, flip=0.1, seed=nbits, draw=1)])
    for k in (1, 10, 100):
        dist, _ = assert_same_knn(mih, scan, queries, k)
    assert (dist.diff(dim=1) == 0).any(), "ties must be planted"
    for radius in (0, 2, nbits // 8, nbits // 4):
        lims, _, _ = assert_same_range(mih, scan, queries, radius)
    assert lims[-1] > 0


def test_the_tables_answer_clustered_queries_without_the_scan(monkeypatch):
    """With budget to spare, every clustered query is answered by the tables: the scan is never called."""
    codes = clustered_codes(200_000, 64, centres=2000, flip=0.05, seed=2)
    mih, scan = pair(codes, 64)
    queries = clustered_codes(50, 64, centres=2000, flip=0.05, seed=2, draw=1)
    _, _, done = torch.ops.cibhash_ext.mih_search(
        queries, mih.codes, mih._state.segments[0].layout, list(mih._state.segments[0].tables), 10, None, 2000)
    assert bool(done.all())
    want_knn, want_range = scan.search(queries, 10), scan.range_search(queries, 5)
    monkeypatch.setattr(mih_module, "BUDGET_PER_CODE_SINGLE", 1.0)
    monkeypatch.setattr(mih_module, "BUDGET_PER_CODE_BATCH", 1.0)

    def no_scan(*args, **kwargs):
        raise AssertionError("the scan was called")

    monkeypatch.setattr(index_module._State, "search_positions", no_scan)
    monkeypatch.setattr(index_module._State, "range_positions", no_scan)
    for q in (queries[:1], queries):
        got = mih.search(q, 10)
        assert torch.equal(got[0], want_knn[0][: len(q)]) and torch.equal(got[1], want_knn[1][: len(q)])
    got = mih.range_search(queries, 5)
    assert all(torch.equal(g, w) for g, w in zip(got, want_range)) and want_range[0][-1] > 0


def timed_paths(monkeypatch, tables_cost):
    """MIHIndex's clock made to advance by tables_cost(search number) for a search through the tables
    (which then answer every query) and by 1.0 for a scan. Returns (a dict whose "number" the caller
    sets before each search, the list of numbers of the searches that took the tables)."""
    search, clock, table_searches = {"number": 0}, [0.0], []
    real_op, real_scan = mih_module._search_op, index_module._State.search_positions

    def tables(q, *args):
        clock[0] += tables_cost(search["number"])
        table_searches.append(search["number"])
        return real_op(q, *args)

    def scanned(self, *args, **kwargs):
        clock[0] += 1.0
        return real_scan(self, *args, **kwargs)

    monkeypatch.setattr(mih_module, "BUDGET_PER_CODE_SINGLE", 1.0)
    monkeypatch.setattr(mih_module, "_clock", lambda: clock[0])
    monkeypatch.setattr(mih_module, "_search_op", tables)
    monkeypatch.setattr(index_module._State, "search_positions", scanned)
    return search, table_searches


@pytest.mark.parametrize("tables_cost, expected_table_searches", [
    (1.02, [1, 2, 16, 32]),  # close: the other path once in 16 searches
    (2.0, [1, 2, 32]),  # twice the scan's time: once in 20 keeps exploring at 5 % of the mean (32: a power of two)
    (10.0, [1, 2]),  # ten times: once in 180 (256)
    (0.1, "all but 3 and 4"),  # the scan ten times the tables': once in 256
])
def test_small_searches_take_the_path_that_has_been_faster(monkeypatch, tables_cost, expected_table_searches):
    """Single queries take the tables or the scan, whichever has taken less time per query on this
    state for this kind of search: the first two take the tables, the next two the scan (a path's
    first search is not timed), then the faster one, with one search in 16 to 256 taking the other,
    as rarely as keeps that within 5 % of the mean time. Results are the scan's on every path."""
    codes = clustered_codes(20_000, 64, centres=50, flip=0.03, seed=8)
    mih, scan = pair(codes, 64)
    queries = codes[:40]
    search, table_searches = timed_paths(monkeypatch, lambda number: tables_cost)
    want = scan.search(queries, 5)
    for search_number in range(1, 41):
        search["number"] = search_number
        got = mih.search(queries[search_number - 1 : search_number], 5)
        assert torch.equal(got[0], want[0][search_number - 1 : search_number])
        assert torch.equal(got[1], want[1][search_number - 1 : search_number])
    if expected_table_searches == "all but 3 and 4":
        expected_table_searches = [n for n in range(1, 41) if n not in (3, 4)]
    assert table_searches == expected_table_searches
    # Another kind of search (k, or the number of queries) starts over: tables first.
    table_searches.clear()
    search["number"] = 0
    mih.search(queries[:1], 7)
    mih.search(queries[:2], 5)
    assert table_searches == [0, 0]
    # An add that only grows the scanned tail keeps the timings; one that builds tables starts over.
    table_searches.clear()
    mih.add(codes[:10])
    mih.search(queries[:1], 5)
    assert table_searches == ([0] if tables_cost < 1 else [])
    mih.add(codes[: mih_module._MIN_SEGMENT])
    mih.search(queries[:1], 5)
    assert table_searches == ([0, 0] if tables_cost < 1 else [0])


def test_one_slow_search_does_not_decide_the_path(monkeypatch):
    """A path's first search (first-use costs) is not timed, and a later slow one counts as at most
    twice the path's mean: the tables, ten times faster than the scan, stay the choice although
    their first search and their tenth took 100 times the scan's time."""
    codes = clustered_codes(20_000, 64, centres=50, flip=0.03, seed=8)
    mih, _ = pair(codes, 64)
    search, table_searches = timed_paths(monkeypatch, lambda number: 100.0 if number in (1, 10) else 0.1)
    for search_number in range(1, 31):
        search["number"] = search_number
        mih.search(codes[search_number : search_number + 1], 5)
    assert table_searches == [n for n in range(1, 31) if n not in (3, 4)]


def test_exploring_is_as_rare_as_keeps_its_cost_within_five_percent():
    assert mih_module.explore_interval(1.0, 1.0) == 16 and mih_module.explore_interval(1.0, 1.5) == 16
    # 2 / 0.05 = 40 searches, rounded up to a power of two
    assert mih_module.explore_interval(1.0, 3.0) == 64 == mih_module.explore_interval(3.0, 1.0)
    assert mih_module.explore_interval(1.0, 1.75) == 16 and mih_module.explore_interval(1.0, 1.85) == 32
    assert mih_module.explore_interval(1.0, 100.0) == 256 and mih_module.explore_interval(0.0, 1.0) == 256


def test_small_range_searches_equal_the_scan_on_either_path():
    codes = clustered_codes(20_000, 64, centres=50, flip=0.03, seed=9)
    mih, scan = pair(codes, 64)
    for i in range(40):  # the path choice settles and explores along the way
        assert_same_range(mih, scan, codes[i : i + 1], 3)
        assert_same_range(mih, scan, codes[i : i + 2], 3, allow=IDSelectorRange(100, 15_000))


def test_a_batch_whose_probe_fails_is_scanned_whole(monkeypatch):
    codes = random_codes(5000, 8, torch.Generator().manual_seed(3))
    mih, scan = pair(codes, 64, m=1)
    queries = random_codes(40, 8, torch.Generator().manual_seed(4))
    calls = []

    def counted(q, *args):
        calls.append(q.shape[0])
        return torch.ops.cibhash_ext.mih_search(q, *args)

    monkeypatch.setattr(mih_module, "_search_op", counted)
    assert_same_knn(mih, scan, queries, 10)
    assert calls == [16]  # the probe only


def test_uniform_codes_fall_back_to_the_scan_with_the_same_results():
    codes = random_codes(5000, 8, torch.Generator().manual_seed(3))
    mih, scan = pair(codes, 64, m=1)  # one 32-bit table: hopeless, so the budget runs out
    queries = random_codes(6, 8, torch.Generator().manual_seed(4))
    _, _, done = torch.ops.cibhash_ext.mih_search(
        queries, mih.codes, mih._state.segments[0].layout, list(mih._state.segments[0].tables), 10, None, 100)
    assert not bool(done.any())
    assert_same_knn(mih, scan, queries, 10)
    lims, _, _, done = torch.ops.cibhash_ext.mih_range_search(
        queries, mih.codes, mih._state.segments[0].layout, list(mih._state.segments[0].tables), 20, None, 100)
    assert not bool(done.any()) and lims[-1] == 0
    assert_same_range(mih, scan, queries, 20)


def budget_spent(codes: torch.Tensor, specs, query: torch.Tensor, k: int | None = None, radius: int | None = None):
    """The budget units a search of the tables spends (one per bucket probe and one per code in a
    probed bucket), from the definition: step (r, i) probes table i's ring of radius r; after it
    every code within distance m * r + i is found, and the search stops at the first step after which
    the k-th distance found (or the radius) is covered."""
    m = len(specs)
    bits = np.unpackbits(codes.numpy(), axis=1, bitorder="little").astype(np.int64)
    qbits = np.unpackbits(query.numpy(), axis=1, bitorder="little").astype(np.int64)[0]
    distance = (bits != qbits).sum(1)
    sub = np.stack([(bits != qbits)[:, s.bit_start : s.bit_start + s.bit_count].sum(1) for s in specs], 1)
    steps = sub * m + np.arange(m)  # the step at which table i enumerates each code
    found_at = steps.min(1)
    total_bits = sum(s.bit_count for s in specs)
    for step in range(total_bits + m):
        if step >= total_bits:
            break
        if radius is not None and step >= radius:
            break
        if k is not None:
            found = np.sort(distance[found_at <= step])
            if len(found) >= k and found[k - 1] <= step:
                break
    probes = sum(math.comb(specs[s % m].bit_count, s // m) for s in range(step + 1))
    return probes + int((steps <= step).sum())


@pytest.mark.parametrize("kind", ["uniform", "clustered"])
def test_a_query_is_answered_by_the_tables_exactly_when_its_search_fits_the_budget(kind):
    """The tables answer a query when the search spends at most the budget; a search that would
    spend more is handed to the scan (however early the kernel gives up on it)."""
    codes = (random_codes(3000, 8, torch.Generator().manual_seed(5)) if kind == "uniform"
             else clustered_codes(3000, 64, centres=30, flip=0.08, seed=6))
    mih = MIHIndex(64)
    mih.add(codes)
    state = mih._state
    queries = (random_codes(8, 8, torch.Generator().manual_seed(7)) if kind == "uniform"
               else clustered_codes(8, 64, centres=30, flip=0.08, seed=6, draw=1))
    for q in queries.split(1):
        for k, radius in ((1, None), (10, None), (None, 6), (None, 14)):
            spent = budget_spent(codes, state.segments[0].specs, q, k, radius)
            for budget in (spent - 1, spent, 2 * spent):
                if k is not None:
                    _, _, done = torch.ops.cibhash_ext.mih_search(
                        q, state.scan.codes, state.segments[0].layout, list(state.segments[0].tables), k, None, budget)
                else:
                    *_, done = torch.ops.cibhash_ext.mih_range_search(
                        q, state.scan.codes, state.segments[0].layout, list(state.segments[0].tables), radius, None, budget)
                assert bool(done) == (spent <= budget), (k, radius, spent, budget)


def test_removals_and_adds_keep_insertion_order():
    codes = clustered_codes(2000, 64, centres=20, flip=0.05, seed=5)
    ids = torch.arange(2000) * 2
    mih, scan = pair(codes, 64, ids)
    for index in (mih, scan):
        assert index.remove_ids(ids[::4]) == 500
        index.add(codes[:300], ids=torch.arange(300) * 2 + 1)  # duplicates of earlier codes: ties
        index.add(codes[300:310])
    queries = codes[:8]
    assert torch.equal(mih.ids, scan.ids) and len(mih) == len(scan) == 1810
    dist, _ = assert_same_knn(mih, scan, queries, 30)
    assert (dist.diff(dim=1) == 0).any()
    assert_same_range(mih, scan, queries, 6)


@pytest.mark.parametrize(
    "allow",
    [IDSelectorBatch(torch.arange(0, 6000, 7)), IDSelectorBatch(torch.arange(0, 6000, 2)), IDSelectorRange(1000, 3000),
     torch.arange(0, 6000, 500)],
)
def test_filtered_search_equals_the_scan(allow):
    codes = clustered_codes(3000, 64, centres=30, flip=0.06, seed=6)
    mih, scan = pair(codes, 64, torch.arange(3000) * 2)
    queries = codes[::300]
    assert_same_knn(mih, scan, queries, 10, allow)
    assert_same_knn(mih, scan, queries, 100, allow)
    assert_same_range(mih, scan, queries, 8, allow)


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_keeps_the_tables_and_the_results(tmp_path, mmap):
    codes = clustered_codes(4000, 64, centres=30, flip=0.06, seed=7)
    mih, scan = pair(codes, 64, torch.arange(4000) + 100)
    mih.save(tmp_path / "db.idx")
    assert index_file.read_header(str(tmp_path / "db.idx")).tables_offset > 0
    loaded = MIHIndex.load(tmp_path / "db.idx", mmap=mmap)
    assert loaded.is_mmap == mmap and loaded.specs == mih.specs
    assert all(torch.equal(a, b) for a, b in zip(loaded._state.segments[0].tables, mih._state.segments[0].tables))
    queries = codes[:10]
    assert_same_knn(loaded, scan, queries, 10)
    assert_same_range(loaded, scan, queries, 5)
    # A plain index loads its codes and ids from the same file, and MIHIndex loads a plain file.
    plain = HammingIndex.load(tmp_path / "db.idx")
    assert torch.equal(plain.ids, scan.ids)
    scan.save(tmp_path / "plain.idx")
    assert index_file.read_header(str(tmp_path / "plain.idx")).tables_offset == 0
    rebuilt = MIHIndex.load(tmp_path / "plain.idx", mmap=mmap)
    assert rebuilt.specs == mih.specs
    assert_same_knn(rebuilt, scan, queries, 10)
    if mmap:
        with pytest.raises(RuntimeError, match="memory-mapped read-only"):
            loaded.add(codes[:1])


def test_a_loaded_index_keeps_its_rule_for_later_rebuilds(tmp_path):
    """After load, the tables of a grown index follow what the saved one followed: the paper's rule
    (m from the new size) unless m was chosen."""
    codes = clustered_codes(70_000, 64, centres=30, flip=0.06, seed=7)
    for m, want in ((None, lambda n: len(mih_module.choose_tables(64, n))), (5, lambda n: 5)):
        mih = MIHIndex(64, m=m)
        mih.add(codes[:300])  # m = round(64 / log2(300)) = 8 by the rule
        mih.save(tmp_path / "db.idx")
        loaded = MIHIndex.load(tmp_path / "db.idx", mmap=False)
        assert len(loaded.specs) == want(300)
        loaded.add(codes[300:])  # a rebuild of all 70,000 codes: the rule gives 4
        assert len(loaded.specs) == want(70_000) and (m is not None or want(70_000) != want(300))
        assert_same_knn(loaded, pair(codes, 64)[1], codes[:5], 10)


def test_corrupt_tables_are_refused(tmp_path):
    codes = clustered_codes(500, 64, centres=5, flip=0.1, seed=8)
    mih, _ = pair(codes, 64)
    path = tmp_path / "db.idx"
    mih.save(path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x40
    path.write_bytes(raw)
    with pytest.raises(ValueError, match="tables checksum mismatch"):
        MIHIndex.load(path)
    path.write_bytes(bytes(raw[:-4]))
    with pytest.raises(ValueError, match="the tables section says the file has"):
        MIHIndex.load(path)


@pytest.mark.parametrize("threads", [1, 2])
def test_one_and_two_threads_give_the_same_results(threads):
    codes = clustered_codes(5000, 64, centres=30, flip=0.06, seed=9)
    mih, scan = pair(codes, 64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert_same_knn(mih, scan, codes[:64], 10)
        assert_same_range(mih, scan, codes[:64], 6)
    finally:
        torch.set_num_threads(before)


def grown(codes: torch.Tensor, sizes, monkeypatch, min_segment: int = 64, rest_share: int = 1, ids=None):
    """An MIHIndex and a HammingIndex grown by adds of ``sizes`` codes, with segments from
    ``min_segment`` codes on and a full rebuild when the codes outside the first segment pass
    1/rest_share of it (never, at 1), and the (start, stop) of every segment MIHIndex built."""
    monkeypatch.setattr(mih_module, "_MIN_SEGMENT", min_segment)
    monkeypatch.setattr(mih_module, "_REST_SHARE", rest_share)
    built = []
    real = MIHIndex._segment

    def recorded(self, scan, start, stop):
        built.append((start, stop))
        return real(self, scan, start, stop)

    monkeypatch.setattr(MIHIndex, "_segment", recorded)
    mih, scan = MIHIndex(codes.shape[1] * 8), HammingIndex(codes.shape[1] * 8)
    at = 0
    for size in sizes:
        part_ids = None if ids is None else ids[at : at + size]
        mih.add(codes[at : at + size], part_ids)
        scan.add(codes[at : at + size], part_ids)
        at += size
    return mih, scan, built


def test_adds_keep_the_tables_they_have_and_merge_segments_geometrically(monkeypatch):
    """A small add builds nothing; the tail becomes a segment at _MIN_SEGMENT codes; a segment at
    least half the size of the one before it is merged into it. Segments cover [0, covered) in order,
    each more than twice the next."""
    codes = clustered_codes(6000, 64, centres=30, flip=0.06, seed=11)
    mih, _, built = grown(codes, [1000] + [10] * 10 + [50] * 20, monkeypatch)
    # The first add builds tables over all it adds; the 10-code adds stay in the tail until it holds
    # 64 codes (at 1070: [1000, 1064), as segments end at multiples of 8); each later 64 or more
    # become a segment, merged while the one before is at most twice its size.
    assert built[0] == (0, 1000) and built[1] == (1000, 1064)
    segments = mih.segments
    assert segments[0][0] == 0 and all(a[1] == b[0] for a, b in zip(segments, segments[1:]))
    sizes = [stop - start for start, stop in segments]
    assert all(a > 2 * b for a, b in zip(sizes, sizes[1:]))
    assert len(mih) - segments[-1][1] < 64
    rebuilt = sum(stop - start for start, stop in built)
    assert rebuilt < 4 * len(mih), "codes are rebuilt O(log n) times, not at every add"
    built.clear()
    mih.add(codes[:3])
    assert built == [] and mih.segments == segments


def test_the_index_is_rebuilt_whole_when_the_small_segments_grow_past_a_share_of_the_first(monkeypatch):
    codes = clustered_codes(3000, 64, centres=30, flip=0.06, seed=16)
    # Past 1/8 of the first 2000 codes (250) outside it, everything is one segment again.
    mih, scan, built = grown(codes, [2000, 100, 100, 100, 100, 100], monkeypatch, rest_share=8)
    assert built == [(0, 2000), (2000, 2096), (2000, 2200), (0, 2296), (2296, 2400), (2296, 2496)]
    assert mih.segments == [(0, 2296), (2296, 2496)] and len(mih) == 2500
    assert_same_knn(mih, scan, codes[2400:2500:4], 10)


GROWTH = [4000, 5, 60, 64, 300, 1, 1000, 100, 30, 200, 38, 100, 30, 40, 12]  # segments [0, 4000), [4000, 5424), [5424, 5968); tail 12


@pytest.mark.parametrize("nbits", [64, 20, 100])
@pytest.mark.parametrize("budget", [None, 1.0])  # default (some queries scanned) or every query in the tables
@pytest.mark.parametrize("scanned_segment", [0, 5000])  # small searches look up every segment, or only the first
def test_a_grown_index_equals_the_scan(monkeypatch, budget, nbits, scanned_segment):
    codes = clustered_codes(6000, nbits, centres=30, flip=0.06, seed=12)
    ids = torch.randperm(6000, generator=torch.Generator().manual_seed(2)) * 3 + 1
    mih, scan, _ = grown(codes, GROWTH, monkeypatch, ids=ids)
    monkeypatch.setattr(mih_module, "_SCANNED_SEGMENT", scanned_segment)
    assert mih.segments == [(0, 4000), (4000, 5424), (5424, 5968)] and len(mih) == 5980
    if budget is not None:
        monkeypatch.setattr(mih_module, "BUDGET_PER_CODE_SINGLE", budget)
        monkeypatch.setattr(mih_module, "BUDGET_PER_CODE_BATCH", budget)
    far = clear_padding(random_codes(6, codes.shape[1], torch.Generator().manual_seed(13)), nbits)  # the tables give up
    queries = torch.cat([codes[5970:5980], clustered_codes(30, nbits, centres=30, flip=0.08, seed=12, draw=1), far])
    for q in (queries, queries[:1], queries[-1:], queries[:16], queries[:17]):
        for k in (1, 10, 100, 2000):
            dist, _ = assert_same_knn(mih, scan, q, k)
        for radius in (0, 3, 8, 20):
            assert_same_range(mih, scan, q, radius)
    assert (dist.diff(dim=1) == 0).any(), "ties must be planted"
    # Dense filters (allow bitmaps): a third of every part, one segment only, the last segment and the
    # tail, all but the first segment; sparse ones (a list of positions) and a range of stored ids.
    for allow in (IDSelectorBatch(ids[::3]), IDSelectorBatch(ids[4000:5424]), IDSelectorBatch(ids[5424:5980]),
                  IDSelectorBatch(ids[4000:5980]), IDSelectorBatch(ids[5900:]), IDSelectorRange(1000, 9000), ids[:40]):
        assert_same_knn(mih, scan, queries, 10, allow)
        assert_same_knn(mih, scan, queries, 200, allow)
        assert_same_range(mih, scan, queries, 6, allow)


def test_a_grown_index_with_sequential_ids_filters_by_range_and_ends_as_one_segment(tmp_path, monkeypatch):
    """Ids in order make an id range a position range: over the tail only, or across segments. A
    removal, and a save and memory-mapped load, leave one set of tables with the same results."""
    codes = clustered_codes(6000, 64, centres=30, flip=0.06, seed=18)
    mih, scan, _ = grown(codes, GROWTH, monkeypatch)
    queries = torch.cat([codes[5960:5980], random_codes(4, 8, torch.Generator().manual_seed(19))])
    for allow in (IDSelectorRange(5970, 5980), IDSelectorRange(3990, 5975), range(4100, 4300)):
        assert_same_knn(mih, scan, queries, 5, allow)
        assert_same_range(mih, scan, queries, 8, allow)
    mih.save(tmp_path / "db.idx")
    loaded = MIHIndex.load(tmp_path / "db.idx", mmap=True)
    assert loaded.segments == [(0, 5980)] and loaded.is_mmap
    assert_same_knn(loaded, scan, queries, 10)
    for index in (mih, scan):
        assert index.remove_ids(torch.arange(0, 5980, 7)) == 855
    assert mih.segments == [(0, 5125)]
    assert_same_knn(mih, scan, queries, 10)
    assert_same_range(mih, scan, queries, 8)


def test_save_of_a_grown_index_writes_one_set_of_tables(tmp_path, monkeypatch):
    codes = clustered_codes(3100, 64, centres=30, flip=0.06, seed=14)
    mih, scan, built = grown(codes[:3005], [1000, 500, 700, 790, 15], monkeypatch)
    assert len(mih.segments) > 1 and mih.segments[-1][1] < len(mih)
    mih.save(tmp_path / "db.idx")
    assert mih.segments == [(0, 3005)]
    loaded = MIHIndex.load(tmp_path / "db.idx", mmap=False)
    assert loaded.segments == [(0, 3005)] and loaded.specs == mih.specs == choose_tables(64, 3005)
    assert_same_knn(loaded, scan, codes[:20], 10)
    assert_same_range(loaded, scan, codes[:20], 5)
    # Codes after 3005 share a byte of an allow bitmap with the segment: a tail first, then the next
    # segment is merged with it, so that no segment starts inside a byte.
    built.clear()
    for index in (loaded, scan):
        index.add(codes[3005:3025])
    far = random_codes(4, 8, torch.Generator().manual_seed(17))  # their tables give up: segment scans
    queries = torch.cat([codes[3000:3025:5], far])
    for allow in (IDSelectorBatch(torch.arange(0, 3025, 3)), IDSelectorRange(2990, 3020)):
        assert_same_knn(loaded, scan, queries, 10, allow)
        assert_same_range(loaded, scan, queries, 12, allow)
    for index in (loaded, scan):
        index.add(codes[3025:3100])
    assert built == [(0, 3096)] and loaded.segments == [(0, 3096)]
    assert_same_knn(loaded, scan, queries, 10, IDSelectorBatch(torch.arange(0, 3100, 3)))


def test_tables_over_a_segment_search_the_whole_codes_and_pad_short_results():
    """mih_search and mih_range_search over tables of positions [start, stop) of the codes return
    those positions; fewer allowed codes than k finish with padding (2^31 - 1, -1)."""
    codes = clustered_codes(1000, 64, centres=10, flip=0.05, seed=15)
    layout = [v for s in choose_tables(64, 200) for v in (s.bit_start, s.bit_count, s.dir_bits)]
    tables = torch.ops.cibhash_ext.mih_build(codes[600:800], layout)
    for pos in tables[2::3]:
        pos += 600
    queries = codes[595:605]
    ref = HammingIndex(64)
    ref.add(codes)
    want = ref.search(queries, 10, allow=IDSelectorRange(600, 800))
    dist, pos, done = torch.ops.cibhash_ext.mih_search(queries, codes, layout, tables, 10, None, 10**9)
    assert bool(done.all()) and torch.equal(dist, want[0]) and torch.equal(pos, want[1])
    allow = torch.zeros(1000, dtype=torch.bool)
    allow[[10, 650, 700]] = True
    bitmap = torch.from_numpy(np.packbits(allow.numpy(), bitorder="little"))
    dist, pos, done = torch.ops.cibhash_ext.mih_search(queries, codes, layout, tables, 4, bitmap, 10**9)
    assert bool(done.all()) and (pos[:, 2:] == -1).all() and (dist[:, 2:] == 2**31 - 1).all()
    assert set(pos[0, :2].tolist()) == {650, 700}
    lims, dist, pos, done = torch.ops.cibhash_ext.mih_range_search(queries, codes, layout, tables, 6, None, 10**9)
    want = ref.range_search(queries, 6, allow=IDSelectorRange(600, 800))
    assert bool(done.all()) and torch.equal(lims, want[0]) and torch.equal(pos, want[2])


def test_small_segments_are_scanned_with_the_tail(monkeypatch):
    """Small searches scan the trailing segments under _SCANNED_SEGMENT codes with the tail, in one
    scan; a batch looks them up; a radius search also scans the trailing segments whose tables could
    not cover the radius within their budget."""
    codes = clustered_codes(6000, 64, centres=30, flip=0.06, seed=12)
    mih, scan, _ = grown(codes, GROWTH, monkeypatch)
    looked_up, scanned_from = [], []  # a segment's tables searched; where the scan with the tail starts
    real_search, real_range, real_tail = mih_module._search_op, mih_module._range_op, MIHIndex._tail

    def search_op(*args):
        looked_up.append(args[2])
        return real_search(*args)

    def range_op(*args):
        looked_up.append(args[2])
        return real_range(*args)

    def tail(state, sel, start=None):
        scanned_from.append(start)
        return real_tail(state, sel, start)

    monkeypatch.setattr(mih_module, "_search_op", search_op)
    monkeypatch.setattr(mih_module, "_range_op", range_op)
    monkeypatch.setattr(MIHIndex, "_tail", staticmethod(tail))
    monkeypatch.setattr(mih_module, "_SCANNED_SEGMENT", 1500)  # the second segment (1,424 codes) and the third
    assert_same_knn(mih, scan, codes[:3], 10)
    assert scanned_from == [4000] and len(looked_up) == 1  # the first segment's tables, then one scan
    looked_up.clear(), scanned_from.clear()
    assert_same_knn(mih, scan, codes[:40], 10)  # a batch: every segment's tables
    assert scanned_from == [None] and len(looked_up) >= 3
    monkeypatch.setattr(mih_module, "_SCANNED_SEGMENT", 0)
    segments = mih._state.segments
    # Radius 20 at the second segment's budget: its tables cannot cover it, the third's neither.
    assert all(mih_module._probes_to_cover(s.specs, 20) > MIHIndex._budget(len(s), 3) for s in segments[1:])
    looked_up.clear(), scanned_from.clear()
    assert_same_range(mih, scan, codes[:3], 20)
    assert scanned_from == [4000] and len(looked_up) == 1


def test_the_probes_to_cover_a_radius_bound_the_kernel():
    """The kernel gives up on a radius search, with nothing found, when the probes that cover the
    radius exceed its budget, as _probes_to_cover counts them (and answers with a large budget)."""
    codes = clustered_codes(3000, 64, centres=10, flip=0.05, seed=15)
    queries = codes[:8]
    for m in (2, 3, 5):
        specs = choose_tables(64, 3000, m)
        layout = [v for s in specs for v in (s.bit_start, s.bit_count, s.dir_bits)]
        tables = torch.ops.cibhash_ext.mih_build(codes, layout)
        for radius in (0, 1, 4, 9):
            probes = mih_module._probes_to_cover(specs, radius)
            *_, done = torch.ops.cibhash_ext.mih_range_search(queries, codes, layout, tables, radius, None, probes - 1)
            assert not bool(done.any()), (m, radius, probes)
            *_, done = torch.ops.cibhash_ext.mih_range_search(queries, codes, layout, tables, radius, None, 10**9)
            assert bool(done.all())


def test_searches_during_adds_see_whole_states():
    codes = clustered_codes(6000, 64, centres=20, flip=0.05, seed=10)
    mih = MIHIndex(64)
    mih.add(codes[:1000])
    errors = []

    def reader():
        try:
            for _ in range(30):
                dist, ids = mih.search(codes[:4], 5)
                assert (ids >= 0).all() and (ids < 6000).all() and (dist[:, 0] == 0).all()
        except Exception as error:  # noqa: BLE001 - handed to the main thread
            errors.append(error)

    thread = threading.Thread(target=reader)
    thread.start()
    for start in range(1000, 6000, 1000):
        mih.add(codes[start : start + 1000])
    thread.join()
    assert not errors and len(mih) == 6000


def reference_table(codes: torch.Tensor, bit_start: int, bit_count: int, dir_bits: int):
    """One table as NumPy builds it: positions stably sorted by their substring key, the directory of
    offsets by the key's top dir_bits bits, and the key's low bits beside each position."""
    bits = np.unpackbits(codes.numpy(), axis=1, bitorder="little")[:, bit_start : bit_start + bit_count]
    keys = (bits.astype(np.int64) << np.arange(bit_count)).sum(axis=1)
    pos = np.argsort(keys, kind="stable")
    low_bits = bit_count - dir_bits
    top = keys[pos] >> low_bits
    directory = np.searchsorted(top, np.arange((1 << dir_bits) + 1), side="left")
    low = keys[pos] & ((1 << low_bits) - 1) if low_bits else np.empty(0, np.int64)
    return directory, low, pos


@pytest.mark.parametrize("layout", [
    [(0, 32, 24), (32, 32, 24)],  # 100M codes' tables: 8 low bits beside each position
    [(0, 22, 22), (22, 21, 21), (43, 21, 21)],  # 10M codes': the directory holds every bit
    [(3, 29, 5), (40, 24, 1)],  # 24 and 23 low bits: several sorting passes
    [(0, 1, 1), (1, 11, 6), (12, 13, 13)],
])
@pytest.mark.parametrize("kind", ["uniform", "clustered"])
def test_built_tables_are_the_stable_sort_by_substring(layout, kind):
    nbits = 64
    codes = (random_codes(5000, 8, torch.Generator().manual_seed(3), duplicates=500) if kind == "uniform"
             else clustered_codes(5000, nbits, centres=20, flip=0.05, seed=4))
    tables = torch.ops.cibhash_ext.mih_build(codes, [v for spec in layout for v in spec])
    for i, spec in enumerate(layout):
        for got, want in zip(tables[3 * i : 3 * i + 3], reference_table(codes, *spec)):
            np.testing.assert_array_equal(got.numpy(), want)


def test_choose_tables_follows_the_paper_rule():
    def bits(nbits, n, m=None):
        return [(s.bit_count, s.dir_bits) for s in choose_tables(nbits, n, m)]

    # m = round(nbits / log2(n)); directories of about log2(n) bits, at most 24.
    assert bits(64, 2**20) == [(22, 20), (21, 20), (21, 20)]
    assert bits(64, 10**7) == [(22, 22), (21, 21), (21, 21)]
    assert bits(64, 10**8) == [(32, 24), (32, 24)]  # 64 / 26.6 rounds to 2
    assert bits(128, 10**6) == [(22, 20)] * 2 + [(21, 20)] * 4
    assert len(choose_tables(64, 10)) == 19 and len(choose_tables(64, 2**40)) == 2  # keys of at most 32 bits
    specs = choose_tables(64, 10**6, m=4)
    assert [(s.bit_start, s.bit_count, s.dir_bits) for s in specs] == [(0, 16, 16), (16, 16, 16), (32, 16, 16), (48, 16, 16)]


def test_errors_and_empty_index():
    mih = MIHIndex(16)
    with pytest.raises(ValueError, match=r"k must be <= the number of codes in the index \(0\), got 1"):
        mih.search(torch.zeros(1, 2, dtype=torch.uint8), 1)
    lims, d, ids = mih.range_search(torch.zeros(2, 2, dtype=torch.uint8), 3)
    assert lims.tolist() == [0, 0, 0] and d.numel() == 0
    with pytest.raises(TypeError, match="m must be an int, got float"):
        MIHIndex(16, m=2.0)
    with pytest.raises(ValueError, match="codes must have 2 columns"):
        mih.add(torch.zeros(3, 5, dtype=torch.uint8))
    mih.add(clear_padding(random_codes(50, 2, torch.Generator().manual_seed(0)), 16))
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        mih.search(mih.codes[:1], 0)
    with pytest.raises(ValueError, match="radius must be >= 0, got -1"):
        mih.range_search(mih.codes[:1], -1)
    with pytest.raises(ValueError, match="ids already in the index"):
        mih.add(mih.codes[:1], torch.tensor([3]))
    assert len(mih) == 50 and "MIHIndex(nbits=16, ntotal=50" in repr(mih)
    assert mih.segments == [(0, 50)]  # one add: tables over every code


def test_an_add_whose_tables_fail_leaves_its_ids_free(monkeypatch):
    """A failed MIHIndex add puts the scan state back: its ids are not in the index, so they can be
    added again, and the ids that are there are still refused."""
    codes = clear_padding(random_codes(300, 4, torch.Generator().manual_seed(3)), 32)
    mih = MIHIndex(32)
    mih.add(codes[:200], torch.arange(200) * 2)

    def fail(self, state, scan):
        raise MemoryError("tables")

    with monkeypatch.context() as patch:
        patch.setattr(MIHIndex, "_extend", fail)
        with pytest.raises(MemoryError):
            mih.add(codes[200:250], torch.arange(200, 250) * 2 + 1)
    assert len(mih) == 200
    mih.add(codes[200:250], torch.arange(200, 250) * 2 + 1)
    with pytest.raises(ValueError, match=r"ids already in the index: \[401\]"):
        mih.add(codes[:1], torch.tensor([401]))
    with pytest.raises(ValueError, match=r"ids already in the index: \[398\]"):
        mih.add(codes[:1], torch.tensor([398]))
    oracle = HammingIndex(32)
    oracle.add(codes[:250], torch.cat([torch.arange(200) * 2, torch.arange(200, 250) * 2 + 1]))
    for got, want in zip(mih.search(codes[:10], 20), oracle.search(codes[:10], 20)):
        assert torch.equal(got, want)
