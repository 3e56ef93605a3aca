"""``cibhash index build`` (a codes file, or a trained run + images -> an index file) and
``cibhash search`` (index + query codes -> top-k or radius results as CSV or JSON)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys

import numpy as np

from cibhash_ext.cli.common import set_threads
from cibhash_ext.files import read_array, read_json, write_text

__all__ = ["add_commands", "NAMES_SUFFIX"]

NAMES_SUFFIX = ".names.json"  # beside an index built from images: {"ids": [...], "names": [...]}


def add_commands(subparsers) -> None:
    """Registers ``index build`` and ``search`` on an ``add_subparsers()`` object."""
    index = subparsers.add_parser("index", help="build a Hamming index file from codes",
                                  description="Manage Hamming index files (format: cibhash_ext.index).")
    index_sub = index.add_subparsers(dest="index_command", metavar="ACTION")
    index_sub.required = True
    build = index_sub.add_parser(
        "build", help="build an index file from a codes file, or from a trained run and images",
        description="Build an index from packed uint8 codes: a .npy array [n, ceil(nbits/8)], or a .npz "
        "written by `cibhash encode` (array codes_<L>, chosen with --key when there are several). With --run, "
        "the inputs are image files or folders (or --split of the run's dataset), encoded by the run's model; "
        f"their names are written beside the index (INDEX{NAMES_SUFFIX}) for `search --names`.")
    build.add_argument("inputs", nargs="*", metavar="INPUT",
                       help="codes file (.npy, or .npz with --key); with --run: image files or folders")
    build.add_argument("--output", "-o", required=True, help="index file to write (replaced atomically)")
    build.add_argument("--ids", help=".npy of integer ids, one per code (default: 0..n-1)")
    build.add_argument("--nbits", type=int, help="bits per code (default: from the .npz key, else 8 x bytes per "
                       "code); with --run: which of the run's code lengths (default: the longest)")
    build.add_argument("--key", help="array name inside a .npz file, e.g. codes_64")
    build.add_argument("--run", metavar="RUN_DIR", help="a run directory of `cibhash train`: encode images with its model")
    build.add_argument("--split", choices=("query", "database", "train"),
                       help="with --run: index this split of the run's dataset instead of image files")
    build.add_argument("--batch-size", type=int, default=512, help="with --run: images per forward pass")
    build.add_argument("--threads", type=int, help="torch intra-op threads")
    build.add_argument("--mih", action="store_true", help="build an MIHIndex (multi-index hashing tables saved with "
                       "the codes): the same results, sub-linear search on clustered codes; `search` uses the tables")
    build.add_argument("--no-progress", action="store_true", help="with --run: no progress bar")
    build.set_defaults(handler=_cmd_build, command_name="index build")

    search = subparsers.add_parser(
        "search", help="search an index with query codes",
        description="Search an index file with packed uint8 query codes; writes one row per result "
        "(query, rank, id, distance) as CSV, or JSON. Equal distances are ordered by position in the index.")
    search.add_argument("index", help="index file written by `index build`")
    search.add_argument("queries", help="query codes file (.npy, or .npz with --key)")
    mode = search.add_mutually_exclusive_group(required=True)
    mode.add_argument("-k", type=int, help="number of nearest neighbours per query")
    mode.add_argument("--radius", type=int, help="return every code within this Hamming distance instead")
    search.add_argument("--key", help="array name inside a .npz queries file")
    search.add_argument("--format", choices=("csv", "json"), default="csv")
    search.add_argument("--output", "-o", help="output file (default: standard output)")
    search.add_argument("--no-mmap", action="store_true", help="read the index into memory instead of mapping it")
    search.add_argument("--no-verify", action="store_true", help="skip the data checksum when loading (huge files)")
    search.add_argument("--names", action="store_true",
                        help=f"add each result's image name, from the INDEX{NAMES_SUFFIX} file `index build --run` wrote")
    search.add_argument("--threads", type=int, help="torch intra-op threads")
    search.set_defaults(handler=_cmd_search, command_name="search")


def _load_codes(path: str, key: str | None, what: str) -> tuple[np.ndarray, int | None]:
    """Reads a 2-D uint8 array from .npy/.npz; returns it and the bit length a codes_<L> key implies."""
    data = read_array(path, what)
    nbits = None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            names = [n for n in data.files if n.startswith("codes")] if key is None else [key]
            if key is not None and key not in data.files:
                raise ValueError(f"{what} file {path!r} has no array {key!r}; it has {', '.join(data.files)}")
            if len(names) != 1:
                raise ValueError(f"{what} file {path!r} holds arrays {', '.join(data.files)}: choose one with --key")
            match = re.fullmatch(r"codes_(\d+)", names[0])
            nbits = int(match.group(1)) if match else None
            data = data[names[0]]
    if data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{what} file {path!r} must hold packed uint8 codes [n, bytes per code], "
                         f"got a {data.dtype} array of shape {data.shape}")
    return data, nbits


def _load_ids(path: str, count: int) -> np.ndarray:
    ids = read_array(path, "ids")
    if not isinstance(ids, np.ndarray) or not np.issubdtype(ids.dtype, np.integer) or ids.shape != (count,):
        got = f"a {ids.dtype} array of shape {ids.shape}" if isinstance(ids, np.ndarray) else "an .npz archive"
        raise ValueError(f"ids file {path!r} must hold {count} integers (one per code), got {got}")
    if ids.dtype == np.uint64 and count and int(ids.max()) >= 2**63:
        raise ValueError(f"ids file {path!r}: ids must fit int64 (below 2^63), got {int(ids.max())}")
    return ids.astype(np.int64)


def _encode_for_index(args: argparse.Namespace) -> tuple[np.ndarray, int, list[str]]:
    """Codes of the chosen length, the length, and the image names, from a run and images or a split."""
    from cibhash_ext.encode import encode_run
    from cibhash_ext.run_dir import load_run_config

    lengths = load_run_config(args.run).code_lengths
    nbits = max(lengths) if args.nbits is None else args.nbits
    if nbits not in lengths:
        raise ValueError(f"--nbits {nbits} is not a code length of the run in {args.run}: it has {list(lengths)}")
    names, codes = encode_run(args.run, args.inputs, args.split, args.batch_size, show_progress=not args.no_progress)
    return codes[nbits].numpy(), nbits, names


def _cmd_build(args: argparse.Namespace) -> int:
    from cibhash_ext.index import HammingIndex
    from cibhash_ext.mih import MIHIndex

    set_threads(args.threads)
    if args.nbits is not None and args.nbits < 1:
        raise ValueError(f"--nbits must be >= 1, got {args.nbits}")
    names = None
    if args.run:
        if args.key:
            raise ValueError("--key selects an array of a codes file; with --run choose the code length with --nbits")
        codes, nbits, names = _encode_for_index(args)
    else:
        if args.split:
            raise ValueError("--split needs --run, the run whose dataset and model to use")
        if len(args.inputs) != 1:
            raise ValueError(f"give one codes file (or --run RUN_DIR with images), got {len(args.inputs)} inputs")
        codes, key_bits = _load_codes(args.inputs[0], args.key, "codes")
        nbits = args.nbits if args.nbits is not None else key_bits or 8 * codes.shape[1]
        if (nbits + 7) // 8 != codes.shape[1]:
            raise ValueError(f"--nbits {nbits} needs {(nbits + 7) // 8} bytes per code, the codes have {codes.shape[1]}")
    ids = _load_ids(args.ids, codes.shape[0]) if args.ids else None
    index = MIHIndex(nbits) if args.mih else HammingIndex(nbits)
    index.add(codes, ids)
    index.save(args.output)
    if names is not None:
        write_text(args.output + NAMES_SUFFIX, json.dumps({"ids": index.ids.numpy().tolist(), "names": names}))
    tables = f" with {len(index.specs)} multi-index tables" if args.mih else ""
    print(f"indexed {len(index)} codes of {nbits} bits{tables} -> {args.output}")
    return 0


def _names_of(index_path: str) -> dict[int, str]:
    path = index_path + NAMES_SUFFIX
    if not os.path.exists(path):
        raise FileNotFoundError(f"--names: {path!r} does not exist (it is written by `index build --run`)")
    table = read_json(path, "--names: the names file")
    if (not isinstance(table, dict) or not isinstance(table.get("ids"), list) or not isinstance(table.get("names"), list)
            or len(table["ids"]) != len(table["names"])):
        raise ValueError(f"--names: {path!r} must hold an object with equally long lists 'ids' and 'names'")
    return dict(zip(table["ids"], table["names"]))


def _cmd_search(args: argparse.Namespace) -> int:
    from cibhash_ext.index import HammingIndex
    from cibhash_ext.index_file import read_header
    from cibhash_ext.mih import MIHIndex

    set_threads(args.threads)
    if not os.path.exists(args.index):
        raise FileNotFoundError(f"index file {args.index!r} does not exist")
    # A file built with --mih holds its tables: search through them.
    kind = MIHIndex if read_header(args.index).tables_offset else HammingIndex
    index = kind.load(args.index, mmap=not args.no_mmap, verify=not args.no_verify)
    queries, _ = _load_codes(args.queries, args.key, "queries")
    if queries.shape[1] != index.code_size:
        raise ValueError(
            f"queries have {queries.shape[1]} bytes per code, the index {index.code_size} ({index.nbits} bits)"
        )
    if args.k is not None:
        if not 1 <= args.k <= len(index):
            raise ValueError(f"-k must be between 1 and the {len(index)} codes in the index, got {args.k}")
        dist, ids = index.search(queries, args.k)
        lims = np.arange(queries.shape[0] + 1) * args.k
        dist, ids = dist.reshape(-1), ids.reshape(-1)
    else:
        if args.radius < 0:
            raise ValueError(f"--radius must be >= 0, got {args.radius}")
        lims, dist, ids = index.range_search(queries, args.radius)
        lims = lims.numpy()
    ids = ids.tolist()
    names = None
    if args.names:
        table = _names_of(args.index)
        names = [table.get(i, "") for i in ids]
    text = _format(lims, dist.tolist(), ids, names, args)
    if args.output:
        write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _format(lims: np.ndarray, dist: list[int], ids: list[int], names: list[str] | None, args: argparse.Namespace) -> str:
    if args.format == "json":
        results = [{"query": q, "ids": ids[lims[q]:lims[q + 1]], "distances": dist[lims[q]:lims[q + 1]]}
                   for q in range(len(lims) - 1)]
        if names is not None:
            for q, result in enumerate(results):
                result["names"] = names[lims[q]:lims[q + 1]]
        search = {"k": args.k} if args.k is not None else {"radius": args.radius}
        return json.dumps({"index": args.index, **search, "results": results}) + "\n"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["query", "rank", "id", "distance"] + (["name"] if names is not None else []))
    for q in range(len(lims) - 1):
        for rank, j in enumerate(range(lims[q], lims[q + 1])):
            writer.writerow([q, rank, ids[j], dist[j]] + ([names[j]] if names is not None else []))
    return out.getvalue()
