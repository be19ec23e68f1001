"""Runs one forward per step over the flattened tokens of every scheduled request, then samples.

The batch is ragged, never padded: request i contributes its `num_tokens[i]` new tokens, which attend
to its cached context through its block table. Only requests whose chunk reaches their last token
sample (a partial prompt chunk only fills the cache).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.config import EngineConfig
from pagedllm.layers.attention import AttentionMetadata
from pagedllm.layers.sampler import Sampler, SamplerOutput, SamplingRow
from pagedllm.models.config import ModelConfig
from pagedllm.models.registry import load_model

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BatchInput:
    """The flattened step, as the model sees it."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    attn_metadata: AttentionMetadata
    logits_indices: torch.Tensor


class ModelRunner:
    """Owns the model weights and the KV-cache tensors; turns a scheduled step into sampled tokens."""

    def __init__(self, config: EngineConfig, model_config: ModelConfig) -> None:
        self.config = config
        self.model_config = model_config
        self.device = torch.device(config.device)
        self.dtype = _TORCH_DTYPES[config.dtype]
        self.block_size = config.block_size
        self.model = load_model(config.model, model_config, self.dtype, self.device)
        self.num_kv_blocks = config.num_kv_blocks or self._auto_num_blocks()
        self.kv_caches = self._allocate_kv_caches(self.num_kv_blocks)
        self.sampler = Sampler(seed=config.seed, device=self.device)

    @property
    def kv_bytes_per_block(self) -> int:
        mc = self.model_config
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return 2 * mc.num_hidden_layers * self.block_size * mc.num_key_value_heads * mc.head_dim * elem

    @torch.inference_mode()
    def execute(self, token_ids: list[list[int]], num_computed: list[int], num_tokens: list[int],
                block_tables: list[list[int]], sample: list[bool],
                rows: list[SamplingRow]) -> SamplerOutput:
        """Forward the step's tokens and sample for the requests marked in `sample`.

        Args:
            token_ids: each scheduled request's token ids (prompt + output so far).
            num_computed: tokens already in the cache, per request.
            num_tokens: tokens to compute this step, per request.
            block_tables: KV block ids, per request.
            sample: whether the request's chunk ends at its last token (so it samples), per request.
            rows: one SamplingRow per True in `sample`, in order.
        """
        batch = self.prepare(token_ids, num_computed, num_tokens, block_tables, sample)
        hidden = self.model(batch.input_ids, batch.positions, self.kv_caches, batch.attn_metadata)
        if not rows:
            return SamplerOutput(token_ids=[], logprobs=[])
        logits = self.model.compute_logits(hidden[batch.logits_indices])
        return self.sampler(logits, rows)

    def prepare(self, token_ids: list[list[int]], num_computed: list[int], num_tokens: list[int],
                block_tables: list[list[int]], sample: list[bool]) -> BatchInput:
        """Build the flattened input tensors (on CPU, then one copy each to the device)."""
        ids: list[int] = []
        positions: list[int] = []
        for toks, c, n in zip(token_ids, num_computed, num_tokens):
            ids.extend(toks[c:c + n])
            positions.extend(range(c, c + n))
        seq_lens = [c + n for c, n in zip(num_computed, num_tokens)]
        qsl = [0]
        for n in num_tokens:
            qsl.append(qsl[-1] + n)
        max_blocks = max(len(t) for t in block_tables)
        table = torch.zeros(len(block_tables), max_blocks, dtype=torch.int32)
        for i, t in enumerate(block_tables):
            table[i, :len(t)] = torch.tensor(t, dtype=torch.int32)
        pos = torch.tensor(positions, dtype=torch.int64)
        seq_index = torch.repeat_interleave(torch.arange(len(num_tokens)), torch.tensor(num_tokens))
        slots = table[seq_index, pos // self.block_size].to(torch.int64) * self.block_size \
            + pos % self.block_size
        logits_indices = [qsl[i + 1] - 1 for i, s in enumerate(sample) if s]
        to = self.device
        meta = AttentionMetadata(
            slot_mapping=slots.to(to),
            block_tables=table.to(to),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32).to(to),
            query_start_loc=torch.tensor(qsl, dtype=torch.int32).to(to),
            max_query_len=max(num_tokens),
            max_seq_len=max(seq_lens),
        )
        return BatchInput(
            input_ids=torch.tensor(ids, dtype=torch.int64).to(to),
            positions=pos.to(to),
            attn_metadata=meta,
            logits_indices=torch.tensor(logits_indices, dtype=torch.int64).to(to),
        )

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
        """Memory share minus weights and the peak of a profiling forward at the full token budget."""
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        n = self.config.max_num_batched_tokens
        bs = self.block_size
        nblocks = -(-n // bs)
        caches = self._allocate_kv_caches(nblocks)
        meta = AttentionMetadata(
            slot_mapping=torch.arange(n, device=self.device),
            block_tables=torch.arange(nblocks, dtype=torch.int32, device=self.device)[None],
            seq_lens=torch.tensor([n], dtype=torch.int32, device=self.device),
            query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=self.device),
            max_query_len=n, max_seq_len=n)
        with torch.inference_mode():
            ids = torch.zeros(n, dtype=torch.int64, device=self.device)
            hidden = self.model(ids, torch.arange(n, device=self.device), caches, meta)
            self.model.compute_logits(hidden[-min(n, self.config.max_num_seqs):])
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        del caches, hidden
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(self.device).total_memory
        return int(total * self.config.gpu_memory_utilization) - peak
