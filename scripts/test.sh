#!/usr/bin/env bash
# The whole test suite: install what is missing, build, run every test (GPU tests skip visibly
# without a GPU). CI runs exactly this through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j "$(nproc)" --timeout 900
