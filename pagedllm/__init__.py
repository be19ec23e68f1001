"""pagedllm: an LLM inference engine with paged attention and continuous batching.

The public names load lazily, so importing one submodule (say, sampling_params in the Triton
adapter's validation) does not import torch and the model code.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "LLM": "pagedllm.llm",
    "LLMEngine": "pagedllm.engine",
    "EngineConfig": "pagedllm.config",
    "EngineLoop": "pagedllm.engine_loop",
    "EngineProcess": "pagedllm.engine_process",
    "SamplingParams": "pagedllm.sampling_params",
    "RequestOutput": "pagedllm.outputs",
    "CompletionOutput": "pagedllm.outputs",
    "StreamDelta": "pagedllm.outputs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pagedllm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
