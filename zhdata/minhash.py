"""MinHash signatures of character n-grams by one-permutation hashing with optimal densification.

Classic MinHash (datasketch) hashes every shingle `num_perm` times. One-permutation hashing
(Li, Owen & Zhang 2012) hashes each shingle once, sends it to one of `num_perm` bins and keeps
each bin's minimum; empty bins borrow from a non-empty bin chosen by a fixed probe sequence
(Shrivastava 2017, "optimal densification"), which keeps P[sig_a[j] == sig_b[j]] equal to the
Jaccard similarity. That is one pass over the n-grams instead of `num_perm`, in numpy: the
benchmark and `tests/test_minhash.py` compare its Jaccard estimates with datasketch's.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .ngrams import codepoints, ngram_hashes, text_chunks

EMPTY = np.uint32(0xFFFFFFFF)
_PROBES = 1024


def _probe_table(num_perm: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, num_perm, 7]).integers(0, num_perm, size=(num_perm, _PROBES))


def signatures(texts: Sequence[str], num_perm: int = 128, ngram: int = 5, seed: int = 1) -> np.ndarray:
    """(len(texts), num_perm) uint32 signatures; texts shorter than `ngram` count as one shingle.

    An empty text gets the all-EMPTY signature.
    """
    out = np.full((len(texts), num_perm), EMPTY, dtype=np.uint32)
    probes = _probe_table(num_perm, seed)
    for a, b in text_chunks(texts):
        out[a:b] = _signatures(texts[a:b], num_perm, ngram, seed, probes)
    return out


def _signatures(texts: Sequence[str], num_perm: int, ngram: int, seed: int, probes: np.ndarray) -> np.ndarray:
    cp, offsets = codepoints(texts)
    n = len(texts)
    h, _, doc = ngram_hashes(cp, offsets, ngram, seed, whole_short=True)
    sig = np.full(n * num_perm, EMPTY, dtype=np.uint32)
    # bin from the high 32 bits (multiply-shift works for any num_perm), value from the low 32 bits
    bins = (((h >> np.uint64(32)) * np.uint64(num_perm)) >> np.uint64(32)).astype(np.int64)
    slot = doc * num_perm + bins
    np.minimum.at(sig, slot, (h & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    filled = np.zeros(n * num_perm, dtype=bool)
    filled[slot] = True
    sig, filled = sig.reshape(n, num_perm), filled.reshape(n, num_perm)
    _densify(sig, filled, probes)
    return sig


def _densify(sig: np.ndarray, filled: np.ndarray, probes: np.ndarray) -> None:
    """Fill each empty bin j from the first filled bin on j's fixed probe sequence (same for every text)."""
    nonempty = filled.any(axis=1)
    d, j = np.nonzero(~filled & nonempty[:, None])
    src = sig.copy()
    for t in range(probes.shape[1]):
        if len(d) == 0:
            return
        k = probes[j, t]
        ok = filled[d, k]
        sig[d[ok], j[ok]] = src[d[ok], k[ok]]
        d, j = d[~ok], j[~ok]
    if len(d):  # about (1 - 1/num_perm) ** 1024 of a text with one filled bin: take its first filled bin
        sig[d, j] = src[d, filled[d].argmax(axis=1)]


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted false-positive and
    false-negative areas of the S-curve 1 - (1 - s^r)^b around `threshold` (as datasketch does)."""
    xs_lo = np.linspace(0.0, threshold, 200)
    xs_hi = np.linspace(threshold, 1.0, 200)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - xs_lo**r) ** b, xs_lo)
            fn = np.trapezoid((1 - xs_hi**r) ** b, xs_hi)
            err = fp_weight * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best
