"""OpenAI Triton RMSNorm: one kernel for what torch runs as eight.

`LlamaRMSNorm` in torch is a chain of elementwise kernels (to float32, pow, mean, add, rsqrt, mul,
back to the input dtype, times the weight), each reading and writing the whole activation. In a
decode step of a small model those launches, not the bytes, are the cost. One program here
normalises one row with the same roundings: statistics in float32, the normalised row rounded
to the input dtype, then the weight product computed in float32 and rounded once, as torch's
16-bit multiply does. Only the float32 sum's order differs from torch's mean. The pure-torch twin
is `pagedllm_kernels.reference.rms_norm_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["rms_norm", "launch"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_DIM = 65536  # one row per program, held in registers


@triton.jit
def _rms_norm_kernel(x_ptr, weight_ptr, out_ptr, stride_x, dim, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < dim
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    variance = tl.sum(x * x, axis=0) / dim
    h = (x * tl.rsqrt(variance + eps)).to(out_ptr.dtype.element_ty)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0)
    out = w.to(tl.float32) * h.to(tl.float32)
    tl.store(out_ptr + row * dim + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`weight * normalise(x)` over the last dim; the contract of `reference.rms_norm_ref`.

    Raises:
        ValueError: a dtype, shape or layout the kernel cannot take (names the argument).
    """
    dim = x.shape[-1]
    if x.dtype not in _DTYPES or weight.dtype != x.dtype:
        raise ValueError(f"x: dtype {x.dtype} must match weight's {weight.dtype}, one of {_DTYPES}")
    if weight.shape != (dim,) or not weight.is_contiguous():
        raise ValueError(f"weight: expected a contiguous [{dim}], got {list(weight.shape)}")
    if not 0 < dim <= _MAX_DIM:
        raise ValueError(f"x: last dim {dim} outside (0, {_MAX_DIM}]")
    return launch(x, weight, eps)


def launch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`rms_norm` without the argument checks: the engine's hot path."""
    dim = x.shape[-1]
    rows = x.reshape(-1, dim)  # a view for the layouts the model passes (rows of stride >= dim)
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if rows.shape[0] == 0:
        return out
    block = triton.next_power_of_2(dim)
    _rms_norm_kernel[(rows.shape[0],)](
        rows, weight, out, rows.stride(0), dim, eps, BLOCK=block,
        num_warps=min(max(block // 256, 1), 16),
    )
    return out
