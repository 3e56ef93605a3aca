"""The index file format: header packing and checks, atomic writing, mapping and verification.

File format, version 1 (all integers little-endian; offsets in bytes from the start of the file)::

    offset size  field
    0      8     magic          b"CIBHIDX\\0"
    8      4     version        uint32, 1
    12     4     header_size    uint32, 64
    16     4     nbits          uint32, bits per code, >= 1
    20     4     code_size      uint32, bytes per code = ceil(nbits / 8)
    24     8     count          uint64, number of codes
    32     4     flags          uint32, bit 0: has_ids (an ids array follows the codes)
    36     4     reserved       uint32, 0
    40     8     codes_offset   uint64, 64
    48     8     ids_offset     uint64, codes_offset + count * code_size rounded up to 8; 0 without ids
    56     4     data_crc32     uint32, zlib.crc32 of the codes bytes followed by the ids bytes
    60     4     header_crc32   uint32, zlib.crc32 of bytes 0..59
    64     ...   codes          uint8 [count, code_size], FAISS layout (bit j is bit j % 8 of byte j // 8,
                                padding bits 0)
    ...    ...   zero padding to ids_offset, then ids int64 [count] (only with has_ids)

The file ends right after the last array. Without has_ids the ids are the positions 0..count-1.
count is at most 2^40 (searches merge (distance, position) in one int64). A reader rejects any other
version; a later version bumps ``version`` and may change everything after byte 12.

Version 2 (written by ``MIHIndex``; plain indexes are still written as version 1, which this library
keeps reading) is version 1 plus the multi-index hashing tables: ``version`` is 2, flags bit 1
(has_tables) is set, the ``reserved`` field holds ``tables_crc32`` (zlib.crc32 of the whole tables
section), and the tables section follows the last array at ``tables_offset`` = its end rounded up
to 8. The data checksum still covers the codes and ids only. The section::

    offset size  field (from tables_offset)
    0      8     magic          b"CIBHMIH\0"
    8      4     m              uint32, number of tables
    12     4     reserved       uint32, 0
    16     8     section_size   uint64, bytes from tables_offset to the end of the file
    24     12m   layout         uint32 (bit_start, bit_count, dir_bits) per table, then zero padding to 8
    ...          arrays         per table: dir int32 [2^dir_bits + 1], low int32 [count if dir_bits <
                                bit_count else 0], pos int32 [count], each starting 8-aligned (zero padding)

Table i lists the positions sorted by (key, position), key = bits [bit_start, bit_start + bit_count)
of the code; ``dir[b]:dir[b + 1]`` are the entries whose key's top dir_bits bits are b, and ``low``
holds each entry's remaining low bits (see ``csrc/ops/cpu/mih_kernel.h``).
Reading it with numpy alone::

    head = np.fromfile(path, dtype=np.uint8, count=64)
    nbits, code_size = head[16:24].view("<u4"); count = int(head[24:32].view("<u8")[0])
    codes = np.memmap(path, np.uint8, "r", offset=64, shape=(count, code_size))
    ids_offset = int(head[48:56].view("<u8")[0])
    ids = np.memmap(path, "<i8", "r", offset=ids_offset, shape=(count,)) if head[32] & 1 else np.arange(count)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import struct
import zlib
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from cibhash_ext.files import atomic_write

__all__ = [
    "MAGIC", "FORMAT_VERSION", "TABLES_VERSION", "HEADER_SIZE", "MAX_CODES", "Header", "TableSpec",
    "padding_mask", "write", "open_file", "read_header", "open_arrays", "open_tables", "table_section", "verify",
]

MAGIC = b"CIBHIDX\0"
FORMAT_VERSION = 1
TABLES_VERSION = 2
_HEADER = struct.Struct("<8sIIIIQIIQQII")
HEADER_SIZE = _HEADER.size  # 64
_FLAG_HAS_IDS = 1
_FLAG_HAS_TABLES = 2
TABLES_MAGIC = b"CIBHMIH\0"
_TABLES_HEAD = struct.Struct("<8sIIQ")
MAX_NBITS = 1 << 20
MAX_CODES = 1 << 40  # searches merge (distance, position) in one int64 with 40 position bits
_IO_BLOCK = 16 << 20


@dataclasses.dataclass(frozen=True)
class Header:
    """The checked header of an index file."""

    nbits: int
    code_size: int
    count: int
    has_ids: bool
    ids_offset: int
    data_crc: int
    tables_offset: int = 0  # 0: no tables section
    tables_size: int = 0
    tables_crc: int = 0


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """One multi-index hashing table: its substring of the code and its directory size."""

    bit_start: int
    bit_count: int
    dir_bits: int


def _align8(n: int) -> int:
    return (n + 7) // 8 * 8


def _data_end(count: int, code_size: int, has_ids: bool) -> int:
    return _ids_offset(count, code_size, has_ids) + 8 * count if has_ids else HEADER_SIZE + count * code_size


def _table_layout(specs: list[TableSpec], count: int) -> tuple[list[tuple[int, int, int]], int]:
    """Offsets from the section start of each table's (dir, low, pos) arrays, and the section size."""
    at = _align8(_TABLES_HEAD.size + 12 * len(specs))
    offsets = []
    for spec in specs:
        dir_at = at
        low_at = _align8(dir_at + 4 * ((1 << spec.dir_bits) + 1))
        low_len = count if spec.dir_bits < spec.bit_count else 0
        pos_at = _align8(low_at + 4 * low_len)
        at = _align8(pos_at + 4 * count)
        offsets.append((dir_at, low_at, pos_at))
    return offsets, at


