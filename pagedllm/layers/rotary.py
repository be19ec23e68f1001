"""Rotary position embedding (RoPE) with a precomputed cos/sin table.

Frequencies follow Hugging Face exactly (inverse frequencies in float32 on CPU, llama3
scaling with the same op order) so that positions rotate bit-for-bit like transformers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pagedllm_kernels import REFERENCE_OPS, KernelOps


def inverse_frequencies(head_dim: int, base: float, rope_scaling: dict | None) -> torch.Tensor:
    """Returns the [head_dim // 2] float32 inverse frequencies, llama3- or linear-scaled if asked.

    Args:
        head_dim: Rotated dimension (the full head dim for every supported model).
        base: rope_theta.
        rope_scaling: None, or a ModelConfig.rope_scaling dict with rope_type "llama3" or
            "linear" (Gemma 3's global layers; LongRoPE has its own tables: long_rope.py).
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").to(torch.float32) / head_dim
    inv_freq = 1.0 / (base**exponents)
    if rope_scaling is None:
        return inv_freq
    if rope_scaling.get("rope_type") == "linear":
        return inv_freq / rope_scaling["factor"]
    if rope_scaling.get("rope_type") != "llama3":
        raise ValueError(f"rope_scaling: unsupported rope_type {rope_scaling.get('rope_type')!r}")
    factor = rope_scaling["factor"]
    low_freq_factor = rope_scaling["low_freq_factor"]
    high_freq_factor = rope_scaling["high_freq_factor"]
    old_context_len = rope_scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    # Long wavelengths are slowed down by `factor`, short ones kept, the middle band blended.
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin table for rotating q and k by absolute position ("rotate half" convention).

    The table covers positions [0, max_position); it is computed on CPU in float32 (so it
    does not depend on the device) and is moved with the module. One instance serves all
    layers.

    Args:
        head_dim: Size of each head; all of it is rotated.
        max_position: Number of positions in the table (max_position_embeddings).
        base: rope_theta.
        rope_scaling: None or a llama3 scaling dict (see `inverse_frequencies`).
        ops: whose `rope`/`rotary` pair rotates (`pagedllm_kernels.select_ops`); the reference
            by default (`pagedllm_kernels.reference.apply_rotary_ref` is HF's op order).
    """

    def __init__(self, head_dim: int, max_position: int, base: float, rope_scaling: dict | None,
                 ops: KernelOps = REFERENCE_OPS) -> None:
        super().__init__()
        inv_freq = inverse_frequencies(head_dim, base, rope_scaling)
        positions = torch.arange(max_position, dtype=torch.float32, device="cpu")
        freqs = positions[:, None] * inv_freq[None, :]  # [max_position, head_dim // 2]
        self.register_buffer("cos_cache", freqs.cos(), persistent=False)
        self.register_buffer("sin_cache", freqs.sin(), persistent=False)
        self._rope = ops.rope

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple:
        """What `ops.rotary(q, k, rope)` reads for [T] int64 positions, once per forward.

        The reference gathers (cos, sin), each [T, 1, head_dim // 2] in `dtype`, shared by every
        layer; the Triton kernel reads the tables at each position itself (no work here).
        """
        return self._rope(positions, self.cos_cache, self.sin_cache, dtype)
