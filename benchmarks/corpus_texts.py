"""The corpus the zhdata benchmarks measure on: the text of every document under a file or folder, in order,
read by zhdata's one reader of documents (`zhdata.documents`)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zhdata.documents import iter_documents  # noqa: E402
from zhdata.readers import expand_inputs  # noqa: E402


def load_texts(corpus: str | Path, limit_mb: float | None = None) -> list[str]:
    """Texts of the documents of `corpus` in file order; with `limit_mb`, the first ones up to that many MB of UTF-8
    (the document that crosses it included)."""
    texts, size = [], 0
    for f in expand_inputs([corpus]):
        for _, text, _ in iter_documents(f):
            texts.append(text)
            size += len(text.encode())
            if limit_mb and size > limit_mb * 1e6:
                return texts
    return texts