def table_section(specs: list[TableSpec], count: int, arrays: list[tuple]) -> Iterator[bytes]:
    """The tables section as byte blocks, for :func:`write`: ``arrays`` holds (dir, low, pos) int32
    numpy arrays per table, in the order of ``specs``."""
    offsets, size = _table_layout(specs, count)
    head = _TABLES_HEAD.pack(TABLES_MAGIC, len(specs), 0, size)
    head += b"".join(struct.pack("<III", s.bit_start, s.bit_count, s.dir_bits) for s in specs)
    at = len(head)
    yield head
    for (dir_at, low_at, pos_at), triple in zip(offsets, arrays):
        for offset, array in zip((dir_at, low_at, pos_at), triple):
            if offset > at:
                yield bytes(offset - at)
                at = offset
            data = np.ascontiguousarray(array, dtype="<i4").view(np.uint8).reshape(-1)
            for start in range(0, data.size, _IO_BLOCK):
                yield memoryview(data[start : start + _IO_BLOCK])
            at += data.size
    if size > at:
        yield bytes(size - at)


def padding_mask(nbits: int) -> int:
    """Bits of the last byte of a code that lie beyond nbits (they must be 0)."""
    return 0 if nbits % 8 == 0 else (0xFF << (nbits % 8)) & 0xFF


def _ids_offset(count: int, code_size: int, has_ids: bool) -> int:
    return (HEADER_SIZE + count * code_size + 7) // 8 * 8 if has_ids else 0


