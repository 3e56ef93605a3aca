"""Tests of cibhash_ext.evaluation: a hand-computed case and a slow brute-force reference."""

import numpy as np
import pytest
import torch

from cibhash_ext import ops
from cibhash_ext.evaluation import (
    average_precision_at_k,
    evaluate_codes,
    mean_average_precision,
    precision_at_n,
    precision_recall_curve,
    precision_within_radius,
    relevance,
)
from conftest import needs_cuda


def bits(rows):
    return ops.pack_bits(torch.tensor(rows, dtype=torch.float32))


def test_hand_computed_map_with_a_tie():
    # Query 0000. Database distances: [1, 0, 1, 3, 2]; labels [A, B, A, A, B], query label A.
    # Ranking by (distance, index): idx 1 (d0, B), 0 (d1, A), 2 (d1, A: tie, lower index first),
    # 4 (d2, B), 3 (d3, A). Relevance 0,1,1,0,1.
    q = bits([[0, 0, 0, 0]])
    db = bits([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]])
    ql, dl = torch.tensor([0]), torch.tensor([0, 1, 0, 0, 1])
    # top 5: precisions at relevant ranks 2, 3, 5 = 1/2, 2/3, 3/5; AP = (1/2 + 2/3 + 3/5) / 3.
    assert mean_average_precision(q, db, ql, dl, 5) == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    # top 3: relevant at ranks 2, 3 -> AP = (1/2 + 2/3) / 2 (averaged over relevant items found).
    assert mean_average_precision(q, db, ql, dl, 3) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # top 1: nothing relevant found -> 0.
    assert mean_average_precision(q, db, ql, dl, 1) == 0.0
    # The tie rule matters: swap labels of the tied items 0 and 2 -> the same AP (both relevant),
    # but make only item 2 relevant and the AP at K=2 is 0 (item 0 ranks before it).
    assert mean_average_precision(q, db, ql, torch.tensor([1, 1, 0, 0, 1]), 2) == 0.0
    assert mean_average_precision(q, db, ql, torch.tensor([0, 1, 1, 0, 1]), 2) == pytest.approx(1 / 2)
    # Radius 1: items 1, 0, 2 retrieved, 2 relevant -> 2/3. Radius 0: item 1 only, irrelevant -> 0.
    assert precision_within_radius(q, db, ql, dl, 1) == pytest.approx(2 / 3)
    assert precision_within_radius(q, db, ql, dl, 0) == 0.0
    assert precision_at_n(q, db, ql, dl, ns=(1, 3, 5)) == pytest.approx({1: 0.0, 3: 2 / 3, 5: 3 / 5})


def slow_reference(q, db, ql, dl, topk, radius, nbits):
    """Brute force with NumPy: XOR popcounts, stable argsort, explicit per-query loops."""
    qb = np.unpackbits(q.numpy(), axis=1, bitorder="little")[:, :nbits]
    dbb = np.unpackbits(db.numpy(), axis=1, bitorder="little")[:, :nbits]
    ql, dl = ql.numpy(), dl.numpy()
    aps, rad, curves = [], [], []
    for i in range(len(qb)):
        dist = (qb[i][None, :] != dbb).sum(1)
        order = np.argsort(dist, kind="stable")
        if ql.ndim == 1:
            rel = (dl == ql[i]).astype(float)
        else:
            rel = ((dl & ql[i][None, :]).sum(1) > 0).astype(float)
        r = rel[order][:topk]
        ap = sum(r[: j + 1].sum() / (j + 1) for j in range(len(r)) if r[j]) / r.sum() if r.sum() else 0.0
        aps.append(ap)
        within = dist <= radius
        rad.append(rel[within].sum() / within.sum() if within.sum() else 0.0)
        curves.append((dist, rel))
    return np.array(aps), float(np.mean(rad)), curves


@pytest.mark.parametrize("nbits,multi", [(16, False), (13, False), (32, True)])
def test_against_slow_reference(nbits, multi):
    g = torch.Generator().manual_seed(nbits)
    nq, ndb = 37, 301
    # Few distinct codes so that many distances tie.
    base = torch.randint(0, 2, (12, nbits), generator=g)
    q = ops.pack_bits(base[torch.randint(0, 12, (nq,), generator=g)].float())
    db = ops.pack_bits(base[torch.randint(0, 12, (ndb,), generator=g)].float())
    if multi:
        ql = (torch.rand(nq, 5, generator=g) < 0.3).to(torch.uint8)
        dl = (torch.rand(ndb, 5, generator=g) < 0.3).to(torch.uint8)
    else:
        ql, dl = torch.randint(0, 4, (nq,), generator=g), torch.randint(0, 4, (ndb,), generator=g)
    aps, rad, curves = slow_reference(q, db, ql, dl, 50, 2, nbits)
    assert len(np.unique(curves[0][0])) < ndb  # ties really occur
    np.testing.assert_allclose(average_precision_at_k(q, db, ql, dl, 50, chunk=8).numpy(), aps, rtol=1e-12)
    assert precision_within_radius(q, db, ql, dl, 2, chunk=5) == pytest.approx(rad)
    pr = precision_recall_curve(q, db, ql, dl, nbits, chunk=7)
    for r in (0, 3, nbits):
        precisions = [rel[d <= r].sum() / (d <= r).sum() for d, rel in curves if (d <= r).sum()]
        recalls = [rel[d <= r].sum() / rel.sum() for d, rel in curves if rel.sum()]
        assert pr["precision"][r] == pytest.approx(np.mean(precisions))
        assert pr["recall"][r] == pytest.approx(np.mean(recalls))
    assert pr["recall"][nbits] == pytest.approx(1.0)
    p_at_n = precision_at_n(q, db, ql, dl, ns=(10, 40), chunk=6)
    for n in (10, 40):
        expected = np.mean([rel[np.argsort(d, kind="stable")[:n]].mean() for d, rel in curves])
        assert p_at_n[n] == pytest.approx(expected)


