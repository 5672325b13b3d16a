"""`tokenizer` command line: its sub-commands, declared as zhdata/cli.py explains."""

from __future__ import annotations

import sys

from zhdata.command import Command, program

COMMANDS = [
    Command("train", "tokenizer.train_spm", "train a SentencePiece BPE model of Chinese text"),
    Command("extend", "tokenizer.extend", "add exactly N Chinese pieces to a base vocabulary (ids kept, all reachable, non-CJK unchanged)"),
    Command("convert", "tokenizer.convert", "SentencePiece model → Hugging Face tokenizer folder (identical ids)"),
    Command("init-embeddings", "tokenizer.embeddings", "resize a model's embeddings to an extended tokenizer and initialise the new rows"),
    Command("audit", "tokenizer.audit", "check a tokenizer: unreachable pieces, special tokens, byte fallback, parity, model size"),
    Command("report", "tokenizer.report", "encoding efficiency of tokenizers per corpus (Markdown, JSON, PNG)"),
]
DESCRIPTION = ("Tokenizers for Chinese adaptation: train a Chinese SentencePiece model, extend a base vocabulary losslessly, convert to Hugging Face, initialise new embedding rows, audit, and report encoding efficiency.")
main = program("tokenizer", DESCRIPTION, COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
