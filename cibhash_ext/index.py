"""HammingIndex: exact Hamming search over packed binary codes with user ids, saved atomically in a
versioned file format (:mod:`cibhash_ext.index_file`), memory-mapped loading with chunked search,
and faiss interop.

Replace an index file by rename, never by writing into it: :meth:`HammingIndex.save` writes a
temporary file and renames it over the old one, and so should any other tool (``mv``, not ``cp``).
A process that has the old file mapped keeps searching the file it loaded, unchanged, until it
loads the new one. A mapped file written in place (``cp new old``, truncated, appended to) would
give a process reading the map different results or kill it with SIGBUS; a mapped index therefore
compares the file's size and modification time with those it had at load before each block it
reads, and raises :class:`IndexFileChangedError` instead. (A write that lands while a block is
being read cannot be caught this way.)

Threads: an index may be searched from several threads while other threads ``add`` or
``remove_ids``. Everything a read sees (codes, ids, device, file map) is one immutable
:class:`_State`; a write builds a new state and swaps the reference under the index's lock (an
add writes its codes and ids only into buffer rows that no state shows yet, see
``_GrowingRows``), so writers run one at a time, and each search (or ``save``,
``to_faiss``) reads the one state it picked up at its start: the index as it was before or after a
concurrent write, never a mix. Nothing is copied per search; an old state lives until the last
search holding it ends.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import warnings
import weakref
from typing import BinaryIO, Iterator

import numpy as np
import torch
from torch import Tensor

from cibhash_ext import index_file, ops
from cibhash_ext.files import remove_stale_temporaries
from cibhash_ext.id_runs import IdRuns
from cibhash_ext.index_file import FORMAT_VERSION, MAGIC, MAX_CODES, MAX_NBITS, padding_mask

__all__ = ["HammingIndex", "IDSelectorRange", "IDSelectorBatch", "IndexFileChangedError", "FORMAT_VERSION", "MAGIC"]

# Ties are merged on one int64 key, distance << 40 | position; positions must fit in 40 bits.
_POSITION_BITS = 40
DEFAULT_CHUNK_BYTES = 64 << 20
_IO_BLOCK = 16 << 20
# A filter allowing at most 1/_SPARSE_FILTER of the codes gathers them and scans only those; a denser
# one scans everything with an allow bitmap checked where a code beats a query's threshold.
_SPARSE_FILTER = 16
# What a filtered k-NN search returns where fewer than k codes are allowed (faiss's convention).
NO_ID = -1
NO_DISTANCE = torch.iinfo(torch.int32).max
# The scans of a search whose inputs the index has checked, without the ops' Python wrappers: a search
# of one query over 1M codes spent about 50 us in Python besides its scan, because the scan evicts the
# caches that Python's objects were in (benchmarks/RESULTS.md, "one query: the Python around the scan").
_topk_kernel = ops.kernel("hamming_topk")
_radius_kernel = ops.kernel("hamming_radius")


class IndexFileChangedError(RuntimeError):
    """The file behind a memory-mapped index was written in place after it was loaded; load it again."""


class _MappedFile:
    """The open file behind a memory-mapped index and its size and modification time at load.

    The identity is taken with fstat of the file that was mapped, so a file replaced by rename
    (a new inode at the path) leaves the mapped index valid; only a write into the mapped file
    itself changes it.
    """

    def __init__(self, path: str, fh: BinaryIO) -> None:
        self.path = path
        self._fh = fh
        self._loaded = self._stat()
        weakref.finalize(self, fh.close)

    def _stat(self) -> tuple[int, int]:
        st = os.fstat(self._fh.fileno())
        return st.st_size, st.st_mtime_ns

    def check(self) -> None:
        """Raises IndexFileChangedError if the file's size or modification time changed since load."""
        now = self._stat()
        if now != self._loaded:
            (size0, _), (size1, _) = self._loaded, now
            change = f"size {size0} -> {size1} bytes" if size1 != size0 else "same size, modified since"
            raise IndexFileChangedError(
                f"index file {self.path!r} was written in place after it was memory-mapped ({change}), so the "
                "map no longer holds the index that was loaded: load it again, and replace index files by "
                "rename (HammingIndex.save does) instead of writing into them"
            )


class IDSelectorRange:
    """Allows the ids ``imin <= id < imax`` in a filtered search (as ``faiss.IDSelectorRange``).

    Args:
        imin (int): first id allowed.
        imax (int): one past the last id allowed, imax >= imin.
    """

    def __init__(self, imin: int, imax: int) -> None:
        self.imin, self.imax = _check_int(imin, "imin", -(1 << 63)), _check_int(imax, "imax", -(1 << 63))
        if self.imax < self.imin:
            raise ValueError(f"imax must be >= imin={self.imin}, got {self.imax}")

    def __repr__(self) -> str:
        return f"IDSelectorRange({self.imin}, {self.imax})"


class IDSelectorBatch:
    """Allows the ids in a list in a filtered search (as ``faiss.IDSelectorBatch``); ids not in the
    index are ignored.

    Args:
        ids (Tensor[m] or array of integers): the ids allowed.
    """

    def __init__(self, ids) -> None:
        ids = _as_int64_ids(ids)
        if ids.dim() != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
        self.ids = ids.cpu()

    def __repr__(self) -> str:
        return f"IDSelectorBatch({self.ids.numel()} ids)"


