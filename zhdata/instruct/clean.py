"""Cleaning steps for conversations, run on a whole batch; each step is switchable and counted.

Order: garbled text (on the raw text, before normalisation removes the C1 controls that betray it),
normalisation (OpenCC + `zhdata clean`'s steps), empty turns, role order, refusals, length limits,
Chinese ratio of the responses. Steps that find a bad turn in a multi-turn conversation cut it
before that turn (keeping the earlier complete exchanges, counted under `modified`); a conversation
with no complete exchange left is dropped under the step's reason.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..normalize import Normalizer
from .formats import Conversation

if TYPE_CHECKING:  # polars is imported where it is used, so that `--help` does not load it (tests/test_cli.py)
    import polars as pl

# Boilerplate that marks a response as a refusal or as another assistant's identity (matched case-insensitively,
# spaces between words optional, after normalisation).
DEFAULT_REFUSALS = (
    "作为一个AI语言模型", "作为一个人工智能语言模型", "作为AI语言模型", "作为一个语言模型", "作为一个AI模型",
    "作为一个人工智能模型", "作为一名AI语言模型", "我是一个AI语言模型", "我只是一个AI语言模型", "我只是一个语言模型",
    "我是由OpenAI训练的", "由OpenAI开发的语言模型", "OpenAI训练的语言模型", "我是ChatGPT",
    "很抱歉，作为一个AI", "抱歉，作为一个AI", "我无法提供这方面的帮助", "我不能回答这个问题",
    "As an AI language model", "As a language model", "As an AI model", "As an AI assistant, I",
    "I'm just an AI", "I am just an AI", "I am an AI language model", "trained by OpenAI", "developed by OpenAI",
    "I'm sorry, but I cannot", "I am sorry, but I cannot", "I cannot fulfill", "I can't assist with that",
    "OpenAI's content policy", "OpenAI's use case policy",
)
# Mojibake: UTF-8 bytes decoded as Latin-1/cp1252 (Chinese lead byte E4-E9 then two continuation bytes,
# or Ã/Â + continuation), C1 controls; GBK's classic 锟斤拷 and MSVC's 烫烫/屯屯 fill patterns.
_CP1252_CONT = r"\x{80}-\x{BF}\x{152}\x{153}\x{160}\x{161}\x{178}\x{17D}\x{17E}\x{192}\x{2C6}\x{2DC}\x{2013}\x{2014}" \
               r"\x{2018}-\x{201E}\x{2020}-\x{2022}\x{2026}\x{2030}\x{2039}\x{203A}\x{20AC}\x{2122}"
_MOJIBAKE = rf"[\x{{E4}}-\x{{E9}}][{_CP1252_CONT}]{{2}}|[ÂÃ][{_CP1252_CONT}]|[\x{{80}}-\x{{9F}}]"
_GARBLED = r"\x{FFFD}|锟斤拷|烫烫烫|屯屯屯"
_HAN = r"\p{Han}"
_LATIN = r"[A-Za-z]"


@dataclass(frozen=True)
class CleanConfig:
    """Switches and thresholds of every cleaning step (None or 0 switches a limit off)."""

    normalizer: Normalizer | None = field(default_factory=lambda: instruct_normalizer())  # None: none at all
    drop_empty_turns: bool = True
    role_order: bool = True
    refusals: tuple[str, ...] = DEFAULT_REFUSALS  # () switches the step off
    garbled: bool = True
    max_chars: int | None = 16_000  # whole conversation, system included
    max_tokens: int | None = None  # with a tokenizer
    min_chinese_ratio: float | None = 0.1  # Han / (Han + Latin letters) over the responses
    chinese_prompt_exempt: bool = True  # responses below the ratio pass when the prompts reach it (translations, code)

    def params(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["normalizer"] = self.normalizer.params() if self.normalizer else None
        out["refusals"] = len(self.refusals)
        return out


def instruct_normalizer(convert: str = "t2s", on: bool = True) -> Normalizer:
    """`zhdata clean`'s normaliser without its HTML and whitespace steps: responses hold code and markup
    (indentation, `<div>`), which those steps would destroy; turns are only stripped at both ends."""
    return Normalizer(convert=convert, unicode=on, ansi=on, control=on, html=False, fullwidth=on, whitespace=False)


def load_phrases(path: str | Path) -> tuple[str, ...]:
    """A phrase list: one phrase per line, `#` starts a comment line."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return tuple(s for s in (ln.strip() for ln in lines) if s and not s.startswith("#"))


