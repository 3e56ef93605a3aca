"""One query at a time (issue 24, item 3): the latency of HammingIndex.search (k-NN) and
HammingIndex.range_search for batches of 1 to 16 queries, against faiss IndexBinaryFlat on the same
codes and against the machine's read-bandwidth floor.

A batch of fewer queries than 32 per thread splits the database over the threads (each keeps its own
best k or its matches, merged afterwards), so one query uses every thread. The floor of a scan is the
time to read the database once: its bytes over the streaming read bandwidth that
benchmarks/read_bandwidth.c measures with the same number of threads and a buffer of the same size
(a database that fits the last-level cache is read from there, a larger one from memory).

    python benchmarks/bench_latency.py --n 1000000 10000000 --threads 1 2

Every result is checked against faiss (k-NN distances; range counts, distances and ids) before
timing. Times are per call, medians of --rounds interleaved rounds (ours, faiss, ours, faiss, ...).
faiss scans its own copy of the codes, so each contender may find its database partly evicted from
the cache by the other: --no-faiss times ours alone, against the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import cibhash_ext
from cibhash_ext.index import HammingIndex

HERE = Path(__file__).resolve().parent
SEED = 20261203


def build_bandwidth_probe(tmp: str) -> Path | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    exe = Path(tmp) / "read_bandwidth"
    build = subprocess.run([gcc, "-O3", "-fopenmp", str(HERE / "read_bandwidth.c"), "-o", str(exe)],
                           capture_output=True, text=True)
    return exe if build.returncode == 0 else None


def read_bandwidth(exe: Path | None, nbytes: int, threads: int) -> float | None:
    """Bytes per second of a streaming read of nbytes with `threads` threads (best of 3 runs)."""
    if exe is None:
        return None
    best = None
    for _ in range(3):
        run = subprocess.run([str(exe), str(nbytes), str(threads)], capture_output=True, text=True)
        match = re.match(r"([\d.]+) GB/s", run.stdout)
        if match and (best is None or float(match.group(1)) > best):
            best = float(match.group(1))
    return None if best is None else best * 1e9


def interleaved(contenders: dict, rounds: int) -> dict:
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def check(ours_knn, faiss_knn, ours_range, faiss_range) -> None:
    if not np.array_equal(ours_knn[0].numpy(), faiss_knn[0]):
        raise SystemExit("MISMATCH: k-NN distances differ from faiss")
    lims, dist, ids = (t.numpy() for t in ours_range)
    f_lims, f_dist, f_ids = faiss_range
    if not np.array_equal(lims, f_lims):
        raise SystemExit("MISMATCH: range counts differ from faiss")
    for q in range(len(lims) - 1):
        a = sorted(zip(dist[lims[q] : lims[q + 1]], ids[lims[q] : lims[q + 1]]))
        b = sorted(zip(f_dist[f_lims[q] : f_lims[q + 1]], f_ids[f_lims[q] : f_lims[q + 1]]))
        if a != b:
            raise SystemExit("MISMATCH: range matches differ from faiss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--radius", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here (benchmarks/compare_builds.py reads them)")
    args = parser.parse_args()
    rows = []
    faiss = None
    if not args.no_faiss:
        import faiss
    nbytes = args.bits // 8
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs | torch {torch.__version__} "
          f"| cibhash_ext {cibhash_ext.__version__} | faiss {faiss.__version__ if faiss else '-'} | "
          f"{args.bits}-bit codes, k={args.k}, radius {args.radius}, {args.rounds} interleaved rounds")
    print("| n | threads | batch | search | ours ms | faiss ms | faiss / ours | floor ms | floor / ours |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        probe = build_bandwidth_probe(tmp)
        for n in args.n:
            rng = np.random.default_rng([SEED, n])
            codes = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
            index = HammingIndex(args.bits)
            index.add(torch.from_numpy(codes))
            flat = None
            if faiss is not None:
                flat = faiss.IndexBinaryFlat(args.bits)
                flat.add(codes)
            for threads in args.threads:
                torch.set_num_threads(threads)
                if faiss is not None:
                    faiss.omp_set_num_threads(threads)
                bandwidth = read_bandwidth(probe, n * nbytes, threads)
                floor = None if bandwidth is None else n * nbytes / bandwidth
                for batch in args.batch:
                    queries = rng.integers(0, 256, size=(batch, nbytes), dtype=np.uint8)
                    q = torch.from_numpy(queries)
                    if flat is not None:
                        check(index.search(q, args.k), flat.search(queries, args.k),
                              index.range_search(q, args.radius), flat.range_search(queries, args.radius + 1))
                    for search, ours, theirs in (
                        ("k-NN", lambda: index.search(q, args.k), lambda: flat.search(queries, args.k)),
                        (f"radius {args.radius}", lambda: index.range_search(q, args.radius),
                         lambda: flat.range_search(queries, args.radius + 1)),
                    ):
                        contenders = {"ours": ours} if flat is None else {"ours": ours, "faiss": theirs}
                        times = {k: statistics.median(v) for k, v in interleaved(contenders, args.rounds).items()}
                        ours_s, faiss_s = times["ours"], times.get("faiss")
                        cells = [f"{n:,}", str(threads), str(batch), search, f"{1e3 * ours_s:.3f}",
                                 "-" if faiss_s is None else f"{1e3 * faiss_s:.3f}",
                                 "-" if faiss_s is None else f"{faiss_s / ours_s:.1f}x",
                                 "-" if floor is None else f"{1e3 * floor:.3f}",
                                 "-" if floor is None else f"{floor / ours_s:.0%}"]
                        print("| " + " | ".join(cells) + " |", flush=True)
                        rows.append({"n": n, "threads": threads, "batch": batch, "search": search, "median_s": times})
                if bandwidth is not None:
                    print(f"<!-- read bandwidth, {n * nbytes / 1e6:.0f} MB, {threads} threads: "
                          f"{bandwidth / 1e9:.1f} GB/s -->", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"results": rows}, indent=1))


if __name__ == "__main__":
    main()
