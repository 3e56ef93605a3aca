"""Exact Hamming search benchmark (issue 4, workloads W1-W5): cibhash_ext's hamming_topk and
hamming_radius against faiss IndexBinaryFlat (heap and counting modes, range_search) and the pure
PyTorch matmul + topk baseline, on the same inputs and threads, checked for equality before timing.

    python benchmarks/bench_hamming.py --workload all --threads 2 --json results.json
    taskset -c 0 python benchmarks/bench_hamming.py --workload W1 --threads 1 --repeats 3 --scale 0.05
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.utils.benchmark as tb

import cibhash_ext
from cibhash_ext import hamming_radius, hamming_topk, unpack_bits

try:
    import faiss
except ImportError:  # faiss is a competitor, not a dependency: the script says so and goes on
    faiss = None

HERE = Path(__file__).resolve().parent
SEED = 20240604


@dataclass(frozen=True)
class Workload:
    name: str
    n: int
    bits: int
    q: int
    k: int = 0  # top-k workloads
    radius: int = -1  # radius workloads

    @property
    def is_radius(self) -> bool:
        return self.radius >= 0


WORKLOADS = {
    "W1": Workload("W1", 1_000_000, 64, 1_000, k=100),
    "W2": Workload("W2", 1_000_000, 32, 1_000, k=1_000),
    "W3": Workload("W3", 100_000, 128, 10_000, k=10),
    "W4": Workload("W4", 1_000_000, 16, 1_000, k=100),
    "W5": Workload("W5", 1_000_000, 64, 1_000, radius=20),
}


class Mismatch(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Machine description


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    return set(match.group(1).split()) if match else set()


def cpu_model() -> str:
    try:
        match = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        match = None
    return match.group(1).strip() if match else platform.processor() or "unknown"


def isa_note(flags: set[str]) -> str:
    # Mirrors detect_isa() in csrc/ops/cpu/hamming.cpp, including the CIBHASH_ISA override.
    has512 = {"avx512f", "avx512_vpopcntdq"} <= flags
    best = "avx512 (VPOPCNTQ)" if has512 else "avx2" if "avx2" in flags else "scalar"
    forced = os.environ.get("CIBHASH_ISA")
    if forced == "scalar" or (forced == "avx2" and best != "scalar"):
        best = f"{forced} (forced by CIBHASH_ISA)"
    present = [f for f in ("avx2", "avx512f", "avx512bw", "avx512_vpopcntdq", "avx512_bitalg") if f in flags]
    return f"ours' CPU path: {best}; flags: {', '.join(present) or 'none of avx2/avx512'}"


def print_header(args: argparse.Namespace) -> None:
    versions = (
        f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"faiss {getattr(faiss, '__version__', 'not installed')}, cibhash_ext {cibhash_ext.__version__}"
    )
    print(f"versions: {versions}")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical cpus, affinity {sorted(os.sched_getaffinity(0))})")
    print(f"threads: {args.threads} (torch.get_num_threads() = {torch.get_num_threads()})")
    if args.device == "cuda":
        print(f"device: cuda ({torch.cuda.get_device_name()}); faiss runs on the CPU with {args.threads} threads")
    else:
        print("device: cpu")
    print(f"isa: {isa_note(cpu_flags())}")
    print(f"repeats: {args.repeats}, scale: {args.scale}, seed: {SEED}")


# --------------------------------------------------------------------------------------------
# The machine's XOR + popcount limit (benchmarks/popcount_limit.c)


def popcount_limit(threads: int, lane_bits: int = 64) -> tuple[float | None, str]:
    """Total code pairs/s at `threads` on 64-bit lanes (VPOPCNTQ) or 32-bit lanes (VPOPCNTD, the lanes
    of codes of up to 32 bits), or None and the reason it is missing."""
    if not {"avx512f", "avx512_vpopcntdq"} <= cpu_flags():
        return None, "no AVX-512 VPOPCNTDQ on this CPU"
    gcc = shutil.which("gcc")
    if gcc is None:
        return None, "gcc not found"
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "popcount_limit"
        build = subprocess.run(
            [gcc, "-O3", "-fopenmp", str(HERE / "popcount_limit.c"), "-o", str(exe)], capture_output=True, text=True
        )
        if build.returncode != 0:
            return None, f"gcc failed: {build.stderr.strip()[:300]}"
        best, best_line = None, ""
        for _ in range(3):  # a limit: the best of three runs, so a busy moment does not lower it
            run = subprocess.run([str(exe), str(threads), str(lane_bits)], capture_output=True, text=True)
            match = re.search(r"([\d.]+) G pairs/s in total", run.stdout)
            if run.returncode != 0 or match is None:
                return None, f"popcount_limit failed: {run.stdout.strip()} {run.stderr.strip()}"
            if best is None or float(match.group(1)) > best:
                best, best_line = float(match.group(1)), run.stdout.strip()
    return best * 1e9, best_line + " (best of 3 runs)"


# --------------------------------------------------------------------------------------------
# Inputs


def make_codes(w: Workload, scale: float) -> tuple[np.ndarray, np.ndarray]:
    n = max(1, int(round(w.n * scale)))
    if not w.is_radius:
        n = max(n, w.k)
    rng = np.random.default_rng([SEED, int(w.name[1:])])
    nbytes = w.bits // 8
    database = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(w.q, nbytes), dtype=np.uint8)
    return queries, database


# --------------------------------------------------------------------------------------------
# The pure-PyTorch baseline, as a careful user writes it: +-1 codes unpacked once, then per query
# chunk one matmul and one topk (or mask), so only a chunk x N matrix is alive at a time.


class TorchBaseline:
    def __init__(self, queries: torch.Tensor, database: torch.Tensor, bits: int, chunk: int, half: bool):
        dtype = torch.float16 if half else torch.float32
        self.db = unpack_bits(database, bits).to(dtype).mul_(2).sub_(1)  # [N, L], +-1
        self.q = unpack_bits(queries, bits).to(dtype).mul_(2).sub_(1)  # [Q, L], +-1
        self.bits = bits
        self.chunk = chunk

    def topk(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        dists, indices = [], []
        for start in range(0, self.q.shape[0], self.chunk):
            dist = (self.bits - self.q[start : start + self.chunk] @ self.db.T) / 2
            d, i = torch.topk(dist, k, dim=1, largest=False, sorted=True)
            dists.append(d)
            indices.append(i)
        return torch.cat(dists), torch.cat(indices)

    def radius(self, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        counts, dists, indices = [], [], []
        for start in range(0, self.q.shape[0], self.chunk):
            dist = (self.bits - self.q[start : start + self.chunk] @ self.db.T) / 2
            mask = dist <= r
            counts.append(mask.sum(1))
            dists.append(dist[mask])
            indices.append(mask.nonzero()[:, 1])
        lims = torch.zeros(self.q.shape[0] + 1, dtype=torch.int64, device=self.q.device)
        lims[1:] = torch.cat(counts).cumsum(0)
        return lims, torch.cat(dists), torch.cat(indices)


# --------------------------------------------------------------------------------------------
# Correctness checks (NumPy, on the host)


def popcount_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance between rows a[..., B] and b[..., B] (broadcasting), int32."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(-1, dtype=np.int32)


def check_topk_ours(w: Workload, q: np.ndarray, db: np.ndarray, d: np.ndarray, i: np.ndarray) -> None:
    if d.shape != (q.shape[0], w.k) or i.shape != d.shape:
        raise Mismatch(f"{w.name}: ours returned shapes {d.shape}, {i.shape}, expected {(q.shape[0], w.k)}")
    true = popcount_rows(q[:, None, :], db[i])
    if not np.array_equal(true, d):
        raise Mismatch(f"{w.name}: ours reports distances that are not the distances of its indices")
    order_ok = (np.diff(d, axis=1) > 0) | ((np.diff(d, axis=1) == 0) & (np.diff(i, axis=1) > 0))
    if not order_ok.all():
        raise Mismatch(f"{w.name}: ours is not ordered by (distance, index)")


def strict_sets(d: np.ndarray, i: np.ndarray, n: int) -> np.ndarray:
    """Per row, the sorted indices whose distance is strictly below the row's k-th distance (the
    part of a top-k that ties cannot change); the rest of each row is filled with n. Rows need not
    be sorted: the k-th distance of a top-k row is its maximum."""
    inside = d < d.max(axis=1, keepdims=True)
    return np.sort(np.where(inside, i, n), axis=1)


def check_topk_same(w: Workload, name: str, ours: tuple, other: tuple, n: int) -> None:
    d0, i0 = ours
    d1, i1 = other
    if d1.shape != d0.shape or i1.shape != d0.shape:
        raise Mismatch(f"{w.name}: {name} returned shape {d1.shape}, ours {d0.shape}")
    d1_sorted = np.sort(d1, axis=1)  # equal values may come back in any order
    if not np.array_equal(d0, d1_sorted):
        rows = np.nonzero((d0 != d1_sorted).any(1))[0]
        r = rows[0]
        raise Mismatch(
            f"{w.name}: distances differ from {name} on {len(rows)} of {len(d0)} queries; "
            f"query {r}: ours {d0[r, :8].tolist()}..., {name} {d1_sorted[r, :8].tolist()}..."
        )
    if not np.array_equal(strict_sets(d0, i0, n), strict_sets(d1, i1, n)):
        raise Mismatch(f"{w.name}: index sets strictly inside the k-th distance differ from {name}")


def canonical_radius(lims: np.ndarray, d: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorts each query's (distance, index) pairs, so result lists compare as sets."""
    lims, d, i = lims.astype(np.int64), d.astype(np.int32), i.astype(np.int64)  # faiss: uint64 lims
    qid = np.repeat(np.arange(len(lims) - 1), np.diff(lims))
    order = np.lexsort((i, d, qid))
    return lims, d[order], i[order]


