"""Pure-torch references for the paged KV-cache kernels.

They are the oracle for the Triton kernels and the implementation used on CPU. Clarity
beats speed here: attention loops over sequences and gathers each one's blocks.

Cache layout (one layer):

    key_cache / value_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    flat slot s  ->  block s // block_size, offset s % block_size

    sequence i, context length L = seq_lens[i], n = qsl[i+1] - qsl[i] new tokens:

    context  | 0 1 2 ... L-n-1 | L-n ... L-1 |
             |  cached prefix  | new tokens  |  <- queries; query j sees keys 0 .. L-n+j
"""

from __future__ import annotations

import torch


def reshape_and_cache_ref(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Writes key/value [T, num_kv_heads, head_dim] into their cache slots, in place.

    Slots < 0 (padding tokens) are skipped.
    """
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    num_kv_heads, head_dim = key_cache.shape[-2:]
    # NOTE: view (not reshape) so the writes land in the caller's cache tensor.
    key_cache.view(-1, num_kv_heads, head_dim)[slots] = key[valid]
    value_cache.view(-1, num_kv_heads, head_dim)[slots] = value[valid]


def paged_attention_ref(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of each sequence's new queries over its cached context.

    Follows Hugging Face's eager op order (scores in the input dtype, softmax in float32)
    so model outputs match transformers closely.

    Args:
        query: [T, num_heads, head_dim].
        key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim], already
            holding every token of each context (including this step's).
        block_tables: [S, max_blocks] int, block ids of each sequence in order.
        seq_lens: [S] int, context length of each sequence (cached + new).
        query_start_loc: [S+1] int, sequence i's queries are rows qsl[i]:qsl[i+1].
        scale: Multiplier of q.k, usually head_dim ** -0.5.

    Returns:
        [T, num_heads, head_dim] in query's dtype; rows beyond qsl[S] (padding) are zero.
    """
    num_heads, head_dim = query.shape[1:]
    block_size, num_kv_heads = key_cache.shape[1:3]
    group = num_heads // num_kv_heads
    out = torch.zeros_like(query)
    starts = query_start_loc.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        q_start, q_end = starts[i], starts[i + 1]
        n = q_end - q_start
        if n == 0:
            continue
        blocks = block_tables[i, : (seq_len + block_size - 1) // block_size].long()
        k = key_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len]
        v = value_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len]
        # GQA: query head h reads kv head h // group (HF's repeat_kv order).
        k = k.repeat_interleave(group, dim=1).transpose(0, 1)  # [H, L, D]
        v = v.repeat_interleave(group, dim=1).transpose(0, 1)  # [H, L, D]
        q = query[q_start:q_end].transpose(0, 1)  # [H, n, D]
        scores = torch.matmul(q, k.transpose(1, 2)) * scale  # [H, n, L]
        q_pos = torch.arange(seq_len - n, seq_len, device=query.device)
        k_pos = torch.arange(seq_len, device=query.device)
        scores = scores.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        out[q_start:q_end] = torch.matmul(probs, v).transpose(0, 1)
    return out


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`LlamaRMSNorm`: float32 statistics, the row cast back to x's dtype, then the weight."""
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(x.dtype)
