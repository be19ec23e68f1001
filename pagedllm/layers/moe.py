"""Mixture-of-experts feed-forward: a linear router, top-k routing, stacked SwiGLU experts.

The router and the top-k run as torch ops on every device (transformers' ops: a float32
softmax, `topk`, optional renormalisation); the experts run through `KernelOps.fused_moe`: the
torch reference on CPU, the grouped-GEMM Triton kernels on CUDA. The experts' weights are stacked
([E, 2I, hidden] gate|up, [E, hidden, I] down) so one kernel launch serves them all; the loader
fills them from the checkpoint's per-expert tensors (`WeightTarget.index`).
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm_kernels import KernelOps
from pagedllm.layers.linear import Linear
from pagedllm.models.family_config import MoeOptions


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, E] router logits -> ([T, K] float32 weights, [T, K] int64 expert ids), best first.

    softmax in float32, the top k probabilities, divided by their sum when `renormalize`.
    """
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


class SparseMoeBlock(nn.Module):
    """`gate` (the router) and the stacked experts `w13`, `w2` of one decoder layer.

    Args:
        hidden_size: The model's hidden size.
        moe: The number of experts, top-k, expert size and normalisation.
        dtype: Dtype of the weights and activations.
        ops: whose `fused_moe` runs the experts.
        weights_in_dtype: round the routing weights to `dtype` before they scale the experts'
            outputs (Qwen3-MoE); False keeps them float32 (Mixtral). Same result in float32.
    """

    def __init__(self, hidden_size: int, moe: MoeOptions, dtype: torch.dtype, ops: KernelOps,
                 weights_in_dtype: bool) -> None:
        super().__init__()
        self.top_k = moe.top_k
        self.renormalize = moe.renormalize
        self.weights_in_dtype = weights_in_dtype
        self.gate = Linear(hidden_size, moe.num_experts, False, dtype)
        inter = moe.intermediate_size
        self.w13 = nn.Parameter(torch.empty(moe.num_experts, 2 * inter, hidden_size, dtype=dtype),
                                requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(moe.num_experts, hidden_size, inter, dtype=dtype), requires_grad=False)
        self._fused_moe = ops.fused_moe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, hidden] -> [T, hidden]."""
        weights, ids = route(self.gate(x), self.top_k, self.renormalize)
        if self.weights_in_dtype:
            weights = weights.to(x.dtype)
        return self._fused_moe(x, self.w13, self.w2, weights, ids)
