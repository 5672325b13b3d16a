"""Exact duplicates on the whole conversation and near duplicates on the prompt, over all inputs at once.

Both are decided after the streaming pass: every kept conversation appends an 8-byte content hash,
its prompt's band keys (to `zhdata.lsh.LSHIndex`) and its MinHash signature to files on disk, so
memory does not grow with the number of rows beyond one band table at decision time. The decision is
`zhdata dedupe`'s rule (`zhdata.lsh.duplicate_clusters`): the first conversation of each cluster in input
order survives.

Prompt settings: instruction prompts are short (10-50 characters is typical), so shingles are
character 3-grams: a 12-character question has 10 of them, and a one-character edit still leaves a
Jaccard similarity of about 0.7, while 5-grams would leave ~0.5 and 13-grams nothing. Candidates from
the bands are verified on the signatures (estimated Jaccard >= threshold) so that the S-curve's
false positives do not remove distinct short prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import polars as pl

from ..hashing import hash64
from ..lsh import LSHIndex, duplicate_clusters
from ..minhash import optimal_bands, signatures
from ..normalize import dedupe_key


def conversation_hash(system: str | None, messages: list[tuple[str, str]]) -> int:
    """Stable 64-bit hash of a canonical JSON of system + messages."""
    canon = json.dumps([system, [list(m) for m in messages]], ensure_ascii=False, separators=(",", ":"))
    return hash64(canon)


def prompt_text(messages: list[tuple[str, str]]) -> str:
    return "\n".join(c for r, c in messages if r == "user")


class DuplicateFinder:
    """Collects hashes and prompt signatures batch by batch; `decide` returns the duplicate masks."""

    def __init__(self, work_dir: str | Path, exact: bool = True, near: bool = True, threshold: float = 0.7,
                 num_perm: int = 128, ngram: int = 3, seed: int = 1):
        self.dir = Path(work_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.exact, self.near = exact, near
        self.threshold, self.num_perm, self.ngram, self.seed = threshold, num_perm, ngram, seed
        self.bands, self.rows = optimal_bands(threshold, num_perm)
        self.n = 0
        self._hashes = open(self.dir / "exact.u64", "wb")
        self._sigs = open(self.dir / "signatures.u32", "wb")
        self.index = LSHIndex(self.dir / "bands", self.bands, self.rows, seed) if near else None

    def params(self) -> dict:
        return {"exact": self.exact, "near": self.near, "threshold": self.threshold, "num_perm": self.num_perm,
                "ngram": self.ngram, "bands": self.bands, "rows": self.rows, "on": "user turns, dedupe_key-normalised (mainland usage)"}

    def add(self, systems: list[str | None], messages: list[list[tuple[str, str]]]) -> None:
        if self.exact:
            np.fromiter((conversation_hash(s, m) for s, m in zip(systems, messages)), dtype=np.uint64,
                        count=len(messages)).tofile(self._hashes)
        if self.near:
            keys = dedupe_key(pl.Series([prompt_text(m) for m in messages], dtype=pl.String)).to_list()
            sigs = signatures(keys, self.num_perm, self.ngram, self.seed)
            sigs.tofile(self._sigs)
            self.index.add(sigs)
        self.n += len(messages)

    def decide(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(exact_dup mask, near_dup mask, root index of each row) by `zhdata.lsh.duplicate_clusters`: the first
        row of a cluster is in neither mask."""
        self._hashes.close()
        self._sigs.close()
        hashes = np.fromfile(self.dir / "exact.u64", dtype=np.uint64) if self.exact else None
        index = self.index if self.near and self.n else None
        # a read-only map: the pages it touches are clean page cache (RssFile), reclaimable, not heap
        sigs = np.memmap(self.dir / "signatures.u32", dtype=np.uint32, mode="r", shape=(self.n, self.num_perm)) if index else None
        roots, exact = duplicate_clusters(self.n, hashes, index, lambda u, v: self._verify(sigs, u, v))
        if self.index is not None:
            self.index.close()
        near = (roots != np.arange(self.n)) & ~exact
        return exact, near, roots

    def _verify(self, sigs: np.ndarray, u: np.ndarray, v: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """Candidate pairs whose signatures agree on >= threshold of their values (estimated Jaccard)."""
        keep = np.empty(len(u), dtype=bool)
        for a in range(0, len(u), chunk):
            su, sv = sigs[u[a:a + chunk]], sigs[v[a:a + chunk]]
            keep[a:a + chunk] = (su == sv).mean(axis=1) >= self.threshold
        return keep
