"""Why capturing the mixed-step graphs slows every later decode step (GPU only; a diagnosis).

With `max_mixed_graph_tokens` > 0, workload A ran ~2 % slower on an H200 although it replays a
single mixed graph, and the decode graph's own GPU time grew by ~60 us a replay. This tool
isolates the cause: it builds the engine with the mixed graphs off, does one thing, then times
the decode graph's replays alone (CUDA events, best of 3 x 50 back to back) at batch 64 and 256,
context 833. One process per variant, so that no variant sees another's effect:

- none:      nothing;
- side:      the mixed capture's warm-up forward (2,048 padding tokens, max_num_seqs empty
             sequences) on a side stream, as MixedGraphs runs it;
- current:   the same forward on the current stream;
- gemm:      one layer's four linears at M = 2,048 on a side stream;
- attn:      one layer's varlen attention with that metadata on a side stream;
- malloc:    a fresh 1 GiB allocation on the current stream;
- recapture: `side`, then the decode graphs captured again.

    python -m pagedllm_tools.bench.side_stream [--out DIR] [--variants none side ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

VARIANTS = ["none", "side", "current", "gemm", "attn", "malloc", "recapture"]


def _perturb(llm, variant: str) -> None:
    import torch

    from pagedllm.cuda_graphs import DecodeGraphs
    from pagedllm.layers.attention import AttentionMetadata
    runner = llm.engine.runner
    b, model, tokens = runner.buffers, runner.model, 2048
    s = b.max_seqs
    b.prepare([], [], [], [], [], pad_to=tokens)
    meta = AttentionMetadata(slot_mapping=b.slot_mapping(tokens), block_tables=runner.graphs.block_tables[:s],
                             seq_lens=b.seq_lens(s), query_start_loc=b.i32[s:2 * s + 1],
                             max_query_len=2, max_seq_len=runner.max_model_len)
    layer = model.model.layers[0]
    stream = torch.cuda.current_stream() if variant == "current" else torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        if variant in ("side", "current", "recapture"):
            model(b.input_ids(tokens), b.positions(tokens), runner.kv_caches, meta)
        elif variant == "gemm":
            x = torch.randn(tokens, layer.self_attn.qkv_proj.weight.shape[1], dtype=runner.dtype, device="cuda")
            layer.self_attn.qkv_proj(x)
            layer.self_attn.o_proj(x)
            y = layer.mlp.gate_up_proj(x)
            layer.mlp.down_proj(y[:, :y.shape[1] // 2].contiguous())
        elif variant == "attn":
            at = layer.self_attn
            q = torch.randn(tokens, at.num_heads, at.head_dim, dtype=runner.dtype, device="cuda")
            at.attn(q, runner.kv_caches[0], meta)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    if variant == "malloc":
        runner.held = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    if variant == "recapture":
        old = runner.graphs
        runner.graphs = DecodeGraphs(model, runner.kv_caches, b, max_batch=old.max_batch,
                                     max_model_len=runner.max_model_len, num_kv_heads=old.num_kv_heads)


def child(ckpt: str, variant: str) -> None:
    import torch

    from pagedllm import LLM, SamplingParams, kernels
    from pagedllm.layers.sampler import SamplingRow
    from pagedllm_tools.bench import peer
    llm = LLM(ckpt, device="cuda", dtype="bfloat16", max_mixed_graph_tokens=0, **peer.ENGINE_KW)
    runner = llm.engine.runner
    with torch.inference_mode():
        _perturb(llm, variant)
    g = runner.graphs
    row = SamplingRow(params=SamplingParams(temperature=0.0), prompt_token_ids=(), output_token_ids=())
    context, per_seq = 833, -(-834 // runner.block_size)
    res: dict = {"variant": variant}
    for batch in (64, 256):
        runner.execute(token_ids=[[1] * (context + 1)] * batch, num_computed=[context] * batch,
                       num_tokens=[1] * batch,
                       block_tables=[list(range(i * per_seq, (i + 1) * per_seq)) for i in range(batch)],
                       sample=[True] * batch, rows=[row] * batch)  # the graph's inputs: a real step
        bucket = g.bucket_for(batch)
        graph = g._graphs[(bucket, kernels.decode_num_splits(bucket, g.num_kv_heads, context + 1, g._ops, g.device))]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        best = float("inf")
        for _ in range(3):
            torch.cuda.synchronize()
            start.record()
            for _ in range(50):
                graph.replay()
            end.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(end) / 50)
        res[f"replay_ms_b{batch}"] = best
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--work", default="/tmp/side-stream")
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    ap.add_argument("--child", nargs=2, metavar=("CKPT", "VARIANT"))
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    ckpt = Path(a.work) / "llama-1b"
    if not (ckpt / "config.json").exists():
        subprocess.run([sys.executable, "-m", "pagedllm_tools.bench.peer", "--child", "build", "llama-1b",
                        str(ckpt)], check=True)
    results = []
    for variant in a.variants:
        p = subprocess.run([sys.executable, "-m", "pagedllm_tools.bench.side_stream", "--child", str(ckpt), variant],
                           capture_output=True, text=True, timeout=180)
        lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            print(variant, "failed:", p.stderr[-2000:])
            continue
        r = json.loads(lines[0][len("RESULT "):])
        results.append(r)
        print(f"{variant:10s} decode graph replay: batch 64 {r['replay_ms_b64']:.3f} ms, "
              f"batch 256 {r['replay_ms_b256']:.3f} ms", flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    Path(a.out, "side-stream.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
