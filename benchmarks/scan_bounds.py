"""W1, W3 and W5 against the same scans with almost no hits (k = 1, radius 0), and faiss, on the
same inputs and threads, interleaved (medians of --rounds): how much of each search is the scan
itself and how much its hits cost, and so what ratio to faiss the scan alone would allow.

    python benchmarks/scan_bounds.py --rounds 5
"""
import argparse
import statistics
import time

import faiss
import numpy as np
import torch

from cibhash_ext import ops

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()
torch.set_num_threads(args.threads)
faiss.omp_set_num_threads(args.threads)
rng = np.random.default_rng(0)
db = rng.integers(0, 256, size=(1_000_000, 8), dtype=np.uint8)  # W1 and W5
q = rng.integers(0, 256, size=(1000, 8), dtype=np.uint8)
db16 = rng.integers(0, 256, size=(100_000, 16), dtype=np.uint8)  # W3
q16 = rng.integers(0, 256, size=(10_000, 16), dtype=np.uint8)
tdb, tq, tdb16, tq16 = map(torch.from_numpy, (db, q, db16, q16))
f64, f128 = faiss.IndexBinaryFlat(64), faiss.IndexBinaryFlat(128)
f64.add(db)
f128.add(db16)
searches = {
    "W1 k=100": lambda: ops.hamming_topk(tq, tdb, 100),
    "W1 data, k=1": lambda: ops.hamming_topk(tq, tdb, 1),
    "W1 faiss": lambda: f64.search(q, 100),
    "W5 r=20": lambda: ops.hamming_radius(tq, tdb, 20),
    "W5 data, r=0": lambda: ops.hamming_radius(tq, tdb, 0),
    "W5 faiss": lambda: f64.range_search(q, 21),  # faiss's radius is strict
    "W3 k=10": lambda: ops.hamming_topk(tq16, tdb16, 10),
    "W3 data, r=0": lambda: ops.hamming_radius(tq16, tdb16, 0),
    "W3 faiss": lambda: f128.search(q16, 10),
}
times = {name: [] for name in searches}
for _ in range(args.rounds):
    for name, search in searches.items():
        start = time.perf_counter()
        search()
        times[name].append(time.perf_counter() - start)
print("| search | ms |\n|---|---:|")
for name, t in times.items():
    print(f"| {name} | {statistics.median(t) * 1e3:.1f} |")