def check_radius_ours(w: Workload, q: np.ndarray, db: np.ndarray, lims: np.ndarray, d: np.ndarray, i: np.ndarray) -> None:
    qid = np.repeat(np.arange(q.shape[0]), np.diff(lims))
    if not np.array_equal(popcount_rows(q[qid], db[i]), d) or (d > w.radius).any():
        raise Mismatch(f"{w.name}: ours reports wrong distances or distances above the radius")
    same_q = qid[1:] == qid[:-1]
    ordered = (d[1:] > d[:-1]) | ((d[1:] == d[:-1]) & (i[1:] > i[:-1]))
    if not (ordered | ~same_q).all():
        raise Mismatch(f"{w.name}: ours' radius lists are not ordered by (distance, index)")


def check_radius_same(w: Workload, name: str, ours: tuple, other: tuple) -> None:
    lims0, d0, i0 = ours
    lims1, d1, i1 = canonical_radius(*other)
    if not np.array_equal(lims0, lims1):
        r = int(np.nonzero(np.diff(lims0) != np.diff(lims1))[0][0])
        raise Mismatch(
            f"{w.name}: result counts differ from {name} ({int(lims0[-1])} vs {int(lims1[-1])} in total); "
            f"query {r}: ours {int(lims0[r + 1] - lims0[r])}, {name} {int(lims1[r + 1] - lims1[r])}"
        )
    if not (np.array_equal(d0, d1) and np.array_equal(i0, i1)):
        raise Mismatch(f"{w.name}: (distance, index) sets differ from {name}")


