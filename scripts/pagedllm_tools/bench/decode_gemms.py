"""The decode step's GEMMs at 8B shapes against the weight-read limit (issue 22's profile).

A decode step at batch M is, per layer, four skinny GEMMs (M rows): the fused QKV projection, the
output projection, the fused gate|up projection and the down projection, then the LM head once.
At small M each reads its whole weight matrix for a few rows, so its floor is bytes / bandwidth.
This times each projection the way a decode step meets it: the layers' distinct weights one after
another inside a CUDA graph (no launch gaps, no weight left in L2 from the call before), as
`torch.nn.functional.linear` (cuBLAS, what the model runs). It prints, per shape, batch and
projection, the time per call, the achieved GB/s, and the ratio to the limit (weight bytes over
the measured device-to-device copy bandwidth); the per-token sum of all GEMMs beside the
weight-read limit of the whole model.

    python -m pagedllm_tools.bench.decode_gemms [--shapes llama-8b qwen3-8b] [--batches 1 4 16 64]

Writes `decode-gemms-<card>.json` into --out-dir ($OUT, else the working directory).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from pagedllm_tools.bench.kernels_gpu import copy_bandwidth_gbps, time_us_graph

# The real configs' sizes (Llama-3.1-8B, Qwen3-8B): hidden, intermediate, q heads, kv heads,
# head_dim, layers, vocabulary.
SHAPES = {
    "llama-8b": dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128, layers=32,
                     vocab=128256),
    "qwen3-8b": dict(hidden=4096, intermediate=12288, heads=32, kv_heads=8, head_dim=128, layers=36,
                     vocab=151936),
}


def projections(s: dict) -> dict[str, tuple[int, int, int]]:
    """name -> (out_features, in_features, how many per token) for one decode step."""
    qkv = (s["heads"] + 2 * s["kv_heads"]) * s["head_dim"]
    return {
        "qkv": (qkv, s["hidden"], s["layers"]),
        "o": (s["hidden"], s["heads"] * s["head_dim"], s["layers"]),
        "gate_up": (2 * s["intermediate"], s["hidden"], s["layers"]),
        "down": (s["hidden"], s["intermediate"], s["layers"]),
        "lm_head": (s["vocab"], s["hidden"], 1),
    }


def bench_projection(out_f: int, in_f: int, count: int, batch: int, copy_gbps: float,
                     iters: int) -> dict:
    """One projection's `count` distinct weights, called in turn inside a graph; per-call figures."""
    # at least 8 distinct matrices so no call finds its weight in L2 (50-60 MB on Hopper)
    n = max(count, 8)
    weights = [torch.randn(out_f, in_f, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(n)]
    x = torch.randn(batch, in_f, device="cuda", dtype=torch.bfloat16)

    def chain():
        for w in weights:
            F.linear(x, w)

    us = time_us_graph(chain, iters, calls_per_graph=1) / n
    nbytes = out_f * in_f * 2
    limit_us = nbytes / copy_gbps / 1e3
    del weights
    return {"out": out_f, "in": in_f, "count": count, "us": us, "gbps": nbytes / us / 1e3,
            "limit_us": limit_us, "x_limit": us / limit_us,
            "tflops": 2 * batch * out_f * in_f / us / 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16, 64])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out-dir", default=os.environ.get("OUT", "."))
    opts = ap.parse_args()
    card = torch.cuda.get_device_name().replace(" ", "-")
    copy_gbps = copy_bandwidth_gbps(opts.iters)
    report = {"card": torch.cuda.get_device_name(), "copy_gbps": copy_gbps, "shapes": {}}
    print(f"{report['card']}: device copy {copy_gbps:,.0f} GB/s", flush=True)
    for name in opts.shapes:
        report["shapes"][name] = per_batch = {}
        projs = projections(SHAPES[name])
        weight_bytes = sum(o * i * c * 2 for o, i, c in projs.values())
        print(f"\n{name}: GEMM weights {weight_bytes / 1e9:.2f} GB per token, read limit "
              f"{weight_bytes / copy_gbps / 1e6:.3f} ms", flush=True)
        print(f"{'batch':>5} {'proj':>8} {'us/call':>9} {'GB/s':>7} {'x limit':>8} {'TFLOP/s':>8}")
        for batch in opts.batches:
            rows = {p: bench_projection(*projs[p], batch, copy_gbps, opts.iters) for p in projs}
            total_ms = sum(r["us"] * r["count"] for r in rows.values()) / 1e3
            per_batch[batch] = {"projections": rows, "gemm_ms_per_step": total_ms,
                                "limit_ms": weight_bytes / copy_gbps / 1e6}
            for p, r in rows.items():
                print(f"{batch:>5} {p:>8} {r['us']:>9.1f} {r['gbps']:>7,.0f} {r['x_limit']:>8.2f} "
                      f"{r['tflops']:>8.1f}", flush=True)
            print(f"{batch:>5} {'all':>8} {total_ms * 1e3:>9.0f} us per step = "
                  f"{total_ms / per_batch[batch]['limit_ms']:.2f}x the weight-read limit", flush=True)
            torch.cuda.empty_cache()
    out = Path(opts.out_dir) / f"decode-gemms-{card}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
