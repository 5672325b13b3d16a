"""Chinese-aware document quality filters (ChineseWebText / Gopher style), evaluated on a whole batch.

A document is dropped for the first filter it fails, in the order of `FILTERS`, so every dropped
document is counted under exactly one reason. `--stats` also reports each filter on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import polars as pl

from .ngrams import duplicated_ngram_fraction

FILTERS = ("too_short", "too_long", "low_chinese_ratio", "short_lines", "repetitive", "blocklisted")
_HAN = r"[\p{Han}]"


@dataclass(frozen=True)
class Filters:
    """Thresholds; a threshold of None (or 0 for the ratios) switches that filter off."""

    min_chars: int | None = 20
    max_chars: int | None = 1_000_000
    min_chinese_ratio: float | None = 0.3  # Han characters / non-space characters (ChineseWebText: 0.3)
    min_avg_line_chars: float | None = 5.0  # characters per non-empty line (ChineseWebText: 10 for web text)
    max_dup_ngram_frac: float | None = 0.5  # characters inside repeated n-grams (ChineseWebText: 0.5 at n = 13)
    dup_ngram: int = 13
    blocklist: tuple[str, ...] = field(default=())  # words; see max_block_per_line
    max_block_per_line: float = 0.5  # blocklisted words per line above which a document goes (ChineseWebText)

    def params(self) -> dict:
        return {f.name: (len(self.blocklist) if f.name == "blocklist" else getattr(self, f.name)) for f in fields(self)}

    def measures(self, texts: pl.Series) -> pl.DataFrame:
        """Per document: characters, Han ratio, average line length, repeated n-gram fraction, blocklist hits per line."""
        df = pl.DataFrame({"text": texts})
        cols = [
            pl.col("text").str.len_chars().alias("chars"),
            (pl.col("text").str.count_matches(_HAN) / pl.col("text").str.replace_all(r"\s+", "").str.len_chars())
            .fill_nan(0.0).alias("chinese_ratio"),
            (pl.col("text").str.len_chars() / pl.col("text").str.count_matches(r"(?m)^.*\S.*$").clip(lower_bound=1))
            .alias("avg_line_chars"),
            pl.col("text").str.count_matches(r"(?m)^.*\S.*$").clip(lower_bound=1).alias("lines"),
        ]
        if self.blocklist:
            pattern = "|".join(re.escape(w) for w in sorted(self.blocklist, key=len, reverse=True))
            cols.append(pl.col("text").str.count_matches(pattern).alias("block_hits"))
        out = df.select(cols)
        if self.max_dup_ngram_frac:
            out = out.with_columns(dup_ngram_frac=pl.Series(duplicated_ngram_fraction(texts.to_list(), self.dup_ngram)))
        return out

    def failures(self, m: pl.DataFrame) -> dict[str, pl.Series]:
        """Per filter (switched on), a boolean Series: does the document fail it?"""
        out: dict[str, pl.Series] = {}
        if self.min_chars:
            out["too_short"] = m["chars"] < self.min_chars
        if self.max_chars:
            out["too_long"] = m["chars"] > self.max_chars
        if self.min_chinese_ratio:
            out["low_chinese_ratio"] = m["chinese_ratio"] < self.min_chinese_ratio
        if self.min_avg_line_chars:
            out["short_lines"] = m["avg_line_chars"] < self.min_avg_line_chars
        if self.max_dup_ngram_frac:
            out["repetitive"] = m["dup_ngram_frac"] > self.max_dup_ngram_frac
        if self.blocklist:
            out["blocklisted"] = (m["block_hits"] / m["lines"]) > self.max_block_per_line
        return out

    def reasons(self, texts: pl.Series) -> tuple[pl.Series, dict[str, int]]:
        """Drop reason per document (null = kept) and, per filter, how many documents fail it on its own."""
        fails = self.failures(self.measures(texts))
        reason = np.full(len(texts), None, dtype=object)
        for name in FILTERS:
            if name in fails:
                hit = fails[name].to_numpy() & (reason == None)  # noqa: E711 - elementwise on an object array
                reason[hit] = name
        alone = {name: int(s.sum()) for name, s in fails.items()}
        return pl.Series("reason", reason.tolist(), dtype=pl.String), alone


def read_blocklist(path: str | Path) -> tuple[str, ...]:
    """One word per line; blank lines and lines starting with # are ignored."""
    words = [w.strip() for w in Path(path).read_text(encoding="utf-8").splitlines()]
    return tuple(w for w in words if w and not w.startswith("#"))