# --------------------------------------------------------------------------------------------
# Timing


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_timer(fn, device: str) -> tb.Timer:
    # torch.utils.benchmark synchronises CUDA around its measurements; sync() inside fn makes the
    # CPU-side faiss and torch timings comparable when a GPU is involved too.
    # Timer runs its statement with num_threads torch threads, 1 unless told: pass ours.
    return tb.Timer(stmt="fn(); sync(device)", globals={"fn": fn, "sync": sync, "device": device},
                    num_threads=torch.get_num_threads())


def time_interleaved(fns: dict, repeats: int, device: str, min_round_s: float) -> dict[str, list[float]]:
    """Runs the competitors A B C A B C ... `repeats` times; returns the seconds per call of each round.

    A competitor faster than `min_round_s` runs several times per round (its per-call mean is the
    round's value), so that very short calls are not dominated by timer noise."""
    timers = {name: make_timer(fn, device) for name, fn in fns.items()}
    numbers = {}
    for name, timer in timers.items():  # one warm-up call each, which also sizes the rounds
        once = timer.timeit(1).median
        numbers[name] = max(1, math.ceil(min_round_s / max(once, 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer.timeit(numbers[name]).median)
    return times


# --------------------------------------------------------------------------------------------
# Peak memory of our search, in a fresh process


def memory_probe(args: argparse.Namespace) -> None:
    """Child-process side: builds the inputs, then reports the extra peak memory of one search."""
    w = WORKLOADS[args.memory_probe]
    torch.set_num_threads(args.threads)
    q_np, db_np = make_codes(w, args.scale)
    queries, database = torch.from_numpy(q_np), torch.from_numpy(db_np)
    if args.device == "cuda":
        queries, database = queries.cuda(), database.cuda()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_ours(w, queries, database)
        torch.cuda.synchronize()
        extra, how = torch.cuda.max_memory_allocated() - base, "torch.cuda.max_memory_allocated"
    else:
        def status(key: str) -> int:
            text = Path("/proc/self/status").read_text()
            return int(re.search(rf"^{key}:\s*(\d+) kB", text, re.M).group(1)) * 1024

        try:  # "5" resets VmHWM to the current RSS, so input construction does not count
            Path("/proc/self/clear_refs").write_text("5")
            how = "VmHWM after - VmRSS before (VmHWM reset via clear_refs)"
        except OSError:
            how = "VmHWM after - VmRSS before (VmHWM not reset: input construction may be counted)"
        base = status("VmRSS")
        run_ours(w, queries, database)
        extra = status("VmHWM") - base
    print(json.dumps({"extra_bytes": extra, "how": how}))


def measure_peak_memory(args: argparse.Namespace, w: Workload) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", w.name, "--threads", str(args.threads),
           "--scale", str(args.scale), "--device", args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    n = max(1, int(round(w.n * args.scale)))
    result["qxn_int32_bytes"] = 4 * w.q * n
    result["fraction_of_qxn"] = result["extra_bytes"] / result["qxn_int32_bytes"]
    return result


# --------------------------------------------------------------------------------------------
# One workload


def run_ours(w: Workload, queries: torch.Tensor, database: torch.Tensor):
    if w.is_radius:
        return hamming_radius(queries, database, w.radius)
    return hamming_topk(queries, database, w.k)


def to_np(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy()


def width_limit(limits: dict[int, float], bits: int) -> float:
    """The popcount limit for codes of `bits`: up to 32 bits ride 32-bit lanes, up to 64 one 64-bit
    lane, wider codes ceil(bits / 64) lanes per pair."""
    if bits <= 32:
        return limits[32]
    return limits[64] / ((bits + 63) // 64)


def run_workload(args: argparse.Namespace, w: Workload, limits: dict[int, float] | None) -> dict:
    q_np, db_np = make_codes(w, args.scale)
    n = db_np.shape[0]
    dev = torch.device(args.device)
    queries, database = torch.from_numpy(q_np).to(dev), torch.from_numpy(db_np).to(dev)
    what = f"radius {w.radius}" if w.is_radius else f"k = {w.k}"
    print(f"\n## {w.name}: N = {n:,} codes of {w.bits} bits, Q = {w.q:,}, {what}")

    fns = {"ours": lambda: run_ours(w, queries, database)}
    ours = run_ours(w, queries, database)
    sync(args.device)
    ours = tuple(to_np(t) for t in ours)
    if w.is_radius:
        check_radius_ours(w, q_np, db_np, *ours)
        print(f"check: ours is exact and ordered ({int(ours[0][-1]):,} results, "
              f"{ours[0][-1] / w.q:.1f} per query)")
    else:
        check_topk_ours(w, q_np, db_np, *ours)
        ties = int((ours[0][:, -1:] == ours[0]).sum() - w.q)
        print(f"check: ours is exact and ordered ((distance, index)); {ties:,} results tie the k-th distance")

    if faiss is not None:
        faiss.omp_set_num_threads(args.threads)
        index = faiss.IndexBinaryFlat(w.bits)
        index.add(db_np)
        if w.is_radius:
            # faiss's binary range_search keeps distances strictly below its radius argument.
            check_radius_same(w, "faiss range_search", ours, index.range_search(q_np, w.radius + 1))
            print("check: ours == faiss range_search(radius + 1): identical lims and (distance, index) sets")
            fns["faiss range"] = lambda: index.range_search(q_np, w.radius + 1)
        else:
            for mode, use_heap in (("faiss heap", True), ("faiss count", False)):
                def search(use_heap=use_heap):
                    index.use_heap = use_heap
                    return index.search(q_np, w.k)

                d, i = search()
                check_topk_same(w, mode, ours, (d, i), n)
                print(f"check: ours == {mode} (use_heap={use_heap}): identical distances and strict index sets")
                fns[mode] = search
    else:
        print("faiss: not installed, skipped")

    if args.skip_torch:
        print("torch baseline: skipped (--skip-torch)")
    else:
        chunk = args.torch_chunk
        baseline = TorchBaseline(queries, database, w.bits, chunk, half=args.device == "cuda")
        dtype = "float16" if args.device == "cuda" else "float32"
        if w.is_radius:
            lims, d, i = baseline.radius(w.radius)
            check_radius_same(w, "torch", ours, (to_np(lims), to_np(d).round().astype(np.int32), to_np(i)))
            fns["torch"] = lambda: baseline.radius(w.radius)
        else:
            d, i = baseline.topk(w.k)
            check_topk_same(w, "torch", ours, (to_np(d).round().astype(np.int32), to_np(i)), n)
            fns["torch"] = lambda: baseline.topk(w.k)
        print(f"check: ours == torch baseline (+-1 {dtype} matmul in chunks of {chunk} queries)")

    times = time_interleaved(fns, args.repeats, args.device, args.min_round_s)
    med = {name: float(np.median(t)) for name, t in times.items()}
    pairs = w.q * n / med["ours"]
    row = {
        "workload": w.name, "n": n, "bits": w.bits, "q": w.q, "k": w.k, "radius": w.radius,
        "threads": args.threads, "device": args.device, "repeats": args.repeats,
        "times_s": times, "median_s": med, "pairs_per_s": pairs,
    }
    faiss_names = [name for name in med if name.startswith("faiss")]
    if faiss_names:
        best = min(faiss_names, key=med.get)
        row["faiss_best"] = best
        row["vs_faiss"] = med[best] / med["ours"]
    if "torch" in med:
        row["vs_torch"] = med["torch"] / med["ours"]
    if limits is not None and args.device == "cpu":
        row["fraction_of_popcount_limit"] = pairs / limits[64]
        row["fraction_of_width_limit"] = pairs / width_limit(limits, w.bits)
    for name, t in times.items():
        print(f"time {name:12s} median {med[name] * 1e3:9.2f} ms = {w.q / med[name]:12,.0f} queries/s  "
              f"(rounds: {', '.join(f'{x * 1e3:.2f}' for x in t)})")
    return row


# --------------------------------------------------------------------------------------------
# Report


def fmt_ms(row: dict, name: str) -> str:
    value = row["median_s"].get(name)
    return "-" if value is None else f"{value * 1e3:.1f}"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| workload | ours ms | faiss heap ms | faiss count ms | torch ms | vs faiss | vs torch | G pairs/s "
        "| % of 64-bit limit | % of width limit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        heap = fmt_ms(r, "faiss heap") if not r["radius"] >= 0 else fmt_ms(r, "faiss range") + " (range)"
        count = fmt_ms(r, "faiss count") if not r["radius"] >= 0 else "-"
        vs_faiss = f"{r['vs_faiss']:.1f}x" if "vs_faiss" in r else "-"
        vs_torch = f"{r['vs_torch']:.0f}x" if "vs_torch" in r else "-"
        limit = f"{100 * r['fraction_of_popcount_limit']:.0f}%" if "fraction_of_popcount_limit" in r else "-"
        own = f"{100 * r['fraction_of_width_limit']:.0f}%" if "fraction_of_width_limit" in r else "-"
        what = f"r={r['radius']}" if r["radius"] >= 0 else f"k={r['k']}"
        name = f"{r['workload']} ({r['n']:,} x {r['bits']}b, Q={r['q']:,}, {what})"
        lines.append(
            f"| {name} | {fmt_ms(r, 'ours')} | {heap} | {count} | {fmt_ms(r, 'torch')} | {vs_faiss} | {vs_torch} "
            f"| {r['pairs_per_s'] / 1e9:.2f} | {limit} | {own} |"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="all", choices=[*WORKLOADS, "all"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds; medians are reported")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies N (quick checks: 0.05)")
    p.add_argument("--skip-torch", action="store_true", help="skip the (slow) pure-PyTorch baseline")
    p.add_argument("--torch-chunk", type=int, default=256, help="queries per matmul in the torch baseline")
    p.add_argument("--min-round-s", type=float, default=0.02,
                   help="calls shorter than this repeat within a round (per-call mean)")
    p.add_argument("--no-memory-check", action="store_true", help="skip W1's peak-memory subprocess")
    p.add_argument("--k", type=int, help="replaces k of the top-k workloads (e.g. 4096, the large-k selection)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--memory-probe", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.scale <= 0:
        p.error("--threads and --repeats must be >= 1 and --scale > 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available to torch")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_probe:
        memory_probe(args)
        return 0
    torch.set_num_threads(args.threads)
    if faiss is not None:
        faiss.omp_set_num_threads(args.threads)
    print_header(args)

    limits = None
    if args.device == "cpu":
        limits = {}
        for lane_bits in (64, 32):
            limits[lane_bits], note = popcount_limit(args.threads, lane_bits)
            note = re.sub(r" \(checksum \d+\)", "", note)
            print(f"popcount limit (benchmarks/popcount_limit.c, codes in L1): {note}")
        if None in limits.values():
            limits = None
    else:
        print("popcount limit: CPU micro-benchmark not applicable to --device cuda (not measured)")

    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    rows = []
    try:
        for name in names:
            w = WORKLOADS[name]
            if args.k and not w.is_radius:
                w = dataclasses.replace(w, k=args.k)
            row = run_workload(args, w, limits)
            if name == "W1" and not args.no_memory_check:
                mem = measure_peak_memory(args, w)
                row["peak_memory"] = mem
                if "error" in mem:
                    print(f"memory: probe failed: {mem['error']}")
                else:
                    verdict = "OK, far below" if mem["fraction_of_qxn"] < 0.1 else "WARNING: not far below"
                    print(f"memory: extra peak during our search {mem['extra_bytes'] / 2**20:.1f} MiB vs a Q x N "
                          f"int32 matrix {mem['qxn_int32_bytes'] / 2**20:.1f} MiB "
                          f"({100 * mem['fraction_of_qxn']:.2f}%: {verdict}; {mem['how']})")
            rows.append(row)
    except Mismatch as error:
        print(f"\nMISMATCH, not timing: {error}", file=sys.stderr)
        return 1

    print(f"\n### Hamming search, {args.device}, {args.threads} threads, median of {args.repeats} interleaved rounds"
          f"{'' if args.scale == 1 else f', scale {args.scale}'}\n")
    print(markdown_table(rows))
    notes = ["G pairs/s = Q * N / median time of ours."]
    if limits is not None:
        notes.append(f"% of 64-bit limit: against {limits[64] / 1e9:.2f} G pairs/s of 64-bit lanes (VPOPCNTQ; "
                     f"popcount_limit.c, {args.threads} threads).")
        notes.append(f"% of width limit: codes of up to 32 bits against {limits[32] / 1e9:.2f} G pairs/s of 32-bit "
                     "lanes (VPOPCNTD, the lanes ours uses for them); wider than 64 bits against the 64-bit limit "
                     "divided by the lanes per pair.")
    if any("faiss_best" in r for r in rows):
        notes.append("vs faiss = best faiss mode / ours: " + ", ".join(
            f"{r['workload']} {r['faiss_best']}" for r in rows if "faiss_best" in r) + ".")
    if args.device == "cuda":
        notes.append("faiss ran on the CPU; torch used float16 matmul on the GPU.")
    print("\n" + "\n".join(f"- {n}" for n in notes))

    if args.json:
        meta = {"cpu": cpu_model(), "torch": torch.__version__, "numpy": np.__version__,
                "faiss": getattr(faiss, "__version__", None), "cibhash_ext": cibhash_ext.__version__,
                "popcount_limit_pairs_per_s": limits, "argv": sys.argv}
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
