"""Invariants of the KV-cache bookkeeping, checked by several tests."""
from __future__ import annotations

from collections import Counter

from pagedllm.kv_cache_manager import KVCacheManager


def check_kv_invariants(kv: KVCacheManager) -> None:
    """Ref counts never negative, free + used = total, ref counts = table memberships, and a block in
    two tables only when it is a cached full block (a shared prefix)."""
    pool = kv.pool
    membership = Counter(b.block_id for table in kv.req_to_blocks.values() for b in table)
    free_ids = pool.free_ids()
    for block in pool.blocks:
        assert block.ref_cnt >= 0, f"block {block.block_id} has ref_cnt {block.ref_cnt}"
        assert block.ref_cnt == membership[block.block_id], (
            f"block {block.block_id}: ref_cnt {block.ref_cnt} but in {membership[block.block_id]} tables")
        assert (block.ref_cnt == 0) == (block.block_id in free_ids), f"block {block.block_id} free-list mismatch"
        if membership[block.block_id] > 1:
            assert block.block_hash is not None, f"block {block.block_id} shared but not a cached prefix"
    used = sum(1 for b in pool.blocks if b.ref_cnt > 0)
    assert pool.num_free_blocks + used == pool.num_blocks
    for table in kv.req_to_blocks.values():
        assert len({b.block_id for b in table}) == len(table), "a block twice in one table"
