"""OpenAI Triton kernel that writes a step's keys/values into the paged KV cache.

One program per new token copies its [num_kv_heads, head_dim] key and value rows into the
token's flat cache slot; a slot < 0 (padding) is skipped. The pure-torch twin is
`pagedllm_kernels.reference.reshape_and_cache_ref`.

    key_cache / value_cache: [num_blocks, block_size, num_kv_heads, head_dim], contiguous
    flat slot s  ->  element offset s * num_kv_heads * head_dim

Head sizes (`check_head_dim`, the rule of every kernel that reads or writes the cache): even, in
[16, 256]. Triton tiles are powers of 2, so a kernel spans HEAD_DIM_PADDED (the next one) lanes
and masks the lanes past head_dim (`head_dim_mask`): they load 0, which leaves dot products and
sums unchanged, and store nothing. Nothing is copied or padded on the host.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["reshape_and_cache", "launch", "check_head_dim"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def head_dim_mask(offs_d, HEAD_DIM: tl.constexpr, HEAD_DIM_PADDED: tl.constexpr):
    """offs_d < HEAD_DIM over the padded lanes. Without padding it is a constant true, so the
    compiler drops it from the loads and stores: powers of 2 run the unmasked code they ran before."""
    if HEAD_DIM == HEAD_DIM_PADDED:
        return tl.full([HEAD_DIM_PADDED], 1, tl.int1)
    else:
        return offs_d < HEAD_DIM


@triton.jit
def _reshape_and_cache_kernel(
    key_ptr,
    value_ptr,
    key_cache_ptr,
    value_cache_ptr,
    slot_mapping_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    num_kv_heads,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PADDED: tl.constexpr,  # HEAD_DIM rounded up to a power of 2
    BLOCK_H: tl.constexpr,  # num_kv_heads rounded up to a power of 2
):
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:  # padding token: nothing to write
        return
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HEAD_DIM_PADDED)
    mask = (offs_h < num_kv_heads)[:, None] & head_dim_mask(offs_d, HEAD_DIM, HEAD_DIM_PADDED)[None, :]
    # K, V rows of this token: (BLOCK_H, HEAD_DIM_PADDED)
    k = tl.load(key_ptr + token * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
    v = tl.load(value_ptr + token * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    dst = slot * num_kv_heads * HEAD_DIM + offs_h[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(key_cache_ptr + dst, k, mask=mask)
    tl.store(value_cache_ptr + dst, v, mask=mask)


def reshape_and_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                      slot_mapping: torch.Tensor) -> None:
    """Writes key/value [T, num_kv_heads, head_dim] into their cache slots, in place.

    The contract of `reference.reshape_and_cache_ref`; slots < 0 are skipped. key/value may
    be strided views (e.g. slices of a fused QKV output) as long as head_dim is contiguous.

    Raises:
        ValueError: a shape, dtype, stride or device the kernel cannot take (names the argument).
    """
    check_args(key, value, key_cache, value_cache, slot_mapping)
    launch(key, value, key_cache, value_cache, slot_mapping)


def check_args(key, value, key_cache, value_cache, slot_mapping) -> None:
    """Raises ValueError naming the first argument the kernel cannot take."""
    if key_cache.dim() != 4 or not key_cache.is_contiguous():
        raise ValueError(f"key_cache: expected a contiguous [num_blocks, block_size, num_kv_heads, head_dim], "
                         f"got {list(key_cache.shape)}")
    if value_cache.shape != key_cache.shape or value_cache.dtype != key_cache.dtype or not value_cache.is_contiguous():
        raise ValueError("value_cache: must be contiguous with key_cache's shape and dtype")
    if key_cache.dtype not in _DTYPES:
        raise ValueError(f"key_cache: dtype {key_cache.dtype} not supported; use one of {_DTYPES}")
    num_kv_heads, head_dim = key_cache.shape[2:]
    check_head_dim(head_dim, "key_cache")
    for name, t in (("key", key), ("value", value)):
        if t.dim() != 3 or t.shape[1:] != key_cache.shape[2:] or t.dtype != key_cache.dtype:
            raise ValueError(f"{name}: expected [T, {num_kv_heads}, {head_dim}] {key_cache.dtype}, "
                             f"got {list(t.shape)} {t.dtype}")
        if t.stride(2) != 1:
            raise ValueError(f"{name}: the head_dim axis must be contiguous (stride 1), got strides {t.stride()}")
    if slot_mapping.shape != (key.shape[0],) or slot_mapping.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"slot_mapping: expected [{key.shape[0]}] int64, got {list(slot_mapping.shape)} "
                         f"{slot_mapping.dtype}")
    _check_device(key=key, value=value, key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping)


def launch(key, value, key_cache, value_cache, slot_mapping) -> None:
    """`reshape_and_cache` without the argument checks: the engine's hot path."""
    if key.shape[0] == 0:
        return
    num_kv_heads, head_dim = key_cache.shape[2:]
    _reshape_and_cache_kernel[(key.shape[0],)](
        key, value, key_cache, value_cache, slot_mapping,
        stride_kt=key.stride(0), stride_kh=key.stride(1),
        stride_vt=value.stride(0), stride_vh=value.stride(1),
        num_kv_heads=num_kv_heads,
        HEAD_DIM=head_dim,
        HEAD_DIM_PADDED=triton.next_power_of_2(head_dim),
        BLOCK_H=triton.next_power_of_2(num_kv_heads),
    )


def check_head_dim(head_dim: int, name: str) -> None:
    """Raises ValueError, naming `name`, for a head size the kernels do not take.

    Even, for the rotary's halves; at least 16, tl.dot's smallest tile; at most 256, as a padded
    row of the attention's accumulator must fit in registers.
    """
    if head_dim % 2 or not 16 <= head_dim <= 256:
        raise ValueError(f"{name}: head_dim {head_dim} not supported by the Triton kernels "
                         f"(they take even sizes in [16, 256])")


def _check_device(**tensors: torch.Tensor) -> None:
    """All tensors on one CUDA device (or on CPU under TRITON_INTERPRET=1, for the tests)."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    first = next(iter(tensors.values())).device
    for name, t in tensors.items():
        if t.device != first:
            raise ValueError(f"{name}: on {t.device}, but the other tensors are on {first}")
        if not t.is_cuda and not interpret:
            raise ValueError(f"{name}: the Triton kernels need CUDA tensors (CPU only with TRITON_INTERPRET=1)")
