"""Chinese-aware text normalisation over Polars string Series (Rust regexes, no per-document Python loop).

Each step is switchable and reports how many texts it changed. OpenCC runs per document (C++),
HTML entity decoding runs in Python only on the few texts that contain an entity.
"""

from __future__ import annotations

import html
import json
import subprocess
import tempfile
import unicodedata
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:  # polars is imported where it is used, so that `--help` does not load it (tests/test_cli.py)
    import polars as pl

OPENCC_MODES = ("none", "t2s", "tw2s", "tw2sp", "hk2s", "t2tw", "s2t", "s2tw", "s2twp", "t2hk", "s2hk", "jp2t", "t2jp")
STEPS = ("convert", "unicode", "ansi", "control", "html", "fullwidth", "whitespace")

# Full-width ASCII letters and digits only: Chinese punctuation (，。！？：；) stays as it is.
_FW = [chr(c) for c in range(0xFF10, 0xFF1A)] + [chr(c) for c in range(0xFF21, 0xFF3B)] + [chr(c) for c in range(0xFF41, 0xFF5B)]
_HW = [chr(ord(c) - 0xFEE0) for c in _FW]

_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\ufff9-\ufffb]"
_ANSI = r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]|.\x08|\\f[BIRP1-4]|\\s[+-]?[0-9]|\\\([a-z]{2}"
_ANSI_LITERALS = ["\x1b", "\x08", "\\f", "\\s", "\\("]  # every match of _ANSI holds one of these
_HTML_COMMENT = r"(?s)<!--.*?-->"
_HTML_TAG = r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s+[^<>]*)?/?>"
_ENTITY = r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});"
_HSPACE = r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+"
_WHITESPACE_LITERALS = ["\t", "\u00a0", "\u1680", *map(chr, range(0x2000, 0x200B)), "\u202f", "\u205f", "\u3000",
                        "  ", " \n", "\n ", "\n\n\n"]  # white space other than one space between words


@lru_cache(maxsize=None)
def _opencc(mode: str):
    import opencc

    return opencc.OpenCC(mode if mode.endswith(".json") else f"{mode}.json")


def _convert_each(cc, texts: list[str]) -> list[str]:
    """Each text converted by `cc`: in one OpenCC call on the texts joined by U+FFFF (a noncharacter, free for internal
    use: no dictionary holds it, so no conversion reaches across it; the same result, ~15% faster than a call per
    text), unless a text holds it. (Not NUL: some OpenCC chains end the text at a NUL.)"""
    joined = _SEPARATOR.join(texts)
    if len(texts) > 1 and joined.count(_SEPARATOR) == len(texts) - 1:
        out = cc.convert(joined).split(_SEPARATOR)
        if len(out) == len(texts):
            return out
    return [cc.convert(t) for t in texts]


_SEPARATOR = "\uffff"


def opencc_convert(texts: list[str], mode: str) -> list[str]:
    return _convert_each(_opencc(mode), texts)


@dataclass(frozen=True)
class Normalizer:
    """Normalisation steps, applied in the order of `STEPS`; each one can be switched off."""

    convert: str = "t2s"  # OpenCC mode or "none"
    unicode: bool = True  # NFC composition (not NFKC: that would turn Chinese punctuation into ASCII)
    ansi: bool = True  # ANSI terminal escapes, backspace overstrike, roff font escapes
    control: bool = True  # control and zero-width characters; CRLF and CR become LF
    html: bool = True  # HTML/XML tags and comments removed, entities decoded
    fullwidth: bool = True  # full-width ASCII letters and digits to half-width
    whitespace: bool = True  # runs of spaces (incl. U+3000) to one, trailing spaces, 3+ newlines to 2, strip

    def __post_init__(self) -> None:
        if self.convert not in OPENCC_MODES:
            raise ValueError(f"unknown OpenCC mode {self.convert!r}; choose one of {', '.join(OPENCC_MODES)}")

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def apply(self, texts: pl.Series) -> tuple[pl.Series, dict[str, int]]:
        """Return normalised texts and, per step, how many texts that step changed."""
        import polars as pl

        changed: dict[str, int] = {}

        def step(name: str, new: pl.Series) -> pl.Series:
            changed[name] = int((new != cur).sum())
            return new

        cur = texts.cast(pl.String)
        if self.convert != "none" or self.unicode:
            # OpenCC and NFC both run per document in C; one pass over Python strings serves both
            # (Python's NFC has a quick check for text that is already composed: ~7x Polars' normalize here).
            vals = cur.to_list()
            if self.convert != "none":
                new = opencc_convert(vals, self.convert)
                changed["convert"] = sum(a != b for a, b in zip(vals, new))
                vals = new
            if self.unicode:
                new = [unicodedata.normalize("NFC", v) for v in vals]
                changed["unicode"] = sum(a != b for a, b in zip(vals, new))
                vals = new
            cur = pl.Series(cur.name, vals, dtype=pl.String)
        if self.ansi:
            cur = step("ansi", _where(cur, cur.str.contains_any(_ANSI_LITERALS), lambda t: t.str.replace_all(_ANSI, "")))
        if self.control:
            cur = step("control", cur.str.replace_all("\r\n?", "\n").str.replace_all(_CONTROL, ""))
        if self.html:
            cur = step("html", _where(cur, cur.str.contains_any(["<", "&"]), _strip_html))
        if self.fullwidth:
            cur = step("fullwidth", cur.str.replace_many(_FW, _HW))
        if self.whitespace:
            # a text without these, nor white space at either end, is left as it is by every rule of the step
            may = (cur.str.contains_any(_WHITESPACE_LITERALS) | cur.str.head(1).str.contains(r"\s")
                   | cur.str.tail(1).str.contains(r"\s"))
            cur = step("whitespace", _where(cur, may, lambda t: t.str.replace_all(_HSPACE, " ").str.replace_all(" *\n *", "\n")
                                            .str.replace_all(r"\n{3,}", "\n\n").str.strip_chars()))
        return cur, changed


