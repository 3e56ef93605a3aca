#!/usr/bin/env bash
# Set-up (idempotent), then the whole test suite. CUDA tests skip with a reason when no GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest python_tests "$@"
