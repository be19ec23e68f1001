"""OpenAI Triton skinny GEMM: y[M, N] = x[M, K] @ W[N, K]^T (+ bias) for decode batches (M small).

At decode batch sizes a projection reads its whole weight matrix for a few rows of x, so its
floor is the weight bytes over the memory bandwidth; cuBLAS reaches it on the large matrices of
an 8B model but not on the small ones (docs/benchmarks.md, "Decode GEMMs at 8B"). This kernel
is a candidate for those: it is built to stream W once, with wide coalesced loads, from enough
programs to keep the memory system busy. It is not wired into the model (`select_ops`) until
the GPU benchmark (scripts/pagedllm_tools/bench/decode_gemms.py) says where it wins.

Grid: (cdiv(N, BLOCK_N), split_k). Program (j, s) owns output columns j * BLOCK_N ... of every
row of x, and the s-th slice of K (whole BLOCK_K steps, `k_per_split` elements):

    W [N, K], row-major     | split 0 | split 1 | ... |     each step loads a [BLOCK_N, BLOCK_K]
      rows of program j  -> | ======= | ======= | ... |     tile (K contiguous: each row a run of
                                                            BLOCK_K elements) and the [M, BLOCK_K]
                                                            slice of x beside it (tiny, cached)

Two formulations of one step, both accumulating in float32 (`LaunchConfig.use_dot`):

- GEMV (few rows): acc[BLOCK_M, BLOCK_N, BLOCK_K] += x * w elementwise on the CUDA cores,
  summed over K once after the loop, so the loop has no cross-lane reduction. Its registers grow
  with BLOCK_M * BLOCK_N * BLOCK_K, so `launch_config` shrinks BLOCK_N as M grows.
- tl.dot (more rows): acc[BLOCK_N, BLOCK_M] += W_tile @ x_tile^T on the tensor cores, "swap-AB":
  the weight tile is the MMA's M side (BLOCK_N rows, K-contiguous as an A operand wants; 64 rows
  fill a Hopper warpgroup MMA), and x, padded with zero rows to tl.dot's minimum of 16, is the
  narrow N side. Unswapped, the 16 rows of x would be the M side, below the warpgroup MMA's 64.

With split_k == 1 the program writes y (bias added in float32, then one rounding, as cuBLAS's
epilogue does). With split_k > 1 it writes float32 partials [split_k, M, N] and
`_reduce_splits_kernel` adds them in split order, then the bias, and rounds once: deterministic
(an atomic_add reduction would make the sum's order, and so the low bits, vary from run to run).
The split count is the grid's second axis, not a compile-time constant: trying other counts
(the benchmark's sweep, CUDA graphs per batch size) compiles nothing new.

The oracle is `torch.nn.functional.linear` in float32 on the same inputs (tests/test_skinny_gemm.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pagedllm_kernels.triton_paged_attention import _num_sms
from pagedllm_kernels.triton_reshape_and_cache import _check_device

__all__ = ["skinny_gemm", "launch", "LaunchConfig", "launch_config", "choose_split_k", "MAX_M"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_M = 64  # rows of x: a decode batch; larger batches are cuBLAS's
_MAX_SPLIT_K = 64  # bounds the float32 partials buffer [split_k, M, N]
_ROW_BYTES = 512  # bytes of a weight row per step: 32 lanes x one 16-byte load each
_GEMV_MAX_M = 4  # up to this many rows the GEMV formulation, beyond it tl.dot
_GEMV_ACC = 8192  # float32 accumulators of a GEMV program: 64 registers a thread at 4 warps
_PROGRAMS_PER_SM = 4  # split-K's target: programs enough to keep loads in flight on every SM
_MIN_K_STEPS_PER_SPLIT = 4  # a split streams at least this many BLOCK_K steps
_REDUCE_BLOCK = 1024


@triton.jit
def _skinny_gemm_kernel(
    x_ptr,  # [M, K], K contiguous, rows stride_xm apart
    w_ptr,  # [N, K], contiguous
    bias_ptr,  # [N]; read only when HAS_BIAS
    out_ptr,  # [M, N], contiguous; written without PARTIALS
    part_ptr,  # [split_k, M, N] float32; written with PARTIALS
    M,
    N,
    K,
    stride_xm,
    k_per_split,  # a multiple of BLOCK_K
    BLOCK_M: tl.constexpr,  # M rounded up to a power of 2 (at least 16 with USE_DOT)
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PARTIALS: tl.constexpr,  # split_k > 1 (the count itself is the grid's, not compiled in)
    HAS_BIAS: tl.constexpr,
    USE_DOT: tl.constexpr,
    EVEN_N: tl.constexpr,  # N % BLOCK_N == 0: no row mask on W
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no column mask (every split ends on a whole step)
    DOT_PRECISION: tl.constexpr,
):
    split = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    if EVEN_N:
        n_ok = tl.full([BLOCK_N], 1, tl.int1)
    else:
        n_ok = offs_n < N
    k_lo = split * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * K  # (BLOCK_N, 1)
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm  # (BLOCK_M, 1)
    if USE_DOT:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc3 = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:
            k_ok = tl.full([BLOCK_K], 1, tl.int1)
        else:
            k_ok = offs_k < k_hi
        # W: (BLOCK_N, BLOCK_K); X: (BLOCK_M, BLOCK_K)
        w = tl.load(w_rows + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        x = tl.load(x_rows + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if USE_DOT:
            acc = tl.dot(w, tl.trans(x), acc, input_precision=DOT_PRECISION)
        else:
            acc3 += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    if USE_DOT:
        y = tl.trans(acc)  # (BLOCK_M, BLOCK_N)
    else:
        y = tl.sum(acc3, axis=2)
    out_mask = m_ok[:, None] & n_ok[None, :]
    out_offs = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    if not PARTIALS:
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + out_offs, y.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.store(part_ptr + split.to(tl.int64) * M * N + out_offs, y, mask=out_mask)


@triton.jit
def _reduce_splits_kernel(part_ptr, bias_ptr, out_ptr, MN, N, split_k, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """out = sum over the splits in split order (+ bias), rounded once: the same bits every run."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    y = tl.load(part_ptr + offs, mask=mask, other=0.0)
    for s in range(1, split_k):
        y += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class LaunchConfig:
    """The kernel's tile and launch knobs (bench/decode_gemms.py --sweep times them).

    Attributes:
        block_n: output columns (rows of W) per program; a power of 2 (>= 16 with use_dot).
        block_k: elements of K per step; a power of 2 (>= 16 with use_dot).
        split_k: slices of K, one program each per column tile; 1 = no partials, no reduce.
        use_dot: tl.dot on the tensor cores (x padded to 16 rows), else the GEMV formulation.
        num_warps / num_stages: Triton's launch options (stages: the loop's software pipelining).
    """

    block_n: int
    block_k: int
    split_k: int = 1
    use_dot: bool = False
    num_warps: int = 4
    num_stages: int = 3


