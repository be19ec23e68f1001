"""ModelConfig: the few facts about a Hugging Face checkpoint that the engine needs.

Read straight from `config.json` (+ `generation_config.json`) so the engine never imports
`transformers`. Both config styles are accepted: the older `rope_theta` + `rope_scaling` keys
and the transformers-5 `rope_parameters` dict (Gemma 3's nested per layer type too). What only
some families have (sliding windows, Gemma's numerics, experts) is read by family_config.py.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from pagedllm.models.family_config import (GEMMA_ARCHITECTURES, GemmaOptions, MoeOptions, check_activation,
                                           gemma_options, moe_options, sliding_windows)

# The architectures (config.json's `architectures[0]`) that load; anything else fails at start-up.
SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MistralForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Phi3ForCausalLM",
    "Qwen3MoeForCausalLM",
    "MixtralForCausalLM",
)

# `model_type` -> architecture, for configs written without an `architectures` list.
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
}

# transformers' per-class defaults for keys an older config.json may leave out.
_DEFAULT_MAX_POSITIONS = {
    "LlamaForCausalLM": 2048,
    "Qwen2ForCausalLM": 32768,
    "Qwen3ForCausalLM": 32768,
    "MistralForCausalLM": 131072,
    "Gemma2ForCausalLM": 8192,
    "Gemma3ForCausalLM": 131072,
    "Phi3ForCausalLM": 4096,
    "Qwen3MoeForCausalLM": 32768,
    "MixtralForCausalLM": 131072,
}
_DEFAULT_HEAD_DIM = {"Qwen3ForCausalLM": 128, "Gemma2ForCausalLM": 256, "Gemma3ForCausalLM": 256}
_DEFAULT_EPS = {"Phi3ForCausalLM": 1e-5, "MixtralForCausalLM": 1e-5}
_DEFAULT_THETA = {"MixtralForCausalLM": 1e6, "Gemma3ForCausalLM": 1e6}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a supported model, independent of transformers.

    Attributes:
        architecture: One of SUPPORTED_ARCHITECTURES.
        attention_bias: Whether q/k/v projections have a bias (always true for Qwen2).
        qk_norm: Whether q and k get a per-head RMSNorm before rotary (Qwen3, Qwen3-MoE, Gemma 3).
        rope_scaling: None for plain RoPE, else a normalized dict: `rope_type` "llama3" and its
            four parameters, "linear" and its `factor`, or "longrope" (Phi-3) with its
            `short_factor`, `long_factor` (tuples), `original_max_position_embeddings` and
            `attention_factor`. Gemma 3: of the global layers.
        eos_token_ids: Ids that end generation; generation_config.json wins over config.json.
        torch_dtype: The checkpoint's declared dtype name, e.g. "bfloat16" (informational).
        attention_out_bias: Whether o_proj has a bias (`attention_bias` of Llama, Qwen3, Qwen3-MoE
            and Gemma; never Qwen2's).
        sliding_windows: Per layer, its sliding window in tokens, None for full attention
            (empty: no layer slides). The paged cache still holds every token of a sequence.
        gemma: Gemma 2 / 3 numerics; None for the other families.
        moe: The mixture-of-experts options (Qwen3-MoE, Mixtral); None for dense models.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    torch_dtype: str | None
    attention_out_bias: bool = False
    sliding_windows: tuple[int | None, ...] = ()
    gemma: GemmaOptions | None = None
    moe: MoeOptions | None = None

    def window(self, layer: int) -> int | None:
        """Layer `layer`'s sliding window, or None when it attends to its whole context."""
        return self.sliding_windows[layer] if self.sliding_windows else None

    @classmethod
    def from_dir(cls, model_dir: str) -> ModelConfig:
        """Reads `config.json` (+ `generation_config.json` if present) from a checkpoint dir.

        Raises:
            ValueError: the config is missing or unreadable, or describes a model we cannot
                run (architecture, rope type, activation, ...), naming the culprit.
        """
        raw = _read_json(os.path.join(model_dir, "config.json"), required=True)
        gen = _read_json(os.path.join(model_dir, "generation_config.json"), required=False) or {}
        return cls.from_hf_dict(raw, gen)

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], gen: dict[str, Any] | None = None) -> ModelConfig:
        """Builds a ModelConfig from parsed config.json / generation_config.json dicts."""
        gen = gen or {}
        arch = _architecture(raw)
        hidden = _required_int(raw, "hidden_size")
        heads = _required_int(raw, "num_attention_heads")
        layers = _required_int(raw, "num_hidden_layers")
        max_pos = int(raw.get("max_position_embeddings") or _DEFAULT_MAX_POSITIONS[arch])
        _check_supported_features(raw, arch)
        head_dim = int(raw.get("head_dim") or _DEFAULT_HEAD_DIM.get(arch, hidden // heads))
        (rope_theta, rope_scaling), local_rope = _rope_sets(raw, arch, max_pos, head_dim)
        bias = bool(raw.get("attention_bias", False)) and arch in _BIAS_ARCHITECTURES
        eos = gen.get("eos_token_id")
        if eos is None:
            eos = raw.get("eos_token_id")
        bos = gen.get("bos_token_id", raw.get("bos_token_id"))
        return cls(
            architecture=arch,
            vocab_size=_required_int(raw, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_required_int(raw, "intermediate_size"),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rms_norm_eps=float(raw.get("rms_norm_eps", _DEFAULT_EPS.get(arch, 1e-6))),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", arch in GEMMA_ARCHITECTURES)),
            attention_bias=True if arch == "Qwen2ForCausalLM" else bias,
            qk_norm=arch in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Gemma3ForCausalLM"),
            eos_token_ids=_int_tuple(eos, "eos_token_id"),
            bos_token_id=None if bos is None else int(bos),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
            attention_out_bias=bias and arch != "Qwen2ForCausalLM",
            sliding_windows=sliding_windows(raw, arch, layers),
            gemma=gemma_options(raw, arch, layers, local_rope),
            moe=moe_options(raw, arch, layers),
        )


# Families whose q/k/v (and o) projections have a bias when config.json sets `attention_bias`
# (Qwen2's q/k/v always have one, its o_proj never); the others have none whatever it says.
_BIAS_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM",
                       *GEMMA_ARCHITECTURES)


def _read_json(path: str, required: bool) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        if required:
            raise ValueError(f"{path} not found: a model directory needs a Hugging Face config.json")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _architecture(raw: dict[str, Any]) -> str:
    archs = raw.get("architectures")
    if archs:
        arch = archs[0] if isinstance(archs, list) else archs
    else:
        arch = _MODEL_TYPES.get(raw.get("model_type", ""), f"model_type={raw.get('model_type')!r}")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"architectures: {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


def _required_int(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"config.json: {key} must be a positive integer, got {value!r}")
    return value


def _int_tuple(value: Any, key: str) -> tuple[int, ...]:
    if value is None:
        return ()
    values = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{key} must be an int or a list of ints, got {value!r}")
    return tuple(values)


def _check_supported_features(raw: dict[str, Any], arch: str) -> None:
    """Rejects features the engine would silently get wrong (other MLPs, partial rotary)."""
    check_activation(raw, arch)
    if raw.get("mlp_bias", False):
        raise ValueError("config.json: mlp_bias=true is not supported")
    params = raw.get("rope_parameters") if isinstance(raw.get("rope_parameters"), dict) else {}
    partial = raw.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise ValueError(f"config.json: partial_rotary_factor={partial} is not supported (only 1.0)")


def _rope_sets(raw: dict[str, Any], arch: str, max_pos: int,
               head_dim: int) -> tuple[tuple[float, dict | None], tuple[float, dict | None]]:
    """((rope_theta, scaling) of the model, the same of Gemma 3's sliding layers).

    Gemma 3 keeps two rotaries: `rope_parameters` nested by layer type (transformers 5), or the
    older `rope_theta` (global) + `rope_local_base_freq` + `rope_scaling` (global only).
    """
    params = raw.get("rope_parameters")
    if arch == "Gemma3ForCausalLM":
        if isinstance(params, dict) and "full_attention" in params:
            full = _rope_from(params.get("full_attention") or {}, raw, arch, max_pos, head_dim)
            local = _rope_from(params.get("sliding_attention") or {"rope_theta": 10000.0}, raw, arch, max_pos,
                               head_dim)
            return full, local
        full = _rope(raw, arch, max_pos, head_dim)
        return full, (float(raw.get("rope_local_base_freq", 10000.0)), None)
    rope = _rope(raw, arch, max_pos, head_dim)
    return rope, rope


def _rope(raw: dict[str, Any], arch: str, max_pos: int, head_dim: int) -> tuple[float, dict | None]:
    """Returns (rope_theta, normalized rope_scaling or None) from either config style."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and ("rope_type" in params or "rope_theta" in params):
        return _rope_from(params, raw, arch, max_pos, head_dim)
    scaling = raw.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise ValueError(f"config.json: rope_scaling must be an object or null, got {scaling!r}")
    return _rope_from({"rope_theta": raw.get("rope_theta"), **(scaling or {})}, raw, arch, max_pos, head_dim)


def _rope_from(params: dict[str, Any], raw: dict[str, Any], arch: str, max_pos: int,
               head_dim: int) -> tuple[float, dict | None]:
    """(rope_theta, normalized scaling) of one rope parameter dict (rope_type + its keys)."""
    theta = params.get("rope_theta")
    theta = float(theta if theta is not None else raw.get("rope_theta") or _DEFAULT_THETA.get(arch, 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if arch == "Phi3ForCausalLM" and rope_type in ("su", "yarn"):  # transformers' Phi3Config renames both
        rope_type = "longrope"
    if rope_type == "default":
        return theta, None
    if rope_type == "linear":
        return theta, {"rope_type": "linear", "factor": _positive(params.get("factor"), "factor")}
    if rope_type == "longrope":
        return theta, _longrope(params, raw, max_pos, head_dim)
    if rope_type != "llama3":
        raise ValueError(f"config.json: rope_type {rope_type!r} is not supported "
                         "(only 'default', 'llama3', 'linear' and 'longrope')")
    missing = [k for k in _LLAMA3_KEYS if params.get(k) is None]
    if missing:
        raise ValueError(f"config.json: llama3 rope scaling is missing {', '.join(missing)}")
    normalized = {"rope_type": "llama3", **{k: float(params[k]) for k in _LLAMA3_KEYS}}
    normalized["original_max_position_embeddings"] = int(params["original_max_position_embeddings"])
    return theta, normalized


def _longrope(params: dict[str, Any], raw: dict[str, Any], max_pos: int, head_dim: int) -> dict:
    """Phi-3's LongRoPE, with transformers' defaults: `original_max_position_embeddings` from the
    top level first, `factor` = max / original, `attention_factor` = sqrt(1 + ln factor / ln original)."""
    original = int(raw.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
                   or max_pos)
    factors = {}
    for key in ("short_factor", "long_factor"):
        value = params.get(key)
        if not isinstance(value, (list, tuple)) or len(value) != head_dim // 2:
            raise ValueError(f"config.json: longrope {key} must be a list of head_dim // 2 = {head_dim // 2} "
                             f"numbers, got {value!r}")
        factors[key] = tuple(float(v) for v in value)
    factor = params.get("factor") or max_pos / original
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return {"rope_type": "longrope", **factors, "original_max_position_embeddings": original,
            "attention_factor": float(attention_factor)}


def _positive(value: Any, key: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"config.json: rope scaling {key} must be a positive number, got {value!r}")
    return float(value)
