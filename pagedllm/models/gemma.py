"""Gemma 2 and Gemma 3 (text) decoders over a paged KV cache.

What sets them apart from Llama, each as transformers computes it:

- the embedding is scaled by sqrt(hidden_size) (rounded to the model's dtype first);
- RMSNorm multiplies by (1 + weight), in float32, and rounds once at the end;
- each block is wrapped in two norms ("sandwich"): input -> attention -> post-attention norm ->
  residual add, then pre-feedforward norm -> GeGLU MLP -> post-feedforward norm -> residual add;
- the softmax scale is query_pre_attn_scalar ** -0.5;
- layers alternate sliding-window and global attention (ModelConfig.sliding_windows);
- Gemma 2 soft-caps the attention scores; both may soft-cap the final logits;
- Gemma 3 RMS-normalises each head of q and k, and its sliding layers rotate with their own
  rope_theta (GemmaOptions.local_rope_theta).

Gemma's norms and GeGLU run as plain torch ops on every device (no fused kernels); attention
and the rotary take the model's KernelOps like Llama's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm_kernels import KernelOps, select_ops
from pagedllm.layers.attention import Attention, AttentionMetadata
from pagedllm.layers.linear import Embedding, Linear, QKVLinear
from pagedllm.layers.rotary import RotaryEmbedding
from pagedllm.models.config import ModelConfig
from pagedllm.models.llama import Rope, WeightTarget, llama_checkpoint_targets


class GemmaRMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * (1 + weight), all in float32, cast back once at the end.

    (Llama casts before the weight multiply; Gemma after: bf16 runs round differently.)
    """

    def __init__(self, dim: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalises `x` ([..., dim])."""
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


class GemmaMLP(nn.Module):
    """GeGLU feed-forward: down(gelu_tanh(gate(x)) * up(x)) with gate|up fused."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size, False, dtype)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, False, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, hidden] -> [T, hidden]."""
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class GemmaAttention(nn.Module):
    """Fused qkv, Gemma 3's per-head q/k norms, RoPE, paged attention with the layer's window
    and Gemma 2's soft cap."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, ops: KernelOps, layer: int) -> None:
        super().__init__()
        heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.qkv_proj = QKVLinear(config, dtype)
        self.o_proj = Linear(heads * head_dim, config.hidden_size, config.attention_out_bias, dtype)
        gemma = config.gemma
        self.attn = Attention(heads, kv_heads, head_dim, gemma.query_pre_attn_scalar**-0.5, ops,
                              window=config.window(layer), softcap=gemma.attn_logit_softcapping)
        self._rotary_into_cache = ops.rotary_into_cache
        self.qk_norm = config.qk_norm  # Gemma 3
        if config.qk_norm:
            self.q_norm = GemmaRMSNorm(head_dim, config.rms_norm_eps, dtype)
            self.k_norm = GemmaRMSNorm(head_dim, config.rms_norm_eps, dtype)

    def forward(self, rope: Rope, x: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        """[T, hidden] -> [T, hidden]; `rope` is this layer's (local or global) rotary."""
        q, k, v = self.qkv_proj(x)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        # the rotation and the cache write (one kernel on the Triton bf16 path)
        q = self._rotary_into_cache(q, k, v, rope, kv_cache[0], kv_cache[1], attn_metadata.slot_mapping)
        return self.o_proj(self.attn(q, kv_cache, attn_metadata))


class GemmaDecoderLayer(nn.Module):
    """The sandwich block: each sub-block between its own pre- and post-norm."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, ops: KernelOps, layer: int) -> None:
        super().__init__()
        self.self_attn = GemmaAttention(config, dtype, ops, layer)
        self.mlp = GemmaMLP(config, dtype)
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(hidden, eps, dtype)
        self.post_attention_layernorm = GemmaRMSNorm(hidden, eps, dtype)
        self.pre_feedforward_layernorm = GemmaRMSNorm(hidden, eps, dtype)
        self.post_feedforward_layernorm = GemmaRMSNorm(hidden, eps, dtype)

    def forward(self, rope: Rope, h: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        """[T, hidden] residual stream in -> out."""
        attn = self.self_attn(rope, self.input_layernorm(h), kv_cache, attn_metadata)
        h = h + self.post_attention_layernorm(attn)
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class GemmaModel(nn.Module):
    """Scaled embedding, decoder layers, final norm (HF's `model.` prefix) and the rotaries."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, ops: KernelOps) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype)
        # NOTE: transformers rounds sqrt(hidden) to the dtype before the multiply (55.4 -> 55.5 in bf16).
        self.register_buffer("normalizer", torch.tensor(config.hidden_size**0.5).to(dtype), persistent=False)
        self.layers = nn.ModuleList(GemmaDecoderLayer(config, dtype, ops, i)
                                    for i in range(config.num_hidden_layers))
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        max_pos = config.max_position_embeddings
        self.rotary_emb = RotaryEmbedding(config.head_dim, max_pos, config.rope_theta, config.rope_scaling, ops)
        gemma = config.gemma
        local = (gemma.local_rope_theta, gemma.local_rope_scaling)
        self.local_rotary_emb = None
        if local != (config.rope_theta, config.rope_scaling):  # Gemma 3: the sliding layers' own
            self.local_rotary_emb = RotaryEmbedding(config.head_dim, max_pos, *local, ops)
        self.local_layers = gemma.local_layers

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor],
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        """[T] ids -> [T, hidden] final hidden states."""
        h = self.embed_tokens(input_ids) * self.normalizer
        rope = self.rotary_emb(positions, h.dtype)
        local = rope if self.local_rotary_emb is None else self.local_rotary_emb(positions, h.dtype)
        for layer, is_local, kv_cache in zip(self.layers, self.local_layers, kv_caches):
            h = layer(local if is_local else rope, h, kv_cache, attn_metadata)
        return self.norm(h)


class GemmaForCausalLM(nn.Module):
    """Gemma2ForCausalLM / Gemma3ForCausalLM over a paged KV cache (same contract as
    LlamaForCausalLM: forward over flattened tokens, compute_logits, checkpoint_targets)."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32,
                 ops: KernelOps | None = None) -> None:
        super().__init__()
        if config.gemma is None:
            raise ValueError(f"config: {config.architecture} is not a Gemma architecture")
        self.config = config
        self.ops = ops or select_ops(torch.get_default_device(), dtype)
        self.model = GemmaModel(config, dtype, self.ops)
        self.lm_head = None if config.tie_word_embeddings else Linear(config.hidden_size, config.vocab_size,
                                                                      False, dtype)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor],
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        """Runs T new tokens of a flattened batch (see LlamaForCausalLM.forward)."""
        if len(kv_caches) != self.config.num_hidden_layers:
            raise ValueError(
                f"kv_caches: expected one tensor per layer ({self.config.num_hidden_layers}), got {len(kv_caches)}"
            )
        return self.model(input_ids, positions, kv_caches, attn_metadata)

    def compute_logits(self, hidden_states: torch.Tensor, float32: bool = True) -> torch.Tensor:
        """[n, hidden] -> [n, vocab] logits, soft-capped where the config says so."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(hidden_states, weight)
        cap = self.config.gemma.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits.float() if float32 else logits

    def checkpoint_targets(self) -> dict[str, WeightTarget]:
        """Llama's tensor map plus the two feed-forward norms of each layer."""
        targets = llama_checkpoint_targets(self.config)
        for i in range(self.config.num_hidden_layers):
            for norm in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
                name = f"model.layers.{i}.{norm}.weight"
                targets[name] = WeightTarget(name)
        return targets
