"""Checks the Triton kernels on a CUDA GPU in one go: the kernel tests, then a decode microbenchmark.

1. `pytest -q tests/test_kernels.py tests/test_reference_attention.py` on CUDA (compiled
   kernels, contexts up to 16k, bf16/fp16/fp32).
2. Decode paged attention with llama-1b's heads (32 q heads, 8 kv heads, head_dim 64), bf16,
   block size 16, shuffled blocks: batch 64 at contexts 1k/4k/16k, and batch 4 at 16k with
   and without split-KV. Each row gives the kernel time (CUDA events, median), the bytes it
   must move (K+V read + q read + out written) per second, that as a share of the measured
   device-to-device copy bandwidth, and torch SDPA (flash backend when it takes the shapes)
   on the same K/V laid out contiguously.

Prints a table; with $OUT set, writes everything to $OUT/kernels_gpu.json.
`--sweep` instead times the kernel's launch knobs (keys per step, warps, pipeline stages) on
decode batches like the engine's (graph-launched), each against the knobs it runs with now,
and writes $OUT/kernels_sweep.json.

    python -m pagedllm_tools.bench.kernels_gpu [--skip-tests] [--iters 50] [--sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pagedllm_tools import ROOT

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 64, 16  # llama-1b
HEADS = {"llama-1b": (32, 8, 64), "qwen3-0.6b": (16, 8, 128)}  # (q heads, kv heads, head dim)
DTYPE = torch.bfloat16


@dataclass
class Row:
    """One benchmark case: our kernel vs SDPA on the same data."""

    batch: int
    context: int
    num_splits: int
    ours_us: float
    ours_gbps: float
    ours_pct_of_copy: float
    sdpa_us: float | None
    sdpa_gbps: float | None
    max_abs_diff_vs_sdpa: float | None


def run_tests() -> dict:
    """Runs the kernel tests in a subprocess; returns its exit code and summary line."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "tests/test_kernels.py", "tests/test_reference_attention.py"]
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(proc.stdout[-6000:], flush=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return {"returncode": proc.returncode, "summary": lines[-1] if lines else ""}


def time_us(fn, iters: int, warmup: int = 5) -> float:
    """Median time of fn() in microseconds, from CUDA events around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0)
    return statistics.median(times)


def time_us_graph(fn, iters: int, calls_per_graph: int = 10) -> float:
    """Median time of one fn() in microseconds, launched from a CUDA graph of `calls_per_graph` calls.

    What the kernel costs inside the engine's decode graphs: no host time per launch, no launch gaps.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls_per_graph):
            fn()
    return time_us(graph.replay, iters) / calls_per_graph


def copy_bandwidth_gbps(iters: int) -> float:
    """Device-to-device copy of 1 GiB: (bytes read + bytes written) / time."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = time_us(lambda: dst.copy_(src), iters)
    return 2 * src.numel() / us / 1e3


def _sdpa_call(q, k, v):
    """SDPA for q [B, H, 1, D] over k, v [B, KV, L, D]: flash with enable_gqa, else the best that runs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    group = q.shape[1] // k.shape[1]
    for name, backend, gqa in [("flash+enable_gqa", SDPBackend.FLASH_ATTENTION, True),
                               ("flash+repeat_interleave", SDPBackend.FLASH_ATTENTION, False),
                               ("efficient+repeat_interleave", SDPBackend.EFFICIENT_ATTENTION, False)]:
        kk = k if gqa else k.repeat_interleave(group, dim=1)
        vv = v if gqa else v.repeat_interleave(group, dim=1)

        def call(kk=kk, vv=vv, gqa=gqa, backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, kk, vv, enable_gqa=gqa)
        try:
            call()
            return name, call
        except RuntimeError:
            continue
    return None, None


def decode_args(batch: int, context: int, num_splits: int | None):
    """paged_attention's arguments for one decode step over shuffled blocks, and the dense K, V."""
    g = torch.Generator(device="cuda").manual_seed(0)
    k = torch.randn(batch, context, NUM_KV_HEADS, HEAD_DIM, generator=g, device="cuda").to(DTYPE)
    v = torch.randn(batch, context, NUM_KV_HEADS, HEAD_DIM, generator=g, device="cuda").to(DTYPE)
    q = torch.randn(batch, NUM_HEADS, HEAD_DIM, generator=g, device="cuda").to(DTYPE)
    blocks_per_seq = context // BLOCK_SIZE
    num_blocks = batch * blocks_per_seq
    tables = torch.randperm(num_blocks, device="cuda").to(torch.int32).view(batch, blocks_per_seq)
    key_cache = torch.empty(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    value_cache = torch.empty_like(key_cache)
    key_cache[tables.long()] = k.view(batch, blocks_per_seq, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    value_cache[tables.long()] = v.view(batch, blocks_per_seq, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    args = dict(
        query=q, key_cache=key_cache, value_cache=value_cache, block_tables=tables,
        seq_lens=torch.full((batch,), context, dtype=torch.int32, device="cuda"),
        query_start_loc=torch.arange(batch + 1, dtype=torch.int32, device="cuda"),
        scale=HEAD_DIM**-0.5, max_query_len=1, max_seq_len=context, num_splits=num_splits,
    )
    return args, k, v


def bench_case(batch: int, context: int, num_splits: int | None, copy_gbps: float, iters: int,
               with_sdpa: bool, timer=time_us) -> tuple[Row, str | None]:
    """One decode case, ours and (optionally) SDPA, each timed by `timer(fn, iters)`."""
    from pagedllm_kernels.triton_paged_attention import choose_num_splits, paged_attention, _num_sms

    args, k, v = decode_args(batch, context, num_splits)
    q = args["query"]
    splits = num_splits or choose_num_splits(batch, NUM_KV_HEADS, 1, context, _num_sms(q.device))
    moved = 2 * k.numel() * k.element_size() + 2 * q.numel() * q.element_size()
    ours_us = timer(lambda: paged_attention(**args), iters)
    ours = paged_attention(**args)
    ours_gbps = moved / ours_us / 1e3
    sdpa_name = sdpa_us = sdpa_gbps = diff = None
    if with_sdpa:
        sdpa_name, sdpa = _sdpa_call(q[:, :, None], k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous())
        if sdpa is not None:
            sdpa_us = timer(sdpa, iters)
            sdpa_gbps = moved / sdpa_us / 1e3
            diff = (sdpa()[:, :, 0].float() - ours.float()).abs().max().item()
    row = Row(batch, context, splits, ours_us, ours_gbps, 100 * ours_gbps / copy_gbps, sdpa_us, sdpa_gbps, diff)
    return row, sdpa_name


SWEEP_CASES = [(256, 832), (64, 832), (64, 4096), (256, 256)]  # 832: the nano mean live context


def sweep(copy_gbps: float, iters: int) -> list[dict]:
    """Graph-launched decode time of every launch config on each case; the current one marked."""
    from pagedllm_kernels.triton_paged_attention import LaunchConfig, launch_config, paged_attention

    current = launch_config(DTYPE, 1, HEAD_DIM)
    configs = [LaunchConfig(n, w, s) for n in (32, 64, 128) for w in (2, 4, 8) for s in (1, 2, 3)]
    configs += [] if current in configs else [current]
    results = []
    for batch, context in SWEEP_CASES:
        args, k, _ = decode_args(batch, context, None)
        moved = 2 * k.numel() * k.element_size() + 2 * args["query"].numel() * DTYPE.itemsize
        want = paged_attention(**args)
        rows = []
        for config in configs:
            try:
                got = paged_attention(**args, config=config)
            except Exception as e:  # a config the compiler refuses (shared memory): skipped
                print(f"  {config}: {type(e).__name__}", flush=True)
                continue
            diff = (got.float() - want.float()).abs().max().item()
            us = time_us_graph(lambda: paged_attention(**args, config=config), iters)
            rows.append(dict(asdict(config), us=us, pct_of_copy=100 * moved / us / 1e3 / copy_gbps,
                             max_abs_diff=diff, current=config == current))
        rows.sort(key=lambda r: r["us"])
        now = next(r for r in rows if r["current"])
        print(f"\nbatch {batch} context {context}: now {now['us']:.1f} us ({now['pct_of_copy']:.1f} % of copy)")
        for r in rows[:5]:
            print(f"  block_n {r['block_n']:3d} warps {r['num_warps']} stages {r['num_stages']}: "
                  f"{r['us']:7.1f} us {r['pct_of_copy']:5.1f} %  x{now['us'] / r['us']:.2f}  "
                  f"|diff| {r['max_abs_diff']:.1e}", flush=True)
        results.append(dict(batch=batch, context=context, rows=rows))
        torch.cuda.empty_cache()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-tests", action="store_true", help="only the microbenchmark")
    parser.add_argument("--iters", type=int, default=50, help="timed calls per case (median)")
    parser.add_argument("--sweep", action="store_true", help="time the launch configs instead")
    parser.add_argument("--heads", choices=list(HEADS), default="llama-1b",
                        help="whose attention heads the decode cases use")
    opts = parser.parse_args()
    global NUM_HEADS, NUM_KV_HEADS, HEAD_DIM
    NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = HEADS[opts.heads]
    if not torch.cuda.is_available():
        print("pagedllm_tools.bench.kernels_gpu needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    report: dict = {
        "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()},
        "workload": dict(num_heads=NUM_HEADS, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM, block_size=BLOCK_SIZE,
                         dtype=str(DTYPE), query_len=1, blocks="shuffled"),
    }
    if opts.sweep:
        report["copy_gbps"] = copy_gbps = copy_bandwidth_gbps(opts.iters)
        report["sweep"] = sweep(copy_gbps, opts.iters)
        if os.environ.get("OUT"):
            (Path(os.environ["OUT"]) / f"kernels_sweep-{opts.heads}.json").write_text(json.dumps(report, indent=2))
        return 0
    report["tests"] = None if opts.skip_tests else run_tests()

    copy_gbps = copy_bandwidth_gbps(opts.iters)
    report["copy_gbps"] = copy_gbps
    cases = [(64, 1024, None), (64, 4096, None), (64, 16384, None), (4, 16384, 1), (4, 16384, None)]
    rows, sdpa_names = [], set()
    for batch, context, splits in cases:
        row, name = bench_case(batch, context, splits, copy_gbps, opts.iters, with_sdpa=splits is None)
        rows.append(row)
        if name:
            sdpa_names.add(name)
        torch.cuda.empty_cache()
    report["sdpa_backend"] = sorted(sdpa_names)
    report["rows"] = [asdict(r) for r in rows]

    print(f"\n{report['device']}  torch {torch.__version__}  triton {triton.__version__}")
    print(f"device-to-device copy: {copy_gbps:,.0f} GB/s (read + write); SDPA: {', '.join(sdpa_names) or 'n/a'}")
    print(f"decode, {NUM_HEADS} q heads / {NUM_KV_HEADS} kv heads, head_dim {HEAD_DIM}, bf16, block {BLOCK_SIZE}")
    print(f"{'batch':>5} {'ctx':>6} {'splits':>6} {'ours us':>9} {'ours GB/s':>10} {'% copy':>7} "
          f"{'sdpa us':>9} {'sdpa GB/s':>10} {'|ours-sdpa|':>11}")
    for r in rows:
        sdpa = (f"{r.sdpa_us:9.1f} {r.sdpa_gbps:10,.0f} {r.max_abs_diff_vs_sdpa:11.2e}" if r.sdpa_us is not None
                else f"{'-':>9} {'-':>10} {'-':>11}")
        print(f"{r.batch:5d} {r.context:6d} {r.num_splits:6d} {r.ours_us:9.1f} {r.ours_gbps:10,.0f} "
              f"{r.ours_pct_of_copy:6.1f}% {sdpa}")
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "kernels_gpu.json"
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")
    tests = report["tests"]
    return 0 if tests is None or tests["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
