"""ShardedHammingIndex: exact Hamming search over a database split across torch.distributed ranks
(gloo on CPU, NCCL on GPU), merged with the tie rule of a single-process search of the whole database.

Protocol of every call (all ranks must make the same calls in the same order, as with any collective):

1. status exchange: each rank all_gathers a small int64 status tensor (ok flag, a few integers, and
   the text of its error if any). When any rank failed (a missing or corrupt shard file, bad search
   arguments on rank 0, an error in a local search), every rank raises: the failing rank its own
   exception, the others :class:`ShardError` naming the failing rank and its message. No rank is
   left waiting in a collective the failing rank never joins.
2. rank 0's queries are broadcast (the ``queries`` passed on other ranks are ignored).
3. each rank searches its shard, exchanges status again, then all_gathers its results; every rank
   merges them and returns the same answer.

Ranks that die or stop calling are caught by the process group's timeout, which applies to every
collective: create the group with one (``init_process_group`` of :mod:`cibhash_ext.distributed`
defaults to 60 s; torch's own default is 10 minutes for gloo, and NCCL needs
``TORCH_NCCL_ASYNC_ERROR_HANDLING=1``, the default since torch 2.2, to turn a timeout into an error). The NCCL path moves the exchanged tensors to the
current CUDA device; it is not exercised by this project's CPU-only CI.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from cibhash_ext.distributed import init_process_group
from cibhash_ext.index import HammingIndex, _State, merge_topk, sort_matches

__all__ = ["ShardedHammingIndex", "ShardError", "init_process_group"]

_MESSAGE_BYTES = 512
_GLOBAL_IDS = ("shard", "position")


class ShardError(RuntimeError):
    """Raised on every rank when another rank's shard failed; names that rank and its error."""


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class ShardedHammingIndex:
    """One shard per rank of a database searched as a whole.

    The database is the concatenation of the shards in rank order; results are identical to a
    single-process :class:`HammingIndex` search of that database: ordered by (distance, global
    position), where the global position of a code is the number of codes on lower ranks plus
    its position in its shard. With the default ``global_ids="shard"`` results carry the shards'
    own ids (which must be distinct across shards; this is not checked); with
    ``global_ids="position"`` the global positions are the ids. Every rank returns the full result.

    Threads: other threads of a rank may ``add`` to or ``remove_ids`` from its shard while a
    search runs. Each search picks up every shard's state once, at its start (see
    :class:`~cibhash_ext.index.HammingIndex`), and exchanges the shard sizes it picked up, so its
    global positions and ids all come from those states. ``len()``, ``shard_sizes`` and ``offset``
    are those of the construction or of the last search. The searches themselves are collectives:
    one thread per rank calls them, in the same order on every rank.

    Construction is collective: all ranks construct together, and a rank whose shard is missing
    makes every rank raise (see the module docstring). Prefer :meth:`from_file`, which reports a
    failing load that way.

    Args:
        shard (HammingIndex): this rank's codes (CPU, or this rank's CUDA device under NCCL).
        global_ids (str): "shard" or "position", see above.
        group (ProcessGroup, optional): default: the default group.
    """

    def __init__(self, shard: HammingIndex, global_ids: str = "shard", group=None) -> None:
        error = None
        if not isinstance(shard, HammingIndex):
            error = TypeError(f"shard must be a HammingIndex, got {type(shard).__name__}")
        elif global_ids not in _GLOBAL_IDS:
            error = ValueError(f"global_ids must be one of {_GLOBAL_IDS}, got {global_ids!r}")
        self._setup(shard if error is None else None, global_ids, group, error)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, split: bool = False, mmap: bool = True, verify: bool = True, group=None
    ) -> "ShardedHammingIndex":
        """Opens this rank's shard from an index file, collectively.

        Args:
            path (str or PathLike): this rank's own file (``split=False``), or a file shared by all
                ranks (``split=True``): rank r then holds rows [r*n//W, (r+1)*n//W) of it, a
                memory-mapped slice.
            split (bool): see ``path``.
            mmap (bool), verify (bool): as in :meth:`HammingIndex.load`.
            group (ProcessGroup, optional): default: the default group.

        Ids are the file's ids, or the positions in the file when it stores none (for ``split``,
        the row numbers of the whole file).

        Raises:
            ShardError: on every rank when any rank failed to open its shard (the failing rank
                raises its own FileNotFoundError or ValueError).
        """
        shard, error = None, None
        try:
            shard = HammingIndex.load(path, mmap=mmap, verify=verify)
            if split:
                rank, world = dist.get_rank(group), dist.get_world_size(group)
                shard = shard.slice(rank * len(shard) // world, (rank + 1) * len(shard) // world)
        except Exception as exc:  # reported to every rank by the status exchange
            error = exc
        self = cls.__new__(cls)
        self._setup(shard, "shard", group, error)
        return self

    def _setup(self, shard: HammingIndex | None, global_ids: str, group, error: BaseException | None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        backend = dist.get_backend(group)
        nccl = backend == "nccl"
        self._comm_device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        values = [len(shard), shard.nbits] if error is None else [0, 0]
        status = self._exchange_status("construction", error, values)
        nbits = set(status[:, 1].tolist())
        if len(nbits) != 1:
            raise ShardError(f"ShardedHammingIndex: the shards' code lengths differ: {status[:, 1].tolist()} bits per rank")
        self.shard = shard
        self.global_ids = global_ids
        self.nbits = shard.nbits
        self.shard_sizes = status[:, 0].tolist()

    def __len__(self) -> int:
        return sum(self.shard_sizes)

    @property
    def offset(self) -> int:
        """The global position of this shard's first code (as of the last collective call)."""
        return sum(self.shard_sizes[: self.rank])

    def __repr__(self) -> str:
        return (f"ShardedHammingIndex(nbits={self.nbits}, ntotal={len(self)}, rank={self.rank}/{self.world_size}, "
                f"shard={self.shard!r})")

    def _exchange_status(self, what: str, error: BaseException | None, values: list[int]) -> Tensor:
        """All-gathers (ok, values, error text) from every rank; raises on every rank if any failed.

        Returns:
            Tensor[world_size, len(values)], int64 (CPU): every rank's values.
        """
        text = b"" if error is None else _error_text(error).encode("utf-8", "replace")[:_MESSAGE_BYTES]
        local = torch.zeros(2 + len(values) + _MESSAGE_BYTES, dtype=torch.int64)
        local[0] = int(error is None)
        local[1] = len(text)
        local[2 : 2 + len(values)] = torch.tensor(values, dtype=torch.int64)
        local[2 + len(values) : 2 + len(values) + len(text)] = torch.tensor(list(text), dtype=torch.int64)
        local = local.to(self._comm_device)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local, group=self.group)
        table = torch.stack(gathered).cpu()
        failed = [r for r in range(self.world_size) if not table[r, 0]]
        if failed:
            if error is not None:
                raise error
            first = 2 + len(values)
            texts = [bytes(table[r, first : first + int(table[r, 1])].tolist()).decode("utf-8", "replace") for r in failed]
            details = "; ".join(f"rank {r}: {text}" for r, text in zip(failed, texts))
            raise ShardError(
                f"ShardedHammingIndex {what} failed on rank(s) {failed} (this is rank {self.rank}): {details}"
            )
        return table[:, 2 : 2 + len(values)]

    def _begin(self, what: str, queries, param: int, name: str) -> tuple[_State, Tensor, int, int]:
        """Starts a collective search: picks up this rank's shard state, checks rank 0's arguments
        against the shards as picked up (collectively) and broadcasts rank 0's packed queries.

        Returns:
            (this rank's shard state, queries on the shard's device, k or radius, this shard's
            offset in the global positions)
        """
        state = self.shard._snapshot()
        error, values = None, [0, 0]
        if self.rank == 0:
            try:
                if isinstance(param, bool) or not isinstance(param, (int, np.integer)):
                    raise TypeError(f"{what}: {name} must be an int, got {type(param).__name__}")
                low = 1 if name == "k" else 0
                if param < low:
                    raise ValueError(f"{what}: expected {name} >= {low}, got {name}={param}")
                packed = self.shard._prepare_queries(queries, state.device)
                values = [packed.shape[0], param]
            except Exception as exc:
                error = exc
        status = self._exchange_status(f"{what} (arguments on rank 0)", error, values + [len(state)])
        num_queries, param = status[0, :2].tolist()
        self.shard_sizes = status[:, 2].tolist()
        if name == "k" and param > len(self):  # the same check, and error, on every rank
            raise ValueError(f"{what}: expected 1 <= k <= {len(self)} (the whole sharded database), got k={param}")
        if self.rank == 0:
            buffer = packed.to(self._comm_device)
        else:
            buffer = torch.empty(num_queries, self.shard.code_size, dtype=torch.uint8, device=self._comm_device)
        dist.broadcast(buffer, src=0, group=self.group)
        return state, buffer.to(state.device), int(param), sum(self.shard_sizes[: self.rank])

    def _local_ids(self, state: _State, positions: Tensor, offset: int) -> Tensor:
        if self.global_ids == "position":
            return positions + offset
        return state.ids_at(positions)

    def search(self, queries, k: int) -> tuple[Tensor, Tensor]:
        """Exact k-NN over the whole sharded database (collective; rank 0's queries are used).

        Args:
            queries (Tensor[Q, ceil(nbits/8)] uint8 packed, or Tensor[Q, nbits] unpacked): on rank 0;
                ignored (may be None) on other ranks.
            k (int): 1 <= k <= len(self), on rank 0.

        Returns:
            (distances Tensor[Q, k] int32, ids Tensor[Q, k] int64), ordered by (distance, global
            position), the same on every rank.
        """
        state, q, k, offset = self._begin("search", queries, k, "k")
        error, packed = None, None
        try:
            dist_local, pos = state.search_positions(q, k, self.shard.chunk_bytes)
            pad = k - pos.shape[1]
            found = torch.cat([pos, pos.new_full((q.shape[0], pad), -1)], 1)
            gpos = torch.where(found >= 0, found + offset, found)
            ids = torch.cat([self._local_ids(state, pos, offset), pos.new_full((q.shape[0], pad), -1)], 1)
            d = torch.cat([dist_local.to(torch.int64), pos.new_zeros((q.shape[0], pad))], 1)
            packed = torch.stack([d, gpos, ids]).to(self._comm_device)
        except Exception as exc:
            error = exc
        self._exchange_status("search", error, [])
        gathered = [torch.empty_like(packed) for _ in range(self.world_size)]
        dist.all_gather(gathered, packed, group=self.group)
        d, gpos, ids = torch.cat(gathered, dim=2).to(state.device)
        order, _ = merge_topk(d, gpos, k)
        return d.gather(1, order).to(torch.int32), ids.gather(1, order)

    def range_search(self, queries, radius: int) -> tuple[Tensor, Tensor, Tensor]:
        """Every code within distance ``<= radius``, over the whole sharded database (collective).

        Args:
            queries: as in :meth:`search` (rank 0's are used).
            radius (int): radius >= 0, on rank 0.

        Returns:
            (lims Tensor[Q + 1] int64, distances Tensor[M] int32, ids Tensor[M] int64) in the FAISS
            layout, ordered by (distance, global position), the same on every rank.
        """
        state, q, radius, offset = self._begin("range_search", queries, radius, "radius")
        error, count = None, 0
        try:
            lims, d, pos = state.range_positions(q, radius, self.shard.chunk_bytes)
            count = int(pos.shape[0])
        except Exception as exc:
            error = exc
        counts = self._exchange_status("range_search", error, [count])[:, 0].tolist()
        width = max(1, max(counts))  # padded to the largest shard's result; never empty
        data = torch.full((3, width), -1, dtype=torch.int64, device=pos.device)
        data[:, :count] = torch.stack([d.to(torch.int64), pos + offset, self._local_ids(state, pos, offset)])
        gathered_lims = [torch.empty_like(lims, device=self._comm_device) for _ in range(self.world_size)]
        dist.all_gather(gathered_lims, lims.to(self._comm_device), group=self.group)
        gathered = [torch.empty_like(data, device=self._comm_device) for _ in range(self.world_size)]
        dist.all_gather(gathered, data.to(self._comm_device), group=self.group)
        rows = torch.arange(q.shape[0], device=state.device)
        qrow = torch.cat([torch.repeat_interleave(rows, l.to(rows.device).diff()) for l in gathered_lims])
        d, gpos, ids = torch.cat([g[:, :c] for g, c in zip(gathered, counts)], dim=1).to(state.device)
        order, lims = sort_matches(qrow, d, gpos, q.shape[0])
        return lims, d[order].to(torch.int32), ids[order]
