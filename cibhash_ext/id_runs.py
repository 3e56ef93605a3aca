"""The ids an index holds, as sorted runs: what :meth:`HammingIndex.add` checks new ids against.

Checking an add's m ids against all n ids of the index with ``torch.isin`` sorts the n ids on every
add (1.2 s for an add of 10,000 ids to 9M). Here the ids live in sorted runs whose sizes at least
halve from one run to the next (a log-structured merge), so there are at most log2(n) + 1 runs:
a check is a binary search per run, O(m log^2 n), and an add sorts its own ids into a new run and
merges the smallest runs while a run is not at least twice the size of the next, so each id is
merged O(log n) times over all adds. Runs never change once made, so an :class:`IdRuns` can be
kept for one index state while the next state gets the extended one.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IdRuns"]


class IdRuns:
    """The ids of one index state (each once), for membership tests and the largest id.

    Memory: the ids once more, 8 bytes each, sorted.

    Args:
        ids (Tensor[n] int64): unique ids, in any order.
    """

    def __init__(self, ids: Tensor) -> None:
        self.runs: tuple[Tensor, ...] = (torch.sort(ids).values,) if ids.numel() else ()

    @classmethod
    def _of(cls, runs) -> "IdRuns":
        out = cls.__new__(cls)
        out.runs = tuple(runs)
        return out

    @classmethod
    def from_sorted(cls, ids: Tensor) -> "IdRuns":
        """Ids already in increasing order (an index's sequential ids): one run, no sort."""
        return cls._of((ids,) if ids.numel() else ())

    def __len__(self) -> int:
        return sum(run.numel() for run in self.runs)

    def max(self) -> int | None:
        """The largest id, or None when there are none."""
        return max((int(run[-1]) for run in self.runs), default=None)

    def present(self, ids: Tensor) -> Tensor:
        """Tensor[m] bool: which of ``ids`` (any order, on the runs' device) are among the ids."""
        found = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        for run in self.runs:
            at = torch.searchsorted(run, ids).clamp_(max=run.numel() - 1)
            found |= run[at] == ids
        return found

    def extended(self, ids: Tensor) -> "IdRuns":
        """These ids and ``ids`` (unique, none of them present) as a new :class:`IdRuns`."""
        if ids.numel() == 0:
            return self
        runs = list(self.runs)
        runs.append(torch.sort(ids).values)
        while len(runs) > 1 and runs[-2].numel() < 2 * runs[-1].numel():
            newer = runs.pop()
            older = runs.pop()
            joined = torch.cat([older, newer])
            # Ids that only grow (the common case: sequential or time-ordered keys) join in order.
            runs.append(joined if older[-1] < newer[0] else torch.sort(joined).values)
        return IdRuns._of(runs)
