"""Greedy token agreement of the engine in bf16/fp16 with transformers in float32 (GPU check).

Exact parity is only promised in float32; in bf16 rounding makes greedy paths diverge sooner or later.
This prints, per model, the share of prompts whose whole output matches and the share of output
tokens before the first divergence. Run: `python -m pagedllm_tools.bench.bf16_agreement --device cuda`.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch

from pagedllm import LLM, SamplingParams
from pagedllm_tools import ROOT
from pagedllm_tools.reference_models import TINY_ARCHS, hf_greedy, make_tiny_checkpoint


def agreement(model_dir: str, device: str, dtype: str, n_prompts: int, new_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM

    ref_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    vocab = ref_model.config.vocab_size
    rng = random.Random(0)
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(1, 400))] for _ in range(n_prompts)]
    expected = [hf_greedy(ref_model, p, new_tokens, device) for p in prompts]
    del ref_model
    llm = LLM(model_dir, device=device, dtype=dtype, num_kv_blocks=4096)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True))
    prefix = []
    for o, want in zip(outs, expected):
        got = o.outputs[0].token_ids
        k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
        prefix.append(k)
    return {"prompts": n_prompts, "new_tokens": new_tokens,
            "identical_outputs": sum(k == new_tokens for k in prefix) / n_prompts,
            "tokens_before_first_divergence": sum(prefix) / (n_prompts * new_tokens)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {arch: make_tiny_checkpoint(arch, Path(tmp) / arch) for arch in TINY_ARCHS}
        dirs["default"] = str(ROOT / "models" / "default")
        for name, d in dirs.items():
            r = agreement(d, args.device, args.dtype, args.prompts, args.new_tokens)
            results[name] = r
            print(f"{name:11s} {args.dtype}: identical outputs {100 * r['identical_outputs']:.0f}%, "
                  f"tokens before first divergence {100 * r['tokens_before_first_divergence']:.1f}%")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    doc = {"device": device_name, "dtype": args.dtype, "reference": "transformers float32 greedy",
           "versions": {"torch": torch.__version__}, "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
