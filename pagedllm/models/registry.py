"""Architecture name -> model class, and loading a checkpoint's safetensors into it.

Weights are read with the `safetensors` library directly (no transformers), converted to
the requested dtype, and copied into the model's (possibly fused) parameters following the
model's `checkpoint_targets()`.
"""

from __future__ import annotations

import glob
import os

import torch
from safetensors import safe_open
from torch import nn

from pagedllm_kernels import KernelOps, select_ops
from pagedllm.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from pagedllm.models.gemma import GemmaForCausalLM
from pagedllm.models.llama import LlamaForCausalLM, WeightTarget
from pagedllm.models.mixtral import MixtralForCausalLM
from pagedllm.models.phi3 import Phi3ForCausalLM
from pagedllm.models.qwen3_moe import Qwen3MoeForCausalLM

# Every architecture in SUPPORTED_ARCHITECTURES, and the class that runs it.
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Gemma2ForCausalLM": GemmaForCausalLM,
    "Gemma3ForCausalLM": GemmaForCausalLM,
    "Phi3ForCausalLM": Phi3ForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
    "MixtralForCausalLM": MixtralForCausalLM,
}

# Tensors some checkpoints carry that the model does not need (derived or duplicated).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def load_model(model_dir: str, config: ModelConfig, dtype: torch.dtype, device: torch.device,
               ops: KernelOps | None = None) -> nn.Module:
    """Builds the model for `config.architecture` and loads every `*.safetensors` in model_dir.

    Args:
        model_dir: A Hugging Face checkpoint directory.
        config: `ModelConfig.from_dir(model_dir)`.
        dtype: Dtype to run in; checkpoint tensors are converted to it.
        device: Where the weights live.
        ops: The kernels the model runs; None: `select_ops(device, dtype)` (tests pass others).

    Returns:
        The model in eval mode with no gradients.

    Raises:
        ValueError: unsupported architecture, no safetensors files, or weights that are
            missing, unexpected or of the wrong shape (named in the message).
    """
    cls = MODEL_CLASSES.get(config.architecture)
    if cls is None:
        raise ValueError(
            f"architecture: {config.architecture!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise ValueError(f"model_dir: no *.safetensors files in {model_dir}")
    device = torch.device(device)
    with torch.device(device):
        model = cls(config, dtype, ops or select_ops(device, dtype))
    # NOTE: the rotary tables are built on CPU on purpose (HF numerics); this moves them.
    model.to(device)
    _load_weights(model, files, dtype)
    return model.eval().requires_grad_(False)


def _load_weights(model: nn.Module, files: list[str], dtype: torch.dtype) -> None:
    targets = model.checkpoint_targets()
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    unexpected: list[str] = []
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                target = targets.get(name)
                if target is None:
                    if not _ignorable(name, model):
                        unexpected.append(name)
                    continue
                _copy(params[target.param_name], target, f.get_tensor(name), name, dtype)
                loaded.add(name)
    missing = sorted(set(targets) - loaded)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing weights: {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected weights: {_short_list(sorted(unexpected))}")
        raise ValueError(f"checkpoint does not match {model.config.architecture}: " + "; ".join(parts))


def _ignorable(name: str, model: nn.Module) -> bool:
    # Tied checkpoints sometimes still store lm_head.weight (a copy of the embedding).
    return name.endswith(_IGNORED_SUFFIXES) or (name == "lm_head.weight" and model.config.tie_word_embeddings)


def _copy(param: torch.Tensor, target: WeightTarget, tensor: torch.Tensor, name: str, dtype: torch.dtype) -> None:
    dest = param.data if target.index is None else param.data[target.index]
    dest = dest if target.row_start is None else dest[target.row_start : target.row_end]
    if tuple(tensor.shape) != tuple(dest.shape):
        raise ValueError(f"weight {name}: checkpoint shape {list(tensor.shape)}, model expects {list(dest.shape)}")
    dest.copy_(tensor.to(dtype))


def _short_list(names: list[str], limit: int = 10) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