def write(
    path: str, nbits: int, count: int, code_blocks: Iterable, id_blocks: Iterable | None,
    table_blocks: Iterable | None = None,
) -> None:
    """Writes an index file atomically.

    The data go to a temporary file in the same directory, which is flushed, fsync'ed and renamed
    over ``path`` (``os.replace``); the directory is fsync'ed last (:func:`cibhash_ext.files.atomic_write`).
    A failure or crash at any point leaves an existing ``path`` untouched. After an exception the
    temporary file is removed; one left by a hard kill is removed by the next save or load of ``path``.

    Args:
        path (str): destination.
        nbits (int): bits per code.
        count (int): number of codes.
        code_blocks (iterable of buffers): the codes, uint8 rows in order, count * ceil(nbits/8) bytes.
        id_blocks (iterable of buffers, optional): the ids as little-endian int64, or None.
        table_blocks (iterable of buffers, optional): a tables section (:func:`table_section`); the
            file is then format version 2.
    """
    code_size = (nbits + 7) // 8
    codes_end = HEADER_SIZE + count * code_size
    ids_offset = _ids_offset(count, code_size, id_blocks is not None)
    with atomic_write(path) as fh:
        _write_all(fh, bytes(HEADER_SIZE))
        crc = 0
        for block in code_blocks:
            _write_all(fh, block)
            crc = zlib.crc32(block, crc)
        if id_blocks is not None:
            _write_all(fh, bytes(ids_offset - codes_end))
            for block in id_blocks:
                _write_all(fh, block)
                crc = zlib.crc32(block, crc)
        tables_crc = None
        if table_blocks is not None:
            end = _data_end(count, code_size, id_blocks is not None)
            _write_all(fh, bytes(_align8(end) - end))
            tables_crc = 0
            for block in table_blocks:
                _write_all(fh, block)
                tables_crc = zlib.crc32(block, tables_crc)
        fh.seek(0)
        _write_all(fh, _pack_header(nbits, count, id_blocks is not None, ids_offset, crc, tables_crc))


def open_file(path: str) -> BinaryIO:
    """Opens ``path`` for reading without ever blocking, and only if it is a regular file.

    A FIFO would block the open (and the reads) forever, and a device or directory has no fixed
    size to check the header against, so they are refused. The header, the arrays and the map of
    one load all come from this one open file, so they describe the same file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file; the message names the file and what it is.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISDIR: "a directory", stat.S_ISCHR: "a character device",
                     stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}
            kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
            raise ValueError(f"cannot load index {path!r}: it is {kind}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_header(path: str, fh: BinaryIO | None = None) -> Header:
    """Reads and checks the header of ``path`` (read from ``fh``, its :func:`open_file`, if given)
    against the file's size.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file, bad magic, unsupported version, header checksum mismatch,
            inconsistent fields, truncated or overlong file; the message names the file.
    """
    if fh is None:
        with open_file(path) as opened:
            return read_header(path, opened)
    size = os.fstat(fh.fileno()).st_size
    fh.seek(0)
    head = fh.read(HEADER_SIZE)
    header = _parse_header(head, size, path)
    if not header.tables_offset:
        return header
    fh.seek(header.tables_offset)
    magic, m, reserved, section_size = _TABLES_HEAD.unpack(fh.read(_TABLES_HEAD.size).ljust(_TABLES_HEAD.size, b"\0"))
    if magic != TABLES_MAGIC or reserved or not 1 <= m <= MAX_NBITS:
        raise ValueError(f"cannot load index {path!r}: the tables section is not valid (magic {magic!r}, m={m})")
    expected = header.tables_offset + section_size
    if size != expected:
        raise ValueError(f"cannot load index {path!r}: the tables section says the file has {expected} bytes, it has {size}")
    return dataclasses.replace(header, tables_size=section_size)


def open_arrays(
    path: str, header: Header, mmap: bool, fh: BinaryIO | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The codes uint8 [count, code_size] and ids int64 [count] (None without ids) of a checked file,
    memory-mapped read-only (np.memmap) or read into memory, from ``fh`` (its :func:`open_file`) if
    given."""
    count, code_size = header.count, header.code_size
    if count == 0:
        return np.zeros((0, code_size), np.uint8), (np.zeros(0, np.int64) if header.has_ids else None)
    if fh is None:
        with open_file(path) as opened:
            return open_arrays(path, header, mmap, opened)
    if mmap:
        codes = np.memmap(fh, np.uint8, "r", offset=HEADER_SIZE, shape=(count, code_size))
        ids = np.memmap(fh, "<i8", "r", offset=header.ids_offset, shape=(count,)) if header.has_ids else None
        return codes, ids
    fh.seek(HEADER_SIZE)
    codes = np.fromfile(fh, np.uint8, count * code_size).reshape(count, code_size)
    ids = None
    if header.has_ids:
        fh.seek(header.ids_offset)
        ids = np.fromfile(fh, "<i8", count)
    return codes, ids


