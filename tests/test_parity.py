"""Greedy parity with Hugging Face transformers, token for token, in float32 on CPU.

32+ prompts of 1-400 tokens go in together, 48 new tokens each, in four settings: an ample KV cache,
a cache so small that requests are preempted, a token budget so small that prefills are chunked, and
prompts sharing prefixes so that the prefix cache hits. Each setting asserts that its mechanism ran.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm_tools.reference_models import greedy_references

from kv_invariants import check_kv_invariants

NUM_PROMPTS = 32
NEW_TOKENS = 48
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "default"
ARCHS = ["llama", "llama-tied", "qwen2", "qwen3", "mistral", "default"]
# NOTE: the GPU check runs this file with PAGEDLLM_TEST_DEVICE=cuda:
# both transformers and the engine then run on the GPU, in float32.
DEVICE = os.environ.get("PAGEDLLM_TEST_DEVICE", "cpu")


def random_prompts(vocab: int, seed: int, shared_prefix: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    lengths = [1, 400] + [rng.randint(1, 400) for _ in range(NUM_PROMPTS - 2)]
    prefixes = [[rng.randrange(vocab) for _ in range(shared_prefix)] for _ in range(3)]
    prompts = []
    for i, n in enumerate(lengths):
        head = prefixes[i % 3] if shared_prefix else []
        prompts.append(head + [rng.randrange(vocab) for _ in range(max(1, n - len(head)))])
    return prompts


@pytest.fixture(scope="module")
def model_dirs(tiny_checkpoints):
    dirs = dict(tiny_checkpoints)
    if DEFAULT_MODEL.joinpath("config.json").exists():
        dirs["default"] = str(DEFAULT_MODEL)
    return dirs


SETTINGS = {
    "ample": dict(num_kv_blocks=2048),
    "preemption": dict(num_kv_blocks=48),
    "chunked": dict(num_kv_blocks=2048, max_num_batched_tokens=64),
    "prefix": dict(num_kv_blocks=2048),
    # both schedulings on every device (CUDA defaults to async, CPU to synchronous); async with
    # preemption and chunked prefill, where pending tokens meet recompute and partial prompts
    "async": dict(num_kv_blocks=48, max_num_batched_tokens=64, async_scheduling=True),
    "sync": dict(num_kv_blocks=2048, async_scheduling=False),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_transformers(model_dirs, arch, setting):
    if arch not in model_dirs:
        pytest.skip(f"{arch} checkpoint not built")
    model_dir = model_dirs[arch]
    llm = LLM(model_dir, device=DEVICE, dtype="float32", block_size=16, **SETTINGS[setting])
    vocab = llm.engine.model_config.vocab_size
    prompts = random_prompts(vocab, seed=1, shared_prefix=100 if setting == "prefix" else 0)
    expected = greedy_references(model_dir, prompts, NEW_TOKENS, DEVICE)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)

    for i, (out, want) in enumerate(zip(outs, expected)):
        assert out.prompt_token_ids == prompts[i]
        assert out.outputs[0].token_ids == want, f"prompt {i} ({len(prompts[i])} tokens) diverged"
        assert out.outputs[0].finish_reason == "length"

    stats = llm.engine.kv_cache_stats()
    if setting == "preemption":
        assert stats["num_preemptions"] > 0
    if setting == "chunked":
        assert stats["num_partial_prefills"] > 0
    if setting == "prefix":
        assert stats["prefix_cache_hits"] > 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"], "a block leaked"
    check_kv_invariants(llm.engine.kv_cache)
