"""`zhdata filter`: keep the documents of a `zhdata clean --signals-only` output that satisfy an expression
over the signals, shard by shard (bounded memory, resumable, output order kept).

The expression is SQL (Polars' SQL expression parser: comparisons, and/or/not, IN, arithmetic, IS NULL):
parsed into a Polars expression, never evaluated as Python. The signals output's manifest holds the
expression that reproduces clean's own decisions (`where`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from . import fs
from .clean import SIGNALS
from .errors import InputError
from .lock import locked_output
from .manifest import MANIFEST, Counts, Manifest
from .shards import ShardState, check_output_folder, run_inputs

if TYPE_CHECKING:  # polars is imported where it is used, so that `--help` does not load it (tests/test_cli.py)
    import polars as pl


def parse_where(where: str) -> pl.Expr:
    """The SQL expression `where` as a Polars expression; a one-line error when it does not parse."""
    import polars as pl

    try:
        return pl.sql_expr(where)
    except Exception as e:  # Polars raises several error types for bad SQL; all are the user's expression
        raise InputError("--where", None, f"cannot parse {where!r}: {str(e).splitlines()[0]}") from None


def _signals_run(src: str | Path) -> dict[str, Any]:
    mpath = fs.join(src, MANIFEST)
    if not fs.exists(mpath):
        raise InputError(src, None, "no manifest.json here", "give the output folder of `zhdata clean --signals-only`")
    m = json.loads(fs.read_text(mpath))
    if not (m.get("params") or {}).get("signals_only"):
        raise InputError(mpath, None, "not a `zhdata clean --signals-only` output (its documents hold no signals)",
                         "run zhdata clean with --signals-only first")
    return m


def filter_frame(df: pl.DataFrame, expr: pl.Expr, keep_signals: bool, where: str) -> pl.DataFrame:
    """The rows of `df` where `expr` is true (null counts as false), signal columns dropped unless `keep_signals`."""
    import polars as pl

    try:
        mask = df.select(expr.fill_null(False).alias("keep"))["keep"]
    except pl.exceptions.ColumnNotFoundError as e:
        raise InputError("--where", None, f"{where!r} names a column the signals do not have ({str(e).splitlines()[0]}); "
                         f"signals: {', '.join(c for c in df.columns if c in SIGNALS)}") from None
    except Exception as e:  # type errors and the like: the expression does not fit the columns
        raise InputError("--where", None, f"cannot evaluate {where!r}: {str(e).splitlines()[0]}") from None
    if mask.dtype != pl.Boolean:
        raise InputError("--where", None, f"{where!r} is not a condition (it gives {mask.dtype}, not true/false)")
    out = df.filter(mask)
    return out if keep_signals else out.drop([c for c in SIGNALS if c in out.columns])


def run_filter(src: str | Path, out_dir: str | Path, where: str, keep_signals: bool = False, overwrite: bool = False,
               progress: bool = True) -> Manifest:
    import polars as pl

    src, out_dir = fs.local(src), fs.local(out_dir)
    signals = _signals_run(src)
    expr = parse_where(where)
    shards = signals["shards"]
    check_output_folder(out_dir, [src])
    present = set(fs.listdir(src))
    missing = [s for s in shards if s not in present]
    if missing:
        raise InputError(fs.join(src, missing[0]), None, f"shard listed in manifest.json is missing ({len(missing)} missing)")
    # the signals run by content: a re-run or replaced input is never resumed over
    described, identity = run_inputs([fs.join(src, MANIFEST), *(fs.join(src, s) for s in shards)])
    params = {"input": fs.canonical(src), "inputs": identity, "where": where, "keep_signals": keep_signals}
    manifest = Manifest("zhdata filter", params)
    manifest.inputs.extend(described)
    state = ShardState(out_dir)
    state.start(params, overwrite)
    finished = state.finished()
    for name in tqdm(shards, desc="filter", unit="shard", disable=not progress):
        stem = name.removesuffix(".parquet")
        if stem not in finished:
            df = pl.read_parquet(fs.readable(fs.join(src, name)))
            out = filter_frame(df, expr, keep_signals, where)
            c = Counts(records_in=len(df), records_out=len(out))
            if len(df) > len(out):
                c.dropped["where"] = len(df) - len(out)
            state.finish(stem, out, {"counts": c.to_dict()})
        manifest.counts.merge(Counts.from_dict(state.stats(stem)["counts"]))
    manifest.extra["shards"] = shards
    manifest.extra["clean_where"] = signals.get("where")
    manifest.write(out_dir)
    return manifest


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "filter", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Keep the documents of a `zhdata clean --signals-only` output for which a SQL expression over the\n"
        "signal columns is true (chars, chinese_ratio, avg_line_chars, lines, dup_ngram_frac, block_hits, markup,\n"
        "markup_frac, lang, lang_score, pii_email, pii_phone, pii_id_number, pii_bank_card, pii_ip, quality (with\n"
        "--quality-model), reason).\n"
        "The signals output's manifest.json holds, as `where`, the expression that keeps what clean would keep.\n\n"
        "examples:\n"
        "  zhdata clean web/ -o out/signals --signals-only\n"
        "  zhdata filter out/signals --where \"chinese_ratio > 0.6 and dup_ngram_frac < 0.3\" -o out/kept\n"
        "  zhdata filter out/signals --where \"lang = 'zh' and lang_score >= 0.8 and markup IS NULL\" -o out/plain\n"
        "  zhdata filter out/signals --where \"reason IS NULL\" -o out/as-clean   # exactly clean's decisions\n"
        "A re-run with the same input and expression skips finished shards.",
    )
    p.add_argument("input", metavar="SIGNALS_DIR", help="output folder of `zhdata clean --signals-only`")
    p.add_argument("--where", required=True, metavar="EXPR", help="SQL condition over the signal columns")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for the kept shards and manifest.json")
    p.add_argument("--keep-signals", action="store_true", help="keep the signal columns in the output")
    p.add_argument("--overwrite", action="store_true", help="start again in an output folder that holds another run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@locked_output("output", remote=True)
def run(a: argparse.Namespace) -> int:
    m = run_filter(a.input, a.output, a.where, a.keep_signals, a.overwrite, progress=not a.no_progress)
    c = m.counts
    print(f"documents {c.records_in:,}  kept {c.records_out:,}  dropped {c.dropped.get('where', 0):,}; wrote {a.output}")
    return 0
