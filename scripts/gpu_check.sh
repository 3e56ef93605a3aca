#!/usr/bin/env bash
# The one-call GPU check (issue 11): build for sm_90, the CUDA tests, compute-sanitizer memcheck and
# racecheck, the CUDA benchmarks against PyTorch on the GPU, a short CUDA training run with its
# evaluation; every log and number goes under $OUT (summary.txt lists each step, its status, time).
#
#   bash scripts/gpu_check.sh              on a GPU machine (python3 with torch + CUDA, nvcc)
#   bash scripts/gpu_check.sh --dry-run    anywhere: GPU steps are skipped (their commands are
#                                          listed), the rest runs on the CPU at tiny sizes
# PYTHON picks the interpreter (default python3). The script goes on past a failed step, so one
# run reports everything; its exit status is 1 when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT=${OUT:-$ROOT/gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
FAILED=0

# step NAME CMD...: runs CMD with its output in $OUT/NAME.log and notes status and time.
step() {
  local name=$1 start rc
  shift
  echo "== $name: $*" | tee -a "$OUT/commands.txt"
  start=$(date +%s)
  "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  printf '%-22s rc=%-3s %4ss  %s\n' "$name" "$rc" "$(($(date +%s) - start))" "$*" >>"$SUMMARY"
  [[ $rc -ne 0 ]] && FAILED=1
  return 0
}
# gpu_step NAME CMD...: a step that needs the GPU; the dry run lists it instead.
gpu_step() {
  if [[ $DRY -eq 1 ]]; then
    printf '%-22s skipped (dry run)  %s\n' "$1" "${*:2}" >>"$SUMMARY"
  else
    step "$@"
  fi
}
# sanitizer NAME TOOL: compute-sanitizer over the CUDA op tests (the fix-1 trigger included). Some
# machines refuse it ("Device not supported"): that is recorded in the log and the check goes on.
sanitizer() {
  gpu_step "$1" compute-sanitizer --tool "$2" --error-exitcode 9 "$PY" -m pytest -q -x python_tests/test_ops.py \
    -k "cuda and (hamming or chunks or pack or binarize or matches or noncontiguous or empty)"
}

# The dry run trains a one-code MLP on the CPU; the GPU run a convnet at two code lengths.
TRAIN=(--device cuda --backbone convnet --code-lengths 16,32)
[[ $DRY -eq 1 ]] && TRAIN=(--device cpu --backbone mlp --code-lengths 16)
CUDA_TESTS=(python_tests/test_ops.py python_tests/test_evaluation.py python_tests/test_index.py
  python_tests/test_sharded_index.py python_tests/test_layers.py python_tests/test_build.py)

step environment "$PY" -c "import platform, torch; print(platform.platform(), platform.python_version(), torch.__version__, \
torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
gpu_step nvidia_smi nvidia-smi
gpu_step build env TORCH_CUDA_ARCH_LIST="9.0+PTX" MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace
gpu_step kernel_images bash -c "cuobjdump --list-elf --list-ptx cibhash_ext/_C*.so"
if [[ $DRY -eq 1 ]]; then
  step cuda_tests "$PY" -m pytest --collect-only -q "${CUDA_TESTS[@]}"
else
  step cuda_tests "$PY" -m pytest -q -rs "${CUDA_TESTS[@]}" --junitxml="$OUT/cuda_tests.xml"
fi
sanitizer memcheck memcheck
sanitizer racecheck racecheck

# Benchmarks: ours against PyTorch on the same device (faiss, where installed, on the CPU). The dry
# run times tiny sizes on the CPU to prove the commands.
if [[ $DRY -eq 1 ]]; then
  BENCH=(--device cpu --scale 0.001 --repeats 1 --no-memory-check --threads 1)
  step bench_hamming "$PY" benchmarks/bench_hamming.py --workload W1 "${BENCH[@]}" --json "$OUT/bench_hamming.json"
  step bench_hamming_k4096 "$PY" benchmarks/bench_hamming.py --workload W2 --k 64 "${BENCH[@]}" \
    --json "$OUT/bench_hamming_k4096.json"
  step bench_binarize "$PY" benchmarks/bench_binarize.py --device cpu --shapes 256x64 --repeats 1 --threads 1 \
    --min-run-time 0.01 --json "$OUT/bench_binarize.json"
else
  step bench_hamming "$PY" benchmarks/bench_hamming.py --workload all --device cuda --repeats 5 \
    --json "$OUT/bench_hamming.json"
  step bench_hamming_k4096 "$PY" benchmarks/bench_hamming.py --workload W2 --k 4096 --device cuda --repeats 5 \
    --no-memory-check --json "$OUT/bench_hamming_k4096.json"
  step bench_binarize "$PY" benchmarks/bench_binarize.py --device cuda --repeats 5 --json "$OUT/bench_binarize.json"
fi

# A short training run with its evaluation, on a generated image folder (no dataset is installed on
# the GPU machines): 10 classes of noisy colour patches.
step train_data "$PY" - "$OUT/images" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

rng = np.random.default_rng(0)
for c in range(10):
    folder = Path(sys.argv[1]) / f"class{c}"
    folder.mkdir(parents=True, exist_ok=True)
    colour = rng.integers(0, 256, 3)
    for i in range(40):
        pixels = np.clip(colour + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
EOF
step train "$PY" -m cibhash_ext train --dataset image_folder --data-root "$OUT/images" --run-dir "$OUT/train_run" \
  --query-per-class 5 --train-per-class 30 --epochs 1 --batch-size 64 --baselines none --no-progress "${TRAIN[@]}"

echo "--- $SUMMARY"
cat "$SUMMARY"
exit $FAILED
