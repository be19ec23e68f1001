"""CUDA graphs for pure-decode steps: one captured forward per padded batch size.

A decode step of a small model is hundreds of short kernels; launched one by one from Python the GPU
waits on the host between them. A CUDA graph replays the whole forward in one launch. A graph fixes
its shapes and the addresses it reads, so:

- the batch is padded up to the next captured size (bucket: 1, 2, 4, 8, 16, 24, ... step 8);
- inputs live in fixed buffers (InputBuffers' device buffers, and one block table per runner)
  that each step overwrites before replaying;
- the split-KV decode kernel's number of splits, which it picks from the batch's longest context,
  is frozen at capture: small buckets get one graph per split count they can need, and a step
  replays the graph whose count the kernel would have picked itself (kernels.decode_num_splits).

Prefill and mixed steps, and decode batches larger than the largest bucket, run eagerly.
"""
from __future__ import annotations

import torch
from torch import nn

from pagedllm import kernels
from pagedllm.input_buffers import InputBuffers
from pagedllm.layers.attention import AttentionMetadata


def bucket_sizes(max_batch: int) -> list[int]:
    """Captured batch sizes: 1, 2, 4, then multiples of 8, up to and including max_batch."""
    sizes = [b for b in (1, 2, 4) if b < max_batch]
    sizes += list(range(8, max_batch, 8))
    return sizes + [max_batch]


class DecodeGraphs:
    """Captured decode forwards, keyed by (padded batch size, KV splits).

    Args:
        model: the loaded model (forward(ids, positions, kv_caches, metadata) -> hidden).
        kv_caches: the runner's KV cache tensors (their addresses are baked into the graphs).
        buffers: the runner's input buffers (their device views are the graphs' inputs).
        max_batch: largest bucket (at most buffers.max_seqs and buffers.max_tokens).
        max_model_len: longest context a request can reach (decides the split counts to capture).
        num_kv_heads: of the model (the split heuristic counts kv heads per sequence).
    """

    def __init__(self, model: nn.Module, kv_caches: list[torch.Tensor], buffers: InputBuffers,
                 max_batch: int, max_model_len: int, num_kv_heads: int) -> None:
        self.buffers = buffers
        self.device = buffers.device
        self.num_kv_heads = num_kv_heads
        self._ops = model.ops
        self.buckets = bucket_sizes(max_batch)
        self.max_batch = self.buckets[-1]
        # The graphs' block table: its row stride is baked in, so it is sized for the longest request.
        self.block_tables = torch.zeros(self.max_batch, buffers.max_blocks_per_seq, dtype=torch.int32,
                                        device=self.device)
        self._qsl = torch.arange(self.max_batch + 1, dtype=torch.int32, device=self.device)
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._outputs: dict[tuple[int, int], torch.Tensor] = {}
        self.num_replays = 0
        self._capture_all(model, kv_caches, max_model_len)

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def bucket_for(self, num_seqs: int) -> int | None:
        """The smallest captured batch size that holds num_seqs, or None when none does."""
        for b in self.buckets:
            if b >= num_seqs:
                return b
        return None

    def run(self, token_ids: list[list[int]], num_computed: list[int],
            block_tables: list[list[int]], pending: tuple[list[int], list[int]] | None = None,
            prev_tokens: torch.Tensor | None = None) -> torch.Tensor | None:
        """Replay the decode forward for these requests; their [n, hidden] states, or None.

        None means no graph fits (too many requests, or a context longer than captured): run eagerly.
        `pending`, `prev_tokens`: input ids still on the device (InputBuffers.prepare_decode).
        """
        n = len(num_computed)
        bucket = self.bucket_for(n)
        if bucket is None:
            return None
        width, max_seq_len = self.buffers.prepare_decode(token_ids, num_computed, block_tables, bucket,
                                                         pending, prev_tokens)
        splits = kernels.decode_num_splits(bucket, self.num_kv_heads, max_seq_len, self._ops, self.device)
        key = (bucket, splits)
        graph = self._graphs.get(key)
        if graph is None:
            return None
        self.block_tables[:n, :width].copy_(self.buffers.block_table_staging(n, width))
        graph.replay()
        self.num_replays += 1
        return self._outputs[key][:n]

    def _metadata(self, batch: int, max_seq_len: int) -> AttentionMetadata:
        b = self.buffers
        return AttentionMetadata(
            slot_mapping=b.slot_mapping(batch), block_tables=self.block_tables[:batch],
            seq_lens=b.seq_lens(batch), query_start_loc=self._qsl[:batch + 1],
            max_query_len=1, max_seq_len=max_seq_len)

    def _split_variants(self, batch: int, max_model_len: int) -> dict[int, int]:
        """{num_splits: a context length that makes the kernel pick it} for this batch size."""
        variants: dict[int, int] = {}
        length = 1
        while True:
            length = min(length, max_model_len)
            variants.setdefault(kernels.decode_num_splits(batch, self.num_kv_heads, length, self._ops, self.device),
                                length)
            if length >= max_model_len:
                return variants
            length *= 2

    @torch.inference_mode()
    def _capture_all(self, model: nn.Module, kv_caches: list[torch.Tensor], max_model_len: int) -> None:
        b = self.buffers
        # Inputs the capture runs on: a valid decode of `batch` requests at position 0, writing
        # nothing (slot -1); the block table is all block 0.
        b.i64.zero_()
        b.slot_mapping(self.max_batch).fill_(-1)
        b.seq_lens(self.max_batch).fill_(1)
        pool = None
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        # NOTE: largest first, so the smaller graphs fit in the memory the first one took from the pool.
        for batch in reversed(self.buckets):
            for splits, length in self._split_variants(batch, max_model_len).items():
                meta = self._metadata(batch, length)
                ids, pos = b.input_ids(batch), b.positions(batch)
                with torch.cuda.stream(stream):
                    model(ids, pos, kv_caches, meta)  # warm-up: compiles kernels, sets up cuBLAS
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    out = model(ids, pos, kv_caches, meta)
                if pool is None:
                    pool = graph.pool()
                self._graphs[(batch, splits)] = graph
                self._outputs[(batch, splits)] = out
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
