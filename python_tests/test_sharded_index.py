"""ShardedHammingIndex over gloo with 2-3 local processes: results equal a single-process search
(planted ties across shards), and a missing shard or a dead rank raises on every rank in bounded time.

One launch of WORLD forked gloo ranks runs every scenario; each rank records its results and the
errors it saw in a directory for the tests to check.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from conftest import fork_ranks

NBITS = 20  # not a multiple of 8: padding bits travel through the shards
N = 101  # uneven split over 3 ranks: 33, 34, 34
K_FULL = N  # the full ranking: every tie is visible
RADIUS = 6
TIMEOUT_S = 5.0
WORLD = 3
EXTRA = 7  # codes added to rank 1's own shard after its ShardedHammingIndex was made
WRITES, SEARCHES = 10, 40  # batches each rank's writer thread cycles through; searches made meanwhile


# ----------------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------------


def _record_error(fn) -> dict:
    start = time.monotonic()
    try:
        fn()
    except Exception as exc:
        return {"type": type(exc).__name__, "message": str(exc), "seconds": time.monotonic() - start}
    return {"type": None, "message": "", "seconds": time.monotonic() - start}


class _BrokenState:
    """A shard state whose search fails, as a local error would."""

    device = torch.device("cpu")

    def __len__(self) -> int:
        return 34

    def search_positions(self, *args, **kwargs):
        raise RuntimeError("simulated failure in rank 1's shard")


def _writer_codes(rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The ids and codes rank ``rank``'s writer thread adds: known to every rank, so each can check any id."""
    from cibhash_ext import pack_bits

    codes = pack_bits(torch.randint(0, 2, (WRITES * 20, NBITS), generator=torch.Generator().manual_seed(rank)))
    return 2_000_000 + rank * 100_000 + np.arange(len(codes)), codes.numpy()


def _search_while_writing(rank: int, world: int, own, sharded, workdir: str) -> dict:
    """Sharded searches in this thread while another thread of this rank adds to and removes from its
    shard: every returned (id, distance) must be true of the code that id was added with."""
    import threading

    from cibhash_ext.index import HammingIndex

    whole = HammingIndex.load(os.path.join(workdir, "ids.idx"), mmap=False)
    queries = np.load(os.path.join(workdir, "queries.npy"))
    code_of_id = {int(i): c for i, c in zip(whole.ids, whole.codes.numpy())}
    code_of_id.update(zip(range(10**6, 10**6 + EXTRA), np.load(os.path.join(workdir, "extra.npy"))))
    for r in range(world):
        writer_ids, writer_codes = _writer_codes(r)
        code_of_id.update(zip(writer_ids.tolist(), writer_codes))
    ids, codes = _writer_codes(rank)
    stop, writes = threading.Event(), []

    def writer():
        w = 0
        while not stop.is_set():
            batch = slice(20 * (w % WRITES), 20 * (w % WRITES) + 20)
            own.add(codes[batch], ids[batch])
            own.remove_ids(ids[batch][::2])
            own.remove_ids(ids[batch][1::2])
            w += 1
        writes.append(w)

    failures = []
    thread = threading.Thread(target=writer)
    thread.start()
    for _ in range(SEARCHES):  # the same count on every rank: searches are collectives
        d, i = (t.numpy() for t in sharded.search(queries if rank == 0 else None, 10))
        found = np.array([code_of_id[v] for v in i.ravel()])
        bits = np.unpackbits(np.bitwise_xor(np.repeat(queries, 10, axis=0), found), axis=1)
        if not (bits.sum(axis=1).reshape(d.shape) == d).all():
            failures.append("an (id, distance) pair is not true of that id's code")
    stop.set()
    thread.join()
    return {"failures": failures, "writes": writes[0]}


