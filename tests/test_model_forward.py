"""Forward parity with transformers over the paged KV cache (float32, CPU).

Every way of feeding a prompt (one shot, chunked over a cached prefix, token-by-token decode,
several sequences flattened into one batch) must give Hugging Face's logits at each position.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch

from pagedllm.layers.attention import AttentionMetadata
from pagedllm.models.config import ModelConfig
from pagedllm.models.registry import load_model
from pagedllm_tools.reference_models import TINY_ARCHS  # the tiny_checkpoints fixture's keys

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"
BLOCK_SIZE = 16
TOL = dict(atol=1e-4, rtol=1e-4)


class PagedRunner:
    """A toy model runner: each sequence gets shuffled, non-contiguous blocks of a NaN-filled cache.

    NaN in every unwritten slot makes any read outside a sequence's context poison its logits.
    """

    def __init__(self, model, num_blocks: int = 24, seed: int = 0) -> None:
        c = model.config
        dtype = next(model.parameters()).dtype
        shape = (2, num_blocks, BLOCK_SIZE, c.num_key_value_heads, c.head_dim)
        self.model = model
        self.kv_caches = [torch.full(shape, float("nan"), dtype=dtype) for _ in range(c.num_hidden_layers)]
        self.free = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
        self.blocks: dict[int, list[int]] = {}
        self.num_cached: dict[int, int] = {}

    def step(self, chunks: list[tuple[int, list[int]]], pad_tokens: int = 0) -> list[torch.Tensor]:
        """Runs one forward over (seq_id, new token ids) chunks; returns each chunk's logits.

        `pad_tokens` appends tokens that belong to no sequence (slot -1), like CUDA-graph padding.
        """
        ids, positions, slots, seq_lens, qsl = [], [], [], [], [0]
        for seq, tokens in chunks:
            start = self.num_cached.get(seq, 0)
            end = start + len(tokens)
            blocks = self.blocks.setdefault(seq, [])
            while len(blocks) * BLOCK_SIZE < end:
                blocks.append(self.free.pop())
            ids += tokens
            positions += range(start, end)
            slots += [blocks[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(start, end)]
            seq_lens.append(end)
            qsl.append(qsl[-1] + len(tokens))
            self.num_cached[seq] = end
        ids += [0] * pad_tokens
        positions += [0] * pad_tokens
        slots += [-1] * pad_tokens
        width = max(len(self.blocks[seq]) for seq, _ in chunks)
        tables = [self.blocks[seq] + [0] * (width - len(self.blocks[seq])) for seq, _ in chunks]
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            block_tables=torch.tensor(tables, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            query_start_loc=torch.tensor(qsl, dtype=torch.int32),
            max_query_len=max(len(t) for _, t in chunks),
            max_seq_len=max(seq_lens),
        )
        with torch.inference_mode():
            hidden = self.model(torch.tensor(ids), torch.tensor(positions), self.kv_caches, meta)
            logits = self.model.compute_logits(hidden)
        assert logits.shape == (len(ids), self.model.config.vocab_size) and logits.dtype == torch.float32
        return [logits[qsl[i] : qsl[i + 1]] for i in range(len(chunks))]


def _default_model_dir() -> str | None:
    ready = (DEFAULT_MODEL_DIR / "config.json").is_file() and glob.glob(str(DEFAULT_MODEL_DIR / "*.safetensors"))
    return str(DEFAULT_MODEL_DIR) if ready else None


@pytest.fixture(scope="module", params=[*TINY_ARCHS, "default"])
def models(request, tiny_checkpoints):
    """(our model, HF model) for one checkpoint, both float32 on CPU."""
    from transformers import AutoModelForCausalLM

    path = tiny_checkpoints.get(request.param) or _default_model_dir()
    if path is None:
        pytest.skip("models/default is not built yet")
    ours = load_model(path, ModelConfig.from_dir(path), torch.float32, torch.device("cpu"))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    return ours, hf


def _hf_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf(torch.tensor([ids])).logits[0].float()


def _prompt(model, n: int, seed: int) -> list[int]:
    vocab = min(model.config.vocab_size, 4096)
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_one_shot_prefill_matches_hf(models):
    ours, hf = models
    prompt = _prompt(ours, 40, seed=1)
    (logits,) = PagedRunner(ours).step([(0, prompt)])
    expected = _hf_logits(hf, prompt)
    torch.testing.assert_close(logits[-1], expected[-1], **TOL)
    torch.testing.assert_close(logits, expected, **TOL)


def test_chunked_prefill_over_cached_prefix_matches_hf(models):
    ours, hf = models
    prompt = _prompt(ours, 40, seed=2)
    runner = PagedRunner(ours)
    # Chunk edges fall inside blocks (13, 29), so a chunk extends a half-filled block.
    chunks = [runner.step([(0, prompt[a:b])])[0] for a, b in [(0, 13), (13, 29), (29, 40)]]
    torch.testing.assert_close(torch.cat(chunks), _hf_logits(hf, prompt), **TOL)


def test_decode_one_token_at_a_time_matches_hf(models):
    ours, hf = models
    prompt = _prompt(ours, 40, seed=3)
    runner = PagedRunner(ours)
    steps = [runner.step([(0, prompt[:20])])[0]]
    steps += [runner.step([(0, [tok])])[0] for tok in prompt[20:]]
    generated = []
    for _ in range(6):  # greedy continuation: our argmax fed back
        generated.append(int(steps[-1][-1].argmax()))
        steps.append(runner.step([(0, generated[-1:])])[0])
    expected = _hf_logits(hf, prompt + generated)
    torch.testing.assert_close(torch.cat(steps), expected, **TOL)
    assert generated == expected[len(prompt) - 1 : -1].argmax(-1).tolist()


def test_flattened_batch_matches_each_sequence_alone(models):
    ours, hf = models
    prompts = [_prompt(ours, n, seed=10 + n) for n in (7, 23, 40)]
    runner = PagedRunner(ours, seed=5)
    batched = runner.step([(i, p) for i, p in enumerate(prompts)], pad_tokens=3)
    for prompt, logits in zip(prompts, batched):
        (alone,) = PagedRunner(ours, seed=6).step([(0, prompt)])
        torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits, _hf_logits(hf, prompt), **TOL)
    # A mixed step: two decodes around a 5-token chunk over a cached prefix.
    extra = [[101], [102, 103, 104, 105, 106], [107]]
    mixed = runner.step([(i, e) for i, e in enumerate(extra)])
    for prompt, new, logits in zip(prompts, extra, mixed):
        torch.testing.assert_close(logits, _hf_logits(hf, prompt + new)[-len(new) :], **TOL)


def test_padding_slots_leave_the_cache_untouched(tiny_checkpoints):
    path = tiny_checkpoints["llama"]
    model = load_model(path, ModelConfig.from_dir(path), torch.float32, torch.device("cpu"))
    runner = PagedRunner(model)
    runner.step([(0, _prompt(model, 5, seed=4))], pad_tokens=4)
    written = sum(int((~cache.isnan()).any(-1).any(-1).sum()) for cache in runner.kv_caches)
    assert written == model.config.num_hidden_layers * 2 * 5  # K and V of 5 real tokens per layer


def test_wrong_number_of_kv_caches_is_rejected(tiny_checkpoints):
    path = tiny_checkpoints["qwen3"]
    model = load_model(path, ModelConfig.from_dir(path), torch.float32, torch.device("cpu"))
    runner = PagedRunner(model)
    runner.kv_caches = runner.kv_caches[:1]
    with pytest.raises(ValueError, match="kv_caches"):
        runner.step([(0, [5, 6, 7])])


def test_bfloat16_forward_tracks_hf(tiny_checkpoints):
    from transformers import AutoModelForCausalLM

    path = tiny_checkpoints["qwen2"]
    ours = load_model(path, ModelConfig.from_dir(path), torch.bfloat16, torch.device("cpu"))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="eager").eval()
    prompt = _prompt(ours, 24, seed=7)
    (logits,) = PagedRunner(ours).step([(0, prompt)])
    torch.testing.assert_close(logits, _hf_logits(hf, prompt), atol=0.1, rtol=0.05)
