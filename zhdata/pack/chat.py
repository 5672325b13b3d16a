"""Render conversations with the tokenizer folder's chat template and mark the assistant answers.

The template renders the whole conversation and, for each assistant answer, the prefixes that end just
before and just after it (never an empty message list: templates in the wild read `messages[0]` without a
guard); each answer is the text its message adds, from the start of its content through the template's
closing text (for Mixtral the EOS). Each rendering must extend the one before, as transformers'
`apply_chat_template` renders them. The whole rendering is tokenised once, as at inference, and a token is
trained on when its character span overlaps an answer span, so no template-specific token arithmetic is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jinja2 import TemplateError
from transformers.utils.chat_template_utils import render_jinja_template

from ..instruct.formats import RecordError
from .tokfolder import TokenizerFolder


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # character spans of the assistant answers in `text`


class ChatRenderer:
    def __init__(self, tok: TokenizerFolder):
        self.template = tok.config.get("chat_template")
        if isinstance(self.template, list):  # named templates: use the default one
            self.template = next((t["template"] for t in self.template if t.get("name") == "default"), None)
        if not self.template:
            raise ValueError(f"{tok.path}: tokenizer_config.json has no chat_template; SFT packing needs one")
        self.specials = {"bos_token": tok.token_str("bos_token") or "", "eos_token": tok.token_str("eos_token") or ""}
        self.control = [t for t in (tok.token_str(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")) if t]
        self.tokenizer = tok.tokenizer

    def _render(self, messages: list[dict]) -> str:
        try:
            out, _ = render_jinja_template([messages], chat_template=self.template, **self.specials)
        except TemplateError as e:
            raise RecordError(f"the chat template refuses this conversation: {e}", "template_refused") from None
        return out[0]

    def render(self, system: str | None, messages: list[dict]) -> Rendered:
        """Render one conversation; raise RecordError when it has nothing to train on or the template refuses it."""
        if not any(m["role"] == "assistant" for m in messages):
            raise RecordError("conversation has no assistant turn", "no_assistant_turn")
        msgs = ([{"role": "system", "content": system}] if system else []) + messages
        for m in msgs:  # such text would be tokenised as the control token itself
            if any(c in m["content"] for c in self.control):
                raise RecordError("a message contains a control token as text (e.g. '</s>')", "control_token_in_text")
        answers = [k for k, m in enumerate(msgs) if m["role"] == "assistant"]
        ends = sorted({k for a in answers for k in (a, a + 1)} - {0} | {len(msgs)})  # prefixes msgs[:k] to render
        prefix, spans = "", []
        for k in ends:
            full = self._render(msgs[:k])
            if not full.startswith(prefix):
                raise RecordError("the chat template does not render conversations prefix by prefix; cannot locate answers", "template_not_incremental")
            if msgs[k - 1]["role"] == "assistant":
                added = full[len(prefix):]
                at = added.find(msgs[k - 1]["content"]) if msgs[k - 1]["content"] else -1
                spans.append((len(prefix) + max(at, 0), len(full)))
            prefix = full
        return Rendered(prefix, spans)

    def encode(self, rendered: list[Rendered]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, loss mask) per rendering: mask 1 on tokens overlapping an assistant span."""
        out = []
        for r, enc in zip(rendered, self.tokenizer.encode_batch([r.text for r in rendered], add_special_tokens=False)):
            ids = np.asarray(enc.ids, dtype=np.int64)
            offs = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            mask = np.zeros(len(ids), dtype=np.uint8)
            for a, b in r.spans:
                mask |= (offs[:, 1] > a) & (offs[:, 0] < b)
            out.append((ids, mask))
        return out
