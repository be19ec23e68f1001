"""CUDA graphs: one captured forward per padded decode batch size, and per padded mixed-step size.

A decode step of a small model is hundreds of short kernels; launched one by one from Python the GPU
waits on the host between them. A CUDA graph replays the whole forward in one launch. A graph fixes
its shapes and the addresses it reads, so:

- the batch is padded up to the next captured size (bucket: 1, 2, 4, 8, 16, 24, ... step 8);
- inputs live in fixed buffers (InputBuffers' device buffers and its `graph_block_table`), which
  `InputBuffers.prepare` fills, padded to the chosen graph (`Padding`), before the replay;
- the split-KV decode kernel's number of splits, which it picks from the batch's longest context,
  is frozen at capture: small buckets get one graph per split count they can need, and a step
  replays the graph whose count the kernel would have picked itself (kernels.decode_num_splits).

Prefill and mixed steps (`MixedGraphs`) replay graphs too, up to `max_mixed_graph_tokens` tokens:
such a step is a few hundred decode rows beside one prompt chunk, and run eagerly most of its time
is the host launching its kernels one by one (docs/engine.md). Its graph is captured for
max_num_seqs sequences and a token count (bucket): the step's tokens are padded to the bucket and
its sequences to max_num_seqs, so one graph serves any mix that fits. Larger steps are
compute-bound and run eagerly, as do decode batches larger than the largest bucket.

Each class only chooses a graph for a step (`choose`) and captures; the runner prepares the
step's inputs for the chosen graph, then replays it (`Replay.run`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import pagedllm_kernels as kernels
from pagedllm.input_buffers import InputBuffers, Padding
from pagedllm.layers.attention import AttentionMetadata
from pagedllm.scheduler import SchedulerOutput


@dataclass(eq=False)
class Replay:
    """One captured graph: the padding its inputs need, and its replay."""

    padding: Padding
    graph: torch.cuda.CUDAGraph
    output: torch.Tensor  # [padding.size tokens, hidden], rewritten by every replay
    owner: DecodeGraphs | MixedGraphs

    def run(self) -> torch.Tensor:
        """Replay the forward over the buffers as prepared; the [size, hidden] states."""
        self.graph.replay()
        self.owner.num_replays += 1
        return self.output


def bucket_sizes(max_batch: int) -> list[int]:
    """Captured batch sizes: 1, 2, 4, then multiples of 8, up to and including max_batch."""
    sizes = [b for b in (1, 2, 4) if b < max_batch]
    sizes += list(range(8, max_batch, 8))
    return sizes + [max_batch]


def mixed_bucket_sizes(max_tokens: int) -> list[int]:
    """Captured mixed-step token counts: multiples of 128 to 1,024, then of 256, up to max_tokens
    (and max_tokens itself). Padding wastes at most 255 tokens of compute a step."""
    sizes = [t for t in range(128, 1024 + 1, 128) if t < max_tokens]
    sizes += [t for t in range(1280, max_tokens, 256)]
    return sizes + [max_tokens] if max_tokens > 0 else []


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
        self._qsl = torch.arange(self.max_batch + 1, dtype=torch.int32, device=self.device)
        self._replays: dict[tuple[int, int], Replay] = {}
        self.num_replays = 0
        self.pool = None  # the graphs' memory pool (MixedGraphs shares it: one graph runs at a time)
        self._capture_all(model, kv_caches, max_model_len)

    @property
    def num_graphs(self) -> int:
        return len(self._replays)

    def bucket_for(self, num_seqs: int) -> int | None:
        """The smallest captured batch size that holds num_seqs, or None when none does."""
        for b in self.buckets:
            if b >= num_seqs:
                return b
        return None

    def choose(self, step: SchedulerOutput, total_tokens: int) -> Replay | None:
        """The graph for a pure-decode step (every row one token, every row sampling), or None:
        not pure decode, too many rows, or a context longer than captured."""
        n = len(step.num_tokens)
        if not (step.rows and len(step.rows) == n == total_tokens):
            return None
        bucket = self.bucket_for(n)
        if bucket is None:
            return None
        max_seq_len = max(step.num_computed) + 1
        splits = kernels.decode_num_splits(bucket, self.num_kv_heads, max_seq_len, self._ops, self.device)
        return self._replays.get((bucket, splits))

    def _metadata(self, batch: int, max_seq_len: int) -> AttentionMetadata:
        b = self.buffers
        return AttentionMetadata(
            slot_mapping=b.slot_mapping(batch), block_tables=b.graph_block_table[:batch],
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
        pool = self.pool
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
                    pool = self.pool = graph.pool()
                self._replays[(batch, splits)] = Replay(Padding(batch, decode=True), graph, out, self)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)


class MixedGraphs:
    """Captured forwards of prefill/mixed steps, keyed by padded token count (mixed_bucket_sizes).

    Args:
        decode: the runner's DecodeGraphs, whose memory pool these share (graphs replay one at a
            time, and each step's output is consumed before the next replay).
        model, kv_caches: as for DecodeGraphs.
        max_tokens: the largest bucket (at most the buffers' max_tokens).
        max_model_len: the context length the capture's metadata names (the varlen kernel does not
            depend on it).
    """

    def __init__(self, decode: DecodeGraphs, model: nn.Module, kv_caches: list[torch.Tensor],
                 max_tokens: int, max_model_len: int) -> None:
        self.buffers = decode.buffers
        self.device = decode.device
        self._decode = decode
        self.max_seqs = self.buffers.max_seqs
        self.buckets = mixed_bucket_sizes(min(max_tokens, self.buffers.max_tokens))
        self._replays: dict[int, Replay] = {}
        self.num_replays = 0
        self._capture_all(model, kv_caches, max_model_len)

    @property
    def num_graphs(self) -> int:
        return len(self._replays)

    def choose(self, step: SchedulerOutput, total_tokens: int) -> Replay | None:
        """The graph for the step, or None when none holds it (more tokens than the largest
        bucket, or more sequences than max_num_seqs): it runs eagerly."""
        bucket = next((b for b in self.buckets if b >= total_tokens), None)
        if bucket is None or len(step.num_tokens) > self.max_seqs:
            return None
        return self._replays[bucket]

    @torch.inference_mode()
    def _capture_all(self, model: nn.Module, kv_caches: list[torch.Tensor], max_model_len: int) -> None:
        b, s = self.buffers, self.max_seqs
        stream = torch.cuda.Stream(self.device)
        for tokens in reversed(self.buckets):  # largest first, as DecodeGraphs does
            # a step of no real sequence: every token padding, every sequence empty (copied on the
            # current stream, which the capture stream then waits for)
            padding = Padding(tokens, decode=False)
            b.prepare(SchedulerOutput(), padding=padding)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            meta = AttentionMetadata(
                slot_mapping=b.slot_mapping(tokens), block_tables=b.graph_block_table,
                seq_lens=b.seq_lens(s), query_start_loc=b.query_start_loc(s),
                max_query_len=2, max_seq_len=max_model_len)  # > 1: the varlen (prefill) kernel
            ids, pos = b.input_ids(tokens), b.positions(tokens)
            with torch.cuda.stream(stream):
                model(ids, pos, kv_caches, meta)  # warm-up: compiles kernels, sets up cuBLAS
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._decode.pool, stream=stream):
                out = model(ids, pos, kv_caches, meta)
            self._replays[tokens] = Replay(padding, graph, out, self)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
