"""Character n-gram hashing over a whole batch of texts at once, in numpy.

The hashes are our own arithmetic on Unicode code points (a seeded polynomial followed by the
splitmix64 finaliser), so they are identical across platforms and library versions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

_U64 = np.uint64
_M1, _M2 = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB)


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective, well-mixing map of uint64 arrays."""
    z = z ^ (z >> _U64(30))  # a new array; the rest in place
    z *= _M1
    z ^= z >> _U64(27)
    z *= _M2
    z ^= z >> _U64(31)
    return z


def seeded(seed: int, salt: int = 0) -> np.uint64:
    return mix64(np.array([(seed * 0x9E3779B97F4A7C15 + salt) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]


def codepoints(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All texts' code points concatenated (uint32) and the offsets of each text (length n + 1)."""
    lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    cp = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    return cp, offsets


def _powers(mult: np.uint64, total: int) -> tuple[np.ndarray, np.ndarray]:
    """(mult^(j+1), mult^-(j+1)) for j < total, mod 2^64; up to 2^20 of them kept per multiplier (16 MB), not recomputed
    for every chunk."""
    have = _POWERS.get(int(mult))
    if have is None or len(have[0]) < total:
        size = min(max(total, 1 << 16, 2 * len(have[0]) if have else 0), 1 << 20) if total <= 1 << 20 else total
        inv = _U64(pow(int(mult), -1, 1 << 64))
        have = (np.cumprod(np.full(size, mult, dtype=np.uint64)), np.cumprod(np.full(size, inv, dtype=np.uint64)))
        if size <= 1 << 20:
            _POWERS[int(mult)] = have
    return have[0][:total], have[1][:total]


_POWERS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _window_polynomial(cp: np.ndarray, n: int, mult: np.uint64) -> np.ndarray:
    """sum_k cp[i+k] * mult^(n-1-k) mod 2^64 for every window i, in a constant number of passes:
    with Q[j] = sum_{t<j} cp[t] * mult^-(t+1) (mult is odd, so invertible mod 2^64), the window is
    (Q[i+n] - Q[i]) * mult^(i+n). uint64 products and sums wrap mod 2^64, which is what we want."""
    total = len(cp)
    pw, ipw = _powers(mult, total)  # pw[j] = mult^(j+1), ipw[t] = mult^-(t+1)
    q = np.zeros(total + 1, dtype=np.uint64)
    np.cumsum(cp.astype(np.uint64) * ipw, out=q[1:])
    return (q[n:] - q[: total - n + 1]) * pw[n - 1 :]  # window i ends at t = i+n-1: times mult^(i+n)


def _horner(cp: np.ndarray, n: int, mult: np.uint64) -> np.ndarray:
    """The same window polynomial as `_window_polynomial` by Horner's rule on shifted views: n - 1 in-place
    multiply-adds, fewer passes than the prefix sums for short n (3.2x faster at n = 5)."""
    m = len(cp) - n + 1
    c = cp.astype(np.uint64)
    h = c[:m].copy()
    for k in range(1, n):
        h *= mult
        h += c[k : k + m]
    return h


def ngram_hashes(cp: np.ndarray, offsets: np.ndarray, n: int, seed: int = 0,
                 whole_short: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashes of every character n-gram that lies inside one text.

    Returns (hashes uint64, start positions in `cp`, text index of each n-gram). With `whole_short`,
    a non-empty text shorter than n contributes one hash of its whole content, so it is never empty.
    """
    total = len(cp)
    ndocs = len(offsets) - 1
    lens = np.diff(offsets)
    mult = seeded(seed, 1) | _U64(1)
    if total >= n:
        m = total - n + 1
        h = _horner(cp, n, mult) if n <= 8 else _window_polynomial(cp, n, mult)
        # a window crosses a text's end e (or lies in a text shorter than n) iff it starts in [e - n + 1, e)
        cross = (offsets[1:, None] - np.arange(1, n)).ravel()
        ok = np.ones(m, dtype=bool)
        ok[cross[(cross >= 0) & (cross < m)]] = False
        h, starts = h[ok], np.flatnonzero(ok)
        doc = np.repeat(np.arange(ndocs, dtype=np.int64), np.maximum(lens - n + 1, 0))
    else:
        h, starts, doc = (np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    if whole_short:
        short = np.nonzero((lens > 0) & (lens < n))[0]
        if len(short):
            extra = np.zeros(len(short), dtype=np.uint64)
            m = int(mult)
            for i, d in enumerate(short):  # rare: texts shorter than one n-gram
                acc = 0
                for c in cp[offsets[d] : offsets[d + 1]].tolist():
                    acc = (acc * m + c) & 0xFFFFFFFFFFFFFFFF
                extra[i] = acc
            h = np.concatenate([h, extra])
            starts = np.concatenate([starts, offsets[short]])
            doc = np.concatenate([doc, short])
    h ^= seeded(seed, 2)  # h is this function's own array here
    return mix64(h), starts, doc


def text_chunks(texts: Sequence[str], max_chars: int = 1 << 18) -> list[tuple[int, int]]:
    """[start, end) ranges of texts holding about `max_chars` characters each (bounded memory, cache-sized sorts)."""
    ranges, start, acc = [], 0, 0
    for i, t in enumerate(texts):
        acc += len(t)
        if acc >= max_chars:
            ranges.append((start, i + 1))
            start, acc = i + 1, 0
    if start < len(texts):
        ranges.append((start, len(texts)))
    return ranges


def duplicated_ngram_fraction(texts: Sequence[str], n: int) -> np.ndarray:
    """Per text, the fraction of its characters covered by n-grams that occur more than once in it
    (the Gopher / ChineseWebText repetition measure, on characters since Chinese has no spaces)."""
    out = np.zeros(len(texts), dtype=np.float64)
    for a, b in text_chunks(texts, 1 << 16):  # small chunks keep the sort in cache: ~3x faster than 1M
        out[a:b] = _dup_fraction(texts[a:b], n)
    return out


def _dup_fraction(texts: Sequence[str], n: int) -> np.ndarray:
    cp, offsets = codepoints(texts)
    lens = np.diff(offsets)
    out = np.zeros(len(texts), dtype=np.float64)
    h, starts, doc = ngram_hashes(cp, offsets, n)
    if len(h) == 0:
        return out
    key = h ^ mix64(np.arange(len(texts), dtype=np.uint64))[doc]
    # One plain sort of (key | start position) packed in 64 bits finds the repeats (numpy's vectorised sort of a
    # cache-sized chunk: 2x faster than first picking the n-grams whose bucket of the key is shared)
    pbits = max(int(len(cp)).bit_length(), 1)
    low = _U64((1 << pbits) - 1)
    packed = np.sort((key & ~low) | starts.astype(np.uint64))
    hi = packed & ~low
    same = hi[1:] == hi[:-1]
    dup = np.zeros(len(packed), dtype=bool)
    dup[1:] |= same
    dup[:-1] |= same
    dup_starts = np.sort((packed[dup] & low).astype(np.int64))
    if len(dup_starts) == 0:
        return out
    # characters covered: each repeated n-gram adds the part of it before the next one starts (n-grams stay inside
    # their text, so the next one in another text is at least n further)
    gap = np.empty(len(dup_starts), dtype=np.int64)
    gap[:-1] = np.minimum(np.diff(dup_starts), n)
    gap[-1] = n
    covered = np.bincount(np.searchsorted(offsets, dup_starts, side="right") - 1, weights=gap, minlength=len(texts))
    np.divide(covered, lens, out=out, where=lens > 0)
    return out
