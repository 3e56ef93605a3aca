"""IdRuns (the sorted runs an index checks new ids against) against a plain Python set."""

from __future__ import annotations

import numpy as np
import torch

from cibhash_ext.id_runs import IdRuns


def test_runs_answer_as_a_set_through_many_adds_and_stay_few():
    rng = np.random.default_rng(0)
    pool = rng.choice(1 << 40, 30_000, replace=False)
    first = torch.from_numpy(pool[:1_000])
    runs, held, at = IdRuns(first), set(first.tolist()), 1_000
    sizes = [1, 7, 500, 3, 2_000, 64, 1, 1, 9_000, 250] * 2
    for step, size in enumerate(sizes):
        new = torch.from_numpy(pool[at : at + size])
        if step % 3 == 0:  # some adds bring ids that only grow, as sequential keys do
            new = torch.sort(new).values + (1 << 41) + at
        before = runs
        runs = runs.extended(new)
        held |= set(new.tolist())
        at += size
        assert len(before) == len(held) - size  # the earlier runs are unchanged
        probe = torch.cat([new[:5], torch.from_numpy(pool[at : at + 50]), torch.tensor([-1, 0, 1 << 62])])
        assert runs.present(probe).tolist() == [v in held for v in probe.tolist()]
        assert runs.max() == max(held) and len(runs) == len(held)
        assert all(bool((run[1:] > run[:-1]).all()) for run in runs.runs)
        assert all(a.numel() >= 2 * b.numel() for a, b in zip(runs.runs, runs.runs[1:]))


def test_empty_and_sorted_runs():
    empty = IdRuns(torch.empty(0, dtype=torch.int64))
    assert empty.max() is None and len(empty) == 0
    assert empty.present(torch.tensor([0, 5])).tolist() == [False, False]
    assert empty.extended(torch.empty(0, dtype=torch.int64)) is empty
    sequential = IdRuns.from_sorted(torch.arange(10, 20))
    assert sequential.max() == 19 and sequential.present(torch.tensor([9, 10, 19, 20])).tolist() == [
        False, True, True, False]
    grown = sequential.extended(torch.tensor([3, 25]))
    assert grown.max() == 25 and grown.present(torch.tensor([3, 4, 25])).tolist() == [True, False, True]
