"""Where `zhdata clean`'s time goes: each step of `clean_frame` timed on its own, in CPU time of this process, on the
batches as a worker sees them (each step on the output of the one before), in ms per MB of input text.
Used by `bench_zhdata.py clean`."""

from __future__ import annotations

import time
import unicodedata
from typing import Callable

import polars as pl

from zhdata.clean import CleanOptions, clean_frame
from zhdata.filters import Filters, codepoint_measures
from zhdata.langid import identify
from zhdata.markup import Markup, detect
from zhdata.ngrams import duplicated_ngram_fraction
from zhdata.normalize import STEPS, Normalizer, opencc_convert
from zhdata.pii import Pii

# the old default: the steps before issue 14 (no markup to text, no personal data)
OLD_STEPS = CleanOptions(markup=Markup(html="text", roff=False, wiki=False, markdown=False), pii=Pii("keep"))


def cpu() -> float:
    return time.process_time()


def whole(batches: list[pl.DataFrame], opts: CleanOptions, repeat: int = 2) -> float:
    """CPU seconds of `clean_frame` over all batches, best of `repeat`."""
    best = float("inf")
    for _ in range(repeat):
        t = cpu()
        for b in batches:
            clean_frame(b, opts)
        best = min(best, cpu() - t)
    return best


def steps(batches: list[pl.DataFrame], lang: bool = True) -> dict[str, float]:
    """CPU seconds per step of the default `clean_frame`, summed over the batches (langid: not a default step)."""
    spent: dict[str, float] = {}

    def timed(name: str, fn: Callable, *args):
        t = cpu()
        out = fn(*args)
        spent[name] = spent.get(name, 0.0) + cpu() - t
        return out

    only = {s: False for s in STEPS[1:]}
    norm = Normalizer()
    for b in batches:
        raw = b["text"]
        timed("markup: detection", detect, raw, Markup().kinds())
        text = timed("markup: whole step (detection + rewriting)", lambda s: Markup().apply(s)[0], raw)
        if lang:
            timed("language (CLD2, off by default)", identify, text)
        vals = timed("Polars -> Python (to_list), normaliser", lambda s: s.to_list(), text)
        vals = timed(f"OpenCC {norm.convert}", opencc_convert, vals, norm.convert)
        vals = timed("NFC", lambda v: [unicodedata.normalize("NFC", x) for x in v], vals)
        text = timed("Python -> Polars, normaliser", lambda v: pl.Series("text", v, dtype=pl.String), vals)
        for step in STEPS[2:]:
            text = timed(f"regex step: {step}", lambda s: Normalizer(convert="none", **{**only, step: True}).apply(s)[0], text)
        text = timed("personal data (--pii redact)", lambda s: Pii().apply(s)[0], text)
        vals = timed("Polars -> Python (to_list), measures", lambda s: s.to_list(), text)
        timed("code-point measures (chars, Han, spaces, lines)", codepoint_measures, vals)
        timed("repeated 13-gram fraction", duplicated_ngram_fraction, vals, Filters().dup_ngram)
        measures = Filters().measures(text)
        timed("decisions (Filters.decide)", Filters().decide, measures)
    return spent


def breakdown(texts: list[str], batch: int = 20_000, lang: bool = True) -> dict:
    """The default and the old steps as a whole, and each step, in ms per MB and MB per CPU second."""
    size = sum(len(t.encode()) for t in texts) / 1e6
    df = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts, "source": "b"})
    batches = [df.slice(lo, batch) for lo in range(0, len(df), batch)]
    default, old = whole(batches, CleanOptions()), whole(batches, OLD_STEPS)
    per = {k: round(v * 1000 / size, 2) for k, v in steps(batches, lang).items()}
    per["sum of the default steps (language left out)"] = round(
        sum(v for k, v in per.items() if not k.startswith(("language", "markup: detection"))), 2)
    return {"mb": round(size, 1), "docs": len(texts),
            "default: MB per CPU s": round(size / default, 1), "default: ms per MB": round(default * 1000 / size, 2),
            "old steps: MB per CPU s": round(size / old, 1), "old steps: ms per MB": round(old * 1000 / size, 2),
            "ms per MB per step": per}

