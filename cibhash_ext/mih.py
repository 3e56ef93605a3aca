"""MIHIndex: exact Hamming k-NN and radius search by multi-index hashing (Norouzi, Punjani and Fleet,
"Fast exact search in Hamming space with multi-index hashing", TPAMI 2014), with the results of
:class:`~cibhash_ext.index.HammingIndex` and an automatic fall-back to its scan.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time

import numpy as np
import torch
from torch import Tensor

from cibhash_ext import index_file, ops
from cibhash_ext._extension import LOAD_ERROR
from cibhash_ext.index import (
    DEFAULT_CHUNK_BYTES,
    HammingIndex,
    Selection,
    _check_int,
    _State as _ScanState,
    _tensor_view,
    as_packed_codes,
)
from cibhash_ext.index_file import TableSpec

__all__ = ["MIHIndex", "choose_tables"]

# Directory bits per table: about log2(n), so a directory bucket holds about one code, capped so that a
# directory takes at most 64 MiB.
_MAX_DIR_BITS = 24
MAX_MIH_CODES = (1 << 31) - 1  # table positions are int32
# Work (bucket probes + candidate checks) one query may spend in the tables before it is handed to the
# scan, per code in the index. A unit costs about 25 ns at 1M codes and 25-38 ns at 10M (a random
# read; the kernel prefetches 16 buckets at a time), the scan about 0.5 ns per code for one query
# alone and 0.05 ns in a batch (it holds 8 queries per loaded code), so these bound the work wasted
# on a query the tables cannot answer cheaply to about a tenth of its scan (benchmarks/RESULTS.md,
# "MIHIndex").
BUDGET_PER_CODE_SINGLE = 1 / 512
BUDGET_PER_CODE_BATCH = 1 / 8192
_MIN_BUDGET = 64
# A batch of more than _PROBE queries first sends _PROBE of them through the tables; if fewer than
# _PROBE_PASS of those finish within budget, the whole batch is scanned.
_PROBE = 16
_PROBE_PASS = 0.75


def _search_op(*args):
    return torch.ops.cibhash_ext.mih_search(*args)


def _range_op(*args):
    return torch.ops.cibhash_ext.mih_range_search(*args)


def choose_tables(nbits: int, n: int, m: int | None = None) -> list[TableSpec]:
    """The substrings of a multi-index over ``n`` codes of ``nbits`` bits.

    The paper's rule: ``m = nbits / log2(n)`` substrings, so each table has about as many buckets as
    codes; at least ``ceil(nbits / 32)`` (a substring key is at most 32 bits). The first
    ``nbits % m`` substrings get one bit more.

    Args:
        nbits (int): bits per code.
        n (int): codes in the index.
        m (int, optional): the number of substrings instead of the rule.

    Returns:
        list of :class:`~cibhash_ext.index_file.TableSpec`.
    """
    if m is None:
        m = round(nbits / math.log2(max(n, 2)))
    m = min(nbits, max(int(m), 1, -(-nbits // 32)))
    specs, start = [], 0
    for i in range(m):
        bits = nbits // m + (1 if i < nbits % m else 0)
        dir_bits = min(bits, _MAX_DIR_BITS, max(1, math.ceil(math.log2(max(n, 2)))))
        specs.append(TableSpec(start, bits, dir_bits))
        start += bits
    return specs


# A search of at most _PROBE queries takes the path (the tables, or the scan alone) that has been
# faster per query on the same state for the same kind of search; one in every E such searches takes
# the other path, so that a change in the queries is noticed. E is the smallest power of two in
# [_EXPLORE_MIN, _EXPLORE_MAX] at which exploring the slower path adds at most _EXPLORE_COST to the
# mean time of a search. With a fixed 1 in 16, single queries over 1M uniform codes, whose tables path
# took 4-5x the scan's time (running means of 1.25-1.40 ms against 0.27-0.32 ms), spent about 25 %
# more on average than the scan alone.
_EXPLORE_MIN = 16
_EXPLORE_MAX = 256
_EXPLORE_COST = 0.05
_SMOOTHING = 0.25  # weight of the newest time in a path's running mean
_clock = time.perf_counter
_CPU = torch.device("cpu")


class _PathChoice:
    """Running means of the seconds per query of the two paths of small searches, per kind of search
    (k-NN with its k, or radius search with its radius; filtered or not; the number of queries).
    The tables' mean includes the scans of the queries they hand over. Updated by every thread
    without a lock: a lost update only skews a mean, never a result (both paths return the same
    results).

    Two guards keep one slow search from deciding for hundreds: a path's first search pays first-use
    costs (page faults on the tables, code not yet in the caches) and is not timed; and a time is
    counted at most at twice the path's mean. Without them, single queries over 1M clustered codes
    whose tables answered k = 1 in 0.04 ms (median) took the 0.2 ms scan for most of 900 searches:
    a first tables search of a few ms set a mean that the exploring lowers by a quarter of the gap
    once in 256 searches."""

    def __init__(self) -> None:
        # key -> [tables mean, scan mean, searches]; a mean is None before its path's first search and
        # _UNTIMED after it
        self._seen: dict[tuple, list] = {}

    def pick(self, key: tuple) -> tuple[list, bool]:
        """(the kind's entry, whether to take the tables): the first two searches of a kind take the
        tables, the next two the scan; later ones take the faster, except one in every
        :func:`explore_interval` that takes the other."""
        entry = self._seen.get(key)
        if entry is None:
            entry = self._seen[key] = [None, None, 0]
        entry[2] += 1
        tables, scan, searches = entry
        if tables is None or tables is _UNTIMED:
            return entry, True
        if scan is None or scan is _UNTIMED:
            return entry, False
        if searches % _EXPLORE_MIN:  # every interval is a multiple of _EXPLORE_MIN
            return entry, tables <= scan
        return entry, (tables <= scan) != (searches % explore_interval(tables, scan) == 0)

    @staticmethod
    def record(entry: list, tables: bool, seconds: float) -> None:
        """Adds a search's seconds per query to the running mean of the path it took."""
        i = 0 if tables else 1
        mean = entry[i]
        if mean is None:
            entry[i] = _UNTIMED
        elif mean is _UNTIMED:
            entry[i] = seconds
        else:
            entry[i] = mean + _SMOOTHING * (min(seconds, 2 * mean) - mean)


_UNTIMED = float("nan")  # a path's mean after its first search, which is not timed


def explore_interval(tables_s: float, scan_s: float) -> int:
    """One small search in how many takes the slower path, given the two paths' mean seconds per
    query: often enough to notice a change, rarely enough to cost at most _EXPLORE_COST of the mean
    (the slower path's extra time, spread over the interval). A power of two, so that the searches
    between two multiples of _EXPLORE_MIN need not compute it."""
    fast, slow = min(tables_s, scan_s), max(tables_s, scan_s)
    if fast <= 0:
        return _EXPLORE_MAX
    needed = math.ceil((slow - fast) / (fast * _EXPLORE_COST))
    return min(_EXPLORE_MAX, max(_EXPLORE_MIN, 1 << max(needed - 1, 0).bit_length()))


def _probes_to_cover(specs, radius: int) -> int:
    """The bucket probes a radius search makes before its tables cover ``radius``: the kernel's lower
    bound of its cost (each probe costs at least one unit of budget), with which it gives up at once
    when the budget is smaller. Table i at substring radius r covers radius m * r + i."""
    m, bits = len(specs), sum(spec.bit_count for spec in specs)
    target, probes, r, i = min(radius, bits), 0, 0, 0
    while True:
        probes += math.comb(specs[i].bit_count, r)
        if m * r + i >= target:
            return probes
        i += 1
        if i == m:
            i, r = 0, r + 1


@dataclasses.dataclass(frozen=True)
class _Segment:
    """Substring tables over positions [start, stop) of an index's codes. Their position arrays hold
    positions in the whole codes array, so a search hands the kernel all the codes."""

    start: int
    stop: int
    specs: tuple[TableSpec, ...]
    tables: tuple[Tensor, ...]  # (dir, low, pos) int32 per spec

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def layout(self) -> list[int]:
        return _layout(self.specs)


def _layout(specs) -> list[int]:
    """The kernels' flat table layout: (bit_start, bit_count, dir_bits) per table."""
    return [v for s in specs for v in (s.bit_start, s.bit_count, s.dir_bits)]


@dataclasses.dataclass(frozen=True)
class _State:
    """One state of an :class:`MIHIndex`: the scan index's state (codes, ids, map), the segments of
    tables over its positions [0, covered), and the path choice of small searches on them. Positions
    [covered, n) (the tail) are scanned with every search. A search reads the reference once and
    uses only it."""

    scan: _ScanState
    segments: tuple[_Segment, ...] = ()
    choice: _PathChoice = dataclasses.field(default_factory=_PathChoice, compare=False, repr=False)

    @property
    def covered(self) -> int:
        return self.segments[-1].stop if self.segments else 0


# Codes added after the last segment are scanned with every search, without tables, until there are
# this many; then they become a segment of their own. A segment at least half the size of the one
# before it is merged into it (rebuilt together), so segments shrink by more than half from the first
# to the last: at most about log2(n / _MIN_SEGMENT) of them. A scan of 2^14 codes takes a few
# microseconds.
_MIN_SEGMENT = 1 << 14
# Small segments answer fewer queries within their budget than one large one (their own scan is the
# fall-back), so once the codes outside the first segment pass 1/_REST_SHARE of it, all are rebuilt
# into one: searches then scan at most about 1/32 of the codes, and the rebuilds, one per growth by
# 1/32, cost about 32 builds' time per added code (about 4 us at 100M codes), whatever the sizes of
# the adds. Measured in benchmarks/RESULTS.md ("an index grown by adds").
_REST_SHARE = 32
# Small searches scan the trailing segments of fewer codes than this with the tail, in one scan, rather
# than look each up (its tables, then a scan of what they leave). Single clustered queries, the tables
# path alone, interleaved in one process: over 10M codes grown by adds (segments of 9.92M, 60,000 and
# 20,000 codes) k = 1 / 10 / 100 took 0.23 / 0.37 / 0.73 ms this way and 0.39 / 0.58 / 0.96 ms segment
# by segment (one segment of all 10M: 0.11 / 0.21 / 0.49); over 3M (2.95M and 40,000, 10,000 in the
# tail) 0.20 / 0.23 ms against 0.30 / 0.36 for k = 1 / 10.
_SCANNED_SEGMENT = 1 << 17
_BYTE_POPCOUNT = torch.tensor([bin(byte).count("1") for byte in range(256)], dtype=torch.int64)


class MIHIndex:
    """Exact Hamming search over binary codes by multi-index hashing, with user ids.

    The codes are cut into m substrings; table i lists the codes by their i-th substring. A k-NN
    search probes the buckets at substring distance 0, 1, 2, ... from the query's substrings, checks
    every code it finds, and stops once the k-th distance is within the radius every table has
    covered (after table i at substring radius r: ``m * r + i``), so results are exact. Results are
    identical to :class:`~cibhash_ext.index.HammingIndex` on the same codes: the same distances and
    ids, equal distances ordered by position in the index (the code added first).

    The choice between the tables and the scan is automatic, and results are the same either way:

    * per query: a query whose search would spend more than n/512 bucket probes and candidate checks
      (n/8192 in a batch of more than 16 queries) is handed to the scan; the search gives up as soon
      as the probes it still needs exceed what is left of that budget;
    * per batch: a batch whose first 16 queries mostly run out of budget is scanned whole;
    * per kind of small search (at most 16 queries; k-NN with its k or radius search with its
      radius, filtered or not, and its number of queries): the path, tables or scan alone, that has
      taken less time per query on this index (running means, the tables' including the scans of
      the queries they hand over). The first two such searches take the tables, the next two the
      scan (a path's first search is not timed, and a slow one counts at most twice the mean);
      after that one in 16 to 256 takes the other path, so the choice follows the queries: as
      rarely as keeps that exploring within 5 % of the mean time. Uniform random
      codes (near neighbours far away), small indexes or a filter that excludes most near codes
      thus cost about what :class:`~cibhash_ext.index.HammingIndex` costs (benchmarks/RESULTS.md,
      "MIHIndex").

    An ``add`` keeps the tables it has: the codes added after the last segment of tables are scanned
    with every search until there are 2^14 of them, then they get tables of their own (a segment); a
    segment at least half the size of the one before it is rebuilt together with it (linear time, a
    counting sort); once the codes outside the first segment pass 1/32 of it, all but the last
    n % 8 are rebuilt as one. So a growing index holds at most about log2(n / 2^14) segments, and a
    small add rebuilds no tables and copies no codes (see :meth:`HammingIndex.add`); an add that
    only grows the tail keeps the path choice's timings. A search of at most 16 queries
    scans the trailing segments of fewer than 2^17 codes with the tail rather than look them up, and
    a radius search also the trailing segments whose tables could not cover its radius within their
    budget. ``remove_ids`` renumbers positions, so it rebuilds the tables whole, as ``save`` does
    when there is more than one segment or a tail (a file holds one set of tables over every code).
    Each change builds a new state object and swaps it in under a lock, so a search running in
    another thread sees either the old or the new index, whole.

    Args:
        nbits (int): bits per code, 1 <= nbits <= 2^20.
        m (int, optional): substrings; default the paper's rule (:func:`choose_tables`), chosen again
            at each rebuild (also after :meth:`load` of tables that follow it).
    """

    def __init__(self, nbits: int, m: int | None = None) -> None:
        self._m = None if m is None else _check_int(m, "m", 1)
        self._lock = threading.Lock()
        # The writers' index: changed under self._lock only, then its new state is published with tables.
        self._scan = HammingIndex(nbits)
        self._state = _State(self._scan._snapshot())

    @property
    def nbits(self) -> int:
        return self._scan.nbits

    @property
    def code_size(self) -> int:
        return self._scan.code_size

    def __len__(self) -> int:
        return len(self._state.scan)

    def __repr__(self) -> str:
        state = self._state
        where = f"mmap={state.scan.path!r}" if state.scan.is_mmap else "in memory"
        return (f"MIHIndex(nbits={self.nbits}, ntotal={len(state.scan)}, m={len(self.specs)}, "
                f"segments={len(state.segments)}, unindexed={len(state.scan) - state.covered}, {where})")

    @property
    def is_mmap(self) -> bool:
        return self._state.scan.is_mmap

    @property
    def codes(self) -> Tensor:
        """Tensor[n, code_size], uint8: the packed codes."""
        return self._state.scan.codes_tensor()

    @property
    def ids(self) -> Tensor:
        """Tensor[n], int64: the id of each code, in position order."""
        return self._state.scan.ids_at(None)

    @property
    def specs(self) -> list[TableSpec]:
        """The substring tables (bit_start, bit_count, dir_bits) of the first and largest segment."""
        segments = self._state.segments
        return list(segments[0].specs) if segments else []

    @property
    def segments(self) -> list[tuple[int, int]]:
        """The (start, stop) positions of each segment of tables; the codes after the last are scanned."""
        return [(s.start, s.stop) for s in self._state.segments]

    @property
    def tables_nbytes(self) -> int:
        """Bytes held by the tables (besides the codes and ids)."""
        return sum(t.numel() * t.element_size() for s in self._state.segments for t in s.tables)

    @property
    def chunk_bytes(self) -> int:
        """Block size of a scan over a memory-mapped index (see :class:`HammingIndex`)."""
        return self._scan.chunk_bytes

    # ------------------------------------------------------------------------------------------
    # Mutation: a new state, swapped in whole
    # ------------------------------------------------------------------------------------------

    def add(self, codes, ids=None) -> None:
        """Appends codes, with ids or the next sequential ones. The tables of the codes already there
        are kept (see the class notes on segments).

        Args and errors: as :meth:`HammingIndex.add`; also ValueError past 2^31 - 1 codes.
        """
        with self._lock:
            self._write(lambda: self._scan.add(codes, ids), self._extend)

    def remove_ids(self, ids) -> int:
        """Removes the codes with these ids (ids not in the index are ignored) and rebuilds the tables.

        Survivors keep their insertion order. Returns how many codes were removed; errors as
        :meth:`HammingIndex.remove_ids`.
        """
        with self._lock:
            return self._write(lambda: self._scan.remove_ids(ids), lambda _, after: self._build(after))

    def _write(self, change, tables):
        """Runs ``change`` on the writers' index and publishes its new state with the tables that
        ``tables(old state, new scan state)`` gives; on any failure the writers' index goes back to
        the published state."""
        before = self._scan._snapshot()
        try:
            out = change()
            after = self._scan._snapshot()
            if after is not before:
                if len(after) > MAX_MIH_CODES:
                    raise ValueError(f"codes: an MIHIndex holds at most 2^31 - 1 codes, {len(after)} is more")
                self._state = tables(self._state, after)
            return out
        except BaseException:
            self._scan._state = before
            raise

    def _segment(self, scan: _ScanState, start: int, stop: int) -> _Segment:
        specs = tuple(choose_tables(self.nbits, stop - start, self._m))
        tables = list(torch.ops.cibhash_ext.mih_build(scan.codes_tensor()[start:stop], _layout(specs)))
        if start:
            for pos in tables[2::3]:
                pos += start
        return _Segment(start, stop, specs, tuple(tables))

    def _build(self, scan: _ScanState) -> _State:
        """Tables over all the codes, in one segment."""
        if LOAD_ERROR is not None or len(scan) == 0:
            return _State(scan)
        return _State(scan, (self._segment(scan, 0, len(scan)),))

    def _extend(self, state: _State, scan: _ScanState) -> _State:
        """The state after codes were appended to ``state``'s (positions unchanged): its segments kept,
        the tail made a segment once it holds _MIN_SEGMENT codes (or when there are no tables yet),
        merged with every segment before it that is at most twice its size. A segment starts at a
        multiple of 8 codes, so an allow bitmap splits at its bounds: later segments end at one, and
        one that would start elsewhere (after tables over all of an index of n codes) is merged with
        the segment before it. When the codes outside the first segment would pass 1/_REST_SHARE of
        it, all are rebuilt as one."""
        segments = list(state.segments)
        n = len(scan)
        if LOAD_ERROR is not None or (segments and n - state.covered < _MIN_SEGMENT):
            # Only the tail grew: the paths cost about what they did, so their timings are kept.
            return _State(scan, state.segments, state.choice)
        # The first tables cover every code; a later segment that would start inside a byte is merged.
        start, stop = state.covered, (n - n % 8 if segments else n)
        while segments and (start % 8 or 2 * (stop - start) >= len(segments[-1])):
            start = segments.pop().start
        if segments and _REST_SHARE * (n - len(segments[0])) > len(segments[0]):
            start, segments = 0, []
        if stop <= start:
            return _State(scan, state.segments, state.choice)
        return _State(scan, (*segments, self._segment(scan, start, stop)))

    # ------------------------------------------------------------------------------------------
    # Search
    # ------------------------------------------------------------------------------------------

    @staticmethod
    def _bitmap(state: _State, sel: Selection) -> Tensor | None:
        """The selection as an allow bitmap over all positions (None: all allowed)."""
        n = len(state.scan)
        if sel.bitmap is not None:
            return sel.bitmap
        if sel.positions is None and sel.start == 0 and sel.stop == n:
            return None
        mask = torch.zeros(n, dtype=torch.bool)
        if sel.positions is not None:
            mask[sel.positions] = True
        else:
            mask[sel.start : sel.stop] = True
        return ops.pack_bits(mask.reshape(1, -1)).reshape(-1)

    @staticmethod
    def _tail(state: _State, sel: Selection, start: int | None = None) -> Selection | None:
        """The part of ``sel`` in positions [start, n), by default the tail past the last segment
        (None: no positions there)."""
        n = len(state.scan)
        start = state.covered if start is None else start
        if start == n:
            return None
        if sel.bitmap is None:
            first = max(sel.start, start)
            stop = max(sel.stop, first)
            return Selection(first, stop, stop - first)
        byte = start // 8
        bits = np.unpackbits(sel.bitmap[byte:].numpy(), bitorder="little")[start - 8 * byte : n - 8 * byte]
        if start % 8 == 0:  # a segment's start: the bitmap splits there
            return Selection(start, n, int(np.count_nonzero(bits)), bitmap=sel.bitmap)
        # The tail may start inside a byte of the bitmap, and it is short: list its allowed positions.
        positions = torch.from_numpy(np.flatnonzero(bits) + start)
        return Selection(0, n, int(positions.numel()), positions=positions)

    @staticmethod
    def _within(sel: Selection, segment: _Segment) -> Selection:
        """The part of ``sel`` in a segment (which starts at a multiple of 8)."""
        if segment.start <= sel.start and sel.stop <= segment.stop:
            return sel
        if sel.bitmap is None:
            start = min(max(sel.start, segment.start), segment.stop)
            stop = max(min(sel.stop, segment.stop), start)
            return Selection(start, stop, stop - start)
        counts = torch.bincount(sel.bitmap[segment.start // 8 : segment.stop // 8], minlength=256)
        allowed = int(counts @ _BYTE_POPCOUNT)
        if segment.stop % 8:  # a segment of all the codes then, with the tail's first bits in its last byte
            allowed += bin(int(sel.bitmap[segment.stop // 8]) & ((1 << segment.stop % 8) - 1)).count("1")
        return Selection(segment.start, segment.stop, allowed, bitmap=sel.bitmap)

    @staticmethod
    def _budget(n: int, queries: int) -> int:
        per_code = BUDGET_PER_CODE_SINGLE if queries <= _PROBE else BUDGET_PER_CODE_BATCH
        return max(_MIN_BUDGET, int(n * per_code))

    @staticmethod
    def _through_tables(q: Tensor, run) -> list | None:
        """``run(queries)`` -> (..., done) over a batch, or None when a probe of its first _PROBE
        queries mostly ran out of budget (the caller then scans the whole batch)."""
        if q.shape[0] <= _PROBE:
            return [run(q)]
        first = run(q[:_PROBE])
        if float(first[-1].float().mean()) < _PROBE_PASS:
            return None
        return [first, run(q[_PROBE:])]

    def search(self, queries, k: int, allow=None) -> tuple[Tensor, Tensor]:
        """Exact k nearest codes of each query: as :meth:`HammingIndex.search` (the same arguments,
        errors and results, ties by position), by multi-index hashing.

        Returns:
            (distances Tensor[Q, k] int32, ids Tensor[Q, k] int64).
        """
        # The lines up to the scan are kept few: a search of one query over 1M codes whose scan
        # evicted the caches paid 1-2 us a line (benchmarks/RESULTS.md, "one query: the Python
        # around the scan").
        state = self._state
        scan = state.scan
        k = _check_int(k, "k", 1)
        if k > len(scan):
            raise ValueError(f"k must be <= the number of codes in the index ({len(scan)}), got {k}")
        sel = scan.everything if allow is None else scan.select(allow)
        q = as_packed_codes(queries, self._scan.nbits, "queries", _CPU)
        width, count = min(k, sel.count), q.shape[0]
        # A handful of allowed codes is cheaper to scan than to look up.
        if not state.segments or width == 0 or sel.positions is not None or count == 0:
            dist, pos = scan.search_positions(q, k, self.chunk_bytes, sel)
            return scan.finish_topk(dist, pos, k)
        bitmap = None if allow is None else self._bitmap(state, sel)
        if count > _PROBE:
            return self._search_tables(state, q, k, width, sel, bitmap)
        # A small search takes the path that state.choice picks for its kind, timed for it (a batch's
        # time per query is not a single query's, so the number of queries is part of the kind).
        entry, use_tables = state.choice.pick(("knn", width, bitmap is not None, count))
        start = _clock()
        if use_tables:
            out = self._search_tables(state, q, k, width, sel, bitmap)
        else:
            out = scan.finish_topk(*scan.search_positions(q, k, self.chunk_bytes, sel), k)
        _PathChoice.record(entry, use_tables, (_clock() - start) / count)
        return out

    def _knn_segment(self, state: _State, segment: _Segment, q: Tensor, width: int, sel: Selection,
                     bitmap: Tensor | None) -> tuple[Tensor, Tensor]:
        """The k-NN of a batch in one segment, [Q, min(width, codes allowed there)] by (distance,
        position): from its tables, and from a scan of the segment for the queries they do not answer
        within budget (or for the whole batch when a probe of it mostly fails)."""
        scan = state.scan
        within = self._within(sel, segment)
        # As many as the segment allows: the kernel can then finish (asked for more, it would enumerate
        # every bucket, run out of budget and leave every query to the scan).
        cols = min(width, within.count)
        if cols == 0:
            return scan.search_positions(q, 0, self.chunk_bytes, within)
        budget = self._budget(len(segment), q.shape[0])
        parts = self._through_tables(q, lambda part: _search_op(
            part, scan.codes_tensor(), segment.layout, list(segment.tables), cols, bitmap, budget))
        if parts is not None:
            dist, pos, done = parts[0] if len(parts) == 1 else (torch.cat(t) for t in zip(*parts))
            if bool(done.all()):
                return dist, pos
        if parts is None or not bool(done.any()):
            return scan.search_positions(q, cols, self.chunk_bytes, within)
        # Only the queries left over are indexed: on a loaded machine each parallel torch op
        # costs a thread wake-up, measured at tens of ms for [1000, 10] index copies.
        rest = torch.nonzero(~done).reshape(-1)
        dist[rest], pos[rest] = scan.search_positions(q[rest], cols, self.chunk_bytes, within)
        return dist, pos

    def _with_tables(self, state: _State, queries: int, radius: int | None = None) -> int:
        """How many of the leading segments a search looks up in their tables; the segments after
        them are scanned with the tail, in one scan: for at most _PROBE queries, the trailing segments
        of fewer than _SCANNED_SEGMENT codes, and for a radius search, the trailing segments whose
        tables would need more probes to cover the radius than their budget allows (the kernel would
        give up at once and leave them to a scan)."""
        segments = state.segments
        used = len(segments)
        while used > 1:
            last = segments[used - 1]
            if not ((queries <= _PROBE and len(last) < _SCANNED_SEGMENT) or (
                    radius is not None and _probes_to_cover(last.specs, radius) > self._budget(len(last), queries))):
                break
            used -= 1
        return used

    def _search_tables(self, state: _State, q: Tensor, k: int, width: int, sel: Selection, bitmap: Tensor | None):
        used = self._with_tables(state, q.shape[0])
        found = [self._knn_segment(state, segment, q, width, sel, bitmap) for segment in state.segments[:used]]
        tail = self._tail(state, sel, state.segments[used].start if used < len(state.segments) else None)
        if tail is not None and tail.count:
            found.append(state.scan.search_positions(q, k, self.chunk_bytes, tail))
        dist, pos = found[0] if len(found) == 1 else self._merge_knn(found, width)
        return state.scan.finish_topk(dist, pos, k)

    @staticmethod
    def _merge_knn(found: list, width: int) -> tuple[Tensor, Tensor]:
        """The first ``width`` of k-NN results over disjoint position ranges, each [Q, *] by (distance,
        position) and given in position order: a stable sort by distance alone keeps ties by position.
        In NumPy, which takes about a microsecond an operation against several for torch's."""
        dist = np.concatenate([f[0].numpy() for f in found], 1)
        pos = np.concatenate([f[1].numpy() for f in found], 1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :width]
        return torch.from_numpy(np.take_along_axis(dist, order, 1)), torch.from_numpy(np.take_along_axis(pos, order, 1))

    def range_search(self, queries, radius: int, allow=None) -> tuple[Tensor, Tensor, Tensor]:
        """Every code within Hamming distance ``<= radius`` of each query: as
        :meth:`HammingIndex.range_search` (FAISS layout, ordered by (distance, position)).

        Returns:
            (lims Tensor[Q + 1] int64, distances Tensor[M] int32, ids Tensor[M] int64).
        """
        state = self._state
        scan = state.scan
        radius = _check_int(radius, "radius", 0)
        sel = scan.everything if allow is None else scan.select(allow)
        q = as_packed_codes(queries, self._scan.nbits, "queries", _CPU)
        count = q.shape[0]
        if not state.segments or sel.positions is not None or count == 0 or sel.count == 0:
            lims, dist, pos = scan.range_positions(q, radius, self.chunk_bytes, sel)
            return lims, dist, scan.ids_at(pos)
        bitmap = None if allow is None else self._bitmap(state, sel)
        if count > _PROBE:
            return self._range_tables(state, q, radius, sel, bitmap)
        entry, use_tables = state.choice.pick(("radius", radius, bitmap is not None, count))  # as in search
        start = _clock()
        if use_tables:
            out = self._range_tables(state, q, radius, sel, bitmap)
        else:
            lims, dist, pos = scan.range_positions(q, radius, self.chunk_bytes, sel)
            out = lims, dist, scan.ids_at(pos)
        _PathChoice.record(entry, use_tables, (_clock() - start) / count)
        return out

    def _range_segment(self, state: _State, segment: _Segment, q: Tensor, radius: int, sel: Selection,
                       bitmap: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """The radius search of a batch in one segment, (lims, dist, positions): from its tables, and
        from a scan of the segment for the queries they do not answer within budget."""
        scan = state.scan
        budget = self._budget(len(segment), q.shape[0])
        parts = self._through_tables(q, lambda part: _range_op(
            part, scan.codes_tensor(), segment.layout, list(segment.tables), radius, bitmap, budget))
        if parts is None:
            return scan.range_positions(q, radius, self.chunk_bytes, self._within(sel, segment))
        lims, dist, pos, done = parts[0]
        if len(parts) == 2:
            more = parts[1]
            lims = torch.cat([lims[:-1], more[0] + lims[-1]])
            dist, pos, done = torch.cat([dist, more[1]]), torch.cat([pos, more[2]]), torch.cat([done, more[3]])
        if bool(done.all()):
            return lims, dist, pos
        if not bool(done.any()):
            return scan.range_positions(q, radius, self.chunk_bytes, self._within(sel, segment))
        # The tables return nothing for a query they do not answer: its scan fills it in.
        rest = torch.nonzero(~done).reshape(-1)
        rest_lims, rest_dist, rest_pos = scan.range_positions(q[rest], radius, self.chunk_bytes, self._within(sel, segment))
        counts = torch.zeros(q.shape[0], dtype=torch.int64)
        counts[rest] = rest_lims.diff()
        rest_lims = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return self._merge(q.shape[0], [(lims, dist, pos), (rest_lims, rest_dist, rest_pos)])

    def _range_tables(self, state: _State, q: Tensor, radius: int, sel: Selection, bitmap: Tensor | None):
        used = self._with_tables(state, q.shape[0], radius)
        found = [self._range_segment(state, segment, q, radius, sel, bitmap) for segment in state.segments[:used]]
        tail = self._tail(state, sel, state.segments[used].start if used < len(state.segments) else None)
        if tail is not None and tail.count:
            found.append(state.scan.range_positions(q, radius, self.chunk_bytes, tail))
        lims, dist, pos = found[0] if len(found) == 1 else self._merge(q.shape[0], found)
        return lims, dist, state.scan.ids_at(pos)

    @staticmethod
    def _merge(num_queries: int, found: list) -> tuple[Tensor, Tensor, Tensor]:
        """Range results over disjoint position ranges, each (lims, dist, pos) over the same queries
        by (distance, position) and given in position order, merged into one ordered by (query,
        distance, position): a stable sort by (query, distance) keeps ties by position. In NumPy,
        as :meth:`_merge_knn`."""
        found = [f for f in found if int(f[0][-1])] or found[:1]
        if len(found) == 1:
            return found[0]
        if num_queries == 1:  # one query: a stable sort by distance keeps ties by position
            dist = np.concatenate([f[1].numpy() for f in found])
            order = np.argsort(dist, kind="stable")
            pos = np.concatenate([f[2].numpy() for f in found])[order]
            return torch.tensor([0, len(order)]), torch.from_numpy(dist[order]), torch.from_numpy(pos)
        rows = np.arange(num_queries, dtype=np.int64)
        qrow = np.concatenate([np.repeat(rows, np.diff(f[0].numpy())) for f in found])
        dist = np.concatenate([f[1].numpy() for f in found])
        pos = np.concatenate([f[2].numpy() for f in found])
        order = np.argsort((qrow << 32) | dist, kind="stable")
        lims = np.zeros(num_queries + 1, np.int64)
        np.cumsum(np.bincount(qrow, minlength=num_queries), out=lims[1:])
        return torch.from_numpy(lims), torch.from_numpy(dist[order]), torch.from_numpy(pos[order])

    # ------------------------------------------------------------------------------------------
    # Files
    # ------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Writes the index with its tables (index file format version 2), atomically, as
        :meth:`HammingIndex.save`. ``HammingIndex.load`` reads the file too (ignoring the tables).
        An index with more than one segment of tables, or codes past the last, is first given one set
        of tables over all its codes (kept for later searches too)."""
        with self._lock:
            state = self._state
            if state.segments and (len(state.segments) > 1 or state.covered < len(state.scan)):
                state = self._state = self._build(state.scan)  # one set of tables over all the codes
        section = None
        if state.segments:
            (segment,) = state.segments
            arrays = [tuple(t.numpy() for t in segment.tables[3 * i : 3 * i + 3]) for i in range(len(segment.specs))]
            section = index_file.table_section(list(segment.specs), len(state.scan), arrays)
        state.scan.write(path, self.nbits, section)

    @classmethod
    def load(
        cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True, chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> "MIHIndex":
        """Reads an index file: one written by :meth:`save` with its tables (memory-mapped too when
        ``mmap``), or a plain :meth:`HammingIndex.save` file, whose tables are then built.

        Args and errors: as :meth:`HammingIndex.load` (``verify`` checks the tables' checksum too).
        """
        scan, tables = HammingIndex.load_with_tables(path, mmap, verify, chunk_bytes)
        out = cls(scan.nbits)
        out._scan = scan
        if tables is None or LOAD_ERROR is not None:
            if len(scan) > MAX_MIH_CODES:
                raise ValueError(f"cannot load index {os.fspath(path)!r} as an MIHIndex: more than 2^31 - 1 codes")
            out._state = out._build(scan._snapshot())
            return out
        specs = tuple(spec for spec, _ in tables)
        arrays = tuple(_tensor_view(np.asarray(a)) for _, triple in tables for a in triple)
        # Tables laid out by the paper's rule for this size keep following it as the index changes; any
        # other layout was chosen with ``m``, which later rebuilds keep.
        out._m = None if list(specs) == choose_tables(scan.nbits, len(scan)) else len(specs)
        out._state = _State(scan._snapshot(), (_Segment(0, len(scan), specs, arrays),))
        return out
