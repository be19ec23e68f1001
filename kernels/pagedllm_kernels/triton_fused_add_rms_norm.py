"""OpenAI Triton residual add + RMSNorm: one kernel for what torch runs as nine (vLLM's fused_add_rms_norm).

Each decoder layer adds a sublayer's output to the residual stream and normalises the sum for
the next sublayer. In torch that is the add, then RMSNorm's eight kernels (or the one of
`triton_rms_norm`). One program here does both for one row, with Hugging Face's roundings:
`residual + x` rounded to the activation dtype is the new residual (bit-identical to torch's
add), and that rounded sum is normalised exactly as `triton_rms_norm` does it (the same lines):
float32 statistics, the row rounded to the dtype, the weight product rounded once. Only the
float32 sum's order differs from torch's mean. The pure-torch twin is
`pagedllm_kernels.reference.fused_add_rms_norm_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm_kernels.triton_reshape_and_cache import _check_device

__all__ = ["fused_add_rms_norm", "launch"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_DIM = 65536  # one row per program, held in registers


@triton.jit
def _fused_add_rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, new_residual_ptr,
                               stride_x, stride_r, dim, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < dim
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(residual_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
    h = (r + x).to(out_ptr.dtype.element_ty)  # torch's 16-bit add: in float32, rounded once
    tl.store(new_residual_ptr + row * dim + offs, h, mask=mask)
    # From here on, _rms_norm_kernel of triton_rms_norm.py on the row h.
    h = h.to(tl.float32)
    variance = tl.sum(h * h, axis=0) / dim
    n = (h * tl.rsqrt(variance + eps)).to(out_ptr.dtype.element_ty)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0)
    out = w.to(tl.float32) * n.to(tl.float32)
    tl.store(out_ptr + row * dim + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(`rms_norm(residual + x)`, `residual + x`) over the last dim; x and residual unchanged.

    Raises:
        ValueError: a dtype, shape, layout or device the kernel cannot take (names the argument).
    """
    dim = x.shape[-1]
    if x.dtype not in _DTYPES or weight.dtype != x.dtype:
        raise ValueError(f"x: dtype {x.dtype} must match weight's {weight.dtype}, one of {_DTYPES}")
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(f"residual: expected {list(x.shape)} {x.dtype}, got {list(residual.shape)} {residual.dtype}")
    if weight.shape != (dim,) or not weight.is_contiguous():
        raise ValueError(f"weight: expected a contiguous [{dim}], got {list(weight.shape)}")
    if not 0 < dim <= _MAX_DIM:
        raise ValueError(f"x: last dim {dim} outside (0, {_MAX_DIM}]")
    _check_device(x=x, residual=residual, weight=weight)
    return launch(x, residual, weight, eps)


def launch(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`fused_add_rms_norm` without the argument checks: the engine's hot path."""
    dim = x.shape[-1]
    rows_x, rows_r = _rows(x, dim), _rows(residual, dim)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    new_residual = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if rows_x.shape[0] == 0:
        return out, new_residual
    block = triton.next_power_of_2(dim)
    _fused_add_rms_norm_kernel[(rows_x.shape[0],)](
        rows_x, rows_r, weight, out, new_residual, rows_x.stride(0), rows_r.stride(0), dim, eps,
        BLOCK=block, num_warps=min(max(block // 256, 1), 16),
    )
    return out, new_residual


def _rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[rows, dim] with unit stride along dim: a view where the layout allows, else a copy."""
    rows = t.reshape(-1, dim)
    return rows if rows.stride(1) == 1 else rows.contiguous()
