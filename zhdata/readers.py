"""Read records from JSONL, JSON arrays, Parquet and plain text, plain or .gz/.zst/.xz compressed.

Every problem is reported through an `ErrorPolicy` with the file and line (or record index),
so a bad record either stops the run with a clear message or is counted, never silently lost.
Lines are read one at a time from the byte stream, so a line longer than `--max-record-mb` is
counted (`record_too_large`) without ever being held, decoded or parsed whole.
"""

from __future__ import annotations

import argparse
import codecs
import gzip
import io
import json
import lzma
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from . import fs
from .errors import ErrorPolicy, InputError

COMPRESSIONS = (".gz", ".zst", ".xz")
FORMATS = ("jsonl", "json", "parquet", "txt")
_EXT_FORMAT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "txt", ".text": "txt"}
_SKIP_NAMES = {"manifest.json", "clusters.parquet"}
# documentation beside data (README.md, LICENSE): passed over in folders, never taken for unreadable data
_DOC_SUFFIXES = {".md", ".rst"}
_DOC_PREFIXES = ("README", "LICENSE", "LICENCE", "COPYING", "NOTICE")

ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "gb18030", "big5", "auto")
DEFAULT_MAX_RECORD_MB = 64
DETECT_BYTES = 64 << 10
ENCODING_HELP = (
    "text encoding of every input file: utf-8 (default), utf-8-sig, utf-16 (with BOM), gb18030 (covers GBK and "
    "GB2312), big5, or auto: per file from its first 64 KiB (after decompression): a BOM decides first (UTF-8, "
    "UTF-16); else valid UTF-8 is UTF-8; else the block is decoded as GB18030 and as Big5 and the decoding with "
    "more of the most common Chinese characters wins (GB18030 on a tie); a decoding with errors loses")
MAX_RECORD_HELP = (f"longest line or record read, in MB (default {DEFAULT_MAX_RECORD_MB}; Parquet: the string columns "
                   "of a row); a longer one is dropped and counted as record_too_large without being decoded or parsed, "
                   "so one bad line cannot exhaust memory")

# The most frequent Chinese characters, simplified and traditional forms, for telling GB18030 from Big5.
_COMMON_HAN = frozenset(
    "的一是不了在人有我他这个们中来上大为和国地到以说时要就出会可也你对生能而子那得于着下自之年过发后作里用道行所然家种事"
    "成方多经么去法学如都同现当没动面起看定天分还进好小部其些主样理心她本前开但因只从想实日军者意无力它与长把机十民第公此"
    "已工使情明性知全三又关点正业外将两高间由问很最重并物手应战向头文体政美相见被利什二等产或新己制身果加西月话合回特代"
    "這個們來為國說時會對發後裡過種經麼學現當沒動還樣進開從實軍無與長機點業將兩間問應戰頭體見關產製話東風"
)


@dataclass(frozen=True)
class ReadOptions:
    """How every command turns bytes into records: `--encoding` and `--max-record-mb`."""

    encoding: str = "utf-8"
    max_record_mb: float = DEFAULT_MAX_RECORD_MB

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise InputError("--encoding", None, f"unknown encoding {self.encoding!r}", f"choose one of {', '.join(ENCODINGS)}")
        if not self.max_record_mb > 0:
            raise InputError("--max-record-mb", None, f"must be above 0, not {self.max_record_mb}")

    @property
    def max_record_bytes(self) -> int:
        return int(self.max_record_mb * (1 << 20))

    def params(self) -> dict[str, Any]:
        return {"encoding": self.encoding, "max_record_mb": self.max_record_mb}


