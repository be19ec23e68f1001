"""RMSNorm with Hugging Face's numerics."""

from __future__ import annotations

import torch
from torch import nn

from pagedllm_kernels import REFERENCE_OPS, KernelOps


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim, as in Llama.

    The statistics are computed in float32 and the result is cast back to the input dtype
    before the weight multiply, exactly like `LlamaRMSNorm`, so bf16 runs round the same way
    as transformers does.

    Args:
        dim: Size of the normalized (last) dimension.
        eps: Added to the mean square before the reciprocal square root.
        dtype: Dtype of the weight (the model's dtype).
        ops: whose `rms_norm` and `fused_add_rms_norm` to run (`pagedllm_kernels.select_ops`);
            the reference by default.
    """

    def __init__(self, dim: int, eps: float, dtype: torch.dtype = torch.float32,
                 ops: KernelOps = REFERENCE_OPS) -> None:
        super().__init__()
        self.eps = eps
        self._norm = ops.rms_norm
        self._add_norm = ops.fused_add_rms_norm
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Normalizes `x` ([..., dim]) and scales it by the weight.

        With `residual`, first adds x to it (HF's residual add, rounded to the dtype) and returns
        (normalised sum, sum): vLLM's fused add + norm, one kernel on the Triton path.
        """
        if residual is None:
            return self._norm(x, self.weight, self.eps)
        return self._add_norm(x, residual, self.weight, self.eps)