def choose_split_k(n: int, k: int, block_n: int, block_k: int, num_sms: int) -> int:
    """Slices of K: a power of 2, doubled while the grid has fewer than _PROGRAMS_PER_SM programs an
    SM and each slice would keep at least _MIN_K_STEPS_PER_SPLIT steps.

    A program holds one tile's loads in flight at a time (times its pipeline stages), so a grid
    of one program per column tile (o at 8B: N / BLOCK_N tiles for 100+ SMs) cannot keep enough
    bytes in flight to reach the bandwidth; slicing K multiplies the programs. The floor on
    steps per slice keeps the pipeline's prologue and the float32 partials (M x BLOCK_N per
    program, against BLOCK_N x BLOCK_K weights a step) small beside the weight stream. Wide
    matrices (gate|up, the LM head) already have programs enough and stay at 1.
    """
    tiles, steps = triton.cdiv(n, block_n), triton.cdiv(k, block_k)
    split = 1
    while tiles * split < _PROGRAMS_PER_SM * num_sms and steps >= 2 * split * _MIN_K_STEPS_PER_SPLIT \
            and 2 * split <= _MAX_SPLIT_K:
        split *= 2
    return split


def launch_config(m: int, n: int, k: int, dtype: torch.dtype, num_sms: int,
                  use_dot: bool | None = None) -> LaunchConfig:
    """The knobs a GEMM of x [m, k] and W [n, k] runs with: a starting point for the GPU sweep.

    `use_dot` forces the formulation (None: by m, below); the other knobs follow from it.

    - block_k: _ROW_BYTES of each weight row per step (256 16-bit or 128 float32 elements), so
      each lane of a warp issues one 16-byte load per row, and a row's bytes arrive in whole
      128-byte lines.
    - use_dot: the GEMV formulation up to _GEMV_MAX_M rows (its work per weight element grows
      with M on the CUDA cores and its accumulators with BLOCK_M), tl.dot beyond.
    - block_n: with tl.dot 64 rows of W (a full MMA tile for the weight operand); for the GEMV,
      as many as keep BLOCK_M * BLOCK_N * BLOCK_K within _GEMV_ACC float32 accumulators.
    - split_k: `choose_split_k`.
    """
    elt = torch.finfo(dtype).bits // 8
    if use_dot is None:
        use_dot = m > _GEMV_MAX_M
    floor = 16 if use_dot else 1
    block_k = min(_ROW_BYTES // elt, max(triton.next_power_of_2(k), floor))
    if use_dot:
        block_n = 64
    else:
        block_n = max(_GEMV_ACC // (triton.next_power_of_2(m) * block_k), 1)
    block_n = min(block_n, 64, max(triton.next_power_of_2(n), floor))
    return LaunchConfig(block_n=block_n, block_k=block_k, split_k=choose_split_k(n, k, block_n, block_k, num_sms),
                        use_dot=use_dot)


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                split_k: int | None = None, config: LaunchConfig | None = None) -> torch.Tensor:
    """`torch.nn.functional.linear(x, weight, bias)` for x of at most MAX_M rows.

    x: [..., K] (rows of any stride; a non-unit stride along K is copied to contiguous first);
    weight: a contiguous [N, K]; bias: a contiguous [N] or None; one dtype of float16, bfloat16,
    float32 for all three. `config` forces the launch knobs (None: `launch_config`); `split_k`
    forces the K slices alone.

    Returns:
        [..., N] in x's dtype, contiguous.

    Raises:
        ValueError: a shape, dtype, layout, device or knob the kernel cannot take (names the argument).
    """
    if x.dtype not in _DTYPES:
        raise ValueError(f"x: dtype {x.dtype} not supported; use one of {_DTYPES}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected [..., K] with K > 0, got {list(x.shape)}")
    m = x.numel() // x.shape[-1]
    if m > MAX_M:
        raise ValueError(f"x: {m} rows; the skinny GEMM takes at most {MAX_M} (use torch's linear)")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1] or weight.shape[0] == 0:
        raise ValueError(f"weight: expected [N, {x.shape[-1]}] with N > 0, got {list(weight.shape)}")
    if weight.dtype != x.dtype or not weight.is_contiguous():
        raise ValueError(f"weight: expected a contiguous {x.dtype} tensor, got {weight.dtype} "
                         f"strides {weight.stride()}")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != x.dtype or not bias.is_contiguous()):
        raise ValueError(f"bias: expected a contiguous [{weight.shape[0]}] {x.dtype}, got "
                         f"{list(bias.shape)} {bias.dtype}")
    _check_device(x=x, weight=weight, **({} if bias is None else {"bias": bias}))
    if config is not None:
        _check_config(config)
    if split_k is not None and not 1 <= split_k <= _MAX_SPLIT_K:
        raise ValueError(f"split_k: must be in [1, {_MAX_SPLIT_K}], got {split_k}")
    return launch(x, weight, bias, split_k, config)


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, split_k: int | None = None,
           config: LaunchConfig | None = None) -> torch.Tensor:
    """`skinny_gemm` without the argument checks: the hot path."""
    n, k = weight.shape
    rows = x.reshape(-1, k)  # a view for rows of any stride
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    m = rows.shape[0]
    out = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    if config is None:
        config = launch_config(m, n, k, x.dtype, _num_sms(x.device))
    if split_k is not None:
        config = dataclasses.replace(config, split_k=split_k)
    block_m = max(triton.next_power_of_2(m), 16 if config.use_dot else 1)
    k_per_split = triton.cdiv(triton.cdiv(k, config.block_k), config.split_k) * config.block_k
    part = torch.empty((config.split_k, m, n), dtype=torch.float32, device=x.device) if config.split_k > 1 else out
    bias_arg = bias if bias is not None else weight  # unused without HAS_BIAS
    _skinny_gemm_kernel[(triton.cdiv(n, config.block_n), config.split_k)](
        rows, weight, bias_arg, out, part, m, n, k, rows.stride(0), k_per_split,
        BLOCK_M=block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        PARTIALS=config.split_k > 1,
        HAS_BIAS=bias is not None,
        USE_DOT=config.use_dot,
        EVEN_N=n % config.block_n == 0,
        EVEN_K=k % config.block_k == 0,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if config.split_k > 1:
        _reduce_splits_kernel[(triton.cdiv(m * n, _REDUCE_BLOCK),)](
            part, bias_arg, out, m * n, n, config.split_k, HAS_BIAS=bias is not None,
            BLOCK=_REDUCE_BLOCK, num_warps=4,
        )
    return out


def _check_config(config: LaunchConfig) -> None:
    """Raises ValueError naming `config` for knobs the kernel cannot take."""
    floor = 16 if config.use_dot else 1
    for name in ("block_n", "block_k", "num_warps"):
        value = getattr(config, name)
        if value < 1 or value & (value - 1):
            raise ValueError(f"config: {name} must be a power of 2, got {value}")
    if config.use_dot and min(config.block_n, config.block_k) < floor:
        raise ValueError(f"config: tl.dot needs block_n and block_k >= 16, got {config.block_n}, {config.block_k}")
    if not 1 <= config.split_k <= _MAX_SPLIT_K:
        raise ValueError(f"config: split_k must be in [1, {_MAX_SPLIT_K}], got {config.split_k}")
    if config.num_stages < 1:
        raise ValueError(f"config: num_stages must be >= 1, got {config.num_stages}")
