"""Weight-only building blocks whose parameters start uninitialized.

`nn.Linear` / `nn.Embedding` spend seconds on random init of weights that the loader
overwrites right away; these allocate empty tensors instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from pagedllm.models.config import ModelConfig


class Linear(nn.Module):
    """y = x @ W.T (+ b), W of shape [out_features, in_features].

    A fused projection (q|k|v, gate|up) is one Linear whose rows are the concatenated
    checkpoint matrices; the loader fills each row range.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the projection to `x` ([..., in_features])."""
        return F.linear(x, self.weight, self.bias)


class QKVLinear(Linear):
    """An attention layer's fused q|k|v projection (checkpoint name `qkv_proj`), giving q, k and v
    per head: [T, num_heads, head_dim] and [T, num_kv_heads, head_dim] twice (views of one GEMM's
    output)."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        num_heads, num_kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        super().__init__(config.hidden_size, (num_heads + 2 * num_kv_heads) * head_dim, config.attention_bias, dtype)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[T, hidden] -> q, k, v per head."""
        q, k, v = F.linear(x, self.weight, self.bias).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return (q.reshape(-1, self.num_heads, self.head_dim), k.reshape(-1, self.num_kv_heads, self.head_dim),
                v.reshape(-1, self.num_kv_heads, self.head_dim))


class Embedding(nn.Module):
    """Token-id lookup table of shape [num_embeddings, dim]."""

    def __init__(self, num_embeddings: int, dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim, dtype=dtype), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Looks up `ids` (any shape of int64) -> [..., dim]."""
        return F.embedding(ids, self.weight)
