"""The Llama decoder with mixture-of-experts feed-forwards (Qwen3-MoE, Mixtral).

Attention, norms and residuals are Llama's (LlamaForCausalLM; Qwen3-MoE's q/k norms and
sliding windows come from ModelConfig); the layers that ModelConfig.moe marks sparse get a
SparseMoeBlock instead of the SwiGLU MLP. The families differ in their checkpoint names, which
each subclass gives (qwen3_moe.py, mixtral.py): the loader copies every expert's gate, up and
down tensors into the stacked parameters.
"""

from __future__ import annotations

import torch

from pagedllm_kernels import KernelOps, select_ops
from pagedllm.layers.moe import SparseMoeBlock
from pagedllm.models.config import ModelConfig
from pagedllm.models.llama import LlamaForCausalLM, WeightTarget


class MoeLlamaForCausalLM(LlamaForCausalLM):
    """A Llama-layout causal LM whose sparse layers route each token to its top-k experts.

    Subclasses set the checkpoint names below and `WEIGHTS_IN_DTYPE` (SparseMoeBlock's
    `weights_in_dtype`).
    """

    MOE_PREFIX = "mlp"  # checkpoint module of a layer's MoE block ("block_sparse_moe": Mixtral)
    EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")  # an expert's gate, up and down tensors
    WEIGHTS_IN_DTYPE = True

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32,
                 ops: KernelOps | None = None) -> None:
        if config.moe is None:
            raise ValueError(f"config: {config.architecture} has no mixture-of-experts options")
        ops = ops or select_ops(torch.get_default_device(), dtype)

        def mlp_factory(layer: int) -> SparseMoeBlock | None:
            if not config.moe.sparse_layers[layer]:
                return None  # a dense SwiGLU layer (Qwen3-MoE's mlp_only_layers)
            return SparseMoeBlock(config.hidden_size, config.moe, dtype, ops, self.WEIGHTS_IN_DTYPE)

        super().__init__(config, dtype, ops, mlp_factory)

    def checkpoint_targets(self) -> dict[str, WeightTarget]:
        """Llama's map, each sparse layer's MLP tensors replaced by its router and experts."""
        targets = super().checkpoint_targets()
        moe = self.config.moe
        inter = moe.intermediate_size
        gate, up, down = self.EXPERT_NAMES
        for i, sparse in enumerate(moe.sparse_layers):
            if not sparse:
                continue
            p, ckpt = f"model.layers.{i}", f"model.layers.{i}.{self.MOE_PREFIX}"
            for name in ("gate_proj", "up_proj", "down_proj"):
                del targets[f"{p}.mlp.{name}.weight"]
            targets[f"{ckpt}.gate.weight"] = WeightTarget(f"{p}.mlp.gate.weight")
            for e in range(moe.num_experts):
                expert = f"{ckpt}.experts.{e}"
                targets[f"{expert}.{gate}.weight"] = WeightTarget(f"{p}.mlp.w13", 0, inter, index=e)
                targets[f"{expert}.{up}.weight"] = WeightTarget(f"{p}.mlp.w13", inter, 2 * inter, index=e)
                targets[f"{expert}.{down}.weight"] = WeightTarget(f"{p}.mlp.w2", index=e)
        return targets
