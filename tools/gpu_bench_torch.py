#!/usr/bin/env python3
"""PyTorch baselines for benches/cuda_kernels.rs on the same GPU and shapes: torch.matmul in bf16,
torch._int_mm (int8 x int8 -> int32) and scaled_dot_product_attention. Timing: 3 warm-ups, median
of 20 runs between CUDA events. One JSON line per case (same keys as the Rust lab binary)."""
import json
import sys

import torch
import torch.nn.functional as F


def time_ms(f):
    for _ in range(3):
        f()
    ts = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        f()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def main():
    if not torch.cuda.is_available():
        print("SKIP torch baselines: no CUDA device", file=sys.stderr)
        return
    dev = "cuda"
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", file=sys.stderr)
    # the shapes of benches/cuda_kernels.rs (decode step at batch 32 incl. the device graph's
    # fused q|k|v (n 3072) and wi_0|wi_1 (n 5632) projections; Mistral-7B prefill's q|k|v and
    # down projections at 8192 tokens; 256 and 512 rows, where weight-only int8 starts widening)
    for m, n, k in [(256, 1024, 1024), (512, 2816, 1024),
                    (8192, 1024, 1024), (8192, 2816, 1024), (32, 1024, 2816), (32, 2816, 1024),
                    (32, 3072, 1024), (32, 5632, 1024), (32, 1024, 1024), (32, 32128, 1024),
                    (8, 1024, 2816), (4096, 4096, 4096), (8192, 6144, 4096), (8192, 4096, 14336)]:
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        flop = 2.0 * m * n * k
        ms = time_ms(lambda: torch.matmul(x, w.t()))
        print(json.dumps(dict(op="torch_matmul_bf16", m=m, n=n, k=k, ms=round(ms, 4), tflops=round(flop / ms / 1e9, 2))))
        xq = torch.randint(-127, 127, (m, k), device=dev, dtype=torch.int8)
        wq = torch.randint(-127, 127, (k, n), device=dev, dtype=torch.int8)
        try:
            ms = time_ms(lambda: torch._int_mm(xq, wq))
            print(json.dumps(dict(op="torch_int_mm", m=m, n=n, k=k, ms=round(ms, 4), tflops=round(flop / ms / 1e9, 2))))
        except RuntimeError as e:  # _int_mm needs m > 16 and multiples of 8
            print(json.dumps(dict(op="torch_int_mm", m=m, n=n, k=k, error=str(e)[:200])))
    # T5-large encoder (relative bias as an additive mask), Mistral prefill (causal), T5-large
    # cross-attention decode steps at batch 32 and 8 (one query, 1024 keys, no bias). K and V are
    # distinct tensors, as in a model (one tensor for both would let V's reads hit in L2; runs
    # before 2026-11-26 evening did that on both sides).
    for b, h, tq, t, dk, causal, bias in [(8, 16, 1024, 1024, 64, False, True), (1, 32, 4096, 4096, 128, True, False),
                                          (32, 16, 1, 1024, 64, False, False), (8, 16, 1, 1024, 64, False, False)]:
        q = torch.randn(b, h, tq, dk, device=dev, dtype=torch.bfloat16)
        kv = torch.randn(b, h, t, dk, device=dev, dtype=torch.bfloat16)
        vv = torch.randn(b, h, t, dk, device=dev, dtype=torch.bfloat16)
        mask = torch.randn(1, h, tq, t, device=dev, dtype=torch.bfloat16) if bias else None
        flop = 4.0 * b * h * tq * t * dk / (2.0 if causal else 1.0)
        ms = time_ms(lambda: F.scaled_dot_product_attention(q, kv, vv, attn_mask=mask, is_causal=causal,
                                                            scale=1.0 if dk == 64 else None))
        print(json.dumps(dict(op="torch_sdpa", batch=b, heads=h, tq=tq, t=t, dk=dk, causal=causal, ms=round(ms, 4),
                              tflops=round(flop / ms / 1e9, 2))))

    # RMS norm and gated GELU at the shapes of benches/cuda_kernels.rs's `elementwise`, as HF
    # computes them (T5LayerNorm: f32 statistics, the normalised value back to bf16, times the
    # weight; T5DenseGatedActDense: gelu_new(wi_0 x) * wi_1 x, two tensors), plus torch's fused
    # F.rms_norm where this torch has it. GB/s counts the bytes read and written once.
    for rows, d in [(32, 1024), (8192, 1024), (8192, 4096)]:
        x = torch.randn(rows, d, device=dev, dtype=torch.bfloat16)
        w = torch.randn(d, device=dev, dtype=torch.bfloat16)

        def hf_rms():
            v = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
            return w * (x * torch.rsqrt(v + 1e-6)).to(torch.bfloat16)
        fns = [("torch_rms_norm_hf", hf_rms)]
        if hasattr(F, "rms_norm"):
            fns.append(("torch_rms_norm", lambda: F.rms_norm(x, (d,), w, 1e-6)))
        for op, f in fns:
            ms = time_ms(f)
            print(json.dumps(dict(op=op, rows=rows, d=d, ms=round(ms, 4), gb_s=round((4 * rows * d + 2 * d) / ms / 1e6))))
    for rows, cols in [(32, 2816), (8192, 2816), (8192, 14336)]:
        g = torch.randn(rows, cols, device=dev, dtype=torch.bfloat16)
        u = torch.randn(rows, cols, device=dev, dtype=torch.bfloat16)
        ms = time_ms(lambda: F.gelu(g, approximate="tanh") * u)
        print(json.dumps(dict(op="torch_gated_gelu", rows=rows, d=cols, ms=round(ms, 4), gb_s=round(6 * rows * cols / ms / 1e6))))


if __name__ == "__main__":
    main()
