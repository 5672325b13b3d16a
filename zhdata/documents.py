"""Documents: the text of each record, by one rule and one set of reasons for every command that reads text.

A plain-text line (or file) is its own text; a JSON/Parquet record's text is its `--text-field`. Records that
cannot give a text are bad records, reported through the `ErrorPolicy` (stop with FILE:LINE, or counted):
`not_an_object`, `missing_text_field`, `non_string_text`, next to the reader's own (`malformed_json`,
`invalid_utf8`, `invalid_encoding`, `invalid_unicode`). A text that is null, empty or only whitespace is no
error: it is dropped and counted as `empty_text` in both modes, like a line over `--max-record-mb`
(`record_too_large`). Every reason ends up in `policy.skipped`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from .errors import ErrorPolicy
from .readers import Piece, ReadOptions, iter_records

EMPTY_TEXT = "empty_text"


def record_text(rec: Any, field: str, path: str | Path, where: Any, policy: ErrorPolicy) -> str | None:
    """The text of one record, or None when the record was reported to `policy` (bad, or empty text)."""
    if isinstance(rec, str):
        text = rec
    elif not isinstance(rec, dict):
        policy.bad(path, where, f"record is a JSON {type(rec).__name__}, not an object or a text line", "not_an_object")
        return None
    elif field not in rec:
        fields = ", ".join(map(str, rec))[:200]
        policy.bad(path, where, f"no field {field!r} (fields: {fields}); pick one with --text-field", "missing_text_field")
        return None
    else:
        text = rec[field]
        if text is not None and not isinstance(text, str):
            policy.bad(path, where, f"field {field!r} is {type(text).__name__}, not a string", "non_string_text")
            return None
    if text is None or not text.strip():
        policy.drop(path, where, None, EMPTY_TEXT)
        return None
    return text


def iter_documents(source: Piece | str | Path, field: str = "text", policy: ErrorPolicy | None = None,
                   read: ReadOptions | None = None, text_unit: str = "line") -> Iterator[tuple[Any, str, Any]]:
    """(line or record index, text, record) of every usable document of a file or piece, in order."""
    policy = policy or ErrorPolicy("stop")
    path = source.path if isinstance(source, Piece) else source
    for where, rec in iter_records(source, policy=policy, text_unit=text_unit, read=read):
        text = record_text(rec, field, path, where, policy)
        if text is not None:
            yield where, text, rec
