"""The fast paths of `zhdata clean` give what the plain way gives, on real-shaped mixed text and on random strings
built from the characters each path is about (the plain way written here: one joined regex, one OpenCC call per
text, the regex over every text)."""

import gzip
import json
import random
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from zhdata import normalize, pii
from zhdata.clean import sample_path
from zhdata.normalize import OPENCC_MODES, Normalizer, _opencc, opencc_convert

FX = Path(__file__).parent / "fixtures" / "web"


def _mixed() -> list[str]:
    """Web fixtures (roff, HTML, wiki, Markdown, personal data, languages), their lines, sample documents, noise."""
    docs = [p.read_text(encoding="utf-8") for p in sorted(FX.iterdir()) if p.suffix != ".md" or p.name == "guide.md"]
    lines = [line for d in docs for line in d.splitlines()]
    with gzip.open(sample_path() / "laws_zh_cn.jsonl.gz", "rt", encoding="utf-8") as f:
        laws = [json.loads(line)["text"] for _, line in zip(range(40), f)]
    noise = ["\x1b[1;31m红色\x1b[0m N\x08NA\x08AM\x08ME \\fB粗\\fR \\(em", "ＡＢＣ１２３ａｂ，。！？：；（）ｘ", "甲\u200b乙\ufeff丙\x07\r\n丁",
             "", "  ", "\n", "版本 v1.2.3.4 与 IP 10.0.0.1、::1、fe80::1%eth0", "電話：02-2345-6789 手机13812345678"]
    return docs + lines + laws + noise


_GROUP_BRANCH = {"email": "email", "ctxnum": "phone_word", "long": "long", "phone": "phone", "ipv4": "ipv4", "ipv6": "ipv6"}


def _redact_with_one_pattern(text: str) -> tuple[str, dict[str, int]]:
    """The plain way: every branch in one pattern, `re.sub` left to right."""
    joined = re.compile("|".join(p for _, p, _ in pii._BRANCHES))
    counts = dict.fromkeys(pii.PII_TYPES, 0)

    def repl(m: re.Match) -> str:
        kind = pii._classify(_GROUP_BRANCH[m.lastgroup], m)
        if kind is None:
            return m.group(0)
        counts[kind] += 1
        return (m.group("ctx") or "") + pii.PLACEHOLDER[kind]

    return joined.sub(repl, text), counts


def test_pii_branch_by_branch_equals_one_joined_pattern():
    texts = _mixed()
    assert sum(pii.find_and_redact(t)[0] != t for t in texts) >= 15  # the fixture holds personal data
    for t in texts:
        assert pii.find_and_redact(t) == _redact_with_one_pattern(t), t
    rng = random.Random(0)  # strings where the branches overlap, touch and hide in each other's look-behinds
    alphabet = list("0123456789" * 3 + ".:-@+() \nabcfXx") + ["电话", "：", "地址", "v", "IP ", "中", "e.com", "::", "+86 ", "13"]
    for _ in range(20_000):
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert pii.find_and_redact(t) == _redact_with_one_pattern(t), t


@pytest.mark.parametrize("mode", [m for m in OPENCC_MODES if m != "none"])
def test_opencc_on_joined_texts_equals_one_call_per_text(mode):
    texts = _mixed() + ["這是一個測試", "软件 網路 程序員", "沈阳 沈先生"]
    cc = _opencc(mode)
    assert opencc_convert(texts, mode) == [cc.convert(t) for t in texts]
    with_sep = ["甲\uffff乙", "這是"]  # a text holding the separator: one call per text
    assert opencc_convert(with_sep, mode) == [cc.convert(t) for t in with_sep]


def test_prefiltered_steps_equal_the_regex_over_every_text():
    texts = pl.Series(_mixed())
    rng = random.Random(1)
    alphabet = ["\x1b", "[", "1", ";", "m", "\x08", "\\", "f", "B", "s", "(", "e", "中", "Ａ", "ｚ", "，", " ", "  ", "\n",
                "\t", "\u3000", "\u00a0", "\u2009", "\r", "<b>", "</b>", "<!--", "-->", "&amp;", "&#20013;", "&", "<"]
    texts = pl.concat([texts, pl.Series(["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
                                         for _ in range(5000)])])
    only = {s: False for s in normalize.STEPS[1:]}
    plain = {"ansi": lambda s: s.str.replace_all(normalize._ANSI, ""),
             "html": normalize._strip_html,
             "whitespace": lambda s: s.str.replace_all(normalize._HSPACE, " ").str.replace_all(" *\n *", "\n")
             .str.replace_all(r"\n{3,}", "\n\n").str.strip_chars()}
    for step, fn in plain.items():
        got, changed = Normalizer(convert="none", **{**only, step: True}).apply(texts)
        want = fn(texts)
        assert got.to_list() == want.to_list() and changed[step] == int((want != texts).sum()) > 100, step


def test_window_powers_kept_between_chunks_give_the_same_hashes():
    from zhdata.ngrams import _POWERS, _window_polynomial, seeded
    rng = np.random.default_rng(7)
    mult = seeded(11, 1) | np.uint64(1)
    _POWERS.pop(int(mult), None)
    long = rng.integers(0, 0x30000, (1 << 20) + 50).astype(np.uint32)  # longer than what is kept
    short = long[:300]
    first = _window_polynomial(short, 5, mult)
    whole = _window_polynomial(long, 5, mult)
    assert whole[:296].tolist() == first.tolist() == _window_polynomial(short, 5, mult).tolist()
    m = int(mult)
    for i in (0, 70_000, len(long) - 5):  # spot checks against the plain polynomial, past the kept powers too
        acc = 0
        for c in long[i:i + 5].tolist():
            acc = (acc * m + c) % (1 << 64)
        assert int(whole[i]) == acc


def test_repeated_ngram_fraction_equals_counting_ngrams():
    from collections import Counter

    from zhdata.ngrams import duplicated_ngram_fraction
    rng = random.Random(3)
    texts = _mixed() + ["".join(rng.choice("甲乙丙丁 \n") for _ in range(rng.randint(0, 60))) for _ in range(3000)]
    for n in (3, 13):
        want = []
        for t in texts:
            grams = Counter(t[i:i + n] for i in range(len(t) - n + 1))
            covered = [False] * len(t)
            for i in range(len(t) - n + 1):
                if grams[t[i:i + n]] > 1:
                    covered[i:i + n] = [True] * n
            want.append(sum(covered) / len(t) if t else 0.0)
        assert duplicated_ngram_fraction(texts, n).tolist() == want
