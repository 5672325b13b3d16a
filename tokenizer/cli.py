"""`tokenizer` command line: one sub-command per module; each module registers its own parser."""

from __future__ import annotations

import sys

from zhdata.command import run

# Each module has `add_parser(subparsers)` that registers its sub-command(s) and sets `func(args) -> int`.
COMMANDS = ["tokenizer.train", "tokenizer.extend", "tokenizer.convert", "tokenizer.embeddings", "tokenizer.audit", "tokenizer.report"]
DESCRIPTION = ("Tokenizers for Chinese adaptation: train a Chinese SentencePiece model, extend a base vocabulary losslessly, convert to Hugging Face, initialise new embedding rows, audit, and report encoding efficiency.")


def main(argv: list[str] | None = None) -> int:
    return run("tokenizer", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
