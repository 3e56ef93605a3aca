"""Adds and removals on a large HammingIndex and MIHIndex: each index is built from --n codes, then
--adds adds of --add-size codes are timed one by one (no ids; ids in increasing order; ids in
random order), then --removals removals of --remove-size ids. Medians per call, in ms; the first
add with ids also builds the index's sorted id runs (``cibhash_ext.id_runs``) and is reported apart.

    python benchmarks/bench_index_writes.py --n 9000000 --adds 20
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

import cibhash_ext
from cibhash_ext import HammingIndex, MIHIndex


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=9_000_000)
    parser.add_argument("--adds", type=int, default=20)
    parser.add_argument("--add-size", type=int, default=10_000)
    parser.add_argument("--removals", type=int, default=3)
    parser.add_argument("--remove-size", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"# bench_index_writes {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {cpu} | "
          f"{os.cpu_count()} CPUs | "
          f"python {platform.python_version()} | torch {torch.__version__} | cibhash_ext {cibhash_ext.__version__} | "
          f"threads {args.threads}")
    rng = np.random.default_rng(0)
    total = args.n + args.adds * args.add_size
    codes = torch.from_numpy(rng.integers(0, 256, size=(total, 8), dtype=np.uint8))
    shuffled = torch.from_numpy(rng.permutation(total))
    print(f"# {args.n:,} 64-bit codes, then {args.adds} adds of {args.add_size:,}, {args.removals} removals of "
          f"{args.remove_size:,} ids; ms per call (median; first add with ids apart)")
    print("| index | ids | first add | median add | median removal |")
    print("|---|---|---:|---:|---:|")
    for kind in (HammingIndex, MIHIndex):
        for ids in ("none", "in order", "random order"):
            index = kind(64)
            given = {"none": None, "in order": torch.arange(total), "random order": shuffled}[ids]
            index.add(codes[: args.n], None if given is None else given[: args.n])
            adds = []
            for a in range(args.adds):
                start = args.n + a * args.add_size
                rows = slice(start, start + args.add_size)
                adds.append(timed(lambda: index.add(codes[rows], None if given is None else given[rows])))
            held = index.ids
            removals = [timed(lambda r=r: index.remove_ids(held[r * args.remove_size : (r + 1) * args.remove_size]))
                        for r in range(args.removals)]
            print(f"| {kind.__name__} | {ids} | {adds[0] * 1e3:.1f} | {statistics.median(adds[1:]) * 1e3:.2f} | "
                  f"{statistics.median(removals) * 1e3:.0f} |")


if __name__ == "__main__":
    main()
