"""Deterministic train/validation assignment by a stable hash of the document's content."""

from __future__ import annotations

from ..hashing import hash64


def split_of(key: str, val_fraction: float) -> str:
    """'val' for a fixed `val_fraction` of keys, 'train' otherwise; the same key always lands in the same split
    (`hash64` is stable across runs, machines and library versions)."""
    if val_fraction <= 0:
        return "train"
    return "val" if hash64(key) < val_fraction * 2**64 else "train"
