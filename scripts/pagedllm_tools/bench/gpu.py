"""GPU benchmarks of issue 4 in one run: decode kernel, end-to-end `nano`, decode roofline.

Writes `$OUT/gpu-<card>.json` (or --out-dir) and PNGs beside it; prints a summary table last.

1. kernel: decode paged attention, batch 64, contexts 1k/4k/16k, llama-1b heads (32 q / 8 kv,
   head_dim 64), bf16, block 16, shuffled blocks; timed inside a CUDA graph (as the engine runs
   it) and per call; achieved bytes/s against the measured device-to-device copy, and torch SDPA
   (flash) on the same K/V laid out contiguously (helpers from kernels_gpu.py).
2. end to end, workload `nano` (docs/workloads.md: 256 requests, prompt and output lengths uniform in
   [100, 1024], prompt ids below 10000, ignore_eos, seed 0; greedy) on the `llama-1b` and
   `qwen3-0.6b` shapes (random bf16 weights): pagedllm's LLM.generate on all 256 requests and on
   the HF subset; HF `generate` in padded static batches of 64 in arrival order; HF continuous
   batching (its ContinuousBatchingManager, per-request max_new_tokens) with its default knobs (first
   shape only) and with CUDA graphs on. HF runs at ~1k tok/s, so the HF baselines run on the first
   --hf-requests requests (the JSON says how many); pagedllm is timed after one untimed pass.
3. decode roofline per shape: (weights + KV bytes) per step over the copy bandwidth, beside the
   measured time of one decode step (runner.execute: inputs, graph replay, logits, sampling) at
   batch 64 and 256, mean context 833 (the workload's mean live context), graphs on and off.

    python -m pagedllm_tools.bench.gpu [--skip-hf] [--hf-requests 64] [--out-dir DIR]
"""
from __future__ import annotations

import argparse
import gc
import inspect
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from pagedllm import LLM, SamplingParams
from pagedllm.sampler import SamplingRow
from pagedllm.scheduler import SchedulerOutput
from pagedllm_tools import ROOT
from pagedllm_tools.bench.kernels_gpu import bench_case, copy_bandwidth_gbps, time_us_graph
from pagedllm_clients.workloads import nano_prompts

SHAPES = {
    # Llama-3.2-1B's config.json, weights random.
    "llama-1b": dict(
        arch="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
        max_position_embeddings=131072, rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=8192)),
    # Qwen3-0.6B's config.json, weights random.
    "qwen3-0.6b": dict(
        arch="qwen3", hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
        head_dim=128, intermediate_size=3072, vocab_size=151936, tie_word_embeddings=True,
        max_position_embeddings=40960, rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
}
# Llama-3.1-8B's and Qwen3-8B's config.json (what differs from their small siblings'), weights random.
SHAPES["llama-8b"] = dict(
    SHAPES["llama-1b"], hidden_size=4096, num_hidden_layers=32, head_dim=128, intermediate_size=14336,
    tie_word_embeddings=False, rope_parameters=dict(SHAPES["llama-1b"]["rope_parameters"], factor=8.0))
SHAPES["qwen3-8b"] = dict(SHAPES["qwen3-0.6b"], hidden_size=4096, num_hidden_layers=36, num_attention_heads=32,
                          intermediate_size=12288, tie_word_embeddings=False)


# ---- workload and models -------------------------------------------------------------------------

def build_shape(name: str, out_dir: Path):
    """Saves a random-weight bf16 checkpoint of shape `name` (+ a tokenizer.json); returns the HF model."""
    from transformers import LlamaConfig, Qwen3Config, AutoModelForCausalLM

    spec = dict(SHAPES[name])
    cls = {"llama": LlamaConfig, "qwen3": Qwen3Config}[spec.pop("arch")]
    config = cls(**spec)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    write_tokenizer(out_dir / "tokenizer.json", config.vocab_size,
                    {config.bos_token_id: "<|begin_of_text|>", config.eos_token_id: "<|end_of_text|>"})
    return model


