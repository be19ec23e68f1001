"""config.json of the families beyond Llama: what ModelConfig reads against what transformers
reads, the older config styles, what is refused (ValueError naming the key), the stacked and
fused weights the loader fills, and the LongRoPE tables against transformers' rotary."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pagedllm.layers.long_rope import long_rope_tables
from pagedllm.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from pagedllm.models.registry import load_model
from pagedllm_tools.family_models import FAMILY_ARCHS, PHI3_ORIGINAL_MAX_POSITIONS

CPU = torch.device("cpu")


def _raw(model_dir: str) -> dict:
    return json.loads(Path(model_dir, "config.json").read_text())


def _tensors(model_dir: str) -> dict[str, torch.Tensor]:
    with safe_open(str(Path(model_dir, "model.safetensors")), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


@pytest.mark.parametrize("arch", FAMILY_ARCHS)
def test_config_matches_transformers(family_checkpoints, arch):
    from transformers import AutoConfig, AutoModelForCausalLM

    path = family_checkpoints[arch]
    ours, hf = ModelConfig.from_dir(path), AutoConfig.from_pretrained(path)
    assert ours.architecture == hf.architectures[0] and ours.architecture in SUPPORTED_ARCHITECTURES
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(ours, field) == getattr(hf, field), field
    model = AutoModelForCausalLM.from_config(hf)
    attn = [layer.self_attn for layer in model.model.layers]
    assert ours.head_dim == attn[0].head_dim
    # Per layer: Gemma's attention keeps its own window; the others read the config's.
    assert ours.sliding_windows == tuple(getattr(a, "sliding_window", hf.sliding_window) for a in attn)
    assert ours.qk_norm == hasattr(attn[0], "q_norm")
    if ours.gemma is not None:
        assert attn[0].scaling == ours.gemma.query_pre_attn_scalar**-0.5
        assert ours.gemma.final_logit_softcapping == hf.final_logit_softcapping
        assert ours.gemma.attn_logit_softcapping == getattr(attn[0], "attn_logit_softcapping", None)
    if ours.moe is not None:
        blocks = [getattr(layer, "mlp", None) or layer.block_sparse_moe for layer in model.model.layers]
        sparse = tuple(hasattr(b, "experts") for b in blocks)
        assert ours.moe.sparse_layers == sparse
        router = blocks[sparse.index(True)].gate
        assert (ours.moe.num_experts, ours.moe.top_k) == (router.num_experts, router.top_k)
        assert ours.moe.intermediate_size == blocks[sparse.index(True)].experts.intermediate_dim
        assert ours.moe.renormalize == getattr(router, "norm_topk_prob", True)


def test_gemma3_rope_per_layer_type(family_checkpoints):
    config = ModelConfig.from_dir(family_checkpoints["gemma3"])
    assert (config.rope_theta, config.rope_scaling) == (1e6, {"rope_type": "linear", "factor": 4.0})
    assert (config.gemma.local_rope_theta, config.gemma.local_rope_scaling) == (1e4, None)
    assert config.sliding_windows == (16, 16, None, 16)
    assert config.gemma.local_layers == (True, True, False, True)


def test_gemma3_older_config_style(family_checkpoints):
    raw = _raw(family_checkpoints["gemma3"])
    for key in ("rope_parameters", "layer_types"):
        del raw[key]
    raw.update(rope_theta=1e6, rope_local_base_freq=1e4, rope_scaling={"rope_type": "linear", "factor": 8.0},
               sliding_window_pattern=2, num_hidden_layers=4)
    config = ModelConfig.from_hf_dict(raw)
    assert config.rope_scaling == {"rope_type": "linear", "factor": 8.0} and config.gemma.local_rope_theta == 1e4
    assert config.sliding_windows == (16, None, 16, None)


def test_gemma2_defaults_alternate_layers(family_checkpoints):
    raw = _raw(family_checkpoints["gemma2"])
    for key in ("layer_types", "attn_logit_softcapping", "final_logit_softcapping", "tie_word_embeddings"):
        del raw[key]
    config = ModelConfig.from_hf_dict(raw)
    assert config.sliding_windows == (16, None, 16, None)
    assert (config.gemma.attn_logit_softcapping, config.gemma.final_logit_softcapping) == (50.0, 30.0)
    assert config.tie_word_embeddings


def test_phi3_su_rope_scaling_with_top_level_original_length(family_checkpoints):
    raw = _raw(family_checkpoints["phi3"])
    params = raw.pop("rope_parameters")
    raw.update(rope_theta=params["rope_theta"], original_max_position_embeddings=32,
               rope_scaling={"type": "su", "short_factor": params["short_factor"],
                             "long_factor": params["long_factor"]})
    scaling = ModelConfig.from_hf_dict(raw).rope_scaling
    assert scaling["rope_type"] == "longrope" and scaling["original_max_position_embeddings"] == 32
    assert scaling["attention_factor"] == pytest.approx((1 + torch.log(torch.tensor(1024 / 32)).item()
                                                         / torch.log(torch.tensor(32.0)).item()) ** 0.5)


def test_qwen3_moe_layer_sparsity_and_sliding_switch(family_checkpoints):
    raw = _raw(family_checkpoints["qwen3-moe"])
    raw.pop("num_local_experts")
    raw.update(num_experts=8, mlp_only_layers=[], decoder_sparse_step=2, sliding_window=16)
    config = ModelConfig.from_hf_dict(raw)
    assert config.moe.num_experts == 8 and config.moe.sparse_layers == (False, True, False)
    assert config.sliding_windows == (None, None, None)  # use_sliding_window is false
    raw["use_sliding_window"] = True
    assert ModelConfig.from_hf_dict(raw).sliding_windows == (16, 16, 16)


@pytest.mark.parametrize("arch, changes, match", [
    ("gemma2", dict(hidden_activation="gelu"), "hidden_activation"),
    ("gemma3", dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
    ("gemma2", dict(layer_types=["sliding_attention"]), "layer_types"),
    ("gemma2", dict(query_pre_attn_scalar=0), "query_pre_attn_scalar"),
    ("phi3", dict(partial_rotary_factor=0.75), "partial_rotary_factor"),
    ("phi3", dict(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0],
                                   "long_factor": [1.0] * 8}), "short_factor"),
    ("mixtral", dict(num_experts_per_tok=9), "num_experts_per_tok"),
    ("qwen3-moe", dict(moe_intermediate_size=None), "moe_intermediate_size"),
    ("mixtral", dict(hidden_act="gelu"), "hidden_act"),
    ("mistral-sliding", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "rope_type"),
])
def test_unsupported_settings_are_named(family_checkpoints, arch, changes, match):
    raw = {**_raw(family_checkpoints[arch]), **changes}
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf_dict(raw)


@pytest.mark.parametrize("arch, prefix, names", [
    ("qwen3-moe", "mlp", ("gate_proj", "up_proj", "down_proj")),
    ("mixtral", "block_sparse_moe", ("w1", "w3", "w2")),
])
def test_expert_tensors_fill_the_stacked_parameters(family_checkpoints, arch, prefix, names):
    path = family_checkpoints[arch]
    config = ModelConfig.from_dir(path)
    model = load_model(path, config, torch.float32, CPU)
    tensors = _tensors(path)
    inter = config.moe.intermediate_size
    block = model.model.layers[0].mlp
    assert torch.equal(block.gate.weight, tensors[f"model.layers.0.{prefix}.gate.weight"])
    for e in range(config.moe.num_experts):
        gate, up, down = (tensors[f"model.layers.0.{prefix}.experts.{e}.{n}.weight"] for n in names)
        assert torch.equal(block.w13[e, :inter], gate) and torch.equal(block.w13[e, inter:], up)
        assert torch.equal(block.w2[e], down)


def test_a_missing_expert_tensor_is_named(family_checkpoints, tmp_path):
    path = Path(shutil.copytree(family_checkpoints["mixtral"], tmp_path / "ckpt"))
    tensors = _tensors(str(path))
    del tensors["model.layers.1.block_sparse_moe.experts.5.w3.weight"]
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing weights: model\.layers\.1\.block_sparse_moe\.experts\.5\.w3"):
        load_model(str(path), ModelConfig.from_dir(str(path)), torch.float32, CPU)


def test_phi3_fused_tensors_load_whole(family_checkpoints):
    path = family_checkpoints["phi3"]
    model = load_model(path, ModelConfig.from_dir(path), torch.float32, CPU)
    tensors = _tensors(path)
    layer = model.model.layers[1]
    assert torch.equal(layer.self_attn.qkv_proj.weight, tensors["model.layers.1.self_attn.qkv_proj.weight"])
    assert torch.equal(layer.mlp.gate_up_proj.weight, tensors["model.layers.1.mlp.gate_up_proj.weight"])


def test_long_rope_tables_match_transformers_call_by_call(family_checkpoints):
    """Each position alone, as transformers rotates a decode step: short factors below the
    original length, long ones from it on, cos/sin scaled by the attention factor."""
    from transformers import AutoConfig
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    path = family_checkpoints["phi3"]
    config = ModelConfig.from_dir(path)
    cos, sin = long_rope_tables(config.head_dim, config.max_position_embeddings, config.rope_theta,
                                config.rope_scaling)
    hf = Phi3RotaryEmbedding(AutoConfig.from_pretrained(path))
    half = config.head_dim // 2
    x = torch.zeros(1, 1, config.head_dim)
    for p in range(PHI3_ORIGINAL_MAX_POSITIONS - 3, PHI3_ORIGINAL_MAX_POSITIONS + 5):
        hf_cos, hf_sin = hf(x, torch.tensor([[p]]))
        assert torch.equal(cos[p], hf_cos[0, 0, :half]) and torch.equal(sin[p], hf_sin[0, 0, :half]), p
    hf_cos, _ = hf(x, torch.arange(PHI3_ORIGINAL_MAX_POSITIONS)[None])  # a prompt of the original length
    assert torch.equal(cos[:PHI3_ORIGINAL_MAX_POSITIONS], hf_cos[0, :, :half])
