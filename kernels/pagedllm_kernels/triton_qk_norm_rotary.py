"""OpenAI Triton q/k RMSNorm + rotary embedding in one kernel (Qwen3's attention).

Qwen3 normalises every head of q and k (`q_norm`, `k_norm`: RMSNorm over head_dim) before the
rotary embedding. Run apart, that is five kernels a layer: q and k are strided views of the fused
qkv projection, so each norm first copies its input to rows (`reshape`), then normalises, and
the rotary kernel reads both again. Twenty-eight layers make 140 launches a decode step, which at
small batches cost more than their bytes. One program here loads one token's heads of q and k,
normalises each head and rotates it in registers, and writes q and k once.

The same roundings as `triton_rms_norm` followed by `triton_rotary` (both described there): float32
statistics, the normalised head rounded to the dtype, the weight product rounded, then the rotary
products and sums each rounded as torch rounds them in 16 bits. Only the float32 sum of squares
runs in another order (two half-heads, then their sum), as it already differs from torch's mean.
The pure-torch twin is `rotary_ref(rms_norm_ref(q), rms_norm_ref(k))`.

`qk_norm_rotary_into_cache` also does the step's KV-cache write, as `rotary_into_cache` does
(triton_rotary.py): k goes straight to its cache slot, v beside it. That is what the model runs.

    q: [T, Hq, D], k: [T, Hk, D] (strided views of a fused qkv are fine: head_dim contiguous)
    out = rotary(weight * normalise(head)), for every head of q (q_weight) and of k (k_weight)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm_kernels.triton_reshape_and_cache import _check_device
from pagedllm_kernels.triton_rotary import (check_cache_args, check_qk_tables, k_row_and_value,
                                            launch_heads, token_tables)

__all__ = ["qk_norm_rotary", "qk_norm_rotary_into_cache", "launch", "launch_into_cache"]


@triton.jit
def _norm_rotate_heads(x_ptr, w_ptr, out_ptr, stride_h, num_heads, cos, sin, half, eps,
                       BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Normalises and rotates num_heads heads at x_ptr (head stride stride_h) into contiguous
    heads at out_ptr."""
    dtype = out_ptr.dtype.element_ty
    offs_h = tl.arange(0, BLOCK_H)[:, None]
    offs_d = tl.arange(0, BLOCK_D)[None, :]
    in_half = offs_d < half
    mask = (offs_h < num_heads) & in_half
    src = x_ptr + offs_h * stride_h + offs_d
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
    variance = (tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * half)
    scale = tl.rsqrt(variance + eps)[:, None]
    w1 = tl.load(w_ptr + offs_d, mask=in_half, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + half + offs_d, mask=in_half, other=0.0).to(tl.float32)
    n1 = (w1 * (x1 * scale).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    n2 = (w2 * (x2 * scale).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    o1 = (n1 * cos).to(dtype).to(tl.float32) - (n2 * sin).to(dtype).to(tl.float32)
    o2 = (n2 * cos).to(dtype).to(tl.float32) + (n1 * sin).to(dtype).to(tl.float32)
    dst = out_ptr + offs_h * (2 * half) + offs_d
    tl.store(dst, o1.to(dtype), mask=mask)
    tl.store(dst + half, o2.to(dtype), mask=mask)


@triton.jit
def _qk_norm_rotary_kernel(q_ptr, k_ptr, v_ptr, positions_ptr, cos_ptr, sin_ptr, q_out_ptr,
                           k_out_ptr, v_out_ptr, slot_ptr, stride_qt, stride_qh, stride_kt,
                           stride_kh, stride_vt, stride_vh, num_q_heads, num_k_heads, half,
                           q_w_ptr, k_w_ptr, eps, INTO_CACHE: tl.constexpr,
                           BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr):
    # (the rotary kernel's arguments, then the norms': triton_rotary.launch_heads launches both)
    token = tl.program_id(0).to(tl.int64)
    cos, sin = token_tables(positions_ptr, cos_ptr, sin_ptr, token, half, q_out_ptr.dtype.element_ty,
                            BLOCK_D)
    _norm_rotate_heads(q_ptr + token * stride_qt, q_w_ptr, q_out_ptr + token * num_q_heads * 2 * half,
                       stride_qh, num_q_heads, cos, sin, half, eps, BLOCK_HQ, BLOCK_D)
    k_row = k_row_and_value(token, slot_ptr, v_ptr, v_out_ptr, stride_vt, stride_vh, num_k_heads,
                            half, INTO_CACHE, BLOCK_HK, BLOCK_D)
    _norm_rotate_heads(k_ptr + token * stride_kt, k_w_ptr, k_out_ptr + k_row * num_k_heads * 2 * half,
                       stride_kh, tl.where(k_row >= 0, num_k_heads, 0), cos, sin, half, eps, BLOCK_HK, BLOCK_D)


def qk_norm_rotary(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                   eps: float, positions: torch.Tensor, cos_cache: torch.Tensor,
                   sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, k), each head RMS-normalised by its weight and rotated by its token's position, as new
    contiguous tensors; q and k unchanged.

    Args:
        q: [T, Hq, D], k: [T, Hk, D], one dtype, head_dim contiguous (stride 1), D even.
        q_weight, k_weight: [D] contiguous, q's dtype.
        eps: added to the mean square.
        positions: [T] int32/int64 position of each token, each < the tables' length.
        cos_cache, sin_cache: [max_position, D // 2] float32 contiguous (`RotaryEmbedding`'s).

    Raises:
        ValueError: a shape, dtype, layout or device the kernel cannot take (names the argument).
    """
    _check(q, k, q_weight, k_weight, positions, cos_cache, sin_cache)
    return launch(q, k, q_weight, k_weight, eps, positions, cos_cache, sin_cache)


def _check(q, k, q_weight, k_weight, positions, cos_cache, sin_cache) -> None:
    check_qk_tables(q, k, positions, cos_cache, sin_cache)
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w.shape != (q.shape[2],) or w.dtype != q.dtype or not w.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous [{q.shape[2]}] {q.dtype}, "
                             f"got {list(w.shape)} {w.dtype}")
    _check_device(q=q, k=k, q_weight=q_weight, k_weight=k_weight, positions=positions,
                  cos_cache=cos_cache, sin_cache=sin_cache)


def qk_norm_rotary_into_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float,
                              positions: torch.Tensor, cos_cache: torch.Tensor,
                              sin_cache: torch.Tensor, key_cache: torch.Tensor,
                              value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> torch.Tensor:
    """q normalised and rotated (a new contiguous tensor), with k normalised and rotated and v
    written into their tokens' cache slots: `qk_norm_rotary` followed by `reshape_and_cache`, in
    one launch. Slots < 0 are skipped.

    Raises:
        ValueError: a shape, dtype, layout or device the kernel cannot take (names the argument).
    """
    _check(q, k, q_weight, k_weight, positions, cos_cache, sin_cache)
    check_cache_args(k, v, key_cache, value_cache, slot_mapping)
    return launch_into_cache(q, k, v, q_weight, k_weight, eps, positions, cos_cache, sin_cache,
                             key_cache, value_cache, slot_mapping)


def launch(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
           eps: float, positions: torch.Tensor, cos_cache: torch.Tensor,
           sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`qk_norm_rotary` without the argument checks."""
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    q_out = launch_heads(_qk_norm_rotary_kernel, q, k, None, positions, cos_cache, sin_cache, k_out,
                         None, None, q_weight, k_weight, eps)
    return q_out, k_out


def launch_into_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor,
                      k_weight: torch.Tensor, eps: float, positions: torch.Tensor,
                      cos_cache: torch.Tensor, sin_cache: torch.Tensor, key_cache: torch.Tensor,
                      value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> torch.Tensor:
    """`qk_norm_rotary_into_cache` without the argument checks: the engine's hot path."""
    return launch_heads(_qk_norm_rotary_kernel, q, k, v, positions, cos_cache, sin_cache,
                        key_cache, value_cache, slot_mapping, q_weight, k_weight, eps)
