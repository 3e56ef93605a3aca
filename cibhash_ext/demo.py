"""A self-contained tour of the kernels: logits -> binary codes -> packed codes -> exact search.

Run with ``python -m cibhash_ext.demo``. It draws random encoder logits (no model, no data), turns
them into codes with the binary layer, packs them and searches the database by Hamming distance,
printing a few results and the time of each step.
"""

from __future__ import annotations

import argparse
import time

import torch

from . import ops

__all__ = ["main"]


def _timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    print(f"{label:<44s} {1000 * (time.perf_counter() - start):9.1f} ms")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", type=int, default=1_000_000, help="database codes (default 1,000,000)")
    parser.add_argument("--queries", type=int, default=1000, help="query codes (default 1000)")
    parser.add_argument("--bits", type=int, default=64, help="code length in bits (default 64)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--radius", type=int, default=None, help="Hamming radius (default bits/4)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("database", "queries", "bits", "k"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.k > args.database:
        parser.error(f"--k must be <= --database ({args.database}), got {args.k}")
    radius = args.radius if args.radius is not None else args.bits // 4

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print(f"database {args.database:,} x {args.bits} bits, queries {args.queries:,}, k {args.k}, radius {radius}")
    db_logits = torch.randn(args.database, args.bits, device=device)
    q_logits = db_logits[: args.queries] + 0.5 * torch.randn(args.queries, args.bits, device=device)

    db_bits = _timed("stochastic_binarize (database, deterministic)", lambda: ops.stochastic_binarize(db_logits, stochastic=False))
    q_bits = ops.stochastic_binarize(q_logits, stochastic=True)
    database = _timed("pack_bits (database)", lambda: ops.pack_bits(db_bits))
    queries = ops.pack_bits(q_bits)
    dist, idx = _timed(f"hamming_topk (k={args.k})", lambda: ops.hamming_topk(queries, database, args.k))
    lims, _, _ = _timed(f"hamming_radius (radius={radius})", lambda: ops.hamming_radius(queries, database, radius))

    found_self = (idx[:, 0] == torch.arange(args.queries, device=device)).float().mean().item()
    print(f"query 0 neighbours: {idx[0, :5].tolist()} at distances {dist[0, :5].tolist()}")
    print(f"queries whose noisy source code is the nearest neighbour: {100 * found_self:.1f}%")
    print(f"mean matches within radius {radius}: {(lims[-1].item() / args.queries):.1f} per query")


if __name__ == "__main__":
    main()