def _worker_equal(rank: int, world: int, workdir: str) -> None:
    from cibhash_ext.index import HammingIndex
    from cibhash_ext.sharded_index import ShardedHammingIndex

    queries = np.load(os.path.join(workdir, "queries.npy")) if rank == 0 else None
    out: dict[str, np.ndarray] = {}

    def run(name, sharded):
        out[f"{name}_d"], out[f"{name}_i"] = (t.numpy() for t in sharded.search(queries, K_FULL))
        out[f"{name}_d5"], out[f"{name}_i5"] = (t.numpy() for t in sharded.search(queries, 5))
        lims, d, i = sharded.range_search(queries, RADIUS)
        out[f"{name}_lims"], out[f"{name}_rd"], out[f"{name}_ri"] = lims.numpy(), d.numpy(), i.numpy()

    with_ids = ShardedHammingIndex.from_file(os.path.join(workdir, "ids.idx"), split=True)
    run("split_ids", with_ids)
    run("split_plain", ShardedHammingIndex.from_file(os.path.join(workdir, "plain.idx"), split=True))
    # Own in-memory shards of unequal sizes with ids added by hand; and global positions as ids.
    whole = HammingIndex.load(os.path.join(workdir, "ids.idx"), mmap=False)
    cuts = [0, 10, 70, N]
    own = HammingIndex(NBITS)
    own.add(whole.codes[cuts[rank] : cuts[rank + 1]], whole.ids[cuts[rank] : cuts[rank + 1]])
    own_sharded = ShardedHammingIndex(own)
    run("own_ids", own_sharded)
    own_positions = ShardedHammingIndex(own, global_ids="position")
    run("own_pos", own_positions)
    # A shard written after construction: the next search uses the shard sizes as they are then.
    if rank == 1:
        own.add(np.load(os.path.join(workdir, "extra.npy")), torch.arange(EXTRA) + 10**6)
    run("grown", own_sharded)
    run("grown_pos", own_positions)

    errors = {"bad_k": _record_error(lambda: with_ids.search(queries, 0 if rank == 0 else 5))}
    errors["k_too_large"] = _record_error(lambda: with_ids.search(queries, N + 1))
    errors["mixed_nbits"] = _record_error(lambda: ShardedHammingIndex(HammingIndex(24 if rank == 1 else NBITS)))
    if rank == 1:
        with_ids.shard._snapshot = lambda: _BrokenState()
    errors["local_failure"] = _record_error(lambda: with_ids.search(queries, 5))
    if rank == 1:
        del with_ids.shard._snapshot
    # The group is still usable after the collective errors.
    out["after_d"], out["after_i"] = (t.numpy() for t in with_ids.search(queries, 5))
    errors["concurrent_writes"] = _search_while_writing(rank, world, own, own_sharded, workdir)
    np.savez(os.path.join(workdir, f"equal_{rank}.npz"), **out)
    with open(os.path.join(workdir, f"equal_{rank}.json"), "w") as fh:
        json.dump(errors, fh)


def _worker_failures(rank: int, world: int, workdir: str) -> None:
    from cibhash_ext.sharded_index import ShardedHammingIndex

    plain = os.path.join(workdir, "plain.idx")
    path = os.path.join(workdir, "no_such_shard.idx") if rank == world - 1 else plain
    errors = {"missing": _record_error(lambda: ShardedHammingIndex.from_file(path))}
    good = ShardedHammingIndex.from_file(plain, split=True)
    if rank == world - 1:  # leaves without joining the next collective, as a crashed rank would
        with open(os.path.join(workdir, f"failures_{rank}.json"), "w") as fh:
            json.dump(errors, fh)
        os._exit(0)
    queries = np.load(os.path.join(workdir, "queries.npy"))
    errors["dead_rank"] = _record_error(lambda: good.search(queries, 5))
    with open(os.path.join(workdir, f"failures_{rank}.json"), "w") as fh:
        json.dump(errors, fh)


def _worker_main(rank: int, world: int, workdir: str) -> None:
    """One rank: the equality checks, then the failures (which end with the last rank leaving)."""
    from cibhash_ext.distributed import init_process_group

    init_process_group("gloo", timeout_s=TIMEOUT_S, rank=rank, world_size=world)
    _worker_equal(rank, world, workdir)
    _worker_failures(rank, world, workdir)


# ----------------------------------------------------------------------------------------------
# Test side
# ----------------------------------------------------------------------------------------------


def _launch(world: int, workdir) -> float:
    return fork_ranks(_worker_main, world, str(workdir), timeout_s=60)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from cibhash_ext import pack_bits
    from cibhash_ext.index import HammingIndex

    path = tmp_path_factory.mktemp("sharded")
    gen = torch.Generator().manual_seed(5)
    codes = pack_bits(torch.randint(0, 2, (N, NBITS), generator=gen))
    queries = pack_bits(torch.randint(0, 2, (9, NBITS), generator=gen))
    # Ties across every shard boundary: query 0 sits at rows 0, 33, 40, 67 and 100.
    codes[[0, 33, 40, 67, 100]] = queries[0]
    codes[[5, 50, 90]] = queries[1]
    np.save(path / "queries.npy", queries.numpy())
    extra = pack_bits(torch.randint(0, 2, (EXTRA, NBITS), generator=gen))
    extra[[0, 4]] = queries[0]  # more ties with query 0, positioned inside the database
    np.save(path / "extra.npy", extra.numpy())
    ids = torch.randperm(N, generator=gen) * 7 + 1000  # id order differs from position order
    index = HammingIndex(NBITS)
    index.add(codes, ids)
    index.save(path / "ids.idx")
    plain = HammingIndex(NBITS)
    plain.add(codes)
    plain.save(path / "plain.idx")
    return path


