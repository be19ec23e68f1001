"""Runs one forward per step over the flattened tokens of every scheduled request, then samples.

The batch is ragged, never padded: request i contributes its `num_tokens[i]` new tokens, which attend
to its cached context through its block table. Only requests whose chunk reaches their last token
sample (a partial prompt chunk only fills the cache).

A step is the scheduler's `SchedulerOutput`, whole: `launch(step)` chooses a CUDA graph for it
(cuda_graphs.py; on CUDA unless `EngineConfig.enforce_eager`), builds its inputs once into the
preallocated buffers (input_buffers.py), replays the graph or runs the model eagerly, and samples
(sampler.py). It keeps the sampled tokens on the device: the next step's pending inputs are read
from them (async scheduling).
"""
from __future__ import annotations

import torch

import pagedllm_kernels as kernels
from pagedllm.config import EngineConfig, resolve_max_model_len
from pagedllm.cuda_graphs import DecodeGraphs, MixedGraphs, Replay
from pagedllm.input_buffers import InputBuffers
from pagedllm.layers.attention import AttentionMetadata
from pagedllm.models.config import ModelConfig
from pagedllm.models.registry import load_model
from pagedllm.sampler import SampleHandle, Sampler, SamplerOutput, SamplingRow
from pagedllm.sampling_params import SamplingParams
from pagedllm.scheduler import SchedulerOutput

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# One row of each sampling kind the sampler has (its torch kernels load on first use).
_WARM_UP_SAMPLING = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, seed=0),
    SamplingParams(temperature=0.7, logprobs=5, repetition_penalty=1.1, presence_penalty=0.5),
]

__all__ = ["ModelRunner"]


