"""Retrieval metrics on packed binary codes: mAP@K, precision within a Hamming radius, precision@N
and the precision-recall curve, all on the extension's search ops in query chunks (bounded memory).

Ranking everywhere is by Hamming distance with equal distances ordered by the lower database index
(the tie rule of :func:`cibhash_ext.ops.hamming_topk`).

Codes may live on any device: the searches run there, and their results come to the CPU, where the
labels are taken (from any device) and the metrics computed.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from cibhash_ext import ops

__all__ = [
    "relevance",
    "average_precision_at_k",
    "mean_average_precision",
    "precision_within_radius",
    "precision_at_n",
    "precision_recall_curve",
    "evaluate_codes",
    "PRECISION_AT_N",
]


PRECISION_AT_N = (100, 200, 500, 1000, 2000, 5000)


def _check_inputs(
    query_codes: Tensor, database_codes: Tensor, query_labels: Tensor, database_labels: Tensor
) -> tuple[Tensor, Tensor]:
    """Checks the arguments; returns the labels on the CPU (see the module docstring)."""
    for name, codes in (("query_codes", query_codes), ("database_codes", database_codes)):
        if not isinstance(codes, Tensor) or codes.dtype != torch.uint8 or codes.dim() != 2:
            got = f"{codes.dtype} tensor of shape {tuple(codes.shape)}" if isinstance(codes, Tensor) else type(codes).__name__
            raise TypeError(f"{name} must be a 2-D uint8 tensor of packed codes, got {got}")
    if query_codes.shape[1] != database_codes.shape[1]:
        raise ValueError(
            f"query_codes and database_codes must have the same width, got {query_codes.shape[1]} and {database_codes.shape[1]} bytes"
        )
    if len(query_labels) != len(query_codes):
        raise ValueError(f"query_labels has {len(query_labels)} rows, query_codes {len(query_codes)}")
    if len(database_labels) != len(database_codes):
        raise ValueError(f"database_labels has {len(database_labels)} rows, database_codes {len(database_codes)}")
    if query_labels.dim() != database_labels.dim() or query_labels.dim() not in (1, 2):
        raise ValueError(
            "labels must be class indices [N] or multi-hot [N, C] for both queries and database, got "
            f"shapes {tuple(query_labels.shape)} and {tuple(database_labels.shape)}"
        )
    return query_labels.cpu(), database_labels.cpu()


def relevance(query_labels: Tensor, retrieved_labels: Tensor) -> Tensor:
    """Relevance of retrieved items: same class, or at least one shared label for multi-hot labels.

    Args:
        query_labels (Tensor[Q] int64, or Tensor[Q, C] multi-hot): the queries' labels.
        retrieved_labels (Tensor[Q, K] int64, or Tensor[Q, K, C] multi-hot): labels of the items
            retrieved for each query.

    Returns:
        Tensor[Q, K], bool.
    """
    if query_labels.dim() == 1:
        return retrieved_labels == query_labels[:, None]
    return (retrieved_labels.bool() & query_labels.bool()[:, None, :]).any(dim=-1)


def _relevant_counts(query_labels: Tensor, database_labels: Tensor) -> Tensor:
    """Number of relevant database items per query, Tensor[Q] int64."""
    if query_labels.dim() == 1:
        classes, counts = database_labels.unique(return_counts=True)
        per_class = dict(zip(classes.tolist(), counts.tolist()))
        return torch.tensor([per_class.get(c, 0) for c in query_labels.tolist()], dtype=torch.int64)
    db = database_labels.float()
    return torch.cat(
        [((q.float() @ db.t()) > 0).sum(dim=1) for q in query_labels.split(1024)]
    ).to(torch.int64)


def _ranked_relevance(query_codes, database_codes, query_labels, database_labels, k: int, chunk: int):
    """Yields, per chunk of queries, the relevance Tensor[q, k] (float64) of each query's top k in
    (distance, index) order."""
    for start in range(0, len(query_codes), chunk):
        _, idx = ops.hamming_topk(query_codes[start : start + chunk], database_codes, k)
        yield relevance(query_labels[start : start + chunk], database_labels[idx.cpu()]).double()


def _average_precision(rel: Tensor, topk: int) -> Tensor:
    """AP over the first ``topk`` columns of a relevance matrix; 0 for a row with no relevant item."""
    rel = rel[:, :topk]
    hits = rel.cumsum(dim=1)
    n_rel = hits[:, -1]
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    ap = (hits / ranks * rel).sum(dim=1) / n_rel.clamp(min=1)
    return torch.where(n_rel > 0, ap, torch.zeros_like(ap))


def average_precision_at_k(
    query_codes: Tensor,
    database_codes: Tensor,
    query_labels: Tensor,
    database_labels: Tensor,
    topk: int,
    chunk: int = 1024,
) -> Tensor:
    """Average precision of each query over its top K by Hamming distance.

    ``AP = (1 / R) * sum_{i <= K} precision@i * rel(i)`` where R is the number of relevant items in
    the top K; a query with no relevant item in its top K has AP 0. Ranking: (distance, index).

    Args:
        query_codes (Tensor[Q, B], uint8): packed query codes.
        database_codes (Tensor[N, B], uint8): packed database codes.
        query_labels (Tensor[Q] int64 or Tensor[Q, C] multi-hot): query labels.
        database_labels (Tensor[N] int64 or Tensor[N, C] multi-hot): database labels.
        topk (int): K (clipped to N).
        chunk (int): queries per search call; memory is O(chunk * K).

    Returns:
        Tensor[Q], float64: AP of each query.
    """
    query_labels, database_labels = _check_inputs(query_codes, database_codes, query_labels, database_labels)
    if topk <= 0:
        raise ValueError(f"topk must be > 0, got {topk}")
    k = min(int(topk), len(database_codes))
    if len(query_codes) == 0 or k == 0:
        return torch.zeros(len(query_codes), dtype=torch.float64)
    parts = [_average_precision(rel, k) for rel in _ranked_relevance(query_codes, database_codes, query_labels, database_labels, k, chunk)]
    return torch.cat(parts)


def mean_average_precision(
    query_codes: Tensor, database_codes: Tensor, query_labels: Tensor, database_labels: Tensor, topk: int, chunk: int = 1024
) -> float:
    """mAP@K: the mean of :func:`average_precision_at_k` over the queries (same arguments); 0 without queries."""
    if len(query_codes) == 0:
        return 0.0
    return float(average_precision_at_k(query_codes, database_codes, query_labels, database_labels, topk, chunk).mean())


def precision_within_radius(
    query_codes: Tensor,
    database_codes: Tensor,
    query_labels: Tensor,
    database_labels: Tensor,
    radius: int = 2,
    chunk: int = 256,
) -> float:
    """Mean precision of the items within Hamming distance ``<= radius`` (a query retrieving nothing counts 0).

    Args:
        query_codes, database_codes, query_labels, database_labels: as in :func:`average_precision_at_k`.
        radius (int): Hamming radius (2 in the usual protocol).
        chunk (int): queries per search call.

    Returns:
        float: the mean precision.
    """
    query_labels, database_labels = _check_inputs(query_codes, database_codes, query_labels, database_labels)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if len(query_codes) == 0:
        return 0.0
    total = 0.0
    for start in range(0, len(query_codes), chunk):
        q_labels = query_labels[start : start + chunk]
        lims, _, idx = (t.cpu() for t in ops.hamming_radius(query_codes[start : start + chunk], database_codes, radius))
        counts = lims[1:] - lims[:-1]
        owner = torch.repeat_interleave(torch.arange(len(counts)), counts)
        rel = relevance(q_labels[owner], database_labels[idx][:, None])
        hits = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, owner, rel.flatten().double())
        total += float((hits / counts.clamp(min=1)).sum())
    return total / len(query_codes)


def precision_at_n(
    query_codes: Tensor,
    database_codes: Tensor,
    query_labels: Tensor,
    database_labels: Tensor,
    ns: Sequence[int] = PRECISION_AT_N,
    chunk: int = 512,
) -> dict[int, float]:
    """Mean precision of the top N by Hamming distance ((distance, index) order), for each N in ``ns``.

    Returns:
        dict mapping N (clipped to the database size) to the mean precision.
    """
    query_labels, database_labels = _check_inputs(query_codes, database_codes, query_labels, database_labels)
    ns = sorted({min(int(n), len(database_codes)) for n in ns if int(n) > 0})
    if not ns or len(query_codes) == 0:
        return {n: 0.0 for n in ns}
    at = torch.tensor([n - 1 for n in ns])
    sums = torch.zeros(len(ns), dtype=torch.float64)
    for rel in _ranked_relevance(query_codes, database_codes, query_labels, database_labels, ns[-1], chunk):
        sums += rel.cumsum(dim=1)[:, at].sum(dim=0)
    return {n: float(s) / (n * len(query_codes)) for n, s in zip(ns, sums.tolist())}


def precision_recall_curve(
    query_codes: Tensor, database_codes: Tensor, query_labels: Tensor, database_labels: Tensor, nbits: int, chunk: int = 256
) -> dict[str, list[float]]:
    """Precision and recall of "everything within Hamming radius r", for r = 0 .. nbits.

    Per query, precision(r) = relevant within r / retrieved within r (queries retrieving nothing at r
    are left out of that radius's mean) and recall(r) = relevant within r / all relevant items
    (queries with no relevant item are left out). Distances come from ``ops.hamming_distance`` on
    chunks of queries, reduced at once to per-radius histograms.

    Returns:
        dict with lists ``radius``, ``precision``, ``recall`` (length nbits + 1).
    """
    query_labels, database_labels = _check_inputs(query_codes, database_codes, query_labels, database_labels)
    if nbits <= 0 or (nbits + 7) // 8 != query_codes.shape[1]:
        raise ValueError(f"nbits must be the code length ({query_codes.shape[1]} bytes), got {nbits}")
    bins = nbits + 1
    totals = _relevant_counts(query_labels, database_labels).double()
    single = query_labels.dim() == 1
    if single:
        # Sorting the database by label makes each class a contiguous column range of a distance
        # chunk, so a query's relevant histogram counts one slice instead of masking all N columns.
        # The curve depends on distances only, not on the order of the database.
        order = torch.argsort(database_labels, stable=True)
        database_codes, database_labels = database_codes[order.to(database_codes.device)], database_labels[order]
        classes, counts = torch.unique_consecutive(database_labels, return_counts=True)
        ends = counts.cumsum(0)
        ranges = {c: (int(e - n), int(e)) for c, n, e in zip(classes.tolist(), counts.tolist(), ends.tolist())}
    prec_sum = torch.zeros(bins, dtype=torch.float64)
    prec_n = torch.zeros(bins, dtype=torch.float64)
    rec_sum = torch.zeros(bins, dtype=torch.float64)
    rec_n = 0
    for start in range(0, len(query_codes), chunk):
        dist = ops.hamming_distance(query_codes[start : start + chunk], database_codes).cpu()
        q = len(dist)
        q_labels = query_labels[start : start + chunk]
        # Row r's distances become r * bins + d: one bincount gives every query's histogram.
        dist.add_((torch.arange(q, dtype=torch.int32) * bins)[:, None])
        retrieved = torch.bincount(dist.view(-1), minlength=q * bins)
        if single:
            relevant = torch.zeros(q * bins, dtype=torch.int64)
            for c in q_labels.unique().tolist():
                if c in ranges:
                    rows = (q_labels == c).nonzero().flatten()
                    lo, hi = ranges[c]
                    relevant += torch.bincount(dist[rows, lo:hi].flatten(), minlength=q * bins)
        else:
            rel = (q_labels.float() @ database_labels.float().t()) > 0
            relevant = torch.bincount(dist[rel], minlength=q * bins)
        retrieved = retrieved.view(q, bins).cumsum(dim=1).double()
        relevant = relevant.view(q, bins).cumsum(dim=1).double()
        has = retrieved > 0
        prec_sum += torch.where(has, relevant / retrieved.clamp(min=1), torch.zeros_like(relevant)).sum(dim=0)
        prec_n += has.double().sum(dim=0)
        total = totals[start : start + chunk]
        keep = total > 0
        rec_sum += (relevant[keep] / total[keep, None]).sum(dim=0)
        rec_n += int(keep.sum())
    precision = torch.where(prec_n > 0, prec_sum / prec_n.clamp(min=1), torch.zeros_like(prec_sum))
    recall = rec_sum / max(rec_n, 1)
    return {"radius": list(range(bins)), "precision": precision.tolist(), "recall": recall.tolist()}


def evaluate_codes(
    query_codes: Tensor,
    database_codes: Tensor,
    query_labels: Tensor,
    database_labels: Tensor,
    nbits: int,
    topk: int,
    curves: bool = True,
) -> dict:
    """Every metric for one code length: mAP@K, precision within radius 2, and optionally precision@N
    (for the N of :data:`PRECISION_AT_N` up to K, from the same top-K search) and the precision-recall
    curve. Arguments as in the functions above.

    Returns:
        dict: ``map``, ``topk``, ``precision_radius2`` and, with ``curves``, ``precision_at_n`` and ``pr_curve``.
    """
    query_labels, database_labels = _check_inputs(query_codes, database_codes, query_labels, database_labels)
    if topk <= 0:
        raise ValueError(f"topk must be > 0, got {topk}")
    k = min(int(topk), len(database_codes))
    ns = sorted({min(n, k) for n in PRECISION_AT_N}) if curves and k > 0 else []
    ap_sum, p_sums = 0.0, torch.zeros(len(ns), dtype=torch.float64)
    at = torch.tensor([n - 1 for n in ns], dtype=torch.int64)
    # One top-k search serves mAP@K and precision@N (N <= K).
    ranked = _ranked_relevance(query_codes, database_codes, query_labels, database_labels, k, 1024) if k else []
    for rel in ranked:
        ap_sum += float(_average_precision(rel, k).sum())
        if ns:
            p_sums += rel.cumsum(dim=1)[:, at].sum(dim=0)
    nq = max(len(query_codes), 1)
    result = {
        "map": ap_sum / nq,
        "topk": k,
        "precision_radius2": precision_within_radius(query_codes, database_codes, query_labels, database_labels, 2),
    }
    if curves:
        result["precision_at_n"] = {str(n): float(v) / (n * nq) for n, v in zip(ns, p_sums.tolist())}
        result["pr_curve"] = precision_recall_curve(query_codes, database_codes, query_labels, database_labels, nbits)
    return result
