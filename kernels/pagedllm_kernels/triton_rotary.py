"""OpenAI Triton rotary embedding of q and k: one kernel for what torch runs as fourteen.

`apply_rotary` (HF's `x * cos + rotate_half(x) * sin`) is seven torch kernels per tensor: four
products, a difference, a sum and the concatenation, each over the whole of q or k. One program
here rotates every head of one token's q and k, reading its cos/sin straight from the float32
tables at its position, so the step needs no gathered (cos, sin) either.

Bit-identical to `pagedllm_kernels.reference.rotary_ref` in every dtype: each op rounds as torch
rounds it in 16 bits. cos/sin are rounded to the activation dtype; each product is computed in
float32 (exact for two 16-bit values) and rounded; the difference or sum of two rounded
products is computed in float32 and rounded. In float32 the roundings are no-ops, and the
launch turns off FMA contraction (`enable_fp_fusion=False`) so `x1*cos - x2*sin` keeps its two
product roundings as torch does.

    q: [T, Hq, D], k: [T, Hk, D] (strided views of a fused qkv are fine: head_dim contiguous)
    out[..., :D/2] = x1*cos - x2*sin,   out[..., D/2:] = x2*cos + x1*sin,   x1|x2 = the halves

Any even D: each half spans BLOCK_D lanes (D/2 rounded up to a power of 2), masked past D/2, so
Phi-3's 96 (halves of 48) needs nothing more. Writing the cache, D takes the cache's rule too
(`triton_reshape_and_cache.check_head_dim`).

`rotary_into_cache` also does the step's KV-cache write (`triton_reshape_and_cache`): the rotated
k goes straight to its token's cache slot and v is copied beside it, so the layer saves a launch
and a round trip of k through memory. Attention reads the new keys from the cache anyway.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm_kernels.triton_reshape_and_cache import _check_device
from pagedllm_kernels.triton_reshape_and_cache import check_args as check_cache_args

__all__ = ["rotary", "rotary_into_cache", "launch", "launch_into_cache", "launch_heads", "check_qk_tables"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _rotate_heads(x_ptr, out_ptr, stride_h, num_heads, cos, sin, half,
                  BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rotates num_heads heads at x_ptr (head stride stride_h) into contiguous heads at out_ptr."""
    dtype = out_ptr.dtype.element_ty
    offs_h = tl.arange(0, BLOCK_H)[:, None]
    offs_d = tl.arange(0, BLOCK_D)[None, :]
    mask = (offs_h < num_heads) & (offs_d < half)
    src = x_ptr + offs_h * stride_h + offs_d
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
    o1 = (x1 * cos).to(dtype).to(tl.float32) - (x2 * sin).to(dtype).to(tl.float32)
    o2 = (x2 * cos).to(dtype).to(tl.float32) + (x1 * sin).to(dtype).to(tl.float32)
    dst = out_ptr + offs_h * (2 * half) + offs_d
    tl.store(dst, o1.to(dtype), mask=mask)
    tl.store(dst + half, o2.to(dtype), mask=mask)


@triton.jit
def _copy_heads(x_ptr, out_ptr, stride_h, num_heads, head_dim,
                BLOCK_H: tl.constexpr, BLOCK_D2: tl.constexpr):
    """Copies num_heads heads at x_ptr (head stride stride_h) to contiguous heads at out_ptr."""
    offs_h = tl.arange(0, BLOCK_H)[:, None]
    offs_d = tl.arange(0, BLOCK_D2)[None, :]
    mask = (offs_h < num_heads) & (offs_d < head_dim)
    x = tl.load(x_ptr + offs_h * stride_h + offs_d, mask=mask)
    tl.store(out_ptr + offs_h * head_dim + offs_d, x, mask=mask)


@triton.jit
def token_tables(positions_ptr, cos_ptr, sin_ptr, token, half, dtype, BLOCK_D: tl.constexpr):
    """This token's cos and sin ([1, BLOCK_D] float32), rounded to the activation dtype as
    `rope_ref`'s .to(dtype) does."""
    pos = tl.load(positions_ptr + token).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)[None, :]
    table_mask = offs_d < half
    cos = tl.load(cos_ptr + pos * half + offs_d, mask=table_mask, other=0.0).to(dtype).to(tl.float32)
    sin = tl.load(sin_ptr + pos * half + offs_d, mask=table_mask, other=0.0).to(dtype).to(tl.float32)
    return cos, sin


