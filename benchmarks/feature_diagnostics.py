"""Where a trained run's retrieval quality is lost (issue 13): mAP@K of its codes next to mAP@K of
what the codes come from, and the purity of the neighbour positives it trains with.

    python benchmarks/feature_diagnostics.py RUN [RUN ...] --threads 2

For each run directory (of a labelled dataset), on the run's own queries and database:
- codes: the run's binary codes, ranked by Hamming distance (what the report measures);
- logits: the hash heads' real-valued outputs, ranked by cosine similarity (no binarisation);
- features: the backbone's features, ranked by cosine similarity (no hash head at all);
- ITQ on features: ITQ fitted on the training images' features, at each code length;
- purity: the share of same-class images among the 10 nearest training images of each training
  image, in pixel space (the first neighbour table) and in feature space (the refreshed one).
  Training never reads labels; this diagnostic does.
Every image is seen as encoding sees it (no augmentation, eval mode, the run's bf16 setting).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor

from cibhash_ext import ops
from cibhash_ext.baselines import ITQ
from cibhash_ext.data import load_dataset
from cibhash_ext.encode import load_model
from cibhash_ext.evaluation import _average_precision, mean_average_precision, relevance
from cibhash_ext.files import write_json
from cibhash_ext.neighbours import image_neighbours, nearest_neighbours
from cibhash_ext.pipeline import autocast, eval_batches


@torch.no_grad()
def _outputs(model, images) -> tuple[Tensor, dict[int, Tensor]]:
    """Backbone features and hash logits of every image, float32, computed as encoding computes them."""
    cfg, features, logits = model.config, [], {v: [] for v in model.code_lengths}
    with autocast(cfg.device, cfg.bf16):
        for x in eval_batches(images, model.transform, 1024):
            f = model.module.backbone(x.to(cfg.device)).float()
            features.append(f.cpu())
            for v, z in model.module(features=f).items():
                logits[v].append(z.cpu())
    return torch.cat(features), {v: torch.cat(z) for v, z in logits.items()}


def _cosine_map(query: Tensor, database: Tensor, query_labels: Tensor, database_labels: Tensor, k: int) -> float:
    """mAP@k ranking the database by cosine similarity, with the AP of the package's metrics."""
    query, database, k = F.normalize(query, dim=1), F.normalize(database, dim=1), min(k, len(database))
    aps = []
    for start in range(0, len(query), 1024):
        order = (query[start : start + 1024] @ database.T).topk(k, dim=1, sorted=True).indices
        aps.append(_average_precision(relevance(query_labels[start : start + 1024], database_labels[order]).double(), k))
    return float(torch.cat(aps).mean())


def _purity(table: Tensor, labels: Tensor) -> float:
    return float((labels[table] == labels[:, None]).double().mean())


def diagnose(run_dir: str, k_neighbours: int = 10) -> dict:
    model = load_model(run_dir, device="cpu")
    cfg = model.config
    data = load_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options())
    if data.query.labels is None or data.query.labels.dim() != 1:
        raise ValueError(f"{run_dir}: these diagnostics need single-label queries (a labelled dataset)")
    topk = cfg.topk or 1000
    ql, dl = data.query.labels, data.database.labels
    train_f, _ = _outputs(model, data.train)
    query_f, query_z = _outputs(model, data.query)
    db_f, db_z = _outputs(model, data.database)
    out = {"run": run_dir, "topk": topk, "features": _cosine_map(query_f, db_f, ql, dl, topk), "codes": {},
           "logits": {}, "itq_on_features": {}}
    for v in model.code_lengths:
        out["codes"][v] = mean_average_precision(ops.pack_bits(query_z[v]), ops.pack_bits(db_z[v]), ql, dl, topk)
        out["logits"][v] = _cosine_map(query_z[v], db_z[v], ql, dl, topk)
        itq = ITQ(v).fit(train_f)
        out["itq_on_features"][v] = mean_average_precision(itq.encode(query_f), itq.encode(db_f), ql, dl, topk)
    labels = data.train.labels
    out["purity"] = {"pixels": _purity(image_neighbours(data.train, k_neighbours), labels),
                     "features": _purity(nearest_neighbours(train_f, k_neighbours, dims=None), labels)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for run in args.runs:
        try:
            r = diagnose(run)
        except (ValueError, OSError) as exc:  # not a run directory, or a run without class labels
            parser.exit(2, f"feature_diagnostics.py: error: {exc}\n")
        results.append(r)
        lengths = list(r["codes"])
        row = lambda name: " / ".join(f"{r[name][v]:.4f}" for v in lengths)  # noqa: E731
        print(f"{run}: mAP@{r['topk']} at {'/'.join(map(str, lengths))} bits: codes {row('codes')}, logits "
              f"{row('logits')}, ITQ on features {row('itq_on_features')}; features {r['features']:.4f}; "
              f"purity of 10 neighbours: pixels {r['purity']['pixels']:.3f}, features {r['purity']['features']:.3f}")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
