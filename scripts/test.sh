#!/usr/bin/env bash
# The whole test suite: install what is missing, build, run every test (GPU tests skip visibly
# without a GPU), then the sanitizer build (ASan + UBSan + LeakSanitizer) of the CPU tests (the
# 256-client load test runs in the main build only: under ASan one round takes minutes) and a
# bounded libFuzzer run of every fuzz target. CI runs exactly this through .ci/run.
# KIMI_TEST_QUICK=1 stops after the main test run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
start=$(date +%s)
scripts/build.sh
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j "$(nproc)" --timeout 900
echo "== main build and tests: $(( $(date +%s) - start )) s"
[ "${KIMI_TEST_QUICK:-0}" = 1 ] && exit 0

start=$(date +%s)
BUILD_DIR=build-asan CMAKE_ARGS="-DKIMI_SANITIZE=ON -DKIMI_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo" \
  scripts/build.sh
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j "$(nproc)" --timeout 900 -LE load
echo "== sanitizer build and tests: $(( $(date +%s) - start )) s"

start=$(date +%s)
scripts/fuzz.sh "${FUZZ_SECONDS:-15}"
echo "== fuzzing: $(( $(date +%s) - start )) s"