@triton.jit
def k_row_and_value(token, slot_ptr, v_ptr, v_out_ptr, stride_vt, stride_vh, num_k_heads, half,
                    INTO_CACHE: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Where this token's rotated k goes: its own row of k_out, or (INTO_CACHE) its cache slot,
    whose value row this also writes. A slot < 0 (padding) is returned as it is, and the callers
    write nothing for it (zero heads)."""
    if INTO_CACHE:
        row = tl.load(slot_ptr + token).to(tl.int64)
        _copy_heads(v_ptr + token * stride_vt, v_out_ptr + row * num_k_heads * 2 * half, stride_vh,
                    tl.where(row >= 0, num_k_heads, 0), 2 * half, BLOCK_HK, 2 * BLOCK_D)
    else:
        row = token
    return row


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, v_ptr, positions_ptr, cos_ptr, sin_ptr, q_out_ptr, k_out_ptr,
                   v_out_ptr, slot_ptr, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt,
                   stride_vh, num_q_heads, num_k_heads, half, INTO_CACHE: tl.constexpr,
                   BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    cos, sin = token_tables(positions_ptr, cos_ptr, sin_ptr, token, half, q_out_ptr.dtype.element_ty,
                            BLOCK_D)
    _rotate_heads(q_ptr + token * stride_qt, q_out_ptr + token * num_q_heads * 2 * half, stride_qh,
                  num_q_heads, cos, sin, half, BLOCK_HQ, BLOCK_D)
    k_row = k_row_and_value(token, slot_ptr, v_ptr, v_out_ptr, stride_vt, stride_vh, num_k_heads,
                            half, INTO_CACHE, BLOCK_HK, BLOCK_D)
    _rotate_heads(k_ptr + token * stride_kt, k_out_ptr + k_row * num_k_heads * 2 * half, stride_kh,
                  tl.where(k_row >= 0, num_k_heads, 0), cos, sin, half, BLOCK_HK, BLOCK_D)


def check_qk_tables(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                    cos_cache: torch.Tensor, sin_cache: torch.Tensor) -> None:
    """The checks of `rotary`'s arguments (shared by the q/k norm + rotary kernel): ValueError
    naming the argument at fault. The device check is the caller's (it has more tensors)."""
    if q.dim() != 3 or q.dtype not in _DTYPES or q.shape[2] % 2 or q.stride(2) != 1:
        raise ValueError(f"q: expected [T, heads, even head_dim] with unit last stride in one of {_DTYPES}, "
                         f"got {list(q.shape)} {q.dtype} strides {q.stride()}")
    if k.dim() != 3 or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2] or k.dtype != q.dtype or k.stride(2) != 1:
        raise ValueError(f"k: expected [{q.shape[0]}, heads, {q.shape[2]}] {q.dtype} with unit last stride, "
                         f"got {list(k.shape)} {k.dtype} strides {k.stride()}")
    if positions.shape != (q.shape[0],) or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"positions: expected [{q.shape[0]}] int64, got {list(positions.shape)} {positions.dtype}")
    for name, t in (("cos_cache", cos_cache), ("sin_cache", sin_cache)):
        if t.dim() != 2 or t.shape[1] != q.shape[2] // 2 or t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous [max_position, {q.shape[2] // 2}] float32, "
                             f"got {list(t.shape)} {t.dtype}")
    if sin_cache.shape != cos_cache.shape:
        raise ValueError(f"sin_cache: shape {list(sin_cache.shape)} differs from cos_cache's {list(cos_cache.shape)}")


def rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor,
           sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, k) rotated by their tokens' positions, as new contiguous tensors; q and k unchanged.

    Args:
        q: [T, Hq, D], k: [T, Hk, D], one dtype, head_dim contiguous (stride 1), D even.
        positions: [T] int32/int64 position of each token, each < the tables' length.
        cos_cache, sin_cache: [max_position, D // 2] float32 contiguous (`RotaryEmbedding`'s).

    Raises:
        ValueError: a shape, dtype, layout or device the kernel cannot take (names the argument).
    """
    check_qk_tables(q, k, positions, cos_cache, sin_cache)
    _check_device(q=q, k=k, positions=positions, cos_cache=cos_cache, sin_cache=sin_cache)
    return launch(q, k, positions, cos_cache, sin_cache)


def rotary_into_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                      cos_cache: torch.Tensor, sin_cache: torch.Tensor, key_cache: torch.Tensor,
                      value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> torch.Tensor:
    """q rotated (a new contiguous tensor), with k rotated and v written into their tokens' cache
    slots: `rotary` followed by `reshape_and_cache`, in one launch. Slots < 0 are skipped.

    Raises:
        ValueError: a shape, dtype, layout or device the kernel cannot take (names the argument).
    """
    check_qk_tables(q, k, positions, cos_cache, sin_cache)
    check_cache_args(k, v, key_cache, value_cache, slot_mapping)
    _check_device(q=q, k=k, v=v, positions=positions, cos_cache=cos_cache, sin_cache=sin_cache,
                  key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping)
    return launch_into_cache(q, k, v, positions, cos_cache, sin_cache, key_cache, value_cache,
                             slot_mapping)


def launch(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor,
           sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`rotary` without the argument checks: the engine's hot path."""
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    return launch_heads(_rotary_kernel, q, k, None, positions, cos_cache, sin_cache, k_out, None,
                        None), k_out


def launch_into_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                      cos_cache: torch.Tensor, sin_cache: torch.Tensor, key_cache: torch.Tensor,
                      value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> torch.Tensor:
    """`rotary_into_cache` without the argument checks: the engine's hot path."""
    return launch_heads(_rotary_kernel, q, k, v, positions, cos_cache, sin_cache, key_cache,
                        value_cache, slot_mapping)


def launch_heads(kernel, q, k, v, positions, cos_cache, sin_cache, k_out, v_out, slot_mapping,
                 *extra) -> torch.Tensor:
    """Launches `kernel` (this rotary's, or the q/k norm + rotary's, which takes the norms'
    weights and eps as `extra`) over every token: q into a new tensor, returned, and k into k_out
    (its rows, or with v_out its cache slots)."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_k_heads = k.shape[1]
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return q_out
    into_cache = v_out is not None
    v, v_out, slot_mapping = (v, v_out, slot_mapping) if into_cache else (k, k_out, positions)
    block_hq, block_hk = triton.next_power_of_2(num_q_heads), triton.next_power_of_2(num_k_heads)
    block_d = triton.next_power_of_2(head_dim // 2)
    kernel[(num_tokens,)](
        q, k, v, positions, cos_cache, sin_cache, q_out, k_out, v_out, slot_mapping,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        num_q_heads, num_k_heads, head_dim // 2, *extra, INTO_CACHE=into_cache,
        BLOCK_HQ=block_hq, BLOCK_HK=block_hk, BLOCK_D=block_d,
        num_warps=min(max(block_hq * block_d // 512, 1), 8), enable_fp_fusion=False,
    )
    return q_out
