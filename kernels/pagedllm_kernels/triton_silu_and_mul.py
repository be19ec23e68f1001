"""OpenAI Triton SwiGLU activation: `silu(gate) * up` in one kernel (torch runs two).

`LlamaMLP` splits the fused gate|up projection [T, 2I] into halves and computes
`F.silu(gate) * up`: one kernel writes silu(gate) to memory, a second reads it back with up.
Here one program reads a tile of both halves and writes the [T, I] product, rounding as torch
does in 16 bits: silu in float32 (`x / (1 + exp(-x))`, torch's formula), rounded to the dtype,
then the product computed in float32 (exact for two 16-bit values) and rounded once.

On CUDA the exponential is libdevice's `expf` and the division IEEE-rounded (`div_rn`), what
torch's CUDA silu compiles to (CUDA's expf, an IEEE divide). Triton's default `tl.exp` lowers to
ex2.approx of x * log2(e), a few float32 ulps off for larger |x|, and `/` may lower to an
approximate divide; either could flip a 16-bit rounding now and then. The CPU interpreter has no
libdevice and takes numpy's exp (PRECISE_EXP=False). The pure-torch twin is
`pagedllm_kernels.reference.silu_and_mul_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from pagedllm_kernels.triton_reshape_and_cache import _check_device

__all__ = ["silu_and_mul", "launch"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_BLOCK = 1024  # columns of one program: [T, I] runs as a T x cdiv(I, _BLOCK) grid


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, inter, BLOCK: tl.constexpr, PRECISE_EXP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inter + offs, mask=mask, other=0.0)
    if PRECISE_EXP:
        e = libdevice.exp(-gate)
    else:
        e = tl.exp(-gate)
    silu = tl.math.div_rn(gate, 1.0 + e).to(out_ptr.dtype.element_ty)
    out = silu.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * inter + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[..., 2I] (gate | up) -> [..., I] `silu(gate) * up`, contiguous, in gate_up's dtype.

    Raises:
        ValueError: a dtype, shape, layout or device the kernel cannot take (names the argument).
    """
    if gate_up.dtype not in _DTYPES:
        raise ValueError(f"gate_up: dtype {gate_up.dtype} not supported; use one of {_DTYPES}")
    if gate_up.dim() == 0 or gate_up.shape[-1] % 2 or gate_up.shape[-1] == 0:
        raise ValueError(f"gate_up: last dim must be 2 * intermediate_size > 0, got {list(gate_up.shape)}")
    _check_device(gate_up=gate_up)
    return launch(gate_up)


def launch(gate_up: torch.Tensor) -> torch.Tensor:
    """`silu_and_mul` without the argument checks: the engine's hot path."""
    inter = gate_up.shape[-1] // 2
    rows = gate_up.reshape(-1, 2 * inter)  # a view for the layouts the model passes
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    out = torch.empty((*gate_up.shape[:-1], inter), dtype=gate_up.dtype, device=gate_up.device)
    if rows.shape[0] == 0:
        return out
    block = min(_BLOCK, triton.next_power_of_2(inter))
    _silu_and_mul_kernel[(rows.shape[0], triton.cdiv(inter, block))](
        rows, out, rows.stride(0), inter, BLOCK=block, PRECISE_EXP=rows.is_cuda,
        num_warps=max(block // 256, 1),
    )
    return out
