"""CUDA graphs for decode: replayed steps give the tokens eager steps give. Needs a CUDA GPU.

float32 greedy on the tiny checkpoints: the same prompts through an engine with graphs and one with
`enforce_eager=True` must produce identical tokens (tests/test_parity.py compares both with
transformers); the batch shrinks through many buckets, down to the split-KV graphs of batch 1.
"""
from __future__ import annotations

import random

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.config import EngineConfig
from pagedllm.cuda_graphs import bucket_sizes

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_bucket_sizes():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert bucket_sizes(256)[:5] == [1, 2, 4, 8, 16] and bucket_sizes(256)[-1] == 256


@needs_cuda
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_graphs_match_eager(tiny_checkpoints, arch):
    model_dir = tiny_checkpoints[arch]
    rng = random.Random(3)
    prompts = [[rng.randrange(4000) for _ in range(rng.randint(1, 700))] for _ in range(40)]
    # Output lengths spread out, so the decode batch shrinks through many buckets down to 1.
    params = [SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 120), ignore_eos=True)
              for _ in prompts]
    common = dict(device="cuda", dtype="float32", num_kv_blocks=4096, max_num_seqs=32)
    graphed = LLM(model_dir, **common)
    assert graphed.engine.runner.graphs is not None and graphed.engine.runner.graphs.num_graphs > 0
    out_graphed = graphed.generate([{"prompt_token_ids": p} for p in prompts], params)
    assert graphed.engine.runner.graphs.num_replays > 0
    del graphed
    eager = LLM(model_dir, enforce_eager=True, **common)
    assert eager.engine.runner.graphs is None
    out_eager = eager.generate([{"prompt_token_ids": p} for p in prompts], params)
    for i, (g, e) in enumerate(zip(out_graphed, out_eager)):
        assert g.outputs[0].token_ids == e.outputs[0].token_ids, f"prompt {i} differs"


def test_enforce_eager_must_be_bool():
    with pytest.raises(ValueError, match="enforce_eager"):
        EngineConfig(model="some/dir", device="cuda", enforce_eager="yes")


@needs_cuda
@pytest.mark.parametrize("arch, fused_env, apart_env", [
    ("llama", ("PAGEDLLM_ROTARY_INTO_CACHE", ""), ("PAGEDLLM_ROTARY_INTO_CACHE", "separate")),
    ("qwen3", ("PAGEDLLM_QK_NORM_ROTARY", "separate"), ("PAGEDLLM_ROTARY_INTO_CACHE", "separate")),
])
def test_bf16_rotary_into_cache_changes_no_token(tiny_checkpoints, arch, fused_env, apart_env, monkeypatch):
    """bf16 with graphs: the rotary kernel that writes the cache itself computes the same bits as
    the rotary followed by the cache write, so greedy tokens are identical, through prefill,
    chunked mixed steps and every decode bucket (the padded rows write nowhere)."""
    model_dir = tiny_checkpoints[arch]
    rng = random.Random(4)
    prompts = [[rng.randrange(4000) for _ in range(rng.randint(1, 500))] for _ in range(24)]
    params = [SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 80), ignore_eos=True)
              for _ in prompts]

    def tokens(env: tuple[str, str]) -> list[list[int]]:
        monkeypatch.setenv(*env)
        llm = LLM(model_dir, device="cuda", dtype="bfloat16", num_kv_blocks=2048, max_num_seqs=16,
                  max_num_batched_tokens=512)
        ops = llm.engine.runner.model.ops
        assert (ops.rotary_into_cache is None) == (env[1] == "separate" and env[0].endswith("CACHE"))
        out = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
        assert llm.engine.runner.graphs.num_replays > 0
        return [o.outputs[0].token_ids for o in out]

    assert tokens(fused_env) == tokens(apart_env)
