"""Incremental detokenization, ours against `tokenizers.decoders.DecodeStream`, per engine step.

Decodes 256 requests x 200 steps of random tokens (the default model's byte-level BPE) three
ways and prints the time per step and whether each gives exactly `tokenizer.decode(ids)`:

- ours, byte-level fast path (what byte-level BPE tokenizers run: GPT-2, Llama-3, Qwen2);
- ours, window path (prefix/read offsets; what other tokenizers run), forced on the same tokens;
- one `DecodeStream` per request (tokenizers' own incremental decoder).

    python -m pagedllm_tools.bench.detokenizer [--requests 256] [--steps 200]
"""
from __future__ import annotations

import argparse
import random
import time

from tokenizers import Tokenizer as RustTokenizer
from tokenizers.decoders import DecodeStream

from pagedllm.detokenizer import IncrementalDetokenizer
from pagedllm.tokenizer import Tokenizer
from pagedllm_tools import ROOT


def ours(tokenizer, prompts, outputs, window: bool) -> tuple[float, list[str]]:
    """(µs per step, texts) of IncrementalDetokenizer; `window` forces the prefix/read path."""
    detok = IncrementalDetokenizer(tokenizer)
    states = [detok.new_state(p, True) for p in prompts]
    for state in states:
        state.byte_level = state.byte_level and not window
    ids = [list(p) for p in prompts]
    texts = [""] * len(prompts)
    spent = 0.0
    for k in range(len(outputs[0])):
        for i, out in enumerate(outputs):
            ids[i].append(out[k])
        t0 = time.perf_counter()
        deltas = detok.step(states, ids)
        spent += time.perf_counter() - t0
        texts = [t + d for t, d in zip(texts, deltas)]
    texts = [t + detok.flush(s, i) for t, s, i in zip(texts, states, ids)]
    return spent / len(outputs[0]) * 1e6, texts


def decode_stream(rust, outputs) -> tuple[float, list[str]]:
    """(µs per step, texts) of one DecodeStream per request (it has no flush at the end)."""
    streams = [DecodeStream(skip_special_tokens=True) for _ in outputs]
    texts = [""] * len(outputs)
    spent = 0.0
    for k in range(len(outputs[0])):
        t0 = time.perf_counter()
        deltas = [s.step(rust, out[k]) for s, out in zip(streams, outputs)]
        spent += time.perf_counter() - t0
        texts = [t + (d or "") for t, d in zip(texts, deltas)]
    return spent / len(outputs[0]) * 1e6, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    model = ROOT / "models" / "default"
    tokenizer = Tokenizer.from_dir(str(model))
    rust = RustTokenizer.from_file(str(model / "tokenizer.json"))
    rng = random.Random(0)
    prompts = [[rng.randrange(10, 4000) for _ in range(50)] for _ in range(args.requests)]
    outputs = [[rng.randrange(10, 4000) for _ in range(args.steps)] for _ in range(args.requests)]
    expected = [rust.decode(out, skip_special_tokens=True) for out in outputs]
    for name, (us, texts) in (("ours, byte-level fast path", ours(tokenizer, prompts, outputs, False)),
                              ("ours, window path", ours(tokenizer, prompts, outputs, True)),
                              ("DecodeStream", decode_stream(rust, outputs))):
        exact = sum(t == e for t, e in zip(texts, expected))
        print(f"{name:28s} {us:7.0f} us/step   exact text: {exact}/{len(texts)} requests")


if __name__ == "__main__":
    main()
