#!/usr/bin/env bash
# Run on a GPU machine with 2+ GPUs, in the project root, after scripts/gpu-prepare.sh here:
#   bash scripts/gpu-tp-check.sh OUTDIR
# Builds (Release, sm_90a), runs the tensor-parallel tests (unit, op, model) and the full-size
# TP matrix with random weights: TP = 2 and 4 (where the GPUs exist), experts split by
# intermediate dimension and by expert (--enable-expert-parallel), and the decode all-reduce
# through peer memory (default: the push kernel; KIMI_TP_ALLREDUCE=pull the previous one) and
# through NCCL (KIMI_TP_ALLREDUCE=nccl), after bench_comm (the all-reduce kernels alone). Logs into
# OUTDIR.
set -uo pipefail
OUT=${1:?usage: gpu-tp-check.sh OUTDIR}
mkdir -p "$OUT"
ROOT=$PWD
BUILD=${KIMI_BUILD_DIR:-/tmp/kimi-build}
DEPS=$ROOT/.gpu-deps/usr
export LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[[ -d .golden ]] && export KIMI_GOLDEN_DIR=$ROOT/.golden
{ nvidia-smi; nvidia-smi topo -m; } >"$OUT/machine.txt" 2>&1
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$DEPS" \
  -DKIMI_CUDA_ARCHITECTURES=90a >"$OUT/build.log" 2>&1 &&
  cmake --build "$BUILD" -j "$(nproc)" --target kimi_test_unit kimi_test_ops kimi_test_model bench_cuda_model bench_comm \
    >>"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
T=$OUT/tests.log
"$BUILD/tests/kimi_test_unit" --gtest_filter='TensorParallel*' >>"$T" 2>&1
"$BUILD/tests/kimi_test_ops" --gtest_filter='CommGpu*:MoeGpu.Route*' >>"$T" 2>&1
"$BUILD/tests/kimi_test_model" --gtest_filter='TensorParallel*' >>"$T" 2>&1
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
B=$OUT/bench_tp.log
bench() {  # bench LABEL "VAR=value ..." ARGS...
  local label=$1 envs=$2
  shift 2
  echo "==== $label" >>"$B"
  env $envs timeout 300 "$BUILD/benchmarks/bench_cuda_model" --model "$ROOT/benchmarks/configs/kimi-linear-48b-a3b" \
    --random-weights --prefill 4096 --decode "${KIMI_TP_DECODE:-64}" "$@" >>"$B" 2>&1 || echo "FAILED rc $?" >>"$B"
}
echo "==== bench_comm: decode-sized peer all-reduces, $(( gpus < 8 ? gpus : 8 )) GPUs" >>"$B"
timeout 120 "$BUILD/benchmarks/bench_comm" --ranks $(( gpus < 8 ? gpus : 8 )) >>"$B" 2>&1 || echo "FAILED rc $?" >>"$B"
for tp in 2 4; do
  [[ $gpus -ge $tp ]] || continue
  devs=$(seq -s, 0 $((tp - 1)))
  bench "TP=$tp experts by intermediate, peer all-reduce" "CUDA_VISIBLE_DEVICES=$devs" \
    --tensor-parallel-size $tp
  bench "TP=$tp experts by expert (EP), peer all-reduce" "CUDA_VISIBLE_DEVICES=$devs" \
    --tensor-parallel-size $tp --enable-expert-parallel
  bench "TP=$tp experts by intermediate, peer all-reduce (pull kernel)" "CUDA_VISIBLE_DEVICES=$devs KIMI_TP_ALLREDUCE=pull" \
    --tensor-parallel-size $tp
  bench "TP=$tp experts by intermediate, NCCL all-reduce" "CUDA_VISIBLE_DEVICES=$devs KIMI_TP_ALLREDUCE=nccl" \
    --tensor-parallel-size $tp
done
{
  echo "==== gpu-tp-check summary ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $gpus)"
  grep -hE '^\[  (PASSED|FAILED) |tests? ran|TP=.*vs TP=1' "$T"
  grep -hE '^(====|card|memory|prefill|decode|FAILED|rows)|all-reduce' "$B"
} | tee "$OUT/summary.txt"
