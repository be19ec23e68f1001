"""Llama-family decoder over a paged KV cache (Llama, Qwen2, Qwen3, Mistral).

One class covers the family; ModelConfig flags switch the differences: q/k/v bias (Qwen2),
per-head q/k RMSNorm (Qwen3), tied embeddings, per-layer sliding windows (Mistral). q/k/v and
gate/up are fused into one matmul each; `checkpoint_targets` tells the loader where each Hugging
Face tensor lands. Phi-3 and the mixture-of-experts models (phi3.py, moe_llama.py) reuse these
blocks with their own weight names, rotary and feed-forward.

The elementwise work goes through `KernelOps` so the Triton path can fuse it (vLLM's layout):
the residual add rides with the next norm (`h, residual = norm(h, residual)`), silu * up is one
op, q and k rotate in one op. The references keep transformers' ops and order exactly.

Inputs are flattened: T tokens of all sequences in one dimension, no padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm_kernels import KernelOps, select_ops
from pagedllm.layers.attention import Attention, AttentionMetadata
from pagedllm.layers.linear import Embedding, Linear, QKVLinear
from pagedllm.layers.long_rope import LongRopeEmbedding
from pagedllm.layers.norm import RMSNorm
from pagedllm.layers.rotary import RotaryEmbedding
from pagedllm.models.config import ModelConfig

Rope = tuple  # this step's `ops.rope(...)`: (cos, sin) for the reference, the tables for Triton


@dataclass(frozen=True)
class WeightTarget:
    """Where one checkpoint tensor lands: rows [row_start, row_end) of a model parameter.

    row_start/row_end are None when the tensor fills the whole parameter. `index` picks one
    slice of a stacked parameter first (expert `index` of a MoE layer's [experts, ...] weights).
    """

    param_name: str
    row_start: int | None = None
    row_end: int | None = None
    index: int | None = None


class LlamaAttention(nn.Module):
    """Self-attention block: fused qkv projection, optional q/k norm, RoPE, paged attention.

    `layer` picks the layer's sliding window (ModelConfig.window).
    """

    def __init__(self, config: ModelConfig, dtype: torch.dtype, ops: KernelOps, layer: int = 0) -> None:
        super().__init__()
        heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.qkv_proj = QKVLinear(config, dtype)
        self.o_proj = Linear(heads * head_dim, config.hidden_size, config.attention_out_bias, dtype)
        self.qk_norm = config.qk_norm
        if config.qk_norm:
            self.q_norm = RMSNorm(head_dim, config.rms_norm_eps, dtype, ops)
            self.k_norm = RMSNorm(head_dim, config.rms_norm_eps, dtype, ops)
        self.attn = Attention(heads, kv_heads, head_dim, head_dim**-0.5, ops,
                              window=config.window(layer))
        self._rotary_into_cache = ops.rotary_into_cache
        self._qk_norm_rotary = ops.qk_norm_rotary

    def forward(
        self, rope: Rope, x: torch.Tensor, kv_cache: torch.Tensor, attn_metadata: AttentionMetadata
    ) -> torch.Tensor:
        """[T, hidden] -> [T, hidden]; `rope` is the step's (cos, sin)."""
        q, k, v = self.qkv_proj(x)
        # The step's K/V go into the cache here, rotated (one kernel on the Triton bf16 path).
        slots = attn_metadata.slot_mapping
        if self.qk_norm:
            q = self._qk_norm_rotary(q, k, v, self.q_norm.weight, self.k_norm.weight,
                                     self.q_norm.eps, rope, kv_cache[0], kv_cache[1], slots)
        else:
            q = self._rotary_into_cache(q, k, v, rope, kv_cache[0], kv_cache[1], slots)
        return self.o_proj(self.attn(q, kv_cache, attn_metadata))


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)) with gate|up fused."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, ops: KernelOps) -> None:
        super().__init__()
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size, False, dtype)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, False, dtype)
        self._silu_and_mul = ops.silu_and_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, hidden] -> [T, hidden]."""
        return self.down_proj(self._silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm transformer block with HF's residual order, the adds fused into the norms.

    It returns its MLP output and the residual stream apart; the next layer's input norm (or the
    final norm) adds them, the sum rounded to the dtype as transformers' `residual + h` is.
    `mlp` replaces the SwiGLU feed-forward (a mixture of experts: pagedllm/layers/moe.py).
    """

    def __init__(self, config: ModelConfig, dtype: torch.dtype, ops: KernelOps, layer: int = 0,
                 mlp: nn.Module | None = None) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, dtype, ops, layer)
        self.mlp = mlp if mlp is not None else LlamaMLP(config, dtype, ops)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, ops)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, ops)

    def forward(
        self, rope: Rope, h: torch.Tensor, residual: torch.Tensor | None, kv_cache: torch.Tensor,
        attn_metadata: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, residual) [T, hidden] -> (this layer's MLP output, the residual stream before it).

        residual is None for the first layer: h (the embeddings) is then the residual stream.
        """
        if residual is None:
            h, residual = self.input_layernorm(h), h
        else:
            h, residual = self.input_layernorm(h, residual)
        h = self.self_attn(rope, h, kv_cache, attn_metadata)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    """Embedding, decoder layers and final norm (HF's `model.` prefix).

    `mlp_factory(layer)` builds layer `layer`'s feed-forward (None: SwiGLU everywhere).
    """

    def __init__(self, config: ModelConfig, dtype: torch.dtype, ops: KernelOps,
                 mlp_factory: Callable[[int], nn.Module | None] | None = None) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, dtype, ops, i, mlp_factory(i) if mlp_factory else None)
            for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, ops)
        long_rope = config.rope_scaling is not None and config.rope_scaling["rope_type"] == "longrope"
        self.rotary_emb = (LongRopeEmbedding if long_rope else RotaryEmbedding)(
            config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling, ops
        )

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor],
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        """[T] ids -> [T, hidden] final hidden states."""
        h = self.embed_tokens(input_ids)
        rope = self.rotary_emb(positions, h.dtype)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches):
            h, residual = layer(rope, h, residual, kv_cache, attn_metadata)
        return self.norm(h) if residual is None else self.norm(h, residual)[0]


class LlamaForCausalLM(nn.Module):
    """A Llama-family causal LM over a paged KV cache.

    Args:
        config: The checkpoint's ModelConfig.
        dtype: Dtype of every weight and activation (the KV cache must match it).
        ops: the kernels every layer calls; None picks them for the default device
            (`torch.set_default_device` or `with torch.device(...)`) and dtype.
        mlp_factory: builds each layer's feed-forward from its index (None: SwiGLU; a MoE block
            where it returns one, see moe_llama.py).

    Parameters start uninitialized; `pagedllm.models.registry.load_model` fills them.
    """

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32,
                 ops: KernelOps | None = None,
                 mlp_factory: Callable[[int], nn.Module | None] | None = None) -> None:
        super().__init__()
        self.config = config
        self.ops = ops or select_ops(torch.get_default_device(), dtype)
        self.model = LlamaModel(config, dtype, self.ops, mlp_factory)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, False, dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Runs T new tokens of a flattened batch, reading and extending the paged cache.

        Args:
            input_ids: [T] int64 token ids.
            positions: [T] int64 absolute position of each token in its sequence.
            kv_caches: One [2, num_blocks, block_size, num_kv_heads, head_dim] tensor per layer.
            attn_metadata: Where each token's K/V goes and what each sequence attends to.

        Returns:
            [T, hidden] final hidden states (feed the rows you need to `compute_logits`).
        """
        if len(kv_caches) != self.config.num_hidden_layers:  # once a step (the layers zip them)
            raise ValueError(
                f"kv_caches: expected one tensor per layer ({self.config.num_hidden_layers}), got {len(kv_caches)}"
            )
        return self.model(input_ids, positions, kv_caches, attn_metadata)

    def compute_logits(self, hidden_states: torch.Tensor, float32: bool = True) -> torch.Tensor:
        """[n, hidden] -> [n, vocab] logits, float32 unless `float32` is False (then the model's
        dtype: the sampler upcasts what needs it; a greedy argmax does not, see Sampler.launch)."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(hidden_states, weight)
        return logits.float() if float32 else logits

    def checkpoint_targets(self) -> dict[str, WeightTarget]:
        """Maps every Hugging Face tensor name this model needs to where it is loaded.

        The key set is also the list of expected tensors: anything missing from the
        checkpoint is an error, anything extra is unexpected.
        """
        return llama_checkpoint_targets(self.config)


def llama_checkpoint_targets(c: ModelConfig) -> dict[str, WeightTarget]:
    """The Llama layout's tensors (q/k/v and gate/up split, one norm before each block) and
    where each lands in the fused parameters; other families edit this map (gemma.py, phi3.py)."""
    q, kv, ffn = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.intermediate_size
    targets = {
        "model.embed_tokens.weight": WeightTarget("model.embed_tokens.weight"),
        "model.norm.weight": WeightTarget("model.norm.weight"),
    }
    if not c.tie_word_embeddings:
        targets["lm_head.weight"] = WeightTarget("lm_head.weight")
    qkv_rows = {"q_proj": (0, q), "k_proj": (q, q + kv), "v_proj": (q + kv, q + 2 * kv)}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}"
        for name, (start, end) in qkv_rows.items():
            targets[f"{p}.self_attn.{name}.weight"] = WeightTarget(f"{p}.self_attn.qkv_proj.weight", start, end)
            if c.attention_bias:
                targets[f"{p}.self_attn.{name}.bias"] = WeightTarget(f"{p}.self_attn.qkv_proj.bias", start, end)
        own = [f"{p}.self_attn.o_proj.weight", f"{p}.mlp.down_proj.weight"]
        own += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"]
        if c.attention_out_bias:
            own.append(f"{p}.self_attn.o_proj.bias")
        if c.qk_norm:
            own += [f"{p}.self_attn.q_norm.weight", f"{p}.self_attn.k_norm.weight"]
        targets.update({name: WeightTarget(name) for name in own})
        targets[f"{p}.mlp.gate_proj.weight"] = WeightTarget(f"{p}.mlp.gate_up_proj.weight", 0, ffn)
        targets[f"{p}.mlp.up_proj.weight"] = WeightTarget(f"{p}.mlp.gate_up_proj.weight", ffn, 2 * ffn)
    return targets
