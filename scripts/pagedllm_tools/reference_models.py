"""The parity oracle's side: tiny random Hugging Face checkpoints and transformers' greedy decode.

Shared by the tests (tests/conftest.py, tests/test_parity.py) and the GPU agreement check
(pagedllm_tools.bench.bf16_agreement). transformers is imported only inside the functions: it is
a test dependency, never the engine's.
"""
from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import torch

from pagedllm_tools import ROOT

DEFAULT_MODEL_DIR = ROOT / "models" / "default"
TINY_ARCHS = ("llama", "llama-tied", "qwen2", "qwen3", "mistral")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _tiny_vocab_size() -> int:
    """The default model's tokenizer vocabulary (4096), so its tokenizer fits the tiny models."""
    tokenizer_file = DEFAULT_MODEL_DIR / "tokenizer.json"
    if not tokenizer_file.is_file():
        return 4096  # NOTE: fallback while models/default is being built
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()


def tiny_hf_config(arch: str):
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
    return save_random_checkpoint(tiny_hf_config(arch), out_dir)


def save_random_checkpoint(hf_config, out_dir) -> str:
    """Saves a random-weight model of transformers config `hf_config` (norms and biases re-drawn
    as `make_tiny_checkpoint` says) with the default model's tokenizer; returns its path."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
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




@torch.inference_mode()
def hf_greedy(model, prompt: list[int], n: int, device: str = "cpu") -> list[int]:
    """Greedy decoding with transformers' own forward and KV cache, one sequence at a time."""
    # transformers 5.x calls the KV cache `cache` (in and out); older releases `past_key_values`.
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(torch.tensor([prompt], device=device), use_cache=True)
    tokens = []
    for _ in range(n):
        tok = int(out.logits[0, -1].argmax())
        tokens.append(tok)
        out = model(torch.tensor([[tok]], device=device), use_cache=True, **{name: out[name]})
    return tokens


_greedy_cache: dict = {}


def greedy_references(model_dir: str, prompts: list[list[int]], n: int, device: str = "cpu") -> list[list[int]]:
    """`hf_greedy` of each prompt with the float32 checkpoint, cached per (model, prompts, n,
    device): the parity tests compare several engine settings against one transformers run.

    transformers runs its eager attention, the definition: its SDPA path drops Gemma 2's
    attention soft cap, and some releases (5.17) pick SDPA for Gemma 2 on CUDA by default."""
    from transformers import AutoModelForCausalLM

    key = (model_dir, tuple(map(tuple, prompts)), n, device)
    if key not in _greedy_cache:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                     attn_implementation="eager").to(device).eval()
        _greedy_cache[key] = [hf_greedy(model, p, n, device) for p in prompts]
    return _greedy_cache[key]
