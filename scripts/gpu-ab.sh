#!/usr/bin/env bash
# Run on the GPU machine, in the project root, after `KIMI_AB_BASE=REV scripts/gpu-prepare.sh`
# here (which exports REV's tree into the ignored ./.base; carry .base with .gpu-deps and .golden):
#   bash scripts/gpu-ab.sh OUTDIR
# This tree against the base on the same card in the same call (docs/perf-log.md's method): both
# trees built into their own folders (the base's build runs beside this tree's tests), this tree's
# model tests (and KIMI_AB_OPS, a gtest filter of op tests, e.g. 'MoeGpu*:MlaGpu*'), then
# bench_cuda_model with random weights, this tree and the base alternated KIMI_AB_ROUNDS times
# (default 2): decode at 4k; with KIMI_AB_LONG=1 also at 1M context (bf16 and fp8 latent cache);
# with 2+ GPUs also at --tensor-parallel-size 2. Logs into OUTDIR; a summary last.
set -uo pipefail
OUT=${1:?usage: gpu-ab.sh OUTDIR}
mkdir -p "$OUT"
ROOT=$PWD
BASE=$ROOT/.base
[[ -f $BASE/CMakeLists.txt ]] || { echo "gpu-ab: no base tree in $BASE (KIMI_AB_BASE=REV scripts/gpu-prepare.sh)"; exit 2; }
DEPS=$ROOT/.gpu-deps/usr
export LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[[ -d .golden ]] && export KIMI_GOLDEN_DIR=$ROOT/.golden
NEW=${KIMI_BUILD_DIR:-/tmp/kimi-build}
OLD=$NEW-base
ROUNDS=${KIMI_AB_ROUNDS:-2}
GPUS=$(nvidia-smi -L | wc -l)
{ nvidia-smi; nvidia-smi topo -m; cat "$BASE/.base-rev" 2>/dev/null; } >"$OUT/machine.txt" 2>&1
configure() {  # configure SRC BUILD
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$DEPS" \
    -DKIMI_CUDA_ARCHITECTURES=90a
}
t0=$SECONDS
{ configure "$ROOT" "$NEW" &&
    cmake --build "$NEW" -j "$(nproc)" --target kimi_test_ops kimi_test_model bench_cuda_model; } \
  >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "gpu-ab: this tree built in $((SECONDS - t0)) s"
{ configure "$BASE" "$OLD" && cmake --build "$OLD" -j "$(nproc)" --target bench_cuda_model; } \
  >"$OUT/build_base.log" 2>&1 &
base_build=$!
T=$OUT/tests.log
models='GoldenCuda*:CudaModelGpu*:CudaVsCpu*'
[[ $GPUS -ge 2 ]] && models="$models:TensorParallel*"
"$NEW/tests/kimi_test_model" --gtest_filter="$models" >>"$T" 2>&1
[[ -n ${KIMI_AB_OPS:-} ]] && "$NEW/tests/kimi_test_ops" --gtest_filter="$KIMI_AB_OPS" >>"$T" 2>&1
wait $base_build || { tail -40 "$OUT/build_base.log"; exit 1; }
B=$OUT/bench_ab.log
bench() {  # bench LABEL BUILD ARGS...
  local label=$1 build=$2
  shift 2
  echo "==== $label" >>"$B"
  timeout 300 "$build/benchmarks/bench_cuda_model" --model "$ROOT/benchmarks/configs/kimi-linear-48b-a3b" \
    --random-weights "$@" >>"$B" 2>&1 || echo "FAILED rc $?" >>"$B"
}
for ((r = 1; r <= ROUNDS; r++)); do
  for side in new base; do
    build=$NEW
    [[ $side == base ]] && build=$OLD
    bench "$side 4k" "$build" --prefill 4096 --decode 256
    if [[ ${KIMI_AB_LONG:-0} == 1 ]]; then
      bench "$side 1M bf16" "$build" --prefill 64 --context 1048576 --decode 64
      bench "$side 1M fp8" "$build" --prefill 64 --context 1048576 --decode 64 --kv-cache-dtype fp8
    fi
    if [[ $GPUS -ge 2 ]]; then
      CUDA_VISIBLE_DEVICES=0,1 bench "$side TP=2 4k" "$build" --prefill 4096 --decode 128 \
        --tensor-parallel-size 2
    fi
  done
done
{
  echo "==== gpu-ab summary ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $GPUS; base $(cat "$BASE/.base-rev" 2>/dev/null || echo '?'))"
  grep -hE '^\[  (PASSED|FAILED) |tests? ran' "$T"
  grep -hE '^(====|decode \(CUDA graphs\)|decode step|prefill:|FAILED)' "$B"
} | tee "$OUT/summary.txt"
