#!/usr/bin/env bash
# The test suite: tiny random models built in code, plus a few real-weight smoke tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
