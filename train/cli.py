"""`train` command line: one sub-command per module; each module registers its own parser."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from zhdata.errors import InputError

# Each module has `add_parser(subparsers)` that registers its sub-command(s) and sets `func(args) -> int`.
COMMANDS: list[str] = ["train.evaluate", "train.run", "train.merge", "train.experts", "train.compare", "train.quickstart"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train",
        description="QLoRA training of Mixtral-architecture models (4-bit experts included) for the original or the extended vocabulary, evaluation, expert analysis and the vocabulary comparison.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"train {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
