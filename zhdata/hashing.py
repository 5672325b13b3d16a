"""The one stable string hash of the project."""

from __future__ import annotations

import hashlib


def hash64(text: str) -> int:
    """64-bit blake2b of the UTF-8 text as an unsigned big-endian integer: the same on every run, machine and
    library version (unlike Python's `hash` or Polars' `Expr.hash`). Exact-duplicate keys (dedupe, instruct)
    and the train/validation split (pack, quickstart) use it."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
