"""Engine configuration: one dataclass, validated on construction."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class EngineConfig:
    """Everything the engine needs to know before it loads a model.

    Names follow vLLM's engine arguments so a vLLM user can read them.

    Attributes:
        model: path to a Hugging Face checkpoint directory.
        device: "cpu", "cuda" (or "cuda:N"), or "auto": cuda when torch sees a GPU, else cpu
            (resolved by `resolved()`, which the engine calls: a server process that only
            forwards requests to an engine process never imports torch).
        dtype: weights and KV-cache dtype; None picks float32 on CPU, bfloat16 on CUDA.
        block_size: tokens per KV-cache block.
        num_kv_blocks: fixes the KV-cache size; None sizes it from free memory.
        max_num_seqs: most requests running in one step.
        max_num_batched_tokens: the token budget of one step (prompt chunks + decodes).
        max_model_len: longest prompt + output; None takes the model's limit (capped by the cache).
        enable_prefix_caching: reuse KV blocks of identical full-block prompt prefixes.
        gpu_memory_utilization: share of GPU memory the engine may use (weights + activations + KV).
        cpu_kv_cache_gib: KV-cache size on CPU when num_kv_blocks is None.
        seed: seed of the shared sampling generator (requests without their own seed).
        cpu_threads: torch intra-op threads on CPU (set on the engine's thread); None keeps torch's
            default, one per core. A server on a small machine leaves cores to Triton with 1.
        enforce_eager: on CUDA, run every step eagerly instead of replaying CUDA graphs (vLLM's
            name). Graphs take a few seconds to capture and a little memory.
        kernel_backend: "auto" runs the OpenAI Triton kernels on CUDA and the torch reference
            elsewhere (`pagedllm_kernels.select_ops`); "reference" runs the reference on CUDA too:
            for head sizes the kernels do not take (they take even ones in [16, 256]), and to check them.
        max_mixed_graph_tokens: on CUDA with graphs, prefill and mixed steps of up to this many
            tokens replay a CUDA graph too (captured at sizes up to it: cuda_graphs.py); 0 runs
            every such step eagerly. Larger steps are compute-bound and stay eager.
        max_queue_len: most sequences waiting to be scheduled; a request that would exceed it is
            refused at once with an "overloaded, retry later" error (OverloadedError) instead of
            queueing without bound. None: no limit (the offline API).
        strict_max_tokens: a request whose max_tokens cannot fit after its prompt within
            max_model_len is refused with an error naming max_tokens (servers: vLLM's OpenAI
            server does the same) instead of stopping at max_model_len (the offline API).
        async_scheduling: schedule and launch step N+1 before reading step N's tokens back, so the
            host's work (output processing, scheduling, input preparation) runs while the GPU
            computes (vLLM's async scheduling). Each step() then returns the previous step's
            deltas, and a request that stops on a token runs one step more whose token is dropped.
            None: on when the device is CUDA (on CPU nothing runs beside the host).
        grammar_compile_timeout: seconds a server's request waits for its structured-output
            grammar to compile (beside the engine's thread, so other requests run on) before it
            is refused with an error naming the constraint. The offline API compiles inline.
    """

    model: str
    device: str = "cpu"
    dtype: str | None = None
    block_size: int = 16
    num_kv_blocks: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gib: float = 1.0
    seed: int = 0
    enforce_eager: bool = False
    kernel_backend: str = "auto"
    max_mixed_graph_tokens: int = 2048
    cpu_threads: int | None = None
    max_queue_len: int | None = None
    strict_max_tokens: bool = False
    async_scheduling: bool | None = None
    grammar_compile_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("model must be a path to a Hugging Face checkpoint directory")
        if not isinstance(self.device, str) or not (
                self.device in ("cpu", "auto") or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if self.dtype is None and self.device != "auto":
            self.dtype = "float32" if self.device == "cpu" else "bfloat16"
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        _positive_int("block_size", self.block_size)
        if self.num_kv_blocks is not None:
            _positive_int("num_kv_blocks", self.num_kv_blocks)
        _positive_int("max_num_seqs", self.max_num_seqs)
        _positive_int("max_num_batched_tokens", self.max_num_batched_tokens)
        if self.max_model_len is not None:
            _positive_int("max_model_len", self.max_model_len)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if not self.cpu_kv_cache_gib > 0:
            raise ValueError(f"cpu_kv_cache_gib must be > 0, got {self.cpu_kv_cache_gib}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.cpu_threads is not None:
            _positive_int("cpu_threads", self.cpu_threads)
        if self.async_scheduling is not None and not isinstance(self.async_scheduling, bool):
            raise ValueError(f"async_scheduling must be a bool or None, got {self.async_scheduling!r}")
        for name in ("enforce_eager", "strict_max_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.max_queue_len is not None:
            _positive_int("max_queue_len", self.max_queue_len)
        if isinstance(self.grammar_compile_timeout, bool) \
                or not isinstance(self.grammar_compile_timeout, (int, float)) \
                or not self.grammar_compile_timeout > 0:
            raise ValueError(f"grammar_compile_timeout must be a number of seconds > 0, "
                             f"got {self.grammar_compile_timeout!r}")
        if self.kernel_backend not in ("auto", "reference"):
            raise ValueError(f"kernel_backend must be 'auto' or 'reference', got {self.kernel_backend!r}")
        if not isinstance(self.max_mixed_graph_tokens, int) or isinstance(self.max_mixed_graph_tokens, bool) \
                or self.max_mixed_graph_tokens < 0:
            raise ValueError(f"max_mixed_graph_tokens must be an int >= 0, got {self.max_mixed_graph_tokens!r}")


    def resolved(self) -> "EngineConfig":
        """This config with device "auto" (and a dtype left to it) made concrete."""
        if self.device != "auto":
            return self
        import torch

        return dataclasses.replace(self, device="cuda" if torch.cuda.is_available() else "cpu")


def resolve_max_model_len(config: EngineConfig, max_position_embeddings: int, num_kv_blocks: int) -> int:
    """The longest prompt + output the engine takes: `config.max_model_len`, else the model's.

    NOTE: never longer than the KV cache, so a request alone can always run to its end (the
    engine's prompt check and the runner's block tables both rely on it).

    Raises:
        ValueError: config.max_model_len exceeds the model's max_position_embeddings.
    """
    if config.max_model_len is not None and config.max_model_len > max_position_embeddings:
        raise ValueError(f"max_model_len {config.max_model_len} exceeds the model's "
                         f"max_position_embeddings {max_position_embeddings}")
    return min(config.max_model_len or max_position_embeddings, num_kv_blocks * config.block_size)


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
