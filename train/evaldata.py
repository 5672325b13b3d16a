"""Named sets of held-out text for evaluation: `--data zh=PATH --data en=PATH`."""

from __future__ import annotations

from pathlib import Path

from zhdata.errors import ErrorPolicy, InputError
from zhdata.manifest import Counts
from zhdata.readers import expand_inputs, iter_records


def parse_sets(specs: list[str]) -> dict[str, list[Path]]:
    """`NAME=PATH` (or a bare PATH, named after its stem) -> {name: files}; a name may repeat to add files."""
    sets: dict[str, list[Path]] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name.split(".")[0], spec
        if not name or not path:
            raise InputError(spec, None, "expected NAME=PATH, for example zh=heldout/zh.jsonl")
        sets.setdefault(name, []).extend(expand_inputs([path]))
    return sets


def read_texts(files: list[Path], counts: Counts, text_field: str = "text", max_docs: int | None = None,
               max_chars: int | None = None, policy: ErrorPolicy | None = None) -> list[str]:
    """Texts of the records (plain-text lines, or the `text_field` of JSONL/Parquet records), in input order.

    Stops after `max_docs` documents or once `max_chars` characters are gathered; empty texts are
    counted as dropped (`empty_text`), records without the field through the policy (`missing_field`).
    """
    policy = policy or ErrorPolicy("stop")
    texts: list[str] = []
    total = 0
    for f in files:
        for where, rec in iter_records(f, policy=policy):
            if (max_docs and len(texts) >= max_docs) or (max_chars and total >= max_chars):
                return texts
            counts.records_in += 1
            text = rec if isinstance(rec, str) else rec.get(text_field) if isinstance(rec, dict) else None
            if not isinstance(text, str):
                counts.dropped["missing_field"] += 1
                policy.bad(f, where, f"record has no string field {text_field!r}", "missing_field")
                continue
            if not text.strip():
                counts.dropped["empty_text"] += 1
                continue
            counts.records_out += 1
            texts.append(text)
            total += len(text)
    if not texts:
        raise InputError(files[0] if files else "?", None, "no non-empty text found",
                         f"the records need a string field {text_field!r} (see --text-field)")
    return texts
