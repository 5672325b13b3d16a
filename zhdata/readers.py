"""Read records from JSONL, JSON arrays, Parquet and plain text, plain or .gz/.zst/.xz compressed.

Every problem is reported through an `ErrorPolicy` with the file and line (or record index),
so a bad record either stops the run with a clear message or is counted, never silently lost.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from .errors import ErrorPolicy, InputError

COMPRESSIONS = (".gz", ".zst", ".xz")
FORMATS = ("jsonl", "json", "parquet", "txt")
_EXT_FORMAT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "txt", ".text": "txt"}
_SKIP_NAMES = {"manifest.json", "clusters.parquet"}


def split_compression(path: Path) -> tuple[str, str | None]:
    """('name.jsonl', '.gz') for name.jsonl.gz; ('name.jsonl', None) when not compressed."""
    name = path.name
    for ext in COMPRESSIONS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return name, None


def detect_format(path: str | Path, override: str | None = None) -> str:
    if override:
        if override not in FORMATS:
            raise InputError(path, None, f"unknown format {override!r}", f"choose one of {', '.join(FORMATS)}")
        return override
    base, _ = split_compression(Path(path))
    fmt = _EXT_FORMAT.get(Path(base).suffix.lower())
    if fmt is None:
        raise InputError(path, None, "cannot tell the format from the file name",
                         f"expected one of {', '.join(sorted(_EXT_FORMAT))} (optionally {', '.join(COMPRESSIONS)}), or pass --format")
    return fmt


def open_binary(path: str | Path) -> BinaryIO:
    """Open a file for reading bytes, decompressing by its suffix."""
    p = Path(path)
    _, comp = split_compression(p)
    if comp == ".gz":
        return gzip.open(p, "rb")  # type: ignore[return-value]
    if comp == ".xz":
        return lzma.open(p, "rb")  # type: ignore[return-value]
    if comp == ".zst":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(p, "rb"), closefd=True))
    return open(p, "rb")


def expand_inputs(paths: list[str | Path], fmt: str | None = None) -> list[Path]:
    """Files given, and every readable file below folders given, in a stable (sorted) order."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise InputError(p, None, "no such file or folder")
        if p.is_dir():
            found = []
            for f in sorted(p.rglob("*")):
                hidden = any(part.startswith(".") for part in f.relative_to(p).parts)  # e.g. a run's .parts/ state
                if hidden or not f.is_file() or f.name in _SKIP_NAMES:
                    continue
                try:
                    detect_format(f, fmt)
                except InputError:
                    continue
                found.append(f)
            if not found:
                raise InputError(p, None, "folder holds no JSONL, JSON, Parquet or text files")
            files.extend(found)
        else:
            detect_format(p, fmt)
            files.append(p)
    return files


@dataclass(frozen=True)
class Piece:
    """A slice of one input file that a worker reads on its own: bytes [start, end) starting at line `first_line`."""

    path: str
    fmt: str
    index: int  # position of the file among the inputs
    part: int  # position of the piece in the file
    start: int = 0
    end: int | None = None
    first_line: int = 1


def plan_pieces(files: list[Path], fmt: str | None = None, target_bytes: int = 64 << 20) -> list[Piece]:
    """Cut uncompressed line-based files at line boundaries into pieces of about `target_bytes`."""
    pieces: list[Piece] = []
    for i, f in enumerate(files):
        ff = detect_format(f, fmt)
        size = f.stat().st_size
        splittable = ff in ("jsonl", "txt") and split_compression(f)[1] is None
        if not splittable or size <= target_bytes:
            pieces.append(Piece(str(f), ff, i, 0))
            continue
        start, line, part = 0, 1, 0
        with open(f, "rb") as fh:
            while start < size:
                fh.seek(start)
                block = fh.read(target_bytes)
                if start + len(block) < size:
                    rest = fh.readline()  # finish the line the cut fell in
                    block += rest
                end = start + len(block)
                pieces.append(Piece(str(f), ff, i, part, start, end, line))
                line += block.count(b"\n")
                start, part = end, part + 1
    return pieces


def _read_bytes(piece: Piece) -> bytes:
    if piece.end is None:
        with open_binary(piece.path) as fh:
            return fh.read()
    with open(piece.path, "rb") as fh:
        fh.seek(piece.start)
        return fh.read(piece.end - piece.start)


def _decode(raw: bytes, path: str, where: Any, policy: ErrorPolicy) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        policy.bad(path, where, f"invalid UTF-8 at byte {e.start} of the line (is the file in another encoding, e.g. GBK?)", "invalid_utf8")
        return None


def _iter_json_lines(data: bytes, path: str, first_line: int, policy: ErrorPolicy) -> Iterator[tuple[int, Any]]:
    for n, raw in enumerate(data.split(b"\n"), first_line):
        if not raw.strip():
            continue
        line = _decode(raw, path, n, policy)
        if line is None:
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            policy.bad(path, n, f"malformed JSON: {e.msg} at column {e.colno}", "malformed_json")


def iter_records(piece: Piece | str | Path, fmt: str | None = None, policy: ErrorPolicy | None = None,
                 text_unit: str = "line") -> Iterator[tuple[int, Any]]:
    """Yield (line number or record index, record); a record is a dict, or a str for plain text.

    JSON Lines and text report 1-based line numbers; JSON arrays and Parquet 1-based record indices.
    """
    policy = policy or ErrorPolicy("stop")
    if not isinstance(piece, Piece):
        piece = Piece(str(piece), detect_format(piece, fmt), 0, 0)
    path = piece.path
    if piece.fmt == "parquet":
        yield from _iter_parquet(path, policy)
        return
    data = _read_bytes(piece)
    if piece.part == 0 and not data.strip():
        policy.empty(path)
        return
    if piece.fmt == "jsonl":
        yield from _iter_json_lines(data, path, piece.first_line, policy)
    elif piece.fmt == "json":
        head = data.lstrip()[:1]
        if head != b"[":  # a .json file that is really JSON Lines
            yield from _iter_json_lines(data, path, 1, policy)
            return
        text = _decode(data, path, None, policy)
        if text is None:
            return
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(path, e.lineno, f"malformed JSON array: {e.msg} at column {e.colno}",
                             "a broken JSON array cannot be read past the error; fix the file or convert it to JSON Lines") from None
        for k, item in enumerate(items, 1):
            yield k, item
    elif piece.fmt == "txt":
        if text_unit == "file":
            text = _decode(data, path, None, policy)
            if text is not None:
                yield 1, text
            return
        for n, raw in enumerate(data.split(b"\n"), piece.first_line):
            if not raw.strip():
                continue
            line = _decode(raw.rstrip(b"\r"), path, n, policy)
            if line is not None:
                yield n, line
    else:  # pragma: no cover - detect_format guards this
        raise InputError(path, None, f"unsupported format {piece.fmt}")


def _iter_parquet(path: str, policy: ErrorPolicy) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a non-Parquet file
        raise InputError(path, None, f"not a readable Parquet file: {e}") from None
    if pf.metadata.num_rows == 0:
        policy.empty(path)
        return
    n = 0
    for batch in pf.iter_batches(batch_size=8192):
        for row in batch.to_pylist():
            n += 1
            yield n, row
