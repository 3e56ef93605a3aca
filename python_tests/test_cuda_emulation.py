"""The CUDA kernels (csrc/ops/cuda/*_kernel.cu), run on the CPU through the emulation in csrc/emu/
and compared bit for bit with the CPU ops.

The unchanged kernel files are compiled with g++ against csrc/emu/cuda_emu.h: every CUDA thread of a
block is a fiber, blocks run in sequence, and the emulator fails loudly where CUDA's behaviour is
undefined: a ``__syncthreads`` not reached by every thread from one call site, a ``*_sync`` intrinsic
called from outside its mask, a shuffle reading a lane outside the mask, lanes of one mask at
different intrinsics, a deadlock (each with a dump of where every thread waits), a misaligned
``__ldg``, a launch over CUDA's limits (1024 threads a block, grid y/z 65535, dynamic shared memory
above 48 KiB without ``cudaFuncSetAttribute``). Dynamic shared memory is poisoned per block and
exactly sized. The sweep runs under AddressSanitizer + UBSan; a few cases run again under
ThreadSanitizer with the strict warp memory model (only ``__syncthreads`` and ``__syncwarp`` order
memory; ballots, shuffles and matches do not), which is what exposed the cursor race fixed in the
selection kernel's ordered rescan.

Seeded one-line bugs this test catches (scripts/emu_seeded_bugs.py plants each and reruns it): a
removed ``__syncthreads`` (after the histograms), a ballot taken by the kept lanes only (deadlock),
the 8-byte path without its alignment check (misaligned load), no ``cudaFuncSetAttribute`` above
48 KiB (launch refused), an off-by-one top-k threshold, a half-warp shuffle mask, the histogram
region one slice short (shared-memory overflow, ASan), histograms not zeroed (poisoned shared
memory), the masked-only cursor sync of fix 1 (ThreadSanitizer), and pack_bits dropping a row's
last bit (wrong output).

What it cannot catch: nvcc's code generation (including FMA contraction: the emulation compiles
with -ffp-contract=off, like the host build, so a missing ``__fmul_rn`` would pass here), the
torch wrappers in ops/cuda/*.cpp (the driver calls the launchers directly), real weak-memory
behaviour beyond what ThreadSanitizer models, inter-block races (blocks run in sequence), and speed.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import cibhash_ext  # noqa: F401  (registers the ops)
import cuda_emu as emu

pytestmark = pytest.mark.skipif(not emu.have_compiler(), reason="the CUDA emulation needs g++")
OPS = torch.ops.cibhash_ext

# Every width the issue names plus the fast-path and multi-vector ones; 200 bytes gives one query
# per block more than 48 KiB of histograms.
WIDTHS = [1, 2, 3, 4, 5, 8, 12, 16, 24, 32, 33, 64]
SHAPES = [(1, 1), (5, 37), (17, 300)]
# (SM count, opt-in shared memory per block): which plan plan_select() picks follows from these and Q.
DEVICES = {"h100": (132, 227 * 1024), "one_sm": (1, 227 * 1024), "no_smem": (1, 64)}
OFFSETS = [(0, 0), (8, 8), (1, 3), (4, 12), (2, 0)]


@pytest.fixture(scope="module")
def drivers():
    """Both drivers, compiled side by side (2 cores in CI) or found in the cache."""
    started = {kind: emu.start_build(kind) for kind in emu.BUILDS}
    return {kind: emu.finish_build(*started[kind]) for kind in started}


# --------------------------------------------------------------------------------------------------
# The launch plan of the selection kernel, as plan_select() in hamming_kernel.cu computes it (to show
# that the sweep reaches all four).
# --------------------------------------------------------------------------------------------------
def select_plan(Q: int, bins: int, sms: int, smem_optin: int) -> str:
    region = lambda kq: (8 + 1) * kq * bins + kq  # noqa: E731
    kq = 4 if Q >= 16 * sms and region(4) * 4 <= smem_optin else 1
    if region(kq) * 4 > smem_optin:
        return "workspace"
    if region(kq) * 4 > 48 * 1024:
        return "shared>48KiB"
    return f"shared-kq{kq}"


def _codes(rng: np.random.Generator, rows: int, width: int, ties: bool) -> np.ndarray:
    if not ties:
        return rng.integers(0, 256, (rows, width), dtype=np.uint8)
    # Three base codes with a few flipped bits: many rows at equal distances from each query.
    base = rng.integers(0, 256, (3, width), dtype=np.uint8)
    codes = base[rng.integers(0, 3, rows)]
    flip = rng.random((rows, width)) < 0.05
    return codes ^ (flip * (1 << rng.integers(0, 8, (rows, width)))).astype(np.uint8)


def hamming_cases(rng: np.random.Generator) -> list[emu.Case]:
    cases = []
    for n, (width, (Q, N), device) in enumerate(itertools.product(WIDTHS, SHAPES, DEVICES)):
        # Uniform and tie-heavy codes alternate (every width and shape gets both across the devices).
        ties = n % 2 == 1
        sms, optin = DEVICES[device]
        db = _codes(rng, N, width, ties)
        queries = _codes(rng, Q, width, ties)
        queries[: min(Q, N) // 2] = db[: min(Q, N) // 2]  # distance 0 occurs
        off = OFFSETS[n % len(OFFSETS)]
        q_t, db_t = torch.from_numpy(queries), torch.from_numpy(db)
        common = dict(sms=sms, smem_optin=optin, offsets=off, inputs=[queries, db])
        label = f"B={width} Q={Q} N={N} ties={ties} {device} offsets={off}"
        cases.append(emu.Case(emu.DISTANCE, [0, Q, N, width], label=f"distance {label}",
                              expected=[OPS.hamming_distance(q_t, db_t).numpy()], **common))
        for k in sorted({1, N // 2 + 1, N}):
            d, i = OPS.hamming_topk(q_t, db_t, k)
            plan = select_plan(Q, 8 * width + 1, sms, optin)
            cases.append(emu.Case(emu.TOPK, [0, Q, N, width, k], label=f"topk k={k} {plan} {label}",
                                  expected=[d.numpy(), i.numpy()], **common))
        for radius in sorted({0, 1, 4 * width, 8 * width + 3}):
            lims, d, i = OPS.hamming_radius(q_t, db_t, radius)
            plan = select_plan(Q, min(radius, 8 * width) + 1, sms, optin)
            cases.append(emu.Case(emu.RADIUS, [0, Q, N, width, radius], label=f"radius r={radius} {plan} {label}",
                                  expected=[lims.numpy(), d.numpy(), i.numpy()], **common))
    # One query per block with more than 48 KiB of histograms (1601 bins).
    q, db = _codes(rng, 3, 200, True), _codes(rng, 40, 200, True)
    d, i = OPS.hamming_topk(torch.from_numpy(q), torch.from_numpy(db), 7)
    cases.append(emu.Case(emu.TOPK, [0, 3, 40, 200, 7], [q, db], label="topk B=200 shared>48KiB kq1",
                          expected=[d.numpy(), i.numpy()]))
    return cases


def _values(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype == "bool":
        return torch.from_numpy(rng.random(shape) < 0.5)
    if dtype in ("float16", "bfloat16", "float32", "float64"):
        x = torch.from_numpy(rng.standard_normal(shape).astype(np.float64) * 3)
        flat = x.view(-1)
        specials = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-30, -1e-30, 7e4],
                                dtype=torch.float64)
        flat[: min(flat.numel(), len(specials))] = specials[: flat.numel()]
        return x.to(getattr(torch, dtype))
    info = np.iinfo(dtype)
    low = max(info.min, -300)
    return torch.from_numpy(rng.integers(low, min(info.max, 300), shape, endpoint=True).astype(dtype))


def _raw(t: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as numpy sees them (bfloat16 has no numpy dtype)."""
    t = t.contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.view(torch.int16).numpy()
    if t.dtype == torch.bool:
        return t.view(torch.uint8).numpy()
    return t.numpy()


