"""Pure-torch references for the kernels: paged attention, the KV-cache write, the model's
elementwise ops (RMSNorm, residual add + RMSNorm, silu * up, rotary embedding) and the
mixture-of-experts feed-forward.

They are the oracle for the Triton kernels and the implementation used on CPU. Clarity
beats speed here: attention loops over sequences and gathers each one's blocks. The
elementwise ones are transformers' ops in transformers' order, so float32 stays bit-identical.

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
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention of each sequence's new queries over its cached context.

    Follows Hugging Face's eager op order (scores in the input dtype, soft-capped, masked,
    softmax in float32) so model outputs match transformers closely.

    Args:
        query: [T, num_heads, head_dim].
        key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim], already
            holding every token of each context (including this step's).
        block_tables: [S, max_blocks] int, block ids of each sequence in order.
        seq_lens: [S] int, context length of each sequence (cached + new).
        query_start_loc: [S+1] int, sequence i's queries are rows qsl[i]:qsl[i+1].
        scale: Multiplier of q.k, usually head_dim ** -0.5.
        window: Sliding window: the query at position p sees keys p - window + 1 .. p only
            (transformers' `kv_idx > q_idx - sliding_window`); blocks wholly before the first
            query's window are not read. None: every key up to p.
        softcap: Gemma 2's attention soft-capping: scores become softcap * tanh(scores / softcap)
            before the mask. None: no capping.

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
        # The first key any of the n queries can see; its block is the first one read.
        first_block = 0 if window is None else max(0, seq_len - n - window + 1) // block_size
        start = first_block * block_size
        blocks = block_tables[i, first_block : (seq_len + block_size - 1) // block_size].long()
        k = key_cache[blocks].reshape(-1, num_kv_heads, head_dim)[: seq_len - start]
        v = value_cache[blocks].reshape(-1, num_kv_heads, head_dim)[: seq_len - start]
        # GQA: query head h reads kv head h // group (HF's repeat_kv order).
        k = k.repeat_interleave(group, dim=1).transpose(0, 1)  # [H, L, D]
        v = v.repeat_interleave(group, dim=1).transpose(0, 1)  # [H, L, D]
        q = query[q_start:q_end].transpose(0, 1)  # [H, n, D]
        scores = torch.matmul(q, k.transpose(1, 2)) * scale  # [H, n, L - start]
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        q_pos = torch.arange(seq_len - n, seq_len, device=query.device)
        k_pos = torch.arange(start, seq_len, device=query.device)
        hidden = k_pos[None, :] > q_pos[:, None]
        if window is not None:
            hidden |= k_pos[None, :] <= q_pos[:, None] - window
        scores = scores.masked_fill(hidden, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        out[q_start:q_end] = torch.matmul(probs, v).transpose(0, 1)
    return out


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`LlamaRMSNorm`: float32 statistics, the row cast back to x's dtype, then the weight."""
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(x.dtype)


def fused_add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's `residual + x` (rounded to x's dtype: the new residual), then `rms_norm_ref` of it.

    Returns:
        (normalised sum, the sum): vLLM's fused_add_rms_norm, out of place.
    """
    h = residual + x
    return rms_norm_ref(h, weight, eps), h


def silu_and_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """`LlamaMLP`'s `silu(gate) * up`, gate|up the two halves of the last dim: [..., 2I] -> [..., I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def rope_ref(positions: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's (cos, sin), each [T, 1, head_dim // 2] in `dtype`, from the float32 tables."""
    return cos_cache[positions].to(dtype)[:, None, :], sin_cache[positions].to(dtype)[:, None, :]


def apply_rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x [T, heads, head_dim] by `rope_ref`'s (cos, sin) ("rotate half" convention)."""
    # NOTE: same products and sums as HF's `x * cos + rotate_half(x) * sin` with cos/sin
    # duplicated over both halves, so results are bitwise equal.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor,
               sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D] and k [T, Hk, D] rotated by position: the oracle of the rotary kernel."""
    cos, sin = rope_ref(positions, cos_cache, sin_cache, q.dtype)
    return apply_rotary_ref(q, cos, sin), apply_rotary_ref(k, cos, sin)


def fused_moe_ref(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor) -> torch.Tensor:
    """A mixture-of-experts feed-forward, transformers' way: expert by expert, in id order.

    Each expert e takes the tokens routed to it, computes down(silu(gate) * up) with its own
    weights, scales each token's row by that token's routing weight for e, and adds it into the
    output (`index_add_`); a token's output is so the sum of its top-k experts' rows.

    Args:
        x: [T, hidden] tokens.
        w13: [E, 2 * I, hidden] each expert's gate (rows :I) and up (rows I:) projections.
        w2: [E, hidden, I] each expert's down projection.
        topk_weights: [T, K] routing weights (float32, or x's dtype: the product takes the
            wider type and is rounded to x's dtype, as transformers does for each family).
        topk_ids: [T, K] int expert ids, distinct within a row.

    Returns:
        [T, hidden] in x's dtype.
    """
    out = torch.zeros_like(x)
    inter = w2.shape[2]
    for expert in torch.unique(topk_ids).tolist():
        tokens, slots = torch.where(topk_ids == expert)
        gate_up = torch.nn.functional.linear(x[tokens], w13[expert])
        h = torch.nn.functional.silu(gate_up[:, :inter]) * gate_up[:, inter:]
        h = torch.nn.functional.linear(h, w2[expert]) * topk_weights[tokens, slots, None]
        out.index_add_(0, tokens, h.to(out.dtype))
    return out
