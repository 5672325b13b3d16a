"""Personal data in Chinese web text: e-mail addresses, phone numbers, resident ID numbers, bank cards, IP addresses.

Found with regular expressions and checked where a number can be checked, so ordinary numbers survive:
an ID number must have a valid birth date and its ISO 7064 MOD 11-2 check character (an ID-shaped number with a
wrong one is ordinary, not a card), a bank card an issuer
prefix (UnionPay 62, Visa 4, Mastercard 51-55/22-27, JCB 35, Discover 6011/65) and a valid Luhn digit, an
IPv6 address must parse. A dotted quad is a version, not an IPv4 address, when a version word (v, ver,
version, 版本, release, build) stands right before it, or when all four parts are single digits and no
address word (IP, 地址, 服务器, server, host, 主机) does. Bare 7-8 digit numbers (dates such as 20231001,
Hong Kong numbers without +852) count as phones only right after a phone word (电话, 手机, Tel, ...).

A Polars regex picks the candidate documents; only those go through Python's `re` with the checks
(the data-juicer/datatrove way of regexes, plus checksums: no library here checks Chinese ID numbers).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # polars is imported where it is used, so that `--help` does not load it (tests/test_cli.py)
    import polars as pl

PII_TYPES = ("email", "phone", "id_number", "bank_card", "ip")
PII_MODES = ("redact", "drop", "keep")
PLACEHOLDER = {t: f"<{t.upper()}>" for t in PII_TYPES}

_CANDIDATE = r"@|\d{7}|\d[- )]\d{3}|\d\.\d{1,3}\.\d{1,3}\.\d|[0-9A-Fa-f]:[0-9A-Fa-f]{0,4}:|::[0-9A-Fa-f]"
_B, _E = r"(?<![0-9A-Za-z])", r"(?![0-9A-Za-z])"
_CC = r"(?:(?:\+|00)\s?{code}[- ]?|\({code}\)\s?)"  # country code: +86, 0086, (86)
_PHONE = "|".join([
    _CC.format(code="86") + r"?1[3-9]\d[- ]?\d{4}[- ]?\d{4}",  # mainland mobile
    _CC.format(code="86") + r"(?:10|2\d|[3-9]\d{2})[- ]?\d{3,4}[- ]?\d{4}",  # mainland landline, +86
    r"(?:\(0(?:10|2\d|[3-9]\d{2})\)\s?|0(?:10|2\d|[3-9]\d{2})[- ])\d{3,4}[- ]?\d{4}",  # landline with area code
    _CC.format(code="852") + r"[2-9]\d{3}[- ]?\d{4}",  # Hong Kong
    _CC.format(code="886") + r"(?:9\d{2}[- ]?\d{3}[- ]?\d{3}|[2-8][- ]?\d{3,4}[- ]?\d{4})",  # Taiwan, +886
    r"09\d{2}[- ]?\d{3}[- ]?\d{3}", r"\(0[2-8]\)\s?\d{3,4}[- ]?\d{4}",  # Taiwan mobile, landline
])
# Each kind of match: its pattern and, where the pattern opens with a look-behind (which keeps Python's `re` from
# skipping ahead by the first character), a one-character pattern that finds every position where it can begin.
_BRANCHES: tuple[tuple[str, str, str | None], ...] = (
    ("email", r"(?P<email>[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})", None),
    ("phone_word", r"(?P<ctx>(?:电话|電話|手机|手機|热线|熱線|传真|傳真|座机|致电|Tel|TEL|tel|Phone|phone)\s?[:：.]?\s*)(?P<ctxnum>\d{3,4}[- ]?\d{4})" + _E, None),
    ("long", _B + r"(?P<long>\d{17}[\dXx]|\d{4}(?:[ -]\d{4}){3}(?:[ -]?\d{1,3})?|\d{15,19})" + _E, r"\d(?<![0-9A-Za-z].)"),
    ("phone", _B + r"(?P<phone>" + _PHONE + r")(?!\d)", r"[+(\d](?<![0-9A-Za-z].)"),
    ("ipv4", r"(?<![\d.])(?P<ipv4>(?:\d{1,3}\.){3}\d{1,3})(?!\d|\.\d)", r"\d(?<![\d.].)"),
    ("ipv6", r"(?<![0-9A-Za-z:])(?P<ipv6>(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})(?![0-9A-Za-z:])", r"[0-9A-Fa-f:](?<![0-9A-Za-z:].)"),
)
_COMPILED = tuple((kind, re.compile(pattern), re.compile(starts) if starts else None) for kind, pattern, starts in _BRANCHES)
_VERSION_BEFORE = re.compile(r"(?i)(?:\bv|ver|version|版本号?|版|release|build)[\s:：.]*$")
_ADDRESS_BEFORE = re.compile(r"(?i)(?:ip|地址|服务器|伺服器|server|host|主机|主機)")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CARD_PREFIX = re.compile(r"62|4|5[1-5]|2[2-7]|35|6011|65")


def _id_shaped(s: str) -> bool:
    """18 characters, 17 digits first, a real birth date in characters 7-14: an ID number, right or mistyped."""
    if len(s) != 18 or not s[:17].isdigit() or s[0] == "0":
        return False
    y, m, d = int(s[6:10]), int(s[10:12]), int(s[12:14])
    return 1900 <= y <= 2099 and 1 <= m <= 12 and 1 <= d <= (29 if m == 2 else 30 if m in (4, 6, 9, 11) else 31)


def valid_id_number(s: str) -> bool:
    """A mainland resident ID number: 18 characters, a real birth date, and the MOD 11-2 check character."""
    return _id_shaped(s) and "10X98765432"[sum(int(c) * w for c, w in zip(s, _ID_WEIGHTS)) % 11] == s[17].upper()


def luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        v = int(c) * (2 if i % 2 else 1)
        total += v - 9 if v > 9 else v
    return total % 10 == 0


def _ipv4(m: re.Match) -> bool:
    parts = m.group("ipv4").split(".")
    if any(int(p) > 255 or (len(p) > 1 and p[0] == "0") for p in parts):
        return False
    before = m.string[max(0, m.start() - 16):m.start()]
    if _VERSION_BEFORE.search(before):
        return False
    return any(len(p) > 1 for p in parts) or bool(_ADDRESS_BEFORE.search(before))


def _ipv6(s: str) -> bool:
    if s.count(":") < 2 or not s.replace(":", ""):
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


def _classify(branch: str, m: re.Match) -> str | None:
    """The PII type of a match of `branch`, or None where the checks say it is an ordinary number."""
    if branch == "email":
        return "email"
    if branch in ("phone_word", "phone"):
        return "phone"
    if branch == "long":
        digits = re.sub(r"[ -]", "", m.group("long"))
        if _id_shaped(digits):  # a wrong check character makes it an ordinary number, never a card
            return "id_number" if valid_id_number(digits) else None
        if digits.isdigit() and 16 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) and luhn(digits):
            return "bank_card"
        return None
    if branch == "ipv4":
        return "ip" if _ipv4(m) else None
    return "ip" if _ipv6(m.group("ipv6")) else None


def _next(pattern: re.Pattern, starts: re.Pattern | None, text: str, pos: int) -> re.Match | None:
    """The first match of `pattern` at or after `pos`, tried only where `starts` says it can begin."""
    if starts is None:
        return pattern.search(text, pos)
    for s in starts.finditer(text, pos):
        if m := pattern.match(text, s.start()):
            return m
    return None


def _matches(text: str) -> Iterator[tuple[str, re.Match]]:
    """(branch, match) left to right, as one pattern `a|b|...` of `_BRANCHES` would find them (at each position the
    first branch that matches; a match consumed whole), but each branch searched on its own from the characters it can
    begin with: ~10x faster than the joined pattern, whose look-behinds make `re` try every position."""
    ahead: list[re.Match | None] = [None] * len(_COMPILED)  # per branch, its first match at or after `looked`
    looked = [-1] * len(_COMPILED)
    pos = 0
    while True:
        best: tuple[str, re.Match] | None = None
        for i, (branch, pattern, starts) in enumerate(_COMPILED):
            m = ahead[i]
            if looked[i] < 0 or (m is not None and m.start() < pos):
                m = ahead[i] = _next(pattern, starts, text, pos)
                looked[i] = pos
            if m is not None and (best is None or m.start() < best[1].start()):
                best = (branch, m)
        if best is None:
            return
        yield best
        pos = best[1].end()


def find_and_redact(text: str) -> tuple[str, dict[str, int]]:
    """The text with every PII match replaced by its placeholder, and the count per type."""
    counts = dict.fromkeys(PII_TYPES, 0)
    parts: list[str] = []
    last = 0
    for branch, m in _matches(text):
        kind = _classify(branch, m)
        if kind is None:
            continue
        counts[kind] += 1
        parts += [text[last:m.start()], (m.group("ctx") if branch == "phone_word" else ""), PLACEHOLDER[kind]]
        last = m.end()
    return ("".join(parts) + text[last:] if parts else text), counts


@dataclass(frozen=True)
class Pii:
    """What to do with documents holding personal data: redact (typed placeholders), drop, or keep."""

    mode: str = "redact"

    def __post_init__(self) -> None:
        if self.mode not in PII_MODES:
            raise ValueError(f"unknown --pii mode {self.mode!r}; choose one of {', '.join(PII_MODES)}")

    def scan(self, texts: pl.Series) -> tuple[pl.Series, pl.DataFrame]:
        """(redacted texts, per document a `pii_TYPE` count column per type); only candidate documents reach Python."""
        import numpy as np
        import polars as pl

        idx = texts.str.contains(_CANDIDATE).fill_null(False).arg_true()
        counts = {t: np.zeros(len(texts), dtype=np.int32) for t in PII_TYPES}
        found = [find_and_redact(v) for v in texts.gather(idx).to_list()]
        at = idx.to_numpy()
        for t in PII_TYPES:
            counts[t][at] = [c[t] for _, c in found]
        frame = pl.DataFrame({f"pii_{t}": counts[t] for t in PII_TYPES})
        out = texts.clone().scatter(idx, pl.Series([v for v, _ in found], dtype=pl.String)) if len(found) else texts
        return out.rename(texts.name), frame

    def where(self) -> str:
        """The `zhdata filter --where` terms that keep what this mode keeps."""
        return " and ".join(f"pii_{t} = 0" for t in PII_TYPES) if self.mode == "drop" else ""

    def apply(self, texts: pl.Series, count: bool = False) -> tuple[pl.Series, pl.DataFrame, pl.Series, dict[str, int]]:
        """(texts, per-type counts, drop reason per document (`pii_TYPE`, the first type found; null = kept),
        documents redacted per type as `pii_TYPE`). `keep` looks for nothing (null counts) unless `count`."""
        import polars as pl

        reason = pl.Series("reason", [None] * len(texts), dtype=pl.String)
        if self.mode == "keep" and not count:  # nothing looked for: no cost
            nulls = pl.DataFrame({f"pii_{t}": pl.Series([None] * len(texts), dtype=pl.Int32) for t in PII_TYPES})
            return texts, nulls, reason, {}
        redacted, counts = self.scan(texts)
        if self.mode == "keep":
            return texts, counts, reason, {}
        changed: dict[str, int] = {}
        if self.mode == "drop":
            for t in reversed(PII_TYPES):
                reason = pl.select(pl.when(counts[f"pii_{t}"] > 0).then(pl.lit(f"pii_{t}")).otherwise(reason)).to_series()
            return texts, counts, reason.rename("reason"), changed
        changed = {f"pii_{t}": int((counts[f"pii_{t}"] > 0).sum()) for t in PII_TYPES}
        return redacted, counts, reason, changed
