"""LongRoPE (Phi-3's "longrope"/"su" scaling): per-frequency factors, short ones below the
pretraining length and long ones past it, and cos/sin scaled by an attention factor.

transformers picks the factors per forward call: all of a call's tokens rotate with the long
factors once the call's last position reaches `original_max_position_embeddings`. Here each
position picks by its own index (position p rotates long iff p >= original). For greedy decoding
both agree whenever the prompt fits in the original length (each later token is its own call
there, and transformers keeps the keys it cached short); a longer prompt transformers rotates
wholly with the long factors, this table only from the boundary on. Chunked prefill, preemption
and prefix caching cannot change a position's rotation here.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm_kernels import REFERENCE_OPS, KernelOps


def long_rope_tables(head_dim: int, max_position: int, base: float,
                     rope_scaling: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 [max_position, head_dim // 2] cos and sin tables, in transformers' op order.

    Args:
        head_dim: Rotated dimension.
        max_position: Rows of the tables.
        base: rope_theta.
        rope_scaling: A ModelConfig.rope_scaling dict with rope_type "longrope".
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    original = rope_scaling["original_max_position_embeddings"]
    positions = torch.arange(max_position, dtype=torch.float32, device="cpu")
    cos, sin = [], []
    for key, rows in (("short_factor", positions[:original]), ("long_factor", positions[original:])):
        factors = torch.tensor(rope_scaling[key], dtype=torch.float32, device="cpu")
        inv_freq = 1.0 / (factors * base**exponents)
        freqs = rows[:, None] * inv_freq[None, :]
        cos.append(freqs.cos() * rope_scaling["attention_factor"])
        sin.append(freqs.sin() * rope_scaling["attention_factor"])
    return torch.cat(cos), torch.cat(sin)


class LongRopeEmbedding(nn.Module):
    """`RotaryEmbedding`'s twin with LongRoPE tables: same buffers, same `forward`.

    Args:
        head_dim, max_position, base: as `RotaryEmbedding`.
        rope_scaling: A ModelConfig.rope_scaling dict with rope_type "longrope".
        ops: whose `rope`/`rotary` pair rotates (`pagedllm_kernels.select_ops`).
    """

    def __init__(self, head_dim: int, max_position: int, base: float, rope_scaling: dict,
                 ops: KernelOps = REFERENCE_OPS) -> None:
        super().__init__()
        cos, sin = long_rope_tables(head_dim, max_position, base, rope_scaling)
        self.register_buffer("cos_cache", cos, persistent=False)
        self.register_buffer("sin_cache", sin, persistent=False)
        self._rope = ops.rope

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple:
        """What `ops.rotary(q, k, rope)` reads for [T] int64 positions (see RotaryEmbedding)."""
        return self._rope(positions, self.cos_cache, self.sin_cache, dtype)
