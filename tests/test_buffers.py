"""Unit tests for the per-loop BlockPool."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netreactor.reactor.buffers import BlockPool

KiB = 1024
MiB = 1024 * KiB


@pytest.mark.parametrize(
    "n, size",
    [(0, 64 * KiB), (1, 64 * KiB), (64 * KiB - 1, 64 * KiB), (64 * KiB, 64 * KiB),
     (64 * KiB + 1, 128 * KiB), (128 * KiB, 128 * KiB), (200 * KiB, 256 * KiB),
     (1 * MiB, 1 * MiB), (1 * MiB + 1, 2 * MiB), (5 * MiB, 8 * MiB)],
)
def test_size_class(n, size):
    assert BlockPool.size_class(n) == size


@given(st.integers(0, 1 << 30))
@settings(max_examples=200, deadline=None)
def test_size_class_is_smallest_power_of_two_from_64k(n):
    size = BlockPool.size_class(n)
    assert size >= n and size >= 64 * KiB
    assert size & (size - 1) == 0
    assert size == 64 * KiB or size // 2 < n  # the smallest class that fits


def test_get_gives_a_block_of_the_class():
    pool = BlockPool()
    for n in (1, 64 * KiB, 100 * KiB, 300 * KiB):
        block = pool.get(n)
        assert isinstance(block, bytearray)
        assert len(block) == BlockPool.size_class(n)


def test_returned_block_is_reused():
    pool = BlockPool()
    block = pool.get(100 * KiB)
    pool.put(block)
    assert pool.free_bytes == 128 * KiB
    again = pool.get(70 * KiB)  # same class
    assert again is block
    assert pool.free_bytes == 0
    fresh = pool.get(70 * KiB)  # pool empty for that class: a new block
    assert fresh is not block and len(fresh) == 128 * KiB


def test_classes_do_not_mix():
    pool = BlockPool()
    small = pool.get(10)
    pool.put(small)
    big = pool.get(100 * KiB)
    assert big is not small and len(big) == 128 * KiB
    assert pool.free_bytes == 64 * KiB
    assert pool.get(1) is small


def test_reuse_is_lifo_within_a_class():
    pool = BlockPool()
    a, b = pool.get(1), pool.get(1)
    pool.put(a)
    pool.put(b)
    assert pool.get(1) is b
    assert pool.get(1) is a


def test_free_bytes_are_bounded():
    pool = BlockPool(max_free_bytes=3 * 64 * KiB)
    blocks = [pool.get(1) for _ in range(5)]
    for blk in blocks:
        pool.put(blk)
    assert pool.free_bytes == 3 * 64 * KiB  # the 4th and 5th were dropped
    kept = [pool.get(1) for _ in range(3)]
    assert {id(b) for b in kept} == {id(b) for b in blocks[:3]}
    assert pool.free_bytes == 0
    extra = pool.get(1)  # the dropped ones are gone: a fresh block
    assert all(extra is not b for b in blocks)


def test_bound_counts_bytes_across_classes():
    pool = BlockPool(max_free_bytes=256 * KiB)
    pool.put(pool.get(200 * KiB))  # 256 KiB: exactly the bound
    assert pool.free_bytes == 256 * KiB
    pool.put(pool.get(1))  # 64 KiB more would pass it
    assert pool.free_bytes == 256 * KiB


def test_large_blocks_are_not_kept():
    pool = BlockPool(max_free_bytes=64 * MiB, max_pooled_block=1 * MiB)
    at_limit = pool.get(1 * MiB)
    over = pool.get(1 * MiB + 1)
    assert len(over) == 2 * MiB
    pool.put(over)
    assert pool.free_bytes == 0
    assert pool.get(2 * MiB) is not over
    pool.put(at_limit)  # exactly max_pooled_block is kept
    assert pool.free_bytes == 1 * MiB
    assert pool.get(1 * MiB) is at_limit


def test_default_limits():
    pool = BlockPool()
    assert pool.max_free_bytes == 8 * MiB
    assert pool.max_pooled_block == 4 * MiB
    big = pool.get(5 * MiB)  # 8 MiB class: never pooled by default
    pool.put(big)
    assert pool.free_bytes == 0


def test_clear():
    pool = BlockPool()
    blocks = [pool.get(n) for n in (1, 100 * KiB, 300 * KiB)]
    for blk in blocks:
        pool.put(blk)
    assert pool.free_bytes == (64 + 128 + 512) * KiB
    pool.clear()
    assert pool.free_bytes == 0
    assert all(pool.get(len(b)) is not b for b in blocks)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3 * MiB)), max_size=60))
@settings(max_examples=100, deadline=None)
def test_accounting_invariant(ops):
    """free_bytes always equals what is pooled, never exceeds the bound, and no block is handed out twice."""
    pool = BlockPool(max_free_bytes=2 * MiB, max_pooled_block=1 * MiB)
    out = []
    for is_get, n in ops:
        if is_get or not out:
            blk = pool.get(n)
            assert len(blk) >= n
            assert all(blk is not o for o in out)
            out.append(blk)
        else:
            pool.put(out.pop(n % len(out)))
        pooled = sum(len(b) for lst in pool._free.values() for b in lst)
        assert pool.free_bytes == pooled <= pool.max_free_bytes
        assert all(len(b) <= pool.max_pooled_block for lst in pool._free.values() for b in lst)
