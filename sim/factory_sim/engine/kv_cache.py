"""Paged KV cache with block-hashed prefix caching and LRU eviction.

The cache holds ``num_blocks`` blocks of ``block_size`` tokens. A block of a prompt that is
full and computed gets a hash chained from its predecessor's (so a hash names the whole
prefix up to that block). Freed blocks stay in the cache with their hash until they are
needed again: the free list is ordered least recently used first, and allocating a block
evicts whatever hash it carried. Usage is ``1 - free / total``, where cached-but-unused
blocks count as free: the same definition as vLLM's ``kv_cache_usage_perc``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class Block:
    """One KV block: a reference count and, once full and computed, a prefix hash."""

    __slots__ = ("block_hash", "index", "ref_count")

    def __init__(self, index: int) -> None:
        self.index = index
        self.ref_count = 0
        self.block_hash: int | None = None


def block_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """Chained hashes of every full block of ``token_ids``."""
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[start : start + block_size])))
        hashes.append(parent)
    return hashes


class KVCache:
    """Block allocator plus prefix cache (hash -> block)."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks, least recently used first; the head is evicted first.
        self._free: OrderedDict[int, Block] = OrderedDict((b.index, b) for b in self._blocks)
        self._cached: dict[int, Block] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_blocks

    def lookup(self, hashes: Sequence[int]) -> list[Block]:
        """The cached blocks for the longest cached prefix of ``hashes``."""
        if not self.enable_prefix_caching:
            return []
        hits: list[Block] = []
        for block_hash in hashes:
            block = self._cached.get(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits

    def can_allocate(self, num_new: int, hits: Sequence[Block]) -> bool:
        """Whether ``num_new`` fresh blocks plus touching ``hits`` fits in free blocks."""
        idle_hits = sum(1 for b in hits if b.ref_count == 0)
        return num_new + idle_hits <= self.num_free

    def allocate(self, num_new: int, hits: Sequence[Block]) -> list[Block]:
        """Take ``hits`` (shared) and ``num_new`` fresh blocks; call can_allocate first."""
        for block in hits:
            if block.ref_count == 0:
                del self._free[block.index]
            block.ref_count += 1
        return list(hits) + [self._take() for _ in range(num_new)]

    def try_allocate_one(self) -> Block | None:
        return self._take() if self._free else None

    def register(self, block: Block, block_hash: int) -> None:
        """Mark a full, computed block as holding the prefix named ``block_hash``."""
        if not self.enable_prefix_caching or block.block_hash is not None:
            return
        if block_hash not in self._cached:
            block.block_hash = block_hash
            self._cached[block_hash] = block

    def free(self, blocks: Sequence[Block]) -> None:
        """Release a sequence's blocks; hashed ones stay cached until evicted."""
        for block in reversed(blocks):  # tail blocks are evicted before the shared head
            block.ref_count -= 1
            if block.ref_count > 0:
                continue
            self._free[block.index] = block
            if block.block_hash is None:
                self._free.move_to_end(block.index, last=False)  # reuse plain blocks first

    def _take(self) -> Block:
        _, block = self._free.popitem(last=False)
        if block.block_hash is not None:
            self._cached.pop(block.block_hash, None)
            block.block_hash = None
        block.ref_count = 1
        return block
