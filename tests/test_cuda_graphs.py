"""CUDA graphs for decode and mixed steps: replayed steps give the tokens eager steps give.

The graph tests need a CUDA GPU; what a mixed-step graph replays (the padded inputs) is checked on
CPU too, through the eager model.

float32 greedy on the tiny checkpoints: the same prompts through an engine with graphs and one with
`enforce_eager=True` must produce identical tokens (tests/test_parity.py compares both with
transformers); the batch shrinks through many buckets, down to the split-KV graphs of batch 1.
"""
from __future__ import annotations

import random

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.config import EngineConfig
from pagedllm.cuda_graphs import bucket_sizes, mixed_bucket_sizes

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_bucket_sizes():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert bucket_sizes(256)[:5] == [1, 2, 4, 8, 16] and bucket_sizes(256)[-1] == 256


@needs_cuda
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_graphs_match_eager(tiny_checkpoints, arch):
    model_dir = tiny_checkpoints[arch]
    rng = random.Random(3)
    prompts = [[rng.randrange(4000) for _ in range(rng.randint(1, 700))] for _ in range(40)]
    # Output lengths spread out, so the decode batch shrinks through many buckets down to 1.
    params = [SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 120), ignore_eos=True)
              for _ in prompts]
    common = dict(device="cuda", dtype="float32", num_kv_blocks=4096, max_num_seqs=32)
    graphed = LLM(model_dir, **common)
    assert graphed.engine.runner.graphs is not None and graphed.engine.runner.graphs.num_graphs > 0
    out_graphed = graphed.generate([{"prompt_token_ids": p} for p in prompts], params)
    assert graphed.engine.runner.graphs.num_replays > 0
    assert graphed.engine.runner.mixed_graphs.num_replays > 0  # prefills and mixed steps too
    del graphed
    eager = LLM(model_dir, enforce_eager=True, **common)
    assert eager.engine.runner.graphs is None
    out_eager = eager.generate([{"prompt_token_ids": p} for p in prompts], params)
    for i, (g, e) in enumerate(zip(out_graphed, out_eager)):
        assert g.outputs[0].token_ids == e.outputs[0].token_ids, f"prompt {i} differs"


def test_enforce_eager_must_be_bool():
    with pytest.raises(ValueError, match="enforce_eager"):
        EngineConfig(model="some/dir", device="cuda", enforce_eager="yes")


@pytest.mark.parametrize("value", [-1, 1.5, True, "2048"])
def test_max_mixed_graph_tokens_must_be_an_int_of_at_least_0(value):
    with pytest.raises(ValueError, match="max_mixed_graph_tokens"):
        EngineConfig(model="some/dir", device="cuda", max_mixed_graph_tokens=value)


def test_mixed_bucket_sizes():
    assert mixed_bucket_sizes(0) == []
    assert mixed_bucket_sizes(100) == [100]
    assert mixed_bucket_sizes(2048) == [128, 256, 384, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048]
    assert mixed_bucket_sizes(1000)[-2:] == [896, 1000]


@needs_cuda
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_bf16_rotary_into_cache_changes_no_token(tiny_checkpoints, arch, monkeypatch):
    """bf16 with graphs: the rotary kernel that writes the cache itself computes the same bits as
    the rotary followed by the cache write, so greedy tokens are identical, through prefill,
    chunked mixed steps and every decode bucket (the padded rows write nowhere). (qwen3's q/k
    norms stay apart on both sides: folded into the kernel they round differently.)"""
    import pagedllm_kernels as kernels

    model_dir = tiny_checkpoints[arch]
    rng = random.Random(4)
    prompts = [[rng.randrange(4000) for _ in range(rng.randint(1, 500))] for _ in range(24)]
    params = [SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 80), ignore_eos=True)
              for _ in prompts]
    selected, t = kernels.select_ops, kernels._load_triton_ops()

    def tokens(into_cache: bool) -> list[list[int]]:
        def select(device, dtype, backend="auto"):
            """The selected kernels, the cache write apart from the rotary or in it (no q/k fold)."""
            s = selected(device, dtype, backend)
            return kernels._make_ops(s.backend, s.reshape_and_cache, s.paged_attention, s.rms_norm,
                                     s.fused_add_rms_norm, s.silu_and_mul, s.rope, s.rotary,
                                     t.rotary_into_cache if into_cache else None)

        monkeypatch.setattr(kernels, "select_ops", select)
        llm = LLM(model_dir, device="cuda", dtype="bfloat16", num_kv_blocks=2048, max_num_seqs=16,
                  max_num_batched_tokens=512)
        ops = llm.engine.runner.model.ops
        assert ops.rotary is t.rotary and (ops.rotary_into_cache is t.rotary_into_cache) == into_cache
        out = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
        assert llm.engine.runner.graphs.num_replays > 0 and llm.engine.runner.mixed_graphs.num_replays > 0
        return [o.outputs[0].token_ids for o in out]

    assert tokens(into_cache=True) == tokens(into_cache=False)