def _write_all(fh, data) -> None:
    """Writes one block (a seam the atomic-save tests use to fail a write midway)."""
    fh.write(data)


def _pack_header(nbits: int, count: int, has_ids: bool, ids_offset: int, data_crc: int,
                 tables_crc: int | None = None) -> bytes:
    flags = (_FLAG_HAS_IDS if has_ids else 0) | (_FLAG_HAS_TABLES if tables_crc is not None else 0)
    version = FORMAT_VERSION if tables_crc is None else TABLES_VERSION
    fields = (MAGIC, version, HEADER_SIZE, nbits, (nbits + 7) // 8, count,
              flags, tables_crc or 0, HEADER_SIZE, ids_offset, data_crc, 0)
    head = _HEADER.pack(*fields)
    return head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))


def _parse_header(head: bytes, size: int, path: str) -> Header:
    def fail(what: str) -> ValueError:
        return ValueError(f"cannot load index {path!r}: {what}")

    if head[:8] != MAGIC[: len(head[:8])] or not head:
        raise fail(f"not a cibhash index file (starts with {head[:8]!r}, expected magic {MAGIC!r})")
    if len(head) < HEADER_SIZE:
        raise fail(f"truncated: the file has {size} bytes, the header alone needs {HEADER_SIZE}")
    (_, version, header_size, nbits, code_size, count, flags, reserved, codes_offset, ids_offset, data_crc,
     header_crc) = _HEADER.unpack(head)
    if version not in (FORMAT_VERSION, TABLES_VERSION):
        raise fail(f"format version {version} is not supported (this library reads versions {FORMAT_VERSION} "
                   f"and {TABLES_VERSION})")
    if zlib.crc32(head[:-4]) != header_crc:
        raise fail("header checksum mismatch: the header is corrupted")
    has_ids = bool(flags & _FLAG_HAS_IDS)
    codes_end = HEADER_SIZE + count * code_size
    expected_ids_offset = _ids_offset(count, code_size, has_ids)
    problems = []
    if header_size != HEADER_SIZE or codes_offset != HEADER_SIZE:
        problems.append(f"header_size={header_size}, codes_offset={codes_offset} (expected {HEADER_SIZE})")
    if not 1 <= nbits <= MAX_NBITS or code_size != (nbits + 7) // 8:
        problems.append(f"nbits={nbits} is inconsistent with {code_size} bytes per code")
    has_tables = version == TABLES_VERSION
    known = _FLAG_HAS_IDS | (_FLAG_HAS_TABLES if has_tables else 0)
    if flags & ~known or (reserved and not has_tables) or (has_tables and not flags & _FLAG_HAS_TABLES):
        problems.append(f"unknown flags {flags:#x} or reserved field {reserved} for version {version}")
    if count > MAX_CODES:
        problems.append(f"count={count} exceeds 2^40")
    if ids_offset != expected_ids_offset:
        problems.append(f"ids_offset={ids_offset}, expected {expected_ids_offset}")
    if problems:
        raise fail("inconsistent header: " + "; ".join(problems))
    expected = ids_offset + 8 * count if has_ids else codes_end
    what = f"{count} codes of {nbits} bits" + (" with ids" if has_ids else "")
    if has_tables:
        tables_offset = _align8(expected)
        if size < tables_offset + _TABLES_HEAD.size:
            raise fail(f"truncated: {what} and tables need more than {tables_offset + _TABLES_HEAD.size} bytes, "
                       f"the file has {size}")
        return Header(nbits, code_size, count, has_ids, ids_offset, data_crc, tables_offset, 0, reserved)
    if size < expected:
        raise fail(f"truncated: {what} need {expected} bytes, the file has {size}")
    if size > expected:
        raise fail(f"{size - expected} unexpected bytes after the data ({what} need {expected} bytes)")
    return Header(nbits, code_size, count, has_ids, ids_offset, data_crc)


