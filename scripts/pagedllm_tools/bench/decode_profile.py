"""Where one stream's decode time goes: workload D's shape through the engine, kernel by kernel.

Issue 22 asks for llama-8b's single stream at <= 1.15x the weight-read limit. decode_gemms.py
times the GEMMs alone; this times the whole step the engine runs and splits it:

1. ms per decode token: one request of --prompt tokens, generated to 1 and to --tokens tokens
   (greedy, ignore_eos); (t[tokens] - t[1]) / (tokens - 1) leaves the prefill out.
2. a torch.profiler trace of --profile-tokens decode tokens (CUDA graphs replay as the engine
   runs them; CUPTI still names each kernel inside a graph): device time per token by kernel and
   by kind (GEMM, attention, norm, rotary/KV write, activation, sampling, copies, other), and the
   gap between the kernels' sum and the measured time per token (launch gaps, host work the GPU
   waits for).

    python -m pagedllm_tools.bench.decode_profile [--shape llama-8b] [--tokens 256]

Writes `decode-profile-<shape>-<card>.json` into --out-dir ($OUT, else the working directory).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

# kernel-name patterns, first match wins (cuBLAS/CUTLASS GEMMs have many names across releases)
KINDS = [
    ("attention", r"paged_attention|reduce_splits|flash|fmha"),
    ("rotary/KV write", r"rotary|reshape_and_cache|qk_norm"),
    ("norm", r"rms_norm"),
    ("activation", r"silu|gelu"),
    ("GEMM", r"gemm|gemv|nvjet|cutlass|sm90_xmma|ampere_|s16816|splitk|Kernel2"),
    ("sampling", r"argmax|topk|softmax|sort|multinomial|exponential|max_|reduce_kernel"),
    ("copies", r"copy|Memcpy|Memset|fill|index|gather|scatter"),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def _generate_s(llm, prompt: list[int], tokens: int) -> float:
    from pagedllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    torch.cuda.synchronize()
    t = time.perf_counter()
    llm.generate([{"prompt_token_ids": prompt}], params)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> int:
    from pagedllm import LLM
    from pagedllm_tools.bench.gpu import SHAPES, build_shape

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama-8b", choices=list(SHAPES))
    ap.add_argument("--checkpoint", help="an existing checkpoint of the shape (else one is built)")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--profile-tokens", type=int, default=64)
    ap.add_argument("--out-dir", default=os.environ.get("OUT", "."))
    opts = ap.parse_args()

    ckpt = Path(opts.checkpoint or tempfile.mkdtemp(prefix=f"{opts.shape}-"))
    if not (ckpt / "config.json").exists():
        build_shape(opts.shape, ckpt)  # (the HF model it returns is dropped here)
        torch.cuda.empty_cache()
    llm = LLM(str(ckpt), device="cuda", dtype="bfloat16", max_num_seqs=256, max_num_batched_tokens=8192,
              max_model_len=4096, gpu_memory_utilization=0.45)
    prompt = [(7 * i + 3) % 10000 for i in range(opts.prompt)]
    _generate_s(llm, prompt, 16)  # warm-up: compiles, captures
    t1 = min(_generate_s(llm, prompt, 1) for _ in range(3))
    tn = _generate_s(llm, prompt, opts.tokens)
    ms_per_token = (tn - t1) / (opts.tokens - 1) * 1e3

    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        tp = _generate_s(llm, prompt, opts.profile_tokens + 1)
    per_kernel: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        if evt.device_type == torch.autograd.DeviceType.CUDA and evt.self_device_time_total > 0:
            per_kernel[evt.key] += evt.self_device_time_total
    # the prefill's kernels are in the trace too: take its share out in proportion to time
    decode_share = max(0.0, (tp - t1) / tp)
    scale = decode_share / opts.profile_tokens / 1e3  # us in the trace -> ms per decode token
    kernels = sorted(((k, us * scale) for k, us in per_kernel.items()), key=lambda kv: -kv[1])
    kinds: dict[str, float] = defaultdict(float)
    for name, ms in kernels:
        kinds[kind_of(name)] += ms
    kernel_sum = sum(kinds.values())

    card = torch.cuda.get_device_name()
    print(f"{card}, {opts.shape}: {opts.prompt} prompt tokens, decode {ms_per_token:.3f} ms/token "
          f"({1e3 / ms_per_token:.0f} tok/s)")
    print(f"kernels {kernel_sum:.3f} ms/token; gap (launches, host) {ms_per_token - kernel_sum:.3f} ms")
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:16s} {ms:7.3f} ms  {100 * ms / ms_per_token:5.1f} %")
    print("top kernels (ms/token):")
    for name, ms in kernels[:15]:
        print(f"  {ms:7.4f}  {kind_of(name):16s} {name[:90]}")
    out = Path(opts.out_dir) / f"decode-profile-{opts.shape}-{card.replace(' ', '-')}.json"
    out.write_text(json.dumps({
        "card": card, "shape": opts.shape, "prompt_tokens": opts.prompt, "tokens": opts.tokens,
        "ms_per_token": ms_per_token, "kernel_ms_per_token": kernel_sum, "kinds_ms": kinds,
        "kernels_ms": dict(kernels[:60]),
    }, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
