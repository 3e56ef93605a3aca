"""Builds and drives the CPU emulation of the CUDA kernels (csrc/emu/): case files in, outputs out.

The driver binary is cached under build/cuda_emu/, keyed by a hash of its sources, flags and compiler,
so a second test run on the same checkout skips the compile. test_cuda_emulation.py holds the tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# CIBHASH_EMU_CSRC points at another copy of csrc/ (scripts/emu_seeded_bugs.py plants bugs in one).
CSRC = Path(os.environ.get("CIBHASH_EMU_CSRC", ROOT / "csrc"))
CACHE = ROOT / "build" / "cuda_emu"  # keyed by content: planted bugs build apart

# The kernel files compile unchanged: CIBHASH_CUDA_EMU selects the emulated launch macro
# (ops/cuda/launch.cuh) and csrc/emu/ stands in for the CUDA headers.
KERNELS = sorted((CSRC / "ops" / "cuda").glob("*_kernel.cu"))
EMU_SOURCES = [CSRC / "emu" / "cuda_emu.cpp", CSRC / "emu" / "driver.cpp"]
COMMON_FLAGS = ["-std=c++17", "-g", "-DCIBHASH_CUDA_EMU", f"-I{CSRC / 'emu'}", f"-I{CSRC}", "-Wno-unknown-pragmas"]
# -ffp-contract=off: the host build's rule (setup.py), so the sigmoid rounds as the CPU op's does.
BUILDS = {
    "asan": ["-O1", "-ffp-contract=off", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=all"],
    "tsan": ["-O1", "-ffp-contract=off", "-fsanitize=thread"],
}
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=5",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    "TSAN_OPTIONS": "halt_on_error=1:exitcode=66:report_signal_unsafe=0",
}

# Operation codes and element types of driver.cpp / ops/cuda/launchers.h.
PACK, UNPACK, BINARIZE_FORWARD, BINARIZE_BACKWARD, DISTANCE, TOPK, RADIUS = range(7)
ELEMENT_TYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64", "float16",
                 "bfloat16", "float32", "float64"]
FLOAT_TYPES = ["float32", "float16", "bfloat16"]


def _inputs_hash(kind: str, extra: list[str]) -> str:
    digest = hashlib.sha256()
    files = KERNELS + EMU_SOURCES + sorted((CSRC / "emu").glob("*.h")) + sorted((CSRC / "ops").rglob("*.h"))
    files += sorted((CSRC / "ops" / "cuda").glob("*.cuh"))
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    compiler = subprocess.run(["g++", "--version"], capture_output=True, text=True, check=True).stdout
    digest.update("\0".join([compiler, kind, *COMMON_FLAGS, *BUILDS[kind], *extra]).encode())
    return digest.hexdigest()[:16]


def build_command(kind: str, output: Path, extra: list[str] = (), kernels: list[Path] | None = None) -> list[str]:
    srcs = [str(p) for p in (kernels or KERNELS)]
    return ["g++", *COMMON_FLAGS, *BUILDS[kind], *extra, "-x", "c++", *srcs, "-x", "none",
            *map(str, EMU_SOURCES), "-o", str(output)]


def start_build(kind: str, extra: list[str] = ()) -> tuple[Path, subprocess.Popen | None]:
    """Starts compiling the driver (or finds it cached); returns its path and the compiler process."""
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / f"driver-{kind}-{_inputs_hash(kind, list(extra))}"
    if target.exists():
        return target, None
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    proc = subprocess.Popen(build_command(kind, tmp, list(extra)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    proc.target, proc.tmp = target, tmp  # type: ignore[attr-defined]
    return target, proc


def finish_build(target: Path, proc: subprocess.Popen | None) -> Path:
    if proc is not None:
        log, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"building the CUDA emulation driver failed:\n{log}")
        os.replace(proc.tmp, target)  # type: ignore[attr-defined]
    return target


def have_compiler() -> bool:
    return shutil.which("g++") is not None


@dataclass
class Case:
    """One launcher call: op, its parameters, device attributes, input offsets and input arrays."""

    op: int
    params: list[int]
    inputs: list[np.ndarray]
    sms: int = 132
    smem_optin: int = 227 * 1024
    offsets: tuple[int, int] = (0, 0)
    label: str = ""
    expected: list[np.ndarray] = field(default_factory=list)


def write_cases(path: Path, cases: list[Case]) -> None:
    with open(path, "wb") as f:
        for c in cases:
            params = list(c.params) + [0] * (8 - len(c.params))
            f.write(struct.pack("<14q", c.op, *params, c.sms, c.smem_optin, *c.offsets, len(c.inputs)))
            for arr in c.inputs:
                data = np.ascontiguousarray(arr).tobytes()
                f.write(struct.pack("<q", len(data)))
                f.write(data)


@dataclass
class Result:
    """A case's launcher status (a cudaError_t), output buffers, and __ldg loads by size."""

    status: int
    blobs: list[bytes]
    loads: dict[int, int]


def read_outputs(path: Path) -> list[Result]:
    data = path.read_bytes()
    pos, out = 0, []
    while pos < len(data):
        status, blobs = struct.unpack_from("<2q", data, pos)
        pos += 16
        arrays = []
        for _ in range(blobs):
            (n,) = struct.unpack_from("<q", data, pos)
            pos += 8
            arrays.append(data[pos : pos + n])
            pos += n
        loads = dict(zip((1, 2, 4, 8, 16), np.frombuffer(arrays[-1], dtype=np.int64).tolist()))
        out.append(Result(status, arrays[:-1], loads))
    return out


def run_driver(driver: Path, cases: list[Case], timeout: float = 600) -> list[Result]:
    """Runs the cases; returns a Result per case. Raises when the driver dies (an emulation error, a
    sanitizer report) with its stderr in the message."""
    with tempfile.TemporaryDirectory() as tmp:
        cases_path, out_path = Path(tmp) / "cases.bin", Path(tmp) / "out.bin"
        write_cases(cases_path, cases)
        env = dict(os.environ, **SANITIZER_ENV)
        proc = subprocess.run([str(driver), str(cases_path), str(out_path)], capture_output=True, text=True,
                              timeout=timeout, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{driver.name} exited with {proc.returncode}:\n{proc.stderr[-6000:]}")
        return read_outputs(out_path)