def as_selector(allow) -> IDSelectorRange | IDSelectorBatch | None:
    """``allow`` of a search as a selector: None, a selector, a ``range`` of step 1 (an id range), or a
    tensor/array of ids (a batch)."""
    if allow is None or isinstance(allow, (IDSelectorRange, IDSelectorBatch)):
        return allow
    if isinstance(allow, range):
        if allow.step != 1:
            raise ValueError(f"allow as a range must have step 1, got step {allow.step}")
        return IDSelectorRange(allow.start, max(allow.start, allow.stop))
    if isinstance(allow, (Tensor, np.ndarray)):
        return IDSelectorBatch(allow)
    raise TypeError(
        f"allow must be None, an IDSelectorRange, an IDSelectorBatch, a range or a tensor of ids, got {_describe(allow)}"
    )


@dataclasses.dataclass(frozen=True)
class Selection:
    """The positions a filtered search may return: those of [start, stop) that are set in ``bitmap``
    (uint8, bit p of byte p // 8, over every position) or, when ``positions`` is given, exactly those
    (sorted). ``count`` is how many there are."""

    start: int
    stop: int
    count: int
    positions: Tensor | None = None
    bitmap: Tensor | None = None


def _tensor_view(array: np.ndarray) -> Tensor:
    """A zero-copy tensor over a (possibly read-only, memory-mapped) array; nothing writes to it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "array is not writable": the index never writes
        return torch.from_numpy(array)


def _describe(value) -> str:
    if isinstance(value, (Tensor, np.ndarray)):
        return f"{value.dtype} array of shape {tuple(value.shape)}"
    return type(value).__name__


def as_packed_codes(codes, nbits: int, name: str = "codes", device: torch.device | str | None = None) -> Tensor:
    """Converts codes given packed or unpacked to packed uint8 rows of ``nbits`` bits.

    Packed codes are uint8 with ``ceil(nbits/8)`` columns; unpacked codes have ``nbits`` columns of
    {0, 1} or {-1, +1} values of any real dtype (or bool). The one shape both could have (nbits = 1,
    uint8) means the same code either way.

    Args:
        codes (Tensor[n, ceil(nbits/8)] uint8 or Tensor[n, nbits] real, or numpy arrays of those).
        nbits (int): bits per code.
        name (str): argument name used in error messages.
        device: where the result goes (default: where ``codes`` is).

    Returns:
        Tensor[n, ceil(nbits/8)], uint8, contiguous, padding bits 0.

    Raises:
        TypeError: codes is not an array, or packed-width codes are not uint8.
        ValueError: wrong shape, values outside {0, 1} / {-1, +1}, or padding bits set.
    """
    if isinstance(codes, np.ndarray):
        codes = _tensor_view(codes)
    if not isinstance(codes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {_describe(codes)}")
    if codes.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D [n, {(nbits + 7) // 8}] packed or [n, {nbits}] unpacked, got shape {tuple(codes.shape)}"
        )
    if device is not None and codes.device != (device if isinstance(device, torch.device) else torch.device(device)):
        codes = codes.to(device)
    code_size = (nbits + 7) // 8
    width = codes.shape[1]
    if width == code_size and (codes.dtype == torch.uint8 or width != nbits):
        if codes.dtype != torch.uint8:
            raise TypeError(f"{name} has {width} columns, so it must be packed uint8 codes, got {codes.dtype}")
        if not codes.is_contiguous():
            codes = codes.contiguous()
        mask = padding_mask(nbits)
        if mask and codes.shape[0] and bool((codes[:, -1] & mask).any()):
            raise ValueError(
                f"{name} has bits set beyond nbits={nbits} in its last byte; padding bits must be 0 (is nbits right?)"
            )
        return codes
    if width == nbits:
        if codes.dtype.is_complex:
            raise TypeError(f"{name} must be real, got {codes.dtype}")
        if codes.dtype != torch.bool and codes.numel():
            zero_one = ((codes == 0) | (codes == 1)).all()
            if not bool(zero_one) and not bool(((codes == -1) | (codes == 1)).all()):
                raise ValueError(f"unpacked {name} must hold {{0, 1}} or {{-1, +1}} values only")
        return ops.pack_bits(codes)
    raise ValueError(
        f"{name} must have {code_size} columns (packed uint8) or {nbits} columns (unpacked) for nbits={nbits}, "
        f"got shape {tuple(codes.shape)}"
    )


def merge_topk(dist: Tensor, positions: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k smallest of each row by (distance, position); positions are unique in a row.

    Args:
        dist (Tensor[Q, M], int32 or int64): distances in [0, 2^22]; padding entries may hold any
            value with position -1.
        positions (Tensor[Q, M], int64): positions in [0, 2^40), or -1 for padding (sorted last).
        k (int): results per row, k <= M.

    Returns:
        (order Tensor[Q, k] int64 column indices into the inputs, keys Tensor[Q, k] int64).
    """
    key = (dist.to(torch.int64) << _POSITION_BITS) | positions
    key = torch.where(positions < 0, torch.full_like(key, torch.iinfo(torch.int64).max), key)
    keys, order = torch.topk(key, k, dim=1, largest=False, sorted=True)
    return order, keys


def sort_matches(qrow: Tensor, dist: Tensor, pos: Tensor, num_queries: int) -> tuple[Tensor, Tensor]:
    """Orders range-search matches by (query, distance, position) and returns FAISS lims.

    Args:
        qrow (Tensor[M], int64): query of each match.
        dist (Tensor[M], int32): distances.
        pos (Tensor[M], int64): positions in [0, 2^40).
        num_queries (int): Q.

    Returns:
        (order Tensor[M] int64 permutation of the matches, lims Tensor[Q + 1] int64)
    """
    key = (dist.to(torch.int64) << _POSITION_BITS) | pos
    order = torch.sort(key, stable=True).indices
    order = order[torch.sort(qrow[order], stable=True).indices]
    lims = torch.zeros(num_queries + 1, dtype=torch.int64, device=qrow.device)
    lims[1:] = torch.cumsum(torch.bincount(qrow, minlength=num_queries), 0)
    return order, lims


