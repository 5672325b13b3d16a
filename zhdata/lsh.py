"""Global LSH over MinHash signatures with bounded memory, connected components, and the one duplicate rule.

Band keys are written to one file per band as documents arrive (8 bytes per document per band,
document index = position). Clustering then loads one band at a time, sorts it, links documents
that share a key, and merges them in a union-find array: memory is one band plus one int64 per
document, whatever the corpus size. The cluster root is always the smallest document index, so
the survivor of a cluster is its first document in corpus order.

The duplicate rule of `zhdata dedupe` and `zhdata instruct` (`duplicate_clusters`): documents are linked when
their exact keys are equal or when they are near-duplicate candidates (a shared LSH band key) that pass the
verification; a cluster is a connected component of these links; its first document in input order is kept.
Every other member is dropped as `exact_duplicate` when an earlier document has the same exact key, otherwise
as `near_duplicate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .ngrams import mix64, seeded


def band_keys(sigs: np.ndarray, bands: int, rows: int, seed: int = 0) -> np.ndarray:
    """(n, bands) uint64: a hash of each band's `rows` signature values."""
    if bands * rows > sigs.shape[1]:
        raise ValueError(f"bands x rows = {bands * rows} exceeds the signature length {sigs.shape[1]}")
    keys = np.empty((sigs.shape[0], bands), dtype=np.uint64)
    s64 = sigs.astype(np.uint64)
    for b in range(bands):
        k = np.full(sigs.shape[0], seeded(seed, 100 + b), dtype=np.uint64)
        for r in range(rows):
            k = mix64(k ^ s64[:, b * rows + r])
        keys[:, b] = k
    return keys


def equal_key_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, other): every index whose key equals an earlier index's key, paired with the first (smallest)
    index holding that key."""
    order = np.argsort(keys, kind="stable")  # stable: within a key, indices stay in order
    sk = keys[order]
    same = np.zeros(len(sk), dtype=bool)
    same[1:] = sk[1:] == sk[:-1]
    run_start = np.maximum.accumulate(np.where(same, 0, np.arange(len(sk))))
    return order[run_start[same]], order[same]


class UnionFind:
    """Vectorised union-find over document indices; every root is the smallest index of its set."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def roots(self, x: np.ndarray) -> np.ndarray:
        r = self.parent[x]
        while True:
            nxt = self.parent[r]
            if np.array_equal(nxt, r):
                return r
            r = nxt

    def union(self, u: np.ndarray, v: np.ndarray) -> None:
        u, v = np.asarray(u, dtype=np.int64), np.asarray(v, dtype=np.int64)
        while len(u):
            ru, rv = self.roots(u), self.roots(v)
            differ = ru != rv
            if not differ.any():
                return
            u, v, ru, rv = u[differ], v[differ], ru[differ], rv[differ]
            np.minimum.at(self.parent, np.maximum(ru, rv), np.minimum(ru, rv))

    def labels(self) -> np.ndarray:
        """Root of every document (path-compressed)."""
        p = self.parent
        while True:
            q = p[p]
            if np.array_equal(q, p):
                self.parent = p
                return p
            p = q


class LSHIndex:
    """Band tables spilled to `work_dir`; `add` signatures in corpus order, then `clusters`."""

    def __init__(self, work_dir: str | Path, bands: int, rows: int, seed: int = 0):
        self.dir = Path(work_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bands, self.rows, self.seed = bands, rows, seed
        self.n = 0
        self._files = [open(self.dir / f"band-{b:03d}.u64", "wb") for b in range(bands)]

    def add(self, sigs: np.ndarray) -> None:
        self.add_keys(band_keys(sigs, self.bands, self.rows, self.seed))

    def add_keys(self, keys: np.ndarray) -> None:
        for b, f in enumerate(self._files):
            np.ascontiguousarray(keys[:, b]).tofile(f)
        self.n += keys.shape[0]

    def candidate_pairs(self, band: int) -> tuple[np.ndarray, np.ndarray]:
        """(first, other): each document that shares this band's key with earlier ones, paired
        with the first document holding that key."""
        return equal_key_pairs(np.fromfile(self.dir / f"band-{band:03d}.u64", dtype=np.uint64))

    def clusters(self, verify: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                 uf: UnionFind | None = None) -> np.ndarray:
        """Cluster root (smallest member index) of every document; `verify(u, v) -> bool mask`
        keeps only candidate pairs that pass it (e.g. exact Jaccard); `uf` may hold earlier links."""
        for f in self._files:
            f.flush()
        uf = uf or UnionFind(self.n)
        for b in range(self.bands):
            u, v = self.candidate_pairs(b)
            if verify is not None and len(u):
                keep = verify(u, v)
                u, v = u[keep], v[keep]
            uf.union(u, v)
        return uf.labels()

    def close(self) -> None:
        for f in self._files:
            f.close()


def duplicate_clusters(n: int, exact_keys: np.ndarray | None = None, index: LSHIndex | None = None,
                       verify: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The duplicate rule (module doc) over `n` documents: (cluster root of every document, exact-duplicate mask).
    A document is kept when it is its own root; dropped ones are exact duplicates where the mask is set, near
    duplicates otherwise. No `exact_keys`: near duplicates only; no `index`: exact duplicates only."""
    uf = UnionFind(n)
    exact = np.zeros(n, dtype=bool)
    if exact_keys is not None:
        first, other = equal_key_pairs(exact_keys)
        uf.union(first, other)
        exact[other] = True
    return (index.clusters(verify, uf) if index is not None else uf.labels()), exact
