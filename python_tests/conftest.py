"""Shared test fixtures: device parametrisation, an independent NumPy oracle for the ops, forked ranks,
and the benchmark scripts imported by their tests."""

import importlib.util
import os

import numpy as np
import pytest
import torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA test: no GPU visible on this machine")
DEVICES = ("cpu", pytest.param("cuda", marks=needs_cuda))


class NumpyOracle:
    """The ops written independently with NumPy: packbits/unpackbits, XOR + bit count, stable argsort."""

    @staticmethod
    def pack(bits: np.ndarray) -> np.ndarray:
        return np.packbits(bits.astype(np.uint8), axis=-1, bitorder="little")

    @staticmethod
    def distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
        xor = queries[:, None, :] ^ database[None, :, :]
        return np.unpackbits(xor, axis=-1).sum(-1).astype(np.int64)

    @classmethod
    def topk(cls, queries, database, k):
        dist = cls.distances(queries, database)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, order, 1), order

    @classmethod
    def radius(cls, queries, database, radius):
        dist = cls.distances(queries, database)
        lims, out_d, out_i = [0], [], []
        for row in dist:
            order = np.argsort(row, kind="stable")
            order = order[row[order] <= radius]
            out_d.append(row[order])
            out_i.append(order)
            lims.append(lims[-1] + len(order))
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
        return np.array(lims), cat(out_d), cat(out_i)

    @staticmethod
    def philox4x32_10(counter, key):
        """Philox4x32-10 over uint64 arrays holding uint32 values."""
        c = [np.asarray(v, dtype=np.uint64) for v in counter]
        k0, k1 = np.uint64(key[0]), np.uint64(key[1])
        m32 = np.uint64(0xFFFFFFFF)
        for round_ in range(10):
            if round_:
                k0 = (k0 + np.uint64(0x9E3779B9)) & m32
                k1 = (k1 + np.uint64(0xBB67AE85)) & m32
            p0 = c[0] * np.uint64(0xD2511F53)
            p1 = c[2] * np.uint64(0xCD9E8D57)
            c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & m32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & m32]
        return c


@pytest.fixture
def oracle():
    return NumpyOracle


def random_codes(rows: int, nbytes: int, generator: torch.Generator, duplicates: int = 0) -> torch.Tensor:
    """Random packed codes; the last `duplicates` rows copy earlier rows so that ties really occur."""
    codes = torch.randint(0, 256, (rows, nbytes), dtype=torch.uint8, generator=generator)
    if duplicates and rows > 1:
        dup = min(duplicates, rows - 1)
        src = torch.randint(0, rows - dup, (dup,), generator=generator)
        codes[rows - dup :] = codes[src]
    return codes


def clear_padding(codes: torch.Tensor, nbits: int) -> torch.Tensor:
    """Zeroes the padding bits of codes of nbits (as pack_bits writes them)."""
    if nbits % 8:
        codes = codes.clone()
        codes[:, -1] &= (1 << (nbits % 8)) - 1
    return codes


def _run_rank(worker, rank: int, world: int, port: int, args: tuple) -> None:
    """A forked rank: runs worker, prints its traceback on failure, and leaves without pytest's teardown."""
    import os
    import sys
    import traceback

    code = 1
    try:
        torch.set_num_threads(1)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        worker(rank, world, *args)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # a forked child must not run the parent's pytest teardown


def fork_ranks(worker, world: int, *args, timeout_s: float = 60.0) -> float:
    """Runs ``worker(rank, world, *args)`` in ``world`` forked processes (MASTER_ADDR/PORT set to a
    free local port, 1 torch thread each) and returns the seconds they took; fails the test if a
    rank fails or is still running after ``timeout_s`` (it is killed).

    Forked ranks share the already imported torch: fresh interpreters would cost seconds of imports
    per rank on a small CI machine.
    """
    import multiprocessing
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = multiprocessing.get_context("fork")
    start = time.monotonic()
    procs = [context.Process(target=_run_rank, args=(worker, r, world, port, args)) for r in range(world)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=max(0.0, start + timeout_s - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.exitcode is None]
    for proc in procs:
        if proc.exitcode is None:
            proc.kill()
    assert not hung, f"ranks {hung} hung"
    assert [p.exitcode for p in procs] == [0] * world, "a rank failed (its traceback is in the captured output)"
    return time.monotonic() - start


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` imported as a module (benchmarks are scripts, not a package)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
