"""Deterministic train/validation assignment by a stable hash of the document's content."""

from __future__ import annotations

import hashlib


def split_of(key: str, val_fraction: float) -> str:
    """'val' for a fixed `val_fraction` of keys, 'train' otherwise; the same key always lands in the same split
    (blake2b is stable across runs, machines and library versions, unlike Python's or Polars' hashes)."""
    if val_fraction <= 0:
        return "train"
    h = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")
    return "val" if h < val_fraction * 2**64 else "train"
