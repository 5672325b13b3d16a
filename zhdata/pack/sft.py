"""SFT mode: conversations → chat-template token ids with a loss mask on the assistant answers."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np

from ..errors import ErrorPolicy
from ..manifest import Counts
from ..instruct.formats import RecordError
from .chat import ChatRenderer
from .pretrain import Batch
from .split import split_of
from .tokfolder import TokenizerFolder


def conversation(rec: Any) -> tuple[str | None, list[dict]]:
    """(system, messages) of a conversation record, or RecordError saying what is malformed."""
    if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
        raise RecordError("record has no 'messages' list (expected the conversation schema of `zhdata instruct`)", "malformed_conversation")
    system = rec.get("system")
    if system is not None and not isinstance(system, str):
        raise RecordError("'system' must be a string or null", "malformed_conversation")
    msgs = []
    for k, m in enumerate(rec["messages"]):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RecordError(f"message {k} is not {{role: str, content: str}}", "malformed_conversation")
        if m["role"] == "system":
            raise RecordError(f"message {k} has role 'system'; the system prompt belongs in the 'system' column", "malformed_conversation")
        msgs.append({"role": m["role"], "content": m["content"]})
    return system or None, msgs


class SftEncoder:
    """Turns a batch of conversation records into per-split (ids, example lengths, loss mask)."""

    with_mask = True

    def __init__(self, tok: TokenizerFolder, val_fraction: float, block_size: int, overlong: str):
        self.renderer = ChatRenderer(tok)
        self.val_fraction, self.block_size, self.overlong = val_fraction, block_size, overlong

    def encode(self, records: list[tuple[Any, Any]], path: str, policy: ErrorPolicy, counts: Counts, stats: Counter) -> Batch:
        rendered, splits = [], []
        for where, rec in records:
            try:
                system, msgs = conversation(rec)
                while msgs and msgs[-1]["role"] != "assistant" and any(m["role"] == "assistant" for m in msgs):
                    msgs.pop()  # turns after the last answer teach nothing
                    counts.modified["trailing_turns_removed"] += 1
                r = self.renderer.render(system, msgs)
            except RecordError as e:
                policy.bad(path, where, str(e), e.reason)
                continue
            counts.records_in += 1
            rendered.append(r)
            splits.append(split_of(json.dumps([system, msgs], ensure_ascii=False), self.val_fraction))
        parts: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "val": ([], [], [])}
        for r, (ids, mask), split in zip(rendered, self.renderer.encode(rendered), splits):
            n_rendered = len(ids)
            if len(ids) > self.block_size:
                if self.overlong == "drop":
                    counts.dropped["too_long"] += 1
                    continue
                ids, mask = ids[: self.block_size], mask[: self.block_size]
                if not mask.any():
                    counts.dropped["no_answer_within_block"] += 1
                    continue
                counts.modified["truncated"] += 1
            counts.records_out += 1
            stats["chars"] += len(r.text)
            stats["text_tokens"] += n_rendered  # before truncation, so tokens/char describes the tokenizer
            stats["loss_tokens"] += int(mask.sum())
            ids_l, len_l, mask_l = parts[split]
            ids_l.append(ids)
            len_l.append(len(ids))
            mask_l.append(mask)
        return {s: (np.concatenate(i), np.array(n, dtype=np.int64), np.concatenate(m)) for s, (i, n, m) in parts.items() if n}
