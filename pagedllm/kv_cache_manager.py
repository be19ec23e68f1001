"""Block tables: which KV blocks hold which request's tokens, with automatic prefix caching.

A request's block table maps its token positions to blocks: token t lives in
`table[t // block_size]` at offset `t % block_size`. Only *full* blocks are cached, keyed by a hash
chained over every token up to the block's end, so a hit on block i implies hits on blocks 0..i-1.
The last, partial block of a request is never shared.
"""
from __future__ import annotations

from dataclasses import dataclass

from pagedllm.block_pool import BlockPool, KVBlock, hash_block
from pagedllm.request import Request


@dataclass
class PrefixCacheStats:
    """Counters of prefix-cache lookups, in tokens (as vLLM reports them)."""

    queries: int = 0
    hits: int = 0


class KVCacheManager:
    """Allocates, shares and frees KV blocks for requests."""

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVBlock]] = {}
        self._block_ids: dict[str, list[int]] = {}
        self._num_cached_blocks: dict[str, int] = {}
        self.prefix_stats = PrefixCacheStats()

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Share of blocks referenced by live requests (0.0 when idle, whatever is cached)."""
        return 1.0 - self.pool.num_free_blocks / self.pool.num_blocks

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix; only when no request holds a block (as vLLM's).

        Benchmarks call it between runs of the same prompts, so that a run does not skip the
        prefill its predecessor paid for. Returns whether it reset.
        """
        if self.pool.num_free_blocks != self.pool.num_blocks:
            return False
        self.pool.reset_prefix_cache()
        return True

    def get_computed_blocks(self, request: Request) -> list[KVBlock]:
        """Longest run of cached full blocks that prefix the request's tokens.

        At least one token is always left to compute, since the step that computes a request's last
        token is the one that samples its next.
        """
        if not self.enable_caching:
            return []
        max_blocks = (request.num_tokens - 1) // self.block_size
        self._extend_block_hashes(request, max_blocks)
        hits: list[KVBlock] = []
        tokens = request.all_token_ids
        bs = self.block_size
        for i in range(max_blocks):
            block = self.pool.lookup(request.block_hashes[i], tuple(tokens[i * bs:(i + 1) * bs]))
            if block is None:
                break
            hits.append(block)
        self.prefix_stats.queries += request.num_tokens
        self.prefix_stats.hits += len(hits) * bs
        return hits

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       computed_blocks: list[KVBlock] | None = None) -> bool:
        """Give the request blocks for `num_new_tokens` more tokens; False (and no change) if too few.

        Args:
            request: the request; its num_computed_tokens excludes `computed_blocks`.
            num_new_tokens: tokens to compute this step.
            computed_blocks: prefix-cache hits from get_computed_blocks (only at admission).
        """
        rid = request.request_id
        bs = self.block_size
        table = self.req_to_blocks.get(rid)
        if table is not None and not computed_blocks:
            # NOTE: the common decode step: the tokens fit the blocks the request has.
            num_total = request.num_computed_tokens + num_new_tokens
            if num_total <= len(table) * bs:
                # (inline, not _cache_full_blocks' own test: a call per request per step costs)
                if self.enable_caching and num_total // bs > self._num_cached_blocks.get(rid, 0):
                    self._cache_full_blocks(request, table, num_total // bs)
                return True
        if table is None:
            table = self.req_to_blocks[rid] = []
            self._block_ids[rid] = []
        hits = computed_blocks or ()
        num_total = request.num_computed_tokens + len(hits) * bs + num_new_tokens
        num_new_blocks = -(-num_total // bs) - len(table) - len(hits)
        if num_new_blocks > 0 or hits:
            # Hits that sit on the free list stop being free once touched.
            num_evictable_hits = sum(1 for b in hits if b.ref_cnt == 0)
            if num_new_blocks > self.pool.num_free_blocks - num_evictable_hits:
                if not table:
                    del self.req_to_blocks[rid], self._block_ids[rid]
                return False
            new = list(hits)
            if hits:
                self.pool.touch(hits)
            if num_new_blocks > 0:
                new += self.pool.allocate(num_new_blocks)
            table.extend(new)
            self._block_ids[rid].extend(b.block_id for b in new)
        if self.enable_caching:
            self._cache_full_blocks(request, table, num_total // bs)
        return True

    def free(self, request: Request) -> None:
        """Release the request's blocks, tail first, so its prefix outlives its suffix in the cache."""
        table = self.req_to_blocks.pop(request.request_id, None)
        self._block_ids.pop(request.request_id, None)
        self._num_cached_blocks.pop(request.request_id, None)
        if table:
            self.pool.release(reversed(table))

    def block_ids(self, request_id: str) -> list[int]:
        """The request's block table as ids. NOTE: the live list, not a copy: do not modify it."""
        return self._block_ids.get(request_id, [])

    def _cache_full_blocks(self, request: Request, table: list[KVBlock], num_full: int) -> None:
        """Index the request's blocks that became full since the last call (none: no work)."""
        start = self._num_cached_blocks.get(request.request_id, 0)
        # NOTE: a token still being sampled (async scheduling) is not in all_token_ids: a block is
        # hashed once all of its tokens are known, at a later step.
        num_full = min(num_full, len(request.all_token_ids) // self.block_size)
        if num_full <= start:
            return
        self._extend_block_hashes(request, num_full)
        bs = self.block_size
        tokens = request.all_token_ids
        for i in range(start, num_full):
            self.pool.cache(table[i], request.block_hashes[i], tuple(tokens[i * bs:(i + 1) * bs]))
        self._num_cached_blocks[request.request_id] = num_full

    def _extend_block_hashes(self, request: Request, num_full: int) -> None:
        hashes = request.block_hashes
        bs = self.block_size
        tokens = request.all_token_ids
        for i in range(len(hashes), num_full):
            parent = hashes[i - 1] if i else None
            hashes.append(hash_block(parent, tuple(tokens[i * bs:(i + 1) * bs])))
