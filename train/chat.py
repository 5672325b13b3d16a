"""`train chat MODEL`: talk to a `train run` folder or a model folder in the terminal, the answer streamed as it is made.

The whole conversation goes through the tokenizer's chat template at every turn (as `train generate` renders a
prompt); when it no longer fits the model's positions, the oldest exchanges are left out (and you are told).
Commands:
  /reset          forget the conversation (the system message stays)
  /system TEXT    set the system message (`/system` alone removes it)
  /save FILE      write the conversation as one JSON line (`system`, `messages`: readable by `train generate`
                  and `zhdata instruct`)
  /help, /quit    (Ctrl-D quits too)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zhdata.errors import InputError

from .generate import GenSettings, Prompt, add_decoding_arguments, prompt_ids, settings_from_args


class Chat:
    """The conversation state and one turn of it; printing goes to `out`."""

    def __init__(self, model, tok, settings: GenSettings, system: str | None = None, out=sys.stdout):
        self.model, self.tok, self.s, self.out = model, tok, settings, out
        self.system = system
        self.messages: list[dict] = []
        self.limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)

    def _ids(self, messages: list[dict]) -> tuple[list[int], list[dict]]:
        """The prompt ids of `messages` and the messages kept: the oldest exchanges left out until it fits."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        while True:
            ids = prompt_ids(self.tok, Prompt("chat", messages=head + messages), self.s.chat_template)
            if not self.limit or len(ids) + self.s.max_new_tokens <= self.limit or len(messages) <= 1:
                return ids, messages
            messages = messages[2:]

    def turn(self, text: str) -> str:
        """Answer `text` with the history as context, streaming the answer to `out`; returns the answer."""
        from transformers import TextStreamer

        from .generate import generate_batch

        try:
            ids, kept = self._ids(self.messages + [{"role": "user", "content": text}])
        except ValueError as e:  # the chat template refuses the conversation
            raise InputError("chat", None, e.args[0]) from None
        if self.limit and len(ids) + self.s.max_new_tokens > self.limit:  # the conversation so far stays as it was
            raise InputError("chat", None, f"this message alone is too long for the model ({len(ids)} tokens)")
        if len(kept) <= len(self.messages):
            print("(the conversation is too long for the model: the oldest exchange is left out)", file=self.out)
        self.messages = kept
        streamer = TextStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        (row,) = generate_batch(self.model, self.tok, [ids], self.s, self.s.seed if self.s.temperature > 0 else None,
                                streamer=streamer)
        self.out.flush()
        self.messages.append({"role": "assistant", "content": row["text"]})
        return row["text"]

    def command(self, line: str) -> bool:
        """Run a /command; False when the chat should end."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name in ("quit", "exit"):
            return False
        if name == "reset":
            self.messages = []
            print("(conversation cleared)", file=self.out)
        elif name == "system":
            self.system = arg or None
            print(f"(system message: {arg})" if arg else "(no system message)", file=self.out)
        elif name == "save":
            if not arg:
                print("(usage: /save FILE)", file=self.out)
            else:
                rec = {"system": self.system, "messages": self.messages}
                Path(arg).expanduser().write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
                print(f"(saved {len(self.messages)} messages to {arg})", file=self.out)
        elif name == "help":
            print(__doc__.split("Commands:\n", 1)[1].rstrip(), file=self.out)
        else:
            print(f"(unknown command /{name}; /help lists them)", file=self.out)
        return True


def run(args: argparse.Namespace) -> int:
    s = settings_from_args(args)
    s.check()
    from .generate import _load

    model, tok = _load(args.model, None, args.device)
    chat = Chat(model, tok, s, args.system)
    print(f"train chat: {args.model} ({'greedy' if s.temperature == 0 else f'temperature {s.temperature}'}, "
          f"at most {s.max_new_tokens} new tokens); /help for commands, /quit or Ctrl-D to leave")
    while True:
        try:
            line = input("你> ").strip()
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        if not line:
            continue
        if line.startswith("/"):
            if not chat.command(line):
                return 0
            continue
        print("模型> ", end="", flush=True)
        try:
            chat.turn(line)
        except InputError as e:
            print(f"\n(error: {e})")
        except KeyboardInterrupt:
            print("\n(interrupted)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="interactive chat with a trained model in the terminal (streamed answers)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__ + """
examples:
  train chat runs/ext
  train chat models/ext-merged --system "你是一个乐于助人的助手。" --temperature 0.7 --top-p 0.9""")
    p.add_argument("model", help="`train run` output folder (4-bit base + adapter) or Hugging Face model folder")
    p.add_argument("--system", default=None, help="system message to start with")
    add_decoding_arguments(p, max_new_tokens=512)
    p.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)
