"""Paged KV-cache kernels (`pagedllm_kernels`): OpenAI Triton for CUDA, a torch reference for the rest.

Each op has two implementations: an OpenAI Triton kernel for CUDA tensors (`triton_*.py`, each
with a launcher that checks its arguments and a `launch` that does not) and the pure-torch
reference (`reference.py`), which is the kernels' oracle and what CPU runs use.

`select_ops(device, dtype)` picks one implementation of every op, once, when the engine builds its
model (`KernelOps`). The model calls those without checks on its hot path: the engine checks its
KV cache once (`check_kv_cache`) and builds every per-step tensor itself, with the dtypes and
layouts the kernels want (see `pagedllm.input_buffers`).

NOTE: the Triton files are named `triton_*.py`, not `paged_attention.py`: importing a submodule
binds it as an attribute of this package, which would shadow an op of the same name.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from pagedllm_kernels.reference import (apply_rotary_ref, fused_add_rms_norm_ref, fused_moe_ref,
                                       paged_attention_ref, reshape_and_cache_ref, rms_norm_ref, rope_ref,
                                       silu_and_mul_ref)

__all__ = ["KernelOps", "REFERENCE_OPS", "select_ops", "check_kv_cache", "decode_num_splits"]


@dataclass(frozen=True)
class KernelOps:
    """One implementation of each op, chosen once per model; called without argument checks.

    Attributes:
        backend: "triton" (CUDA kernels) or "reference" (torch).
        reshape_and_cache: (key, value, key_cache, value_cache, slot_mapping) -> None.
        paged_attention: (query, key_cache, value_cache, block_tables, seq_lens, query_start_loc,
            scale, max_query_len, max_seq_len, window=None, softcap=None) -> [T, num_heads, head_dim]
            (window: a sliding window in tokens; softcap: Gemma 2's logit soft-capping).
        rms_norm: (x, weight, eps) -> normalised x.
        fused_add_rms_norm: (x, residual, weight, eps) -> (rms_norm(residual + x), residual + x).
        silu_and_mul: (gate_up [..., 2I]) -> silu(gate) * up [..., I].
        rope: (positions, cos_cache, sin_cache, dtype) -> what `rotary` reads, once per step.
        rotary: (q, k, rope) -> (q, k) rotated, new tensors.
        rotary_into_cache: (q, k, v, rope, key_cache, value_cache, slot_mapping) -> q rotated,
            with k rotated and v written into their cache slots: the layer's one KV-cache write.
        qk_norm_rotary: (q, k, v, q_weight, k_weight, eps, rope, key_cache, value_cache,
            slot_mapping) -> q: as `rotary_into_cache`, each head of q and k RMS-normalised first
            (Qwen3's q/k norms).
        fused_moe: (x, w13, w2, topk_weights, topk_ids) -> the mixture-of-experts feed-forward
            [T, hidden] (`reference.fused_moe_ref`'s contract).

    `rope` and `rotary` come as a pair: the reference gathers (cos, sin) once per step and each
    layer's `rotary` applies them (as transformers does); the kernel reads the float32 tables at
    each token's position itself, so its `rope` only passes them on (no launch per step). Where
    no kernel folds the last two, they are the ops above run one after the other
    (`_rotary_then_write`, `_norms_then`), in transformers' order.
    """

    backend: str
    reshape_and_cache: Callable[..., None]
    paged_attention: Callable[..., torch.Tensor]
    rms_norm: Callable[..., torch.Tensor]
    fused_add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[..., torch.Tensor]
    rope: Callable[..., tuple]
    rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rotary_into_cache: Callable[..., torch.Tensor]
    qk_norm_rotary: Callable[..., torch.Tensor]
    fused_moe: Callable[..., torch.Tensor]


def _rotary_then_write(rotary: Callable, reshape_and_cache: Callable) -> Callable[..., torch.Tensor]:
    """`rotary_into_cache` as two ops: the rotary, then the cache write."""
    def rotary_into_cache(q, k, v, rope, key_cache, value_cache, slot_mapping):
        q, k = rotary(q, k, rope)
        reshape_and_cache(k, v, key_cache, value_cache, slot_mapping)
        return q
    return rotary_into_cache


def _norms_then(rms_norm: Callable, rotary_into_cache: Callable) -> Callable[..., torch.Tensor]:
    """`qk_norm_rotary` as the q and k norms, then `rotary_into_cache`."""
    def qk_norm_rotary(q, k, v, q_weight, k_weight, eps, rope, key_cache, value_cache, slot_mapping):
        return rotary_into_cache(rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps), v, rope,
                                 key_cache, value_cache, slot_mapping)
    return qk_norm_rotary


def _reference_attention(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc,
                         scale, max_query_len, max_seq_len, window=None, softcap=None):
    return paged_attention_ref(query, key_cache, value_cache, block_tables, seq_lens,
                               query_start_loc, scale, window, softcap)


def _reference_rotary(q, k, rope):
    cos, sin = rope
    return apply_rotary_ref(q, cos, sin), apply_rotary_ref(k, cos, sin)


def _tables_rope(positions, cos_cache, sin_cache, dtype):
    return positions, cos_cache, sin_cache


def _make_ops(backend: str, reshape_and_cache, paged_attention, rms_norm, fused_add_rms_norm, silu_and_mul,
              rope, rotary, rotary_into_cache=None, qk_norm_rotary=None, fused_moe=fused_moe_ref) -> KernelOps:
    """KernelOps, with the folds that have no kernel here composed of the ops they fold."""
    rotary_into_cache = rotary_into_cache or _rotary_then_write(rotary, reshape_and_cache)
    qk_norm_rotary = qk_norm_rotary or _norms_then(rms_norm, rotary_into_cache)
    return KernelOps(backend, reshape_and_cache, paged_attention, rms_norm, fused_add_rms_norm,
                     silu_and_mul, rope, rotary, rotary_into_cache, qk_norm_rotary, fused_moe)


REFERENCE_OPS = _make_ops("reference", reshape_and_cache_ref, _reference_attention, rms_norm_ref,
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


def select_ops(device: torch.device | str, dtype: torch.dtype, backend: str = "auto") -> KernelOps:
    """The ops a model on `device` in `dtype` runs: the Triton kernels on CUDA, else the reference.

    On CUDA the paged attention, the KV-cache write and the mixture-of-experts feed-forward are
    always the kernels (the reference MoE loops over experts with data-dependent shapes, which a
    CUDA graph cannot hold). The elementwise
    ops (the norms, silu_and_mul, the rotary embedding and its folds with the q/k norms and the
    cache write) take their kernels for bfloat16 only: float32 keeps the references,
    bit-identical to transformers, and float16 waits for the kernels' GPU tests to pass
    (tests/test_rms_norm_kernel.py, tests/test_fused_kernels.py).

    Args:
        backend: "auto", or "reference" for the torch reference everywhere (for head sizes the
            Triton kernels do not take, and to check the kernels against it).
    """
    if backend not in ("auto", "reference"):
        raise ValueError(f"kernel_backend must be 'auto' or 'reference', got {backend!r}")
    if torch.device(device).type != "cuda" or backend == "reference":
        return REFERENCE_OPS
    t = _load_triton_ops()
    if t is None:
        return REFERENCE_OPS
    if dtype == torch.bfloat16:
        return t
    r = REFERENCE_OPS
    return _make_ops("triton", t.reshape_and_cache, t.paged_attention, r.rms_norm, r.fused_add_rms_norm,
                     r.silu_and_mul, r.rope, r.rotary, fused_moe=t.fused_moe)


def check_kv_cache(kv_cache: torch.Tensor, ops: KernelOps) -> None:
    """One layer's cache, [2, num_blocks, block_size, num_kv_heads, head_dim], checked once.

    The Triton kernels take even head sizes in [16, 256], padded to a power of 2 inside them
    (`triton_reshape_and_cache.check_head_dim`); the reference takes any.

    Raises:
        ValueError: a layout or head size the chosen kernels cannot take (names the problem).
    """
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2 or not kv_cache.is_contiguous():
        raise ValueError(f"kv_cache: expected a contiguous [2, num_blocks, block_size, num_kv_heads, "
                         f"head_dim], got {list(kv_cache.shape)}")
    if ops.backend == "triton":
        from pagedllm_kernels.triton_reshape_and_cache import check_head_dim

        try:
            check_head_dim(kv_cache.shape[4], "kv_cache")
        except ValueError as e:
            raise ValueError(f"{e}; set kernel_backend='reference'") from None


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
