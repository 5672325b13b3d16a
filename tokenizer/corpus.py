"""Text from corpora for tokenizer work: the documents (`zhdata.documents`) of any file `zhdata.readers` reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator

from zhdata.documents import iter_documents
from zhdata.errors import ErrorPolicy
from zhdata.readers import ReadOptions, expand_inputs

# CJK ideographs (unified, extensions A-F, compatibility) and CJK punctuation/fullwidth forms.
CJK_RE = re.compile("[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0002fa1f]")
HAN_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")


def has_cjk(text: str) -> bool:
    return CJK_RE.search(text) is not None


def iter_texts(paths: Iterable[str | Path], field: str = "text", limit_chars: int | None = None,
               policy: ErrorPolicy | None = None, read: ReadOptions | None = None) -> Iterator[str]:
    """Texts of every document of every file under `paths`, in order, stopping after `limit_chars` characters."""
    total = 0
    policy = policy or ErrorPolicy("stop")
    for f in expand_inputs(list(paths), policy=policy):
        for _, text, _ in iter_documents(f, field, policy, read):
            yield text
            total += len(text)
            if limit_chars is not None and total >= limit_chars:
                return


def sample_texts(paths: Iterable[str | Path], max_chars: int, field: str = "text", read: ReadOptions | None = None,
                 policy: ErrorPolicy | None = None) -> list[str]:
    """Up to `max_chars` characters of text, shared evenly between the files (so every source is represented)."""
    policy = policy or ErrorPolicy("stop")
    files = expand_inputs(list(paths), policy=policy)
    out: list[str] = []
    budget, left = max_chars, len(files)
    for f in files:
        share = budget // left
        got = list(iter_texts([f], field, share, policy, read))
        out.extend(got)
        budget -= sum(map(len, got))
        left -= 1
    return out
