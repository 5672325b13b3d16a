"""`train chat` driven through a pseudo-terminal: streamed multi-turn answers equal `train generate`'s for the same
conversation, and /system, /save, /reset, /quit do what they say."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from tiny_lm import tiny_model, tokenizer_folder
from train.generate import GenSettings, Prompt, generate_answers
from train.model import load_for_inference

ROOT = Path(__file__).resolve().parents[1]


class Terminal:
    """A child process on a pseudo-terminal, read until an expected text appears (a small `expect`)."""

    def __init__(self, argv: list[str]):
        self.master, slave = pty.openpty()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "TERM": "dumb"}
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 240.0) -> str:
        """Wait for `text`; return everything seen before it (and consume through it)."""
        end = time.time() + timeout
        while text not in self.seen:
            if time.time() > end or self.proc.poll() is not None and not select.select([self.master], [], [], 0.2)[0]:
                raise AssertionError(f"did not see {text!r}; got:\n{self.seen}")
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    self.seen += os.read(self.master, 4096).decode("utf-8", errors="replace").replace("\r\n", "\n")
                except OSError:
                    pass
        before, _, self.seen = self.seen.partition(text)
        return before

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode("utf-8"))


def test_scripted_conversation_through_a_pty(tmp_path):
    model_dir = tiny_model(tmp_path / "model", tokenizer_folder(tmp_path / "tok"))
    model, tok = load_for_inference(model_dir)
    s = GenSettings(max_new_tokens=6)

    def answer(messages: list[dict]) -> str:
        return generate_answers(model, [Prompt("x", messages=messages)], s, tokenizer=tok)[0]["answer"]

    a1 = answer([{"role": "user", "content": "你好"}])
    sys_msg = {"role": "system", "content": "你是一个助手。"}
    a2 = answer([sys_msg, {"role": "user", "content": "你好"}, {"role": "assistant", "content": a1},
                 {"role": "user", "content": "长城有多长？"}])
    a3 = answer([sys_msg, {"role": "user", "content": "再见"}])

    t = Terminal([sys.executable, "-m", "train.cli", "chat", str(model_dir), "--max-new-tokens", "6", "--device", "cpu"])
    try:
        t.expect("/help for commands")
        t.expect("你> ")
        t.send("你好")
        t.expect("模型> ")
        assert t.expect("你> ").strip() == a1.strip()  # the streamed answer, as `train generate` answers
        t.send("/system 你是一个助手。")
        t.expect("(system message: 你是一个助手。)")
        t.send("长城有多长？")
        t.expect("模型> ")
        assert t.expect("你> ").strip() == a2.strip()  # the history and the system message are in the context
        saved = tmp_path / "conv.jsonl"
        t.send(f"/save {saved}")
        t.expect("(saved 4 messages")
        rec = json.loads(saved.read_text(encoding="utf-8"))
        assert rec["system"] == "你是一个助手。"
        assert [m["content"] for m in rec["messages"]] == ["你好", a1, "长城有多长？", a2]
        t.send("/reset")
        t.expect("(conversation cleared)")
        t.send("再见")
        t.expect("模型> ")
        assert t.expect("你> ").strip() == a3.strip()  # history gone, system message kept
        t.send("/nonsense")
        t.expect("unknown command /nonsense")
        t.send("/quit")
        assert t.proc.wait(60) == 0
    finally:
        if t.proc.poll() is None:
            t.proc.kill()
        os.close(t.master)


def test_long_conversations_drop_the_oldest_exchange_and_say_so(tmp_path):
    import io

    import pytest

    from train.chat import Chat
    from zhdata.errors import InputError

    model, tok = load_for_inference(tiny_model(tmp_path / "model", tokenizer_folder(tmp_path / "tok")))
    out = io.StringIO()
    chat = Chat(model, tok, GenSettings(max_new_tokens=4), system="你是助手。", out=out)
    long = "长城很长。" * 30  # about 100 tokens a turn against the model's 512 positions
    for k in range(6):
        chat.turn(f"{k}: {long}")
    assert "the oldest exchange is left out" in out.getvalue()
    assert chat.messages[-2]["content"].startswith("5: ") and not chat.messages[0]["content"].startswith("0: ")
    assert len(chat._ids(chat.messages)[0]) + 4 <= 512 and chat.system == "你是助手。"
    with pytest.raises(InputError, match="too long for the model"):
        chat.turn("长城很长。" * 200)
    assert chat.messages[-2]["content"].startswith("5: ")  # the refused message is not kept
