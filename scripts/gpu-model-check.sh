#!/usr/bin/env bash
# Run on the GPU machine, in the project root (after scripts/gpu-prepare.sh here):
#   bash scripts/gpu-model-check.sh OUTDIR
# Builds the CUDA model targets for sm_90a, runs the MLA/MoE/norm/GEMM op tests, the CUDA golden
# and model tests, and bench_cuda_model on the full-size config with --random-weights (all 27
# layers where the card holds them, else the first 13), logs into OUTDIR (at most 8 files).
set -uo pipefail
OUT=${1:?usage: gpu-model-check.sh OUTDIR}
mkdir -p "$OUT"
ROOT=$PWD
BUILD=${KIMI_BUILD_DIR:-/tmp/kimi-model-build}
DEPS=$ROOT/.gpu-deps/usr
export LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[[ -d .golden ]] && export KIMI_GOLDEN_DIR=$ROOT/.golden
summary=()
status=0
step() {  # step NAME LOG CMD...
  local name=$1 log=$2; shift 2
  local t0=$SECONDS
  echo "==== $name: $*" >>"$log"
  "$@" >>"$log" 2>&1
  local rc=$?
  summary+=("$(printf '%-12s %s (rc %d, %ds)' "$name" "$([[ $rc == 0 ]] && echo ok || echo FAILED)" $rc $((SECONDS - t0)))")
  [[ $rc == 0 ]] || status=1
  return $rc
}
{
  date -u; nvidia-smi; git -C "$ROOT" log -1 --oneline 2>/dev/null || true
} >"$OUT/machine.txt" 2>&1
MEM_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
LAYERS=0
[[ ${MEM_MIB:-0} -lt 120000 ]] && LAYERS=13
if step configure "$OUT/build.log" cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
     -DCMAKE_PREFIX_PATH="$DEPS" -DKIMI_CUDA_ARCHITECTURES=90a &&
   step build "$OUT/build.log" cmake --build "$BUILD" -j "$(nproc)" --target kimi_test_ops kimi_test_model bench_cuda_model; then
  step ops "$OUT/tests.log" "$BUILD/tests/kimi_test_ops" \
    --gtest_filter='GemmGpu*:NormGpu*:MiscGpu*:MlaGpu*:MlaPlan*:MoeGpu*:KdaGpu*:*KdaPrefillGpu*'
  step model "$OUT/tests.log" "$BUILD/tests/kimi_test_model" --gtest_filter='GoldenCuda*:CudaModel*:CudaVsCpu*:Golden.LogitsMatchEveryCase'
  # Diagnostic: the same model tests with the KDA recurrent scan everywhere (no fused decode, no
  # chunked prefill) separate KDA kernel paths from the rest.
  step model-recurrent "$OUT/tests-recurrent.log" env KIMI_CUDA_KDA=recurrent "$BUILD/tests/kimi_test_model" \
    --gtest_filter='GoldenCuda*:CudaVsCpu*'
  step bench "$OUT/bench.log" timeout 240 "$BUILD/benchmarks/bench_cuda_model" \
    --model benchmarks/configs/kimi-linear-48b-a3b --random-weights --layers $LAYERS --prefill 4096 --decode 128
fi
{
  echo "==== gpu-model-check summary ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), layers ${LAYERS/#0/27})"
  printf '%s\n' "${summary[@]}"
  grep -hE '^\[  (FAILED|SKIPPED) |tests? ran|PASSED' "$OUT/tests.log" 2>/dev/null | sort | uniq -c | head -30
  grep -hE '\[err\].*(rel_rms=[0-9.e+-]+)' "$OUT/tests.log" 2>/dev/null | awk '{print $3, $5}' | sort -t= -k2 -g | tail -8
  grep -hE '^(case|top-1|split|chunked|mixed|refusal|prefill|layer)' "$OUT/tests.log" 2>/dev/null
  echo "---- KIMI_CUDA_KDA=recurrent"
  grep -hE '^(case|top-1|split|chunked|mixed|prefill|layer 0)|^\[  FAILED' "$OUT/tests-recurrent.log" 2>/dev/null
  grep -hE 'error|Error|FAILED|failed' "$OUT/build.log" 2>/dev/null | head -20
  cat "$OUT/bench.log" 2>/dev/null | tail -12
} | tee "$OUT/summary.txt"
exit $status
