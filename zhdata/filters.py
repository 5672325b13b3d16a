"""Chinese-aware document quality filters (ChineseWebText / Gopher style), evaluated on a whole batch.

A document is dropped for the first filter it fails, in the order of `FILTERS`, so every dropped
document is counted under exactly one reason. `--stats` also reports each filter on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .ngrams import codepoints, duplicated_ngram_fraction, text_chunks

if TYPE_CHECKING:  # polars is imported where it is used, so that `--help` does not load it (tests/test_cli.py)
    import polars as pl

FILTERS = ("too_short", "too_long", "low_chinese_ratio", "short_lines", "repetitive", "blocklisted")
_HAN_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x323AF))
_SPACE = (9, 10, 11, 12, 13, 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)
_HAN_BIT, _SPACE_BIT = 1, 2


def _char_classes() -> np.ndarray:
    """One byte per code point: Han and white-space bits (one table look-up instead of a dozen comparisons)."""
    table = np.zeros(0x110000, dtype=np.uint8)
    for lo, hi in _HAN_RANGES:
        table[lo : hi + 1] |= _HAN_BIT
    table[list(_SPACE)] |= _SPACE_BIT
    return table


_CLASSES = _char_classes()


# per class byte (Han bit, space bit): 1 for a Han character and 1 << 32 for a white-space one, so that one sum per text
# counts both
_COUNT_WEIGHTS = np.array([0, 1, 1 << 32, (1 << 32) + 1], dtype=np.uint64)


def codepoint_measures(texts: list[str]) -> dict[str, np.ndarray]:
    """Characters, Han characters, non-space characters and non-empty lines per text, in one numpy pass."""
    out = {k: np.zeros(len(texts), dtype=np.int64) for k in ("chars", "han", "nonspace", "lines")}
    for a, b in text_chunks(texts):
        cp, off = codepoints(texts[a:b])
        lens = np.diff(off)
        full = lens > 0
        cls = _CLASSES[cp]
        both = np.zeros(b - a, dtype=np.uint64)
        if full.any():  # reduceat sums each text's span; an empty text would read its neighbour's first character
            both[full] = np.add.reduceat(_COUNT_WEIGHTS[cls], off[:-1][full])
        han = (both & np.uint64(0xFFFFFFFF)).astype(np.int64)
        space = (both >> np.uint64(32)).astype(np.int64)
        # lines: the pieces between line feeds and text ends; a piece is a non-empty line when it holds a non-space
        # character, i.e. the running count of non-space characters grows across it
        nonspace_before = np.zeros(len(cp) + 1, dtype=np.int64)
        np.cumsum((cls & _SPACE_BIT) == 0, out=nonspace_before[1:])
        after_lf = np.nonzero(cp == 10)[0] + 1
        starts, ends = np.sort(np.concatenate([after_lf, off[:-1]])), np.sort(np.concatenate([after_lf, off[1:]]))
        nonempty = nonspace_before[ends] > nonspace_before[starts]
        text_of = np.searchsorted(off, starts, side="right") - 1
        out["chars"][a:b] = lens
        out["han"][a:b] = han
        out["nonspace"][a:b] = lens - space
        out["lines"][a:b] = np.bincount(text_of[nonempty], minlength=b - a)
    return out


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
        import polars as pl

        as_list = texts.to_list()
        c = codepoint_measures(as_list)
        lines = np.maximum(c["lines"], 1)
        out = pl.DataFrame({
            "chars": c["chars"],
            "chinese_ratio": c["han"] / np.maximum(c["nonspace"], 1),
            "avg_line_chars": c["chars"] / lines,
            "lines": lines,
        })
        if self.blocklist:
            pattern = "|".join(re.escape(w) for w in sorted(self.blocklist, key=len, reverse=True))
            out = out.with_columns(block_hits=texts.str.count_matches(pattern).to_numpy())
        if self.max_dup_ngram_frac:
            out = out.with_columns(dup_ngram_frac=pl.Series(duplicated_ngram_fraction(as_list, self.dup_ngram)))
        return out

    def rules(self) -> list[tuple[str, str, str, float]]:
        """Each filter switched on, once: (drop reason, measure as a SQL expression over the measures, the comparison
        a kept document satisfies, threshold). `failures` and `where` both read this, so they cannot disagree."""
        rules = [("too_short", "chars", ">=", self.min_chars), ("too_long", "chars", "<=", self.max_chars),
                 ("low_chinese_ratio", "chinese_ratio", ">=", self.min_chinese_ratio),
                 ("short_lines", "avg_line_chars", ">=", self.min_avg_line_chars),
                 ("repetitive", "dup_ngram_frac", "<=", self.max_dup_ngram_frac)]
        on = [r for r in rules if r[3]]
        if self.blocklist:
            on.append(("blocklisted", "block_hits / lines", "<=", self.max_block_per_line))
        return on

    def failures(self, m: pl.DataFrame) -> dict[str, pl.Series]:
        """Per filter (switched on), a boolean Series: does the document fail it?"""
        import polars as pl

        out: dict[str, pl.Series] = {}
        for reason, measure, keep, limit in self.rules():
            value = m.select(pl.sql_expr(measure)).to_series()
            out[reason] = value < limit if keep == ">=" else value > limit
        return out

    def where(self) -> str:
        """A `zhdata filter --where` expression over the measures that keeps exactly what `reasons` keeps."""
        return " and ".join(f"{measure} {keep} {limit!r}" for _, measure, keep, limit in self.rules())

    def reasons(self, texts: pl.Series) -> tuple[pl.Series, dict[str, int]]:
        """Drop reason per document (null = kept) and, per filter, how many documents fail it on its own."""
        return self.decide(self.measures(texts))

    def decide(self, m: pl.DataFrame) -> tuple[pl.Series, dict[str, int]]:
        """`reasons` from measures already taken."""
        import polars as pl

        fails = self.failures(m)
        reason = np.full(len(m), None, dtype=object)
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