# --- what a mixed-step graph replays, checked without a GPU ----------------------------------------

def _padded_step_states(model_dir, ops, pad_to, device):
    """A mixed step (two decodes with context, one prompt chunk) run as the eager path runs it,
    and from buffers padded the way MixedGraphs pads them (the model run over all pad_to tokens
    and max_seqs sequences, as the graph runs). Returns both step's states and caches, and the
    caches from before the step."""
    from pagedllm.input_buffers import InputBuffers, Padding
    from pagedllm.layers.attention import AttentionMetadata
    from pagedllm.models.config import ModelConfig
    from pagedllm.models.registry import load_model
    from pagedllm.scheduler import SchedulerOutput

    config = ModelConfig.from_dir(model_dir)
    model = load_model(model_dir, config, torch.float32, torch.device(device), ops=ops)
    caches = [torch.zeros(2, 16, 16, config.num_key_value_heads, config.head_dim, device=device)
              for _ in range(config.num_hidden_layers)]
    buffers = InputBuffers(max_tokens=96, max_seqs=8, max_blocks_per_seq=6, block_size=16,
                           device=torch.device(device))
    rng = random.Random(5)
    seqs = [[rng.randrange(4000) for _ in range(n)] for n in (40, 23, 70)]
    tables = [[3, 7, 1], [5, 2], [9, 0, 11, 4, 6]]

    def as_step(**lists) -> SchedulerOutput:
        return SchedulerOutput(total_tokens=sum(lists["num_tokens"]), **lists)

    with torch.inference_mode():
        # the two decoding sequences' contexts, then the step: one token each + a 30-token chunk
        first = buffers.prepare(as_step(token_ids=seqs[:2], num_computed=[0, 0], num_tokens=[39, 22],
                                        block_tables=tables[:2], sample=[False, False]))
        model(first.input_ids, first.positions, caches, first.attn_metadata)
        before = [c.clone() for c in caches]
        step = as_step(token_ids=seqs, num_computed=[39, 22, 0], num_tokens=[1, 1, 30],
                       block_tables=tables, sample=[True, True, False])
        eager = buffers.prepare(step)
        want = model(eager.input_ids, eager.positions, caches, eager.attn_metadata).clone()
        want_caches, caches = caches, [c.clone() for c in before]
        padded = buffers.prepare(step, padding=Padding(pad_to, decode=False))
        s = buffers.max_seqs
        # what the graph reads: the padded buffers, and the block table copied into its own
        for i, table in enumerate(tables):
            assert buffers.graph_block_table[i, :len(table)].tolist() == table
        meta = AttentionMetadata(slot_mapping=buffers.slot_mapping(pad_to),
                                 block_tables=buffers.graph_block_table,
                                 seq_lens=buffers.seq_lens(s), query_start_loc=buffers.query_start_loc(s),
                                 max_query_len=2, max_seq_len=96)
        got = model(buffers.input_ids(pad_to), buffers.positions(pad_to), caches, meta)
    assert torch.equal(padded.logits_indices, eager.logits_indices)
    return want, want_caches, got, caches, before


@pytest.mark.parametrize("attention", ["reference", "triton"])
def test_a_padded_mixed_step_computes_the_step_and_writes_only_its_slots(tiny_checkpoints, attention):
    """MixedGraphs' contract: tokens padded to the graph's count (slot -1) and sequences to
    max_num_seqs (no tokens) leave the real tokens' states as the eager step computes them, write
    the real tokens' K/V alone, and give the padding finite states nobody reads. "triton": the
    attention and cache-write kernels, compiled on a GPU, else in Triton's interpreter."""
    import pagedllm_kernels as kernels
    from pagedllm_kernels import REFERENCE_OPS
    ops, device = REFERENCE_OPS, "cpu"
    if attention != "reference":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        t, r = kernels._load_triton_ops(), REFERENCE_OPS
        ops = kernels._make_ops("reference", t.reshape_and_cache, t.paged_attention, r.rms_norm,
                                r.fused_add_rms_norm, r.silu_and_mul, r.rope, r.rotary)
    want, want_caches, got, caches, before = _padded_step_states(tiny_checkpoints["llama"], ops, 64, device)
    torch.testing.assert_close(got[:32], want, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(got).all()
    written = torch.zeros(16 * 16, dtype=torch.bool)
    # the step's slots: the decodes at positions 39 and 22, the chunk at positions 0-29
    for table, positions in (([3, 7, 1], [39]), ([5, 2], [22]), ([9, 0, 11, 4, 6], range(30))):
        for p in positions:
            written[table[p // 16] * 16 + p % 16] = True
    for got_c, want_c, old in zip(caches, want_caches, before):
        flat, flat_want, flat_old = (c.cpu().view(2, 256, -1) for c in (got_c, want_c, old))
        torch.testing.assert_close(flat[:, written], flat_want[:, written], rtol=1e-5, atol=1e-5)
        assert torch.equal(flat[:, ~written], flat_old[:, ~written])
