"""Times two builds of cibhash_ext against each other: bench_binarize.py, bench_hamming.py and
bench_latency.py (one query at a time, ours alone), this checkout's copies of them, run alternately
with each checkout's package (A B B A ...), one process per run, and the "ours" medians are compared.

Two builds cannot share a process (both register the ``cibhash_ext`` ops), so the interleaving is
by process; alternating the order each round cancels slow drifts of a shared machine. Prints one
table per benchmark: the median over runs of each build's median, and new / old (below 1: faster).

    .venv/bin/python benchmarks/compare_builds.py --old /tmp/cibhash_old --new . --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# (script, arguments, how a result row is named, which timings of a row are ours)
BENCHES = {
    "binarize": ("bench_binarize.py", ["--repeats", "3"], lambda r: "x".join(map(str, r["shape"])),
                 ["ours fwd+bwd", "ours fwd"]),
    "hamming": ("bench_hamming.py", ["--repeats", "3", "--skip-torch", "--no-memory-check"], lambda r: r["workload"],
                ["ours"]),
    "latency": ("bench_latency.py", ["--no-faiss", "--rounds", "15"],
                lambda r: f"n={r['n']:,} batch {r['batch']} {r['search']}", ["ours"]),
}


def run_once(checkout: Path, bench: str, threads: int, more: list[str]) -> dict[str, float]:
    script, extra, name_of, keys = BENCHES[bench]
    extra = extra + more
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        cmd = [sys.executable, str(HERE / script), "--threads", str(threads), *extra, "--json",
               str(out)]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=checkout)
        rows = json.loads(out.read_text())["results"]
    return {f"{name_of(r)} {key}": r["median_s"][key] for r in rows for key in keys}


def library_of(checkout: Path) -> str:
    code = "import cibhash_ext._C as c, torch; print(c.__file__, torch.__version__)"
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(checkout)},
                          capture_output=True, text=True, check=True, cwd=checkout).stdout.strip()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", type=Path, required=True, help="checkout of the reference build (built in place)")
    p.add_argument("--new", type=Path, default=Path("."), help="checkout of the build under test (built in place)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each build per benchmark")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bench", choices=[*BENCHES, "all"], default="all")
    p.add_argument("--workload", default="all", help="bench_hamming.py's --workload")
    p.add_argument("--scale", default="1.0", help="bench_hamming.py's --scale")
    p.add_argument("--latency-n", nargs="+", default=["1000000", "10000000"], help="bench_latency.py's --n")
    p.add_argument("--json", type=Path, help="write every run's timings here")
    args = p.parse_args(argv)
    builds = {"old": args.old.resolve(), "new": args.new.resolve()}
    for label, checkout in builds.items():
        print(f"{label}: {library_of(checkout)}")
    record = {}
    for bench in BENCHES if args.bench == "all" else [args.bench]:
        runs = {"old": [], "new": []}
        for i in range(args.rounds):
            for label in ("old", "new") if i % 2 == 0 else ("new", "old"):
                more = {"hamming": ["--workload", args.workload, "--scale", args.scale],
                        "latency": ["--n", *args.latency_n]}.get(bench, [])
                runs[label].append(run_once(builds[label], bench, args.threads, more))
                print(f"{bench} round {i + 1} {label} done", flush=True)
        record[bench] = runs
        print(f"\n{bench}, {args.threads} threads, {args.rounds} runs of each build (times: median of runs, ms)\n")
        print("| case | old ms | new ms | new / old | old runs | new runs |\n|---|---:|---:|---:|---|---|")
        for case in runs["old"][0]:
            old = [r[case] * 1e3 for r in runs["old"]]
            new = [r[case] * 1e3 for r in runs["new"]]
            fmt = lambda xs: ", ".join(f"{x:.3g}" for x in xs)  # noqa: E731
            print(f"| {case} | {np.median(old):.3f} | {np.median(new):.3f} | {np.median(new) / np.median(old):.2f} "
                  f"| {fmt(old)} | {fmt(new)} |")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
