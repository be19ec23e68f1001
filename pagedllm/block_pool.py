"""The pool of KV-cache blocks: ref counts, an LRU free list and the prefix-cache index.

A block is a page of the KV cache holding `block_size` tokens of every layer. A block is *free* when no
request references it (ref_cnt == 0). A free block may still hold a cached prefix: it stays findable by
its hash until the allocator reuses it, so freeing and evicting are one list:

    free list (OrderedDict, head evicted first)
    head -> [uncached blocks ...] [cached blocks, least recently freed ... most recently freed] <- tail

Uncached blocks go to the head (nothing is lost by reusing them); cached blocks go to the tail, so the
prefix that was used last is evicted last.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable


@dataclass(slots=True, eq=False)
class KVBlock:
    """One KV-cache block.

    Attributes:
        block_id: index into the KV-cache tensors.
        ref_cnt: requests whose block table holds this block.
        block_hash: chained hash of the block's tokens and every token before them, once the block is
            full and cached; None otherwise.
        token_ids: the block's tokens when cached, to rule out hash collisions.
    """

    block_id: int
    ref_cnt: int = 0
    block_hash: int | None = None
    token_ids: tuple[int, ...] | None = None


def hash_block(parent_hash: int | None, token_ids: tuple[int, ...]) -> int:
    """Chained block hash: equal hashes mean equal tokens in this block *and* in every block before it."""
    return hash((parent_hash, token_ids))


class BlockPool:
    """Hands out and takes back KV blocks; indexes full blocks by hash for prefix caching."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.enable_caching = enable_caching
        self._free: OrderedDict[int, KVBlock] = OrderedDict((b.block_id, b) for b in self.blocks)
        self._cached: dict[int, KVBlock] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request references (cached ones among them can be evicted on demand)."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def lookup(self, block_hash: int, token_ids: tuple[int, ...]) -> KVBlock | None:
        """The cached block for this hash, if its tokens really match (hash collisions are possible)."""
        block = self._cached.get(block_hash)
        if block is None or block.token_ids != token_ids:
            return None
        return block

    def allocate(self, n: int) -> list[KVBlock]:
        """Take n blocks from the head of the free list, evicting their cached contents."""
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} blocks with {len(self._free)} free")
        out = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None:
                self._evict(block)
            block.ref_cnt = 1
            out.append(block)
        return out

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Add a reference to blocks found in the prefix cache (taking free ones off the free list)."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def release(self, blocks: Iterable[KVBlock]) -> None:
        """Drop one reference from each block; pass them in the order they should be evicted."""
        for block in blocks:
            block.ref_cnt -= 1
            if block.ref_cnt < 0:
                raise RuntimeError(f"block {block.block_id} released more often than referenced")
            if block.ref_cnt == 0:
                self._free[block.block_id] = block
                if block.block_hash is None:
                    self._free.move_to_end(block.block_id, last=False)

    def cache(self, block: KVBlock, block_hash: int, token_ids: tuple[int, ...]) -> None:
        """Make a full block findable by its hash (first writer wins for a given hash)."""
        if not self.enable_caching or block.block_hash is not None or block_hash in self._cached:
            return
        block.block_hash = block_hash
        block.token_ids = token_ids
        self._cached[block_hash] = block

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (e.g. after weights change)."""
        for block in self._cached.values():
            block.block_hash = None
            block.token_ids = None
        self._cached.clear()

    def _evict(self, block: KVBlock) -> None:
        if self._cached.get(block.block_hash) is block:
            del self._cached[block.block_hash]
        block.block_hash = None
        block.token_ids = None

    def free_ids(self) -> set[int]:
        """Ids on the free list (for invariant checks)."""
        return set(self._free)
