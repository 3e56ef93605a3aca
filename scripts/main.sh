#!/usr/bin/env bash
# Set-up (idempotent), then the main job: encode logits into codes and search them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m cibhash_ext.demo "$@"