@pytest.fixture(scope="module")
def equal_run(workdir):
    seconds = _launch(WORLD, workdir)
    return seconds, [dict(np.load(workdir / f"equal_{r}.npz")) for r in range(WORLD)], [
        json.loads((workdir / f"equal_{r}.json").read_text()) for r in range(WORLD)
    ]


def _expected(workdir, name):
    from cibhash_ext.index import HammingIndex

    whole = HammingIndex.load(workdir / ("plain.idx" if name == "split_plain" else "ids.idx"), mmap=False)
    if name.startswith("grown"):  # rank 1's shard (rows 10..69) grew by EXTRA codes at its end
        grown = HammingIndex(NBITS)
        grown.add(whole.codes[:70], whole.ids[:70])
        grown.add(np.load(workdir / "extra.npy"), torch.arange(EXTRA) + 10**6)
        grown.add(whole.codes[70:], whole.ids[70:])
        whole = grown
    queries = torch.from_numpy(np.load(workdir / "queries.npy"))
    d, i = whole.search(queries, K_FULL)
    d5, i5 = whole.search(queries, 5)
    lims, rd, ri = whole.range_search(queries, RADIUS)
    if name.endswith("_pos"):  # ids are the global positions
        to_pos = {int(v): p for p, v in enumerate(whole.ids)}
        i, i5, ri = (torch.tensor([to_pos[int(v)] for v in t.reshape(-1)]).reshape(t.shape) for t in (i, i5, ri))
    return {"d": d, "i": i, "d5": d5, "i5": i5, "lims": lims, "rd": rd, "ri": ri}


@pytest.mark.parametrize("name", ["split_ids", "split_plain", "own_ids", "own_pos", "grown", "grown_pos"])
def test_sharded_results_equal_single_process(workdir, equal_run, name):
    _, results, _ = equal_run
    expected = _expected(workdir, name)
    # The planted ties are there and span shards: query 0 has five codes at distance 0 (seven once grown).
    planted = 7 if name.startswith("grown") else 5
    assert expected["d"][0, :planted].tolist() == [0] * planted and expected["d"][0, planted] > 0
    assert expected["lims"][-1] > 9, "the radius must catch more than the planted codes"
    for rank, got in enumerate(results):
        for key, value in expected.items():
            np.testing.assert_array_equal(got[f"{name}_{key}"], value.numpy(), err_msg=f"rank {rank} {name} {key}")


def test_sharded_errors_raise_on_every_rank(equal_run):
    _, results, errors = equal_run
    assert errors[0]["bad_k"]["type"] == "ValueError" and "k=0" in errors[0]["bad_k"]["message"]
    for rank in (1, 2):
        assert errors[rank]["bad_k"]["type"] == "ShardError" and "rank(s) [0]" in errors[rank]["bad_k"]["message"]
        assert "k=0" in errors[rank]["bad_k"]["message"]
    assert all(e["k_too_large"]["type"] in ("ValueError", "ShardError") for e in errors)
    assert f"k <= {N}" in errors[2]["k_too_large"]["message"]
    for rank_errors in errors:
        mixed = rank_errors["mixed_nbits"]
        assert mixed["type"] == "ShardError" and "[20, 24, 20] bits per rank" in mixed["message"]
    assert errors[1]["local_failure"]["type"] == "RuntimeError"
    for rank in (0, 2):
        failure = errors[rank]["local_failure"]
        assert failure["type"] == "ShardError" and "rank(s) [1]" in failure["message"]
        assert "simulated failure" in failure["message"]
    for got in results:
        np.testing.assert_array_equal(got["after_i"], got["split_ids_i5"])


def test_sharded_searches_while_each_rank_writes_to_its_shard(equal_run):
    _, _, errors = equal_run
    for rank, rank_errors in enumerate(errors):
        report = rank_errors["concurrent_writes"]
        assert report["failures"] == [], f"rank {rank}: {report['failures'][:3]}"
        assert report["writes"] >= 3, f"rank {rank}'s writer barely ran: {report}"


def test_missing_shard_and_dead_rank_raise_in_bounded_time(workdir, equal_run):
    seconds, _, _ = equal_run
    errors = [json.loads((workdir / f"failures_{r}.json").read_text()) for r in range(WORLD)]
    last = WORLD - 1
    assert errors[last]["missing"]["type"] == "FileNotFoundError"
    for rank in range(last):
        missing = errors[rank]["missing"]
        assert missing["type"] == "ShardError" and f"rank(s) [{last}]" in missing["message"]
        assert "no_such_shard.idx" in missing["message"] and missing["seconds"] < TIMEOUT_S
        # The last rank left; the others get an error from gloo (peer closed, or the timeout).
        dead = errors[rank]["dead_rank"]
        assert dead["type"] is not None and dead["seconds"] < TIMEOUT_S + 5, dead
    assert seconds < 40
