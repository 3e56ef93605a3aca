#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the pinned packages, the Fashion-MNIST
# package, then the extension built in place (C++ always; CUDA kernels too when a CUDA toolkit is
# found). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements-installed
if [ ! -f "$stamp" ] || ! cmp -s requirements-dev.txt "$stamp"; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-compile -r requirements-dev.txt
  cp requirements-dev.txt "$stamp"
fi
# Fashion-MNIST, the embedded default dataset (70,000 real images as IDX files), comes from Debian's
# dataset-fashion-mnist package; the main job trains on it and tests read it.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null
fi
# Editable install: the compiled library lands in cibhash_ext/, so tests run against this tree.
MAX_JOBS=${MAX_JOBS:-2} .venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
.venv/bin/python -c "import torch; from cibhash_ext import _extension as e; print('cibhash_ext built; torch', torch.__version__, '| CUDA kernels:', torch.version.cuda is not None and e.CUDA_LOAD_ERROR is None)"
