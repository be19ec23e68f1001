"""InputBuffers: the preallocated step inputs equal the tensors the step describes, step after step.

The oracle is a direct construction from the lists (what the runner built before the buffers).
Runs on CPU; the CUDA path differs only by the copy to the device.
"""
from __future__ import annotations

import random

import pytest
import torch

from pagedllm.input_buffers import InputBuffers, Padding
from pagedllm.scheduler import SchedulerOutput

BS = 4


def as_step(token_ids, num_computed, num_tokens, block_tables, sample) -> SchedulerOutput:
    """The scheduler's step for these lists (what the runner hands InputBuffers.prepare)."""
    return SchedulerOutput(num_tokens=num_tokens, total_tokens=sum(num_tokens), token_ids=token_ids,
                           num_computed=num_computed, block_tables=block_tables, sample=sample)


def expected(token_ids, num_computed, num_tokens, block_tables, sample):
    ids, pos, slots = [], [], []
    for toks, c, n, table in zip(token_ids, num_computed, num_tokens, block_tables):
        for p in range(c, c + n):
            ids.append(toks[p])
            pos.append(p)
            slots.append(table[p // BS] * BS + p % BS)
    qsl = [0]
    for n in num_tokens:
        qsl.append(qsl[-1] + n)
    logits = [qsl[i + 1] - 1 for i, s in enumerate(sample) if s]
    return ids, pos, slots, qsl, [c + n for c, n in zip(num_computed, num_tokens)], logits


def random_step(rng, tables: dict, num_seqs: int, decode: bool):
    """A step over requests 0..num_seqs-1 whose block tables grow in place, like the engine's."""
    token_ids, num_computed, num_tokens, block_tables = [], [], [], []
    # Half the steps keep the batch order (rows grow in place), half shuffle it (rows change hands).
    order = sorted(tables)[:num_seqs] if rng.random() < 0.5 else rng.sample(sorted(tables), num_seqs)
    for r in order:
        table, length = tables[r]
        n = 1 if decode else rng.randint(1, 9)
        total = length + n
        while len(table) * BS < total:
            table.append(rng.randrange(1000))  # NOTE: in place: the same list object grows
        tables[r] = (table, total)
        token_ids.append([rng.randrange(50_000) for _ in range(total)])
        num_computed.append(length)
        num_tokens.append(n)
        block_tables.append(table)
    sample = [rng.random() < 0.7 for _ in range(num_seqs)]
    return token_ids, num_computed, num_tokens, block_tables, sample


@pytest.mark.parametrize("decode", [False, True])
def test_prepare_matches_lists_over_many_steps(decode):
    rng = random.Random(0)
    buffers = InputBuffers(max_tokens=128, max_seqs=12, max_blocks_per_seq=64, block_size=BS,
                           device=torch.device("cpu"))
    tables = {r: ([], rng.randint(0, 20)) for r in range(20)}
    for r, (table, length) in tables.items():
        table.extend(rng.randrange(1000) for _ in range(-(-length // BS)))
    for step in range(60):
        step_args = random_step(rng, tables, rng.randint(1, 12), decode)
        batch = buffers.prepare(as_step(*step_args))
        ids, pos, slots, qsl, seq_lens, logits = expected(*step_args)
        meta = batch.attn_metadata
        assert batch.input_ids.tolist() == ids
        assert batch.positions.tolist() == pos
        assert meta.slot_mapping.tolist() == slots
        assert meta.query_start_loc.tolist() == qsl
        assert meta.seq_lens.tolist() == seq_lens
        assert batch.logits_indices.tolist() == logits
        assert meta.max_seq_len == max(seq_lens) and meta.max_query_len == max(step_args[2])
        for i, table in enumerate(step_args[3]):
            assert meta.block_tables[i, :len(table)].tolist() == table, f"step {step} row {i}"


def test_prepare_decode_pads_to_the_bucket():
    rng = random.Random(1)
    buffers = InputBuffers(max_tokens=16, max_seqs=16, max_blocks_per_seq=32, block_size=BS,
                           device=torch.device("cpu"))
    tables = {r: ([rng.randrange(1000) for _ in range(3)], 10) for r in range(8)}
    token_ids, num_computed, _, block_tables, _ = random_step(rng, tables, 5, decode=True)
    step = as_step(token_ids, num_computed, [1] * 5, block_tables, [True] * 5)
    batch = buffers.prepare(step, padding=Padding(8, decode=True))
    ids, pos, slots, _, seq_lens, _ = expected(token_ids, num_computed, [1] * 5, block_tables, [True] * 5)
    assert buffers.input_ids(8).tolist() == ids + [0] * 3
    assert buffers.positions(8).tolist() == pos + [0] * 3
    assert buffers.slot_mapping(8).tolist() == slots + [-1] * 3  # padding writes no K/V
    assert buffers.seq_lens(8).tolist() == seq_lens + [1] * 3
    assert batch.logits_indices == slice(0, 5)  # every row samples: the graph's first 5 outputs
    width = max(len(t) for t in block_tables)
    staged = buffers.block_table_staging(5, width)
    for i, table in enumerate(block_tables):
        assert staged[i, :len(table)].tolist() == table
        assert buffers.graph_block_table[i, :len(table)].tolist() == table  # what the graph reads


def test_too_long_table_is_a_clear_error():
    buffers = InputBuffers(max_tokens=8, max_seqs=2, max_blocks_per_seq=2, block_size=BS,
                           device=torch.device("cpu"))
    with pytest.raises(ValueError, match="KV blocks"):
        buffers.prepare(as_step([[1] * 12], [11], [1], [[0, 1, 2]], [True]))
