"""The parts of config.json that only some model families have, read into typed options.

`ModelConfig.from_hf_dict` (config.py) reads what every family shares and calls these for the
rest: which layers attend through a sliding window, Gemma's numerics, the mixture-of-experts
routing. Each reader follows the transformers config class's defaults for keys an older
config.json leaves out, and raises ValueError naming the key it cannot run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GEMMA_ARCHITECTURES = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")
MOE_ARCHITECTURES = ("Qwen3MoeForCausalLM", "MixtralForCausalLM")
# Families whose every layer slides when config.json sets `sliding_window` (Qwen3-MoE: and
# `use_sliding_window`); MistralConfig's default window when the key is absent.
_ALL_LAYERS_SLIDE = ("MistralForCausalLM", "MixtralForCausalLM", "Phi3ForCausalLM", "Qwen3MoeForCausalLM")
_DEFAULT_WINDOW = {"MistralForCausalLM": 4096}
# Gemma's layer pattern when config.json has no `layer_types`: every n-th layer is global.
_DEFAULT_PATTERN = {"Gemma2ForCausalLM": 2, "Gemma3ForCausalLM": 6}


@dataclass(frozen=True)
class GemmaOptions:
    """Gemma 2 / Gemma 3 numerics (the embedding is always scaled by sqrt(hidden_size)).

    Attributes:
        query_pre_attn_scalar: the softmax scale is its inverse square root (not head_dim's).
        attn_logit_softcapping: Gemma 2's attention soft cap; None for Gemma 3, whose
            transformers attention never applies the key.
        final_logit_softcapping: soft cap of the output logits, or None.
        local_rope_theta: rope_theta of the sliding-window layers (Gemma 3's `sliding_attention`
            rope parameters); the global layers use ModelConfig.rope_theta / rope_scaling.
        local_rope_scaling: their rope scaling (normalized like ModelConfig.rope_scaling), or None.
        local_layers: per layer, whether its type is `sliding_attention` (it takes the local
            rotary, and the window when config.json sets one).
    """

    query_pre_attn_scalar: float
    attn_logit_softcapping: float | None
    final_logit_softcapping: float | None
    local_rope_theta: float
    local_rope_scaling: dict | None
    local_layers: tuple[bool, ...]


@dataclass(frozen=True)
class MoeOptions:
    """Mixture-of-experts feed-forward: each token runs `top_k` of `num_experts` SwiGLU experts.

    Attributes:
        num_experts: experts per MoE layer.
        top_k: experts per token (`num_experts_per_tok`).
        intermediate_size: each expert's hidden size (Qwen3-MoE's `moe_intermediate_size`,
            Mixtral's `intermediate_size`).
        renormalize: whether the top-k softmax probabilities are divided by their sum (always
            for Mixtral, `norm_topk_prob` for Qwen3-MoE).
        sparse_layers: per layer, whether its feed-forward is the MoE block (Qwen3-MoE's
            `mlp_only_layers` / `decoder_sparse_step` keep some dense).
    """

    num_experts: int
    top_k: int
    intermediate_size: int
    renormalize: bool
    sparse_layers: tuple[bool, ...]


def check_activation(raw: dict[str, Any], arch: str) -> None:
    """Gemma's MLP is GeGLU (tanh-approximated GELU), every other family's SwiGLU."""
    if arch in GEMMA_ARCHITECTURES:
        act = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
        if act != "gelu_pytorch_tanh":
            raise ValueError(f"config.json: hidden_activation {act!r} is not supported for {arch} "
                             "(only 'gelu_pytorch_tanh')")
        return
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"config.json: hidden_act {act!r} is not supported (only 'silu')")


def sliding_windows(raw: dict[str, Any], arch: str, num_layers: int) -> tuple[int | None, ...]:
    """Per layer, its sliding window in tokens (None: full causal attention).

    Raises:
        ValueError: a window the engine cannot run (Qwen2/Qwen3's partial sliding layers, a
            non-positive window, a `layer_types` list of the wrong length or with unknown types).
    """
    window = raw.get("sliding_window", _DEFAULT_WINDOW.get(arch))
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        raise ValueError(f"config.json: sliding_window must be a positive integer or null, got {window!r}")
    if arch in GEMMA_ARCHITECTURES:
        if raw.get("use_bidirectional_attention"):
            raise ValueError("config.json: use_bidirectional_attention=true is not supported (causal LM only)")
        return tuple(window if t == "sliding_attention" else None for t in _gemma_layer_types(raw, arch, num_layers))
    if arch in _ALL_LAYERS_SLIDE:
        if arch == "Qwen3MoeForCausalLM" and not raw.get("use_sliding_window", False):
            window = None
        return (window,) * num_layers
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM") and raw.get("use_sliding_window", False) and window:
        layer_types = raw.get("layer_types")
        sliding = ("sliding_attention" in layer_types if layer_types is not None
                   else int(raw.get("max_window_layers", 28)) < num_layers)
        if sliding:
            raise ValueError(f"config.json: sliding_window={window} with use_sliding_window: sliding window "
                             f"attention is unsupported for {arch}")
    return (None,) * num_layers


def _gemma_layer_types(raw: dict[str, Any], arch: str, num_layers: int) -> list[str]:
    types = raw.get("layer_types")
    if types is None:
        pattern = int(raw.get("sliding_window_pattern", _DEFAULT_PATTERN[arch]))
        return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers)]
    if len(types) != num_layers or not set(types) <= {"sliding_attention", "full_attention"}:
        raise ValueError(f"config.json: layer_types must list 'sliding_attention' or 'full_attention' for each "
                         f"of the {num_layers} layers, got {types!r}")
    return list(types)


def gemma_options(raw: dict[str, Any], arch: str, num_layers: int,
                  local_rope: tuple[float, dict | None]) -> GemmaOptions | None:
    """Gemma's options (None for the other families); `local_rope` = the sliding layers' rope."""
    if arch not in GEMMA_ARCHITECTURES:
        return None
    scalar = raw.get("query_pre_attn_scalar", 256)
    if not isinstance(scalar, (int, float)) or scalar <= 0:
        raise ValueError(f"config.json: query_pre_attn_scalar must be a positive number, got {scalar!r}")
    attn_cap = raw.get("attn_logit_softcapping", 50.0 if arch == "Gemma2ForCausalLM" else None)
    final_cap = raw.get("final_logit_softcapping", 30.0 if arch == "Gemma2ForCausalLM" else None)
    for key, cap in (("attn_logit_softcapping", attn_cap), ("final_logit_softcapping", final_cap)):
        if cap is not None and (not isinstance(cap, (int, float)) or cap <= 0):
            raise ValueError(f"config.json: {key} must be a positive number or null, got {cap!r}")
    return GemmaOptions(
        query_pre_attn_scalar=float(scalar),
        # NOTE: transformers' Gemma 3 attention never passes the key on: neither do we.
        attn_logit_softcapping=None if arch == "Gemma3ForCausalLM" or attn_cap is None else float(attn_cap),
        final_logit_softcapping=None if final_cap is None else float(final_cap),
        local_rope_theta=local_rope[0],
        local_rope_scaling=local_rope[1],
        local_layers=tuple(t == "sliding_attention" for t in _gemma_layer_types(raw, arch, num_layers)),
    )


def moe_options(raw: dict[str, Any], arch: str, num_layers: int) -> MoeOptions | None:
    """The MoE options of Qwen3-MoE and Mixtral (None for the dense families)."""
    if arch not in MOE_ARCHITECTURES:
        return None
    # Qwen3-MoE's config.json says num_experts (transformers 5 saves num_local_experts), Mixtral's
    # num_local_experts.
    experts_key = "num_experts" if "num_experts" in raw else "num_local_experts"
    num_experts = raw.get(experts_key)
    top_k = raw.get("num_experts_per_tok")
    size_key = "moe_intermediate_size" if arch == "Qwen3MoeForCausalLM" else "intermediate_size"
    size = raw.get(size_key)
    for key, value in ((experts_key, num_experts), ("num_experts_per_tok", top_k), (size_key, size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"config.json: {key} must be a positive integer, got {value!r}")
    if top_k > num_experts:
        raise ValueError(f"config.json: num_experts_per_tok={top_k} exceeds the {num_experts} experts")
    if arch == "MixtralForCausalLM":
        return MoeOptions(num_experts, top_k, size, True, (True,) * num_layers)
    step = int(raw.get("decoder_sparse_step", 1))
    if step < 1:
        raise ValueError(f"config.json: decoder_sparse_step must be >= 1, got {step}")
    dense = set(raw.get("mlp_only_layers") or ())
    sparse = tuple(i not in dense and (i + 1) % step == 0 for i in range(num_layers))
    return MoeOptions(num_experts, top_k, size, bool(raw.get("norm_topk_prob", False)), sparse)
