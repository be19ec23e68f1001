"""The offline API: `LLM(model=...).generate(prompts, SamplingParams(...))`, as in vLLM."""
from __future__ import annotations

import itertools
from typing import Any, Sequence, Union

from pagedllm.config import EngineConfig
from pagedllm.engine import LLMEngine
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import SamplingParams

PromptType = Union[str, dict]


class LLM:
    """Generate text for a batch of prompts with continuous batching.

    Args:
        model: path to a Hugging Face checkpoint directory.
        **kwargs: EngineConfig fields (device, dtype, block_size, num_kv_blocks, max_num_seqs,
            max_num_batched_tokens, max_model_len, enable_prefix_caching, gpu_memory_utilization, seed).
    """

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.engine = LLMEngine(EngineConfig(model=model, **kwargs))
        self._ids = itertools.count()

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix (between benchmark runs of the same prompts, as in vLLM);
        False, and nothing done, while a request holds KV blocks."""
        return self.engine.reset_prefix_cache()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: PromptType | Sequence[PromptType],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in the order of the prompts.

        Prompts are strings or `{"prompt_token_ids": [...]}` (or `{"prompt": "..."}`). Any invalid
        prompt or parameter raises ValueError before anything runs.
        """
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} sampling_params for {len(prompts)} prompts")
        ids = []
        try:
            for prompt, p in zip(prompts, params):
                request_id = str(next(self._ids))
                self.engine.add_request(request_id, _prompt_input(prompt), p)
                ids.append(request_id)
        except ValueError:
            for request_id in ids:
                self.engine.abort_request(request_id)
                self.engine.release(request_id)
            raise
        while self.engine.has_unfinished_requests():
            self.engine.step()
        outputs = [self.engine.get_output(i) for i in ids]
        for request_id in ids:
            self.engine.release(request_id)
        return outputs


def _prompt_input(prompt: PromptType) -> str | list[int]:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            ids = prompt["prompt_token_ids"]
            if not isinstance(ids, (list, tuple)):
                raise ValueError("prompt_token_ids must be a list of ints")
            return list(ids)
        if "prompt" in prompt and isinstance(prompt["prompt"], str):
            return prompt["prompt"]
        raise ValueError("a prompt dict needs 'prompt_token_ids' (list of ints) or 'prompt' (str)")
    raise ValueError(f"a prompt must be a str or a dict, got {type(prompt).__name__}")
