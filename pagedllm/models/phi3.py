"""Phi-3 (Phi3ForCausalLM): the Llama decoder with Phi-3's own weight names.

Its checkpoints store q|k|v as one `qkv_proj` and gate|up as one `gate_up_proj` tensor, in the
order our fused parameters already use, so each loads whole. LongRoPE ("longrope"/"su") is read
by ModelConfig and built by LlamaModel (pagedllm/layers/long_rope.py); Phi-3's `sliding_window`
applies to every layer (ModelConfig.sliding_windows).
"""

from __future__ import annotations

from pagedllm.models.llama import LlamaForCausalLM, WeightTarget


class Phi3ForCausalLM(LlamaForCausalLM):
    """A Phi-3 causal LM over a paged KV cache (LlamaForCausalLM's contract)."""

    def checkpoint_targets(self) -> dict[str, WeightTarget]:
        """Llama's map with the fused qkv_proj and gate_up_proj tensors in place of the split ones."""
        targets = super().checkpoint_targets()
        for i in range(self.config.num_hidden_layers):
            p = f"model.layers.{i}"
            for split in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
                del targets[f"{p}.{split}.weight"]
            for fused in ("self_attn.qkv_proj", "mlp.gate_up_proj"):
                targets[f"{p}.{fused}.weight"] = WeightTarget(f"{p}.{fused}.weight")
        return targets
