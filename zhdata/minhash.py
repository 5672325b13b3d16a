"""MinHash signatures of character n-grams by one-permutation hashing with optimal densification.

Classic MinHash (datasketch) hashes every shingle `num_perm` times. One-permutation hashing
(Li, Owen & Zhang 2012) hashes each shingle once, sends it to one of `num_perm` bins and keeps
each bin's minimum; empty bins borrow from a non-empty bin chosen by a fixed probe sequence
(Shrivastava 2017, "optimal densification"), which keeps P[sig_a[j] == sig_b[j]] equal to the
Jaccard similarity. That is one pass over the n-grams instead of `num_perm`, in numpy: the
benchmark and `tests/test_minhash.py` compare its Jaccard estimates with datasketch's.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from .ngrams import codepoints, ngram_hashes, text_chunks

EMPTY = np.uint32(0xFFFFFFFF)
_PROBES = 1024
_CHUNK_CHARS = 1 << 16  # texts hashed together: arrays of 2^16 n-grams stay in cache (1.2x faster than 2^18)
_DENSIFY_ROWS = 1 << 16  # texts densified together: a few large numpy passes, not many small ones
_GROUP = 1024  # texts of similar filled-bin counts densified together (a running min over (texts, num_perm))


@lru_cache(maxsize=8)
def _probe_order(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, rank_by_bin, own_rank): order[j] lists every bin in the order bin j's probe sequence first reaches it
    (bins it never reaches last, ascending); rank_by_bin[k, j] is k's position in order[j]; own_rank[j] is j's. An
    empty bin j copies the filled bin that comes first in order[j]: the first filled bin on its probe sequence, else
    (about (1 - 1/num_perm) ** 1024 of a text with one filled bin) the text's first filled bin."""
    probes = np.random.default_rng([seed, num_perm, 7]).integers(0, num_perm, size=(num_perm, _PROBES))
    first = np.full((num_perm, num_perm), _PROBES, dtype=np.int64)
    np.minimum.at(first, (np.repeat(np.arange(num_perm), _PROBES), probes.ravel()), np.tile(np.arange(_PROBES), num_perm))
    order = np.argsort(first * num_perm + np.arange(num_perm), axis=1)
    rank_by_bin = np.ascontiguousarray(np.argsort(order, axis=1).astype(np.uint8 if num_perm <= 256 else np.uint16).T)
    own_rank = rank_by_bin.diagonal().copy()
    for a in (order, rank_by_bin, own_rank):
        a.flags.writeable = False  # shared through the cache
    return order, rank_by_bin, own_rank


def signatures(texts: Sequence[str], num_perm: int = 128, ngram: int = 5, seed: int = 1) -> np.ndarray:
    """(len(texts), num_perm) uint32 signatures; texts shorter than `ngram` count as one shingle.

    An empty text gets the all-EMPTY signature.
    """
    out = np.full((len(texts), num_perm), EMPTY, dtype=np.uint32)
    filled = np.zeros((len(texts), num_perm), dtype=bool)
    for a, b in text_chunks(texts, _CHUNK_CHARS):
        _bin_minima(texts[a:b], out[a:b], filled[a:b], ngram, seed)
    tables = _probe_order(num_perm, seed)
    for a in range(0, len(texts), _DENSIFY_ROWS):
        _densify(out[a : a + _DENSIFY_ROWS], filled[a : a + _DENSIFY_ROWS], *tables)
    return out


def _bin_minima(texts: Sequence[str], sig: np.ndarray, filled: np.ndarray, ngram: int, seed: int) -> None:
    """Each text's n-gram hashes sent to bins: per bin the minimum, and whether any n-gram landed there."""
    num_perm = sig.shape[1]
    cp, offsets = codepoints(texts)
    h, _, doc = ngram_hashes(cp, offsets, ngram, seed, whole_short=True)
    # bin from the high 32 bits (multiply-shift works for any num_perm), value from the low 32 bits
    bins = (((h >> np.uint64(32)) * np.uint64(num_perm)) >> np.uint64(32)).astype(np.int64)
    slot = doc * num_perm + bins
    np.minimum.at(sig.reshape(-1), slot, h.astype(np.uint32))  # the cast keeps the low 32 bits
    filled.reshape(-1)[slot] = True


def _densify(sig: np.ndarray, filled: np.ndarray, order: np.ndarray, rank_by_bin: np.ndarray,
             own_rank: np.ndarray) -> None:
    """Fill each empty bin j from the filled bin that comes first in order[j] (same for every text).

    That bin is order[j, min over filled k of rank_by_bin[k, j]]: per text, a running min over its filled bins'
    rank rows, texts grouped by filled count (a shorter text repeats its last filled bin), instead of walking each
    empty bin's probe sequence (which took 2/3 of the time on short texts). A filled bin j gets own_rank[j], so
    it copies itself."""
    num_perm = sig.shape[1]
    count = filled.sum(axis=1)
    rows = np.flatnonzero((count > 0) & (count < num_perm))
    rows = rows[np.argsort(count[rows], kind="stable")]
    row_base = np.arange(num_perm) * num_perm
    for a in range(0, len(rows), _GROUP):
        r, f = rows[a : a + _GROUP], count[rows[a : a + _GROUP]]
        fil = filled[r]
        ks = np.flatnonzero(fil) % num_perm  # filled bins, text by text
        starts = np.cumsum(f) - f
        m = rank_by_bin[ks[starts]]
        for t in range(1, int(f[-1])):
            np.minimum(m, rank_by_bin[ks[starts + np.minimum(t, f - 1)]], out=m)
        first = order.ravel()[row_base + np.where(fil, own_rank, m)]
        sig[r] = np.take_along_axis(sig[r], first, axis=1)


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