def add_read_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--encoding` and `--max-record-mb`, the same on every command that reads text files."""
    p.add_argument("--encoding", choices=ENCODINGS, default="utf-8", help=ENCODING_HELP)
    p.add_argument("--max-record-mb", type=float, default=DEFAULT_MAX_RECORD_MB, metavar="MB", help=MAX_RECORD_HELP)


def read_options(args: argparse.Namespace) -> ReadOptions:
    return ReadOptions(args.encoding, args.max_record_mb)


def split_compression(path: str | Path) -> tuple[str, str | None]:
    """('name.jsonl', '.gz') for name.jsonl.gz; ('name.jsonl', None) when not compressed."""
    name = fs.name(path)
    for ext in COMPRESSIONS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return name, None


def detect_format(path: str | Path, override: str | None = None) -> str:
    if override:
        if override not in FORMATS:
            raise InputError(path, None, f"unknown format {override!r}", f"choose one of {', '.join(FORMATS)}")
        return override
    base, _ = split_compression(path)
    fmt = _EXT_FORMAT.get(Path(base).suffix.lower())
    if fmt is None:
        raise InputError(path, None, "cannot tell the format from the file name",
                         f"expected one of {', '.join(sorted(_EXT_FORMAT))} (optionally {', '.join(COMPRESSIONS)}), or pass --format")
    return fmt


def _cannot_read(path: str | Path, e: OSError, what: str = "") -> InputError:
    why = "permission denied" if isinstance(e, PermissionError) else (e.strerror or type(e).__name__).lower()
    return InputError(path, None, f"cannot read{what} ({why})")


def _open_file(path: str | Path) -> BinaryIO:
    """The one place an input file is opened (a local path or a URI, `zhdata.fs`): an unreadable file is a one-line
    error, not a traceback."""
    try:
        return fs.open_read(path)
    except OSError as e:
        raise _cannot_read(path, e) from None


def open_binary(path: str | Path) -> BinaryIO:
    """Open a file for reading bytes, decompressing by its suffix."""
    _, comp = split_compression(path)
    raw = _open_file(path)
    if comp == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if comp == ".xz":
        return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
    if comp == ".zst":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return raw


def _walk(folder: str | Path) -> list[str | Path]:
    """Files below `folder`, skipping hidden names (e.g. a run's .parts/ state); an unreadable folder is an error."""
    try:
        return fs.files(folder)
    except OSError as e:
        raise _cannot_read(e.filename or folder, e, " the folder") from None


def expand_inputs(paths: list[str | Path], fmt: str | None = None, policy: ErrorPolicy | None = None) -> list[str | Path]:
    """Files given, and every file below folders given, in a stable (sorted) order: `Path`s, or URI strings for
    remote locations (`zhdata.fs`).

    A file in a folder whose format cannot be told from its name (`.csv`, `.jsonl.bz2`; documentation such as
    README.md or LICENSE is passed over) stops the run with the list of such files; under `--on-error skip` they are passed over and listed in `policy.skipped_files`.
    """
    policy = policy or ErrorPolicy("stop")
    files: list[str | Path] = []
    for raw in paths:
        p = fs.local(raw)
        if not fs.exists(p):
            raise InputError(p, None, "no such file or folder")
        if fs.isdir(p):
            found, unknown = [], []
            for f in _walk(p):
                name = fs.name(f)
                if name in _SKIP_NAMES:
                    continue
                try:
                    detect_format(f, fmt)
                except InputError:
                    if Path(name).suffix.lower() not in _DOC_SUFFIXES and not name.upper().startswith(_DOC_PREFIXES):
                        unknown.append(f)
                    continue
                found.append(f)
            if unknown:
                policy.unreadable_files(p, unknown)
            if not found:
                raise InputError(p, None, "folder holds no JSONL, JSON, Parquet or text files")
            files.extend(found)
        else:
            detect_format(p, fmt)
            files.append(p)
    for f in files:
        _open_file(f).close()
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
    encoding: str = "utf-8"  # never "auto": resolved per file when the pieces are planned
    file_size: int | None = None  # the whole file's size when the pieces were planned: checked when a piece is read


def _scan_to_newline(fh: BinaryIO, pos: int, size: int, chunk: int = 1 << 20) -> int:
    """The offset just after the first b"\\n" at or after `pos` (or `size`), reading a chunk at a time."""
    fh.seek(pos)
    while pos < size:
        block = fh.read(chunk)
        k = block.find(b"\n")
        if k >= 0:
            return pos + k + 1
        pos += len(block)
    return size


def _count_newlines(fh: BinaryIO, start: int, end: int, chunk: int = 1 << 22) -> int:
    fh.seek(start)
    n, left = 0, end - start
    while left > 0:
        block = fh.read(min(chunk, left))
        n += block.count(b"\n")
        left -= len(block)
    return n


def plan_pieces(files: list[str | Path], fmt: str | None = None, target_bytes: int = 64 << 20,
                read: ReadOptions | None = None) -> list[Piece]:
    """Cut uncompressed line-based files at line boundaries into pieces of about `target_bytes`."""
    read = read or ReadOptions()
    pieces: list[Piece] = []
    for i, f in enumerate(files):
        ff = detect_format(f, fmt)
        enc = resolve_encoding(f, read.encoding)
        size = fs.size(f)
        splittable = ff in ("jsonl", "txt") and split_compression(f)[1] is None and enc != "utf-16"
        if not splittable or size <= target_bytes:
            pieces.append(Piece(str(f), ff, i, 0, encoding=enc, file_size=size))
            continue
        start, line, part = 0, 1, 0
        with _open_file(f) as fh:
            while start < size:
                end = _scan_to_newline(fh, start + target_bytes, size) if start + target_bytes < size else size
                pieces.append(Piece(str(f), ff, i, part, start, end, line, enc, size))
                line += _count_newlines(fh, start, end)
                start, part = end, part + 1
    return pieces


def guess_encoding(head: bytes) -> str:
    """The `--encoding auto` rule on the first bytes of a file (see ENCODING_HELP)."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the block end is fine
        return "utf-8"
    except UnicodeDecodeError:
        pass
    scores = {}
    for enc in ("gb18030", "big5"):
        try:
            text = codecs.getincrementaldecoder(enc)().decode(head, final=False)
        except UnicodeDecodeError:
            scores[enc] = -1
            continue
        scores[enc] = sum(c in _COMMON_HAN for c in text)
    return "big5" if scores["big5"] > scores["gb18030"] else "gb18030"


def resolve_encoding(path: str | Path, encoding: str) -> str:
    if encoding != "auto":
        return encoding
    with open_binary(path) as fh:
        return guess_encoding(fh.read(DETECT_BYTES))


class _Utf16Lines:
    """A UTF-16 file as UTF-8 lines, so the line reader below serves every encoding (sizes count characters)."""

    def __init__(self, raw: BinaryIO, path: str):
        self.text, self.path = io.TextIOWrapper(raw, encoding="utf-16", newline="\n"), path

    def readline(self, size: int) -> bytes:
        try:
            return self.text.readline(size).encode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(self.path, None, f"invalid UTF-16: {e.reason}", "is it really UTF-16? try --encoding auto") from None

    def read(self, size: int = -1) -> bytes:
        try:
            return self.text.read(size if size > 0 else -1).encode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(self.path, None, f"invalid UTF-16: {e.reason}", "is it really UTF-16? try --encoding auto") from None

    def __enter__(self) -> "_Utf16Lines":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.text.close()


_TOO_LARGE = None


def _lines(fh: Any, first_line: int, limit: int, length: int | None) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line without its newline) for each line; None for a line over `limit` bytes, which is skipped
    a chunk at a time and never held whole. Reads `length` bytes when given, else to the end."""
    n, pos = first_line, 0
    while length is None or pos < length:
        raw = fh.readline(limit + 1)
        if not raw:
            return
        pos += len(raw)
        if len(raw) > limit and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = fh.readline(1 << 20)
                pos += len(raw)
            yield n, _TOO_LARGE
        else:
            yield n, raw[:-1] if raw.endswith(b"\n") else raw
        n += 1


def _open_piece(piece: Piece) -> Any:
    if piece.file_size is not None and (now := fs.size(piece.path)) != piece.file_size:
        raise InputError(piece.path, None, f"changed while this run read it ({piece.file_size:,} bytes when the run was "
                         f"planned, {now:,} now)", "rerun when the file is complete: a changed file is another input")
    if piece.end is not None:
        fh = _open_file(piece.path)
        fh.seek(piece.start)
        return fh
    fh = open_binary(piece.path)
    return _Utf16Lines(fh, piece.path) if piece.encoding == "utf-16" else fh


def _decode(raw: bytes, encoding: str, path: str, where: Any, policy: ErrorPolicy) -> str | None:
    enc = "utf-8" if encoding == "utf-16" else encoding  # UTF-16 arrives as UTF-8 lines from _Utf16Lines
    try:
        return raw.decode(enc)
    except UnicodeDecodeError as e:
        if enc == "utf-8":
            policy.bad(path, where, f"invalid UTF-8 at byte {e.start} of the line (is the file in another encoding, "
                       "e.g. GBK? use --encoding gb18030, big5 or auto)", "invalid_utf8")
        else:
            policy.bad(path, where, f"invalid {encoding} at byte {e.start} of the line (another encoding? try --encoding auto)",
                       "invalid_encoding")
        return None


# JSON's \uD800-\uDFFF escapes are the only way a lone surrogate gets into a record; look closer only when one is there.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_STR = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _too_large(policy: ErrorPolicy, path: str, where: Any, limit_mb: float) -> None:
    policy.drop(path, where, f"record longer than {limit_mb:g} MB (--max-record-mb)", "record_too_large")


def _bad_unicode(policy: ErrorPolicy, path: str, where: Any) -> None:
    policy.bad(path, where, "lone surrogate escape (\\ud800-\\udfff without its pair) in JSON: not valid Unicode", "invalid_unicode")


def _iter_json_lines(lines: Iterator[tuple[int, bytes | None]], piece: Piece, read: ReadOptions,
                     policy: ErrorPolicy) -> Iterator[tuple[int, Any]]:
    for n, raw in lines:
        if raw is _TOO_LARGE:
            _too_large(policy, piece.path, n, read.max_record_mb)
            continue
        if not raw.strip():
            continue
        line = _decode(raw, piece.encoding, piece.path, n, policy)
        if line is None:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            policy.bad(piece.path, n, f"malformed JSON: {e.msg} at column {e.colno}", "malformed_json")
            continue
        if _SURROGATE_ESCAPE.search(raw) and _lone_surrogate(rec):
            _bad_unicode(policy, piece.path, n)
            continue
        yield n, rec


def _nonblank(lines: Iterator[tuple[int, bytes | None]], seen: list[bool]) -> Iterator[tuple[int, bytes | None]]:
    for n, raw in lines:
        if raw is _TOO_LARGE or raw.strip():
            seen[0] = True
            yield n, raw


def _read_whole(piece: Piece, read: ReadOptions, policy: ErrorPolicy, limited: bool) -> str | None:
    """The whole file as text: a JSON array (not a record: never limited), or a text file read as one document."""
    with _open_piece(piece) as fh:
        data = fh.read(read.max_record_bytes + 1 if limited else -1)
    if limited and len(data) > read.max_record_bytes:
        _too_large(policy, piece.path, None, read.max_record_mb)
        return None
    if not data.strip():
        policy.empty(piece.path)
        return None
    return _decode(data, piece.encoding, piece.path, None, policy)


def _json_head(piece: Piece) -> bytes:
    """The first character of a .json file, past any BOM, whitespace and UTF-16 zero bytes."""
    with open_binary(piece.path) as fh:
        return fh.read(4096).lstrip(b"\xef\xbb\xbf\xff\xfe\x00 \t\r\n")[:1]


def iter_records(piece: Piece | str | Path, fmt: str | None = None, policy: ErrorPolicy | None = None,
                 text_unit: str = "line", read: ReadOptions | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (line number or record index, record); a record is a dict, or a str for plain text.

    JSON Lines and text report 1-based line numbers; JSON arrays and Parquet 1-based record indices.
    """
    policy = policy or ErrorPolicy("stop")
    read = read or ReadOptions()
    if not isinstance(piece, Piece):
        piece = Piece(str(piece), detect_format(piece, fmt), 0, 0, encoding=resolve_encoding(piece, read.encoding))
    elif piece.encoding == "auto":
        piece = replace(piece, encoding=resolve_encoding(piece.path, "auto"))
    path = piece.path
    if piece.fmt == "parquet":
        yield from _iter_parquet(path, policy, read)
        return
    if piece.fmt == "json" and _json_head(piece) == b"[":
        yield from _iter_json_array(piece, read, policy)
        return
    if piece.fmt == "txt" and text_unit == "file":
        text = _read_whole(piece, read, policy, limited=True)
        if text is not None:
            yield 1, text
        return
    if piece.fmt not in ("jsonl", "json", "txt"):  # pragma: no cover - detect_format guards this
        raise InputError(path, None, f"unsupported format {piece.fmt}")
    seen = [False]
    with _open_piece(piece) as fh:
        length = piece.end - piece.start if piece.end is not None else None
        lines = _nonblank(_lines(fh, piece.first_line, read.max_record_bytes, length), seen)
        if piece.fmt == "txt":
            for n, raw in lines:
                if raw is _TOO_LARGE:
                    _too_large(policy, path, n, read.max_record_mb)
                    continue
                line = _decode(raw.rstrip(b"\r"), piece.encoding, path, n, policy)
                if line is not None:
                    yield n, line
        else:  # JSON Lines (and a .json file that is really JSON Lines)
            yield from _iter_json_lines(lines, piece, read, policy)
    if piece.part == 0 and not seen[0]:
        policy.empty(path)


def _iter_json_array(piece: Piece, read: ReadOptions, policy: ErrorPolicy) -> Iterator[tuple[int, Any]]:
    # a JSON array is parsed whole (json.loads: ~10x its size in memory), so --max-record-mb bounds the whole file
    with _open_piece(piece) as fh:
        over = len(fh.read(read.max_record_bytes + 1)) > read.max_record_bytes
    if over:
        raise InputError(piece.path, None, f"a JSON array over --max-record-mb {read.max_record_mb:g} MB (it is parsed "
                         "whole, so the limit bounds the whole file)", "convert it to JSON Lines (jq -c '.[]' FILE > "
                         "FILE.jsonl: each record is then read on its own), or raise --max-record-mb")
    text = _read_whole(piece, read, policy, limited=False)
    if text is None:
        return
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(piece.path, e.lineno, f"malformed JSON array: {e.msg} at column {e.colno}",
                         "a broken JSON array cannot be read past the error; fix the file or convert it to JSON Lines") from None
    check = _SURROGATE_ESCAPE_STR.search(text) is not None
    for k, item in enumerate(items, 1):
        if check and _lone_surrogate(item):
            _bad_unicode(policy, piece.path, k)
            continue
        yield k, item


def _row_bytes(batch: Any) -> Any:
    """Bytes in the top-level string columns of each row of an Arrow batch (None when it has none)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = None
    for col in batch.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_binary(col.type):
            n = pc.fill_null(pc.binary_length(col), 0)
            total = n if total is None else pc.add(total, n)
    return total


def _iter_parquet(path: str, policy: ErrorPolicy, read: ReadOptions) -> Iterator[tuple[int, Any]]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    _open_file(path).close()  # an unreadable file is one line
    try:
        pf = pq.ParquetFile(fs.readable(path))
    except Exception as e:  # pyarrow raises several types for a non-Parquet file
        raise InputError(path, None, f"not a readable Parquet file: {e}") from None
    if pf.metadata.num_rows == 0:
        policy.empty(path)
        return
    n = 0
    for batch in pf.iter_batches(batch_size=8192):
        sizes = _row_bytes(batch)
        big = pc.greater(sizes, read.max_record_bytes) if sizes is not None else None
        if big is None or not pc.any(big).as_py():
            for row in batch.to_pylist():
                n += 1
                yield n, row
            continue
        flags = big.to_pylist()  # rows over the limit are counted, never turned into Python objects
        rows = iter(batch.filter(pc.invert(big)).to_pylist())
        for too_large in flags:
            n += 1
            if too_large:
                _too_large(policy, path, n, read.max_record_mb)
            else:
                yield n, next(rows)
