"""`zhdata clean`: normalise and quality-filter raw text into sharded Parquet, in parallel and resumably.

Each input file is cut into pieces of about `--piece-mb` at line boundaries; each piece becomes one
output shard `part-FFFFF-PPPP.parquet` (file index, piece index), so output order is deterministic
whatever the number of workers, and a re-run skips the shards that are already finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from . import fs
from .errors import ErrorPolicy, InputError
from .filters import FILTERS, Filters, read_blocklist
from .lock import locked_output
from .manifest import Counts, Manifest
from .langid import LangFilter, identify
from .markup import HTML_MODES, Markup
from .pii import PII_MODES, PII_TYPES, Pii
from .quality import Quality
from .normalize import OPENCC_MODES, STEPS, Normalizer
from .documents import iter_documents
from .engine import Engine, LocalEngine, add_engine_options, engine_from_args, warn_if_unshared
from .readers import Piece, ReadOptions, add_read_options, expand_inputs, plan_pieces, read_options
from .shards import ShardState, check_output_folder, run_inputs

if TYPE_CHECKING:  # polars is imported where it is used, so that `--help` does not load it (tests/test_cli.py)
    import polars as pl

DEFAULT_PIECE_MB = 64


@dataclass(frozen=True)
class CleanOptions:
    text_field: str = "text"
    text_unit: str = "line"  # plain text: one document per line, or per file
    fmt: str | None = None
    keep_fields: tuple[str, ...] = ()
    normalizer: Normalizer = Normalizer()
    filters: Filters = Filters()
    on_error: str = "stop"
    markup: Markup = Markup()
    read: ReadOptions = ReadOptions()
    pii: Pii = Pii()
    lang: LangFilter = LangFilter()
    quality: Quality = Quality()
    signals_only: bool = False  # keep every document, with the value of every signal and the reason clean would drop it


def sample_path() -> Path:
    """The built-in sample: public-domain Chinese text, some Traditional, some noisy (see sample/README.md)."""
    return Path(str(resources.files("zhdata") / "sample"))


def read_piece(piece: Piece, opts: CleanOptions, policy: ErrorPolicy) -> pl.DataFrame:
    """Documents of one piece as a frame of id, text, source and kept fields; other records go to `policy`."""
    import polars as pl

    name = fs.name(piece.path)
    ids: list[str] = []
    texts: list[str] = []
    sources: list[str] = []
    kept: dict[str, list[str | None]] = {k: [] for k in opts.keep_fields}
    for where, text, rec in iter_documents(piece, opts.text_field, policy, opts.read, opts.text_unit):
        rid, src = (rec.get("id"), rec.get("source")) if isinstance(rec, dict) else (None, None)
        ids.append(str(rid) if rid is not None else f"{name}:{where}")
        texts.append(text)
        sources.append(src if isinstance(src, str) else name)
        for k in opts.keep_fields:
            v = rec.get(k) if isinstance(rec, dict) else None
            kept[k].append(v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False))
    return pl.DataFrame({"id": ids, "text": texts, "source": sources, **kept},
                        schema={"id": pl.String, "text": pl.String, "source": pl.String, **{k: pl.String for k in kept}})


def clean_frame(df: pl.DataFrame, opts: CleanOptions) -> tuple[pl.DataFrame, pl.Series, dict[str, int], dict[str, int]]:
    """The pure batch step: (normalised frame, drop reason per row or null, modified per step, failures per filter alone).

    Markup goes to text first, on the raw documents; `--html keep` also keeps the normaliser off the tags.
    Language is identified on the text after markup (before OpenCC; only with --lang or --signals-only).
    Personal data is looked for in the normalised text (full-width digits are ASCII by then). The quality model
    (with --quality-model) scores the text as it would be written. A document that fails a filter is counted
    under the filter, then the language, then the quality score, then `--pii drop`. With `signals_only`
    the frame also holds every value a step computed (`SIGNALS`) and the `reason` clean would drop it for."""
    import polars as pl

    text, markup, modified = opts.markup.apply(df["text"])
    ident = identify(text) if opts.lang.langs or opts.signals_only else None
    lang_reason = opts.lang.reasons(ident) if opts.lang.langs else None
    norm = opts.normalizer if opts.markup.html != "keep" else replace(opts.normalizer, html=False)
    text, changed = norm.apply(text)
    modified.update(changed)
    text, pii_counts, pii_reason, changed = opts.pii.apply(text, count=opts.signals_only)
    modified.update(changed)
    df = df.with_columns(text=text)
    quality = opts.quality.score(text) if opts.quality.model else None
    quality_reason = opts.quality.reasons(quality) if quality is not None and opts.quality.min_score else None
    measures = opts.filters.measures(text)
    reason, alone = opts.filters.decide(measures)
    for extra in (lang_reason, quality_reason, pii_reason):
        if extra is not None:
            reason = reason.fill_null(extra)
            alone.update({k: v for k, v in extra.value_counts().iter_rows() if k is not None})
    if opts.signals_only:
        df = pl.concat([df, measures, markup, ident, pii_counts, *([quality.to_frame()] if quality is not None else [])],
                       how="horizontal").with_columns(reason=reason)
    return df, reason, modified, alone


SIGNALS = ("chars", "chinese_ratio", "avg_line_chars", "lines", "block_hits", "dup_ngram_frac", "markup", "markup_frac",
           "lang", "lang_score", *(f"pii_{t}" for t in PII_TYPES), "quality", "reason")


def where_expression(opts: CleanOptions) -> str:
    """The `zhdata filter --where` expression over the signals that keeps exactly what `opts` keeps."""
    return " and ".join(t for t in (opts.filters.where(), opts.lang.where(), opts.quality.where(), opts.pii.where()) if t)


def process_piece(piece: Piece, opts: CleanOptions, out_dir: str | None) -> dict[str, Any]:
    """Read, clean and (unless `out_dir` is None, i.e. --stats) write one piece; return its counts."""
    policy = ErrorPolicy(opts.on_error)
    df = read_piece(piece, opts, policy)
    df, reason, modified, alone = clean_frame(df, opts)
    counts = Counts(records_in=len(df) + sum(policy.skipped.values()))
    counts.dropped.update(policy.skipped)
    would_drop = {k: v for k, v in reason.value_counts().iter_rows() if k is not None}
    counts.modified.update({k: v for k, v in modified.items() if v})
    if opts.signals_only:  # nothing dropped: what clean would drop is in each row's `reason`
        out = df
    else:
        counts.dropped.update(would_drop)
        out = df.filter(reason.is_null())
    counts.records_out = len(out)
    stats = {"counts": counts.to_dict(), "alone": alone, "examples": policy.examples, "empty_files": policy.empty_files,
             "would_drop": would_drop if opts.signals_only else {}}
    if out_dir is not None:
        ShardState(out_dir).finish(shard_name(piece), out, stats)
    return stats


def shard_name(piece: Piece) -> str:
    return f"part-{piece.index:05d}-{piece.part:04d}"


def _task(args: tuple[Piece, CleanOptions, str | None]) -> dict[str, Any]:
    return process_piece(*args)


def run_clean(inputs: list[str | Path], out_dir: str | Path | None, opts: CleanOptions, workers: int = 1,
              piece_mb: int = DEFAULT_PIECE_MB, overwrite: bool = False, progress: bool = True,
              engine: Engine | None = None) -> Manifest:
    """Clean `inputs` into `out_dir` (or only measure, when `out_dir` is None) and return the manifest; the pieces run
    on `engine` (default: `workers` local processes)."""
    engine = engine or LocalEngine(workers)
    if out_dir is not None:
        check_output_folder(out_dir, inputs)
    warn_if_unshared(engine, [*inputs, *([out_dir] if out_dir is not None else [])])
    found = ErrorPolicy(opts.on_error)
    files = expand_inputs(inputs, opts.fmt, found)
    pieces = plan_pieces(files, opts.fmt, piece_mb << 20, opts.read)
    described, identity = run_inputs(files)  # by content: a changed input is another run, never resumed over
    params = {"inputs": identity,
              "text_field": opts.text_field, "text_unit": opts.text_unit,
              "format": opts.fmt, "keep_fields": list(opts.keep_fields), "markup": opts.markup.params(),
              "pii": opts.pii.mode, "lang": opts.lang.params(), "quality": opts.quality.params(), "signals_only": opts.signals_only, "normalize": opts.normalizer.params(),
              "filters": opts.filters.params(), "on_error": opts.on_error, "piece_mb": piece_mb, **opts.read.params()}
    manifest = Manifest("zhdata clean" if out_dir is not None else "zhdata clean --stats", params)
    manifest.inputs.extend(described)
    manifest.warnings.extend(found.skipped_files)
    state = ShardState(out_dir) if out_dir is not None else None
    todo = pieces
    if state is not None:
        state.start(params, overwrite)
        finished = state.finished()
        todo = [p for p in pieces if shard_name(p) not in finished]
    sizes = {p: (p.end - p.start if p.end is not None else fs.size(p.path)) for p in pieces}
    bar = tqdm(total=sum(sizes[p] for p in todo), unit="B", unit_scale=True, desc="clean", disable=not progress)
    if len(todo) < len(pieces):
        bar.write(f"resuming: {len(pieces) - len(todo)} of {len(pieces)} shards already done")
    results: dict[Piece, dict[str, Any]] = {}
    tasks = [(p, opts, str(out_dir) if out_dir is not None else None) for p in todo]
    for p, res in zip(todo, engine.map(_task, tasks)):
        results[p] = res
        bar.update(sizes[p])
    bar.close()
    alone: dict[str, int] = {}
    for p in pieces:
        res = results.get(p) or state.stats(shard_name(p))  # type: ignore[union-attr]
        manifest.counts.merge(Counts.from_dict(res["counts"]))
        manifest.source(fs.name(p.path)).merge(Counts.from_dict(res["counts"]))
        for k, v in res["alone"].items():
            alone[k] = alone.get(k, 0) + v
        manifest.warnings.extend(f"{f}: empty file, skipped" for f in res["empty_files"])
        manifest.extra.setdefault("bad_record_examples", []).extend(res["examples"][: max(0, 20 - len(manifest.extra.get("bad_record_examples", [])))])
    manifest.extra["filters_alone"] = alone
    if opts.signals_only:
        would: Counter = Counter()
        for p in pieces:
            would.update((results.get(p) or state.stats(shard_name(p))).get("would_drop", {}))  # type: ignore[union-attr]
        manifest.extra["would_drop"] = dict(would)
        manifest.extra["where"] = where_expression(opts)  # `zhdata filter OUT --where ...` keeps what clean keeps
    manifest.extra["shards"] = [f"{shard_name(p)}.parquet" for p in pieces]
    manifest.extra["engine"] = engine.describe()
    if out_dir is not None:
        manifest.write(out_dir)
    return manifest


def format_report(m: Manifest) -> str:
    """A short table of what was dropped and changed."""
    c = m.counts
    lines = [f"records in {c.records_in:,}  out {c.records_out:,}  dropped {sum(c.dropped.values()):,}"]
    alone = m.extra.get("filters_alone", {})
    lines.append(f"{'reason':<22}{'dropped':>10}{'fails alone':>13}")
    for name in [*FILTERS, *sorted(set(c.dropped) - set(FILTERS))]:
        if name in c.dropped or name in alone:
            lines.append(f"{name:<22}{c.dropped.get(name, 0):>10,}{alone.get(name, 0):>13,}")
    if c.modified:
        lines.append("modified: " + ", ".join(f"{k} {v:,}" for k, v in sorted(c.modified.items())))
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "clean",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn markup into text (HTML main text, man/roff, wiki, Markdown; detected per document), normalise\n"
        "(OpenCC, Unicode, control/ANSI/HTML noise, full-width letters and digits, whitespace) and\n"
        "filter (length, Chinese ratio, line length, repeated n-grams, blocklist) documents from JSONL, JSON,\n"
        "Parquet or text files (optionally .gz/.zst/.xz), streaming a piece at a time on all workers.\n\n"
        "examples:\n  zhdata clean --sample -o out/clean\n"
        "  zhdata clean corpus/ -o out/clean --workers 16 --convert tw2sp\n"
        "  zhdata clean corpus/ --stats            # what each filter would do; writes nothing\n"
        "  zhdata clean pages/ -o out/clean --html text --no-markdown   # tags stripped, not main text; Markdown kept\n"
        "  zhdata clean forum/ -o out/clean --pii drop                  # drop pages with e-mails, phones, ID numbers...\n"
        "  zhdata clean web/ -o out/clean --lang zh --min-lang-score 0.5  # Chinese pages, at least half Chinese\n"
        "  zhdata clean web/ -o out/signals --signals-only              # keep all, with every signal; then:\n"
        "  zhdata filter out/signals --where \"chinese_ratio > 0.6 and dup_ngram_frac < 0.3\" -o out/kept\n"
        "  zhdata clean web/ -o out/clean --quality-model models/quality --min-quality 0.5  # see zhdata quality train\n"
        "  zhdata clean corpus/ -o out/clean --engine ray --ray-address auto   # pieces as Ray tasks on a cluster\n"
        "A re-run with the same inputs and options skips finished shards.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="files or folders of .jsonl/.json/.parquet/.txt (optionally compressed)")
    p.add_argument("--sample", action="store_true", help="clean the built-in sample (about 3 MB of public-domain Chinese)")
    p.add_argument("-o", "--output", metavar="OUT_DIR", help="output folder for Parquet shards and manifest.json")
    p.add_argument("--stats", action="store_true", help="only report what each step and filter would do; write nothing")
    p.add_argument("--signals-only", action="store_true",
                   help="drop nothing: write every document with the value of every signal (chars, chinese_ratio, "
                   "avg_line_chars, dup_ngram_frac, markup, markup_frac, lang, lang_score, pii_TYPE counts) and the "
                   "reason clean would drop it for; choose thresholds later with `zhdata filter`")
    g = p.add_argument_group("input")
    g.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    g.add_argument("--format", choices=["jsonl", "json", "parquet", "txt"], help="override format detection by file name")
    g.add_argument("--text-unit", choices=["line", "file"], default="line", help="plain text: a document per line (default) or per file")
    g.add_argument("--keep-fields", default="", help="comma-separated input fields to keep as metadata columns")
    g.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                   help="bad records (malformed JSON, invalid UTF-8 or Unicode, missing or non-string text) and files of "
                   "unknown format in input folders: stop with an error (default) or count and skip")
    add_read_options(g)
    g = p.add_argument_group("markup to text (detected per document, counted as modified: markup_KIND)")
    g.add_argument("--html", choices=HTML_MODES, default="main",
                   help="HTML pages: main = main text only (navigation, footers, scripts left out; default), "
                   "text = all text, tags stripped, keep = leave HTML as it is")
    for kind, what in (("roff", "man/roff source (.TH/.SH requests, \\fB escapes)"), ("wiki", "MediaWiki markup ([[links]], {{templates}})"),
                       ("markdown", "Markdown (headings, emphasis, links, fences; code kept as text)")):
        g.add_argument(f"--no-{kind}", action="store_true", help=f"keep {what} as it is")
    g = p.add_argument_group("language (CLD2; off unless --lang is given)")
    g.add_argument("--lang", default="", metavar="CODES",
                   help="keep documents whose main language is one of these ISO 639-1 codes (comma-separated, e.g. zh or "
                   "zh,en); Simplified and Traditional are both zh. Others are dropped as wrong_language")
    g.add_argument("--min-lang-score", type=float, default=0.0, metavar="X",
                   help="with --lang: drop documents with less than this share of their text in the language as "
                   "low_lang_score (default 0; 0.5 drops pages that are half English)")
    g = p.add_argument_group("quality model (trained by `zhdata quality train`; needs the quality extra)")
    g.add_argument("--quality-model", metavar="PATH",
                   help="score every document with this model (its folder or quality.bin): the `quality` column of "
                   "--signals-only, the probability that the text is like the model's reference text")
    g.add_argument("--min-quality", type=float, default=0.0, metavar="X",
                   help="with --quality-model: drop documents scoring under X as low_quality (default 0: drop none)")
    g = p.add_argument_group("personal data (e-mail, phone, ID number, bank card, IP; counted per type as pii_TYPE)")
    g.add_argument("--pii", choices=PII_MODES, default="redact",
                   help="redact = replace with <EMAIL> <PHONE> <ID_NUMBER> <BANK_CARD> <IP> (default: the page stays, "
                   "the personal data goes), drop = drop the document, keep = leave it (and do not look)")
    g = p.add_argument_group("normalisation (each step can be switched off)")
    g.add_argument("--convert", default="t2s", choices=OPENCC_MODES,
                   help="OpenCC conversion (default t2s; tw2sp also converts Taiwan phrasing; none to keep the script)")
    for step in STEPS[1:]:
        if step != "html":  # tag stripping is --html text/main; --html keep switches it off
            g.add_argument(f"--no-{step}", action="store_true", help=f"skip the {step} step")
    g = p.add_argument_group("filters (0 switches a filter off)")
    d = Filters()
    g.add_argument("--min-chars", type=int, default=d.min_chars, help=f"drop shorter documents (default {d.min_chars})")
    g.add_argument("--max-chars", type=int, default=d.max_chars, help=f"drop longer documents (default {d.max_chars})")
    g.add_argument("--min-chinese-ratio", type=float, default=d.min_chinese_ratio,
                   help=f"Han characters over non-space characters (default {d.min_chinese_ratio})")
    g.add_argument("--min-avg-line-chars", type=float, default=d.min_avg_line_chars,
                   help=f"average characters per non-empty line (default {d.min_avg_line_chars}; ChineseWebText uses 10 for web text)")
    g.add_argument("--max-dup-ngram-frac", type=float, default=d.max_dup_ngram_frac,
                   help=f"fraction of characters inside repeated character n-grams (default {d.max_dup_ngram_frac})")
    g.add_argument("--dup-ngram", type=int, default=d.dup_ngram, help=f"n for the repetition filter (default {d.dup_ngram})")
    g.add_argument("--blocklist", metavar="FILE", help="words, one per line; documents with more than --max-block-per-line hits per line are dropped")
    g.add_argument("--max-block-per-line", type=float, default=d.max_block_per_line, help=f"(default {d.max_block_per_line})")
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    add_engine_options(g)
    g.add_argument("--piece-mb", type=int, default=DEFAULT_PIECE_MB, help=f"input piece per shard, MB (default {DEFAULT_PIECE_MB})")
    g.add_argument("--overwrite", action="store_true", help="start again in an output folder that holds another run")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from_args(a: argparse.Namespace) -> CleanOptions:
    norm = Normalizer(convert=a.convert, **{s: not getattr(a, f"no_{s}") for s in STEPS[1:] if s != "html"})
    markup = Markup(html=a.html, roff=not a.no_roff, wiki=not a.no_wiki, markdown=not a.no_markdown)
    filt = Filters(min_chars=a.min_chars or None, max_chars=a.max_chars or None,
                   min_chinese_ratio=a.min_chinese_ratio or None, min_avg_line_chars=a.min_avg_line_chars or None,
                   max_dup_ngram_frac=a.max_dup_ngram_frac or None, dup_ngram=a.dup_ngram,
                   blocklist=read_blocklist(a.blocklist) if a.blocklist else (), max_block_per_line=a.max_block_per_line)
    keep = tuple(k for k in a.keep_fields.split(",") if k)
    langs = tuple(c.strip() for c in a.lang.split(",") if c.strip())
    if a.min_lang_score and not langs:
        raise InputError("(command line)", None, "--min-lang-score needs --lang", "e.g. --lang zh --min-lang-score 0.5")
    if a.signals_only and (clash := set(keep) & set(SIGNALS)):
        raise InputError("(command line)", None, f"--keep-fields {', '.join(sorted(clash))} would clash with a signal column "
                         "of --signals-only", "rename the field, or leave it out")
    return CleanOptions(a.text_field, a.text_unit, a.format, keep, norm, filt, a.on_error, markup, read_options(a),
                        pii=Pii(a.pii), lang=LangFilter(langs, a.min_lang_score),
                        quality=Quality.from_path(a.quality_model, a.min_quality), signals_only=a.signals_only)


@locked_output("output", remote=True)
def run(a: argparse.Namespace) -> int:
    inputs = list(a.inputs) + ([str(sample_path())] if a.sample else [])
    if not inputs:
        raise InputError("(command line)", None, "no input given", "name files or folders, or use --sample")
    if a.piece_mb < 1 or a.workers < 1:
        raise InputError("(command line)", None, "--piece-mb and --workers must be at least 1")
    if not a.stats and not a.output:
        raise InputError("(command line)", None, "no output folder", "give -o OUT_DIR, or --stats to only measure")
    m = run_clean(inputs, None if a.stats else a.output, options_from_args(a), a.workers, a.piece_mb, a.overwrite,
                  progress=not a.no_progress, engine=engine_from_args(a))
    print(format_report(m))
    for ex in m.extra.get("bad_record_examples", [])[:5]:
        print(f"skipped: {ex}", file=sys.stderr)
    if not a.stats:
        print(f"wrote {len(m.extra['shards'])} shards and manifest.json to {a.output}")
    return 0