class ModelRunner:
    """Owns the model weights and the KV-cache tensors; turns a scheduled step into sampled tokens."""

    def __init__(self, config: EngineConfig, model_config: ModelConfig) -> None:
        self.config = config
        self.model_config = model_config
        self.device = torch.device(config.device)
        if self.device.type == "cpu" and config.cpu_threads is not None:
            torch.set_num_threads(config.cpu_threads)
        self.dtype = _TORCH_DTYPES[config.dtype]
        self.block_size = config.block_size
        ops = kernels.select_ops(self.device, self.dtype, config.kernel_backend)
        self.model = load_model(config.model, model_config, self.dtype, self.device, ops)
        self.memory_profile: dict[str, int] = {}
        self.num_kv_blocks = config.num_kv_blocks or self._auto_num_blocks()
        self.kv_caches = self._allocate_kv_caches(self.num_kv_blocks)
        kernels.check_kv_cache(self.kv_caches[0], self.model.ops)  # once: the layers do not check
        self.sampler = Sampler(seed=config.seed, device=self.device)
        self._last_tokens: torch.Tensor | None = None  # the last launch's sampled ids (device)
        self.max_model_len = resolve_max_model_len(config, model_config.max_position_embeddings,
                                                   self.num_kv_blocks)
        self.buffers = InputBuffers(
            max_tokens=max(config.max_num_batched_tokens, config.max_num_seqs),
            max_seqs=config.max_num_seqs,
            max_blocks_per_seq=-(-self.max_model_len // self.block_size),
            block_size=self.block_size, device=self.device)
        self.graphs: DecodeGraphs | None = None
        if self.device.type == "cuda" and not config.enforce_eager and self.model.ops.backend == "triton":
            self.graphs = DecodeGraphs(
                self.model, self.kv_caches, self.buffers,
                max_batch=min(config.max_num_seqs, config.max_num_batched_tokens),
                max_model_len=self.max_model_len, num_kv_heads=model_config.num_key_value_heads)
        self.mixed_graphs: MixedGraphs | None = None
        if self.graphs is not None and config.max_mixed_graph_tokens > 0:
            self.mixed_graphs = MixedGraphs(self.graphs, self.model, self.kv_caches,
                                            max_tokens=config.max_mixed_graph_tokens,
                                            max_model_len=self.max_model_len)
        if self.device.type == "cuda":
            self.warm_up()

    def warm_up(self) -> int:
        """Runs one step of each kind the engine launches, so that nothing compiles under traffic.

        OpenAI Triton compiles a kernel the first time it meets a new specialisation, which took
        seconds inside the first real prefill steps (the first run after start-up was much slower
        than the second: docs/benchmarks.md). The graphs' capture compiles every decode variant; this compiles
        the rest: a prefill step at the full token budget over several sequences, a mixed step
        (a prompt chunk beside decodes) and sampling of each kind (greedy, random with top-k,
        top-p and min-p, logprobs). The K/V it writes land in blocks no request owns yet; any
        request overwrites its blocks before it reads them. Returns the steps it ran.
        """
        steps = 0
        bs, budget = self.block_size, self.config.max_num_batched_tokens
        room = min(self.max_model_len, self.num_kv_blocks * bs) - 1
        lengths = [min(room, budget - i * room) for i in range(-(-budget // room))]
        mixed = [min(room, max(2, budget // 2)), 1, 1]
        for sizes, contexts in ((lengths, [0] * len(lengths)), (mixed, [0, 7, 33])):
            plan = [(n, c) for n, c in zip(sizes, contexts) if n > 0 and (n + c) <= room]
            tables, first = [], 0
            for n, c in plan:
                blocks = -(-(n + c + 1) // bs)
                if first + blocks > self.num_kv_blocks:
                    break
                tables.append(list(range(first, first + blocks)))
                first += blocks
            plan = plan[:len(tables)]
            if not plan:
                continue
            rows = [SamplingRow(params=p, prompt_token_ids=(1,), output_token_ids=(1,))
                    for p in _WARM_UP_SAMPLING[:len(plan)]]
            rows += rows[-1:] * (len(plan) - len(rows))
            num_tokens = [n for n, _ in plan]
            self.execute(SchedulerOutput(
                num_tokens=num_tokens, total_tokens=sum(num_tokens),
                token_ids=[[1] * (n + c) for n, c in plan], num_computed=[c for _, c in plan],
                block_tables=tables, sample=[True] * len(plan), rows=rows))
            steps += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return steps

    @property
    def kv_bytes_per_block(self) -> int:
        mc = self.model_config
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return 2 * mc.num_hidden_layers * self.block_size * mc.num_key_value_heads * mc.head_dim * elem

    def execute(self, step: SchedulerOutput) -> SamplerOutput:
        """Run the step and sample for its sampling rows (`step.rows`); waits for the tokens."""
        return self.launch(step).result()

    @torch.inference_mode()
    def launch(self, step: SchedulerOutput) -> SampleHandle:
        """Like execute, without waiting for the step (on CUDA): the handle's result() does.

        The step's pending rows (async scheduling) take their input from the last launch's
        sampled tokens, on the device.
        """
        prev = self._last_tokens
        replay = self._choose_graph(step)
        batch = self.buffers.prepare(step, prev, replay.padding if replay is not None else None)
        if replay is not None:
            hidden = replay.run()
        else:
            hidden = self.model(batch.input_ids, batch.positions, self.kv_caches, batch.attn_metadata)
        if not step.rows:
            self._last_tokens = None
            return SampleHandle(hidden.new_empty(0, dtype=torch.int64), None, 0)
        logits = self.model.compute_logits(hidden[batch.logits_indices], float32=False)
        handle = self.sampler.launch(logits, step.rows, prev)
        self._last_tokens = handle.tokens
        return handle

    def _choose_graph(self, step: SchedulerOutput) -> Replay | None:
        """A decode graph for a pure-decode step, else a mixed-step graph, else None (eager)."""
        if self.graphs is None and self.mixed_graphs is None:
            return None
        total = sum(step.num_tokens)
        replay = self.graphs.choose(step, total) if self.graphs is not None else None
        if replay is None and self.mixed_graphs is not None:
            replay = self.mixed_graphs.choose(step, total)
        return replay

    def _allocate_kv_caches(self, num_blocks: int) -> list[torch.Tensor]:
        mc = self.model_config
        shape = (2, num_blocks, self.block_size, mc.num_key_value_heads, mc.head_dim)
        return [torch.zeros(shape, dtype=self.dtype, device=self.device)
                for _ in range(mc.num_hidden_layers)]

    def _auto_num_blocks(self) -> int:
        """Size the KV cache: a fixed budget on CPU; on CUDA what is left of the memory share."""
        if self.device.type == "cpu":
            budget = int(self.config.cpu_kv_cache_gib * (1 << 30))
        else:
            budget = self._cuda_kv_budget()
        num_blocks = budget // self.kv_bytes_per_block
        if num_blocks < 1:
            raise ValueError("no memory left for the KV cache: lower max_num_batched_tokens, raise "
                             "gpu_memory_utilization or use a smaller model")
        return num_blocks

    def _cuda_kv_budget(self) -> int:
        """Bytes for the KV cache: the memory share, less what the weights and a worst step need.

        A profiling forward at the full token budget (one sequence of max_num_batched_tokens tokens,
        then logits for max_num_seqs rows) measures the activations' peak. What torch does not
        allocate (the CUDA context, cuBLAS workspaces, other processes) comes from the driver's
        free-memory figure. The CUDA graphs' memory pool is taken after the cache; its size is at
        most the activations of the largest graphed step (max_num_seqs decode tokens, or
        max_mixed_graph_tokens for mixed steps; the pool is shared), which the profile's peak at
        the full token budget covers when that budget is at least as large, so the activation
        peak is reserved once more for it.
        """
        dev = self.device
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        n = self.config.max_num_batched_tokens
        bs = self.block_size
        nblocks = -(-n // bs)
        caches = self._allocate_kv_caches(nblocks)
        meta = AttentionMetadata(
            slot_mapping=torch.arange(n, device=dev),
            block_tables=torch.arange(nblocks, dtype=torch.int32, device=dev)[None],
            seq_lens=torch.tensor([n], dtype=torch.int32, device=dev),
            query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=dev),
            max_query_len=n, max_seq_len=n)
        with torch.inference_mode():
            ids = torch.zeros(n, dtype=torch.int64, device=dev)
            hidden = self.model(ids, torch.arange(n, device=dev), caches, meta)
            rows = hidden[-1:].expand(self.config.max_num_seqs, -1)
            self.model.compute_logits(rows).argmax(dim=-1)
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
        del caches, hidden, rows, ids, meta
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(dev)
        non_torch = total - free - torch.cuda.memory_reserved(dev)
        activations = peak - before
        budget = int(total * self.config.gpu_memory_utilization) - peak - activations - non_torch
        self.memory_profile = {"total": total, "weights_and_buffers": before, "profile_peak": peak,
                               "activations": activations, "non_torch": non_torch,
                               "kv_budget": budget}
        return budget
