"""Mixtral (MixtralForCausalLM): Mistral's attention with a mixture of experts in every layer.

Routing: float32 softmax over the `num_local_experts`, the top `num_experts_per_tok` always
renormalised, the weights kept in float32 when they scale the experts' outputs. Checkpoint
names: `block_sparse_moe.gate.weight` (router), `block_sparse_moe.experts.{e}.w1` (gate),
`.w3` (up) and `.w2` (down). `sliding_window`, when set, applies to every layer.
"""

from __future__ import annotations

from pagedllm.models.moe_llama import MoeLlamaForCausalLM


class MixtralForCausalLM(MoeLlamaForCausalLM):
    """A Mixtral causal LM over a paged KV cache."""

    MOE_PREFIX = "block_sparse_moe"
    EXPERT_NAMES = ("w1", "w3", "w2")
    WEIGHTS_IN_DTYPE = False
