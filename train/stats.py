"""Uncertainty of a comparison: paired bootstrap over documents (or questions), spread over seeds.

A difference of two runs on the same held-out items is a difference of ratios of sums (bits / characters,
correct / questions); resampling the items with replacement, both runs on the same resample, gives the
spread that comes from which items happened to be held out.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000


def paired_bootstrap(num_a: Sequence[float], num_b: Sequence[float], den: Sequence[float] | None = None,
                     resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict[str, float]:
    """Interval of sum(b)/sum(den) - sum(a)/sum(den) over items resampled with replacement (both runs paired).

    `num_a`, `num_b`: per item, the numerator of each run (bits of a document, 1/0 for a right answer);
    `den`: per item, the shared denominator (characters; default 1 per item).
    Returns diff (on all items), lo and hi (percentile interval), items and resamples.
    """
    a, b = np.asarray(num_a, dtype=np.float64), np.asarray(num_b, dtype=np.float64)
    d = np.ones_like(a) if den is None else np.asarray(den, dtype=np.float64)
    if not (a.shape == b.shape == d.shape) or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired bootstrap needs equal, non-empty per-item lists (got {a.shape}, {b.shape}, {d.shape})")
    n = a.size
    diff = float((b.sum() - a.sum()) / d.sum())
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    chunk = max(1, (1 << 22) // n)  # bounded memory: at most ~4M resampled indices at a time
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        stats[start:start + k] = (b[idx].sum(1) - a[idx].sum(1)) / d[idx].sum(1)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "items": n, "resamples": resamples, "level": level}


def clear(interval: dict[str, float] | None) -> bool:
    """A difference is called only when its interval excludes 0."""
    return bool(interval) and (interval["lo"] > 0 or interval["hi"] < 0)


def seed_spread(values: Sequence[float]) -> dict[str, float] | None:
    """Mean, sample standard deviation, min and max of one quantity over seeds (None for fewer than 2)."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if len(v) < 2:
        return None
    mean = sum(v) / len(v)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
    return {"seeds": len(v), "mean": mean, "sd": sd, "min": min(v), "max": max(v)}
