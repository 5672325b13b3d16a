"""Markup to text, per document: roff/man source, HTML, wiki markup and Markdown, each detected and switchable.

`Markup.apply` is a pure batch step over a Polars string Series. Each document gets at most one kind, the first
of `KINDS` whose detector fires (roff and wiki are the most specific, Markdown the least). roff, wiki and
Markdown are rewritten with Rust regexes on the detected documents only; HTML goes to a main-text extractor
(resiliparse, chosen by measurement: see BENCHMARKS.md) in `main` mode, or is left to the normaliser's tag
stripping in `text` mode. Fenced code blocks in Markdown are kept as text (the fence lines go): code is part of
what the page says, and the repetition and Chinese-ratio filters judge it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # polars is imported where it is used, so that `--help` does not load it (tests/test_cli.py)
    import polars as pl

KINDS = ("roff", "html", "wiki", "markdown")
HTML_MODES = ("main", "text", "keep")

# --- detection: a kind needs at least two of its signals in a document (one stray `.B` or `**` is not markup)
_ROFF_LINE = r"(?m)^[.'](?:\\\"|TH|SH|SS|PP|LP|P|IP|TP|HP|B|I|BR|BI|IB|IR|RB|RI|SM|SB|RS|RE|nf|fi|br|sp|in|ti|ft|ad|na|ne|de|ds|so|TS|TE|EX|EE|UR|UE|Dd|Dt|Os|Sh|Ss|Nm|Nd|Pp|Fl|Ar|Op|It|Bl|El|Xr)(?:[ \t]|$)"
_HTML_SIGNAL = r"(?i)<!doctype html|</?(?:html|head|body|div|p|li|ul|ol|table|tr|td|h[1-6]|script|style|nav|header|footer|article|section|meta|link)\b[^<>]*>"  # block-level: a few <br> or <a> are not a page
_WIKI_SIGNAL = r"\[\[[^\[\]\n]+\]\]|\{\{[^{}\n]+\}\}|'''[^'\n]+'''|(?m)^={2,6}[^=\n]+={2,6}[ \t]*$"
_MD_SIGNAL = r"(?m)^#{1,6}[ \t]+\S|^[ \t]*(?:```|~~~)|!?\[[^\]\n]+\]\([^)\s]+\)|\*\*[^*\n]+\*\*|`[^`\n]+`"
_MIN_SIGNALS = {"roff": 2, "html": 3, "wiki": 2, "markdown": 2}

# roff named characters (groff_char(7)); anything else named is removed below
_ROFF_CHARS = {"em": "—", "en": "–", "hy": "-", "bu": "•", "lq": "“", "rq": "”", "oq": "‘", "cq": "’", "aq": "'",
               "dq": '"', "co": "©", "rg": "®", "tm": "™", "mu": "×", "di": "÷", "de": "°", "+-": "±", "<=": "≤",
               ">=": "≥", "!=": "≠", "->": "→", "<-": "←", "ti": "~", "ha": "^", "rs": "\\", "sl": "/", "ba": "|"}

_ROFF_RULES: list[tuple[str, str]] = [
    (r"(?m)^[.'][ \t]*\\\".*(?:\n|$)", ""),  # comment lines
    (r"\\\".*", ""),  # comments after text
    (r"(?m)^[.'](?:TH|Dt|Dd|Os)(?:[ \t].*)?(?:\n|$)", ""),  # page header: title, section, date
    # text-bearing requests keep their text: a single quoted argument, or the rest of the line
    (r"(?m)^[.'](?:SH|SS|Sh|Ss|B|I|SM|SB|BR|BI|IB|IR|RB|RI|Nd|Nm)[ \t]+\"([^\"\n]*)\"[ \t]*$", "${1}"),
    (r"(?m)^[.'](?:SH|SS|Sh|Ss|B|I|SM|SB|BR|BI|IB|IR|RB|RI|Nd|Nm)[ \t]+(.*)$", "${1}"),
    (r"(?m)^[.'](?:IP|HP)[ \t]+\"([^\"\n]*)\".*$", "${1}"),  # .IP "tag" indent: the tag is text
    (r"(?m)^[.'](?:IP|HP)[ \t]+(\S+).*$", "${1}"),
    (r"(?m)^[.'](?:PP|LP|P|Pp|sp|br|TP|IP|HP)[ \t]*$", ""),  # paragraph breaks stay as a line break
    (r"(?m)^[.'][A-Za-z]{1,3}(?:[ \t].*)?(?:\n|$)", ""),  # every other request goes with its arguments
    (r"(?m)^\.[ \t]*(?:\n|$)", ""),
    (r"\\f(?:\[[^\]\n]*\]|\([A-Za-z0-9]{2}|[A-Za-z0-9])", ""),  # font changes
    (r"\\s[+-]?(?:\d|\(\d\d|\[\d+\])", ""),  # size changes
    (r"\\[*n](?:\([A-Za-z0-9]{2}|\[[^\]\n]*\]|[A-Za-z0-9])", ""),  # strings and number registers
    (r"\\[hvwlLDoXZbx]'[^'\n]*'", ""),  # motions, widths, lines, overstrikes
    (r"\\\([!-~]{2}|\\\[[^\]\s]{1,24}\]", ""),  # named characters not converted before
    (r"\\[&|^%:c{}ud,/]|\\\n", ""),  # zero-width and control escapes, line continuation
    (r"\\[ ~0]", " "),
    (r"\\-", "-"),
]

_WIKI_RULES: list[tuple[str, str]] = [
    (r"(?s)<ref[^>/]*/>|<ref[^>]*>.*?</ref>", ""),
    (r"(?s)<!--.*?-->", ""),
    *[(r"\{\{[^{}]*\}\}", "")] * 3,  # templates, nested up to three deep
    (r"(?i)\[\[(?:File|Image|Category|文件|檔案|图像|圖像|分类|分類):(?:[^\[\]]|\[\[[^\]]*\]\])*\]\]", ""),
    (r"\[\[[^\]|\n]*\|([^\]\n]*)\]\]", "${1}"),
    (r"\[\[([^\]\n]*)\]\]", "${1}"),
    (r"\[(?:https?:)?//[^\s\]]+[ \t]+([^\]\n]*)\]", "${1}"),
    (r"\[(?:https?:)?//[^\s\]]+\]", ""),
    (r"'{2,5}", ""),
    (r"(?m)^(={1,6})[ \t]*(.*?)[ \t]*={1,6}[ \t]*$", "${2}"),
    (r"__[A-Z]+__", ""),
    (r"(?m)^[ \t]*(?:\{\||\|\}|\|-).*(?:\n|$)", ""),  # table frames
    (r"(?m)^[ \t]*[|!][ \t]*", ""),
    (r"(?m)^[*#:;]+[ \t]*", ""),  # list and indent markers
]

_MD_RULES: list[tuple[str, str]] = [
    (r"(?m)^[ \t]*(?:```|~~~).*(?:\n|$)", ""),  # fence lines (the code between them stays)
    (r"(?m)^#{1,6}[ \t]+(.*?)[ \t#]*$", "${1}"),
    (r"!\[([^\]\n]*)\]\([^)\n]*\)", "${1}"),
    (r"\[([^\]\n]+)\]\([^)\n]*\)", "${1}"),
    (r"\[([^\]\n]+)\]\[[^\]\n]*\]", "${1}"),
    (r"(?m)^[ \t]*\[[^\]\n]+\]:[ \t]+\S+.*(?:\n|$)", ""),  # reference definitions
    (r"\*\*([^*\n]+)\*\*|__([^_\n]+)__|~~([^~\n]+)~~", "${1}${2}${3}"),
    (r"(^|[^\w*])\*([^*\s][^*\n]*?)\*($|[^\w*])", "${1}${2}${3}"),
    (r"`([^`\n]+)`", "${1}"),
    (r"(?m)^[ \t]*(?:[-*_][ \t]*){3,}$", ""),  # horizontal rules
    (r"(?m)^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$", ""),  # table separators
    (r"(?m)^(?:[ \t]*>)+[ \t]?", ""),  # block quotes
    (r"(?m)^([ \t]*)[-*+][ \t]+", "${1}"),  # bullets
]


def _rewrite(s: pl.Series, rules: list[tuple[str, str]]) -> pl.Series:
    for pattern, repl in rules:
        s = s.str.replace_all(pattern, repl)
    return s


def roff_to_text(s: pl.Series) -> pl.Series:
    """man/roff source to its text: requests and comments removed, escapes converted or removed."""
    s = s.str.replace_all(r"\\e|\\\\", "\x00BS\x00")  # `\e` and `\\` print a backslash: shield them
    s = s.str.replace_many([f"\\({k}" for k in _ROFF_CHARS] + [f"\\[{k}]" for k in _ROFF_CHARS],
                           list(_ROFF_CHARS.values()) * 2)
    s = _rewrite(s, _ROFF_RULES)
    return s.str.replace_all("\x00BS\x00", "\\", literal=True)


def wiki_to_text(s: pl.Series) -> pl.Series:
    """MediaWiki markup to text: links to their label, templates, references, files and categories removed."""
    return _rewrite(s, _WIKI_RULES)


def markdown_to_text(s: pl.Series) -> pl.Series:
    """Markdown to text: heading, emphasis, quote and bullet marks removed, links and images to their text."""
    return _rewrite(s, _MD_RULES)


def html_main_text(docs: list[str]) -> list[str | None]:
    """Main text of each HTML page (navigation, footers and scripts left out), or None where none is found."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    out: list[str | None] = []
    for d in docs:
        text = extract_plain_text(HTMLTree.parse(d), main_content=True, alt_texts=False, links=False,
                                  preserve_formatting=True, noscript=False, comments=False)
        out.append(text.strip() or None)
    return out


