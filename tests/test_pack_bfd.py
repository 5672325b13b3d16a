"""Best-fit-decreasing packing: every item once, no bin over capacity, and the same bins as the textbook algorithm."""

import numpy as np
import pytest

from zhdata.pack.bfd import best_fit_decreasing


def reference_bfd(lengths: list[int], capacity: int) -> list[list[int]]:
    """Textbook BFD, O(items x bins): longest first (stable), into the bin with the least free space that fits;
    among equally tight bins, the one whose free space changed last."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[int] = []
    changed: list[int] = []
    for t, i in enumerate(order):
        fits = [b for b in range(len(bins)) if free[b] >= lengths[i]]
        if fits:
            b = min(fits, key=lambda b: (free[b], -changed[b]))
        else:
            b = len(bins)
            bins.append([])
            free.append(capacity)
            changed.append(t)
        bins[b].append(i)
        free[b] -= lengths[i]
        changed[b] = t
    return bins


@pytest.mark.parametrize("capacity,seed", [(64, 0), (1024, 1), (100, 2)])
def test_bfd_matches_reference_and_respects_capacity(capacity, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, capacity + 1, size=400) // rng.integers(1, 4, size=400) + 1
    lengths = np.minimum(lengths, capacity)
    bins = best_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(lengths[b].sum() <= capacity for b in bins)
    assert sorted(map(sorted, bins)) == sorted(map(sorted, reference_bfd(lengths.tolist(), capacity)))
    # BFD never needs more than 11/9 OPT + 1 bins; OPT >= total / capacity
    assert len(bins) <= 11 / 9 * np.ceil(lengths.sum() / capacity) + 1


def test_bfd_rejects_items_longer_than_capacity():
    with pytest.raises(ValueError, match="exceeds the block size"):
        best_fit_decreasing(np.array([3, 9]), 8)
    assert best_fit_decreasing(np.array([], dtype=np.int64), 8) == []
