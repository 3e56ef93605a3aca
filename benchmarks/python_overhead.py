"""The Python around one query's scan: HammingIndex.search and MIHIndex.search (on its scan path)
against the bare top-k op on the same codes, each call right after a scan of other codes that evicted
the caches, as in a stream of single queries over several indexes.

Each line of Python costs more after a scan than in a warm loop: a scan of 1M 64-bit codes streams
8 MB through the core's caches, and the interpreter's objects are read back from L3. This measures
what a search adds to its scan in that state (medians over interleaved calls).

    python benchmarks/python_overhead.py --n 1000000 --calls 500
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch

from cibhash_ext import HammingIndex, MIHIndex
from cibhash_ext import mih as mih_module


class _ScanOnly(mih_module._PathChoice):
    """A path choice that always takes the scan (and still does its bookkeeping)."""

    def pick(self, key):
        entry, _ = super().pick(key)
        return entry, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(args.n, 8), dtype=np.uint8)
    queries = torch.from_numpy(rng.integers(0, 256, size=(64, 8), dtype=np.uint8))
    scan = HammingIndex(64)
    scan.add(codes)
    mih = MIHIndex(64)
    mih.add(codes)
    if hasattr(mih_module._PathChoice, "pick"):  # (before 1b0525a its own choice took the scan ~99 % of the time)
        mih._state = dataclasses.replace(mih._state, choice=_ScanOnly())
    database = scan.codes
    other = torch.from_numpy(rng.integers(0, 256, size=(args.n, 8), dtype=np.uint8))  # what the scan before reads
    op = torch.ops.cibhash_ext.hamming_topk.default
    contenders = {
        "op": lambda q: op(q, database, args.k),
        "HammingIndex.search": lambda q: scan.search(q, args.k),
        "MIHIndex.search (scan path)": lambda q: mih.search(q, args.k),
    }
    times = {name: [] for name in contenders}
    order = list(contenders.items())
    for i in range(args.calls):
        q = queries[i % len(queries)].reshape(1, -1)
        for name, fn in order:
            op(q, other, args.k)  # a scan of other codes right before: the caches hold them, not Python's objects
            start = time.perf_counter()
            fn(q)
            times[name].append(time.perf_counter() - start)
        order.reverse()
    base = statistics.median(times["op"])
    print(f"# n={args.n:,} 64-bit codes, k={args.k}, {args.threads} threads, {args.calls} calls each, "
          f"each right after a scan")
    print("| call | median us | over the op |")
    print("|---|---:|---:|")
    for name, t in times.items():
        median = statistics.median(t)
        print(f"| {name} | {median * 1e6:.1f} | {(median - base) * 1e6:+.1f} |")


if __name__ == "__main__":
    main()
