#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan + fuzzer) in build-fuzz and runs each for
# FUZZ_SECONDS (default 20) from a seed corpus. Usage: scripts/fuzz.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-${FUZZ_SECONDS:-20}}
B=${FUZZ_BUILD_DIR:-build-fuzz}
CC=clang CXX=clang++ cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKIMI_CUDA=OFF \
  -DKIMI_FUZZ=ON -DKIMI_TESTS=OFF -DKIMI_SANITIZE=ON >/dev/null
cmake --build "$B" -j "$(nproc)" --target kimi-make-tiny default_model \
  $(cd tests/fuzz && ls fuzz_*.cpp | sed 's/\.cpp$//')
status=0
for src in tests/fuzz/fuzz_*.cpp; do
  name=$(basename "$src" .cpp)
  corpus="$B/corpus/$name"
  mkdir -p "$corpus"
  cp -n tests/fuzz/seeds/"$name"/* "$corpus"/ 2>/dev/null || true
  echo "== $name ($SECS s)"
  if ! OMP_WAIT_POLICY=passive "$B/tests/fuzz/$name" -max_total_time="$SECS" -max_len=65536 \
      -print_final_stats=1 "$corpus" 2>"$B/$name.log"; then
    status=1
    tail -40 "$B/$name.log"
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$B/$name.log" || true
done
exit $status
