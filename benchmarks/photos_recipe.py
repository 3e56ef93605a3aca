"""How the photos recipe was chosen (issue 21, item 1): CIBHash on the frozen EfficientNet-Lite0 with
the feature cache, trained under several settings on a folder built by ``benchmarks/photos.py``, each
scored by P@10 of its codes on the benchmark's held-out queries.

The feature cache is a function of the training images, the seed and the number of views alone
(``python_tests/test_feature_cache.py``), and view k of a K-view cache is view k of any larger one;
so it is computed once, with the most views any setting asks for, kept in OUT/recipe/, and each run
takes its first K views instead of computing them again. The backbone's features of the database
files and the queries (no augmentation) are kept too, and each run's codes are its heads' logits on
them, in the run's bf16 setting, as ``cibhash_ext.encode`` computes them from the images.

    python benchmarks/photos.py --out /tmp/photos --backbones ""        # builds the folder only
    python benchmarks/photos_recipe.py --out /tmp/photos \\
        'base={"epochs": 20, "batch_size": 256}' 'recipe={}' 'k2={"feature_cache": 2}'

Each SETTING is NAME=JSON: train() settings over the photos recipe (``{}`` is the recipe itself).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import photos as bench  # noqa: E402  (the benchmark's folder, truth and scores)

import cibhash_ext  # noqa: E402
from cibhash_ext import ops, training  # noqa: E402
from cibhash_ext.pipeline import autocast  # noqa: E402

CODE_LENGTHS = (16, 32, 64)


def _stored_cache(folder: str, most_views: int):
    """A stand-in for training.feature_cache that computes ``most_views`` views once per seed and
    augmentation, stores them under ``folder`` and returns the first K of them."""
    compute = training.feature_cache

    def feature_cache(model, source, views, device="cpu", bf16=False):
        if views > most_views:
            raise SystemExit(f"error: a setting asks for {views} cached views, more than --most-views {most_views}")
        key = hashlib.sha256(repr((source.seed, source.aug, bf16)).encode()).hexdigest()[:12]
        path = os.path.join(folder, f"cache-{most_views}-{key}.pt")
        if not os.path.isfile(path):
            torch.save(compute(model, source, most_views, device, bf16), path)
        return torch.load(path, weights_only=True)[:, :views]

    return feature_cache


def run(args: argparse.Namespace) -> dict:
    truth = bench.read_json(os.path.join(args.out, "truth.json"), "benchmark truth")
    database_paths, database_photo = bench.ordered_truth(args.out, truth, "database")
    query_paths, query_photo = bench.ordered_truth(args.out, truth, "queries")
    folder = os.path.join(args.out, "recipe")
    os.makedirs(folder, exist_ok=True)
    original = training.feature_cache
    training.feature_cache = _stored_cache(folder, args.most_views)
    try:
        return _train_and_score(args, folder, database_paths, database_photo, query_paths, query_photo)
    finally:
        training.feature_cache = original


def _train_and_score(args, folder, database_paths, database_photo, query_paths, query_photo) -> dict:
    results = {}
    for spec in args.settings:
        name, _, text = spec.partition("=")
        settings = {"threads": args.threads, "seed": args.seed, "evaluate": False, "progress": False,
                    **json.loads(text or "{}")}
        run_dir = os.path.join(folder, "runs", name)
        shutil.rmtree(run_dir, ignore_errors=True)  # each run anew
        started = time.time()
        cibhash_ext.train(data=os.path.join(args.out, "photos"), run_dir=run_dir, **settings)
        seconds = time.time() - started
        model = cibhash_ext.load_model(run_dir)
        if model.config.backbone != "efficientnet_lite0" or not model.config.feature_cache:
            raise SystemExit(f"error: {name}: this script measures the frozen efficientnet_lite0 with the feature cache")
        features_file = os.path.join(folder, "features-{}-{}.pt".format(model.input_shape[-1], model.config.bf16))
        if not os.path.isfile(features_file):
            torch.save((bench.backbone_features(model, database_paths), bench.backbone_features(model, query_paths)),
                       features_file)
        database_features, query_features = torch.load(features_file, weights_only=True)
        with torch.no_grad(), autocast("cpu", model.config.bf16):
            database_logits, query_logits = model.module(features=database_features), model.module(features=query_features)
        scores = {str(v): bench.ranking_scores(
            bench.hamming_ranking(ops.pack_bits(query_logits[v]), ops.pack_bits(database_logits[v]), v),
            query_photo, database_photo) for v in CODE_LENGTHS}
        cfg = model.config
        results[name] = {"settings": settings, "feature_cache": cfg.feature_cache, "epochs": cfg.epochs,
                         "batch_size": cfg.batch_size, "scores": scores, "train_seconds": seconds}
        print(f"{name}: feature cache {cfg.feature_cache}, {cfg.epochs} epochs of batch {cfg.batch_size}: P@10 "
              + " / ".join(f"{scores[str(v)]['p_at_10']:.3f}" for v in CODE_LENGTHS) + f" ({seconds:.0f} s)", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a folder built by benchmarks/photos.py")
    parser.add_argument("settings", nargs="+", metavar="NAME=JSON")
    parser.add_argument("--most-views", type=int, default=4, help="views of the stored feature cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run(args)
    bench.write_json(os.path.join(args.out, "recipe", "results.json"), results)


if __name__ == "__main__":
    main()
