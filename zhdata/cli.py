"""`zhdata` command line: one sub-command per pipeline stage; each module registers its own parser."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from .errors import InputError

# Each module has `add_parser(subparsers)` that registers its sub-command and sets `func(args) -> int`.
COMMANDS = ["zhdata.clean", "zhdata.dedupe", "zhdata.pack.cli", "zhdata.instruct.cli"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zhdata",
        description="Chinese data pipelines: clean and deduplicate corpora, normalise instruction data, pack training blocks. "
        "Every command writes manifest.json beside its output.",
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
        print(f"zhdata {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
