#!/usr/bin/env bash
# The main job: train a 20-token soft prompt for movie-sentiment on SmolLM2-135M,
# then print zero-shot vs tuned test accuracy, parameters, file size and time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The main job is seeded, so running it again replaces its own earlier run (unless you
# resume it); a train command of your own never replaces a run without --overwrite.
case " $* " in
  *" --resume "* | *" --force-resume "* | *" --overwrite "*) again=() ;;
  *) again=(--overwrite) ;;
esac
.venv/bin/softprompt train --config configs/movie-sentiment.yaml ${again[@]+"${again[@]}"} "$@"
