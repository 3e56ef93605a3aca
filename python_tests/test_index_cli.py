"""The index command line: build and search round trips (CSV, JSON, .npz from `cibhash encode`) and
its error paths (missing files, wrong dtypes, k too large, corrupt index), each one line and exit code 2."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from cibhash_ext.index import HammingIndex
from cibhash_ext.cli import main


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (40, 3), dtype=np.uint8)
    codes[:, -1] &= 0x0F  # 20-bit codes: padding bits 0
    codes[30] = codes[3]  # a planted tie for query 0
    np.save(tmp_path / "codes.npy", codes)
    np.save(tmp_path / "queries.npy", codes[[3, 7]])
    np.save(tmp_path / "ids.npy", np.arange(40) * 10 + 5)
    return tmp_path, codes


def _build(tmp_path, *extra):
    return main(["index", "build", str(tmp_path / "codes.npy"), "-o", str(tmp_path / "a.idx"), "--nbits", "20", *extra])


def test_build_and_search_csv_and_json(files, capsys):
    tmp_path, codes = files
    assert _build(tmp_path, "--ids", str(tmp_path / "ids.npy")) == 0
    assert "indexed 40 codes of 20 bits" in capsys.readouterr().out
    index = HammingIndex.load(tmp_path / "a.idx")
    assert index.nbits == 20 and np.array_equal(index.codes.numpy(), codes)
    want_d, want_i = index.search(torch.from_numpy(codes[[3, 7]]), 5)
    assert want_i[0, :2].tolist() == [35, 305] and want_d[0, 1] == 0  # the tie, in index order

    assert main(["search", str(tmp_path / "a.idx"), str(tmp_path / "queries.npy"), "-k", "5"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["id"]) for r in rows] == want_i.reshape(-1).tolist()
    assert [int(r["distance"]) for r in rows] == want_d.reshape(-1).tolist()
    assert [(int(r["query"]), int(r["rank"])) for r in rows[4:6]] == [(0, 4), (1, 0)]

    out = tmp_path / "r.json"
    assert main(["search", str(tmp_path / "a.idx"), str(tmp_path / "queries.npy"), "--radius", "6",
                 "--format", "json", "-o", str(out), "--no-mmap"]) == 0
    result = json.loads(out.read_text())
    lims, dist, ids = index.range_search(torch.from_numpy(codes[[3, 7]]), 6)
    assert result["radius"] == 6 and len(result["results"]) == 2
    assert sum((r["ids"] for r in result["results"]), []) == ids.tolist()
    assert sum((r["distances"] for r in result["results"]), []) == dist.tolist()


def test_build_from_an_encode_npz(files, capsys):
    tmp_path, codes = files
    np.savez(tmp_path / "enc.npz", names=np.array(["a"] * 40), codes_20=codes)
    assert main(["index", "build", str(tmp_path / "enc.npz"), "-o", str(tmp_path / "b.idx")]) == 0
    assert HammingIndex.load(tmp_path / "b.idx").nbits == 20  # from the key codes_20
    np.savez(tmp_path / "two.npz", codes_20=codes, codes_24=codes)
    assert main(["index", "build", str(tmp_path / "two.npz"), "-o", str(tmp_path / "c.idx")]) == 2
    assert "choose one with --key" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["index", "build", "{d}/nothing.npy", "-o", "{d}/x.idx"], "codes file '{d}/nothing.npy' does not exist"),
        (["index", "build", "{d}/floats.npy", "-o", "{d}/x.idx"], "must hold packed uint8 codes .* got a float32 array"),
        (["index", "build", "{d}/codes.npy", "-o", "{d}/x.idx", "--nbits", "64"], "--nbits 64 needs 8 bytes per code, the codes have 3"),
        (["index", "build", "{d}/codes.npy", "-o", "{d}/x.idx", "--ids", "{d}/floats.npy"], "must hold 40 integers"),
        (["index", "build", "{d}/codes.npy", "-o", "{d}/x.idx", "--ids", "{d}/dup_ids.npy"], r"ids must be unique, got duplicates \[7\]"),
        (["index", "build", "{d}/codes.npy", "-o", "{d}/x.idx", "--nbits", "17"], "bits set beyond nbits=17"),
        (["index", "build", "{d}/not_numpy.npy", "-o", "{d}/x.idx"], "is not a readable .npy/.npz file"),
        (["index", "build", "-o", "{d}/x.idx"], "give one codes file .or --run RUN_DIR with images., got 0 inputs"),
        (["index", "build", "{d}/codes.npy", "{d}/codes.npy", "-o", "{d}/x.idx"], "got 2 inputs"),
        (["index", "build", "{d}/codes.npy", "-o", "{d}/x.idx", "--split", "query"], "--split needs --run"),
        (["index", "build", "--run", "{d}/norun", "--split", "query", "-o", "{d}/x.idx"], "is not a run directory"),
        (["index", "build", "--run", "{d}", "--key", "codes_8", "-o", "{d}/x.idx"], "with --run choose the code length with --nbits"),
        (["search", "{d}/a.idx", "{d}/queries.npy", "-k", "3", "--names"], r"a.idx.names.json' does not exist .*index build --run"),
        (["search", "{d}/nothing.idx", "{d}/queries.npy", "-k", "3"], "index file '{d}/nothing.idx' does not exist"),
        (["search", "{d}/a.idx", "{d}/nothing.npy", "-k", "3"], "queries file '{d}/nothing.npy' does not exist"),
        (["search", "{d}/a.idx", "{d}/floats.npy", "-k", "3"], "queries file .* must hold packed uint8 codes"),
        (["search", "{d}/a.idx", "{d}/queries.npy", "-k", "41"], "-k must be between 1 and the 40 codes in the index, got 41"),
        (["search", "{d}/a.idx", "{d}/queries.npy", "-k", "0"], "-k must be between 1 and the 40 codes"),
        (["search", "{d}/a.idx", "{d}/queries.npy", "--radius", "-1"], "--radius must be >= 0"),
        (["search", "{d}/a.idx", "{d}/wide.npy", "-k", "3"], "queries have 8 bytes per code, the index 3"),
        (["search", "{d}/codes.npy", "{d}/queries.npy", "-k", "3"], "not a cibhash index file"),
    ],
)
def test_error_paths_print_one_line_and_exit_2(files, capsys, argv, message):
    tmp_path, codes = files
    assert _build(tmp_path) == 0
    np.save(tmp_path / "floats.npy", np.zeros((40, 3), np.float32))
    np.save(tmp_path / "wide.npy", np.zeros((2, 8), np.uint8))
    np.save(tmp_path / "dup_ids.npy", np.r_[np.arange(39), 7])
    (tmp_path / "not_numpy.npy").write_text("hello")
    capsys.readouterr()
    assert main([a.format(d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cibhash {'index build' if argv[0] == 'index' else 'search'}: error: ")
    assert len(err.strip().splitlines()) == 1
    assert re.search(message.format(d=tmp_path), err), err
    assert not (tmp_path / "x.idx").exists()


def test_usage_errors_exit_2(files, capsys):
    tmp_path, _ = files
    with pytest.raises(SystemExit) as info:
        main(["search", str(tmp_path / "a.idx"), str(tmp_path / "queries.npy")])
    assert info.value.code == 2 and "one of the arguments -k --radius is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["index", "build", str(tmp_path / "codes.npy")])
    assert info.value.code == 2 and "--output" in capsys.readouterr().err


def test_runs_as_a_module(files):
    tmp_path, _ = files
    result = subprocess.run([sys.executable, "-m", "cibhash_ext", "search", str(tmp_path / "none.idx"),
                             str(tmp_path / "queries.npy"), "-k", "1"], capture_output=True, text=True)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_cibhash_command_routes_index_build_and_search(tmp_path, capsys):
    from cibhash_ext.cli import main as cibhash

    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (200, 8), dtype=np.uint8)
    np.save(tmp_path / "codes.npy", codes)
    np.save(tmp_path / "queries.npy", codes[:2])
    index_path = str(tmp_path / "db.cbhidx")
    assert cibhash(["index", "build", str(tmp_path / "codes.npy"), "--output", index_path]) == 0
    capsys.readouterr()
    assert cibhash(["search", index_path, str(tmp_path / "queries.npy"), "-k", "1", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    first = out["results"][0]
    assert first["ids"] == [0] and first["distances"] == [0]  # each query was copied from the index
    assert cibhash(["search", index_path, str(tmp_path / "missing.npy"), "-k", "1"]) == 2


def test_build_with_mih_and_search_through_its_tables(files, capsys):
    from cibhash_ext.index_file import read_header
    from cibhash_ext.mih import MIHIndex

    tmp_path, codes = files
    assert _build(tmp_path, "--ids", str(tmp_path / "ids.npy"), "--mih") == 0
    assert re.search(r"indexed 40 codes of 20 bits with \d+ multi-index tables", capsys.readouterr().out)
    assert read_header(str(tmp_path / "a.idx")).tables_offset > 0
    assert len(MIHIndex.load(tmp_path / "a.idx").specs) >= 1
    plain = HammingIndex(20)
    plain.add(torch.from_numpy(codes), torch.from_numpy(np.arange(40) * 10 + 5))
    want_d, want_i = plain.search(torch.from_numpy(codes[[3, 7]]), 5)
    assert main(["search", str(tmp_path / "a.idx"), str(tmp_path / "queries.npy"), "-k", "5"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["id"]) for r in rows] == want_i.reshape(-1).tolist()
    assert [int(r["distance"]) for r in rows] == want_d.reshape(-1).tolist()
    assert main(["search", str(tmp_path / "a.idx"), str(tmp_path / "queries.npy"), "--radius", "5",
                 "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    lims, dist, ids = plain.range_search(torch.from_numpy(codes[[3, 7]]), 5)
    assert sum((r["ids"] for r in result["results"]), []) == ids.tolist()