def phrase_pattern(phrases: Sequence[str]) -> str:
    """One case-insensitive regex for all phrases; whitespace between words and at script changes is optional."""
    def one(p: str) -> str:
        parts = re.findall(r"[A-Za-z0-9']+|\s+|.", p)
        return r"\s*".join(re.escape(x) for x in parts if not x.isspace())
    return "(?i)" + "|".join(one(p) for p in sorted(set(phrases), key=len, reverse=True))


def _cut(msgs: list[tuple[str, str]], at: int) -> list[tuple[str, str]]:
    """Turns before `at`, up to the last assistant turn (a conversation must end with the assistant)."""
    k = at
    while k > 0 and msgs[k - 1][0] != "assistant":
        k -= 1
    return msgs[:k]


def role_order_violation(msgs: Sequence[tuple[str, str]]) -> int | None:
    """Index of the first turn out of order: users and assistants alternate, tool turns follow an assistant
    (its function call) or another tool turn and are answered by the assistant; len(msgs) if it ends
    without an assistant turn; None when the order is right."""
    allowed = {"user": (None, "assistant"), "assistant": ("user", "tool"), "tool": ("assistant", "tool")}
    prev = None
    for k, (role, _) in enumerate(msgs):
        if prev not in allowed[role]:
            return k
        prev = role
    return None if prev == "assistant" else len(msgs)