def _where(s: pl.Series, mask: pl.Series, fn) -> pl.Series:
    """`fn(s)` on the rows where `mask` holds (a cheap test that every row `fn` would change passes), `s` elsewhere."""
    idx = mask.fill_null(False).arg_true()
    if len(idx) == 0:
        return s
    return s.clone().scatter(idx, fn(s.gather(idx)))


def _strip_html(s: pl.Series) -> pl.Series:
    import polars as pl

    s = s.str.replace_all(_HTML_COMMENT, "").str.replace_all(_HTML_TAG, "")
    has_entity = s.str.contains(_ENTITY)
    if not has_entity.any():
        return s
    # Polars cannot decode numeric entities: unescape in Python, only where an entity occurs.
    idx = has_entity.arg_true().to_list()
    vals = s.to_list()
    for i in idx:
        vals[i] = html.unescape(vals[i])
    return pl.Series(s.name, vals, dtype=pl.String)


def normalize_text(text: str, normalizer: Normalizer | None = None) -> str:
    """Normalise one string (convenience wrapper over `Normalizer.apply`)."""
    import polars as pl

    out, _ = (normalizer or Normalizer()).apply(pl.Series([text]))
    return out[0]


# OpenCC's dictionaries from Taiwan and Hong Kong usage to mainland usage: phrases first, then character variants
_MAINLAND_SOURCES = ("TWPhrasesRev", "HKPhrasesRev", "TWVariantsRevPhrases", "HKVariantsRevPhrases", "TWVariantsRev",
                     "HKVariantsRev")


def _absolute_dicts(node: object, share: Path) -> object:
    """An OpenCC config with every dictionary file named by its absolute path in `share`."""
    if isinstance(node, dict):
        return {k: (str(share / v) if k == "file" else _absolute_dicts(v, share)) for k, v in node.items()}
    if isinstance(node, list):
        return [_absolute_dicts(v, share) for v in node]
    return node


@lru_cache(maxsize=None)
def _mainland():
    """The OpenCC converter of dedupe keys: Traditional to Simplified (OpenCC's own t2s), then Taiwan and Hong Kong
    usage to mainland usage (软体 → 软件, 网路 → 网络, 随著 → 随着), in one C++ pass.

    OpenCC's tw2sp does the second part on Traditional text only: its dictionaries are keyed in Traditional
    characters (軟體), which text already converted with t2s (zhdata clean's default) no longer holds. So the
    entries of those dictionaries are re-keyed here through t2s (both sides) into a text dictionary that OpenCC
    applies after its t2s chain by its own longest-prefix matching; phrase entries that map to themselves
    (顯著 → 顯著) stay, so that they keep a character rule (著 → 着) off those phrases, and every mainland term
    maps to itself, so that mainland text keeps its words. The dictionaries are read
    with `opencc_dict`, the tool inside the opencc wheel, so they follow the installed OpenCC."""
    import opencc

    base = Path(opencc.__file__).parent / "clib"
    share, tool = base / "share" / "opencc", base / "bin" / "opencc_dict"
    if not tool.exists() or not (share / "t2s.json").exists():
        raise InputError(base, None, "this OpenCC install has no opencc_dict tool or dictionaries for the dedupe key",
                         "pip install -U 'opencc>=1.1.9'")
    t2s = _opencc("t2s")
    table: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="zh-adapt-opencc-") as tmp:
        for name in _MAINLAND_SOURCES:
            if not (share / f"{name}.ocd2").exists():  # older OpenCC releases lack the Hong Kong ones
                continue
            out = Path(tmp) / f"{name}.txt"
            subprocess.run([str(tool), "-i", str(share / f"{name}.ocd2"), "-o", str(out), "-f", "ocd2", "-t", "text"],
                           check=True, capture_output=True)
            for line in out.read_text(encoding="utf-8").splitlines():
                key, _, values = line.partition("\t")
                k, v = t2s.convert(key), t2s.convert(values.split(" ")[0])
                if k and v and (k != v or "Phrases" in name):
                    table.setdefault(k, v)
        # a mainland term is never converted: 程序员 stays (the longest match), and 程序, Taiwan usage for 进程
        # but mainland usage too, stays as it is rather than become 进程 in mainland text
        table.update({v: v for v in set(table.values())})
        words = Path(tmp) / "mainland.txt"
        words.write_text("".join(f"{k}\t{v}\n" for k, v in sorted(table.items())), encoding="utf-8")
        config = _absolute_dicts(json.loads((share / "t2s.json").read_text(encoding="utf-8")), share)
        config["name"] = "zh-adapt dedupe key: t2s, then Taiwan/Hong Kong usage to mainland usage"
        config["conversion_chain"].append({"dict": {"type": "text", "file": str(words)}})
        (Path(tmp) / "key.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
        return opencc.OpenCC(str(Path(tmp) / "key.json"))  # dictionaries are read here, the files may go


def mainland_text(texts: list[str]) -> list[str]:
    """Texts in Simplified characters and mainland usage (see `_mainland`)."""
    return _convert_each(_mainland(), texts)


def dedupe_key(texts: pl.Series, mainland: bool = True) -> pl.Series:
    """The text that duplicates are judged on: in mainland Simplified usage (unless `mainland` is false), NFKC,
    lower case, no whitespace or punctuation."""
    import polars as pl

    if mainland:
        texts = pl.Series(texts.name, mainland_text(texts.fill_null("").to_list()), dtype=pl.String)
    return texts.str.normalize("NFKC").str.to_lowercase().str.replace_all(r"[\s\p{P}]+", "")
