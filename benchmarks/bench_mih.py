"""MIHIndex (multi-index hashing) against the scan (HammingIndex) and faiss (IndexBinaryFlat, and
IndexBinaryMultiHash with its recall) on 64-bit codes of three kinds:

* uniform: every bit a fair coin (the worst case for hashing: near neighbours are far);
* clustered: ``--centres`` random centres, each code a centre with every bit flipped with
  probability ``--flip`` (like learned codes: near neighbours share substrings). Queries are drawn
  the same way (fresh flips of random centres), so they are not database members;
* run: the real 64-bit codes of a trained run (``--run RUN``, e.g. the main job's Fashion-MNIST run):
  its dataset's database split encoded as the index, its query split as the queries (``--n`` does
  not apply).

Every result of MIHIndex is checked against the scan (identical distances and ids) before timing;
faiss IndexBinaryFlat distances are checked too. Times are medians of rounds (ours interleaved call by call,
faiss in a block of its own, see ``interleaved``); 1-query
rows time ``--single`` different queries one at a time and report the median per query.

    python benchmarks/bench_mih.py --n 1000000 10000000 --threads 2
    python benchmarks/bench_mih.py --n 100000000 --kind clustered --queries 1 --k 10 --radius --no-faiss
    python benchmarks/bench_mih.py --kind run --run runs/fashion_mnist-RUN
    python benchmarks/bench_mih.py --n 10000000 --grow-from 9000000 --add-size 10000 --no-faiss   # grown by adds
    python benchmarks/bench_mih.py --n 10000000 --grow-from 9000000 --add-ids --no-faiss   # adds that give ids
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
from cibhash_ext.index import HammingIndex
from cibhash_ext.mih import MIHIndex

SEED = 20261202
NBITS = 64


def make_codes(kind: str, n: int, centres: np.ndarray, flip: float, rng: np.random.Generator) -> np.ndarray:
    if kind == "uniform":
        return rng.integers(0, 256, size=(n, NBITS // 8), dtype=np.uint8)
    out = np.empty((n, NBITS // 8), np.uint8)
    step = 1 << 20
    for start in range(0, n, step):
        rows = min(step, n - start)
        base = centres[rng.integers(0, len(centres), rows)]
        flips = np.packbits(rng.random((rows, NBITS), dtype=np.float32) < flip, axis=1, bitorder="little")
        out[start : start + rows] = base ^ flips
    return out


def run_codes(run: str) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit codes of a trained run's database and query splits."""
    from cibhash_ext.encode import encode_run

    splits = []
    for split in ("database", "query"):
        _, codes = encode_run(run, split=split, show_progress=False)
        if NBITS not in codes:
            raise SystemExit(f"{run} has no {NBITS}-bit codes (it has {sorted(codes)})")
        splits.append(codes[NBITS].numpy())
    return splits[0], splits[1]


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def interleaved(contenders: dict, rounds: int, calls: list) -> dict:
    """Median seconds per call of each contender. Ours (the scan and MIH) alternate call by call (A B
    for each call, B A in the next round), so that each call finds the caches as the other's left
    them and a slow second of the machine falls on both alike. faiss runs its calls in a block of
    its own after them in each round: its OpenMP threads keep spinning for a while after a call, and
    on this 2-core machine that took a core from whichever of ours ran next (MIH radius searches at
    1M measured 0.22 ms right after faiss calls, 0.10-0.11 ms without them)."""
    times = {name: [] for name in contenders}
    ours = [(name, fn) for name, fn in contenders.items() if name in ("scan", "mih")]
    others = [(name, fn) for name, fn in contenders.items() if name not in ("scan", "mih")]

    def timed_call(name, fn, args):
        start = time.perf_counter()
        fn(*args)
        times[name].append(time.perf_counter() - start)

    for _ in range(rounds):
        for args in calls:
            for name, fn in ours:
                timed_call(name, fn, args)
        for name, fn in others:
            for args in calls:
                timed_call(name, fn, args)
        ours.reverse()
    return {name: statistics.median(t) for name, t in times.items()}


def check_same(a, b, what: str) -> None:
    for x, y in zip(a, b):
        if not torch.equal(x, y):
            raise SystemExit(f"MISMATCH {what}: MIHIndex differs from the scan")


