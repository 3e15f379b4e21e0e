#!/usr/bin/env bash
# Usage: need-space.sh GB WHAT. Refuse, before pip starts, an install that cannot fit:
# pip stops with "[Errno 28] No space left on device" halfway through, and says nothing
# of how much was needed or where to free it.
set -euo pipefail
need_gb=$1 what=$2
free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
if [ "$free_kb" -lt $((need_gb * 1024 * 1024)) ]; then
  echo "setup: installing $what needs about $need_gb GB free on $(df -P . | awk 'NR == 2 {print $6}')," \
       "and $((free_kb / 1024)) MB are free. Free some space (old run folders under runs/," \
       "converted backbones under ~/.cache/softprompt/backbones) and run it again." >&2
  exit 1
fi
