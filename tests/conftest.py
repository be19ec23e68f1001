"""Shared pytest fixtures.

Model fixtures: tiny random-weight Hugging Face checkpoints, one per supported variant,
built with transformers (the parity oracle) once per session.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # NOTE: must run before anything imports triton (it reads the variable once): without a
    # GPU the Triton kernels run in Triton's CPU interpreter (tests/test_kernels.py). The
    # engine is unaffected: CPU tensors always take the torch reference.
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "default"
TINY_ARCHS = ("llama", "llama-tied", "qwen2", "qwen3", "mistral")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _tiny_vocab_size() -> int:
    """The default model's tokenizer vocabulary (4096), so its tokenizer fits the tiny models."""
    tokenizer_file = DEFAULT_MODEL_DIR / "tokenizer.json"
    if not tokenizer_file.is_file():
        return 4096  # NOTE: fallback while models/default is being built
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()


def _tiny_hf_config(arch: str):
    """The transformers config of one tiny variant (hidden 64, 2 layers, 4 heads, 2 KV heads)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    sizes = dict(
        vocab_size=_tiny_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        # NOTE: large init so attention is sharp and logits spread: with HF's 0.02 a wrong
        # rotary or mask would barely move the logits and parity tests would not notice.
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "llama":
        llama3 = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                      high_freq_factor=4.0, original_max_position_embeddings=64)
        return LlamaConfig(**sizes, tie_word_embeddings=False, rope_parameters=llama3)
    if arch == "llama-tied":
        return LlamaConfig(**sizes, tie_word_embeddings=True)
    if arch == "qwen2":
        return Qwen2Config(**sizes, tie_word_embeddings=False)
    if arch == "qwen3":
        return Qwen3Config(**sizes, tie_word_embeddings=False)
    if arch == "mistral":
        return MistralConfig(**sizes, sliding_window=None, tie_word_embeddings=False)
    raise ValueError(f"arch: unknown tiny variant {arch!r}; known: {TINY_ARCHS}")


def make_tiny_checkpoint(arch: str, out_dir) -> str:
    """Saves a tiny random-weight HF checkpoint of variant `arch` into out_dir; returns its path.

    Norm weights (incl. Qwen3's q/k norms) and Qwen2's q/k/v biases are re-drawn at random
    so a mapping mistake (swapped norms, dropped bias) changes the logits.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_tiny_hf_config(arch), dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.5)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    for fname in _TOKENIZER_FILES:
        if (DEFAULT_MODEL_DIR / fname).is_file():
            shutil.copy(DEFAULT_MODEL_DIR / fname, out / fname)
    return str(out)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Every tiny variant, built once per session: {arch: checkpoint dir}."""
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    return {arch: make_tiny_checkpoint(arch, root / arch) for arch in TINY_ARCHS}
