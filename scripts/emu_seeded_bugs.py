"""Plants one-line bugs in a copy of the CUDA kernels, one at a time, and runs the emulation test
(python_tests/test_cuda_emulation.py) on each: every bug must make it fail. Not part of CI (minutes
per bug); the list it prints is in docs/cuda_emulation.md.

Usage: python scripts/emu_seeded_bugs.py [NAME ...]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HAMMING, PACK = "ops/cuda/hamming_kernel.cu", "ops/cuda/pack_bits_kernel.cu"

# name -> (file, text, replacement): each replaces one line's worth of code.
BUGS = {
    "no __syncthreads after the histograms": (
        HAMMING, "    __syncthreads();\n\n    // 2a.", "\n\n    // 2a."),
    "ballot taken by the kept lanes only": (
        HAMMING, "const unsigned mask = __ballot_sync(kFullMask, keep);",
        "const unsigned mask = keep ? __ballot_sync(kFullMask, keep) : 0u;"),
    "8-byte path without its alignment check": (
        HAMMING, "if (bytes == 8 && aligned(8))", "if (bytes == 8)"),
    "no cudaFuncSetAttribute above 48 KiB": (
        HAMMING, "if (smem > 48 * 1024) {", "if (smem > 480 * 1024) {"),
    "off-by-one top-k threshold": (
        HAMMING, "kTopk ? run + incl >= k", "kTopk ? run + incl > k"),
    "half-warp shuffle mask": (
        HAMMING, "c[i] += __shfl_xor_sync(kFullMask, c[i], s);", "c[i] += __shfl_xor_sync(0xffffu, c[i], s);"),
    "histogram region one slice short (shared-memory overflow)": (
        HAMMING, "static_cast<int64_t>(kWarps + 1) * kq * bins + kq", "static_cast<int64_t>(kWarps) * kq * bins + kq"),
    "histograms not zeroed": (
        HAMMING, "i += kThreads) hist[i] = 0;", "i += kThreads) (void)hist[i];"),
    "masked cursor sync only (fix 1 undone)": (
        HAMMING, "        __syncwarp();\n      }", "      }"),
    "pack_bits drops a row's last bit": (
        PACK, "min(static_cast<int64_t>(8), nbits - first));\n    uint32_t v = 0;",
        "min(static_cast<int64_t>(8), nbits - first - 1));\n    uint32_t v = 0;"),
}


def main(names: list[str]) -> int:
    missed = []
    for name in names or BUGS:
        path, old, new = BUGS[name]
        with tempfile.TemporaryDirectory() as tmp:
            csrc = Path(tmp) / "csrc"
            shutil.copytree(ROOT / "csrc", csrc)
            source = (csrc / path).read_text()
            assert source.count(old) == 1, f"{name}: the text to replace is not unique in {path}"
            (csrc / path).write_text(source.replace(old, new))
            start = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "python_tests/test_cuda_emulation.py"], cwd=ROOT,
                env=dict(os.environ, CIBHASH_EMU_CSRC=str(csrc)), capture_output=True, text=True)
        caught = proc.returncode != 0
        why = next((line for line in proc.stdout.splitlines() if line.startswith("FAILED")), "")
        print(f"{'caught' if caught else 'MISSED'} ({time.monotonic() - start:.0f}s): {name}  {why[:160]}", flush=True)
        if not caught:
            missed.append(name)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
