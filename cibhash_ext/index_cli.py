"""Command line for the Hamming index: ``index build`` (codes file -> index file) and ``search``
(index + queries -> top-k or radius results as CSV or JSON), usable on its own
(``python -m cibhash_ext.index_cli ...``) or registered in another parser with :func:`add_index_commands`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
from typing import Sequence

import numpy as np

__all__ = ["add_index_commands", "run", "main", "COMMANDS"]

COMMANDS = ("index", "search")


def add_index_commands(subparsers) -> None:
    """Registers ``index build`` and ``search`` on an ``add_subparsers()`` object.

    The parsed namespace gets ``index_handler``; call :func:`run` with it. The parent parser's
    ``dest`` of the subparsers is not used.
    """
    index = subparsers.add_parser("index", help="build a Hamming index file from codes",
                                  description="Manage Hamming index files (format: cibhash_ext.index).")
    index_sub = index.add_subparsers(dest="index_command", metavar="ACTION")
    index_sub.required = True
    build = index_sub.add_parser(
        "build", help="build an index file from a codes file",
        description="Build an index from packed uint8 codes: a .npy array [n, ceil(nbits/8)], or a .npz "
        "written by `cibhash encode` (array codes_<L>, chosen with --key when there are several).")
    build.add_argument("codes", help="codes file (.npy, or .npz with --key)")
    build.add_argument("--output", "-o", required=True, help="index file to write (replaced atomically)")
    build.add_argument("--ids", help=".npy of integer ids, one per code (default: 0..n-1)")
    build.add_argument("--nbits", type=int, help="bits per code (default: from the .npz key, else 8 x bytes per code)")
    build.add_argument("--key", help="array name inside a .npz file, e.g. codes_64")
    build.set_defaults(index_handler=_cmd_build, command_name="index build")

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
    search.add_argument("--threads", type=int, help="torch intra-op threads")
    search.set_defaults(index_handler=_cmd_search, command_name="search")


def _load_codes(path: str, key: str | None, what: str) -> tuple[np.ndarray, int | None]:
    """Reads a 2-D uint8 array from .npy/.npz; returns it and the bit length a codes_<L> key implies."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} file {path!r} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{what} file {path!r} is not a readable .npy/.npz file: {exc}") from exc
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


def _cmd_build(args: argparse.Namespace) -> int:
    from cibhash_ext.index import HammingIndex

    codes, key_bits = _load_codes(args.codes, args.key, "codes")
    nbits = args.nbits or key_bits or 8 * codes.shape[1]
    if (nbits + 7) // 8 != codes.shape[1]:
        raise ValueError(f"--nbits {nbits} needs {(nbits + 7) // 8} bytes per code, the codes have {codes.shape[1]}")
    ids = None
    if args.ids:
        if not os.path.exists(args.ids):
            raise FileNotFoundError(f"ids file {args.ids!r} does not exist")
        ids = np.load(args.ids, allow_pickle=False)
        if not np.issubdtype(ids.dtype, np.integer) or ids.shape != (codes.shape[0],):
            raise ValueError(f"ids file {args.ids!r} must hold {codes.shape[0]} integers (one per code), "
                             f"got a {ids.dtype} array of shape {ids.shape}")
        ids = ids.astype(np.int64)
    index = HammingIndex(nbits)
    index.add(codes, ids)
    index.save(args.output)
    print(f"indexed {len(index)} codes of {nbits} bits -> {args.output}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    import torch

    from cibhash_ext.index import HammingIndex

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if not os.path.exists(args.index):
        raise FileNotFoundError(f"index file {args.index!r} does not exist")
    index = HammingIndex.load(args.index, mmap=not args.no_mmap, verify=not args.no_verify)
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
    text = _format(lims, dist.tolist(), ids.tolist(), args)
    if args.output:
        with open(args.output, "w", newline="") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _format(lims: np.ndarray, dist: list[int], ids: list[int], args: argparse.Namespace) -> str:
    if args.format == "json":
        results = [{"query": q, "ids": ids[lims[q]:lims[q + 1]], "distances": dist[lims[q]:lims[q + 1]]}
                   for q in range(len(lims) - 1)]
        search = {"k": args.k} if args.k is not None else {"radius": args.radius}
        return json.dumps({"index": args.index, **search, "results": results}) + "\n"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["query", "rank", "id", "distance"])
    for q in range(len(lims) - 1):
        for rank, j in enumerate(range(lims[q], lims[q + 1])):
            writer.writerow([q, rank, ids[j], dist[j]])
    return out.getvalue()


def run(args: argparse.Namespace) -> int:
    """Runs a parsed ``index build`` or ``search`` command; errors print one line and return 2."""
    try:
        return args.index_handler(args)
    except (OSError, ValueError, TypeError) as exc:
        print(f"cibhash {args.command_name}: error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cibhash_ext.index_cli``: the index commands alone; returns the exit status."""
    parser = argparse.ArgumentParser(prog="cibhash", description="Hamming index files: build and search.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_index_commands(sub)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
