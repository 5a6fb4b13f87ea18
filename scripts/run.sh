#!/usr/bin/env bash
# The main job: install what is missing, build, run on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
build/kimi-run --prompt-ids 1,2,3,4,5 --max-tokens 16 --temperature 0 "$@"
