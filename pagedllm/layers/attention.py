"""Paged attention layer and the per-step batch description it reads.

The metadata is passed down explicitly through the model's forward (no module-global
context), so two models or two threads can never see each other's batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pagedllm_kernels import KernelOps


@dataclass
class AttentionMetadata:
    """Describes one flattened batch: S sequences, T new tokens in total."""

    slot_mapping: torch.Tensor  # [T] int64: flat cache slot (block_id * block_size + offset) of each new token
    block_tables: torch.Tensor  # [S, max_blocks] int32, padded with 0
    seq_lens: torch.Tensor  # [S] int32: context length of each sequence after this step (cached + new)
    # [S+1] int32: cumulative new-token counts (sequence i's queries are rows qsl[i]:qsl[i+1])
    query_start_loc: torch.Tensor
    max_query_len: int
    max_seq_len: int


class Attention(nn.Module):
    """Attends over the layer's paged cache, whose slots for the step's tokens are written already.

    The write comes before it, with the rotary embedding (`KernelOps.rotary_into_cache` or
    `qk_norm_rotary`): on the Triton path one kernel rotates k and writes it beside v.

    Args:
        num_heads: Query heads.
        num_kv_heads: Key/value heads (num_heads must be a multiple: GQA).
        head_dim: Size of each head.
        scale: Softmax scale (head_dim ** -0.5, Gemma's query_pre_attn_scalar ** -0.5).
        ops: the kernels to call (`pagedllm_kernels.select_ops`), unchecked: the runner checked
            the cache layout once (`pagedllm_kernels.check_kv_cache`).
        window: This layer's sliding window in tokens (each query sees itself and the
            window - 1 keys before it), or None for full causal attention.
        softcap: Attention logit soft-capping (Gemma 2), or None.
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
                 ops: KernelOps, window: int | None = None, softcap: float | None = None) -> None:
        super().__init__()
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads: {num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
        if window is not None and window < 1:
            raise ValueError(f"window: must be a positive number of tokens or None, got {window}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.ops = ops
        self.window = window
        self.softcap = softcap

    def forward(self, q: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        """Attention for T new tokens over the cache, whose slots for them are already written.

        Args:
            q: [T, num_heads, head_dim], already rotated.
            kv_cache: [2, num_blocks, block_size, num_kv_heads, head_dim]; index 0 = K, 1 = V.
            attn_metadata: The batch description shared by all layers.

        Returns:
            [T, num_heads * head_dim].
        """
        out = self.ops.paged_attention(
            q,
            kv_cache[0],
            kv_cache[1],
            attn_metadata.block_tables,
            attn_metadata.seq_lens,
            attn_metadata.query_start_loc,
            self.scale,
            attn_metadata.max_query_len,
            attn_metadata.max_seq_len,
            window=self.window,
            softcap=self.softcap,
        )
        return out.reshape(q.shape[0], self.num_heads * self.head_dim)
