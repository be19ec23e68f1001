"""Greedy parity with transformers for the families beyond Llama, token for token, in float32.

Each family's tiny random checkpoint has its features switched on (pagedllm_tools.family_models:
sliding windows shorter than the prompts, Gemma's soft-capping and alternating layers, Gemma 3's
two rotaries, Phi-3's fused tensors and LongRoPE, eight experts with top-2 routing). Every
variant runs the settings of tests/test_parity.py, each asserting that its mechanism ran: an
ample cache, chunked prefill, preemption, shared prefixes with prefix caching, async scheduling.
A forward-level check compares the logits themselves (what greedy tokens cannot see: the final
soft cap), across a prefill, a chunk and single-token decodes.

Phi-3's prompts stay within its LongRoPE original length (64) while generation runs past it:
that is where the engine and transformers agree (pagedllm/layers/long_rope.py says why).
"""
from __future__ import annotations

import os
import random

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.models.config import ModelConfig
from pagedllm.models.registry import load_model
from pagedllm_tools.family_models import FAMILY_ARCHS, PHI3_ORIGINAL_MAX_POSITIONS
from pagedllm_tools.reference_models import greedy_references

from kv_invariants import check_kv_invariants
from paged_steps import stepwise_logits

NUM_PROMPTS = 6
NEW_TOKENS = 24
SHARED_PREFIX = 32  # two blocks of 16 that prompts 1.. share
# NOTE: the GPU check runs this file with PAGEDLLM_TEST_DEVICE=cuda (float32, CUDA graphs on).
DEVICE = os.environ.get("PAGEDLLM_TEST_DEVICE", "cpu")

SETTINGS = {
    "ample": dict(num_kv_blocks=256),
    "chunked": dict(num_kv_blocks=256, max_num_batched_tokens=16),
    "preemption": dict(num_kv_blocks=12),
    "prefix": dict(num_kv_blocks=256),
    "async": dict(num_kv_blocks=12, max_num_batched_tokens=16, async_scheduling=True),
}


def prompts_for(arch: str, vocab: int) -> list[list[int]]:
    """A 1-token prompt, then prompts of 33 to 90 tokens (Phi-3: at most its LongRoPE original
    length) that start with the same SHARED_PREFIX tokens, all longer than the sliding windows."""
    rng = random.Random(1)
    longest = PHI3_ORIGINAL_MAX_POSITIONS if arch == "phi3" else 90
    lengths = [longest] + [rng.randint(SHARED_PREFIX + 1, longest) for _ in range(NUM_PROMPTS - 2)]
    prefix = [rng.randrange(3, vocab) for _ in range(SHARED_PREFIX)]
    return [[rng.randrange(3, vocab)]] + [prefix + [rng.randrange(3, vocab) for _ in range(n - SHARED_PREFIX)]
                                         for n in lengths]


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("arch", FAMILY_ARCHS)
def test_greedy_matches_transformers(family_checkpoints, arch, setting):
    model_dir = family_checkpoints[arch]
    llm = LLM(model_dir, device=DEVICE, dtype="float32", block_size=16, **SETTINGS[setting])
    vocab = llm.engine.model_config.vocab_size
    prompts = prompts_for(arch, vocab)
    expected = greedy_references(model_dir, prompts, NEW_TOKENS, DEVICE)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    if setting == "prefix":  # one prompt's blocks are cached before the others arrive
        llm.generate([{"prompt_token_ids": prompts[1]}], params)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)

    for i, (out, want) in enumerate(zip(outs, expected)):
        assert out.outputs[0].token_ids == want, f"prompt {i} ({len(prompts[i])} tokens) diverged"

    stats = llm.engine.kv_cache_stats()
    if setting in ("preemption", "async"):
        assert stats["num_preemptions"] > 0
    if setting in ("chunked", "async"):
        assert stats["num_partial_prefills"] > 0
    if setting == "prefix":
        assert stats["prefix_cache_hits"] > 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"], "a block leaked"
    check_kv_invariants(llm.engine.kv_cache)


@pytest.mark.parametrize("arch", FAMILY_ARCHS)
def test_logits_match_transformers_across_prefill_chunk_and_decode(family_checkpoints, arch):
    from transformers import AutoModelForCausalLM

    model_dir = family_checkpoints[arch]
    config = ModelConfig.from_dir(model_dir)
    device = torch.device(DEVICE)
    model = load_model(model_dir, config, torch.float32, device)
    n = 60  # < Phi-3's original length: one transformers call rotates like the engine
    ids = torch.randint(3, config.vocab_size, (n,), generator=torch.Generator().manual_seed(0))
    logits = stepwise_logits(model, config, ids, [(0, 30), (30, 45), *((p, p + 1) for p in range(45, n))], device)
    with torch.inference_mode():
        # (eager: the definition; SDPA drops Gemma 2's soft cap: reference_models.greedy_references)
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                  attn_implementation="eager").to(device).eval()
        expected = hf(ids[None].to(device)).logits[0]
    torch.testing.assert_close(logits, expected, atol=2e-4, rtol=1e-4)
