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


def record_text(rec: object, field: str, path: Path, where: object, policy: ErrorPolicy) -> tuple[str | None, str | None]:
    """(text, None) for a usable record, or (None, reason): "empty_text", or a bad record's reason after
    `policy` has stopped the run or counted it."""
    if isinstance(rec, str):
        return (rec, None) if rec else (None, "empty_text")
    if not isinstance(rec, dict):
        reason, problem = "not_an_object", f"record is a {type(rec).__name__}, not an object or a text line"
    elif field not in rec:
        reason, problem = "missing_text_field", (f"record has no {field!r} field (fields: {', '.join(map(str, rec))[:200]}); "
                                                 "pass --text-field NAME to say which field holds the text")
    elif rec[field] is not None and not isinstance(rec[field], str):
        reason, problem = "non_string_text", f"field {field!r} is {type(rec[field]).__name__}, not a string"
    else:
        return (rec[field], None) if rec[field] else (None, "empty_text")
    policy.bad(path, where, problem, reason)
    return None, reason


def iter_texts(paths: Iterable[str | Path], field: str = "text", limit_chars: int | None = None,
               policy: ErrorPolicy | None = None) -> Iterator[str]:
    """Texts of every record of every file under `paths`, in order, stopping after `limit_chars` characters."""
    total = 0
    policy = policy or ErrorPolicy("stop")
    for f in expand_inputs(list(paths)):
        for where, rec in iter_records(f, policy=policy):
            text, _ = record_text(rec, field, f, where, policy)
            if text is None:
                continue
            yield text
            total += len(text)
            if limit_chars is not None and total >= limit_chars:
                return


def sample_texts(paths: Iterable[str | Path], max_chars: int, field: str = "text") -> list[str]:
    """Up to `max_chars` characters of text, shared evenly between the files (so every source is represented)."""
    files = expand_inputs(list(paths))
    out: list[str] = []
    budget, left = max_chars, len(files)
    for f in files:
        share = budget // left
        got = list(iter_texts([f], field, share))
        out.extend(got)
        budget -= sum(map(len, got))
        left -= 1
    return out