def test_evaluate_codes_keys_and_perfect_codes():
    labels = torch.arange(4).repeat_interleave(5)
    # Four bits per class: codes of different classes are 8 apart, beyond radius 2.
    codes = ops.pack_bits(torch.nn.functional.one_hot(labels, 4).repeat_interleave(4, dim=1).float())
    result = evaluate_codes(codes, codes, labels, labels, 16, topk=5)
    assert result["map"] == pytest.approx(1.0)
    assert result["precision_radius2"] == pytest.approx(1.0)
    assert set(result) == {"map", "topk", "precision_radius2", "precision_at_n", "pr_curve"}


def test_relevance_multi_hot():
    ql = torch.tensor([[1, 0, 1]], dtype=torch.uint8)
    retrieved = torch.tensor([[[0, 1, 0], [0, 0, 1], [1, 1, 1]]], dtype=torch.uint8)
    assert relevance(ql, retrieved).tolist() == [[False, True, True]]


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: mean_average_precision(torch.zeros(2, 2), torch.zeros(3, 2, dtype=torch.uint8), torch.zeros(2), torch.zeros(3), 1), "uint8"),
        (lambda: mean_average_precision(torch.zeros(2, 2, dtype=torch.uint8), torch.zeros(3, 4, dtype=torch.uint8), torch.zeros(2), torch.zeros(3), 1), "same width"),
        (lambda: mean_average_precision(torch.zeros(2, 2, dtype=torch.uint8), torch.zeros(3, 2, dtype=torch.uint8), torch.zeros(5), torch.zeros(3), 1), "query_labels"),
        (lambda: mean_average_precision(torch.zeros(2, 2, dtype=torch.uint8), torch.zeros(3, 2, dtype=torch.uint8), torch.zeros(2), torch.zeros(3), 0), "topk"),
        (lambda: precision_recall_curve(torch.zeros(2, 2, dtype=torch.uint8), torch.zeros(3, 2, dtype=torch.uint8), torch.zeros(2), torch.zeros(3), 32), "nbits"),
    ],
)
def test_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_evaluate_codes_agrees_with_the_single_metric_functions():
    g = torch.Generator().manual_seed(9)
    q = torch.randint(0, 256, (40, 2), dtype=torch.uint8, generator=g)
    db = torch.randint(0, 256, (1500, 2), dtype=torch.uint8, generator=g)
    ql, dl = torch.randint(0, 5, (40,), generator=g), torch.randint(0, 5, (1500,), generator=g)
    result = evaluate_codes(q, db, ql, dl, 16, topk=1000)
    assert result["map"] == pytest.approx(mean_average_precision(q, db, ql, dl, 1000))
    expected = precision_at_n(q, db, ql, dl, ns=(100, 200, 500, 1000))
    assert result["precision_at_n"] == pytest.approx({str(n): v for n, v in expected.items()})
    assert result["pr_curve"] == precision_recall_curve(q, db, ql, dl, 16)


@pytest.mark.parametrize("multi", [False, True], ids=["classes", "multi_hot"])
@pytest.mark.parametrize("label_device", ["cpu", "cuda"])
@needs_cuda
def test_cuda_codes_give_the_cpu_metrics(label_device, multi):
    """Codes on a GPU, labels on either device: the same numbers as on the CPU (issue 11, fix 6)."""
    g = torch.Generator().manual_seed(4)
    q = torch.randint(0, 256, (30, 2), dtype=torch.uint8, generator=g)
    db = torch.randint(0, 256, (700, 2), dtype=torch.uint8, generator=g)
    if multi:
        ql, dl = torch.randint(0, 2, (30, 4), generator=g), torch.randint(0, 2, (700, 4), generator=g)
    else:
        ql, dl = torch.randint(0, 5, (30,), generator=g), torch.randint(0, 5, (700,), generator=g)
    want = evaluate_codes(q, db, ql, dl, 16, topk=100)
    got = evaluate_codes(q.cuda(), db.cuda(), ql.to(label_device), dl.to(label_device), 16, topk=100)
    assert got == want
    assert average_precision_at_k(q.cuda(), db.cuda(), ql, dl, 50).equal(average_precision_at_k(q, db, ql, dl, 50))
