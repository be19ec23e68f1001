"""Tiny random checkpoints of the model families beyond Llama, each with its features switched on.

The parity oracle's side for tests/test_model_families.py (and the lead's GPU runs of it):
transformers builds each model from its own config class and saves it, with the default
model's tokenizer, as `reference_models.make_tiny_checkpoint` does for the Llama variants.

    mistral-sliding  Mistral, a 16-token sliding window (shorter than most prompts)
    gemma2           4 layers alternating sliding (16) / global, attention and final-logit
                     soft-capping, query_pre_attn_scalar != head_dim, tied embeddings
    gemma3           Gemma 3 text: q/k norms, sliding (16) / global layers with their own
                     rope_theta, linear rope scaling on the global ones, final soft-capping
    phi3             fused qkv / gate_up tensors, LongRoPE (short and long factors, the
                     original length 64 < max positions), a 40-token sliding window
    qwen3-moe        8 experts, top-2, renormalised, one dense layer (mlp_only_layers)
    mixtral          8 experts, top-2, a 24-token sliding window
"""
from __future__ import annotations

from pagedllm_tools.reference_models import _tiny_vocab_size, save_random_checkpoint

FAMILY_ARCHS = ("mistral-sliding", "gemma2", "gemma3", "phi3", "qwen3-moe", "mixtral")
WINDOW = 16
# LongRoPE: positions below this rotate with the short factors, from it on with the long ones.
PHI3_ORIGINAL_MAX_POSITIONS = 64


def family_hf_config(arch: str, head_dim: int = 16):
    """The transformers config of one tiny family variant (hidden 64, 4 heads, 2 KV heads).

    head_dim: another head size (Phi-3-mini's 96) for the kernels' tests of padded head sizes;
    Phi-3's hidden size follows it (4 heads of head_dim), as its head size is hidden / heads.
    """
    import transformers as tf

    sizes = dict(
        vocab_size=_tiny_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=1024,
        # NOTE: large init, as reference_models: sharp attention, spread logits.
        initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    if arch == "mistral-sliding":
        return tf.MistralConfig(**sizes, sliding_window=WINDOW, tie_word_embeddings=False)
    if arch == "gemma2":
        return tf.Gemma2Config(**{**sizes, "num_hidden_layers": 4}, sliding_window=WINDOW,
                               query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                               final_logit_softcapping=8.0, tie_word_embeddings=True)
    if arch == "gemma3":
        rope = {"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}
        layer_types = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
        return tf.Gemma3TextConfig(**{**sizes, "num_hidden_layers": 4}, sliding_window=WINDOW,
                                   layer_types=layer_types, rope_parameters=rope, query_pre_attn_scalar=24,
                                   final_logit_softcapping=8.0, tie_word_embeddings=True)
    if arch == "phi3":
        phi = {k: v for k, v in sizes.items() if k != "head_dim"}  # Phi-3: hidden / heads
        phi["hidden_size"] = 4 * head_dim
        half = head_dim // 2
        rope = {"rope_type": "longrope", "rope_theta": 10000.0,
                "short_factor": [1.0 + 0.1 * i for i in range(half)],
                "long_factor": [2.0 + 1.5 * i for i in range(half)]}
        return tf.Phi3Config(**phi, original_max_position_embeddings=PHI3_ORIGINAL_MAX_POSITIONS,
                             rope_parameters=rope, sliding_window=40, tie_word_embeddings=False)
    if arch == "qwen3-moe":
        return tf.Qwen3MoeConfig(**{**sizes, "num_hidden_layers": 3}, num_experts=8, num_experts_per_tok=2,
                                 moe_intermediate_size=32, norm_topk_prob=True, mlp_only_layers=[1],
                                 tie_word_embeddings=False)
    if arch == "mixtral":
        return tf.MixtralConfig(**{**sizes, "intermediate_size": 32}, num_local_experts=8, num_experts_per_tok=2,
                                sliding_window=24, tie_word_embeddings=False)
    raise ValueError(f"arch: unknown family variant {arch!r}; known: {FAMILY_ARCHS}")


def make_family_checkpoint(arch: str, out_dir, head_dim: int = 16) -> str:
    """Saves the tiny random checkpoint of family variant `arch` into out_dir; returns its path."""
    return save_random_checkpoint(family_hf_config(arch, head_dim), out_dir)