def elementwise_cases(rng: np.random.Generator) -> list[emu.Case]:
    cases = []
    for n, (dtype, (rows, nbits)) in enumerate(itertools.product(emu.ELEMENT_TYPES,
                                                                 [(1, 1), (3, 7), (4, 64), (2, 333), (1, 2100)])):
        x = _values(rng, dtype, (rows, nbits))
        cases.append(emu.Case(emu.PACK, [emu.ELEMENT_TYPES.index(dtype), rows, nbits], [_raw(x)],
                              offsets=(0, 0), label=f"pack_bits {dtype} [{rows}, {nbits}]",
                              expected=[OPS.pack_bits(x).numpy()]))
    for rows, nbits in [(1, 1), (3, 7), (4, 64), (2, 333), (1, 2100), (70, 9)]:
        codes = rng.integers(0, 256, (rows, (nbits + 7) // 8), dtype=np.uint8)
        cases.append(emu.Case(emu.UNPACK, [0, rows, nbits], [codes], label=f"unpack_bits [{rows}, {nbits}]",
                              expected=[OPS.unpack_bits(torch.from_numpy(codes), nbits).numpy()]))
    for dtype, n, stochastic in itertools.product(emu.FLOAT_TYPES, [1, 3, 4, 5, 1023, 4099], (True, False)):
        z = _values(rng, dtype, (n,))
        seed, offset = int(rng.integers(0, 2**62)), int(rng.integers(0, 2**40)) * 4
        fwd = OPS.stochastic_binarize_forward(z, stochastic, seed, offset)
        cases.append(emu.Case(emu.BINARIZE_FORWARD, [emu.FLOAT_TYPES.index(dtype), n, int(stochastic), seed, offset],
                              [_raw(z)], label=f"binarize forward {dtype} n={n} stochastic={stochastic}",
                              expected=[fwd]))
        if stochastic:
            grad = _values(rng, dtype, (n,))
            cases.append(emu.Case(emu.BINARIZE_BACKWARD, [emu.FLOAT_TYPES.index(dtype), n], [_raw(grad), _raw(z)],
                                  label=f"binarize backward {dtype} n={n}",
                                  expected=[OPS.stochastic_binarize_backward(grad, z)]))
    return cases


def _check(case: emu.Case, result: emu.Result) -> None:
    status, blobs = result.status, result.blobs
    assert status == 0, f"{case.label}: launcher returned cudaError {status}"
    assert len(blobs) == len(case.expected), case.label
    for got, want in zip(blobs, case.expected):
        if isinstance(want, torch.Tensor):  # float outputs: equal values, NaN payloads aside
            got_t = torch.frombuffer(bytearray(got), dtype=want.dtype).reshape(want.shape) if got else want.new_empty(0)
            torch.testing.assert_close(got_t.reshape(want.shape), want, rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m: f"{case.label}: {m}")
        else:
            arr = np.frombuffer(got, dtype=want.dtype).reshape(want.shape)
            if not np.array_equal(arr, want):
                bad = np.argwhere(arr != want)[:5].tolist()
                pytest.fail(f"{case.label}: outputs differ from the CPU op at {bad}")


def test_sweep_reaches_every_launch_plan():
    rng = np.random.default_rng(0)
    plans = {label.split()[2] for label in (c.label for c in hamming_cases(rng)) if label.startswith(("topk", "radius"))}
    assert {"shared-kq1", "shared-kq4", "shared>48KiB", "workspace"} <= plans


def test_kernels_match_cpu_ops_under_asan(drivers):
    rng = np.random.default_rng(2024)
    cases = hamming_cases(rng) + elementwise_cases(rng)
    results = emu.run_driver(drivers["asan"], cases)
    assert len(results) == len(cases)
    for case, result in zip(cases, results):
        _check(case, result)


def cursor_race_cases() -> list[emu.Case]:
    """Fix 1's trigger: rows 0 and 37 are warp 0's only matches, in different 32-row chunks, so the
    second reads the bucket cursor the first advanced (B = 1, Q = 1, N = 300, query 0x00)."""
    db = np.full((300, 1), 0xFF, dtype=np.uint8)
    db[[0, 37]] = 0
    q = np.zeros((1, 1), dtype=np.uint8)
    return [
        emu.Case(emu.RADIUS, [0, 1, 300, 1, 0], [q, db], label="cursor race, radius 0",
                 expected=[np.array([0, 2]), np.array([0, 0], np.int32), np.array([0, 37])]),
        emu.Case(emu.TOPK, [0, 1, 300, 1, 2], [q, db], label="cursor race, top-2",
                 expected=[np.array([[0, 0]], np.int32), np.array([[0, 37]])]),
    ]


def test_cursor_race_trigger_under_asan(drivers):
    cases = cursor_race_cases()
    for case, result in zip(cases, emu.run_driver(drivers["asan"], cases)):
        _check(case, result)


def test_strict_warp_memory_model_under_tsan(drivers):
    """ThreadSanitizer sees no race in the selection kernel's cursor hand-over (fix 1), nor in the
    dense kernels' shared-memory reduction, when only __syncthreads/__syncwarp order memory."""
    rng = np.random.default_rng(7)
    cases = cursor_race_cases()
    for width in (1, 3, 8):
        db, q = _codes(rng, 300, width, True), _codes(rng, 9, width, True)
        q_t, db_t = torch.from_numpy(q), torch.from_numpy(db)
        d, i = OPS.hamming_topk(q_t, db_t, 151)
        cases.append(emu.Case(emu.TOPK, [0, 9, 300, width, 151], [q, db], label=f"tsan topk B={width}",
                              expected=[d.numpy(), i.numpy()]))
        lims, d, i = OPS.hamming_radius(q_t, db_t, 3 * width)
        cases.append(emu.Case(emu.RADIUS, [0, 9, 300, width, 3 * width], [q, db], sms=1,
                              label=f"tsan radius B={width}", expected=[lims.numpy(), d.numpy(), i.numpy()]))
    for case, result in zip(cases, emu.run_driver(drivers["tsan"], cases)):
        _check(case, result)


# (code bytes, byte offsets of queries and database) -> the one load size the scan must use: each
# path needs rows aligned to its own word only (issue 11, fix 3).
LOAD_PATHS = [
    (8, (0, 0), 8), (8, (8, 8), 8), (8, (8, 4), 4), (8, (1, 0), 1),
    (16, (0, 0), 16), (16, (8, 8), 8), (32, (8, 24), 8), (32, (16, 16), 16), (24, (8, 8), 8),
    (12, (4, 4), 4), (2, (2, 2), 2), (2, (1, 2), 1), (4, (4, 12), 4), (4, (2, 0), 1),
]


def test_each_scan_path_needs_only_its_own_alignment(drivers):
    rng = np.random.default_rng(3)
    cases = []
    for width, offsets, _ in LOAD_PATHS:
        q, db = _codes(rng, 3, width, False), _codes(rng, 50, width, False)
        cases.append(emu.Case(emu.DISTANCE, [0, 3, 50, width], [q, db], offsets=offsets,
                              label=f"distance B={width} offsets={offsets}",
                              expected=[OPS.hamming_distance(torch.from_numpy(q), torch.from_numpy(db)).numpy()]))
    for case, result, (_, _, size) in zip(cases, emu.run_driver(drivers["asan"], cases), LOAD_PATHS):
        _check(case, result)
        assert {s for s, n in result.loads.items() if n} == {size}, f"{case.label}: loads {result.loads}"


def test_widest_select_codes_run_and_wider_are_refused(drivers):
    """At the CUDA width limit (2^19 bytes, 4 Mbit: fix 2) the selection kernel's int arithmetic does
    not overflow (UBSan would abort) and its workspace fits the cap; one byte more is refused."""
    width = 1 << 19
    rng = np.random.default_rng(5)
    db = rng.integers(0, 256, (2, width), dtype=np.uint8)
    q = db[1:].copy()
    ok = [emu.Case(emu.TOPK, [0, 1, 2, width, 1], [q, db], label="topk at the width limit",
                   expected=[np.array([[0]], np.int32), np.array([[1]])]),
          emu.Case(emu.RADIUS, [0, 1, 2, width, 0], [q, db], label="radius at the width limit",
                   expected=[np.array([0, 1]), np.array([0], np.int32), np.array([1])])]
    wide = np.zeros((1, width + 1), dtype=np.uint8)
    refused = [emu.Case(emu.TOPK, [0, 1, 1, width + 1, 1], [wide, wide], label="topk past the limit")]
    results = emu.run_driver(drivers["asan"], ok + refused)
    for case, result in zip(ok, results):
        _check(case, result)
    assert results[2].status == 1  # cudaErrorInvalidValue
