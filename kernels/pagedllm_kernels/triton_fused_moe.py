"""OpenAI Triton fused mixture-of-experts feed-forward: two grouped GEMMs over expert-sorted tokens.

Each token picked K experts (topk_ids, topk_weights). The T * K (token, expert) pairs are sorted
by expert and each expert's run padded to a multiple of BLOCK_M (`align`, torch ops with fixed
shapes: no host sync, so a CUDA graph can hold it):

    sorted_ids  | e0 e0 e0 pad | e1 pad pad pad | e3 e3 e3 e3 | e3 pad pad pad | pad ... |
    block_expert|      0       |       1       |      3      |       3        |  -1 ... |

Then two kernels, one program per (block of BLOCK_M pairs, tile of BLOCK_N columns), every row of
a block multiplying the same expert's weights (the grouped GEMM):

    1. gate-up:  act[pair] = silu(x[token] @ gate[e].T) * (x[token] @ up[e].T)       [T*K, I]
    2. down:     y[pair]   = (act[pair] @ down[e].T) * topk_weights[pair]            [T*K, hidden]

and out = y.view(T, K, hidden).sum(1). Roundings follow transformers' torch ops: each GEMM's
fp32 accumulator is rounded to the dtype, silu runs in fp32 on the rounded gate, the routing
weight multiplies the rounded down projection in fp32 (its own dtype's value), and each product
is rounded once. The pure-torch twin is `pagedllm_kernels.reference.fused_moe_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from pagedllm_kernels.triton_reshape_and_cache import _check_device

__all__ = ["fused_moe", "launch", "align"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _gate_up_kernel(
    x_ptr,  # [T, hidden]
    w13_ptr,  # [E, 2I, hidden]
    act_ptr,  # [T*K, I] out
    sorted_ids_ptr,  # [max_pairs]: pair index t*K + k, num_pairs for padding
    block_expert_ptr,  # [max_blocks]: the expert of each BLOCK_M rows, -1 past the last
    num_pairs,
    hidden,
    inter,
    stride_xt,
    stride_we,
    stride_wn,
    TOP_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    PRECISE_EXP: tl.constexpr,
):
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block)
    if expert < 0:
        return
    pairs = tl.load(sorted_ids_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = pairs < num_pairs
    tokens = (pairs // TOP_K).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < inter
    w_expert = w13_ptr + expert.to(tl.int64) * stride_we
    acc_gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < hidden
        # X: (BLOCK_M, BLOCK_K)
        a = tl.load(x_ptr + tokens[:, None] * stride_xt + offs_k[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        # GATE, UP: (BLOCK_K, BLOCK_N), rows n and I + n of the expert's [2I, hidden]
        w_mask = k_ok[:, None] & col_ok[None, :]
        gate = tl.load(w_expert + offs_n[None, :] * stride_wn + offs_k[:, None], mask=w_mask, other=0.0)
        up = tl.load(w_expert + (inter + offs_n[None, :]) * stride_wn + offs_k[:, None], mask=w_mask, other=0.0)
        acc_gate = tl.dot(a, gate, acc_gate, input_precision=DOT_PRECISION)
        acc_up = tl.dot(a, up, acc_up, input_precision=DOT_PRECISION)
    dtype = act_ptr.dtype.element_ty
    g = acc_gate.to(dtype).to(tl.float32)
    if PRECISE_EXP:
        e = libdevice.exp(-g)
    else:
        e = tl.exp(-g)
    silu = tl.math.div_rn(g, 1.0 + e).to(dtype)
    act = (silu.to(tl.float32) * acc_up.to(dtype).to(tl.float32)).to(dtype)
    tl.store(act_ptr + pairs.to(tl.int64)[:, None] * inter + offs_n[None, :], act,
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _down_kernel(
    act_ptr,  # [T*K, I]
    w2_ptr,  # [E, hidden, I]
    y_ptr,  # [T*K, hidden] out
    weights_ptr,  # [T*K] routing weights (flat topk_weights)
    sorted_ids_ptr,
    block_expert_ptr,
    num_pairs,
    hidden,
    inter,
    stride_we,
    stride_wn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block)
    if expert < 0:
        return
    pairs = tl.load(sorted_ids_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = pairs < num_pairs
    rows = pairs.to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < hidden
    w_expert = w2_ptr + expert.to(tl.int64) * stride_we
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, inter, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < inter
        # ACT: (BLOCK_M, BLOCK_K)
        a = tl.load(act_ptr + rows[:, None] * inter + offs_k[None, :], mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)
        # DOWN: (BLOCK_K, BLOCK_N), rows n of the expert's [hidden, I]
        w = tl.load(w_expert + offs_n[None, :] * stride_wn + offs_k[:, None], mask=k_ok[:, None] & col_ok[None, :],
                    other=0.0)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    dtype = y_ptr.dtype.element_ty
    weight = tl.load(weights_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    y = acc.to(dtype).to(tl.float32) * weight[:, None]
    tl.store(y_ptr + rows[:, None] * hidden + offs_n[None, :], y.to(dtype), mask=row_ok[:, None] & col_ok[None, :])


def align(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorts the T * K (token, expert) pairs by expert, each expert's run padded to block_m.

    Fixed shapes from T, K, E and block_m alone (no value is read back to the host), so the
    result can be captured in a CUDA graph.

    Returns:
        sorted_ids: [T*K + E*(block_m-1) rounded up to block_m] int32 pair indices (t*K + k),
            T*K in the padding.
        block_expert: [len(sorted_ids) // block_m] int32 expert of each block, -1 past the last.
    """
    num_pairs = topk_ids.numel()
    flat = topk_ids.reshape(-1).to(torch.int64)
    device = topk_ids.device
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    padded_start = padded_end - padded
    count_start = torch.cumsum(counts, 0) - counts
    order = torch.sort(flat, stable=True).indices
    experts = flat[order]
    rank = torch.arange(num_pairs, device=device) - count_start[experts]
    max_pairs = triton.cdiv(num_pairs + num_experts * (block_m - 1), block_m) * block_m
    sorted_ids = torch.full((max_pairs,), num_pairs, dtype=torch.int32, device=device)
    sorted_ids[padded_start[experts] + rank] = order.to(torch.int32)
    block_starts = torch.arange(0, max_pairs, block_m, device=device)
    block_expert = torch.searchsorted(padded_end, block_starts, right=True).to(torch.int32)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1)
    return sorted_ids, block_expert


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    """The MoE feed-forward of `pagedllm_kernels.reference.fused_moe_ref`, in two grouped GEMMs.

    Raises:
        ValueError: a shape, dtype, layout or device the kernels cannot take (names the argument).
    """
    if x.dtype not in _DTYPES or x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x: expected [T, hidden] of {_DTYPES} with contiguous rows, got "
                         f"{list(x.shape)} {x.dtype}")
    num_experts, two_inter, hidden = w13.shape
    if w13.dtype != x.dtype or hidden != x.shape[1] or two_inter % 2 or not w13.is_contiguous():
        raise ValueError(f"w13: expected a contiguous [E, 2I, {x.shape[1]}] {x.dtype}, got "
                         f"{list(w13.shape)} {w13.dtype}")
    if w2.shape != (num_experts, hidden, two_inter // 2) or w2.dtype != x.dtype or not w2.is_contiguous():
        raise ValueError(f"w2: expected a contiguous [{num_experts}, {hidden}, {two_inter // 2}] {x.dtype}, "
                         f"got {list(w2.shape)} {w2.dtype}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0] or topk_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_ids: expected [{x.shape[0]}, K] int, got {list(topk_ids.shape)} {topk_ids.dtype}")
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(f"topk_weights: expected {list(topk_ids.shape)}, got {list(topk_weights.shape)}")
    _check_device(x=x, w13=w13, w2=w2, topk_weights=topk_weights, topk_ids=topk_ids)
    return launch(x, w13, w2, topk_weights, topk_ids)


def launch(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
           topk_ids: torch.Tensor) -> torch.Tensor:
    """`fused_moe` without the argument checks: the engine's hot path."""
    num_tokens, hidden = x.shape
    top_k = topk_ids.shape[1]
    num_experts, inter = w13.shape[0], w2.shape[2]
    num_pairs = num_tokens * top_k
    if num_tokens == 0:
        return torch.zeros_like(x)
    # Decode batches route few pairs per expert: small blocks waste less padding.
    block_m = 16 if num_pairs <= 2 * num_experts * 16 else 64
    block_n = 64 if x.is_cuda else 32
    block_k = 32 if x.dtype == torch.float32 else 64
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    sorted_ids, block_expert = align(topk_ids, num_experts, block_m)
    act = torch.empty(num_pairs, inter, dtype=x.dtype, device=x.device)
    _gate_up_kernel[(block_expert.shape[0], triton.cdiv(inter, block_n))](
        x, w13, act, sorted_ids, block_expert, num_pairs, hidden, inter, x.stride(0), w13.stride(0),
        w13.stride(1), TOP_K=top_k, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        DOT_PRECISION=precision, PRECISE_EXP=x.is_cuda)
    y = torch.empty(num_pairs, hidden, dtype=x.dtype, device=x.device)
    _down_kernel[(block_expert.shape[0], triton.cdiv(hidden, block_n))](
        act, w2, y, topk_weights.reshape(-1), sorted_ids, block_expert, num_pairs, hidden, inter,
        w2.stride(0), w2.stride(1), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        DOT_PRECISION=precision)
    return y.view(num_tokens, top_k, hidden).sum(dim=1)
