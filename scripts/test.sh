#!/usr/bin/env bash
# The test suite: tiny random models built in code, plus a few real-weight smoke tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# vLLM (CPU) in its own venv: the gateway tests start one real server for the whole run
bash scripts/setup-vllm.sh >/dev/null
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check src tests benchmarks
# the docs: --strict fails on a broken link or API page; -q would hide the warnings it counts
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -d /tmp/softprompt-site >/tmp/softprompt-mkdocs.log 2>&1 || { cat /tmp/softprompt-mkdocs.log; exit 1; }
.venv/bin/python -m pytest -q "$@"
