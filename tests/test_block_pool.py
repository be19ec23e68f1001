"""Block pool and KV-cache manager: allocation, ref counts, LRU eviction, prefix caching."""
from __future__ import annotations

import pytest

from pagedllm.block_pool import BlockPool
from pagedllm.kv_cache_manager import KVCacheManager
from pagedllm.request import Request
from pagedllm.sampling_params import SamplingParams

from kv_invariants import check_kv_invariants


def make_request(rid: str, tokens: list[int]) -> Request:
    return Request(request_id=rid, prompt_token_ids=list(tokens), sampling_params=SamplingParams(),
                   max_tokens=16)


def test_pool_allocate_release_and_lru_order():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    assert (a.ref_cnt, b.ref_cnt, pool.num_free_blocks) == (1, 1, 2)
    pool.cache(a, 111, (1, 2))
    pool.release([b, a])
    assert pool.num_free_blocks == 4
    # Uncached b went to the head, cached a to the tail: fresh blocks first, a evicted last.
    order = [blk.block_id for blk in pool.allocate(4)]
    assert order[0] == b.block_id and order[-1] == a.block_id
    assert pool.lookup(111, (1, 2)) is None, "reusing a cached block must evict its hash"


def test_pool_refuses_overallocation_and_double_release():
    pool = BlockPool(2)
    blocks = pool.allocate(2)
    with pytest.raises(RuntimeError):
        pool.allocate(1)
    pool.release(blocks)
    with pytest.raises(RuntimeError):
        pool.release(blocks)


def test_lookup_checks_tokens_against_hash_collisions():
    pool = BlockPool(2)
    (blk,) = pool.allocate(1)
    pool.cache(blk, 42, (1, 2, 3))
    assert pool.lookup(42, (1, 2, 3)) is blk
    assert pool.lookup(42, (9, 9, 9)) is None


def test_block_table_grows_with_tokens():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    r = make_request("a", list(range(10)))
    assert kv.allocate_slots(r, 10)
    assert len(kv.block_ids("a")) == 3
    r.num_computed_tokens = 10
    r.append_token(5)
    assert kv.allocate_slots(r, 1) and len(kv.block_ids("a")) == 3  # 11 tokens still fit 3 blocks
    r.num_computed_tokens = 11
    r.append_token(6)
    r.append_token(7)
    assert kv.allocate_slots(r, 2) and len(kv.block_ids("a")) == 4  # 13 tokens need a 4th
    check_kv_invariants(kv)
    kv.free(r)
    assert kv.num_free_blocks == 8
    check_kv_invariants(kv)


def test_allocate_fails_cleanly_when_full():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    r = make_request("a", list(range(12)))
    assert not kv.allocate_slots(r, 12)
    assert kv.num_free_blocks == 2 and kv.req_to_blocks == {}


def test_prefix_hit_shares_full_blocks_only():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    a = make_request("a", list(range(10)))  # 2 full blocks + 2 tokens
    assert kv.get_computed_blocks(a) == []
    assert kv.allocate_slots(a, 10)
    b = make_request("b", list(range(8)) + [77, 78, 79])
    hits = kv.get_computed_blocks(b)
    assert [h.block_id for h in hits] == kv.block_ids("a")[:2]
    assert kv.allocate_slots(b, 3, hits)
    assert kv.block_ids("b")[:2] == kv.block_ids("a")[:2]
    assert kv.block_ids("b")[2] != kv.block_ids("a")[2], "a partial block is never shared"
    assert kv.prefix_stats.hits == 8
    check_kv_invariants(kv)
    kv.free(a)
    kv.free(b)
    assert kv.num_free_blocks == 16
    check_kv_invariants(kv)


def test_full_prompt_hit_leaves_one_token_to_compute():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    a = make_request("a", list(range(8)))
    kv.allocate_slots(a, 8)
    kv.free(a)
    b = make_request("b", list(range(8)))
    hits = kv.get_computed_blocks(b)
    assert len(hits) == 1, "8 tokens = 2 full blocks, but the last must be recomputed to sample"


def test_cached_free_block_is_reused_after_release():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    a = make_request("a", list(range(9)))
    kv.allocate_slots(a, 9)
    first = kv.block_ids("a")[:2]
    kv.free(a)
    assert kv.num_free_blocks == 4
    b = make_request("b", list(range(9)))
    hits = kv.get_computed_blocks(b)
    assert [h.block_id for h in hits] == first
    assert kv.allocate_slots(b, 1, hits)
    assert kv.num_free_blocks == 1
    check_kv_invariants(kv)


def test_eviction_when_cache_is_needed():
    kv = KVCacheManager(num_blocks=3, block_size=4)
    a = make_request("a", list(range(8)))
    kv.allocate_slots(a, 8)
    kv.free(a)
    assert kv.pool.num_cached_blocks == 2
    c = make_request("c", [100 + i for i in range(12)])
    assert kv.allocate_slots(c, 12)
    assert kv.pool.num_cached_blocks == 3 - 0  # c's own three full blocks now cached, a's evicted
    assert kv.get_computed_blocks(make_request("d", list(range(8)) + [1])) == []
    check_kv_invariants(kv)


def test_caching_disabled_shares_nothing():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_caching=False)
    a = make_request("a", list(range(9)))
    kv.allocate_slots(a, 9)
    assert kv.get_computed_blocks(make_request("b", list(range(9)))) == []
    assert kv.pool.num_cached_blocks == 0
