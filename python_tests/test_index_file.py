"""The index file format through HammingIndex.save/load: round trips, reading with numpy alone, every
corruption case (each flipped byte, truncation, bad magic, wrong version, wrong nbits, foreign files)
and atomic saving under a failed write, a failed rename and a killed process."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from cibhash_ext import index_file
from cibhash_ext.index import HammingIndex
from cibhash_ext.index_file import MAGIC
from test_index import build

@pytest.mark.parametrize("with_ids", [True, False])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path, with_ids, mmap):
    index, codes, ids = build(20, n=77, seed=6, with_ids=with_ids)
    path = tmp_path / "a.idx"
    index.save(path)
    loaded = HammingIndex.load(path, mmap=mmap)
    assert loaded.is_mmap == mmap and loaded.nbits == 20 and len(loaded) == 77
    assert torch.equal(loaded.codes, codes) and torch.equal(loaded.ids, ids)
    for got, want in zip(loaded.search(codes[:4], 30), index.search(codes[:4], 30)):
        assert torch.equal(got, want)
    for got, want in zip(loaded.range_search(codes[:4], 5), index.range_search(codes[:4], 5)):
        assert torch.equal(got, want)
    assert os.path.getsize(path) == (64 + 77 * 3 + 7) // 8 * 8 + 77 * 8 if with_ids else 64 + 77 * 3


def test_empty_index_round_trip(tmp_path):
    HammingIndex(9).save(tmp_path / "e.idx")
    loaded = HammingIndex.load(tmp_path / "e.idx")
    assert len(loaded) == 0 and loaded.nbits == 9
    lims, d, i = loaded.range_search(torch.zeros(2, 2, dtype=torch.uint8), 3)
    assert lims.tolist() == [0, 0, 0] and d.numel() == 0


def test_file_is_readable_with_numpy_alone(tmp_path):
    """The recipe in the module docstring, written out with numpy and struct only."""
    index, codes, ids = build(20, n=31, seed=8)
    index.save(tmp_path / "a.idx")
    raw = (tmp_path / "a.idx").read_bytes()
    head = np.frombuffer(raw[:64], np.uint8)
    assert raw[:8] == MAGIC and struct.unpack("<I", raw[8:12])[0] == 1
    nbits, code_size = head[16:24].view("<u4")
    count = int(head[24:32].view("<u8")[0])
    ids_offset = int(head[48:56].view("<u8")[0])
    assert (nbits, code_size, count, head[32] & 1) == (20, 3, 31, 1) and ids_offset % 8 == 0
    np.testing.assert_array_equal(np.memmap(tmp_path / "a.idx", np.uint8, "r", offset=64, shape=(count, code_size)), codes.numpy())
    np.testing.assert_array_equal(np.memmap(tmp_path / "a.idx", "<i8", "r", offset=ids_offset, shape=(count,)), ids.numpy())
    data_crc, header_crc = struct.unpack("<II", raw[56:64])
    assert header_crc == zlib.crc32(raw[:60])
    assert data_crc == zlib.crc32(raw[ids_offset:], zlib.crc32(raw[64 : 64 + count * code_size]))


@pytest.fixture
def small_file(tmp_path):
    index, _, _ = build(12, n=5, seed=9)  # 64 + 10 code bytes + 6 padding + 40 id bytes = 120
    path = tmp_path / "small.idx"
    index.save(path)
    assert os.path.getsize(path) == 120
    return path


def test_every_flipped_byte_is_caught(small_file):
    raw = bytearray(small_file.read_bytes())
    for offset in range(len(raw)):
        corrupted = bytearray(raw)
        corrupted[offset] ^= 0x10
        small_file.write_bytes(corrupted)
        with pytest.raises(ValueError, match=f"cannot load index '{small_file}'"):
            HammingIndex.load(small_file)


def _rewrite_header(path, **fields):
    """Changes header fields and recomputes the header checksum (a consistent-looking header)."""
    raw = bytearray(path.read_bytes())
    names = ["magic", "version", "header_size", "nbits", "code_size", "count", "flags", "reserved",
             "codes_offset", "ids_offset", "data_crc", "header_crc"]
    values = dict(zip(names, struct.unpack("<8sIIIIQIIQQII", raw[:64])))
    values.update(fields)
    raw[:64] = struct.pack("<8sIIIIQIIQQII", *(values[n] for n in names))
    raw[60:64] = struct.pack("<I", zlib.crc32(bytes(raw[:60])))
    path.write_bytes(raw)


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: p.write_bytes(b""), "not a cibhash index file"),
        (lambda p: p.write_bytes(p.read_bytes()[:5]), "truncated: the file has 5 bytes"),
        (lambda p: p.write_bytes(p.read_bytes()[:63]), "truncated: the file has 63 bytes"),
        (lambda p: p.write_bytes(p.read_bytes()[:64]), "truncated: 5 codes of 12 bits with ids need 120 bytes, the file has 64"),
        (lambda p: p.write_bytes(p.read_bytes()[:119]), "truncated: .* the file has 119"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\0"), "1 unexpected bytes after the data"),
        (lambda p: p.write_bytes(b"\x93NUMPY" + p.read_bytes()[6:]), r"not a cibhash index file \(starts with b'\\x93NUMPY"),
        (lambda p: _rewrite_header(p, version=3), "format version 3 is not supported"),
        (lambda p: _rewrite_header(p, version=2), "unknown flags 0x1 or reserved field 0 for version 2"),
        (lambda p: p.write_bytes(p.read_bytes()[:16] + b"\x10" + p.read_bytes()[17:]), "header checksum mismatch"),
        (lambda p: _rewrite_header(p, nbits=40), "nbits=40 is inconsistent with 2 bytes per code"),
        (lambda p: _rewrite_header(p, nbits=9), "codes have bits set beyond nbits=9"),
        (lambda p: _rewrite_header(p, flags=3), "unknown flags"),
        (lambda p: _rewrite_header(p, count=6), "truncated: 6 codes of 12 bits with ids need 128 bytes, the file has 120"),
        (lambda p: _rewrite_header(p, count=4), "ids_offset=80, expected 72"),
        (lambda p: _rewrite_header(p, ids_offset=88), "ids_offset=88, expected 80"),
        (lambda p: _rewrite_header(p, count=2**41), r"count=2199023255552 exceeds 2\^40"),
    ],
)
def test_corrupt_files_give_a_clear_error(small_file, corrupt, match):
    corrupt(small_file)
    with pytest.raises(ValueError, match=match) as info:
        HammingIndex.load(small_file)
    assert str(small_file) in str(info.value)


def test_foreign_files_and_missing_file(tmp_path):
    np.save(tmp_path / "codes.npy", np.zeros((4, 8), np.uint8))
    with pytest.raises(ValueError, match="not a cibhash index file"):
        HammingIndex.load(tmp_path / "codes.npy")
    with pytest.raises(FileNotFoundError):
        HammingIndex.load(tmp_path / "nothing.idx")


def test_verify_false_skips_only_the_data_checksum(small_file):
    raw = bytearray(small_file.read_bytes())
    raw[70] ^= 1  # a code byte
    small_file.write_bytes(raw)
    with pytest.raises(ValueError, match="data checksum mismatch"):
        HammingIndex.load(small_file)
    assert len(HammingIndex.load(small_file, verify=False)) == 5  # documented: no data pass
    raw[20] ^= 1  # a header byte is always checked
    small_file.write_bytes(raw)
    with pytest.raises(ValueError, match="header checksum mismatch"):
        HammingIndex.load(small_file, verify=False)


def _assert_old_file_intact(path, old_bytes):
    assert path.read_bytes() == old_bytes
    assert len(HammingIndex.load(path)) == 5
    assert sorted(os.listdir(path.parent)) == [path.name], "no temporary file may be left behind"


def test_save_is_atomic_when_a_write_fails_midway(small_file, monkeypatch):
    old = small_file.read_bytes()
    index, _, _ = build(12, n=300, seed=1)
    calls = []

    def failing_write(fh, data):
        calls.append(len(data))
        if len(calls) == 2:  # the first code block: write half of it, then the disk "fails"
            fh.write(bytes(memoryview(data)[: len(data) // 2]))
            raise OSError(28, "No space left on device")
        fh.write(data)

    monkeypatch.setattr(index_file, "_write_all", failing_write)
    with pytest.raises(OSError, match="No space left"):
        index.save(small_file)
    assert len(calls) == 2
    _assert_old_file_intact(small_file, old)


def test_save_is_atomic_when_the_rename_fails(small_file, monkeypatch):
    old = small_file.read_bytes()
    index, _, _ = build(12, n=300, seed=1)

    def failing_replace(src, dst):
        assert os.path.getsize(src) > 300  # the new file was fully written first
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="before the rename"):
        index.save(small_file)
    _assert_old_file_intact(small_file, old)


def _killed_during_save(path: str) -> None:
    index, _, _ = build(12, n=300, seed=1)

    def dying_write(fh, data):
        fh.write(data)
        fh.flush()
        os._exit(0)  # the process dies with the temporary file half written

    index_file._write_all = dying_write
    index.save(path)
    os._exit(1)


def test_save_leaves_the_old_file_when_the_process_is_killed(small_file):
    old = small_file.read_bytes()
    child = multiprocessing.get_context("fork").Process(target=_killed_during_save, args=(str(small_file),))
    child.start()
    child.join(30)
    assert child.exitcode == 0, "the child must die inside the save"
    assert small_file.read_bytes() == old
    stray = [n for n in os.listdir(small_file.parent) if n != small_file.name]
    assert len(stray) == 1 and stray[0].startswith(f".small.idx.{child.pid}.") and stray[0].endswith(".tmp")
    # The next load of the same file removes what the dead writer left (a live writer's file stays).
    live = small_file.parent / f".small.idx.{os.getpid()}.x.tmp"
    live.write_bytes(b"")
    assert len(HammingIndex.load(small_file)) == 5
    assert sorted(os.listdir(small_file.parent)) == sorted([small_file.name, live.name])


def test_save_overwrites_an_index_that_is_mapped(tmp_path):
    index, codes, _ = build(16, n=40, seed=2)
    path = tmp_path / "a.idx"
    index.save(path)
    mapped = HammingIndex.load(path)
    mapped.save(path)  # reads from the old mapping while writing the new file
    assert torch.equal(HammingIndex.load(path, mmap=False).codes, codes)
    with pytest.raises(RuntimeError, match="memory-mapped read-only"):
        mapped.add(codes[:1])
    with pytest.raises(RuntimeError, match="memory-mapped read-only"):
        mapped.remove_ids(torch.tensor([0]))


# ----------------------------------------------------------------------------------------------
# A mapped file that changes under the map; files that are not regular files
# ----------------------------------------------------------------------------------------------

_LONG_AGO_NS = 1_000_000_000 * 1_000_000_000  # 2001: the index was built long before it is overwritten


def _saved_pair(tmp_path, n=300):
    """Two indexes of the same size with different codes, saved to a.idx and b.idx (same file size)."""
    a, codes_a, _ = build(32, n=n, seed=11)
    b, _, _ = build(32, n=n, seed=12)
    a.save(tmp_path / "a.idx")
    b.save(tmp_path / "b.idx")
    # File times are kept at a clock tick of a few ms; an index built in the same tick as the
    # overwrite below would not show a new mtime, which no real index exchange does.
    os.utime(tmp_path / "a.idx", ns=(_LONG_AGO_NS, _LONG_AGO_NS))
    assert os.path.getsize(tmp_path / "a.idx") == os.path.getsize(tmp_path / "b.idx")
    return tmp_path / "a.idx", tmp_path / "b.idx", codes_a


def test_mapped_index_overwritten_in_place_is_detected(tmp_path):
    path, other, codes = _saved_pair(tmp_path)
    mapped = HammingIndex.load(path, chunk_bytes=1000)
    part = mapped.slice(10, 200)
    before = mapped.search(codes[:3], 5)
    shutil.copyfile(other, path)  # `cp b.idx a.idx`: the same inode, the same size, other codes
    changed = r"a.idx' was written in place after it was memory-mapped \(same size"
    for call in (lambda: mapped.search(codes[:3], 5), lambda: mapped.range_search(codes[:3], 4),
                 lambda: mapped.ids, lambda: mapped.codes, lambda: part.search(codes[:3], 5),
                 lambda: mapped.save(tmp_path / "copy.idx")):
        with pytest.raises(RuntimeError, match=changed) as e:
            call()
        assert type(e.value).__name__ == "IndexFileChangedError"
    assert not (tmp_path / "copy.idx").exists()
    # Loading it again gives the new index.
    again = HammingIndex.load(path)
    assert not torch.equal(again.search(codes[:3], 5)[1], before[1])


def test_mapped_index_replaced_by_rename_keeps_searching_what_it_loaded(tmp_path):
    path, other, codes = _saved_pair(tmp_path)
    mapped = HammingIndex.load(path)
    before = mapped.search(codes[:3], 5)
    HammingIndex.load(other, mmap=False).save(path)  # save replaces by rename
    after = mapped.search(codes[:3], 5)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])


_TRUNCATE_AND_SEARCH = """
import os, sys, torch
from cibhash_ext.index import HammingIndex
path = sys.argv[1]
mapped = HammingIndex.load(path)
queries = mapped.codes[:2].clone()
os.truncate(path, 4096)  # the codes now lie past the end of the file: reading them is a SIGBUS
try:
    mapped.search(queries, 3)
