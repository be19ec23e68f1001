"""ModelConfig: the few facts about a Hugging Face checkpoint that the engine needs.

Read straight from `config.json` (+ `generation_config.json`) so the engine never imports
`transformers`. Both config styles are accepted: the older `rope_theta` + `rope_scaling` keys
and the transformers-5 `rope_parameters` dict.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MistralForCausalLM",
)

# `model_type` -> architecture, for configs written without an `architectures` list.
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
}

# transformers' per-class defaults for keys an older config.json may leave out.
_DEFAULT_MAX_POSITIONS = {
    "LlamaForCausalLM": 2048,
    "Qwen2ForCausalLM": 32768,
    "Qwen3ForCausalLM": 32768,
    "MistralForCausalLM": 131072,
}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Llama-family model, independent of transformers.

    Attributes:
        architecture: One of SUPPORTED_ARCHITECTURES.
        attention_bias: Whether q/k/v projections have a bias (always true for Qwen2).
        qk_norm: Whether q and k get a per-head RMSNorm before rotary (Qwen3).
        rope_scaling: None for plain RoPE, else a normalized dict with `rope_type` "llama3"
            and its four parameters.
        eos_token_ids: Ids that end generation; generation_config.json wins over config.json.
        torch_dtype: The checkpoint's declared dtype name, e.g. "bfloat16" (informational).
        attention_out_bias: Whether o_proj has a bias (Llama/Qwen3 `attention_bias`, never Qwen2).
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

    @classmethod
    def from_dir(cls, model_dir: str) -> ModelConfig:
        """Reads `config.json` (+ `generation_config.json` if present) from a checkpoint dir.

        Raises:
            ValueError: the config is missing or unreadable, or describes a model we cannot
                run (architecture, rope type, sliding window, activation), naming the culprit.
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
        max_pos = int(raw.get("max_position_embeddings") or _DEFAULT_MAX_POSITIONS[arch])
        _check_supported_features(raw, arch, max_pos)
        rope_theta, rope_scaling = _rope(raw)
        default_head_dim = 128 if arch == "Qwen3ForCausalLM" else hidden // heads
        bias = bool(raw.get("attention_bias", False))
        eos = gen.get("eos_token_id")
        if eos is None:
            eos = raw.get("eos_token_id")
        bos = gen.get("bos_token_id", raw.get("bos_token_id"))
        return cls(
            architecture=arch,
            vocab_size=_required_int(raw, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_required_int(raw, "intermediate_size"),
            num_hidden_layers=_required_int(raw, "num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or default_head_dim),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=True if arch == "Qwen2ForCausalLM" else bias,
            qk_norm=arch == "Qwen3ForCausalLM",
            eos_token_ids=_int_tuple(eos, "eos_token_id"),
            bos_token_id=None if bos is None else int(bos),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
            attention_out_bias=bias and arch in ("LlamaForCausalLM", "Qwen3ForCausalLM"),
        )


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


def _check_supported_features(raw: dict[str, Any], arch: str, max_pos: int) -> None:
    """Rejects features the engine would silently get wrong (sliding window, other MLPs)."""
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"config.json: hidden_act {act!r} is not supported (only 'silu')")
    if raw.get("mlp_bias", False):
        raise ValueError("config.json: mlp_bias=true is not supported")
    if _has_sliding_window(raw, arch, max_pos):
        raise ValueError(
            f"config.json: sliding_window={raw.get('sliding_window')} < max_position_embeddings={max_pos}: "
            "sliding window attention is unsupported"
        )


def _has_sliding_window(raw: dict[str, Any], arch: str, max_pos: int) -> bool:
    # NOTE: MistralConfig defaults sliding_window to 4096 when the key is absent.
    window = raw.get("sliding_window", 4096 if arch == "MistralForCausalLM" else None)
    if window is None or window >= max_pos:
        return False
    if arch == "MistralForCausalLM":
        return True
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM") and raw.get("use_sliding_window", False):
        layer_types = raw.get("layer_types")
        if layer_types is not None:
            return "sliding_attention" in layer_types
        return int(raw.get("max_window_layers", 28)) < int(raw.get("num_hidden_layers", 0))
    return False


def _rope(raw: dict[str, Any]) -> tuple[float, dict | None]:
    """Returns (rope_theta, normalized rope_scaling or None) from either config style."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and ("rope_type" in params or "rope_theta" in params):
        theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
        scaling: dict | None = params
    else:
        theta = raw.get("rope_theta", 10000.0)
        scaling = raw.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise ValueError(f"config.json: rope_scaling must be an object or null, got {scaling!r}")
    rope_type = "default" if scaling is None else scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise ValueError(f"config.json: rope_type {rope_type!r} is not supported (only 'default' and 'llama3')")
    missing = [k for k in _LLAMA3_KEYS if scaling.get(k) is None]
    if missing:
        raise ValueError(f"config.json: llama3 rope scaling is missing {', '.join(missing)}")
    normalized = {"rope_type": "llama3", **{k: float(scaling[k]) for k in _LLAMA3_KEYS}}
    normalized["original_max_position_embeddings"] = int(scaling["original_max_position_embeddings"])
    return float(theta), normalized
