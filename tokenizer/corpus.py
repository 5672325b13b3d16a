"""Text from corpora for tokenizer work: any file `zhdata.readers` reads, one text per record."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator

from zhdata.errors import ErrorPolicy, InputError
from zhdata.readers import expand_inputs, iter_records

# CJK ideographs (unified, extensions A-F, compatibility) and CJK punctuation/fullwidth forms.
CJK_RE = re.compile("[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0002fa1f]")
HAN_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")


def has_cjk(text: str) -> bool:
    return CJK_RE.search(text) is not None


def record_text(rec: object, field: str, path: Path, where: object) -> str | None:
    """The text of a record: a plain-text line, or `rec[field]` (None when empty)."""
    if isinstance(rec, str):
        return rec or None
    if isinstance(rec, dict):
        if field not in rec:
            raise InputError(path, where, f"record has no {field!r} field (fields: {', '.join(map(str, rec))[:200]})",
                             "pass --text-field NAME to say which field holds the text")
        value = rec[field]
        return value if isinstance(value, str) and value else None
    raise InputError(path, where, f"record is a {type(rec).__name__}, not an object or a text line")


def iter_texts(paths: Iterable[str | Path], field: str = "text", limit_chars: int | None = None,
               policy: ErrorPolicy | None = None) -> Iterator[str]:
    """Texts of every record of every file under `paths`, in order, stopping after `limit_chars` characters."""
    total = 0
    for f in expand_inputs(list(paths)):
        for where, rec in iter_records(f, policy=policy):
            text = record_text(rec, field, f, where)
            if text is None:
                continue
            yield text
            total += len(text)
            if limit_chars is not None and total >= limit_chars:
                return


def sample_texts(paths: Iterable[str | Path], max_chars: int, field: str = "text", per_file: bool = True) -> list[str]:
    """Up to `max_chars` characters of text, shared evenly between the files (so every source is represented)."""
    files = expand_inputs(list(paths))
    if not per_file:
        return list(iter_texts(files, field, max_chars))
    out: list[str] = []
    budget, left = max_chars, len(files)
    for f in files:
        share = budget // left
        got = list(iter_texts([f], field, share))
        out.extend(got)
        budget -= sum(map(len, got))
        left -= 1
    return out
