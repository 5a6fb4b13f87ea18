#!/usr/bin/env python3
"""The peer for bench_kda: flash-linear-attention's Triton KDA kernels on the same card, same run.

Shapes and accounting follow bench_kda (H = 32, K = V = 128, bf16 inputs, fp32 state):
  decode : fused_recurrent_kda_fwd, one token per sequence, gate + L2 norm + beta sigmoid in the
           kernel, state updated in place in a pool addressed through ssm_state_indices (as vLLM
           calls it); slot sets rotate so the state is not L2-resident. State bytes = B·H·K·V·4
           read + written.
  prefill: chunk_kda with the gate, L2 norm and beta sigmoid in the kernel, zero initial state,
           final state out; tokens/s per layer.
The copy ceiling (1 GiB device-to-device, read + write) is measured here too. Timings: CUDA
events, median over repetitions after warm-up.

FLA is never committed: pass the folder that holds its `fla/` package (default .fla, ignored).
Usage: python3 benchmarks/fla_kda_peer.py [--fla .fla] [--quick] [--prefill-only]
"""
import argparse
import statistics
import sys

import torch

H, K, V = 32, 128, 128


def timed(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)  # ms


def copy_ceiling():
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), 20)
    return 2 * n / (ms * 1e-3) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fla", default=".fla")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--prefill-only", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, args.fla)
    from fla.ops.kda import chunk_kda
    from fla.ops.kda.fused_recurrent import fused_recurrent_kda_fwd

    torch.manual_seed(0)
    dev = "cuda"
    ceiling = copy_ceiling()
    print(f"fla peer: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"copy ceiling (1 GiB D2D, read+write): {ceiling:.1f} GB/s")
    A_log = torch.rand(H, device=dev) * 2 - 1
    dt_bias = torch.randn(H * K, device=dev) * 0.1

    print("\ndecode          B     us/layer   state GB/s     % copy")
    for B in [] if args.prefill_only else ([1, 64] if args.quick else [1, 8, 64, 256]):
        sets = max(2, (1 << 30) // (B * H * K * V * 4) + 1)  # > 1 GiB of state across the sets
        sets = min(sets, 64)
        pool = torch.randn(sets * B, H, K, V, device=dev, dtype=torch.float32) * 0.1
        q = torch.randn(1, B, H, K, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, B, H, K, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, B, H, V, device=dev, dtype=torch.bfloat16)
        g = torch.randn(1, B, H, K, device=dev, dtype=torch.bfloat16)
        beta = torch.randn(1, B, H, device=dev, dtype=torch.bfloat16)
        cu = torch.arange(B + 1, device=dev, dtype=torch.int64)
        idx = [torch.arange(s * B, (s + 1) * B, device=dev, dtype=torch.int32) for s in range(sets)]
        out = torch.empty_like(v)
        it = [0]

        def step():
            fused_recurrent_kda_fwd(q, k, v, g, beta, A_log=A_log, dt_bias=dt_bias,
                                    initial_state=pool, inplace_final_state=True, cu_seqlens=cu,
                                    ssm_state_indices=idx[it[0] % sets],
                                    use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
                                    use_beta_sigmoid_in_kernel=True, out=out)
            it[0] += 1

        ms = timed(step, 50 if B <= 64 else 20)
        gbps = 2 * B * H * K * V * 4 / (ms * 1e-3) / 1e9
        print(f"decode   {B:8d} {ms * 1e3:12.2f} {gbps:12.1f} {100 * gbps / ceiling:9.1f}%")
        del pool

    print("\nprefill      B        T     ms/layer   Mtok/s")
    shapes = [(1, 4096), (1, 32768)] if args.quick else [(1, 4096), (1, 32768), (1, 131072), (16, 4096)]
    for B, T in shapes:
        q = torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16)
        k = torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16)
        v = torch.randn(B, T, H, V, device=dev, dtype=torch.bfloat16)
        g = torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16)
        beta = torch.randn(B, T, H, device=dev, dtype=torch.bfloat16)
        h0 = torch.zeros(B, H, K, V, device=dev, dtype=torch.float32)

        def run():
            chunk_kda(q, k, v, g, beta, A_log=A_log, dt_bias=dt_bias, initial_state=h0,
                      output_final_state=True, use_qk_l2norm_in_kernel=True,
                      use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True)

        with torch.inference_mode():
            ms = timed(run, 10 if T <= 32768 else 5)
        print(f"prefill {B:6d} {T:8d} {ms:12.3f} {B * T / (ms * 1e-3) / 1e6:8.2f}")


if __name__ == "__main__":
    main()
