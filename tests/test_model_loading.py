"""ModelConfig parsing and safetensors loading of Llama-family checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pagedllm.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from pagedllm.models.registry import MODEL_CLASSES, load_model

CPU = torch.device("cpu")


def _copy_checkpoint(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


def _rewrite_tensors(model_dir: Path, tensors: dict[str, torch.Tensor]) -> None:
    for path in model_dir.glob("*.safetensors"):
        path.unlink()
    save_file(tensors, str(model_dir / "model.safetensors"))


def _edit_config(model_dir: Path, **changes) -> None:
    path = model_dir / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize("arch", ["llama", "llama-tied", "qwen2", "qwen3", "mistral"])
def test_config_matches_transformers(tiny_checkpoints, arch):
    from transformers import AutoConfig

    path = tiny_checkpoints[arch]
    ours, hf = ModelConfig.from_dir(path), AutoConfig.from_pretrained(path)
    assert ours.architecture == hf.architectures[0]
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings",
                  "tie_word_embeddings", "bos_token_id"):
        assert getattr(ours, field) == getattr(hf, field), field
    assert ours.rope_theta == hf.rope_parameters["rope_theta"]
    assert ours.eos_token_ids == (hf.eos_token_id,)
    assert ours.attention_bias == (arch == "qwen2")
    assert ours.qk_norm == (arch == "qwen3")
    assert ours.torch_dtype == "float32"


def test_llama3_rope_parsed_from_both_config_styles(tiny_checkpoints, tmp_path):
    new_style = ModelConfig.from_dir(tiny_checkpoints["llama"])
    expected = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64}
    assert new_style.rope_scaling == expected and new_style.rope_theta == 10000.0

    old = _copy_checkpoint(tiny_checkpoints["llama"], tmp_path / "old")
    raw = json.loads((old / "config.json").read_text())
    del raw["rope_parameters"]
    raw["rope_theta"] = 500000.0
    raw["rope_scaling"] = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 64}
    (old / "config.json").write_text(json.dumps(raw))
    old_style = ModelConfig.from_dir(str(old))
    assert old_style.rope_scaling == expected and old_style.rope_theta == 500000.0


@pytest.mark.parametrize("rope", [
    {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
    {"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
])
def test_unsupported_rope_type_is_rejected(tiny_checkpoints, tmp_path, rope):
    ckpt = _copy_checkpoint(tiny_checkpoints["llama"], tmp_path / "ckpt")
    _edit_config(ckpt, **rope)
    with pytest.raises(ValueError, match="rope_type"):
        ModelConfig.from_dir(str(ckpt))


def test_unsupported_architecture_lists_supported_ones(tiny_checkpoints, tmp_path):
    ckpt = _copy_checkpoint(tiny_checkpoints["llama"], tmp_path / "ckpt")
    _edit_config(ckpt, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match="GPT2LMHeadModel") as err:
        ModelConfig.from_dir(str(ckpt))
    assert all(arch in str(err.value) for arch in SUPPORTED_ARCHITECTURES)


def test_registry_covers_exactly_the_supported_architectures():
    assert set(MODEL_CLASSES) == set(SUPPORTED_ARCHITECTURES)


def test_mistral_sliding_window_applies_to_every_layer(tiny_checkpoints, tmp_path):
    ckpt = _copy_checkpoint(tiny_checkpoints["mistral"], tmp_path / "ckpt")
    _edit_config(ckpt, sliding_window=64, max_position_embeddings=256)
    config = ModelConfig.from_dir(str(ckpt))
    assert config.sliding_windows == (64, 64) and config.window(1) == 64
    raw = json.loads((ckpt / "config.json").read_text())
    del raw["sliding_window"]  # MistralConfig's default window
    (ckpt / "config.json").write_text(json.dumps(raw))
    assert ModelConfig.from_dir(str(ckpt)).sliding_windows == (4096, 4096)
    _edit_config(ckpt, sliding_window=0)
    with pytest.raises(ValueError, match="sliding_window"):
        ModelConfig.from_dir(str(ckpt))


def test_qwen2_sliding_layers_are_rejected(tiny_checkpoints, tmp_path):
    ckpt = _copy_checkpoint(tiny_checkpoints["qwen2"], tmp_path / "ckpt")
    _edit_config(ckpt, use_sliding_window=True, sliding_window=32, layer_types=["full_attention", "sliding_attention"])
    with pytest.raises(ValueError, match="sliding window attention is unsupported"):
        ModelConfig.from_dir(str(ckpt))


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_missing_or_garbled_config_names_the_file(tmp_path, content):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(ValueError, match="config.json"):
        ModelConfig.from_dir(str(tmp_path))


def test_missing_size_field_is_named(tiny_checkpoints, tmp_path):
    ckpt = _copy_checkpoint(tiny_checkpoints["llama"], tmp_path / "ckpt")
    _edit_config(ckpt, hidden_size=None)
    with pytest.raises(ValueError, match="hidden_size"):
        ModelConfig.from_dir(str(ckpt))


@pytest.mark.parametrize("gen_eos, expected", [([2, 7], (2, 7)), (9, (9,)), (None, (2,))])
def test_eos_ids_prefer_generation_config(tiny_checkpoints, tmp_path, gen_eos, expected):
    ckpt = _copy_checkpoint(tiny_checkpoints["llama"], tmp_path / "ckpt")
    if gen_eos is None:
        (ckpt / "generation_config.json").unlink()
    else:
        (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": gen_eos, "bos_token_id": 1}))
    assert ModelConfig.from_dir(str(ckpt)).eos_token_ids == expected


@pytest.mark.parametrize("arch", ["llama", "llama-tied", "qwen2", "qwen3", "mistral"])
def test_load_model_fills_fused_weights_from_checkpoint(tiny_checkpoints, arch):
    path = tiny_checkpoints[arch]
    config = ModelConfig.from_dir(path)
    model = load_model(path, config, torch.float32, CPU)
    tensors = _read_tensors(Path(path))
    attn = model.model.layers[1].self_attn
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    k_proj = tensors["model.layers.1.self_attn.k_proj.weight"]
    torch.testing.assert_close(attn.qkv_proj.weight[q : q + kv], k_proj, rtol=0, atol=0)
    up = model.model.layers[1].mlp.gate_up_proj.weight[config.intermediate_size :]
    torch.testing.assert_close(up, tensors["model.layers.1.mlp.up_proj.weight"], rtol=0, atol=0)
    if arch == "qwen2":
        v_bias = tensors["model.layers.1.self_attn.v_proj.bias"]
        assert v_bias.abs().sum() > 0
        torch.testing.assert_close(attn.qkv_proj.bias[q + kv :], v_bias, rtol=0, atol=0)
    if arch == "qwen3":
        k_norm = tensors["model.layers.1.self_attn.k_norm.weight"]
        torch.testing.assert_close(attn.k_norm.weight, k_norm, rtol=0, atol=0)
    if arch == "llama-tied":
        assert model.lm_head is None
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())


def test_load_model_converts_dtype_both_ways(tiny_checkpoints, tmp_path):
    path = tiny_checkpoints["llama"]
    config = ModelConfig.from_dir(path)
    bf16_model = load_model(path, config, torch.bfloat16, CPU)
    assert {p.dtype for p in bf16_model.parameters()} == {torch.bfloat16}

    ckpt = _copy_checkpoint(path, tmp_path / "bf16")
    tensors = {k: v.to(torch.bfloat16) for k, v in _read_tensors(ckpt).items()}
    _rewrite_tensors(ckpt, tensors)
    model = load_model(str(ckpt), config, torch.float32, CPU)
    embed = model.model.embed_tokens.weight
    assert embed.dtype == torch.float32
    torch.testing.assert_close(embed, tensors["model.embed_tokens.weight"].float(), rtol=0, atol=0)


def test_load_model_reads_sharded_checkpoints(tiny_checkpoints, tmp_path):
    ckpt = _copy_checkpoint(tiny_checkpoints["qwen3"], tmp_path / "sharded")
    tensors = _read_tensors(ckpt)
    names = sorted(tensors)
    (ckpt / "model.safetensors").unlink()
    save_file({n: tensors[n] for n in names[::2]}, str(ckpt / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in names[1::2]}, str(ckpt / "model-00002-of-00002.safetensors"))
    model = load_model(str(ckpt), ModelConfig.from_dir(str(ckpt)), torch.float32, CPU)
    torch.testing.assert_close(model.model.norm.weight, tensors["model.norm.weight"], rtol=0, atol=0)


def test_missing_weight_is_named(tiny_checkpoints, tmp_path):
    ckpt = _copy_checkpoint(tiny_checkpoints["llama"], tmp_path / "ckpt")
    tensors = _read_tensors(ckpt)
    del tensors["model.layers.1.mlp.down_proj.weight"]
    _rewrite_tensors(ckpt, tensors)
    with pytest.raises(ValueError, match=r"missing weights: model\.layers\.1\.mlp\.down_proj\.weight"):
        load_model(str(ckpt), ModelConfig.from_dir(str(ckpt)), torch.float32, CPU)


def test_unexpected_weight_is_named(tiny_checkpoints, tmp_path):
    ckpt = _copy_checkpoint(tiny_checkpoints["mistral"], tmp_path / "ckpt")
    tensors = _read_tensors(ckpt)
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    _rewrite_tensors(ckpt, tensors)
    with pytest.raises(ValueError, match=r"unexpected weights: model\.layers\.0\.self_attn\.q_proj\.bias"):
        load_model(str(ckpt), ModelConfig.from_dir(str(ckpt)), torch.float32, CPU)


def test_wrong_weight_shape_is_named(tiny_checkpoints, tmp_path):
    ckpt = _copy_checkpoint(tiny_checkpoints["llama"], tmp_path / "ckpt")
    tensors = _read_tensors(ckpt)
    tensors["model.layers.0.self_attn.o_proj.weight"] = torch.zeros(64, 32)
    _rewrite_tensors(ckpt, tensors)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.o_proj\.weight"):
        load_model(str(ckpt), ModelConfig.from_dir(str(ckpt)), torch.float32, CPU)


def test_tied_checkpoint_may_carry_a_copy_of_lm_head(tiny_checkpoints, tmp_path):
    ckpt = _copy_checkpoint(tiny_checkpoints["llama-tied"], tmp_path / "ckpt")
    tensors = _read_tensors(ckpt)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    _rewrite_tensors(ckpt, tensors)
    model = load_model(str(ckpt), ModelConfig.from_dir(str(ckpt)), torch.float32, CPU)
    assert model.lm_head is None


def test_directory_without_safetensors_is_rejected(tiny_checkpoints, tmp_path):
    ckpt = _copy_checkpoint(tiny_checkpoints["llama"], tmp_path / "ckpt")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="safetensors"):
        load_model(str(ckpt), ModelConfig.from_dir(str(ckpt)), torch.float32, CPU)
