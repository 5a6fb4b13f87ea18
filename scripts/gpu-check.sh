#!/usr/bin/env bash
# Run on the GPU machine, in the project root, after scripts/gpu-prepare.sh here:
#   bash scripts/gpu-check.sh OUTDIR
# Configures against ./.gpu-deps for sm_90a, builds, runs every test (the GPU op tests included)
# and the kernel benchmarks, writes all logs into OUTDIR and prints a short summary last.
# Eight files land in OUTDIR (the device tool brings back at most 8): machine.txt, build.log,
# tests.log, bench_kda.log (+ the FLA peer and bench_mla), bench_other.log, bench_tp.log (2+ GPUs),
# kernels.log (per-kernel times of decode steps, where ncu exists), summary.txt.
# KIMI_SKIP_PEER=1 skips the FLA peer, KIMI_SKIP_NCU=1 the ncu profile, KIMI_SKIP_LONG=1 the
# long-context runs, KIMI_SKIP_PREFILL_128K=1 the 128k prefill alone, KIMI_SKIP_KERNEL_BENCH=1 the
# per-kernel benchmarks (bench_kda, bench_mla, bench_moe, ...).
# KIMI_AB="A B ..." also runs the 4k decode benchmark once per setting, each setting one or more
# VAR=VALUE joined by commas (e.g. KIMI_AB="KIMI_CUDA_PDL=0 KIMI_CUDA_PDL=0,KIMI_CUDA_FUSE_NORM=0"):
# knobs compared on the same card in the same run, beside the default.
set -uo pipefail
OUT=${1:?usage: gpu-check.sh OUTDIR}
mkdir -p "$OUT"
ROOT=$PWD
BUILD=${KIMI_BUILD_DIR:-/tmp/kimi-build}
DEPS=$ROOT/.gpu-deps/usr
export LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[[ -d .golden ]] && export KIMI_GOLDEN_DIR=$ROOT/.golden
summary=()
status=0
step() {  # step NAME LOG CMD...: runs CMD with output into LOG, records pass/fail and seconds
  local name=$1 log=$2; shift 2
  local t0=$SECONDS
  "$@" >>"$log" 2>&1
  local rc=$?
  summary+=("$(printf '%-14s %s (rc %d, %ds) -> %s' "$name" "$([[ $rc == 0 ]] && echo ok || echo FAILED)" $rc $((SECONDS - t0)) "$(basename "$log")")")
  [[ $rc == 0 ]] || status=1
  return $rc
}
{
  date -u; uname -a; nvidia-smi; nvidia-smi topo -m; nvcc --version; which ncu; cmake --version | head -1
  git -C "$ROOT" log -1 --oneline 2>/dev/null || true
} >"$OUT/machine.txt" 2>&1
JOBS=$(nproc)
if step configure "$OUT/build.log" cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
     -DCMAKE_PREFIX_PATH="$DEPS" -DKIMI_CUDA_ARCHITECTURES=90a &&
   step build "$OUT/build.log" cmake --build "$BUILD" -j "$JOBS"; then
  # The GPU op tests run directly (their error lines go to the log); ctest runs the rest, except
  # the server tests (label server), which need npm from the network that machine lacks.
  step tests-cpu "$OUT/tests.log" ctest --test-dir "$BUILD" --output-on-failure -LE 'ops|server' -j 8
  if [[ -x $BUILD/tests/kimi_test_ops ]]; then
    step tests-gpu "$OUT/tests.log" "$BUILD/tests/kimi_test_ops"
  fi
  # The model tests whose printed numbers go into the notes (ctest hides a passing test's output).
  step tests-numbers "$OUT/tests.log" "$BUILD/tests/kimi_test_model" \
    --gtest_filter='GoldenCuda.*:TensorParallel*:CudaModelGpu.CacheBudget*'
  # The KDA kernel benchmark first and in its own log; the others (CPU backend, tokenizer) after.
  [[ -x $BUILD/benchmarks/bench_kda && -z ${KIMI_SKIP_KERNEL_BENCH:-} ]] && step bench_kda "$OUT/bench_kda.log" "$BUILD/benchmarks/bench_kda"
  # MLA prefill attention (CUDA-core vs tensor-core kernel) into the same log: at most 8 files.
  [[ -x $BUILD/benchmarks/bench_mla && -z ${KIMI_SKIP_KERNEL_BENCH:-} ]] && step bench_mla "$OUT/bench_kda.log" "$BUILD/benchmarks/bench_mla"
  # The peer in the same run: FLA's Triton KDA kernels from .fla/fla (scripts/gpu-prepare.sh
  # exports it; never committed), same shapes, same card. KIMI_SKIP_PEER=1 skips it (2 minutes).
  [[ -d $ROOT/.fla/fla && -z ${KIMI_SKIP_PEER:-} ]] && python3 -c 'import torch, triton' 2>/dev/null &&
    step fla_peer "$OUT/bench_kda.log" python3 "$ROOT/benchmarks/fla_kda_peer.py" --fla "$ROOT/.fla"
  # The whole model at the full-size shapes with random weights: all 27 layers where the card
  # holds the 98 GB of bf16 weights (H200), else the first 13 (H100).
  mem_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
  layers=0
  [[ ${mem_mib:-0} -lt 120000 ]] && layers=13
  [[ -x $BUILD/benchmarks/bench_cuda_model ]] && step bench_cuda_model "$OUT/bench_other.log" \
    timeout 300 "$BUILD/benchmarks/bench_cuda_model" --model "$ROOT/benchmarks/configs/kimi-linear-48b-a3b" \
    --random-weights --layers "$layers" --prefill 4096 --decode 128
  for ab in ${KIMI_AB:-}; do
    [[ -x $BUILD/benchmarks/bench_cuda_model ]] && echo "== A/B setting: $ab" >>"$OUT/bench_other.log" &&
      step "ab:$ab" "$OUT/bench_other.log" env ${ab//,/ } timeout 300 "$BUILD/benchmarks/bench_cuda_model" \
        --model "$ROOT/benchmarks/configs/kimi-linear-48b-a3b" --random-weights --layers "$layers" \
        --prefill 4096 --decode 128
  done
  # Long contexts (issue 9 goals), where all 27 layers fit (H200): a 128k-token prefill in steps
  # of 16k tokens; decode at 1M tokens of context, batch 1; 30 sequences of 128k resident at once,
  # decoding together. The decode contexts are zeros standing in for a prefill (timing only).
  if [[ $layers == 0 && -x $BUILD/benchmarks/bench_cuda_model && -z ${KIMI_SKIP_LONG:-} ]]; then
    M="$BUILD/benchmarks/bench_cuda_model --model $ROOT/benchmarks/configs/kimi-linear-48b-a3b --random-weights"
    [[ -z ${KIMI_SKIP_PREFILL_128K:-} ]] &&
      step prefill_128k "$OUT/bench_other.log" timeout 300 $M --prefill 131072 --chunk 16384 --decode 4
    step decode_1m "$OUT/bench_other.log" timeout 300 $M --prefill 64 --context 1048576 --decode 32
    step decode_30x128k "$OUT/bench_other.log" timeout 300 $M --prefill 64 --batch 30 --context 131072 --decode 16
  fi
  # Tensor parallelism: the full-size model split over 2 (and 4) GPUs, all 27 layers.
  gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
  for tp in 2 4; do
    [[ $gpus -ge $tp && -x $BUILD/benchmarks/bench_cuda_model ]] && step "bench_tp$tp" "$OUT/bench_tp.log" \
      timeout 300 "$BUILD/benchmarks/bench_cuda_model" --model "$ROOT/benchmarks/configs/kimi-linear-48b-a3b" \
      --random-weights --tensor-parallel-size $tp --prefill 4096 --decode 128
  done
  # Kernel times of graph-replayed decode steps (ncu replays each kernel node of the captured
  # range: bench_cuda_model marks it with cudaProfilerStart/Stop), summed per kernel by
  # scripts/kernel_times.py; their sum against the step time is the launch-gap overhead.
  if command -v ncu >/dev/null && [[ -x $BUILD/benchmarks/bench_cuda_model && -z ${KIMI_SKIP_NCU:-} ]]; then
    # Clocks and caches as in the real step (METHOD.md): no locking, no flush between kernels.
    step ncu_decode "$OUT/kernels.log" timeout 400 ncu --profile-from-start off --graph-profiling node \
      --clock-control none --cache-control none \
      --metrics gpu__time_duration.sum --csv --log-file /tmp/kimi-ncu.csv \
      "$BUILD/benchmarks/bench_cuda_model" --model "$ROOT/benchmarks/configs/kimi-linear-48b-a3b" \
      --random-weights --layers "$layers" --prefill 4096 --decode 2 &&
      python3 "$ROOT/scripts/kernel_times.py" /tmp/kimi-ncu.csv 2 >>"$OUT/kernels.log" 2>&1
  fi
  for b in "$BUILD"/benchmarks/bench_*; do
    [[ -n ${KIMI_SKIP_KERNEL_BENCH:-} ]] && break
    case $(basename "$b") in bench_kda|bench_cuda_model) continue ;; esac
    [[ -x $b ]] && step "$(basename "$b")" "$OUT/bench_other.log" "$b"
  done
fi
{
  echo "==== gpu-check summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
  printf '%s\n' "${summary[@]}"
  grep -hE '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/tests.log" 2>/dev/null | sort | uniq -c | head -20
  grep -h 'tests passed\|tests failed' "$OUT/tests.log" 2>/dev/null
  [[ -f $OUT/bench_kda.log ]] && cat "$OUT/bench_kda.log"
  grep -hE '^(== A/B|card|model|memory|prefill|decode|logits)' "$OUT/bench_other.log" "$OUT/bench_tp.log" 2>/dev/null
  grep -hE 'TP=|top-1 agreement|budget:' "$OUT/tests.log" 2>/dev/null
  head -40 "$OUT/kernels.log" 2>/dev/null
} | tee "$OUT/summary.txt"
exit $status
