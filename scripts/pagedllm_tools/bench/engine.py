"""Engine benchmarks on CPU: continuous vs static batching, scheduling overhead, KV memory use.

Prints every figure and writes them to docs/benchmarks/engine_cpu.json (plus a PNG of the batching
comparison). Run: `make bench-engine` (or `python -m pagedllm_tools.bench.engine --help`).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from pagedllm import LLM, SamplingParams
from pagedllm.config import EngineConfig
from pagedllm.engine import LLMEngine
from pagedllm.models.config import ModelConfig
from pagedllm.null_runner import NullRunner
from pagedllm_tools import ROOT
from pagedllm_clients.workloads import nano_lengths


def mixed_workload(n: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """Prompts of 16-128 tokens; outputs log-uniform in [8, 512] (many short answers, a few long)."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(10, 4000) for _ in range(rng.randint(16, 128))] for _ in range(n)]
    outputs = [int(round(math.exp(rng.uniform(math.log(8), math.log(512))))) for _ in range(n)]
    return prompts, outputs


def uniform_workload(n: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """Prompts of 16-128 tokens; outputs uniform in [8, 512]."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(10, 4000) for _ in range(rng.randint(16, 128))] for _ in range(n)]
    return prompts, [rng.randint(8, 512) for _ in range(n)]


def _reset_prefix_cache(llm: LLM) -> None:
    if not llm.reset_prefix_cache():
        raise RuntimeError("prefix cache not reset: a request still holds KV blocks")


def run_batching(llm: LLM, prompts, outputs, batch: int) -> dict:
    """Output tok/s with continuous batching, and with static batches held until the longest ends.

    A static batch keeps every slot until its longest request ends (that is what padding costs), so
    each request in it runs to the batch's longest length; only its own tokens count as output.
    """
    useful = sum(outputs)
    cont = [SamplingParams(temperature=0.0, max_tokens=o, ignore_eos=True) for o in outputs]
    _reset_prefix_cache(llm)  # NOTE: each timed run computes its prompts: none cached before it
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], cont)
    t_cont = time.perf_counter() - t0
    assert sum(len(o.outputs[0].token_ids) for o in outs) == useful

    _reset_prefix_cache(llm)
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        longest = max(outputs[i:i + batch])
        held = SamplingParams(temperature=0.0, max_tokens=longest, ignore_eos=True)
        llm.generate([{"prompt_token_ids": p} for p in prompts[i:i + batch]], held)
    t_static = time.perf_counter() - t0
    return {
        "num_requests": len(prompts), "batch_size": batch, "output_tokens": useful,
        "continuous_tok_s": useful / t_cont, "static_tok_s": useful / t_static,
        "continuous_s": t_cont, "static_s": t_static, "ratio": t_static / t_cont,
    }


def scheduling_overhead(model: str, num_requests: int = 256, steps: int = 300) -> dict:
    """Microseconds per engine step (schedule + blocks + output processing) with a no-math runner."""
    num_blocks = 65536
    engine = LLMEngine(EngineConfig(model=model, num_kv_blocks=num_blocks, max_num_seqs=num_requests,
                                    max_num_batched_tokens=8192),
                       runner=NullRunner(num_blocks, vocab_size=engine_vocab(model)))
    rng = random.Random(0)
    for i in range(num_requests):
        prompt = [rng.randrange(10, 4000) for _ in range(rng.randint(100, 300))]
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=10_000, ignore_eos=True))
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.requests.values()):
        engine.step()
    assert len(engine.scheduler.running) == num_requests
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "running_requests": num_requests, "steps": steps,
        "us_per_step_mean": 1e6 * sum(times) / len(times),
        "us_per_step_p50": 1e6 * times[len(times) // 2],
        "us_per_step_p99": 1e6 * times[int(len(times) * 0.99)],
        "includes": "schedule, block allocation, token append, stop checks, incremental detokenization",
    }


def engine_vocab(model: str) -> int:
    return ModelConfig.from_dir(model).vocab_size


def kv_memory(model: str, block_size: int = 16, num_blocks: int = 8192) -> dict:
    """Share of allocated KV slots holding tokens: paged blocks vs max_model_len per request."""
    prompt_lens, output_lens = nano_lengths()
    max_model_len = 1024 + 1024
    engine = LLMEngine(EngineConfig(model=model, block_size=block_size, num_kv_blocks=num_blocks,
                                    max_num_seqs=256, max_num_batched_tokens=8192,
                                    max_model_len=max_model_len, enable_prefix_caching=False),
                       runner=NullRunner(num_blocks, vocab_size=engine_vocab(model)))
    rng = random.Random(0)
    for i, (p, o) in enumerate(zip(prompt_lens, output_lens)):
        engine.add_request(str(i), [rng.randrange(10, 4000) for _ in range(p)],
                           SamplingParams(max_tokens=o, ignore_eos=True))
    paged_tokens = paged_slots = contiguous_slots = 0
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        running = [r for r in engine.scheduler.running if not r.is_finished]
        tokens = sum(r.num_computed_tokens for r in running)
        blocks = sum(len(engine.kv_cache.req_to_blocks.get(r.request_id, ())) for r in running)
        paged_tokens += tokens
        paged_slots += blocks * block_size
        contiguous_slots += len(running) * max_model_len
        steps += 1
    return {
        "workload": "nano lengths (256 requests, prompt and output uniform in [100, 1024], seed 0)",
        "block_size": block_size, "num_blocks": num_blocks, "steps": steps,
        "max_model_len": max_model_len,
        "paged_slot_utilization": paged_tokens / paged_slots,
        "paged_waste": 1 - paged_tokens / paged_slots,
        "contiguous_slot_utilization": paged_tokens / contiguous_slots,
        "contiguous_waste": 1 - paged_tokens / contiguous_slots,
        "preemptions": engine.scheduler.stats.num_preemptions,
    }


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG")
        return
    names, cont, static = [], [], []
    for key in ("batching_mixed", "batching_uniform"):
        names.append(result[key]["workload"])
        cont.append(result[key]["continuous_tok_s"])
        static.append(result[key]["static_tok_s"])
    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], static, 0.4, label="static batching")
    ax.bar([i + 0.2 for i in x], cont, 0.4, label="continuous batching")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("output tokens / s (CPU, default model)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=str(ROOT / "models" / "default"))
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "engine_cpu.json"))
    args = ap.parse_args()
    torch.manual_seed(0)

    result = {
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "commit": _commit(),
        "model": Path(args.model).name,
    }
    overhead = scheduling_overhead(args.model)
    result["scheduling_overhead"] = overhead
    print(f"scheduling overhead at {overhead['running_requests']} running: "
          f"{overhead['us_per_step_mean']:.0f} us/step mean, p50 {overhead['us_per_step_p50']:.0f}, "
          f"p99 {overhead['us_per_step_p99']:.0f}")

    mem = kv_memory(args.model)
    result["kv_memory"] = mem
    print(f"KV slots holding tokens: paged {100 * mem['paged_slot_utilization']:.1f}% "
          f"(waste {100 * mem['paged_waste']:.1f}%), contiguous max_model_len={mem['max_model_len']} "
          f"{100 * mem['contiguous_slot_utilization']:.1f}% (waste {100 * mem['contiguous_waste']:.1f}%)")

    llm = LLM(args.model, device="cpu", dtype="float32", max_num_seqs=args.batch,
              num_kv_blocks=4096, max_num_batched_tokens=2048)
    for key, make, desc in (("batching_mixed", mixed_workload, "mixed (log-uniform outputs 8-512)"),
                            ("batching_uniform", uniform_workload, "uniform outputs 8-512")):
        prompts, outputs = make(args.requests, seed=0)
        r = run_batching(llm, prompts, outputs, args.batch)
        r["workload"] = desc
        result[key] = r
        print(f"{desc}: continuous {r['continuous_tok_s']:.0f} tok/s, static {r['static_tok_s']:.0f} "
              f"tok/s, ratio {r['ratio']:.2f}x")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out}")


def _commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
