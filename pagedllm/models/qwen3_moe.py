"""Qwen3-MoE (Qwen3MoeForCausalLM): Qwen3's attention (q/k norms) with mixture-of-experts layers.

Routing: float32 softmax over the experts, the top `num_experts_per_tok`, renormalised when
`norm_topk_prob`, the weights rounded to the model's dtype; `mlp_only_layers` and
`decoder_sparse_step` keep some layers dense (ModelConfig.moe). Checkpoint names:
`mlp.gate.weight` (router), `mlp.experts.{e}.{gate,up,down}_proj.weight`.
"""

from __future__ import annotations

from pagedllm.models.moe_llama import MoeLlamaForCausalLM


class Qwen3MoeForCausalLM(MoeLlamaForCausalLM):
    """A Qwen3-MoE causal LM over a paged KV cache."""

    MOE_PREFIX = "mlp"
    EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")
    WEIGHTS_IN_DTYPE = True
