"""Named sets of held-out text for evaluation: `--data zh=PATH --data en=PATH`."""

from __future__ import annotations

from pathlib import Path

from zhdata.errors import ErrorPolicy, InputError
from zhdata.manifest import Counts
from zhdata.documents import iter_documents
from zhdata.readers import ReadOptions, expand_inputs


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
               max_chars: int | None = None, policy: ErrorPolicy | None = None,
               read: ReadOptions | None = None) -> list[str]:
    """Texts of the documents (`zhdata.documents`: plain-text lines, or the `text_field` of records), in input order.

    Stops after `max_docs` documents or once `max_chars` characters are gathered; records that give no text
    (empty, or bad under --on-error skip) are counted in `counts` by reason.
    """
    policy = policy or ErrorPolicy("stop")
    mark = policy.skipped.copy()
    texts: list[str] = []
    total = 0
    for text in (text for f in files for _, text, _ in iter_documents(f, text_field, policy, read)):
        if (max_docs and len(texts) >= max_docs) or (max_chars and total >= max_chars):
            break
        texts.append(text)
        total += len(text)
    dropped = policy.skipped - mark
    counts.records_in += len(texts) + sum(dropped.values())
    counts.records_out += len(texts)
    counts.dropped.update(dropped)
    if not texts:
        raise InputError(files[0] if files else "?", None, "no non-empty text found",
                         f"the records need a string field {text_field!r} (see --text-field)")
    return texts
