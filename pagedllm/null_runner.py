"""A model runner that does no math: measures the engine's own overhead and drives property tests.

It samples a deterministic pseudo-random token per request from the request's length, so runs
repeat exactly, and it never touches a tensor.
"""
from __future__ import annotations

from pagedllm.layers.sampler import SamplerOutput, SamplingRow


class NullRunner:
    """Stands in for ModelRunner behind the same `execute` call."""

    def __init__(self, num_kv_blocks: int, vocab_size: int, device: str = "cpu") -> None:
        self.num_kv_blocks = num_kv_blocks
        self.vocab_size = vocab_size
        self.device = device
        self.num_forward_tokens = 0

    def execute(self, token_ids: list[list[int]], num_computed: list[int], num_tokens: list[int],
                block_tables: list[list[int]], sample: list[bool],
                rows: list[SamplingRow]) -> SamplerOutput:
        self.num_forward_tokens += sum(num_tokens)
        out = [(len(t) * 2654435761 + t[-1]) % self.vocab_size
               for t, s in zip(token_ids, sample) if s]
        return SamplerOutput(token_ids=out, logprobs=[None] * len(out))