class Cleaner:
    """Applies a CleanConfig to batches, counting per reason into the given Counters."""

    def __init__(self, cfg: CleanConfig, tokenizer=None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.refusal_re = phrase_pattern(cfg.refusals) if cfg.refusals else None

    def clean(self, convs: list[Conversation], english: bool, dropped: Counter, modified: Counter) -> list[Conversation]:
        """Clean a batch; returns the kept conversations (in order)."""
        if not convs:
            return []
        cfg = self.cfg
        if cfg.garbled:
            convs = self._drop_where(convs, self._garbled(convs), "garbled", dropped)
        if cfg.normalizer is not None:
            self._normalize(convs, modified)
        if cfg.drop_empty_turns:
            convs = self._cut_at_first(convs, self._turn_flags(convs, lambda s: s.str.strip_chars() == "", None),
                                       "empty_turn", dropped, modified)
        if cfg.role_order:
            convs = self._fix_order(convs, dropped, modified)
        if self.refusal_re:
            convs = self._cut_at_first(convs, self._turn_flags(convs, lambda s: s.str.contains(self.refusal_re), "assistant"),
                                       "refusal", dropped, modified)
        if cfg.max_chars:
            convs = self._limit(convs, [[len(c) for _, c in v.messages] for v in convs],
                                [len(v.system or "") for v in convs], cfg.max_chars, "too_long_chars", dropped, modified)
        if cfg.max_tokens and self.tokenizer is not None:
            convs = self._limit(convs, self._token_counts(convs), [0] * len(convs), cfg.max_tokens,
                                "too_long_tokens", dropped, modified)
        if cfg.min_chinese_ratio and not english:
            convs = self._drop_where(convs, self._low_chinese(convs), "low_chinese", dropped)
        return convs

    # -- helpers over the flattened turns of a batch (one Polars Series, Rust regexes) ---------------------

    @staticmethod
    def _flat(convs: list[Conversation], role: str | None) -> tuple[pl.Series, list[tuple[int, int]]]:
        import polars as pl

        texts, where = [], []
        for i, v in enumerate(convs):
            for k, (r, c) in enumerate(v.messages):
                if role is None or r == role:
                    texts.append(c)
                    where.append((i, k))
        return pl.Series(texts, dtype=pl.String), where

    def _turn_flags(self, convs, test, role) -> list[int | None]:
        """Per conversation, the index of its first turn (of `role`) for which `test(series)` holds."""
        s, where = self._flat(convs, role)
        first: list[int | None] = [None] * len(convs)
        if len(s):
            for j in test(s).arg_true().to_list():
                i, k = where[j]
                if first[i] is None or k < first[i]:
                    first[i] = k
        return first

    def _garbled(self, convs) -> list[bool]:
        """Any turn or the system prompt holds U+FFFD, a GBK/MSVC fill pattern, or two or more mojibake sequences."""
        import polars as pl

        s, where = self._flat(convs, None)
        t = pl.col("t")
        expr = (t.str.contains(_GARBLED) | (t.str.count_matches(_MOJIBAKE) >= 2)).alias("x")
        hit = [False] * len(convs)
        for j in pl.DataFrame({"t": s}).select(expr)["x"].arg_true().to_list():
            hit[where[j][0]] = True
        systems = pl.DataFrame({"t": pl.Series([v.system or "" for v in convs], dtype=pl.String)})
        for i in systems.select(expr)["x"].arg_true().to_list():
            hit[i] = True
        return hit

    @staticmethod
    def _drop_where(convs, flags, reason, dropped) -> list[Conversation]:
        kept = [v for v, bad in zip(convs, flags) if not bad]
        if len(kept) < len(convs):
            dropped[reason] += len(convs) - len(kept)
        return kept

    @staticmethod
    def _cut_at_first(convs, first, reason, dropped, modified) -> list[Conversation]:
        """Cut each conversation before its flagged turn (`first[i]`, None = keep whole); `reason` is a string or
        one per conversation. A conversation with nothing left is dropped under that reason."""
        reasons = [reason] * len(convs) if isinstance(reason, str) else reason
        kept = []
        for v, k, why in zip(convs, first, reasons):
            if k is not None:
                v.messages = _cut(v.messages, k)
                if not v.messages:
                    dropped[why] += 1
                    continue
                modified[f"{why}_cut"] += 1
            kept.append(v)
        return kept

    def _normalize(self, convs: list[Conversation], modified: Counter) -> None:
        import polars as pl

        s, where = self._flat(convs, None)
        out, changed = self.cfg.normalizer.apply(s)
        stripped = out.str.strip_chars()
        changed["strip"] = int((stripped != out).sum())
        out = stripped
        for (i, k), text in zip(where, out.to_list()):
            convs[i].messages[k] = (convs[i].messages[k][0], text)
        systems = [i for i, v in enumerate(convs) if v.system]
        if systems:
            sys_out, sys_changed = self.cfg.normalizer.apply(pl.Series([convs[i].system for i in systems], dtype=pl.String))
            for i, text in zip(systems, sys_out.to_list()):
                convs[i].system = text or None
            for step, n in sys_changed.items():
                changed[step] = changed.get(step, 0) + n
        for step, n in changed.items():
            if n:
                modified[f"normalize_{step}_turns"] += n

    @classmethod
    def _fix_order(cls, convs, dropped, modified) -> list[Conversation]:
        first = [role_order_violation(v.messages) for v in convs]
        reasons = ["ends_without_assistant" if k == len(v.messages) else "role_order" for v, k in zip(convs, first)]
        return cls._cut_at_first(convs, first, reasons, dropped, modified)

    @classmethod
    def _limit(cls, convs, sizes, base, limit, reason, dropped, modified) -> list[Conversation]:
        """Keep the longest prefix of whole exchanges within `limit`; drop when even the first exchange is over."""
        first = []
        for turn_sizes, b in zip(sizes, base):
            total, k = b, 0
            while k < len(turn_sizes) and total + turn_sizes[k] <= limit:
                total += turn_sizes[k]
                k += 1
            first.append(k if k < len(turn_sizes) else None)
        return cls._cut_at_first(convs, first, reason, dropped, modified)

    def _token_counts(self, convs) -> list[list[int]]:
        s, where = self._flat(convs, None)
        enc = self.tokenizer.encode_batch(s.to_list(), add_special_tokens=False)
        sizes: list[list[int]] = [[0] * len(v.messages) for v in convs]
        for (i, k), e in zip(where, enc):
            sizes[i][k] = len(e.ids)
        sys_enc = self.tokenizer.encode_batch([v.system or "" for v in convs], add_special_tokens=False)
        for i, e in enumerate(sys_enc):
            if convs[i].system:
                sizes[i][0] += len(e.ids)  # the system prompt is folded into the first user turn
        return sizes

    def _low_chinese(self, convs) -> list[bool]:
        limit = self.cfg.min_chinese_ratio
        low = [r is not None and r < limit for r in self._chinese_ratio(convs, "assistant")]
        if self.cfg.chinese_prompt_exempt:
            prompt = self._chinese_ratio(convs, "user")
            low = [bad and (p is None or p < limit) for bad, p in zip(low, prompt)]
        return low

    def _chinese_ratio(self, convs, role: str) -> list[float | None]:
        """Han / (Han + Latin letters) over the turns of `role`; None when they hold neither."""
        import polars as pl

        s, where = self._flat(convs, role)
        han = [0] * len(convs)
        latin = [0] * len(convs)
        if len(s):
            df = pl.DataFrame({"t": s}).select(h=pl.col("t").str.count_matches(_HAN), l=pl.col("t").str.count_matches(_LATIN))
            for (i, _), h, lat in zip(where, df["h"].to_list(), df["l"].to_list()):
                han[i] += h
                latin[i] += lat
        return [h / (h + lat) if h + lat else None for h, lat in zip(han, latin)]
