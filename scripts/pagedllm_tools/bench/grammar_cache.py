"""What structured outputs cost the engine: compiling a grammar, the cache, and each step's masks.

Prints, for the default model (or --model): the time add_request takes for an unconstrained
request, for the first request with a JSON Schema (the grammar is compiled), and for the second
with the same schema (a cache hit); then the per-step cost of a constrained row (its matcher's
bitmask, and the mask applied to a batch's logits). CPU only, a few seconds:

    python -m pagedllm_tools.bench.grammar_cache [--model DIR] [--repeats 20]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pagedllm import SamplingParams
from pagedllm.config import EngineConfig
from pagedllm.engine import LLMEngine
from pagedllm.layers.token_bitmask import apply_token_bitmasks
from pagedllm.null_runner import NullRunner
from pagedllm_tools import ROOT

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["id", "items"],
          "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999},
                         "color": {"enum": ["red", "green", "blue"]},
                         "items": {"type": "array", "maxItems": 3, "items": {
                             "type": "object", "required": ["k"],
                             "properties": {"k": {"type": "string", "maxLength": 8}}}}}}


def _ms(f) -> float:
    t0 = time.perf_counter()
    f()
    return (time.perf_counter() - t0) * 1e3


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "default"))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rows", type=int, default=64, help="constrained rows in the masked batch")
    args = p.parse_args(argv)

    config = EngineConfig(model=args.model, num_kv_blocks=4096, max_num_seqs=256)
    engine = LLMEngine(config, runner=NullRunner(4096, vocab_size=16))
    prompt = [1, 2, 3]
    ids = iter(range(10**9))

    def add(params: SamplingParams) -> float:
        return _ms(lambda: engine.add_request(str(next(ids)), prompt, params))

    plain = [add(SamplingParams()) for _ in range(args.repeats)]
    warm = add(SamplingParams(structured_outputs={"regex": "[ab]"}))  # xgrammar, the vocabulary
    first = add(SamplingParams(structured_outputs={"json": SCHEMA}))
    again = [add(SamplingParams(structured_outputs={"json": SCHEMA})) for _ in range(args.repeats)]
    med = statistics.median
    print(f"add_request, unconstrained:            {med(plain):8.3f} ms (median of {len(plain)})")
    print(f"first constrained request (xgrammar import, vocabulary): {warm:8.1f} ms")
    print(f"first request with this JSON Schema (compile): {first:8.3f} ms")
    print(f"same schema again (cache hit):          {med(again):8.3f} ms (median of {len(again)})")
    print(f"  -> the cached schema adds {med(again) - med(plain):.3f} ms over an unconstrained "
          f"request")

    matcher = next(r.state.matcher for r in engine.requests.values() if r.state.matcher)
    fill = [_ms(matcher.fill_mask) for _ in range(args.repeats)]
    vocab = engine.model_config.vocab_size
    logits = torch.randn(args.rows, vocab)
    masks = [matcher.fill_mask().clone() for _ in range(args.rows)]
    apply = [_ms(lambda: apply_token_bitmasks(logits, masks)) for _ in range(args.repeats)]
    print(f"per step: one row's bitmask (vocab {vocab}): {med(fill) * 1e3:8.1f} us; "
          f"applying {args.rows} rows' masks: {med(apply):.3f} ms")


if __name__ == "__main__":
    main()
