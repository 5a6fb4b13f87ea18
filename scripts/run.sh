#!/usr/bin/env bash
# The main job: install what is missing, build, serve the embedded default model on
# http://127.0.0.1:8000 (OpenAI API; extra arguments go to kimi-serve, e.g. --model DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
exec build/kimi-serve "$@"
