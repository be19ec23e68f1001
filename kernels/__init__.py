"""Paged KV-cache kernels: the public entry points the attention layer calls.

Each entry point checks its arguments once, then dispatches on the tensors' device: CUDA
tensors run the OpenAI Triton kernels (`kernels.triton_paged_attention`,
`kernels.triton_reshape_and_cache`, `kernels.triton_rms_norm`), everything else the pure-torch
reference (`kernels.reference`). `PAGEDLLM_ATTENTION=reference` forces the reference on CUDA too
(for A/B checks); `PAGEDLLM_RMS_NORM=reference` does so for the norm alone.

NOTE: the Triton files are named `triton_*.py`, not `paged_attention.py`: importing a
submodule binds it as an attribute of this package, which would replace the public
function `kernels.paged_attention` with the module.
"""

from __future__ import annotations

import os
import types
import warnings

import torch

from kernels.reference import paged_attention_ref, reshape_and_cache_ref, rms_norm_ref

__all__ = ["reshape_and_cache", "paged_attention", "rms_norm", "uses_triton", "decode_num_splits"]

_triton_kernels: types.SimpleNamespace | None = None
_triton_import_error: Exception | None = None


def _triton_backend(tensor: torch.Tensor) -> types.SimpleNamespace | None:
    """Returns the Triton kernels to use for `tensor`, or None for the reference.

    CUDA tensors get the Triton launchers when Triton imports (the import is tried once and
    cached) and `PAGEDLLM_ATTENTION` is not `reference`; CPU tensors always get the reference.
    """
    global _triton_kernels, _triton_import_error
    if not tensor.is_cuda or os.environ.get("PAGEDLLM_ATTENTION", "").lower() == "reference":
        return None
    if _triton_kernels is None and _triton_import_error is None:
        try:
            from kernels.triton_paged_attention import paged_attention as triton_paged_attention
            from kernels.triton_reshape_and_cache import reshape_and_cache as triton_reshape_and_cache
            from kernels.triton_rms_norm import rms_norm as triton_rms_norm
        except ImportError as e:  # no triton in this environment: the reference still works
            _triton_import_error = e
            warnings.warn(f"Triton does not import ({e}): CUDA attention runs the slow torch reference")
        else:
            _triton_kernels = types.SimpleNamespace(
                reshape_and_cache=triton_reshape_and_cache, paged_attention=triton_paged_attention,
                rms_norm=triton_rms_norm,
            )
    return _triton_kernels


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Writes this step's keys/values into the paged cache, in place.

    Args:
        key, value: [T, num_kv_heads, head_dim] for the T new tokens.
        key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim].
        slot_mapping: [T] int64 flat slot (block_id * block_size + offset) per token;
            -1 marks a token that must not be written (padding).

    Raises:
        ValueError: shapes or dtypes disagree (the message names the argument).
    """
    _check_cache(key_cache, value_cache)
    for name, t in (("key", key), ("value", value)):
        if t.dim() != 3 or t.shape[1:] != key_cache.shape[2:]:
            raise ValueError(f"{name}: expected [T, {key_cache.shape[2]}, {key_cache.shape[3]}], got {list(t.shape)}")
        if t.dtype != key_cache.dtype:
            raise ValueError(f"{name}: dtype {t.dtype} differs from the cache's {key_cache.dtype}")
    if slot_mapping.shape != (key.shape[0],):
        raise ValueError(f"slot_mapping: expected shape [{key.shape[0]}], got {list(slot_mapping.shape)}")
    backend = _triton_backend(key)
    if backend is not None:
        return backend.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    return reshape_and_cache_ref(key, value, key_cache, value_cache, slot_mapping)


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    max_query_len: int,
    max_seq_len: int,
) -> torch.Tensor:
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
    backend = _triton_backend(query)
    if backend is not None:
        return backend.paged_attention(
            query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, scale, max_query_len, max_seq_len
        )
    return paged_attention_ref(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, scale)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`LlamaRMSNorm` over the last dim: float32 statistics, cast back, times the weight.

    bfloat16 CUDA tensors run one Triton kernel (the torch chain is eight launches); float32 and
    CPU tensors run the reference, so float32 stays bit-identical to transformers. float16 runs
    the reference too: the kernel's fp16 GPU test (tests/test_rms_norm_kernel.py) has not yet
    passed with its corrected bound.
    """
    if x.dtype == torch.bfloat16 and weight.dtype == x.dtype \
            and os.environ.get("PAGEDLLM_RMS_NORM", "").lower() != "reference":
        backend = _triton_backend(x)
        if backend is not None:
            return backend.rms_norm(x, weight, eps)
    return rms_norm_ref(x, weight, eps)


def uses_triton(device: torch.device | str) -> bool:
    """Whether tensors on `device` run the Triton kernels (else the torch reference)."""
    return _triton_backend(torch.empty(0, device=device)) is not None


def decode_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, device: torch.device | str) -> int:
    """The KV splits `paged_attention` picks for a pure-decode batch on `device` (1 off the Triton path).

    The choice depends on the batch's longest context; a CUDA graph freezes it at capture, so the
    model runner captures one graph per value and replays the one this returns.
    """
    device = torch.device(device)
    if not uses_triton(device):
        return 1
    from kernels.triton_paged_attention import _num_sms, choose_num_splits

    return choose_num_splits(num_seqs, num_kv_heads, 1, max_seq_len, _num_sms(device))


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