def _as_int64_ids(ids) -> Tensor:
    """``ids`` (a tensor or numpy array of integers) as int64, refusing what would change on the way:
    bools, floats, and uint64 ids >= 2^63 (which a cast would wrap to negative ids)."""
    if isinstance(ids, np.ndarray):
        ids = torch.from_numpy(np.ascontiguousarray(ids, dtype=ids.dtype.newbyteorder("=")))
    if not isinstance(ids, Tensor):
        raise TypeError(f"ids must be a torch.Tensor or numpy array of integers, got {_describe(ids)}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"ids must hold integers, got {ids.dtype}")
    if ids.dtype == torch.uint64:
        too_big = ids.view(torch.int64) < 0
        if bool(too_big.any()):
            shown = [v + (1 << 64) for v in ids.view(torch.int64)[too_big][:5].tolist()]
            raise ValueError(f"ids must be < 2^63 (they are stored as int64), got uint64 ids {shown}")
    return ids.to(torch.int64)


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class _State:
    """One state of a :class:`HammingIndex`: its codes and ids, never changed once made.

    Every read of an index goes through the state it picked up once (see the module docstring);
    every write makes a new one.

    Attributes:
        codes (Tensor[n, code_size] uint8, or a read-only memory-mapped np.ndarray).
        ids (Tensor[n] int64, a memory-mapped np.ndarray, or None: id = id_base + position).
        id_base (int): the id of position 0 when ``ids`` is None.
        device (torch.device): where codes and results live.
        path (str or None): the file whose map holds the codes.
        mapping (_MappedFile or None): set with ``path`` when the codes are a file's map.
    """

    codes: Tensor | np.ndarray
    ids: Tensor | np.ndarray | None
    id_base: int
    device: torch.device
    path: str | None = None
    mapping: _MappedFile | None = None

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def is_mmap(self) -> bool:
        return isinstance(self.codes, np.ndarray)

    def check_mapping(self) -> None:
        if self.mapping is not None:
            self.mapping.check()

    def codes_tensor(self) -> Tensor:
        if not self.is_mmap:
            return self.codes
        self.check_mapping()
        return _tensor_view(self.codes)

    def ids_at(self, positions: Tensor | None) -> Tensor:
        """The ids at ``positions`` (Tensor of int64 positions, any shape), or all ids for None."""
        if self.ids is None:
            if positions is None:
                return torch.arange(self.id_base, self.id_base + len(self), dtype=torch.int64, device=self.device)
            # Sequential ids from 0 are the positions: no add (a torch op costs microseconds per search).
            return positions if self.id_base == 0 else positions + self.id_base
        if isinstance(self.ids, np.ndarray):
            self.check_mapping()
            if positions is None:
                return torch.from_numpy(np.array(self.ids, dtype=np.int64))
            picked = self.ids[positions.cpu().numpy().reshape(-1)].astype(np.int64)
            return torch.from_numpy(picked).reshape(positions.shape).to(positions.device)
        return self.ids.clone() if positions is None else self.ids[positions]

    def ids_unshared(self) -> Tensor:
        """All ids, as the stored tensor itself (no copy: read it, never write it) or the range; the
        writers' view, where :meth:`ids_at` returns a copy the caller may keep."""
        return self.ids if isinstance(self.ids, Tensor) else self.ids_at(None)

    def has_stored_ids(self) -> bool:
        if self.ids is None:
            return self.id_base != 0 and len(self) > 0
        return not torch.equal(self.ids_at(None).cpu(), torch.arange(len(self), dtype=torch.int64))

    def chunks(self, chunk_bytes: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, Tensor]]:
        """(first position, codes) blocks of positions [start, stop): one view in memory, bounded blocks
        from a map (a multiple of 8 codes, so an allow bitmap splits at byte boundaries)."""
        stop = len(self) if stop is None else stop
        if not self.is_mmap:
            yield start, self.codes[start:stop]
            return
        code_size = self.codes.shape[1]
        rows = max(8, int(chunk_bytes) // code_size // 8 * 8)
        for first in range(start, stop, rows):
            self.check_mapping()
            yield first, _tensor_view(self.codes[first : min(stop, first + rows)])

    def gather(self, positions: Tensor) -> Tensor:
        """The codes at ``positions`` (sorted), read from the map only where they lie."""
        if not self.is_mmap:
            return self.codes[positions.to(self.device)]
        self.check_mapping()
        return torch.from_numpy(self.codes[positions.numpy()])

    @functools.cached_property
    def everything(self) -> Selection:
        """The selection of every position (made once per state)."""
        return Selection(0, len(self), len(self))

    def select(self, allow) -> Selection:
        """The positions a search with filter ``allow`` may return (see :meth:`HammingIndex.search`).

        Ids given in order (no stored ids) turn an id range into a position range and an id list into
        positions without reading the index; stored ids are compared block by block.
        """
        selector, n = as_selector(allow), len(self)
        if selector is None:
            return self.everything
        if self.ids is None and isinstance(selector, IDSelectorRange):
            lo = min(max(selector.imin - self.id_base, 0), n)
            hi = min(max(selector.imax - self.id_base, lo), n)
            return Selection(lo, hi, hi - lo)
        if self.ids is None:
            positions = torch.unique(selector.ids - self.id_base)
            positions = positions[(positions >= 0) & (positions < n)]
            return Selection(0, n, int(positions.numel()), positions=positions)
        mask = torch.empty(n, dtype=torch.bool)
        rows = _IO_BLOCK // 8
        for start in range(0, n, rows):
            ids = self.ids_at(torch.arange(start, min(n, start + rows), device=self.device)).cpu()
            if isinstance(selector, IDSelectorRange):
                mask[start : start + rows] = (ids >= selector.imin) & (ids < selector.imax)
            else:
                mask[start : start + rows] = torch.isin(ids, selector.ids)
        count = int(mask.sum())
        if count == n:
            return Selection(0, n, n)
        if count * _SPARSE_FILTER <= n or self.device.type != "cpu":
            return Selection(0, n, count, positions=torch.nonzero(mask).reshape(-1))
        return Selection(0, n, count, bitmap=ops.pack_bits(mask.reshape(1, -1)).reshape(-1))

    def search_positions(
        self, queries: Tensor, k: int, chunk_bytes: int, selection: Selection | None = None
    ) -> tuple[Tensor, Tensor]:
        """Top-k by (distance, position) over packed queries; k may exceed len(self).

        Args:
            queries (Tensor[Q, code_size], uint8): packed queries on this state's device.
            k (int): k >= 1.
            chunk_bytes (int): block size of a memory-mapped search.
            selection (Selection, optional): the positions allowed (:meth:`select`); default all.

        Returns:
            (distances Tensor[Q, k'] int32, positions Tensor[Q, k'] int64), k' = min(k, allowed codes).
        """
        sel = self.everything if selection is None else selection
        k = min(k, sel.count)
        if k and sel.bitmap is None and sel.positions is None and not self.is_mmap:
            # One block in memory, the common case: no merging, and no slice of a whole index (a torch
            # op costs microseconds).
            if sel.count == len(self):
                return _topk_kernel(queries, self.codes, k)
            d, p = _topk_kernel(queries, self.codes[sel.start : sel.stop], k)
            return d, p + sel.start if sel.start else p
        best_d = torch.empty(queries.shape[0], 0, dtype=torch.int32, device=self.device)
        best_p = torch.empty(queries.shape[0], 0, dtype=torch.int64, device=self.device)
        if k == 0:
            return best_d, best_p
        if sel.positions is not None:
            # Positions are sorted, so ties among the gathered codes keep the index's order.
            d, p = ops.hamming_topk(queries, self.gather(sel.positions), k)
            return d, sel.positions.to(self.device)[p]
        for start, chunk in self.chunks(chunk_bytes, sel.start, sel.stop):
            if sel.bitmap is None:
                d, p = ops.hamming_topk(queries, chunk, min(k, chunk.shape[0]))
            else:
                d, p = ops.hamming_topk_filtered(queries, chunk, k, sel.bitmap[start // 8 :])
            if start:
                p = p + start
            if best_d.shape[1] == 0:
                best_d, best_p = d, p
                continue
            d, p = torch.cat([best_d, d], 1), torch.cat([best_p, p], 1)
            order, _ = merge_topk(d, p, min(k, d.shape[1]))
            best_d, best_p = d.gather(1, order), p.gather(1, order)
        return best_d, best_p

    def finish_topk(self, dist: Tensor, pos: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Results [Q, k' <= k] by position -> (distances, ids) [Q, k], padded with (2^31 - 1, -1)."""
        if dist.shape[1] == k:
            return dist, self.ids_at(pos)
        pad = k - dist.shape[1]
        ids = self.ids_at(pos) if pos.shape[1] else pos
        dist = torch.cat([dist, dist.new_full((dist.shape[0], pad), NO_DISTANCE)], 1)
        return dist, torch.cat([ids, ids.new_full((ids.shape[0], pad), NO_ID)], 1)

    def range_positions(
        self, queries: Tensor, radius: int, chunk_bytes: int, selection: Selection | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Radius search over packed queries, results as positions (see :meth:`HammingIndex.range_search`)."""
        sel = self.everything if selection is None else selection
        if sel.positions is not None:
            lims, dist, p = _radius_kernel(queries, self.gather(sel.positions), radius)
            return lims, dist, sel.positions.to(self.device)[p]
        if sel.bitmap is None and not self.is_mmap and sel.count == len(self) and len(self):
            return _radius_kernel(queries, self.codes, radius)  # the common case, as in search_positions

        def run(start: int, chunk: Tensor):
            if sel.bitmap is None:
                return _radius_kernel(queries, chunk, radius)
            return ops.hamming_radius_filtered(queries, chunk, radius, sel.bitmap[start // 8 :])

        chunks = [(start, run(start, chunk)) for start, chunk in self.chunks(chunk_bytes, sel.start, sel.stop)
                  if chunk.shape[0]]
        if not chunks:
            lims = torch.zeros(queries.shape[0] + 1, dtype=torch.int64, device=self.device)
            empty = torch.empty(0, dtype=torch.int64, device=self.device)
            return lims, empty.to(torch.int32), empty
        if len(chunks) == 1:
            start, (lims, dist, p) = chunks[0]
            return lims, dist, p + start if start else p
        qrows, dists, positions = [], [], []
        rows = torch.arange(queries.shape[0], device=self.device)
        for start, (lims, d, p) in chunks:
            qrows.append(torch.repeat_interleave(rows, lims.diff()))
            dists.append(d)
            positions.append(p + start)
        qrow, dist, pos = torch.cat(qrows), torch.cat(dists), torch.cat(positions)
        order, lims = sort_matches(qrow, dist, pos, queries.shape[0])
        return lims, dist[order], pos[order]

    def write(self, path: str | os.PathLike, nbits: int, table_blocks=None) -> None:
        """Writes this state to an index file (see :meth:`HammingIndex.save`), with a tables section
        (``index_file.table_section``) when given (MIHIndex)."""
        ids = self.id_blocks() if self.has_stored_ids() else None
        index_file.write(os.fspath(path), nbits, len(self), self.code_blocks(), ids, table_blocks)

    def code_blocks(self) -> Iterator[memoryview]:
        code_size = self.codes.shape[1]
        rows = max(1, _IO_BLOCK // code_size)
        for start in range(0, len(self), rows):
            self.check_mapping()
            block = self.codes[start : start + rows]
            block = np.ascontiguousarray(block) if self.is_mmap else block.cpu().numpy()
            yield memoryview(block.reshape(-1))

    def id_blocks(self) -> Iterator[memoryview]:
        rows = _IO_BLOCK // 8
        for start in range(0, len(self), rows):
            if self.ids is None:
                stop = min(start + rows, len(self))
                block = np.arange(self.id_base + start, self.id_base + stop, dtype=np.int64)
            else:
                self.check_mapping()
                block = self.ids[start : start + rows]
                block = np.asarray(block if isinstance(block, np.ndarray) else block.cpu().numpy())
            yield memoryview(np.ascontiguousarray(block, dtype="<i8").view(np.uint8))


def _isin(elements: Tensor, test: Tensor) -> Tensor:
    """``torch.isin(elements, test)``; on the CPU with more than 1,000 test ids through NumPy, which
    measured 2-4x faster there (9M ids against 10,000: 283 ms against 1,239)."""
    if elements.device.type == "cpu" and test.numel() > 1_000:
        return torch.from_numpy(np.isin(elements.numpy(), test.numpy()))
    return torch.isin(elements, test)


def _without_rows(rows: Tensor, positions: Tensor) -> Tensor:
    """A new tensor of ``rows`` without the rows at ``positions`` (sorted, unique), in order. A few
    rows go by copying the runs between them (9M 8-byte codes less 10: 41 ms, where a boolean mask
    took 148 ms), more by one gather (10,000: 155 ms against 253)."""
    if positions.numel() <= 64:
        bounds = [-1, *positions.tolist(), rows.shape[0]]
        return torch.cat([rows[a + 1 : b] for a, b in zip(bounds, bounds[1:])])
    keep = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
    keep[positions] = False
    return rows.index_select(0, torch.nonzero(keep).reshape(-1))


class _GrowingRows:
    """Where an index's adds put rows (codes, or ids): a buffer whose first rows are a state's tensor.

    The buffer grows by at least a quarter when it is full (the first add allocates exactly what it
    needs), so an add writes its own rows only, and all adds together copy each row about four
    times: an add of 10,000 codes to 9M took 31-33 ms when every add copied every code, and an add
    with ids 1.2 s (most of it the clash check, see :mod:`cibhash_ext.id_runs`). A state holds a
    view of the buffer's first rows, and an add writes only past the rows any state has shown, so a
    search running on an older state never sees a row change. A tensor that is not the buffer's
    longest view (a failed write put back, a removal, ids made from a range) gets a new buffer.
    """

    def __init__(self) -> None:
        self.buffer: Tensor | None = None
        self.shown = 0  # no view of the buffer holds rows past this one

    def append(self, current: Tensor, extra: Tensor) -> Tensor:
        """``current`` followed by ``extra`` (same dtype and row shape), as the first rows of the buffer."""
        n, m = current.shape[0], extra.shape[0]
        buffer = self.buffer
        if (buffer is None or n != self.shown or n + m > buffer.shape[0] or current.data_ptr() != buffer.data_ptr()
                or buffer.device != current.device or buffer.dtype != extra.dtype):
            capacity = n + m if n == 0 else max(n + m, n + n // 4)
            buffer = torch.empty((capacity, *extra.shape[1:]), dtype=extra.dtype, device=current.device)
            buffer[:n] = current
            self.buffer = buffer
        buffer[n : n + m] = extra
        self.shown = n + m
        return buffer[: n + m]


class HammingIndex:
    """Exact Hamming k-NN and radius search over binary codes, with user ids.

    Codes are stored packed (uint8, ``ceil(nbits/8)`` bytes per code, FAISS layout). Every result
    is ordered by (distance, position in the index): equal distances go to the code added first.
    :meth:`remove_ids` compacts the positions in insertion order, so the survivors keep their
    relative tie order. Results are reported as the user's ids.

    An index lives on CPU or a CUDA device (``.to(device)``; the CUDA path runs the extension's
    CUDA ops but is not exercised by this project's CPU-only CI). An index loaded with
    ``mmap=True`` keeps its codes in the file's memory map (read-only): searches stream the
    database in chunks of ``chunk_bytes`` and merge them with the same tie rule, so the results
    equal an in-memory search and the anonymous memory used stays O(Q * k + chunk).

    Threads: searches may run in any number of threads at once, also while other threads call
    :meth:`add`, :meth:`remove_ids` or :meth:`to`. Each search sees the index as it was either
    before or after each concurrent write, never a mix of the two, and never fails because of one;
    writes run one at a time (they take the index's lock). Unlike FAISS, no outside lock is needed.
    A search does not copy the database: a write builds a new state and swaps it in whole. An add
    writes its codes (and ids) into buffers past the rows any state shows (a buffer grows by a
    quarter when full, so the codes and ids may hold up to a quarter more memory than they need),
    and checks given ids against sorted runs of the index's ids (:class:`~cibhash_ext.id_runs.IdRuns`,
    8 more bytes per id, built by the first add that gives ids), so its cost is that of its own codes
    and ids. A removal still copies the codes and ids (and drops the buffers' spare rows and the runs).

    Args:
        nbits (int): bits per code, 1 <= nbits <= 2^20.
        device (torch.device or str): where codes and results live (default CPU).
    """

    def __init__(self, nbits: int, device: torch.device | str = "cpu") -> None:
        nbits = _check_int(nbits, "nbits", 1)
        if nbits > MAX_NBITS:
            raise ValueError(f"nbits must be <= {MAX_NBITS}, got {nbits}")
        self.nbits = nbits
        self.code_size = (nbits + 7) // 8
        self.chunk_bytes = DEFAULT_CHUNK_BYTES
        device = torch.device(device)
        self._write_lock = threading.Lock()
        self._state = _State(torch.empty(0, self.code_size, dtype=torch.uint8, device=device), None, 0, device)
        # Where adds put codes and ids (see _GrowingRows), and the ids of the last state an add
        # needed them for (a weak reference to that state, and its IdRuns).
        self._code_rows = _GrowingRows()
        self._id_rows = _GrowingRows()
        self._id_runs: tuple[weakref.ref, IdRuns] | None = None

    def __len__(self) -> int:
        return len(self._state)

    def __repr__(self) -> str:
        state = self._state
        where = f"mmap={state.path!r}" if state.is_mmap else f"device={state.device}"
        return f"HammingIndex(nbits={self.nbits}, ntotal={len(state)}, {where})"

    def _snapshot(self) -> _State:
        """The current state, unchanged by later writes: reads that must agree (a search and the ids
        of its positions, as :class:`~cibhash_ext.sharded_index.ShardedHammingIndex` makes) share one."""
        return self._state

    @property
    def device(self) -> torch.device:
        """Where the codes and results live."""
        return self._state.device

    @property
    def is_mmap(self) -> bool:
        """True when the codes are read from a file's memory map (read-only)."""
        return self._state.is_mmap

    @property
    def codes(self) -> Tensor:
        """Tensor[n, code_size], uint8: the packed codes (a zero-copy view when memory-mapped)."""
        return self._state.codes_tensor()

    @property
    def ids(self) -> Tensor:
        """Tensor[n], int64: the id of each code, in position order."""
        return self._state.ids_at(None)

    @staticmethod
    def _require_writable(state: _State, what: str) -> None:
        if state.is_mmap:
            raise RuntimeError(
                f"{what}: this index is memory-mapped read-only from {state.path!r}; load it with mmap=False to modify it"
            )

    def to(self, device: torch.device | str) -> "HammingIndex":
        """Moves the index to ``device`` in place and returns it (like ``nn.Module.to``).

        A memory-mapped index moved to a CUDA device is copied there (it is no longer mapped);
        moved to the CPU it stays mapped.
        """
        device = torch.device(device)
        with self._write_lock:
            state = self._state
            if (device.type == "cpu" and state.is_mmap) or (device == state.device and not state.is_mmap):
                return self
            codes = state.codes_tensor().to(device).contiguous()
            ids = None if state.ids is None else state.ids_at(None).to(device)
            self._state = _State(codes, ids, state.id_base, device)
            self._forget_write_buffers()
        return self

    def slice(self, start: int, stop: int) -> "HammingIndex":
        """A new index over rows [start, stop) that shares this one's codes (no copy) and keeps their ids.

        A slice of a memory-mapped index is memory-mapped too. Tie order within the slice is the
        original position order.

        Args:
            start (int): first row, 0 <= start <= stop.
            stop (int): one past the last row, stop <= len(self).
        """
        state = self._state
        start, stop = _check_int(start, "start", 0), _check_int(stop, "stop", 0)
        if not start <= stop <= len(state):
            raise ValueError(f"start and stop must satisfy 0 <= start <= stop <= {len(state)}, got {start} and {stop}")
        out = HammingIndex(self.nbits, state.device)
        out.chunk_bytes = self.chunk_bytes
        if state.ids is None:
            ids, id_base = None, state.id_base + start
        else:
            ids, id_base = state.ids[start:stop], 0
        out._state = _State(state.codes[start:stop], ids, id_base, state.device, state.path, state.mapping)
        return out

    # ------------------------------------------------------------------------------------------
    # Mutation
    # ------------------------------------------------------------------------------------------

    def add(self, codes, ids=None) -> None:
        """Appends codes, with ids or the next sequential ones.

        Safe while other threads search (see the class docstring).

        Args:
            codes (Tensor[n, ceil(nbits/8)] uint8 packed, or Tensor[n, nbits] {0,1}/{-1,+1} of any
                real dtype; numpy arrays too): the codes, detected by shape and dtype.
            ids (Tensor[n] or array of integers, optional): one id per code, unique and not yet in
                the index. Default: ``max(existing ids) + 1`` onwards (0 onwards when empty).

        Raises:
            TypeError, ValueError: bad codes or ids (the message names the argument): ids that are not
                integers, uint64 ids >= 2^63 (ids are int64), duplicate ids.
            RuntimeError: the index is memory-mapped (read-only).
        """
        with self._write_lock:
            state = self._state
            self._require_writable(state, "add")
            packed = as_packed_codes(codes, self.nbits, "codes", state.device)
            n = packed.shape[0]
            if len(state) + n > MAX_CODES:
                raise ValueError(f"codes: an index holds at most 2^{_POSITION_BITS} codes, {len(state)} + {n} is more")
            if ids is None and state.ids is None:
                self._state = dataclasses.replace(state, codes=self._code_rows.append(state.codes, packed))
                return
            if ids is None:
                # The runs when an add made them (else one pass for the largest id, as no id is checked).
                runs = self._kept_id_runs(state)
                largest = runs.max() if runs is not None else int(state.ids.max()) if len(state) else None
                start = state.id_base if largest is None else largest + 1
                new_ids = torch.arange(start, start + n, dtype=torch.int64, device=state.device)
            else:
                runs = self._id_runs_of(state)
                new_ids = self._check_new_ids(ids, n, runs, state.device)
            codes = self._code_rows.append(state.codes, packed)
            all_ids = self._id_rows.append(state.ids_unshared(), new_ids)
            self._state = dataclasses.replace(state, codes=codes, ids=all_ids, id_base=0)
            self._id_runs = None if runs is None else (weakref.ref(self._state), runs.extended(new_ids))

    def _kept_id_runs(self, state: _State) -> IdRuns | None:
        """The sorted runs of ``state``'s ids if the add that made ``state`` kept them."""
        if self._id_runs is not None and self._id_runs[0]() is state:
            return self._id_runs[1]
        return None

    def _id_runs_of(self, state: _State) -> IdRuns:
        """The ids of ``state`` as sorted runs: kept from the add that made ``state``, else built (one
        sort of all ids, after a load, a removal, or a write that was put back)."""
        runs = self._kept_id_runs(state)
        if runs is None:
            ids = state.ids_unshared()
            runs = IdRuns.from_sorted(ids) if state.ids is None else IdRuns(ids)
            self._id_runs = (weakref.ref(state), runs)
        return runs

    def _forget_write_buffers(self) -> None:
        """Drops the add buffers and id runs after a write that left them behind (a removal, a move):
        the next add would make new ones anyway, and these would hold the old rows' memory."""
        self._code_rows = _GrowingRows()
        self._id_rows = _GrowingRows()
        self._id_runs = None

    @staticmethod
    def _check_new_ids(ids, n: int, runs: IdRuns, device: torch.device) -> Tensor:
        ids = _as_int64_ids(ids)
        if ids.shape != (n,):
            raise ValueError(f"ids must have shape ({n},), one per code, got {tuple(ids.shape)}")
        ids = ids.to(device).contiguous()
        unique = torch.unique(ids)
        if unique.numel() != n:
            counts = torch.unique(ids, return_counts=True)
            dup = counts[0][counts[1] > 1][:5].tolist()
            raise ValueError(f"ids must be unique, got duplicates {dup}")
        clash = ids[runs.present(ids)]
        if clash.numel():
            raise ValueError(f"ids already in the index: {clash[:5].tolist()}")
        return ids

    def remove_ids(self, ids) -> int:
        """Removes the codes with these ids; ids not in the index are ignored.

        The remaining codes keep their insertion order (positions are compacted), so equal
        distances still go to the code added first. Safe while other threads search (see the
        class docstring).

        Args:
            ids (Tensor[m] or array of integers): ids to remove.

        Returns:
            int: how many codes were removed.

        Raises:
            TypeError: ids are not integers.
            ValueError: uint64 ids >= 2^63.
            RuntimeError: the index is memory-mapped (read-only).
        """
        with self._write_lock:
            state = self._state
            self._require_writable(state, "remove_ids")
            ids = _as_int64_ids(ids)
            ids = ids.reshape(-1).to(state.device)
            current = state.ids_unshared()
            if state.ids is None:  # sequential ids: an id's position is id - id_base
                positions = torch.unique(ids - state.id_base)
                positions = positions[(positions >= 0) & (positions < len(state))]
            else:
                positions = torch.nonzero(_isin(current, ids)).reshape(-1)
            if positions.numel():
                codes = _without_rows(state.codes, positions)
                self._state = dataclasses.replace(state, codes=codes, ids=_without_rows(current, positions), id_base=0)
                self._forget_write_buffers()
            return int(positions.numel())

    # ------------------------------------------------------------------------------------------
    # Search
    # ------------------------------------------------------------------------------------------

    def _prepare_queries(self, queries, device: torch.device | None = None) -> Tensor:
        return as_packed_codes(queries, self.nbits, "queries", self.device if device is None else device)

    def search(self, queries, k: int, allow=None) -> tuple[Tensor, Tensor]:
        """Exact k nearest codes of each query, optionally among the allowed ids only.

        A filter never copies the excluded codes: an id range over ids added in order scans that
        part of the index only; a few allowed codes (at most 1/16) are gathered and scanned; more
        are scanned in place with an allow bitmap checked where a code beats a query's threshold.

        Args:
            queries (Tensor[Q, ceil(nbits/8)] uint8 packed, or Tensor[Q, nbits] unpacked).
            k (int): 1 <= k <= len(self).
            allow (optional): only these ids may be returned: an :class:`IDSelectorRange` (or a
                ``range``), an :class:`IDSelectorBatch` (or a tensor/array of ids). Default: all.

        Returns:
            (distances Tensor[Q, k] int32, ids Tensor[Q, k] int64), ordered by (distance,
            position in the index), on the index's device. Where fewer than k codes are allowed,
            the rest of the row is id -1 with distance 2^31 - 1 (faiss's convention).
        """
        state = self._state
        k = _check_int(k, "k", 1)
        if k > len(state):
            raise ValueError(f"k must be <= the number of codes in the index ({len(state)}), got {k}")
        selection = None if allow is None else state.select(allow)
        q = self._prepare_queries(queries, state.device)
        dist, pos = state.search_positions(q, k, self.chunk_bytes, selection)
        return state.finish_topk(dist, pos, k)

    def range_search(self, queries, radius: int, allow=None) -> tuple[Tensor, Tensor, Tensor]:
        """Every code within Hamming distance ``<= radius`` of each query (FAISS layout), optionally
        among the allowed ids only.

        Args:
            queries (Tensor[Q, ceil(nbits/8)] uint8 packed, or Tensor[Q, nbits] unpacked).
            radius (int): radius >= 0 (inclusive, unlike faiss's binary range_search, which is strict).
            allow (optional): only these ids may be returned, as in :meth:`search`.

        Returns:
            (lims Tensor[Q + 1] int64, distances Tensor[M] int32, ids Tensor[M] int64): query i's
            results are ``lims[i]:lims[i+1]``, ordered by (distance, position in the index).
        """
        state = self._state
        radius = _check_int(radius, "radius", 0)
        selection = state.select(allow)
        q = self._prepare_queries(queries, state.device)
        lims, dist, pos = state.range_positions(q, radius, self.chunk_bytes, selection)
        return lims, dist, state.ids_at(pos)

    # ------------------------------------------------------------------------------------------
    # Files
    # ------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Writes the index in the format of :mod:`cibhash_ext.index_file`, atomically.

        The data go to a temporary file in the same directory, which is fsync'ed and renamed over
        ``path``; a failure or crash at any point leaves an existing ``path`` untouched (after a
        hard kill a stray ``.<name>.*.tmp`` file may remain). Ids are stored only when they differ
        from the positions 0..n-1. A save while other threads write stores one state of the index.

        Args:
            path (str or PathLike): destination file.
        """
        self._state.write(path, self.nbits)

    @classmethod
    def load(
        cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True, chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> "HammingIndex":
        """Reads an index written by :meth:`save`.

        The file must be a regular file (a FIFO, device or directory is refused at once, never
        waited on). The header is always checked (magic, version, header checksum, consistency of
        nbits, sizes and offsets, exact file size). ``verify=True`` also streams the codes and ids
        through zlib.crc32 (and checks padding bits are 0), reading the whole file once;
        ``verify=False`` skips that pass, which makes loading a huge mapped file O(1).

        Args:
            path (str or PathLike): index file.
            mmap (bool): map the codes and ids read-only instead of reading them into memory; the
                index is then read-only and searches stream it in ``chunk_bytes`` blocks. Replace a
                mapped file by rename only (see the module docstring): a file written in place
                makes the next search raise :class:`IndexFileChangedError`.
            verify (bool): check the data checksum.
            chunk_bytes (int): search block size in bytes for a mapped index.

        Returns:
            HammingIndex on the CPU.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a regular file or not a valid index; the message names the
                file and the problem.
        """
        return cls.load_with_tables(path, mmap, verify, chunk_bytes)[0]

    @classmethod
    def load_with_tables(
        cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True, chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> tuple["HammingIndex", list | None]:
        """:meth:`load`, also returning the file's multi-index hashing tables read from the same open
        file (``index_file.open_tables``; None in a version-1 file)."""
        path = os.fspath(path)
        chunk_bytes = _check_int(chunk_bytes, "chunk_bytes", 1)
        remove_stale_temporaries(path)
        fh = index_file.open_file(path)
        try:
            header = index_file.read_header(path, fh)
            index = cls(header.nbits)
            index.chunk_bytes = chunk_bytes
            codes, ids = index_file.open_arrays(path, header, mmap, fh)
            tables = index_file.open_tables(path, header, mmap, fh)
            # Recorded before the verify pass reads the map, so a write during it is caught too.
            mapping = _MappedFile(path, fh) if mmap and header.count else None
            if verify:
                index_file.verify(path, codes, ids, header, fh)
            if mapping is not None:
                mapping.check()
                index._state = _State(codes, ids, 0, index.device, path, mapping)
                return index, tables
        except BaseException:
            fh.close()
            raise
        fh.close()
        ids = None if ids is None else torch.from_numpy(ids.astype(np.int64))
        index._state = _State(torch.from_numpy(np.ascontiguousarray(codes)), ids, 0, index.device)
        return index, tables

    # ------------------------------------------------------------------------------------------
    # faiss
    # ------------------------------------------------------------------------------------------

    def to_faiss(self):
        """A faiss binary index holding the same codes.

        Returns ``faiss.IndexBinaryFlat`` when the ids are the positions 0..n-1, otherwise an
        ``IndexBinaryIDMap`` around one. faiss counts dimensions in whole bytes: for nbits not a
        multiple of 8 the faiss index has ``8 * code_size`` dimensions; the padding bits are 0, so
        distances are unchanged. faiss orders equal distances its own way; distances agree exactly.

        Raises:
            ImportError: faiss is not installed.
        """
        faiss = _import_faiss("to_faiss")
        state = self._state
        codes = np.ascontiguousarray(state.codes_tensor().cpu().numpy())
        flat = faiss.IndexBinaryFlat(self.code_size * 8)
        if not state.has_stored_ids():
            flat.add(codes)
            return flat
        mapped = faiss.IndexBinaryIDMap(flat)
        mapped.add_with_ids(codes, state.ids_at(None).cpu().numpy())
        return mapped

    @classmethod
    def from_faiss(cls, index, nbits: int | None = None) -> "HammingIndex":
        """Builds an index from ``faiss.IndexBinaryFlat`` (ids 0..n-1) or an ``IndexBinaryIDMap`` around one.

        Args:
            index: the faiss index.
            nbits (int, optional): bits per code when fewer than the faiss dimension (padding bits
                must then be 0); default ``index.d``.

        Raises:
            ImportError: faiss is not installed.
            TypeError: another kind of faiss index.
        """
        faiss = _import_faiss("from_faiss")
        ids = None
        inner = index
        if isinstance(index, faiss.IndexBinaryIDMap):
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            inner = faiss.downcast_IndexBinary(index.index)
        if not isinstance(inner, faiss.IndexBinaryFlat):
            raise TypeError(
                f"index must be a faiss IndexBinaryFlat or IndexBinaryIDMap of one, got {type(index).__name__}"
            )
        nbits = inner.d if nbits is None else _check_int(nbits, "nbits", 1)
        if (nbits + 7) // 8 != inner.code_size:
            raise ValueError(
                f"nbits={nbits} needs {(nbits + 7) // 8} bytes per code, the faiss index has {inner.code_size}"
            )
        codes = faiss.vector_to_array(inner.xb).reshape(inner.ntotal, inner.code_size)
        out = cls(nbits)
        out.add(torch.from_numpy(codes.copy()), None if ids is None else torch.from_numpy(ids))
        return out


def _import_faiss(what: str):
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            f"HammingIndex.{what} needs faiss, which is not installed: pip install faiss-cpu ({error})"
        ) from error
    return faiss
