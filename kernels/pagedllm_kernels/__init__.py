"""Paged KV-cache kernels (`pagedllm_kernels`): OpenAI Triton for CUDA, a torch reference for the rest.

Each op has two implementations: an OpenAI Triton kernel for CUDA tensors (`triton_*.py`) and the
pure-torch reference (`reference.py`), which is the kernels' oracle and what CPU runs use.

Two ways in:

- `select_ops(device, dtype)` picks one implementation of every op, once, when the engine builds
  its model (`KernelOps`). The model calls those without checks on its hot path: the engine checks
  its KV cache once (`check_kv_cache`) and builds every per-step tensor itself, with the dtypes
  and layouts the kernels want (see `pagedllm.input_buffers`).
- `paged_attention`, `reshape_and_cache`, `rms_norm`, `fused_add_rms_norm`, `silu_and_mul`,
  `rotary` and `fused_moe` below are the checked entry points for everyone else: they validate their arguments
  (ValueError naming the argument; the reference paths check only the attention's), then
  dispatch on the tensors' device and dtype as `select_ops` does.

`PAGEDLLM_ATTENTION=reference` makes CUDA take the reference for every op (A/B checks);
`PAGEDLLM_RMS_NORM=reference` does so for both norms alone, `PAGEDLLM_ELEMENTWISE=reference` for
silu_and_mul and the rotary embedding. Where the rotary takes its kernel, that kernel also writes
the step's keys and values into the cache (`PAGEDLLM_ROTARY_INTO_CACHE=separate`: the rotary,
then `reshape_and_cache`), and Qwen3-style models (q/k norms) fold their norms in too
(triton_qk_norm_rotary.py; `PAGEDLLM_QK_NORM_ROTARY=separate`: the norms apart, A/B checks).
The mixture-of-experts feed-forward takes its kernel (triton_fused_moe.py) in every dtype on
CUDA: the reference loops over experts with data-dependent shapes, which a CUDA graph cannot hold.
All are read by `select_ops`.

NOTE: the Triton files are named `triton_*.py`, not `paged_attention.py`: importing a submodule
binds it as an attribute of this package, which would replace the function `paged_attention`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from pagedllm_kernels.reference import (apply_rotary_ref, fused_add_rms_norm_ref, fused_moe_ref,
                                       paged_attention_ref, reshape_and_cache_ref, rms_norm_ref, rope_ref,
                                       rotary_ref, silu_and_mul_ref)

__all__ = ["KernelOps", "REFERENCE_OPS", "select_ops", "check_kv_cache", "reshape_and_cache", "paged_attention",
           "rms_norm", "fused_add_rms_norm", "silu_and_mul", "rotary", "fused_moe", "decode_num_splits"]


@dataclass(frozen=True)
class KernelOps:
    """One implementation of each op, chosen once per model; called without argument checks.

    Attributes:
        backend: "triton" (CUDA kernels) or "reference" (torch).
        reshape_and_cache: (key, value, key_cache, value_cache, slot_mapping) -> None.
        paged_attention: (query, key_cache, value_cache, block_tables, seq_lens, query_start_loc,
            scale, max_query_len, max_seq_len, window=None, softcap=None) -> [T, num_heads, head_dim].
        rms_norm: (x, weight, eps) -> normalised x.
        fused_add_rms_norm: (x, residual, weight, eps) -> (rms_norm(residual + x), residual + x).
        silu_and_mul: (gate_up [..., 2I]) -> silu(gate) * up [..., I].
        rope: (positions, cos_cache, sin_cache, dtype) -> what `rotary` reads, once per step.
        rotary: (q, k, rope) -> (q, k) rotated, new tensors.
        rotary_into_cache: (q, k, v, rope, key_cache, value_cache, slot_mapping) -> q rotated,
            with k rotated and v written into their cache slots (`rotary`, then
            `reshape_and_cache`, in one kernel); None: the model runs those two.
        qk_norm_rotary: (q, k, v, q_weight, k_weight, eps, rope, key_cache, value_cache,
            slot_mapping) -> q: as `rotary_into_cache`, each head of q and k RMS-normalised first,
            in one kernel; None: the model runs rms_norm twice, then the rotary.
        fused_moe: (x, w13, w2, topk_weights, topk_ids) -> the mixture-of-experts feed-forward
            [T, hidden] (`reference.fused_moe_ref`'s contract).

    `rope` and `rotary` come as a pair: the reference gathers (cos, sin) once per step and each
    layer's `rotary` applies them (as transformers does); the kernel reads the float32 tables at
    each token's position itself, so its `rope` only passes them on (no launch per step).
    """

    backend: str
    reshape_and_cache: Callable[..., None]
    paged_attention: Callable[..., torch.Tensor]
    rms_norm: Callable[..., torch.Tensor]
    fused_add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[..., torch.Tensor]
    rope: Callable[..., tuple]
    rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rotary_into_cache: Callable[..., torch.Tensor] | None = None
    qk_norm_rotary: Callable[..., torch.Tensor] | None = None
    fused_moe: Callable[..., torch.Tensor] = fused_moe_ref


def _reference_attention(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc,
                         scale, max_query_len, max_seq_len, window=None, softcap=None):
    return paged_attention_ref(query, key_cache, value_cache, block_tables, seq_lens,
                               query_start_loc, scale, window, softcap)


def _reference_rotary(q, k, rope):
    cos, sin = rope
    return apply_rotary_ref(q, cos, sin), apply_rotary_ref(k, cos, sin)


def _tables_rope(positions, cos_cache, sin_cache, dtype):
    return positions, cos_cache, sin_cache


REFERENCE_OPS = KernelOps("reference", reshape_and_cache_ref, _reference_attention, rms_norm_ref,
                          fused_add_rms_norm_ref, silu_and_mul_ref, rope_ref, _reference_rotary)
_triton_ops: KernelOps | None = None
_triton_import_error: ImportError | None = None


def _load_triton_ops() -> KernelOps | None:
    """The Triton launchers (imported once), or None where Triton does not import."""
    global _triton_ops, _triton_import_error
    if _triton_ops is None and _triton_import_error is None:
        try:
            from pagedllm_kernels import (triton_fused_add_rms_norm, triton_fused_moe, triton_paged_attention,
                                          triton_qk_norm_rotary, triton_reshape_and_cache,
                                          triton_rms_norm, triton_rotary, triton_silu_and_mul)
        except ImportError as e:  # no triton in this environment: the reference still works
            _triton_import_error = e
            warnings.warn(f"Triton does not import ({e}): CUDA attention runs the slow torch reference")
        else:
            def rotary(q, k, rope):
                return triton_rotary.launch(q, k, *rope)

            def rotary_into_cache(q, k, v, rope, key_cache, value_cache, slot_mapping):
                return triton_rotary.launch_into_cache(q, k, v, *rope, key_cache, value_cache,
                                                       slot_mapping)

            def qk_norm_rotary(q, k, v, q_weight, k_weight, eps, rope, key_cache, value_cache,
                               slot_mapping):
                return triton_qk_norm_rotary.launch_into_cache(q, k, v, q_weight, k_weight, eps, *rope,
                                                               key_cache, value_cache, slot_mapping)

            _triton_ops = KernelOps("triton", triton_reshape_and_cache.launch, triton_paged_attention.launch,
                                    triton_rms_norm.launch, triton_fused_add_rms_norm.launch,
                                    triton_silu_and_mul.launch, _tables_rope, rotary, rotary_into_cache,
                                    qk_norm_rotary, triton_fused_moe.launch)
    return _triton_ops


def select_ops(device: torch.device | str, dtype: torch.dtype) -> KernelOps:
    """The ops a model on `device` in `dtype` runs: the Triton kernels on CUDA, else the reference.

    The norms, silu_and_mul and the rotary embedding take their kernels for bfloat16 only: float32
    keeps the references, bit-identical to transformers, and float16 waits for the kernels' GPU
    tests to pass (tests/test_rms_norm_kernel.py, tests/test_fused_kernels.py).
    """
    device = torch.device(device)
    if device.type != "cuda" or _env("PAGEDLLM_ATTENTION") == "reference":
        return REFERENCE_OPS
    t = _load_triton_ops()
    if t is None:
        return REFERENCE_OPS
    r = REFERENCE_OPS
    norms = dtype == torch.bfloat16 and _env("PAGEDLLM_RMS_NORM") != "reference"
    elementwise = dtype == torch.bfloat16 and _env("PAGEDLLM_ELEMENTWISE") != "reference"
    into_cache = elementwise and _env("PAGEDLLM_ROTARY_INTO_CACHE") != "separate"
    fused_qk = norms and into_cache and _env("PAGEDLLM_QK_NORM_ROTARY") != "separate"
    return KernelOps("triton", t.reshape_and_cache, t.paged_attention,
                     t.rms_norm if norms else r.rms_norm,
                     t.fused_add_rms_norm if norms else r.fused_add_rms_norm,
                     t.silu_and_mul if elementwise else r.silu_and_mul,
                     t.rope if elementwise else r.rope,
                     t.rotary if elementwise else r.rotary,
                     t.rotary_into_cache if into_cache else None,
                     t.qk_norm_rotary if fused_qk else None,
                     t.fused_moe)


def _env(name: str) -> str:
    return os.environ.get(name, "").lower()


def check_kv_cache(kv_cache: torch.Tensor, ops: KernelOps) -> None:
    """One layer's cache, [2, num_blocks, block_size, num_kv_heads, head_dim], checked once.

    Raises:
        ValueError: a layout or head size the chosen kernels cannot take (names the problem).
    """
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2 or not kv_cache.is_contiguous():
        raise ValueError(f"kv_cache: expected a contiguous [2, num_blocks, block_size, num_kv_heads, "
                         f"head_dim], got {list(kv_cache.shape)}")
    head_dim = kv_cache.shape[4]
    if ops.backend == "triton" and (head_dim & (head_dim - 1) or not 16 <= head_dim <= 256):
        raise ValueError(f"kv_cache: head_dim {head_dim} not supported by the Triton kernels "
                         f"(powers of 2 in [16, 256]); set PAGEDLLM_ATTENTION=reference")


def reshape_and_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                      value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Writes this step's keys/values into the paged cache, in place.

    Args:
        key, value: [T, num_kv_heads, head_dim] for the T new tokens.
        key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim].
        slot_mapping: [T] int64 flat slot (block_id * block_size + offset) per token;
            -1 marks a token that must not be written (padding).

    Raises:
        ValueError: shapes or dtypes disagree (the message names the argument).
    """
    if select_ops(key.device, key.dtype).backend == "triton":
        from pagedllm_kernels import triton_reshape_and_cache
        return triton_reshape_and_cache.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    _check_cache(key_cache, value_cache)
    for name, t in (("key", key), ("value", value)):
        if t.dim() != 3 or t.shape[1:] != key_cache.shape[2:]:
            raise ValueError(f"{name}: expected [T, {key_cache.shape[2]}, {key_cache.shape[3]}], got {list(t.shape)}")
        if t.dtype != key_cache.dtype:
            raise ValueError(f"{name}: dtype {t.dtype} differs from the cache's {key_cache.dtype}")
    if slot_mapping.shape != (key.shape[0],):
        raise ValueError(f"slot_mapping: expected shape [{key.shape[0]}], got {list(slot_mapping.shape)}")
    return reshape_and_cache_ref(key, value, key_cache, value_cache, slot_mapping)


def paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    block_tables: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                    scale: float, max_query_len: int, max_seq_len: int, window: int | None = None,
                    softcap: float | None = None) -> torch.Tensor:
    """Attention of each sequence's new queries over its paged context (causal at the end).

    Sequence i's queries (rows qsl[i]:qsl[i+1]) are the last positions of its seq_lens[i]
    tokens; each sees every cached token before it and the new ones up to itself. This one
    rule covers prefill, chunked prefill over a cached prefix, and decode.

    Args:
        query: [T, num_heads, head_dim]; num_heads a multiple of num_kv_heads (GQA).
        key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim].
        block_tables: [S, max_blocks] int32, padded with 0.
        seq_lens: [S] int32 context length of each sequence after this step.
        query_start_loc: [S+1] int32 cumulative new-token counts.
        scale: Softmax scale, usually head_dim ** -0.5.
        max_query_len, max_seq_len: Maxima over the batch (the GPU kernels pick tile sizes and
            split-KV with them, never correctness; the reference ignores them).
        window: Sliding window (Mistral, Gemma's local layers): the query at position p sees
            keys p - window + 1 .. p; blocks before every query's window are not read. None: all.
        softcap: Attention logit soft-capping (Gemma 2): softcap * tanh(scores / softcap).

    Returns:
        [T, num_heads, head_dim] in query's dtype.

    Raises:
        ValueError: shapes disagree (the message names the argument).
    """
    if select_ops(query.device, query.dtype).backend == "triton":
        from pagedllm_kernels import triton_paged_attention
        return triton_paged_attention.paged_attention(query, key_cache, value_cache, block_tables, seq_lens,
                                                      query_start_loc, scale, max_query_len, max_seq_len,
                                                      window=window, softcap=softcap)
    _check_cache(key_cache, value_cache)
    if query.dim() != 3 or query.shape[2] != key_cache.shape[3]:
        raise ValueError(f"query: expected [T, num_heads, {key_cache.shape[3]}], got {list(query.shape)}")
    if query.shape[1] % key_cache.shape[2] != 0:
        raise ValueError(f"query: {query.shape[1]} heads is not a multiple of {key_cache.shape[2]} kv heads")
    num_seqs = seq_lens.shape[0]
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs:
        raise ValueError(f"block_tables: expected [{num_seqs}, max_blocks], got {list(block_tables.shape)}")
    if query_start_loc.shape != (num_seqs + 1,):
        raise ValueError(f"query_start_loc: expected shape [{num_seqs + 1}], got {list(query_start_loc.shape)}")
    if window is not None and window < 1:
        raise ValueError(f"window: must be a positive number of tokens or None, got {window}")
    return paged_attention_ref(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, scale,
                               window, softcap)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`LlamaRMSNorm` over the last dim: float32 statistics, cast back, times the weight.

    bfloat16 CUDA tensors run one Triton kernel (the torch chain is eight launches); float32 and
    CPU tensors run the reference, so float32 stays bit-identical to transformers.
    """
    ops = select_ops(x.device, x.dtype)
    if ops.rms_norm is not rms_norm_ref:
        from pagedllm_kernels import triton_rms_norm
        return triton_rms_norm.rms_norm(x, weight, eps)
    return rms_norm_ref(x, weight, eps)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(`rms_norm(residual + x)`, `residual + x`): a decoder layer's residual add and next norm.

    The sum is rounded to x's dtype (HF's residual stream); bfloat16 CUDA tensors run one Triton
    kernel (torch runs nine), the rest the reference.
    """
    if select_ops(x.device, x.dtype).fused_add_rms_norm is not fused_add_rms_norm_ref:
        from pagedllm_kernels import triton_fused_add_rms_norm
        return triton_fused_add_rms_norm.fused_add_rms_norm(x, residual, weight, eps)
    return fused_add_rms_norm_ref(x, residual, weight, eps)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[..., 2I] (gate | up) -> [..., I] `silu(gate) * up`; one Triton kernel for bfloat16 CUDA."""
    if select_ops(gate_up.device, gate_up.dtype).silu_and_mul is not silu_and_mul_ref:
        from pagedllm_kernels import triton_silu_and_mul
        return triton_silu_and_mul.silu_and_mul(gate_up)
    return silu_and_mul_ref(gate_up)


def rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor,
           sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D] and k [T, Hk, D] rotated by position with the float32 [max_position, D // 2]
    tables; one Triton kernel for bfloat16 CUDA, bit-identical to the reference."""
    if select_ops(q.device, q.dtype).rotary is not REFERENCE_OPS.rotary:
        from pagedllm_kernels import triton_rotary
        return triton_rotary.rotary(q, k, positions, cos_cache, sin_cache)
    return rotary_ref(q, k, positions, cos_cache, sin_cache)


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    """Mixture-of-experts feed-forward: each token's top-k experts' down(silu(gate) * up), weighted.

    Args:
        x: [T, hidden]; w13: [E, 2I, hidden] (gate rows, then up rows); w2: [E, hidden, I];
        topk_weights: [T, K] routing weights; topk_ids: [T, K] distinct expert ids per row.

    Returns [T, hidden] in x's dtype: the Triton kernels for CUDA tensors, the reference else.

    Raises:
        ValueError: shapes, dtypes or devices disagree (names the argument).
    """
    if select_ops(x.device, x.dtype).backend == "triton":
        from pagedllm_kernels import triton_fused_moe
        return triton_fused_moe.fused_moe(x, w13, w2, topk_weights, topk_ids)
    num_experts = w13.shape[0]
    if w13.dim() != 3 or w2.dim() != 3 or w2.shape[:2] != (num_experts, x.shape[-1]) \
            or w13.shape[1:] != (2 * w2.shape[2], x.shape[-1]):
        raise ValueError(f"w13/w2: expected [E, 2I, hidden] and [E, hidden, I] with hidden={x.shape[-1]}, got "
                         f"{list(w13.shape)} and {list(w2.shape)}")
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"topk_ids/topk_weights: expected [{x.shape[0]}, K] each, got {list(topk_ids.shape)} "
                         f"and {list(topk_weights.shape)}")
    return fused_moe_ref(x, w13, w2, topk_weights, topk_ids)


