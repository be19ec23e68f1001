"""Paged KV-cache kernels (`pagedllm.kernels`): OpenAI Triton for CUDA, a torch reference for the rest.

Each op has two implementations: an OpenAI Triton kernel for CUDA tensors (`triton_*.py`) and the
pure-torch reference (`reference.py`), which is the kernels' oracle and what CPU runs use.

Two ways in:

- `select_ops(device, dtype)` picks one implementation of every op, once, when the engine builds
  its model (`KernelOps`). The model calls those without checks on its hot path: the engine checks
  its KV cache once (`check_kv_cache`) and builds every per-step tensor itself, with the dtypes
  and layouts the kernels want (see `pagedllm.input_buffers`).
- `paged_attention`, `reshape_and_cache` and `rms_norm` below are the checked entry points for
  everyone else: they validate their arguments (ValueError naming the argument), then dispatch on
  the tensors' device.

`PAGEDLLM_ATTENTION=reference` makes CUDA take the reference too (A/B checks);
`PAGEDLLM_RMS_NORM=reference` does so for the norm alone. Both are read by `select_ops`.

NOTE: the Triton files are named `triton_*.py`, not `paged_attention.py`: importing a submodule
binds it as an attribute of this package, which would replace the function `paged_attention`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from pagedllm.kernels.reference import paged_attention_ref, reshape_and_cache_ref, rms_norm_ref

__all__ = ["KernelOps", "REFERENCE_OPS", "select_ops", "check_kv_cache", "reshape_and_cache", "paged_attention",
           "rms_norm", "decode_num_splits"]


@dataclass(frozen=True)
class KernelOps:
    """One implementation of each op, chosen once per model; called without argument checks.

    Attributes:
        backend: "triton" (CUDA kernels) or "reference" (torch).
        reshape_and_cache: (key, value, key_cache, value_cache, slot_mapping) -> None.
        paged_attention: (query, key_cache, value_cache, block_tables, seq_lens, query_start_loc,
            scale, max_query_len, max_seq_len) -> [T, num_heads, head_dim].
        rms_norm: (x, weight, eps) -> normalised x.
    """

    backend: str
    reshape_and_cache: Callable[..., None]
    paged_attention: Callable[..., torch.Tensor]
    rms_norm: Callable[..., torch.Tensor]


def _reference_attention(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc,
                         scale, max_query_len, max_seq_len):
    return paged_attention_ref(query, key_cache, value_cache, block_tables, seq_lens,
                               query_start_loc, scale)


REFERENCE_OPS = KernelOps("reference", reshape_and_cache_ref, _reference_attention, rms_norm_ref)
_triton_ops: KernelOps | None = None
_triton_import_error: ImportError | None = None


def _load_triton_ops() -> KernelOps | None:
    """The Triton launchers (imported once), or None where Triton does not import."""
    global _triton_ops, _triton_import_error
    if _triton_ops is None and _triton_import_error is None:
        try:
            from pagedllm.kernels import triton_paged_attention, triton_reshape_and_cache, triton_rms_norm
        except ImportError as e:  # no triton in this environment: the reference still works
            _triton_import_error = e
            warnings.warn(f"Triton does not import ({e}): CUDA attention runs the slow torch reference")
        else:
            _triton_ops = KernelOps("triton", triton_reshape_and_cache.launch,
                                    triton_paged_attention.launch, triton_rms_norm.launch)
    return _triton_ops


def select_ops(device: torch.device | str, dtype: torch.dtype) -> KernelOps:
    """The ops a model on `device` in `dtype` runs: the Triton kernels on CUDA, else the reference.

    RMSNorm takes the kernel for bfloat16 only: float32 keeps the reference, bit-identical to
    transformers, and float16 waits for its GPU test to pass with the corrected bound
    (tests/test_rms_norm_kernel.py).
    """
    device = torch.device(device)
    if device.type != "cuda" or os.environ.get("PAGEDLLM_ATTENTION", "").lower() == "reference":
        return REFERENCE_OPS
    triton_ops = _load_triton_ops()
    if triton_ops is None:
        return REFERENCE_OPS
    norm = triton_ops.rms_norm
    if dtype != torch.bfloat16 or os.environ.get("PAGEDLLM_RMS_NORM", "").lower() == "reference":
        norm = rms_norm_ref
    return KernelOps("triton", triton_ops.reshape_and_cache, triton_ops.paged_attention, norm)


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
        from pagedllm.kernels import triton_reshape_and_cache
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
                    scale: float, max_query_len: int, max_seq_len: int) -> torch.Tensor:
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

    Returns:
        [T, num_heads, head_dim] in query's dtype.

    Raises:
        ValueError: shapes disagree (the message names the argument).
    """
    if select_ops(query.device, query.dtype).backend == "triton":
        from pagedllm.kernels import triton_paged_attention
        return triton_paged_attention.paged_attention(query, key_cache, value_cache, block_tables, seq_lens,
                                                      query_start_loc, scale, max_query_len, max_seq_len)
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
    return paged_attention_ref(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, scale)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`LlamaRMSNorm` over the last dim: float32 statistics, cast back, times the weight.

    bfloat16 CUDA tensors run one Triton kernel (the torch chain is eight launches); float32 and
    CPU tensors run the reference, so float32 stays bit-identical to transformers.
    """
    ops = select_ops(x.device, x.dtype)
    if ops.rms_norm is not rms_norm_ref:
        from pagedllm.kernels import triton_rms_norm
        return triton_rms_norm.rms_norm(x, weight, eps)
    return rms_norm_ref(x, weight, eps)


def decode_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, ops: KernelOps,
                      device: torch.device | str) -> int:
    """The KV splits `ops.paged_attention` picks for a pure-decode batch (1 off the Triton path).

    The choice depends on the batch's longest context; a CUDA graph freezes it at capture, so the
    model runner captures one graph per value and replays the one this returns.
    """
    if ops.backend != "triton":
        return 1
    from pagedllm.kernels.triton_paged_attention import _num_sms, choose_num_splits

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