except RuntimeError as error:
    print("refused:", error)
"""


def test_truncated_mapped_index_raises_instead_of_sigbus(tmp_path):
    index, _, _ = build(64, n=40_000, seed=4)  # 320 kB of codes, so whole pages lie past 4096 bytes
    index.save(tmp_path / "big.idx")
    size = os.path.getsize(tmp_path / "big.idx")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    # In a child process: if the check failed, the SIGBUS would kill the test run.
    child = subprocess.run([sys.executable, "-c", _TRUNCATE_AND_SEARCH, str(tmp_path / "big.idx")],
                           capture_output=True, text=True, timeout=300, env=env)
    assert child.returncode == 0, f"the search died with {child.returncode}: {child.stderr[-2000:]}"
    assert "refused:" in child.stdout and "written in place" in child.stdout
    assert f"size {size} -> 4096 bytes" in child.stdout


@contextlib.contextmanager
def _fails_after(seconds):
    """Turns a call that would block forever into a TimeoutError."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("mmap", [True, False])
def test_a_fifo_or_other_non_regular_file_is_refused_at_once(tmp_path, mmap):
    fifo = tmp_path / "pipe.idx"
    os.mkfifo(fifo)
    with _fails_after(10):
        with pytest.raises(ValueError, match=r"pipe.idx': it is a FIFO, not a regular file"):
            HammingIndex.load(fifo, mmap=mmap)
        with pytest.raises(ValueError, match="it is a directory, not a regular file"):
            HammingIndex.load(tmp_path, mmap=mmap)
        with pytest.raises(ValueError, match="it is a character device, not a regular file"):
            HammingIndex.load(os.devnull, mmap=mmap)
