#!/usr/bin/env bash
# The cross-version check (issue 23): the library built in .venv (torch 2.14.1, CUDA kernels
# included) is loaded beside torch 2.13.0+cpu in a second venv, .venv-torch2.13.0. There it must load
# without the fallback warning, pass the CPU op tests, and give results identical to the bit to
# those under .venv's torch. Run after scripts/setup.sh (scripts/test.sh does). OTHER_TORCH picks
# the second torch.
set -euo pipefail
cd "$(dirname "$0")/.."
OTHER=${OTHER_TORCH:-2.13.0}
VENV=.venv-torch$OTHER
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# The test tools and pillow (cibhash_ext.files reads images with it) at requirements-dev.txt's pins;
# no torchvision: the ops and indexes do not need it.
want="torch==$OTHER $(grep -E '^(numpy|pillow|pytest|faiss-cpu)==' requirements-dev.txt | tr '\n' ' ')"
stamp=$VENV/.installed
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-compile $want
  echo "$want" >"$stamp"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Both interpreters import this checkout, whose compiled libraries setup.sh built in place.
export PYTHONPATH=$PWD
no_fallback=(-W "error:cibhash_ext's:RuntimeWarning")
.venv/bin/python "${no_fallback[@]}" scripts/cross_version_results.py save "$tmp/results.pt"
"$VENV/bin/python" "${no_fallback[@]}" scripts/cross_version_results.py compare "$tmp/results.pt"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "${no_fallback[@]}" python_tests/test_ops.py \
  python_tests/test_fallback.py python_tests/test_mih.py python_tests/test_index.py