def distance_recall(got_d: np.ndarray, want_d: np.ndarray) -> float:
    """Share of the k exact distances matched: sorted returned distances (misses count as inf)
    compared position by position with the exact ones."""
    got = np.where(got_d < 0, np.inf, got_d).astype(float)
    got.sort(axis=1)
    return float((got <= want_d).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--kind", nargs="+", choices=("uniform", "clustered", "run"), default=["uniform", "clustered"])
    parser.add_argument("--run", help="a trained run with 64-bit codes (for --kind run)")
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 1000])
    parser.add_argument("--k", type=int, nargs="*", default=[1, 10, 100])
    parser.add_argument("--radius", type=int, nargs="*", default=[2, 4, 8])
    parser.add_argument("--centres", type=int, default=10_000)
    parser.add_argument("--flip", type=float, default=0.10)
    parser.add_argument("--m", type=int, help="substrings (default: the paper's rule)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--single", type=int, default=20, help="queries timed one at a time for the 1-query rows")
    parser.add_argument("--grow-from", type=int,
                        help="search an MIHIndex grown from this many codes by adds of --add-size (default: one add)")
    parser.add_argument("--add-size", type=int, default=10_000)
    parser.add_argument("--add-ids", action="store_true",
                        help="with --grow-from: every add gives its ids, a random permutation of 0..n-1 "
                             "(the scan index gets the same ids)")
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--multihash-max-n", type=int, default=10_000_000,
                        help="skip faiss IndexBinaryMultiHash above this size (its hash maps take GBs)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    faiss = None
    if not args.no_faiss:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"# bench_mih {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {cpu} | {os.cpu_count()} CPUs | "
          f"python {platform.python_version()} | torch {torch.__version__} | cibhash_ext {cibhash_ext.__version__} | "
          f"faiss {faiss.__version__ if faiss else '-'} | threads {args.threads} | rounds {args.rounds}")
    if "run" in args.kind and not args.run:
        parser.error("--kind run needs --run RUN")
    if args.add_ids and args.grow_from is None:
        parser.error("--add-ids needs --grow-from")
    print(f"# clustered: {args.centres} centres, bit flip probability {args.flip}; {NBITS}-bit codes; times in ms")
    print("| n | codes | Q | search | scan | MIH | scan/MIH | faiss Flat | Flat/MIH | faiss MultiHash | MH recall |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    cases = [(n, kind) for n in args.n for kind in args.kind if kind != "run"]
    cases += [(None, "run")] if "run" in args.kind else []
    for n, kind in cases:
        if kind == "run":
            database, queries = run_codes(args.run)
            n = len(database)
            print(f"# run {args.run}: {n} database codes, {len(queries)} queries (its dataset's splits)")
        else:
            rng = np.random.default_rng(SEED)
            centres = rng.integers(0, 256, size=(args.centres, NBITS // 8), dtype=np.uint8)
            database = make_codes(kind, n, centres, args.flip, rng)
            queries = make_codes(kind, max(args.queries + [args.single]), centres, args.flip, rng)
        rss0 = rss_mb()
        ids = torch.from_numpy(np.random.default_rng(SEED + 1).permutation(n)) if args.add_ids else None
        scan = HammingIndex(NBITS)
        scan.add(database, ids)
        mih = MIHIndex(NBITS, m=args.m)
        _, build_s = timed(lambda: mih.add(database))
        specs = ", ".join(f"{s.bit_count}b/dir {s.dir_bits}" for s in mih.specs)
        print(f"# n={n} {kind}: MIH build {build_s:.2f} s, m={len(mih.specs)} ({specs}), tables "
              f"{mih.tables_nbytes / 2**20:.0f} MiB, codes {database.nbytes / 2**20:.0f} MiB, "
              f"RSS after both indexes {rss_mb() - rss0:.0f} MiB more")
        if args.grow_from is not None:
            # The index the rows below search: one add of the first --grow-from codes, then adds of
            # --add-size codes (segments of tables and a tail; each add used to rebuild all tables).
            if not 0 < args.grow_from < n:
                parser.error(f"--grow-from must be between 1 and n - 1 ({n - 1}), got {args.grow_from}")
            del mih  # the one-add index above, timed for its build only
            mih = MIHIndex(NBITS, m=args.m)
            def rows(start: int, stop: int):
                return database[start:stop], None if ids is None else ids[start:stop]

            mih.add(*rows(0, args.grow_from))
            add_s = [timed(lambda at=at: mih.add(*rows(at, at + args.add_size)))[1]
                     for at in range(args.grow_from, n, args.add_size)]
            sizes = ", ".join(f"{stop - start:,}" for start, stop in mih.segments)
            with_ids = " with ids in random order" if ids is not None else ""
            print(f"# grown from {args.grow_from:,} codes by {len(add_s)} adds of {args.add_size:,}{with_ids}: "
                  f"{sum(add_s):.2f} s in "
                  f"all, slowest add {max(add_s):.3f} s, median {statistics.median(add_s) * 1e3:.2f} ms (one build of "
                  f"all {n:,}: {build_s:.2f} s); segments {sizes}; {n - mih.segments[-1][1]:,} codes unindexed; "
                  f"tables {mih.tables_nbytes / 2**20:.0f} MiB")
        flat = multihash = None
        if faiss is not None:
            flat = faiss.IndexBinaryFlat(NBITS)
            flat.add(database)
            if n <= args.multihash_max_n:
                nhash = len(mih.specs)
                multihash = faiss.IndexBinaryMultiHash(NBITS, nhash, NBITS // nhash)
                multihash.nflip = 2
                _, mh_build = timed(lambda: multihash.add(database))
                print(f"# faiss IndexBinaryMultiHash(nhash={nhash}, b={NBITS // nhash}, nflip=2): build {mh_build:.2f} s")
        for q_count in args.queries:
            if q_count == 1:
                calls = [(torch.from_numpy(queries[i : i + 1]),) for i in range(args.single)]
            else:
                calls = [(torch.from_numpy(queries[:q_count]),)]
            all_q = torch.cat([c[0] for c in calls])
            for k in args.k:
                want = scan.search(all_q, k)
                check_same(mih.search(all_q, k), want, f"n={n} {kind} k={k}")
                contenders = {"scan": lambda q: scan.search(q, k), "mih": lambda q: mih.search(q, k)}
                recall = "-"
                if flat is not None:
                    fd, _ = flat.search(all_q.numpy(), k)
                    assert np.array_equal(fd, want[0].numpy()), "faiss Flat distances differ"
                    contenders["flat"] = lambda q: flat.search(q.numpy(), k)
                if multihash is not None:
                    md, _ = multihash.search(all_q.numpy(), k)
                    recall = f"{distance_recall(md, want[0].numpy()):.3f}"
                    contenders["multihash"] = lambda q: multihash.search(q.numpy(), k)
                t = interleaved(contenders, args.rounds, calls)
                row(n, kind, q_count, f"k={k}", t, recall)
            for radius in args.radius:
                want = scan.range_search(all_q, radius)
                check_same(mih.range_search(all_q, radius), want, f"n={n} {kind} radius={radius}")
                contenders = {"scan": lambda q: scan.range_search(q, radius),
                              "mih": lambda q: mih.range_search(q, radius)}
                if flat is not None:
                    # faiss's binary range_search is strict (< radius); ours is inclusive.
                    contenders["flat"] = lambda q: flat.range_search(q.numpy(), radius + 1)
                t = interleaved(contenders, args.rounds, calls)
                row(n, kind, q_count, f"radius {radius} ({int(want[0][-1]) / len(all_q):.1f}/query)", t, "-")
        del scan, mih, flat, multihash


def row(n, kind, q_count, what, t, recall) -> None:
    ms = {name: 1e3 * v for name, v in t.items()}
    flat = f"{ms['flat']:.3f} | {ms['flat'] / ms['mih']:.1f}x" if "flat" in ms else "- | -"
    mh = f"{ms['multihash']:.3f}" if "multihash" in ms else "-"
    print(f"| {n:,} | {kind} | {q_count} | {what} | {ms['scan']:.3f} | {ms['mih']:.3f} | {ms['scan'] / ms['mih']:.2f}x "
          f"| {flat} | {mh} | {recall} |", flush=True)


if __name__ == "__main__":
    main()