def detect(s: pl.Series, kinds: tuple[str, ...] = KINDS) -> pl.Series:
    """Markup kind per document (null for plain text), the first of `kinds` with enough signals."""
    import polars as pl

    signals = {"roff": _ROFF_LINE, "html": _HTML_SIGNAL, "wiki": _WIKI_SIGNAL, "markdown": _MD_SIGNAL}
    kind = pl.Series("markup", [None] * len(s), dtype=pl.String)
    for k in reversed(kinds):  # the first kind in order wins: set it last
        hit = s.str.count_matches(signals[k]).fill_null(0) >= _MIN_SIGNALS[k]
        kind = pl.select(pl.when(hit).then(pl.lit(k)).otherwise(kind)).to_series().rename("markup")
    return kind


@dataclass(frozen=True)
class Markup:
    """Which markup to turn into text. html: main (main-text extraction), text (tags stripped by the
    normaliser, as before) or keep (HTML left as it is); roff, wiki, markdown: rewrite to text or not."""

    html: str = "main"
    roff: bool = True
    wiki: bool = True
    markdown: bool = True

    def __post_init__(self) -> None:
        if self.html not in HTML_MODES:
            raise ValueError(f"unknown --html mode {self.html!r}; choose one of {', '.join(HTML_MODES)}")

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def kinds(self) -> tuple[str, ...]:
        """The kinds detected: HTML in every mode so it is never mistaken for another kind; none when nothing is rewritten."""
        if self.html != "main" and not (self.roff or self.wiki or self.markdown):
            return ()
        return tuple(k for k in KINDS if k == "html" or getattr(self, k))

    def apply(self, texts: pl.Series) -> tuple[pl.Series, pl.DataFrame, dict[str, int]]:
        """(texts with markup turned to text, per document `markup` kind and `markup_frac` = share of characters
        removed, per `markup_KIND` the number of documents rewritten)."""
        import polars as pl

        texts = texts.cast(pl.String)
        kind = detect(texts, self.kinds())
        before = texts.str.len_chars()
        out = texts
        changed: dict[str, int] = {}
        rewrite = {"roff": roff_to_text, "wiki": wiki_to_text, "markdown": markdown_to_text}
        for k in self.kinds():
            if k == "html" and self.html != "main":
                continue
            idx = (kind == k).arg_true()
            if len(idx) == 0:
                continue
            sub = out.gather(idx)
            if k == "html":
                main = html_main_text(sub.to_list())
                # a page with no main text keeps its tag-stripped self (the normaliser strips it): nothing lost
                new = pl.Series([m if m is not None else d for m, d in zip(main, sub.to_list())], dtype=pl.String)
            else:
                new = rewrite[k](sub)
            changed[f"markup_{k}"] = int((new != sub).sum())
            out = out.scatter(idx, new)
        frac = (1 - out.str.len_chars() / before.clip(lower_bound=1)).clip(lower_bound=0.0).fill_null(0.0)
        return out, pl.DataFrame({"markup": kind, "markup_frac": frac}), changed
