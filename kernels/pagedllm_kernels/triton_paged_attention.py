"""OpenAI Triton varlen paged attention: prefill, chunked prefill and decode in one kernel.

Sequence i's queries are the last n_i = qsl[i+1] - qsl[i] positions of its seq_lens[i]
tokens: causal among themselves, and they see every cached token before them. The
pure-torch twin is `pagedllm_kernels.reference.paged_attention_ref`.

Grid: (query tiles, kv heads, kv splits). A program takes BLOCK_Q query positions of one
sequence times the GROUP query heads that share one kv head (GQA packing):

    row m of the tile  ->  query position q_tile * BLOCK_Q + m // GROUP,
                           query head     kv_head * GROUP + m % GROUP
    BLOCK_M = BLOCK_Q * GROUP (>= 16 so tl.dot has a full tile even for decode)

It walks the sequence's keys BLOCK_N at a time, gathering each key's cache row through the
block table, with an online softmax (fp32, exp2 with the log2(e)-scaled scale):

    keys     | 0 ............................ first_pos | ... last_pos |
    tiles    | full tiles: no mask              | causal-masked tiles   |

Query tiles of sequence i are numbered from qsl[i] // BLOCK_Q + i, so the grid size
T // BLOCK_Q + S is known without reading the lengths back from the GPU; programs past
their sequence's last tile exit at once.

Sliding window (`window`): the query at position p sees keys p - window + 1 .. p. A program
starts at the key tile holding the first key its first row can see: key tiles wholly before the
window are skipped, and the masked loads of the edge tile do not read the keys before it either.
The tiles that hold the window's lower edge for some row take the masked path:

    keys     | not read | window-masked | full tiles: no mask | causal-masked tiles |

Soft-capping (`softcap`, Gemma 2): each score becomes softcap * tanh(score / softcap) before
the mask, as transformers computes it.

Split-KV (flash-decoding): with NUM_SPLITS > 1, program (.., .., s) takes the s-th slice of
the key tiles and writes an unnormalised partial (max, sum, acc); `_reduce_splits_kernel`
combines them. The launcher picks it for pure-decode batches too small to fill the GPU.

Head sizes other than powers of 2 (Phi-3's 96): the tiles span HEAD_DIM_PADDED lanes and the
lanes past HEAD_DIM load 0 (`head_dim_mask`), so q.k and p.v are those of the real lanes; the
padded lanes of the output are not stored (triton_reshape_and_cache.py says the rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from pagedllm_kernels.triton_reshape_and_cache import _check_device, check_head_dim, head_dim_mask

__all__ = ["paged_attention", "launch", "choose_num_splits", "LaunchConfig", "launch_config"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LOG2E = 1.4426950408889634
_MIN_KEYS_PER_SPLIT = 512  # a split must stream enough keys to pay for its partial write + reduce
_MAX_SPLITS = 32
_NO_WINDOW = 1 << 30  # `window` for full attention: further back than any context


@triton.jit
def _find_seq(query_start_loc_ptr, num_seqs, q_tile, BLOCK_Q: tl.constexpr):
    """The sequence whose query tiles (numbered from qsl[i] // BLOCK_Q + i) hold `q_tile`."""
    # NOTE: both bounds are int32 tensors from the start: a constant 0 (or num_seqs == 1, which
    # Triton specialises to a constant) would change type inside the loop.
    lo = tl.zeros([], dtype=tl.int32)
    hi = lo + num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_tile = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if first_tile <= q_tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _tanh(x, PRECISE: tl.constexpr):
    """tanh: libdevice's on CUDA; the CPU interpreter has no libdevice (2 * sigmoid(2x) - 1)."""
    if PRECISE:
        return libdevice.tanh(x)
    else:
        return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _attend_tile(
    acc, l_i, m_i, q, key_cache_ptr, value_cache_ptr, block_table_ptr, kv_head_off, start_n, first_key,
    num_keys, q_abs, scale_log2, window, cap_log2, offs_d, d_ok, cache_stride_b, cache_stride_s,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SOFTCAP: tl.constexpr, PRECISE_TANH: tl.constexpr,
):
    """One online-softmax step over keys start_n .. start_n + BLOCK_N - 1.

    MASKED tiles hide keys past each row's position and before its window, and do not read keys
    outside [first_key, num_keys); `cap_log2` is the soft cap in the scores' log2 units
    (softcap * log2(e)). `d_ok` masks the padded head lanes (constant true without padding).
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if MASKED:
        in_seq = (offs_n < num_keys) & (offs_n >= first_key)
        block_ids = tl.load(block_table_ptr + offs_n // BLOCK_SIZE, mask=in_seq, other=0)
    else:
        block_ids = tl.load(block_table_ptr + offs_n // BLOCK_SIZE)
    kv_offs = block_ids.to(tl.int64) * cache_stride_b + (offs_n % BLOCK_SIZE) * cache_stride_s + kv_head_off
    # K: (HEAD_DIM_PADDED, BLOCK_N)
    k_ptrs = key_cache_ptr + kv_offs[None, :] + offs_d[:, None]
    # V: (BLOCK_N, HEAD_DIM_PADDED)
    v_ptrs = value_cache_ptr + kv_offs[:, None] + offs_d[None, :]
    if MASKED:
        # NOTE: masked loads read 0, never the cache: unwritten slots may hold NaN.
        k = tl.load(k_ptrs, mask=in_seq[None, :] & d_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=in_seq[:, None] & d_ok[None, :], other=0.0)
    else:
        k = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
    # S: (BLOCK_M, BLOCK_N), in log2 units
    s = tl.dot(q, k, input_precision=DOT_PRECISION) * scale_log2
    if SOFTCAP:
        s = cap_log2 * _tanh(s / cap_log2, PRECISE_TANH)
    if MASKED:
        visible = (offs_n[None, :] <= q_abs[:, None]) & (offs_n[None, :] > q_abs[:, None] - window)
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


def _paged_attention_body(
    out_ptr,  # [T, num_heads, HEAD_DIM], contiguous; written when NUM_SPLITS == 1
    part_acc_ptr,  # [T, num_heads, NUM_SPLITS, HEAD_DIM] fp32; written when NUM_SPLITS > 1
    part_ml_ptr,  # [2, T, num_heads, NUM_SPLITS] fp32: running max (log2 units), running sum
    query_ptr,
    key_cache_ptr,
    value_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    scale_log2,
    window,  # sliding window in tokens; _NO_WINDOW for full attention
    cap_log2,  # softcap * log2(e); read only when SOFTCAP
    num_seqs,
    num_tokens,
    num_kv_heads,
    stride_bt,  # block_tables row stride
    stride_qt,
    stride_qh,
    GROUP: tl.constexpr,  # query heads per kv head
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PADDED: tl.constexpr,  # HEAD_DIM rounded up to a power of 2: the tiles' width
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
    BLOCK_Q: tl.constexpr,  # query positions per program
    BLOCK_M: tl.constexpr,  # BLOCK_Q * GROUP rounded up to a power of 2
    BLOCK_N: tl.constexpr,  # keys per inner step
    NUM_SPLITS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SOFTCAP: tl.constexpr,
    PRECISE_TANH: tl.constexpr,
):
    q_tile_global = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq = _find_seq(query_start_loc_ptr, num_seqs, q_tile_global, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    q_tile = q_tile_global - (q_start // BLOCK_Q + seq)
    if q_tile * BLOCK_Q >= q_len:  # a grid slot past this sequence's last tile
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len  # cached tokens before the first query

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PADDED)
    d_ok = head_dim_mask(offs_d, HEAD_DIM, HEAD_DIM_PADDED)
    q_pos = q_tile * BLOCK_Q + offs_m // GROUP  # among the sequence's new tokens
    head = kv_head * GROUP + offs_m % GROUP
    row_ok = (offs_m // GROUP < BLOCK_Q) & (q_pos < q_len)
    row = (q_start + q_pos).to(tl.int64)
    out_mask = row_ok[:, None] & d_ok[None, :]
    # Q: (BLOCK_M, HEAD_DIM_PADDED)
    q = tl.load(query_ptr + row[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=out_mask, other=0.0)
    q_abs = context_len + q_pos  # absolute position of each row = the last key it sees

    # Keys 0 .. first_pos are visible to every row; the tile's last row sees up to last_pos.
    first_pos = context_len + q_tile * BLOCK_Q
    last_pos = context_len + tl.minimum((q_tile + 1) * BLOCK_Q, q_len) - 1
    num_keys = last_pos + 1
    num_tiles = tl.cdiv(num_keys, BLOCK_N)
    num_full = (first_pos + 1) // BLOCK_N
    # The window: no row sees a key before first_pos - window + 1 (those tiles are not read);
    # tiles before the one holding last_pos - window + 1 hide keys from some rows (masked).
    first_key = tl.maximum(first_pos - window + 1, 0)
    tile_first = first_key // BLOCK_N
    num_windowed = tl.cdiv(tl.maximum(last_pos - window + 1, 0), BLOCK_N)
    tiles_per_split = tl.cdiv(num_tiles - tile_first, NUM_SPLITS)
    tile_lo = tile_first + split * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, num_tiles)

    block_table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    kv_head_off = kv_head * HEAD_DIM
    cache_stride_s = num_kv_heads * HEAD_DIM
    cache_stride_b = BLOCK_SIZE * cache_stride_s
    # NOTE: a finite floor, not -inf: a split whose keys are all masked for a row keeps
    # m = -1e30, l = 0 without producing NaN (exp2(-inf - -inf)).
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PADDED], dtype=tl.float32)

    for t in range(tile_lo, tl.minimum(tile_hi, num_windowed)):
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, key_cache_ptr, value_cache_ptr, block_table_ptr, kv_head_off, t * BLOCK_N,
            first_key, num_keys, q_abs, scale_log2, window, cap_log2, offs_d, d_ok, cache_stride_b,
            cache_stride_s, BLOCK_SIZE, BLOCK_N, True, DOT_PRECISION, SOFTCAP, PRECISE_TANH)
    for t in range(tl.maximum(tile_lo, num_windowed), tl.minimum(tile_hi, num_full)):
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, key_cache_ptr, value_cache_ptr, block_table_ptr, kv_head_off, t * BLOCK_N,
            first_key, num_keys, q_abs, scale_log2, window, cap_log2, offs_d, d_ok, cache_stride_b,
            cache_stride_s, BLOCK_SIZE, BLOCK_N, False, DOT_PRECISION, SOFTCAP, PRECISE_TANH)
    for t in range(tl.maximum(tile_lo, tl.maximum(num_windowed, num_full)), tile_hi):
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, key_cache_ptr, value_cache_ptr, block_table_ptr, kv_head_off, t * BLOCK_N,
            first_key, num_keys, q_abs, scale_log2, window, cap_log2, offs_d, d_ok, cache_stride_b,
            cache_stride_s, BLOCK_SIZE, BLOCK_N, True, DOT_PRECISION, SOFTCAP, PRECISE_TANH)

    num_heads = num_kv_heads * GROUP
    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        out_ptrs = out_ptr + (row[:, None] * num_heads + head[:, None]) * HEAD_DIM + offs_d[None, :]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        part = (row * num_heads + head) * NUM_SPLITS + split
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=out_mask)
        tl.store(part_ml_ptr + part, m_i, mask=row_ok)
        tl.store(part_ml_ptr + num_tokens * num_heads * NUM_SPLITS + part, l_i, mask=row_ok)


# Two compiled forms of the one kernel body:
# - prefill, chunked and mixed steps (eager, or their CUDA graphs: any shape) leave the per-step integers
#   unspecialised: Triton would compile a variant for each of ==1 / multiple of 16 / other, per
#   argument, and real traffic meets them all (seconds of compiling under the first requests);
#   the start-up warm-up (ModelRunner.warm_up) compiles the one variant left;
# - pure decode keeps Triton's specialisation (the block-table stride and the token count let it
#   simplify the address maths, a measurable share of a decode step: docs/benchmarks.md): the CUDA
#   graphs fix those shapes, and their capture at start-up compiles each variant.
_paged_attention_kernel = triton.jit(_paged_attention_body)
_paged_attention_varlen_kernel = triton.jit(
    do_not_specialize=["num_seqs", "num_tokens", "stride_bt"])(_paged_attention_body)


@triton.jit(do_not_specialize=["num_seqs", "num_tokens"])
def _reduce_splits_kernel(
    out_ptr,  # [T, num_heads, HEAD_DIM], contiguous
    part_acc_ptr,  # [T, num_heads, NUM_SPLITS, HEAD_DIM] fp32
    part_ml_ptr,  # [2, T, num_heads, NUM_SPLITS] fp32
    query_start_loc_ptr,
    num_seqs,
    num_tokens,
    num_heads,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PADDED: tl.constexpr,
    NUM_SPLITS: tl.constexpr,  # a power of 2
):
    token = tl.program_id(0)
    head = tl.program_id(1)
    if token >= tl.load(query_start_loc_ptr + num_seqs):  # padding row: stays zero
        return
    offs_s = tl.arange(0, NUM_SPLITS)
    offs_d = tl.arange(0, HEAD_DIM_PADDED)
    d_ok = head_dim_mask(offs_d, HEAD_DIM, HEAD_DIM_PADDED)
    part = (token.to(tl.int64) * num_heads + head) * NUM_SPLITS + offs_s
    m = tl.load(part_ml_ptr + part)
    l = tl.load(part_ml_ptr + num_tokens * num_heads * NUM_SPLITS + part)
    # ACC: (NUM_SPLITS, HEAD_DIM_PADDED)
    acc = tl.load(part_acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], mask=d_ok[None, :], other=0.0)
    w = tl.exp2(m - tl.max(m, axis=0))
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(out_ptr + (token.to(tl.int64) * num_heads + head) * HEAD_DIM + offs_d,
             out.to(out_ptr.dtype.element_ty), mask=d_ok)


@dataclass(frozen=True)
class LaunchConfig:
    """The attention kernel's tile and launch knobs (scripts/pagedllm_tools/bench/kernels_gpu.py --sweep times them).

    Attributes:
        block_n: keys per inner step.
        num_warps / num_stages: Triton's launch options (stages: the loop's software pipelining).
    """

    block_n: int
    num_warps: int = 4
    num_stages: int = 3


def launch_config(dtype: torch.dtype, max_query_len: int, head_dim: int = 64) -> LaunchConfig:
    """The knobs a batch runs with.

    16-bit decode with head_dim 64 runs 2 warps: its tile has 16 rows (one query x the GQA group,
    padded for tl.dot), and 2 warps per program let twice as many programs keep loads in flight.
    With head_dim 128 each key row is twice as long, and 4 warps with 2 pipeline stages win
    instead. Both were chosen by bench/kernels_gpu.py --sweep (figures: docs/benchmarks.md).
    """
    if dtype == torch.float32:
        return LaunchConfig(block_n=32)
    if max_query_len > 1:
        return LaunchConfig(block_n=64)
    if head_dim >= 128:
        return LaunchConfig(block_n=64, num_warps=4, num_stages=2)
    return LaunchConfig(block_n=64, num_warps=2)


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_query_len: int, max_seq_len: int, num_sms: int) -> int:
    """How many KV splits a batch should use: 1 unless it is pure decode too small to fill the GPU.

    Splits are a power of 2: enough to give every SM about two programs, but each split
    keeps at least _MIN_KEYS_PER_SPLIT keys of the longest sequence.
    """
    if max_query_len != 1:
        return 1
    programs = num_seqs * num_kv_heads
    if programs >= num_sms:
        return 1
    wanted = min(math.ceil(2 * num_sms / programs), max_seq_len // _MIN_KEYS_PER_SPLIT, _MAX_SPLITS)
    return 1 if wanted < 2 else 1 << (wanted.bit_length() - 1)


def paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    block_tables: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                    scale: float, max_query_len: int, max_seq_len: int, num_splits: int | None = None,
                    config: LaunchConfig | None = None, window: int | None = None,
                    softcap: float | None = None) -> torch.Tensor:
    """Causal attention of each sequence's new queries over its paged context.

    The contract of `KernelOps.paged_attention` (`window` and `softcap` included).
    `num_splits` forces the number of KV splits (a power of 2; 1 = no split-KV); None picks it
    with `choose_num_splits`. `config` forces the launch knobs; None picks them with
    `launch_config`.

    Returns:
        [T, num_heads, head_dim] in query's dtype; rows beyond qsl[S] (padding) are zero.

    Raises:
        ValueError: a shape, dtype, stride or device the kernel cannot take (names the argument).
    """
    check_args(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc)
    if num_splits is not None and (num_splits < 1 or num_splits & (num_splits - 1)):
        raise ValueError(f"num_splits: must be a power of 2 >= 1, got {num_splits}")
    if window is not None and not 1 <= window < _NO_WINDOW:
        raise ValueError(f"window: must be in [1, {_NO_WINDOW}) tokens or None, got {window}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap: must be positive or None, got {softcap}")
    return launch(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, scale,
                  max_query_len, max_seq_len, num_splits, config, window, softcap)


def launch(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, scale, max_query_len,
           max_seq_len, num_splits=None, config=None, window=None, softcap=None) -> torch.Tensor:
    """`paged_attention` (the same arguments) without the argument checks: the engine's hot path.

    NOTE: the engine checks its KV cache once (`pagedllm_kernels.check_kv_cache`) and builds
    every per-step tensor itself with the dtypes and layouts `check_args` wants.
    """
    num_tokens, num_heads, head_dim = query.shape
    block_size, num_kv_heads = key_cache.shape[1:3]
    num_seqs = seq_lens.shape[0]
    group = num_heads // num_kv_heads
    if num_splits is None:
        num_splits = choose_num_splits(num_seqs, num_kv_heads, max_query_len, max_seq_len, _num_sms(query.device))
    out = torch.zeros_like(query, memory_format=torch.contiguous_format)
    if num_tokens == 0 or num_seqs == 0:
        return out
    # Decode tiles are as small as tl.dot allows; prefill tiles reuse each K/V load for more rows.
    block_m = max(16 if max_query_len <= 1 else 64, triton.next_power_of_2(group))
    block_q = block_m // group
    head_dim_padded = triton.next_power_of_2(head_dim)
    config = config or launch_config(query.dtype, max_query_len, head_dim_padded)
    if num_splits > 1:
        part_acc = torch.empty(num_tokens, num_heads, num_splits, head_dim, dtype=torch.float32, device=query.device)
        part_ml = torch.empty(2, num_tokens, num_heads, num_splits, dtype=torch.float32, device=query.device)
    else:
        part_acc = part_ml = out  # unused
    grid = (num_tokens // block_q + num_seqs, num_kv_heads, num_splits)
    kernel = _paged_attention_kernel if max_query_len <= 1 else _paged_attention_varlen_kernel
    kernel[grid](
        out, part_acc, part_ml, query, key_cache, value_cache, block_tables, seq_lens, query_start_loc,
        scale_log2=scale * _LOG2E,
        window=_NO_WINDOW if window is None else window,
        cap_log2=1.0 if softcap is None else softcap * _LOG2E,
        num_seqs=num_seqs,
        num_tokens=num_tokens,
        num_kv_heads=num_kv_heads,
        stride_bt=block_tables.stride(0),
        stride_qt=query.stride(0),
        stride_qh=query.stride(1),
        GROUP=group,
        HEAD_DIM=head_dim,
        HEAD_DIM_PADDED=head_dim_padded,
        BLOCK_SIZE=block_size,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        BLOCK_N=config.block_n,
        NUM_SPLITS=num_splits,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        SOFTCAP=softcap is not None,
        PRECISE_TANH=query.is_cuda,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if num_splits > 1:
        _reduce_splits_kernel[(num_tokens, num_heads)](
            out, part_acc, part_ml, query_start_loc,
            num_seqs=num_seqs, num_tokens=num_tokens, num_heads=num_heads,
            HEAD_DIM=head_dim, HEAD_DIM_PADDED=head_dim_padded, NUM_SPLITS=num_splits,
        )
    return out


def check_args(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc) -> None:
    """Raises ValueError naming the first argument the kernel cannot take."""
    if key_cache.dim() != 4 or not key_cache.is_contiguous():
        raise ValueError(f"key_cache: expected a contiguous [num_blocks, block_size, num_kv_heads, head_dim], "
                         f"got {list(key_cache.shape)}")
    if value_cache.shape != key_cache.shape or value_cache.dtype != key_cache.dtype or not value_cache.is_contiguous():
        raise ValueError("value_cache: must be contiguous with key_cache's shape and dtype")
    head_dim = key_cache.shape[3]
    check_head_dim(head_dim, "key_cache")
    if query.dim() != 3 or query.shape[2] != head_dim:
        raise ValueError(f"query: expected [T, num_heads, {head_dim}], got {list(query.shape)}")
    if query.dtype not in _DTYPES or query.dtype != key_cache.dtype:
        raise ValueError(f"query: dtype {query.dtype} must match key_cache's {key_cache.dtype}, one of {_DTYPES}")
    if query.shape[1] % key_cache.shape[2] != 0:
        raise ValueError(f"query: {query.shape[1]} heads is not a multiple of {key_cache.shape[2]} kv heads")
    if query.stride(2) != 1:
        raise ValueError(f"query: the head_dim axis must be contiguous (stride 1), got strides {query.stride()}")
    num_seqs = seq_lens.shape[0]
    if seq_lens.dim() != 1 or seq_lens.dtype != torch.int32:
        raise ValueError(f"seq_lens: expected [S] int32, got {list(seq_lens.shape)} {seq_lens.dtype}")
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs or block_tables.dtype != torch.int32 \
            or block_tables.stride(1) != 1:
        raise ValueError(f"block_tables: expected [{num_seqs}, max_blocks] int32 with contiguous rows, "
                         f"got {list(block_tables.shape)} {block_tables.dtype} strides {block_tables.stride()}")
    if query_start_loc.shape != (num_seqs + 1,) or query_start_loc.dtype != torch.int32:
        raise ValueError(f"query_start_loc: expected [{num_seqs + 1}] int32, got {list(query_start_loc.shape)} "
                         f"{query_start_loc.dtype}")
    _check_device(query=query, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables,
                  seq_lens=seq_lens, query_start_loc=query_start_loc)


_NUM_SMS: dict[int, int] = {}


def _num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached); 4 for the CPU interpreter."""
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _NUM_SMS:
        _NUM_SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _NUM_SMS[index]
