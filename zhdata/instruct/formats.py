"""Instruction-data formats (Alpaca, ShareGPT, OpenAI messages, preference pairs) parsed into one conversation shape.

Field names follow LLaMA-Factory's `dataset_info.json` (`columns` and `tags`), so a user's existing
mapping for renamed fields works here unchanged (`--columns`).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

FORMATS = ("alpaca", "sharegpt", "openai")
PREFERENCE_MODES = ("error", "chosen")


class RecordError(ValueError):
    """A record that cannot be read as a conversation; `reason` is the manifest's counter name."""

    def __init__(self, problem: str, reason: str):
        super().__init__(problem)
        self.reason = reason


@dataclass
class Conversation:
    """One example: optional system prompt, then user/assistant/tool turns as (role, content) pairs."""

    system: str | None
    messages: list[tuple[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ColumnMap:
    """LLaMA-Factory style names of a dataset's fields (`columns`) and of its roles (`tags`)."""

    prompt: str = "instruction"
    query: str = "input"
    response: str = "output"
    history: str = "history"
    system: str = "system"
    messages: str | None = None  # None: "conversations"/"conversation" (ShareGPT) or "messages" (OpenAI)
    chosen: str = "chosen"
    rejected: str = "rejected"
    role_tag: str | None = None  # None: "from" or "role"
    content_tag: str | None = None  # None: "value" or "content"
    user_tag: str | None = None
    assistant_tag: str | None = None
    observation_tag: str | None = None
    function_tag: str | None = None
    system_tag: str | None = None

    def role_names(self) -> dict[str, str]:
        """Name used in the data -> our role ("system" stays "system" until it is moved out)."""
        names = {
            "human": "user", "user": "user",
            "gpt": "assistant", "assistant": "assistant", "function_call": "assistant",
            "observation": "tool", "tool": "tool", "function": "tool", "ipython": "tool",
            "system": "system",
        }
        for tag, role in (("user_tag", "user"), ("assistant_tag", "assistant"), ("observation_tag", "tool"),
                          ("function_tag", "assistant"), ("system_tag", "system")):
            if (name := getattr(self, tag)) is not None:
                names[name] = role
        return names


def parse_columns(spec: str | None) -> tuple[ColumnMap, str | None]:
    """`--columns`: `key=name,key=name` or a JSON/TOML file holding a LLaMA-Factory dataset entry
    (`{"formatting": ..., "columns": {...}, "tags": {...}}`). Returns the map and the entry's format, if any."""
    if not spec:
        return ColumnMap(), None
    path = Path(spec)
    if path.suffix in (".json", ".toml") and path.is_file():
        text = path.read_text(encoding="utf-8")
        entry = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        pairs = {**entry.get("columns", {}), **entry.get("tags", {})}
        fmt = entry.get("formatting")
    else:
        pairs, fmt = {}, None
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not value:
                raise ValueError(f"--columns: {item!r} is not key=name")
            pairs[key.strip()] = value.strip()
    return column_map(pairs), fmt


def column_map(pairs: dict[str, str]) -> ColumnMap:
    known = {f.name for f in fields(ColumnMap)}
    unknown = sorted(set(pairs) - known - {"tools", "images", "videos", "audios", "kto_tag"})
    if unknown:
        raise ValueError(f"unknown column-mapping keys {unknown}; known: {', '.join(sorted(known))}")
    return replace(ColumnMap(), **{k: v for k, v in pairs.items() if k in known})


def detect_record_format(record: Any, cols: ColumnMap) -> str:
    """The format of one record by the fields it has; raises RecordError when it matches none."""
    if not isinstance(record, dict):
        raise RecordError(f"record is a {type(record).__name__}, not a JSON object", "not_an_object")
    if cols.messages is not None and cols.messages in record:
        return "openai" if cols.messages == "messages" else "sharegpt"
    if "conversations" in record or "conversation" in record:
        return "sharegpt"
    if "messages" in record:
        return "openai"
    if cols.prompt in record or (cols.chosen in record and "prompt" in record):
        return "alpaca"
    raise RecordError(
        f"cannot tell the format from the fields {sorted(record)[:8]}: expected Alpaca ({cols.prompt!r}, "
        f"{cols.response!r}), ShareGPT ('conversations') or OpenAI ('messages')", "unknown_format")


def is_preference(record: dict, cols: ColumnMap) -> bool:
    return cols.chosen in record and cols.rejected in record


def parse_record(record: Any, fmt: str, cols: ColumnMap, preference: str = "error") -> Conversation:
    """One record of format `fmt` -> Conversation; raises RecordError naming the problem."""
    if not isinstance(record, dict):
        raise RecordError(f"record is a {type(record).__name__}, not a JSON object", "not_an_object")
    pref = is_preference(record, cols)
    if pref and preference != "chosen":
        raise RecordError(
            f"preference data ({cols.chosen!r}/{cols.rejected!r} fields): SFT needs one response per prompt",
            "preference")
    conv = _parse_alpaca(record, cols, pref) if fmt == "alpaca" else _parse_chat(record, cols, pref)
    _check_roles(conv)
    return conv


def _text(value: Any, what: str) -> str:
    if value is None:
        raise RecordError(f"{what} is null", "null_field")
    if not isinstance(value, str):
        raise RecordError(f"{what} is a {type(value).__name__}, not a string", "bad_type")
    return value


def _parse_alpaca(rec: dict, cols: ColumnMap, pref: bool) -> Conversation:
    prompt_key = cols.prompt if cols.prompt in rec else "prompt"
    if prompt_key not in rec:
        raise RecordError(f"Alpaca record has no {cols.prompt!r}", "missing_field")
    prompt = _text(rec[prompt_key], f"{prompt_key!r}")
    query = rec.get(cols.query)
    if query is not None:
        query = _text(query, f"{cols.query!r}")
        if query.strip():
            prompt = f"{prompt}\n{query}"
    messages: list[tuple[str, str]] = []
    history = rec.get(cols.history)
    if history is not None:
        if not isinstance(history, list):
            raise RecordError(f"{cols.history!r} is a {type(history).__name__}, not a list of [user, assistant] pairs", "bad_type")
        for k, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise RecordError(f"{cols.history!r}[{k}] is not a [user, assistant] pair", "bad_type")
            messages += [("user", _text(pair[0], f"{cols.history!r}[{k}][0]")),
                         ("assistant", _text(pair[1], f"{cols.history!r}[{k}][1]"))]
    if pref:
        chosen = rec[cols.chosen]
        if isinstance(chosen, list):  # TRL style: prompt text plus chosen turns
            return _with_system(rec, cols, messages + [("user", prompt)] + _turns(chosen, cols, cols.chosen))
        response = _text(chosen if not isinstance(chosen, dict) else _content(chosen, cols, cols.chosen), f"{cols.chosen!r}")
    else:
        if cols.response not in rec:
            raise RecordError(f"Alpaca record has no {cols.response!r} (the response)", "missing_output")
        response = _text(rec[cols.response], f"{cols.response!r}")
    return _with_system(rec, cols, messages + [("user", prompt), ("assistant", response)])


def _with_system(rec: dict, cols: ColumnMap, messages: list[tuple[str, str]]) -> Conversation:
    system = rec.get(cols.system)
    if system is not None:
        system = _text(system, f"{cols.system!r}")
    return Conversation(system or None, messages)


def _content(turn: dict, cols: ColumnMap, where: str) -> Any:
    key = cols.content_tag or ("value" if "value" in turn else "content")
    if key not in turn:
        raise RecordError(f"{where} has no {key!r}", "missing_field")
    content = turn[key]
    empty = content is None or (isinstance(content, str) and not content.strip())
    if empty and turn.get("tool_calls"):  # OpenAI: a turn that only calls tools (content null or "")
        return json.dumps(turn["tool_calls"], ensure_ascii=False, sort_keys=True)
    if isinstance(content, list):  # OpenAI content parts
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise RecordError(f"{where} has non-text content parts", "bad_type")
        return "".join(p["text"] for p in content)
    return content


def _turns(raw: Any, cols: ColumnMap, key: str) -> list[tuple[str, str]]:
    if not isinstance(raw, list):
        raise RecordError(f"{key!r} is a {type(raw).__name__}, not a list of turns", "bad_type")
    names = cols.role_names()
    out = []
    for k, turn in enumerate(raw):
        where = f"{key!r}[{k}]"
        if not isinstance(turn, dict):
            raise RecordError(f"{where} is a {type(turn).__name__}, not an object", "bad_type")
        if "human" in turn and "assistant" in turn:  # shareAI's ShareGPT-Chinese-English-90k: one exchange per item
            out += [("user", _text(turn["human"], f"{where}['human']")),
                    ("assistant", _text(turn["assistant"], f"{where}['assistant']"))]
            continue
        role_key = cols.role_tag or ("from" if "from" in turn else "role")
        name = turn.get(role_key)
        if not isinstance(name, str) or name not in names:
            raise RecordError(f"{where} has unknown role {name!r} (field {role_key!r}); known: "
                              f"{', '.join(sorted(names))}; map others with --columns user_tag=...", "unknown_role")
        out.append((names[name], _text(_content(turn, cols, where), f"{where} content")))
    return out


def _parse_chat(rec: dict, cols: ColumnMap, pref: bool) -> Conversation:
    key = cols.messages or next((k for k in ("conversations", "conversation") if k in rec), "messages")
    if key not in rec:
        raise RecordError(f"record has no {key!r}", "missing_field")
    turns = _turns(rec[key], cols, key)
    if pref:  # LLaMA-Factory ShareGPT ranking: turns end with the user, chosen/rejected are single turns
        chosen = rec[cols.chosen]
        turns += _turns(chosen if isinstance(chosen, list) else [chosen], cols, cols.chosen)
    system = rec.get(cols.system)
    if system is not None:
        system = _text(system, f"{cols.system!r}")
    if turns and turns[0][0] == "system":
        system = turns.pop(0)[1]
    return Conversation(system or None, turns)


def _check_roles(conv: Conversation) -> None:
    """Structural problems that make a record unusable (bad input, not a cleaning decision)."""
    if not conv.messages:
        raise RecordError("conversation has no turns", "no_turns")
    for k, (role, _) in enumerate(conv.messages):
        if role == "system":
            raise RecordError(f"system turn at position {k}: only the first turn may be a system prompt", "system_in_middle")
    if conv.messages[0][0] != "user":
        raise RecordError(f"conversation starts with the {conv.messages[0][0]}, not the user", "starts_with_assistant")