def decode_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, ops: KernelOps,
                      device: torch.device | str) -> int:
    """The KV splits `ops.paged_attention` picks for a pure-decode batch (1 off the Triton path).

    The choice depends on the batch's longest context; a CUDA graph freezes it at capture, so the
    model runner captures one graph per value and replays the one this returns.
    """
    if ops.backend != "triton":
        return 1
    from pagedllm_kernels.triton_paged_attention import _num_sms, choose_num_splits

    return choose_num_splits(num_seqs, num_kv_heads, 1, max_seq_len, _num_sms(torch.device(device)))


def _check_cache(key_cache: torch.Tensor, value_cache: torch.Tensor) -> None:
    if key_cache.dim() != 4:
        raise ValueError(
            f"key_cache: expected [num_blocks, block_size, num_kv_heads, head_dim], got {list(key_cache.shape)}"
        )
    if not (key_cache.is_contiguous() and value_cache.is_contiguous()):
        raise ValueError("key_cache/value_cache: must be contiguous (kernels write them through flat views)")
    if value_cache.shape != key_cache.shape or value_cache.dtype != key_cache.dtype:
        raise ValueError(
            f"value_cache: {list(value_cache.shape)} {value_cache.dtype} differs from "
            f"key_cache {list(key_cache.shape)} {key_cache.dtype}"
        )
