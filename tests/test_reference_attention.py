"""The torch reference kernels against naive dense attention over contiguous K/V.

These references are the oracle for the Triton kernels, so they are checked here against
the simplest possible formulation (float64, per sequence, explicit causal mask).
"""

from __future__ import annotations

import math

import pytest
import torch

from pagedllm_kernels.reference import paged_attention_ref, reshape_and_cache_ref

HEAD_DIM = 16


def paged_attention(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, scale,
                    max_query_len, max_seq_len, window=None, softcap=None):
    """KernelOps.paged_attention's signature (the maxima are the kernels' tiling hints)."""
    return paged_attention_ref(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc,
                               scale, window, softcap)


def _naive_attention(q, k, v, scale, window=None, softcap=None):
    """q [n, H, D] = the last n positions of a context with k, v [L, KV, D]; float64.

    With `window`, query j sees only the `window` keys ending at its own position; with
    `softcap`, scores are softcap * tanh(scores / softcap).
    """
    n, num_heads, _ = q.shape
    seq_len, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    out = torch.empty(n, num_heads, q.shape[2], dtype=torch.float64)
    for h in range(num_heads):
        kh, vh = k[:, h // group].double(), v[:, h // group].double()
        scores = q[:, h].double() @ kh.T * scale  # [n, L]
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        for j in range(n):
            visible = seq_len - n + j + 1
            first = 0 if window is None else max(0, visible - window)
            out[j, h] = torch.softmax(scores[j, first:visible], dim=-1) @ vh[first:visible]
    return out


def _paged_case(seq_lens, query_lens, num_heads, num_kv_heads, block_size, dtype=torch.float32, seed=0):
    """Random contiguous K/V per sequence, written to shuffled blocks with reshape_and_cache."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    perm = torch.randperm(num_blocks, generator=g).tolist()
    key_cache = torch.full((num_blocks, block_size, num_kv_heads, HEAD_DIM), float("nan"), dtype=dtype)
    value_cache = key_cache.clone()
    width = max(blocks_per_seq)
    tables, ks, vs, qs = [], [], [], []
    for seq_len, query_len, nb in zip(seq_lens, query_lens, blocks_per_seq):
        blocks = [perm.pop() for _ in range(nb)]
        tables.append(blocks + [0] * (width - nb))
        k = torch.randn(seq_len, num_kv_heads, HEAD_DIM, generator=g).to(dtype)
        v = torch.randn(seq_len, num_kv_heads, HEAD_DIM, generator=g).to(dtype)
        slots = torch.tensor([blocks[p // block_size] * block_size + p % block_size for p in range(seq_len)])
        reshape_and_cache_ref(k, v, key_cache, value_cache, slots)
        ks.append(k)
        vs.append(v)
        qs.append(torch.randn(query_len, num_heads, HEAD_DIM, generator=g).to(dtype))
    qsl = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    meta = dict(
        block_tables=torch.tensor(tables, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        query_start_loc=qsl,
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
    )
    return torch.cat(qs), ks, vs, key_cache, value_cache, meta


CASES = {
    "prefill": ([5, 16, 37], [5, 16, 37]),
    "decode": ([1, 15, 33, 64], [1, 1, 1, 1]),
    "chunked": ([20, 50], [7, 18]),
    "mixed": ([1, 17, 40, 9], [1, 17, 1, 4]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("num_heads, num_kv_heads", [(4, 4), (4, 2), (8, 2)])
def test_paged_attention_matches_dense_causal(case, block_size, num_heads, num_kv_heads):
    seq_lens, query_lens = CASES[case]
    q, ks, vs, key_cache, value_cache, meta = _paged_case(seq_lens, query_lens, num_heads, num_kv_heads, block_size)
    scale = HEAD_DIM**-0.5
    out = paged_attention(q, key_cache, value_cache, scale=scale, **meta)
    assert out.shape == q.shape and out.dtype == q.dtype
    qsl = meta["query_start_loc"].tolist()
    for i, (k, v) in enumerate(zip(ks, vs)):
        expected = _naive_attention(q[qsl[i] : qsl[i + 1]], k, v, scale)
        torch.testing.assert_close(out[qsl[i] : qsl[i + 1]].double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("window", [1, 5, 16, 23])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_sliding_window_and_softcap_match_dense(case, block_size, window, softcap):
    seq_lens, query_lens = CASES[case]
    q, ks, vs, key_cache, value_cache, meta = _paged_case(seq_lens, query_lens, 4, 2, block_size)
    # Blocks wholly before a sequence's window are not read: NaN there must not reach the output.
    for i, (seq_len, n) in enumerate(zip(seq_lens, query_lens)):
        for b in range(max(0, seq_len - n - window + 1) // block_size):
            key_cache[meta["block_tables"][i, b]] = float("nan")
            value_cache[meta["block_tables"][i, b]] = float("nan")
    scale = HEAD_DIM**-0.5
    out = paged_attention(q, key_cache, value_cache, scale=scale, window=window, softcap=softcap, **meta)
    qsl = meta["query_start_loc"].tolist()
    for i, (k, v) in enumerate(zip(ks, vs)):
        expected = _naive_attention(q[qsl[i] : qsl[i + 1]], k, v, scale, window, softcap)
        torch.testing.assert_close(out[qsl[i] : qsl[i + 1]].double(), expected, atol=1e-5, rtol=1e-5)


def test_paged_attention_bfloat16_is_close():
    q, ks, vs, key_cache, value_cache, meta = _paged_case([30, 9], [4, 9], 8, 2, 16, dtype=torch.bfloat16)
    out = paged_attention(q, key_cache, value_cache, scale=HEAD_DIM**-0.5, **meta)
    assert out.dtype == torch.bfloat16
    expected = torch.cat([_naive_attention(q[:4], ks[0], vs[0], HEAD_DIM**-0.5),
                          _naive_attention(q[4:], ks[1], vs[1], HEAD_DIM**-0.5)])
    torch.testing.assert_close(out.double(), expected, atol=3e-2, rtol=3e-2)


def test_padding_rows_after_the_last_sequence_are_zero():
    q, _, _, key_cache, value_cache, meta = _paged_case([10], [3], 4, 2, 8)
    padded = torch.cat([q, torch.randn(2, 4, HEAD_DIM)])
    out = paged_attention(padded, key_cache, value_cache, scale=0.25, **meta)
    assert torch.equal(out[3:], torch.zeros(2, 4, HEAD_DIM))


def test_reshape_and_cache_writes_the_right_slots_and_skips_padding():
    num_blocks, block_size, kv = 4, 8, 2
    key_cache = torch.full((num_blocks, block_size, kv, HEAD_DIM), -7.0)
    value_cache = torch.full_like(key_cache, -7.0)
    key, value = torch.randn(5, kv, HEAD_DIM), torch.randn(5, kv, HEAD_DIM)
    slots = torch.tensor([17, -1, 3, 31, -1])  # block 2 off 1, pad, block 0 off 3, block 3 off 7, pad
    reshape_and_cache_ref(key, value, key_cache, value_cache, slots)
    for row, (block, offset) in [(0, (2, 1)), (2, (0, 3)), (3, (3, 7))]:
        assert torch.equal(key_cache[block, offset], key[row])
        assert torch.equal(value_cache[block, offset], value[row])
    untouched = torch.ones(num_blocks, block_size, dtype=torch.bool)
    untouched[2, 1] = untouched[0, 3] = untouched[3, 7] = False
    assert (key_cache[untouched] == -7.0).all() and (value_cache[untouched] == -7.0).all()


def test_reshape_and_cache_writes_through_a_layer_cache_view():
    kv_cache = torch.zeros(2, 3, 4, 1, HEAD_DIM)  # the model runner's per-layer layout
    key, value = torch.ones(2, 1, HEAD_DIM), torch.full((2, 1, HEAD_DIM), 2.0)
    reshape_and_cache_ref(key, value, kv_cache[0], kv_cache[1], torch.tensor([5, 11]))
    assert kv_cache[0, 1, 1].eq(1).all() and kv_cache[1, 2, 3].eq(2).all()
    assert kv_cache.count_nonzero() == 2 * 2 * HEAD_DIM
