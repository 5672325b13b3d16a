"""`train` command line: one sub-command per module; each module registers its own parser."""

from __future__ import annotations

import sys

from zhdata.command import run

# Each module has `add_parser(subparsers)` that registers its sub-command(s) and sets `func(args) -> int`.
COMMANDS = ["train.evaluate", "train.run", "train.merge", "train.experts", "train.compare", "train.quickstart",
            "train.generate"]
DESCRIPTION = ("QLoRA training of Mixtral-architecture models (4-bit experts included) for the original or the extended vocabulary, evaluation, expert analysis and the vocabulary comparison.")


def main(argv: list[str] | None = None) -> int:
    return run("train", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