def verify(path: str, codes: np.ndarray, ids: np.ndarray | None, header: Header, fh: BinaryIO | None = None) -> None:
    """Streams the codes and ids through zlib.crc32 against the header, and checks the padding
    bits and the alignment padding (read from ``fh``, the :func:`open_file` of ``path``, if given)
    are 0. Raises ValueError naming the file otherwise."""
    crc = 0
    mask = padding_mask(header.nbits)
    rows = max(1, _IO_BLOCK // header.code_size)
    padding_ok = True
    for start in range(0, codes.shape[0], rows):
        block = codes[start : start + rows]
        crc = zlib.crc32(memoryview(np.ascontiguousarray(block).reshape(-1)), crc)
        if mask and np.any(block[:, -1] & mask):
            padding_ok = False
    if ids is not None:
        codes_end = HEADER_SIZE + codes.shape[0] * header.code_size
        with contextlib.nullcontext(fh) if fh is not None else open_file(path) as opened:
            opened.seek(codes_end)
            if any(opened.read(header.ids_offset - codes_end)):
                raise ValueError(f"cannot load index {path!r}: the alignment padding before the ids is not zero")
        for start in range(0, ids.shape[0], _IO_BLOCK // 8):
            crc = zlib.crc32(memoryview(np.ascontiguousarray(ids[start : start + _IO_BLOCK // 8]).view(np.uint8)), crc)
    if crc != header.data_crc:
        raise ValueError(f"cannot load index {path!r}: data checksum mismatch (stored {header.data_crc:#010x}, "
                         f"computed {crc:#010x}): the codes or ids are corrupted")
    if header.tables_offset:
        with contextlib.nullcontext(fh) if fh is not None else open_file(path) as opened:
            opened.seek(header.tables_offset)
            tables_crc, left = 0, header.tables_size
            while left > 0:
                block = opened.read(min(left, _IO_BLOCK))
                if not block:
                    break
                tables_crc = zlib.crc32(block, tables_crc)
                left -= len(block)
        if tables_crc != header.tables_crc:
            raise ValueError(f"cannot load index {path!r}: tables checksum mismatch (stored {header.tables_crc:#010x}, "
                             f"computed {tables_crc:#010x}): the search tables are corrupted")
    if not padding_ok:
        raise ValueError(f"cannot load index {path!r}: codes have bits set beyond nbits={header.nbits}")


def open_tables(path: str, header: Header, mmap: bool, fh: BinaryIO) -> list[tuple[TableSpec, tuple]] | None:
    """The tables of a checked version-2 file as (spec, (dir, low, pos)) per table, int32 numpy arrays
    memory-mapped read-only or read into memory from ``fh`` (its :func:`open_file`); None without tables.

    Raises:
        ValueError: a table layout that does not fit the codes or the section (names the file).
    """
    if not header.tables_offset:
        return None
    fh.seek(header.tables_offset)
    _, m, _, size = _TABLES_HEAD.unpack(fh.read(_TABLES_HEAD.size))
    raw = fh.read(12 * m)
    specs = [TableSpec(*struct.unpack_from("<III", raw, 12 * i)) for i in range(m)] if len(raw) == 12 * m else []
    nbits = header.nbits
    bad = [s for s in specs if not (1 <= s.dir_bits <= s.bit_count <= 32 and s.bit_start + s.bit_count <= 8 * header.code_size
                                    and s.dir_bits <= 30)]
    if len(specs) != m or bad or _table_layout(specs, header.count)[1] != size:
        raise ValueError(f"cannot load index {path!r}: the tables section does not fit {header.count} codes of {nbits} bits")
    tables = []
    for spec, offsets in zip(specs, _table_layout(specs, header.count)[0]):
        lengths = ((1 << spec.dir_bits) + 1, header.count if spec.dir_bits < spec.bit_count else 0, header.count)
        arrays = []
        for offset, length in zip(offsets, lengths):
            at = header.tables_offset + offset
            if length == 0:
                arrays.append(np.zeros(0, np.int32))
            elif mmap:
                arrays.append(np.memmap(fh, "<i4", "r", offset=at, shape=(length,)))
            else:
                fh.seek(at)
                arrays.append(np.fromfile(fh, "<i4", length))
        tables.append((spec, tuple(arrays)))
    return tables
