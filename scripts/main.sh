#!/usr/bin/env bash
# Set-up (idempotent, installs Fashion-MNIST), then the main job: train CIBHash on Fashion-MNIST
# (the embedded default dataset) at 16, 32 and 64 bits, evaluate it against LSH and ITQ, and write a run directory with
# a report under runs/. Extra arguments go to `cibhash train` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m cibhash_ext train "$@"
