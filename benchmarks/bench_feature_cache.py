"""What the feature cache of a frozen backbone buys (issue 13): epochs of CIBHash with the frozen
EfficientNet-Lite0 run live on fresh views, against building a cache of K views once and training
the hash heads on cached views, on a Fashion-MNIST subset. Then the quality of each at equal epochs.

    python benchmarks/bench_feature_cache.py --images 2048 --size 64 --views 4 --epochs 3 --threads 2

That a cached epoch trains exactly as the live backbone on the same views is pinned by
python_tests/test_feature_cache.py; this script measures time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from cibhash_ext.data import load_fashion_mnist
from cibhash_ext.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="training images (a Fashion-MNIST subset)")
    parser.add_argument("--size", type=int, default=64, help="input side of the backbone")
    parser.add_argument("--views", type=int, default=4, help="K, the cached views per image")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_fashion_mnist(train_size=args.images, query_size=1000, database_size=10000)
    common = dict(backbone="efficientnet_lite0", augment={"size": args.size}, epochs=args.epochs,
                  batch_size=args.batch_size, baselines=(), eval_curves=False, progress=False, threads=args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for views in (0, args.views):
            started = time.time()
            metrics = train(data=data, run_dir=os.path.join(tmp, f"cache{views}"), feature_cache=views, **common).metrics
            total = time.time() - started
            epochs = [h["seconds"] for h in metrics["train"]["history"]]
            maps = [metrics["cibhash"][str(v)]["map"] for v in (16, 32, 64)]
            rows.append((views, metrics["train"]["prepare_seconds"] + metrics["train"]["seconds"],
                         sum(epochs) / len(epochs), total, maps))
    print(f"{args.images} Fashion-MNIST training images at {args.size}x{args.size}, batch {args.batch_size}, "
          f"{args.epochs} epochs, {args.threads} threads; queries 1,000 test images, database 10,000 train images")
    print("| feature cache | training s (cache and neighbour table included) | s per epoch | whole call s | mAP@1000 16 | 32 | 64 |")
    print("|---|---|---|---|---|---|---|")
    for views, seconds, per_epoch, total, maps in rows:
        name = "off (live backbone)" if views == 0 else f"{views} views"
        print(f"| {name} | {seconds:.1f} | {per_epoch:.2f} | {total:.1f} | " + " | ".join(f"{m:.4f}" for m in maps) + " |")
    print(f"speed-up per epoch: {rows[0][2] / rows[1][2]:.0f}x")


if __name__ == "__main__":
    main()
