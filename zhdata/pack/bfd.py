"""Best-fit-decreasing bin packing of example lengths into blocks of `capacity` tokens."""

from __future__ import annotations

import numpy as np


class _FreeSpace:
    """Open bins grouped by free space, with a segment tree over 0..capacity to find the smallest free
    space >= n in O(log capacity) (no dependency of ours offers this; sorted lists cost O(bins) per insert)."""

    def __init__(self, capacity: int):
        self.size = 1
        while self.size < capacity + 1:
            self.size *= 2
        self.any = [False] * (2 * self.size)  # any[node]: some bin has a free space in the node's range
        self.bins: list[list[int]] = [[] for _ in range(capacity + 1)]

    def _set(self, free: int, flag: bool) -> None:
        i = free + self.size
        self.any[i] = flag
        i //= 2
        while i:
            self.any[i] = self.any[2 * i] or self.any[2 * i + 1]
            i //= 2

    def add(self, free: int, bin_id: int) -> None:
        if not self.bins[free]:
            self._set(free, True)
        self.bins[free].append(bin_id)

    def pop_at_least(self, n: int) -> tuple[int, int] | None:
        """Remove and return (free, bin) with the smallest free space >= n, or None."""
        free = self._first(1, 0, self.size - 1, n)
        if free < 0:
            return None
        bin_id = self.bins[free].pop()
        if not self.bins[free]:
            self._set(free, False)
        return free, bin_id

    def _first(self, node: int, lo: int, hi: int, n: int) -> int:
        """Smallest free space >= n held by some bin within the node's range, or -1."""
        if hi < n or not self.any[node]:
            return -1
        if lo == hi:
            return lo
        mid = (lo + hi) // 2
        left = self._first(2 * node, lo, mid, n)
        return left if left >= 0 else self._first(2 * node + 1, mid + 1, hi, n)


def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Bins (lists of item indices) such that each bin's total length is <= capacity.

    Items are placed longest first, each into the open bin it fills most tightly; ties by input order,
    so the result is deterministic.
    """
    lengths = np.asarray(lengths)
    if len(lengths) and lengths.max() > capacity:
        raise ValueError(f"an item of length {int(lengths.max())} exceeds the block size {capacity}")
    order = np.argsort(-lengths, kind="stable")
    space = _FreeSpace(capacity)
    bins: list[list[int]] = []
    for i in order.tolist():
        n = int(lengths[i])
        hit = space.pop_at_least(n)
        if hit is None:
            free, b = capacity, len(bins)
            bins.append([])
        else:
            free, b = hit
        bins[b].append(i)
        space.add(free - n, b)
    return bins
