#!/usr/bin/env bash
# Set-up (idempotent), then the main job: train CIBHash on Fashion-MNIST (the embedded default
# dataset) at 16, 32 and 64 bits, evaluate it against LSH and ITQ, and write a run directory with
# a report under runs/. Extra arguments go to `cibhash train` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
data=/usr/share/datasets/fashion-mnist
if [ ! -f "$data/train-images-idx3-ubyte.gz" ]; then
  # Debian's dataset-fashion-mnist package holds the 70,000 real images (IDX files).
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -q && apt-get install -y -q dataset-fashion-mnist
  else
    sudo apt-get update -q && sudo apt-get install -y -q dataset-fashion-mnist
  fi
fi
.venv/bin/python -m cibhash_ext train "$@"
