"""HammingIndex benchmark on W1 (issue 5): N = 1M 64-bit codes, Q = 1000, k = 100. Times saving,
loading (memory-mapped with and without the data checksum, and read into memory), search in memory
against search from the memory map (interleaved, medians, ratio), and ShardedHammingIndex over 2
gloo processes against 1, after checking every result equals the in-memory search.

    python benchmarks/bench_index.py --threads 2 --repeats 7
    python benchmarks/bench_index.py --threads 2 --repeats 3 --scale 0.05     # a quick check

Loads are timed on a file in the page cache (just written): they measure the mapping and the
checksum pass, not the disk. The sharded rows start fresh processes (imports excluded from the
times) that each map their slice of the same file; each rank uses threads // world_size threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import cibhash_ext
from cibhash_ext.index import HammingIndex

SEED = 20240605
W1 = dict(n=1_000_000, bits=64, q=1_000, k=100)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_codes(scale: float) -> tuple[np.ndarray, np.ndarray, int]:
    n = max(W1["k"], int(round(W1["n"] * scale)))
    rng = np.random.default_rng(SEED)
    database = rng.integers(0, 256, size=(n, W1["bits"] // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(W1["q"], W1["bits"] // 8), dtype=np.uint8)
    return queries, database, n


# --------------------------------------------------------------------------------------------
# Sharded search: this script re-run as one rank


def run_rank(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from cibhash_ext.sharded_index import ShardedHammingIndex, init_process_group

    torch.set_num_threads(args.threads)
    init_process_group("gloo", timeout_s=300, rank=args.rank, world_size=args.world)
    sharded = ShardedHammingIndex.from_file(args.index, split=True, verify=False)
    queries = np.load(args.queries) if args.rank == 0 else None
    result = sharded.search(queries, W1["k"])  # warm-up: page faults and thread pools
    times = []
    for _ in range(args.repeats):
        dist.barrier()
        start = time.perf_counter()
        result = sharded.search(queries, W1["k"])
        times.append(time.perf_counter() - start)
    if args.rank == 0:
        np.savez(args.out, d=result[0].numpy(), i=result[1].numpy(), t=np.array(times))
    dist.destroy_process_group()


def sharded_time(index_path: str, queries_path: str, world: int, threads: int, repeats: int, tmp: str):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
    out = os.path.join(tmp, f"sharded_{world}.npz")
    procs = [
        subprocess.Popen([sys.executable, __file__, "--rank", str(r), "--world", str(world), "--threads", str(threads),
                          "--repeats", str(repeats), "--index", index_path, "--queries", queries_path, "--out", out],
                         env=env)
        for r in range(world)
    ]
    if any(p.wait(timeout=1800) for p in procs):
        raise RuntimeError(f"a sharded benchmark rank failed (world size {world})")
    data = np.load(out)
    return float(np.median(data["t"])), torch.from_numpy(data["d"]), torch.from_numpy(data["i"])


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (split over ranks)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of W1's N (quick checks: 0.05)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (medians are reported)")
    parser.add_argument("--no-sharded", action="store_true", help="skip the multi-process rows")
    parser.add_argument("--tmp", help="folder for the index file (default: a temporary folder)")
    # Internal: one rank of the sharded measurement.
    for name in ("--rank", "--world"):
        parser.add_argument(name, type=int, help=argparse.SUPPRESS)
    for name in ("--index", "--queries", "--out"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads < 1 or args.repeats < 1 or args.scale <= 0:
        parser.error("--threads and --repeats must be >= 1 and --scale > 0")
    if args.rank is not None:
        run_rank(args)
        return
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        run(args, tmp)


def run(args: argparse.Namespace, tmp: str) -> None:
    queries_np, database, n = make_codes(args.scale)
    k = W1["k"]
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"cibhash_ext {cibhash_ext.__version__}")
    print(f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} logical cpus, "
          f"affinity {sorted(os.sched_getaffinity(0))}); threads: {args.threads}; device: cpu")
    print(f"workload: W1 x {args.scale}: N = {n}, {W1['bits']} bits, Q = {W1['q']}, k = {k}; "
          f"repeats: {args.repeats} (medians); seed {SEED}\n")

    path = os.path.join(tmp, "w1.idx")
    queries_path = os.path.join(tmp, "queries.npy")
    np.save(queries_path, queries_np)
    queries = torch.from_numpy(queries_np)
    memory = HammingIndex(W1["bits"])
    memory.add(database)
    t_save = median_time(lambda: memory.save(path), 1)
    size_mb = os.path.getsize(path) / 2**20

    t_map = median_time(lambda: HammingIndex.load(path, mmap=True, verify=False), args.repeats)
    t_map_verify = median_time(lambda: HammingIndex.load(path, mmap=True, verify=True), args.repeats)
    t_read = median_time(lambda: HammingIndex.load(path, mmap=False, verify=True), args.repeats)
    mapped = HammingIndex.load(path, mmap=True, verify=False)

    want = memory.search(queries, k)
    got = mapped.search(queries, k)
    if not (torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])):
        raise RuntimeError("search from the memory map differs from the in-memory search")
    # Interleaved, so a busy moment on the machine hits both sides alike.
    t_mem, t_mmap = [], []
    for _ in range(args.repeats):
        t_mem.append(median_time(lambda: memory.search(queries, k), 1))
        t_mmap.append(median_time(lambda: mapped.search(queries, k), 1))
    t_mem, t_mmap = statistics.median(t_mem), statistics.median(t_mmap)

    rows = [
        ("save (atomic, fsync)", t_save, f"{size_mb:.1f} MiB file"),
        ("load, mmap, verify=False", t_map, "header checks only"),
        ("load, mmap, verify=True", t_map_verify, f"CRC32 pass: {size_mb / t_map_verify:.0f} MiB/s"),
        ("load into memory, verify=True", t_read, "a copy"),
        ("search, in memory", t_mem, f"{W1['q'] / t_mem:,.0f} queries/s"),
        ("search, from mmap", t_mmap, f"{W1['q'] / t_mmap:,.0f} queries/s; {t_mem / t_mmap:.2f} x in-memory speed"),
    ]
    if not args.no_sharded:
        results = {}
        for world in (1, 2):
            threads = max(1, args.threads // world)
            seconds, d, i = sharded_time(path, queries_path, world, threads, args.repeats, tmp)
            if not (torch.equal(d, want[0]) and torch.equal(i, want[1])):
                raise RuntimeError(f"sharded search over {world} process(es) differs from the single-process search")
            results[world] = seconds
            note = "results identical to in-memory search"
            if world == 2:
                note += f"; {results[1] / seconds:.2f} x the speed of 1 process"
            rows.append((f"sharded search, {world} gloo process(es) x {threads} thread(s)", seconds, note))

    print("| measurement | median time | notes |")
    print("|---|---:|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds * 1e3:,.2f} ms | {note} |")


if __name__ == "__main__":
    main()
