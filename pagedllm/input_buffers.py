"""Where one step's inputs are built: the scheduler's step -> the model's input tensors, once.

Every integer input of a step lives in one of two preallocated host buffers (pinned on CUDA),
filled with numpy, and goes to the device in one non-blocking copy per buffer (fresh tensors
would cost one small pageable copy each, every one stalling the host):

    int64 buffer: | input_ids (T_max) | positions (T_max) | slot_mapping (T_max) | logits_idx (S_max) |
                  | pending rows (S_max) | their sources (S_max) |
    int32 buffer: | seq_lens (S_max) | query_start_loc (S_max + 1) | block table, n rows x w cols |

With async scheduling a row's input token can still be on the device, sampled by the step
before and not yet read back (`SchedulerOutput.pending_rows`): the ids are patched on the device
after the copy, from that step's tokens (`_patch_pending`).

On CPU the "device" buffers are the host buffers themselves (no copy). The device buffers have
fixed addresses, and so has `graph_block_table`: CUDA graphs read them, and a step that replays a
graph is padded to the graph's shapes here (`Padding`); cuda_graphs.py only chooses and replays.

Block-table rows are kept from step to step: a row is rewritten only when the request at that batch
position changes or its table grows. That relies on KVCacheManager.block_ids returning a request's live
list, which only ever grows (NOTE there).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pagedllm.layers.attention import AttentionMetadata
from pagedllm.scheduler import SchedulerOutput


@dataclass(frozen=True, slots=True)
class Padding:
    """The fixed shapes of the CUDA graph a step replays, which its inputs are padded to.

    Attributes:
        size: the graph's one-token rows (`decode`), else its tokens.
        decode: a decode graph (every row one token, every row sampling). Else a mixed-step
            graph, which runs `size` tokens over max_seqs sequences.
    """

    size: int
    decode: bool


@dataclass
class BatchInput:
    """The flattened step, as the model sees it.

    Attributes:
        input_ids, positions: [T] (the step's own tokens, never the padding).
        attn_metadata: the batch description; None for a padded decode step (its graph reads the
            buffers through the metadata it was captured with).
        logits_indices: the rows of the model's output to take logits of, one per sampling row.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    attn_metadata: AttentionMetadata | None
    logits_indices: torch.Tensor | slice


class InputBuffers:
    """Preallocated host/device buffers for a step's integer inputs.

    Args:
        max_tokens: most tokens in one step (the scheduler's token budget, or more).
        max_seqs: most requests in one step.
        max_blocks_per_seq: longest block table a request can have (max_model_len / block_size).
        block_size: tokens per KV block.
        device: where the model runs; host buffers are pinned when it is CUDA.
    """

    def __init__(self, max_tokens: int, max_seqs: int, max_blocks_per_seq: int, block_size: int,
                 device: torch.device) -> None:
        self.max_tokens = max_tokens
        self.max_seqs = max_seqs
        self.max_blocks_per_seq = max_blocks_per_seq
        self.block_size = block_size
        self.device = device
        pin = device.type == "cuda"
        t, s = max_tokens, max_seqs
        self._i64_host = torch.zeros(3 * t + 3 * s, dtype=torch.int64, pin_memory=pin)
        self._i32_host = torch.zeros(2 * s + 1 + s * max_blocks_per_seq, dtype=torch.int32,
                                     pin_memory=pin)
        self._i64 = self._i64_host.numpy()
        self._i32 = self._i32_host.numpy()
        if pin:
            self.i64 = torch.zeros_like(self._i64_host, device=device)
            self.i32 = torch.zeros_like(self._i32_host, device=device)
        else:
            self.i64, self.i32 = self._i64_host, self._i32_host
        # The CUDA graphs' block table: its row stride is baked into them, so it is sized for the
        # longest request, with a row for every sequence a step can hold.
        self.graph_block_table = torch.zeros(s, max_blocks_per_seq, dtype=torch.int32, device=device)
        self._table_off = 2 * s + 1
        # Block tables as last written, one row per batch position (host memory, not pinned).
        self._table = np.zeros((s, max_blocks_per_seq), dtype=np.int32)
        self._rows: list[list[int] | None] = [None] * s
        self._row_lens = [0] * s
        self._arange = np.arange(max(t, s) + 1, dtype=np.int64)
        self._copied = torch.cuda.Event() if pin else None
        self._copy_pending = False

    # ---- device views (fixed addresses: CUDA graphs read these) ---------------------------------

    def input_ids(self, n: int) -> torch.Tensor:
        return self.i64[:n]

    def positions(self, n: int) -> torch.Tensor:
        return self.i64[self.max_tokens:self.max_tokens + n]

    def slot_mapping(self, n: int) -> torch.Tensor:
        return self.i64[2 * self.max_tokens:2 * self.max_tokens + n]

    def seq_lens(self, n: int) -> torch.Tensor:
        return self.i32[:n]

    def query_start_loc(self, n: int) -> torch.Tensor:
        """[n + 1] cumulative token counts (a mixed-step graph reads all max_seqs + 1)."""
        return self.i32[self.max_seqs:self.max_seqs + n + 1]

    def block_table_staging(self, num_seqs: int, width: int) -> torch.Tensor:
        """The step's block table as copied: [num_seqs, width], contiguous."""
        off = self._table_off
        return self.i32[off:off + num_seqs * width].view(num_seqs, width)

    # ---- filling --------------------------------------------------------------------------------

    def prepare(self, step: SchedulerOutput, prev_tokens: torch.Tensor | None = None,
                padding: Padding | None = None) -> BatchInput:
        """Fill and copy the step's inputs (prefill, chunked prefill, decode or a mix); views of them.

        `prev_tokens`: the previous launch's sampled ids, on the device, where the step's pending
        rows take their input from (`step.pending_sources`).

        `padding` (a CUDA graph's shapes): the device buffers also hold a valid step of the
        graph's size, and the step's block table is copied into `graph_block_table`. Padding
        tokens are token 0 at position 0, slot -1 (no K/V written). A mixed graph's padding
        tokens are in no sequence, and its sequences past the step's have no tokens and context
        0 (attention skips them). A decode graph's padding rows have context 1 (they attend to
        slot 0 of whatever block their table row names: a valid block, so their values are
        finite, and nothing reads them).
        """
        if padding is not None and padding.decode:
            return self._prepare_decode(step, prev_tokens, padding.size)
        return self._prepare_ragged(step, prev_tokens, padding.size if padding else None)

    def _prepare_ragged(self, step: SchedulerOutput, prev_tokens: torch.Tensor | None,
                        pad_to: int | None) -> BatchInput:
        token_ids, num_computed, num_tokens = step.token_ids, step.num_computed, step.num_tokens
        pending = step.pending_rows
        num_seqs = len(num_tokens)
        if num_seqs > self.max_seqs:
            raise ValueError(f"step has {num_seqs} requests, more than max_num_seqs={self.max_seqs}")
        nt = np.asarray(num_tokens, dtype=np.int64)
        qsl = np.zeros(num_seqs + 1, dtype=np.int64)
        np.cumsum(nt, out=qsl[1:])
        total = int(qsl[-1])
        if total > self.max_tokens:
            raise ValueError(f"step has {total} tokens, more than the buffers hold ({self.max_tokens})")
        if pad_to is not None and not total <= pad_to <= self.max_tokens:
            raise ValueError(f"pad_to={pad_to} must be in [{total}, {self.max_tokens}]")
        self._wait_for_last_copy()
        width = self._fill_table(step.block_tables)
        nc = np.asarray(num_computed, dtype=np.int64)
        t = self.max_tokens
        i64 = self._i64
        # positions: token j of request i sits at num_computed[i] + (j - qsl[i])
        pos = i64[t:t + total]
        np.subtract(self._arange[:total], np.repeat(qsl[:-1] - nc, nt), out=pos)
        seq_index = np.repeat(self._arange[:num_seqs], nt)
        self._slots(seq_index, pos, i64[2 * t:2 * t + total])
        ids = i64[:total]
        if total == num_seqs and not pending:  # every request computes one token: decode
            ids[:] = [toks[c] for toks, c in zip(token_ids, num_computed)]
        else:  # (a pending row's token is not in its list: 0 until patched)
            flat: list[int] = []
            for toks, c, n in zip(token_ids, num_computed, num_tokens):
                flat.extend(toks[c:c + n] if c + n <= len(toks) else [0] * n)
            ids[:] = flat
        if pending:
            self._stage_pending(qsl[np.asarray(pending, dtype=np.int64)], step.pending_sources)
        logits_idx = (qsl[1:] - 1)[np.asarray(step.sample, dtype=bool)]
        i64[3 * t:3 * t + len(logits_idx)] = logits_idx
        s = self.max_seqs
        i32 = self._i32
        seq_lens = nc + nt
        i32[:num_seqs] = seq_lens
        i32[s:s + num_seqs + 1] = qsl
        if pad_to is not None:
            i64[total:pad_to] = 0
            i64[t + total:t + pad_to] = 0
            i64[2 * t + total:2 * t + pad_to] = -1
            i32[num_seqs:s] = 0
            i32[s + num_seqs + 1:2 * s + 1] = total
        self._stage_table(num_seqs, width)
        self._copy(2 * s + 1 + num_seqs * width)
        self._patch_pending(len(pending), prev_tokens)
        table = self.block_table_staging(num_seqs, width)
        if pad_to is not None:
            self.graph_block_table[:num_seqs, :width].copy_(table)
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping(total),
            block_tables=table,
            seq_lens=self.seq_lens(num_seqs),
            query_start_loc=self.query_start_loc(num_seqs),
            max_query_len=int(nt.max()) if num_seqs else 0,
            max_seq_len=int(seq_lens.max()) if num_seqs else 0,
        )
        return BatchInput(input_ids=self.input_ids(total), positions=self.positions(total),
                          attn_metadata=meta,
                          logits_indices=self.i64[3 * t:3 * t + len(logits_idx)])

    def _prepare_decode(self, step: SchedulerOutput, prev_tokens: torch.Tensor | None,
                        padded: int) -> BatchInput:
        """A pure-decode step of n rows, padded to `padded` rows for a decode graph.

        Every row samples, so its input is the last token of its list, or pending.
        """
        token_ids, num_computed, pending = step.token_ids, step.num_computed, step.pending_rows
        n = len(num_computed)
        if not n <= padded <= min(self.max_seqs, self.max_tokens):
            raise ValueError(f"padded={padded} must be in [{n}, {min(self.max_seqs, self.max_tokens)}]")
        self._wait_for_last_copy()
        width = self._fill_table(step.block_tables)
        t, s = self.max_tokens, self.max_seqs
        i64, i32 = self._i64, self._i32
        pos = i64[t:t + padded]
        pos[:n] = num_computed
        pos[n:] = 0
        ids = i64[:padded]
        ids[:n] = [toks[-1] for toks in token_ids]
        ids[n:] = 0
        if pending:
            self._stage_pending(pending, step.pending_sources)
        slots = i64[2 * t:2 * t + padded]
        self._slots(self._arange[:n], pos[:n], slots[:n])
        slots[n:] = -1
        seq_lens = i32[:padded]
        np.add(pos, 1, out=seq_lens, casting="unsafe")
        seq_lens[n:] = 1
        self._stage_table(n, width)
        self._copy(2 * s + 1 + n * width)
        self._patch_pending(len(pending), prev_tokens)
        self.graph_block_table[:n, :width].copy_(self.block_table_staging(n, width))
        return BatchInput(input_ids=self.input_ids(n), positions=self.positions(n),
                          attn_metadata=None, logits_indices=slice(0, n))

    def _stage_pending(self, rows, sources) -> None:
        """Write where pending tokens go (flat input positions) and where they come from."""
        k = len(sources)
        off, s = 3 * self.max_tokens + self.max_seqs, self.max_seqs
        self._i64[off:off + k] = rows
        self._i64[off + s:off + s + k] = sources

    def _patch_pending(self, k: int, prev_tokens: torch.Tensor | None) -> None:
        """On the device, after the copy: input_ids[rows] = prev_tokens[sources], k of them."""
        if not k:
            return
        if prev_tokens is None:
            raise RuntimeError("pending input tokens, but no step was launched before")
        off, s = 3 * self.max_tokens + self.max_seqs, self.max_seqs
        rows, sources = self.i64[off:off + k], self.i64[off + s:off + s + k]
        self.i64[:self.max_tokens].index_copy_(0, rows, prev_tokens.index_select(0, sources))

    def _fill_table(self, block_tables: list[list[int]]) -> int:
        """Bring the host table rows up to date; returns the widest row (at least 1)."""
        tbl, rows, lens = self._table, self._rows, self._row_lens
        width = 1
        for i, blocks in enumerate(block_tables):
            n = len(blocks)
            if n > self.max_blocks_per_seq:
                raise ValueError(f"a request holds {n} KV blocks, more than max_model_len allows "
                                 f"({self.max_blocks_per_seq})")
            old = lens[i]
            if rows[i] is not blocks or n < old:
                tbl[i, :n] = blocks
                rows[i] = blocks
            elif n > old:
                # NOTE: the same live list as last step, grown at its end (KVCacheManager.block_ids).
                tbl[i, old:n] = blocks[old:]
            lens[i] = n
            if n > width:
                width = n
        return width

    def _slots(self, seq_index: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
        bs = self.block_size
        out[:] = self._table[seq_index, pos // bs]
        out *= bs
        out += pos % bs

    def _stage_table(self, num_seqs: int, width: int) -> None:
        off = self._table_off
        self._i32[off:off + num_seqs * width].reshape(num_seqs, width)[:] = self._table[:num_seqs, :width]

    def _copy(self, i32_len: int) -> None:
        """One non-blocking copy per buffer (the int32 one up to `i32_len`)."""
        if self._copied is None:
            return
        self.i64.copy_(self._i64_host, non_blocking=True)
        self.i32[:i32_len].copy_(self._i32_host[:i32_len], non_blocking=True)
        self._copied.record()
        self._copy_pending = True

    def _wait_for_last_copy(self) -> None:
        """The host buffers are about to be rewritten: the last copy out of them must be done.

        Usually it is (the step read its sampled tokens back, which waited for it); a step that
        only fills the cache (a partial prompt chunk) samples nothing and does not wait.
        """
        if self._copy_pending:
            self._copied.synchronize()
            self._copy_pending = False
