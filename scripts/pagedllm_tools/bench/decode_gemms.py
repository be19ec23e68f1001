"""The decode step's GEMMs at 8B shapes against the weight-read limit (issue 22's profile).

A decode step at batch M is, per layer, four skinny GEMMs (M rows): the fused QKV projection, the
output projection, the fused gate|up projection and the down projection, then the LM head once.
At small M each reads its whole weight matrix for a few rows, so its floor is bytes / bandwidth.
This times each projection the way a decode step meets it: the layers' distinct weights one after
another inside a CUDA graph (no launch gaps, no weight left in L2 from the call before), both as
`torch.nn.functional.linear` (cuBLAS, what the model runs) and as the Triton skinny GEMM
(kernels/pagedllm_kernels/triton_skinny_gemm.py, a candidate for issue 22) on the same weights.
It prints, per shape, batch and projection, each one's time per call and ratio to the limit
(weight bytes over the measured device-to-device copy bandwidth), cuBLAS's GB/s and TFLOP/s,
the tiles and split-K the kernel chose, and the kernel's largest difference from cuBLAS (relative
to the output's largest value); then the per-token sum of all GEMMs, for cuBLAS, the kernel and
the faster of the two per projection, beside the weight-read limit of the whole model.

`--sweep` also times a few (BLOCK_N, BLOCK_K, split_K) around the kernel's own choice, in both
of its formulations (GEMV up to 16 rows, tl.dot), for the projections of `--sweep-projections`,
and reports the fastest: what the next defaults of `launch_config` should be. Each tile shape is
a compile (the split count is not), so sweep a few batches per call.

    python -m pagedllm_tools.bench.decode_gemms [--shapes llama-8b qwen3-8b] [--batches 1 4 16 64]
        [--sweep [--sweep-projections qkv o down]]

Writes `decode-gemms-<card>.json` into --out-dir ($OUT, else the working directory). Its fields
per projection: cuBLAS's as before (us, gbps, limit_us, x_limit, tflops), the kernel's under
"triton", and with --sweep the candidates and the best under "sweep".
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from pagedllm_kernels import triton_skinny_gemm as skinny
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


def _num_sms() -> int:
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count


def sweep_configs(batch: int, out_f: int, in_f: int) -> list[skinny.LaunchConfig]:
    """A few knobs around `launch_config`'s, in each formulation (the GEMV one up to 16 rows):
    its block_n halved and doubled, block_k 128 or 256 (bf16: 256 or 512 bytes of a row per
    step), and split_k from a quarter to 4x `choose_split_k`'s for those tiles, as long as each
    split keeps two K steps."""
    configs = []
    for use_dot in (False, True) if batch <= 16 else (True,):
        base = skinny.launch_config(batch, out_f, in_f, torch.bfloat16, _num_sms(), use_dot=use_dot)
        for block_n in sorted({max(base.block_n // 2, 16 if use_dot else 1), base.block_n, base.block_n * 2}):
            for block_k in (128, 256):
                split = skinny.choose_split_k(out_f, in_f, block_n, block_k, _num_sms())
                for split_k in sorted({max(split // 4, 1), max(split // 2, 1), split, split * 2, split * 4}):
                    if split_k == 1 or triton.cdiv(in_f, block_k) >= 2 * split_k:
                        configs.append(dataclasses.replace(base, block_n=block_n, block_k=block_k,
                                                           split_k=split_k))
    return configs


def bench_projection(out_f: int, in_f: int, count: int, batch: int, copy_gbps: float,
                     iters: int, sweep: bool = False) -> dict:
    """One projection's `count` distinct weights, called in turn inside a graph; per-call figures.

    cuBLAS's at the top level (the fields as before), the Triton kernel's under "triton" (absent
    past its MAX_M rows), the sweep's under "sweep".
    """
    # at least 8 distinct matrices so no call finds its weight in L2 (50-60 MB on Hopper)
    n = max(count, 8)
    weights = [torch.randn(out_f, in_f, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(n)]
    x = torch.randn(batch, in_f, device="cuda", dtype=torch.bfloat16)
    nbytes = out_f * in_f * 2
    limit_us = nbytes / copy_gbps / 1e3

    def timed(call) -> float:
        def chain():
            for w in weights:
                call(w)
        return time_us_graph(chain, iters, calls_per_graph=1) / n

    us = timed(lambda w: F.linear(x, w))
    row = {"out": out_f, "in": in_f, "count": count, "us": us, "gbps": nbytes / us / 1e3,
           "limit_us": limit_us, "x_limit": us / limit_us,
           "tflops": 2 * batch * out_f * in_f / us / 1e6}
    if batch <= skinny.MAX_M:
        chosen = skinny.launch_config(batch, out_f, in_f, x.dtype, _num_sms())
        ref = F.linear(x, weights[0]).float()

        def rel_diff(config) -> float:
            """Largest |kernel - cuBLAS| over the largest |cuBLAS| on the first weight: a wrong tile shows."""
            return ((skinny.launch(x, weights[0], config=config).float() - ref).abs().max() / ref.abs().max()).item()

        t_us = timed(lambda w: skinny.launch(x, w, config=chosen))
        row["triton"] = {"us": t_us, "gbps": nbytes / t_us / 1e3, "x_limit": t_us / limit_us,
                         "config": dataclasses.asdict(chosen), "max_rel_diff_vs_cublas": rel_diff(chosen)}
        if sweep:
            candidates = []
            for config in sweep_configs(batch, out_f, in_f):
                try:
                    c_us = timed(lambda w, config=config: skinny.launch(x, w, config=config))
                except Exception as e:  # a tile the compiler cannot fit (registers, shared memory)
                    candidates.append({**dataclasses.asdict(config), "error": f"{type(e).__name__}: {e}"[:300]})
                    continue
                candidates.append({**dataclasses.asdict(config), "us": c_us, "x_limit": c_us / limit_us,
                                   "max_rel_diff_vs_cublas": rel_diff(config)})
            timed_ok = [c for c in candidates if "us" in c]
            row["sweep"] = {"best": min(timed_ok, key=lambda c: c["us"]) if timed_ok else None,
                            "candidates": candidates}
    weights.clear()  # the closures above hold the list: free the matrices before the next projection
    return row


def _knobs(config: dict) -> str:
    """LaunchConfig fields in a few characters: dot|gemv n<block_n> k<block_k> s<split_k>."""
    return (f"{'dot' if config['use_dot'] else 'gemv'} n{config['block_n']} k{config['block_k']} "
            f"s{config['split_k']}")


def _fastest_us(row: dict) -> float:
    """The fastest of cuBLAS, the kernel's choice and the sweep's best for one projection."""
    times = [row["us"]]
    if "triton" in row:
        times.append(row["triton"]["us"])
    if row.get("sweep", {}).get("best"):
        times.append(row["sweep"]["best"]["us"])
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16, 64])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--sweep", action="store_true", help="also time the kernel's knobs around its choice")
    ap.add_argument("--sweep-projections", nargs="+", default=["qkv", "o", "down"],
                    choices=["qkv", "o", "gate_up", "down", "lm_head"])
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
        print(f"{'batch':>5} {'proj':>8} {'cuBLAS us':>9} {'GB/s':>7} {'x limit':>8} {'TFLOP/s':>8} "
              f"{'Triton us':>9} {'x limit':>8} {'knobs':>20} {'rel diff':>8}")
        for batch in opts.batches:
            rows = {p: bench_projection(*projs[p], batch, copy_gbps, opts.iters,
                                        sweep=opts.sweep and p in opts.sweep_projections) for p in projs}
            total_ms = sum(r["us"] * r["count"] for r in rows.values()) / 1e3
            limit_ms = weight_bytes / copy_gbps / 1e6
            per_batch[batch] = {"projections": rows, "gemm_ms_per_step": total_ms, "limit_ms": limit_ms}
            for p, r in rows.items():
                t = r.get("triton")
                ours = (f"{t['us']:>9.1f} {t['x_limit']:>8.2f} {_knobs(t['config']):>20} "
                        f"{t['max_rel_diff_vs_cublas']:>8.1e}") if t else f"{'-':>9}"
                print(f"{batch:>5} {p:>8} {r['us']:>9.1f} {r['gbps']:>7,.0f} {r['x_limit']:>8.2f} "
                      f"{r['tflops']:>8.1f} {ours}", flush=True)
                if r.get("sweep", {}).get("best"):
                    best = r["sweep"]["best"]
                    print(f"{'':>5} {'':>8} sweep best of {len(r['sweep']['candidates'])}: {best['us']:.1f} us "
                          f"({best['x_limit']:.2f}x limit) with {_knobs(best)}", flush=True)
            print(f"{batch:>5} {'all':>8} {total_ms * 1e3:>9.0f} us per step = "
                  f"{total_ms / limit_ms:.2f}x the weight-read limit (cuBLAS)", flush=True)
            if all("triton" in r for r in rows.values()):
                triton_ms = sum(r["triton"]["us"] * r["count"] for r in rows.values()) / 1e3
                best_ms = sum(_fastest_us(r) * r["count"] for r in rows.values()) / 1e3
                per_batch[batch].update(triton_gemm_ms_per_step=triton_ms, best_gemm_ms_per_step=best_ms)
                print(f"{batch:>5} {'all':>8} {triton_ms * 1e3:>9.0f} us per step = "
                      f"{triton_ms / limit_ms:.2f}x (Triton); the faster per projection: "
                      f"{best_ms * 1e3:.0f} us = {best_ms / limit_ms:.2f}x", flush=True)
            torch.cuda.empty_cache()
    out = Path(opts.out_dir) / f"decode-gemms-{card}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