def write_tokenizer(path: Path, vocab_size: int, special: dict[int, str] | None = None) -> None:
    """A byte-level BPE tokenizer.json with exactly vocab_size tokens (random models emit any id).

    The default model's tokenizer (a real trained byte-level BPE, GPT-2 pre-tokenization) fills
    the first ids, so text encodes as with a real tokenizer (and as its ONNX export does); filler
    tokens "x y" (a space between two non-space byte characters: never a whole pre-token, so
    never produced by encoding, only by sampling) fill up to vocab_size. `special` puts special
    tokens at given ids (a BOS/EOS, as real checkpoints have).
    """
    from pagedllm.byte_tokens import bytes_to_unicode

    special = special or {}
    data = json.loads((ROOT / "models" / "default" / "tokenizer.json").read_text())
    vocab: dict[str, int] = dict(data["model"]["vocab"])
    taken = set(vocab.values())
    space = bytes_to_unicode()[ord(" ")]
    # By code point: printable bytes first, then the others (GPT-2's order).
    alphabet = sorted(c for b, c in bytes_to_unicode().items() if not chr(b).isspace())
    fillers = itertools.chain((a + space + b for a in alphabet for b in alphabet),
                              (a + space + b + c for a in alphabet for b in alphabet for c in alphabet))
    added = list(data["added_tokens"])
    for i in range(vocab_size):
        if i in special:
            vocab[special[i]] = i
            added.append({"id": i, "content": special[i], "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True})
        elif i not in taken:
            vocab[next(fillers)] = i
    data["model"]["vocab"] = vocab
    data["added_tokens"] = added
    path.write_text(json.dumps(data, ensure_ascii=False))


def _strings(alphabet):
    yield from alphabet
    for a in alphabet:
        for b in alphabet:
            yield a + b
    for a in alphabet:
        for b in alphabet:
            for c in alphabet:
                yield a + b + c


# ---- pagedllm ------------------------------------------------------------------------------------

def _reset_prefix_cache(llm: LLM) -> None:
    if not llm.reset_prefix_cache():
        raise RuntimeError("prefix cache not reset: a request still holds KV blocks")


def run_pagedllm(llm: LLM, prompts, outputs) -> dict:
    params = [SamplingParams(temperature=0.0, max_tokens=o, ignore_eos=True) for o in outputs]
    runner = llm.engine.runner
    replays0 = runner.graphs.num_replays if runner.graphs else 0
    hits0 = llm.engine.kv_cache_stats()["prefix_cache_hits"]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    wall = time.perf_counter() - t0
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    if produced != sum(outputs):
        raise RuntimeError(f"pagedllm produced {produced} tokens, expected {sum(outputs)}")
    return {"requests": len(prompts), "output_tokens": produced, "wall_s": wall,
            "output_tok_s": produced / wall,
            "graph_replays": (runner.graphs.num_replays - replays0) if runner.graphs else 0,
            "preemptions": llm.engine.kv_cache_stats()["num_preemptions"],
            "prefix_cache_hit_tokens": llm.engine.kv_cache_stats()["prefix_cache_hits"] - hits0}


def decode_step_times(llm: LLM, batches=(64, 256), context: int = 833, iters: int = 30) -> list[dict]:
    """Milliseconds per pure-decode runner step (inputs, forward, logits, greedy sampling)."""
    runner = llm.engine.runner
    bs = runner.block_size
    per_seq = -(-(context + 1) // bs)
    row = SamplingRow(params=SamplingParams(temperature=0.0), prompt_token_ids=(), output_token_ids=())
    results = []
    for batch in batches:
        if batch * per_seq > runner.num_kv_blocks or batch > llm.engine.config.max_num_seqs:
            continue
        tokens = [[1] * (context + 1) for _ in range(batch)]
        tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(batch)]
        args = dict(token_ids=tokens, num_computed=[context] * batch, num_tokens=[1] * batch,
                    total_tokens=batch, block_tables=tables, sample=[True] * batch,
                    rows=[row] * batch)
        step = SchedulerOutput(**args)
        entry = {"batch": batch, "context": context}
        graphs, mixed = runner.graphs, runner.mixed_graphs
        for label, g in (("graphs", graphs), ("eager", None)):
            if label == "graphs" and graphs is None:
                continue
            # eager: no graph at all (a decode step that misses the decode graphs would
            # otherwise replay a mixed-step graph)
            runner.graphs, runner.mixed_graphs = g, (mixed if g is not None else None)
            for _ in range(3):
                runner.execute(step)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(iters):
                runner.execute(step)
            entry[f"{label}_ms"] = (time.perf_counter() - t0) / iters * 1e3
        runner.graphs, runner.mixed_graphs = graphs, mixed
        if graphs is not None:
            entry["graphs_pipelined_ms"] = _pipelined_step_ms(runner, args, iters)
        results.append(entry)
    return results


def _pipelined_step_ms(runner, args: dict, iters: int) -> float:
    """Milliseconds per decode step as an async-scheduled engine runs them: step N+1 prepared and
    launched before step N's tokens are read back, its input ids patched from them on the device."""
    batch = len(args["num_computed"])
    # their last token: pending, read on the device from the step before
    nxt = dict(args, token_ids=[t[:-1] for t in args["token_ids"]],
               pending_rows=list(range(batch)), pending_sources=list(range(batch)))
    handle = runner.launch(SchedulerOutput(**args))
    step = SchedulerOutput(**nxt)
    for i in range(3 + iters):
        if i == 3:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        following = runner.launch(step)
        handle.result()
        handle = following
    handle.result()
    return (time.perf_counter() - t0) / iters * 1e3


def roofline(llm: LLM, copy_gbps: float, batch: int, context: int) -> dict:
    """Least bytes one decode step moves (every weight once, every cached K/V once) over copy bandwidth."""
    runner = llm.engine.runner
    weight_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    kv_bytes = batch * context * runner.kv_bytes_per_block // runner.block_size
    ms = (weight_bytes + kv_bytes) / (copy_gbps * 1e9) * 1e3
    return {"batch": batch, "context": context, "weight_bytes": weight_bytes, "kv_bytes": kv_bytes,
            "roofline_ms": ms, "roofline_tok_s": batch / ms * 1e3}


# ---- Hugging Face baselines ----------------------------------------------------------------------

@torch.inference_mode()
def hf_generate_static(model, prompts, outputs, batch: int = 64) -> dict:
    """HF generate, padded static batches in arrival order: each batch runs to its longest output."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk, outs = prompts[i:i + batch], outputs[i:i + batch]
        width = max(len(p) for p in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for j, p in enumerate(chunk):  # left padding, as generate wants for decoder-only models
            ids[j, width - len(p):] = torch.tensor(p)
            mask[j, width - len(p):] = 1
        longest = max(outs)
        model.generate(input_ids=ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=longest,
                       min_new_tokens=longest, do_sample=False, pad_token_id=0)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    useful = sum(outputs)
    return {"requests": len(prompts), "batch_size": batch, "output_tokens": useful, "wall_s": wall,
            "output_tok_s": useful / wall, "counting": "each request's own output tokens"}


def hf_continuous(model, prompts, outputs, knobs: dict) -> dict:
    """HF continuous batching (paged KV, its own scheduler), one request per prompt, EOS disabled."""
    from transformers import GenerationConfig
    try:
        from transformers.generation import ContinuousBatchingConfig
    except ImportError:
        ContinuousBatchingConfig = None

    accepted = set(inspect.signature(ContinuousBatchingConfig).parameters) if ContinuousBatchingConfig else set()
    used = {k: v for k, v in knobs.items() if k in accepted}
    gen = GenerationConfig(max_new_tokens=max(outputs), do_sample=False, eos_token_id=-1, pad_token_id=0)
    init_params = inspect.signature(model.init_continuous_batching).parameters
    kwargs = {"generation_config": gen}
    if ContinuousBatchingConfig and "continuous_batching_config" in init_params:
        kwargs["continuous_batching_config"] = ContinuousBatchingConfig(**used)
    manager = model.init_continuous_batching(**kwargs)
    manager.start()
    add_params = inspect.signature(manager.add_request).parameters
    extra = {"eos_token_id": -1} if "eos_token_id" in add_params else {}
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i, (p, o) in enumerate(zip(prompts, outputs)):
        manager.add_request(input_ids=p, request_id=f"r{i}", max_new_tokens=o, **extra)
    produced, done = 0, 0
    deadline = time.perf_counter() + 600
    while done < len(prompts) and time.perf_counter() < deadline:
        result = manager.get_result(timeout=1)
        if result is None:
            continue
        done += 1
        produced += len(getattr(result, "generated_tokens", None) or getattr(result, "output_ids", ()))
    wall = time.perf_counter() - t0
    manager.stop(block=True)
    if hasattr(model, "destroy_cached_continuous_batching_manager"):
        model.destroy_cached_continuous_batching_manager()
    return {"requests": len(prompts), "finished": done, "output_tokens": produced, "wall_s": wall,
            "output_tok_s": produced / wall, "knobs": used,
            "knobs_ignored": sorted(set(knobs) - set(used))}


CB_KNOBS = {
    "default": {},
    # What a user tuning it would try: CUDA graphs on, room for the whole batch in one step.
    "cuda_graphs": {"use_cuda_graph": True, "max_batch_tokens": 4096, "max_requests_per_batch": 256},
}


# ---- main ----------------------------------------------------------------------------------------

def kernel_section(copy_gbps: float, iters: int) -> dict:
    rows = []
    for context in (1024, 4096, 16384):
        for timing, timer in (("graph", time_us_graph), ("per_call", None)):
            kwargs = {"timer": timer} if timer else {}
            row, sdpa_name = bench_case(64, context, None, copy_gbps, iters, with_sdpa=True, **kwargs)
            entry = dict(row.__dict__, timing=timing, sdpa_backend=sdpa_name)
            entry["ours_over_sdpa"] = row.ours_us / row.sdpa_us if row.sdpa_us else None
            rows.append(entry)
            torch.cuda.empty_cache()
    return {"workload": "decode paged attention, batch 64, llama-1b heads (32 q / 8 kv, head_dim 64), "
                        "bf16, block 16, shuffled blocks; SDPA on the same K/V contiguous",
            "copy_gbps": copy_gbps, "rows": rows}


def shape_section(name: str, workdir: Path, copy_gbps: float, args) -> dict:
    prompts, outputs = nano_prompts()
    model_dir = workdir / name
    hf_model = build_shape(name, model_dir)
    hf_model.cpu()  # out of the way while pagedllm sizes its cache
    torch.cuda.empty_cache()
    section: dict = {"workload": "nano: 256 requests, prompt/output uniform [100,1024], ids < 10000, "
                                 "ignore_eos, greedy, seed 0", "shape": SHAPES[name]}
    t0 = time.perf_counter()
    llm = LLM(str(model_dir), device="cuda", dtype="bfloat16", max_num_seqs=256,
              max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=4096,
              gpu_memory_utilization=args.gpu_memory_utilization)
    runner = llm.engine.runner
    section["engine"] = {"init_s": time.perf_counter() - t0, "num_kv_blocks": runner.num_kv_blocks,
                         "memory_profile": runner.memory_profile,
                         "cuda_graphs": runner.graphs.num_graphs if runner.graphs else 0,
                         "max_num_batched_tokens": args.max_num_batched_tokens}
    # Warm-up, untimed: every prompt once with 16 output tokens. The prefill steps' shapes JIT-compile
    # their Triton variants here (seconds each on a fresh machine; the decode graphs compiled theirs
    # at capture), so the timed run measures the engine, not the compiler.
    t0 = time.perf_counter()
    run_pagedllm(llm, prompts, [16] * len(prompts))
    section["engine"]["warmup_s"] = time.perf_counter() - t0
    # NOTE: the warm-up left every prompt's full blocks in the prefix cache: each timed run
    # starts from an empty one, or it would skip most of its prefill.
    _reset_prefix_cache(llm)
    section["pagedllm"] = run_pagedllm(llm, prompts, outputs)
    print(f"{name}: pagedllm {section['pagedllm']['output_tok_s']:,.0f} tok/s", flush=True)
    # For the record, what a cached run would claim: the same prompts again, cache kept.
    section["pagedllm_prompts_cached"] = run_pagedllm(llm, prompts, outputs)
    print(f"{name}: pagedllm, prompts already cached "
          f"{section['pagedllm_prompts_cached']['output_tok_s']:,.0f} tok/s", flush=True)
    n = args.hf_requests
    _reset_prefix_cache(llm)
    section["pagedllm_hf_subset"] = run_pagedllm(llm, prompts[:n], outputs[:n])
    section["decode_steps"] = decode_step_times(llm)
    section["roofline"] = [roofline(llm, copy_gbps, s["batch"], s["context"]) for s in section["decode_steps"]]
    section["torch_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del llm, runner
    gc.collect()
    torch.cuda.empty_cache()
    if not args.skip_hf:
        hf_model.cuda()
        section["hf_generate"] = hf_generate_static(hf_model, prompts[:n], outputs[:n])
        print(f"{name}: HF generate {section['hf_generate']['output_tok_s']:,.0f} tok/s", flush=True)
        section["hf_continuous"] = {}
        # HF's default knobs only on the first shape: they are the slowest run, and one device call
        # must hold everything.
        labels = args.cb if name == args.shapes[0] else [c for c in args.cb if c != "default"]
        for label in labels:
            try:
                section["hf_continuous"][label] = hf_continuous(hf_model, prompts[:n], outputs[:n], CB_KNOBS[label])
                print(f"{name}: HF CB {label} {section['hf_continuous'][label]['output_tok_s']:,.0f} tok/s",
                      flush=True)
            except Exception as e:  # a knob this transformers version rejects: say so, go on
                section["hf_continuous"][label] = {"error": f"{type(e).__name__}: {e}"[:500]}
                print(f"{name}: HF CB {label} failed: {e}", flush=True)
        section["hf_subset_note"] = (f"HF baselines and pagedllm_hf_subset run the first {n} of the 256 "
                                     "requests (HF is too slow for all of them in one device call)")
    del hf_model
    gc.collect()
    torch.cuda.empty_cache()
    return section


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=os.environ.get("OUT", str(ROOT / "docs" / "benchmarks")))
    ap.add_argument("--shapes", nargs="+", default=["llama-1b", "qwen3-0.6b"], choices=list(SHAPES))
    ap.add_argument("--hf-requests", type=int, default=64)
    ap.add_argument("--cb", nargs="*", default=list(CB_KNOBS), choices=list(CB_KNOBS))
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-kernel", action="store_true")
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--plot-only", metavar="JSON", help="redraw the PNGs of an existing result")
    args = ap.parse_args()
    if args.plot_only:
        path = Path(args.plot_only)
        plot(json.loads(path.read_text()), path.with_suffix(""))
        return 0
    if not torch.cuda.is_available():
        print("pagedllm_tools.bench.gpu needs a CUDA GPU", file=sys.stderr)
        return 2
    import transformers
    import triton

    name = torch.cuda.get_device_name()
    card = next((c for c in ("h200", "h100", "a100", "l40s", "l4") if c in name.lower()), "gpu")
    out = Path(args.out_dir) / f"gpu-{card}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "device": name, "card": card,
        "versions": {"torch": torch.__version__, "triton": triton.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "commit": os.environ.get("PAGEDLLM_COMMIT", "unknown"),
    }
    copy_gbps = copy_bandwidth_gbps(args.iters)
    report["copy_gbps"] = copy_gbps

    def save():
        out.write_text(json.dumps(report, indent=2) + "\n")

    if not args.skip_kernel:
        report["kernel"] = kernel_section(copy_gbps, args.iters)
        save()
    with tempfile.TemporaryDirectory(prefix="pagedllm_shapes_") as tmp:
        for shape in args.shapes:
            report[f"nano_{shape}"] = shape_section(shape, Path(tmp), copy_gbps, args)
            save()
    plot(report, out.with_suffix(""))
    summary(report)
    print(f"wrote {out}")
    return 0


def summary(report: dict) -> None:
    print(f"\n{report['device']}  copy {report['copy_gbps']:,.0f} GB/s  ({report['versions']})")
    if "kernel" in report:
        print(f"{'ctx':>6} {'timing':>8} {'ours us':>8} {'% copy':>7} {'sdpa us':>8} {'ours/sdpa':>9}")
        for r in report["kernel"]["rows"]:
            print(f"{r['context']:6d} {r['timing']:>8} {r['ours_us']:8.1f} {r['ours_pct_of_copy']:6.1f}% "
                  f"{r['sdpa_us'] or 0:8.1f} {r['ours_over_sdpa'] or 0:9.2f}")
    for key, sec in report.items():
        if not key.startswith("nano_"):
            continue
        line = f"{key}: pagedllm {sec['pagedllm']['output_tok_s']:,.0f} tok/s (256 req)"
        line += f", subset {sec['pagedllm_hf_subset']['output_tok_s']:,.0f}"
        if "hf_generate" in sec:
            line += f"; HF generate {sec['hf_generate']['output_tok_s']:,.0f}"
            for label, r in sec["hf_continuous"].items():
                line += f"; HF CB {label} {r.get('output_tok_s', float('nan')):,.0f}"
        print(line)
        for step, roof in zip(sec["decode_steps"], sec["roofline"]):
            print(f"   decode batch {step['batch']} ctx {step['context']}: graphs {step.get('graphs_ms', 0):.2f} ms, "
                  f"eager {step['eager_ms']:.2f} ms, roofline {roof['roofline_ms']:.2f} ms")


def plot(report: dict, stem: Path) -> None:
    """<stem>-nano.png (output tok/s per system and shape), <stem>-kernel.png (share of copy bandwidth)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    card = report.get("card", "gpu").upper()
    shapes = [k for k in report if k.startswith("nano_")]
    if shapes:
        fig, ax = plt.subplots(figsize=(8, 4))
        systems = [("pagedllm (256 req)", lambda s: s["pagedllm"]),
                   ("pagedllm (HF subset)", lambda s: s["pagedllm_hf_subset"]),
                   ("HF generate (static 64)", lambda s: s.get("hf_generate", {})),
                   ("HF continuous batching (best)", lambda s: max(
                       (r for r in s.get("hf_continuous", {}).values() if "output_tok_s" in r),
                       key=lambda r: r["output_tok_s"], default={}))]
        width = 0.8 / len(systems)
        for i, (label, get) in enumerate(systems):
            vals = [get(report[k]).get("output_tok_s", 0) for k in shapes]
            ax.bar([j + i * width for j in range(len(shapes))], vals, width, label=label)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], [k[5:] for k in shapes])
        ax.set_ylabel(f"output tokens / s ({card})")
        ax.set_title("nano workload, bf16, random weights")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(f"{stem}-nano.png", dpi=100)
    if "kernel" in report:
        rows = [r for r in report["kernel"]["rows"] if r["timing"] == "graph"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ctx = [r["context"] for r in rows]
        copy = report["kernel"]["copy_gbps"]
        ax.plot(ctx, [r["ours_pct_of_copy"] for r in rows], "o-", label="pagedllm (paged K/V)")
        ax.plot(ctx, [100 * r["sdpa_gbps"] / copy if r["sdpa_gbps"] else 0 for r in rows], "s--",
                label="torch SDPA (contiguous K/V)")
        ax.axhline(70, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens), batch 64")
        ax.set_ylabel(f"% of copy bandwidth ({card})")
        ax.set_title("decode attention, llama-1b heads, bf16")
        ax.legend()
        fig.tight_layout()
        fig.savefig(f"{stem}-kernel.png", dpi=100)


if __name__ == "__main__":
    sys.exit(main())
