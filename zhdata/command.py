"""The one command-line runner behind `zhdata`, `tokenizer` and `train`: sub-commands come from modules
that each register theirs with `add_parser(subparsers)` and set `func(args) -> int`."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from .errors import InputError


def build_parser(prog: str, description: str, modules: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules:
        import_module(name).add_parser(sub)
    return parser


def run(prog: str, description: str, modules: list[str], argv: list[str] | None = None) -> int:
    """Parse `argv`, run the sub-command; bad input is one clear line on stderr and exit code 2, not a traceback."""
    args = build_parser(prog, description, modules).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"{prog} {args.command}: error: {e}", file=sys.stderr)
        return 2
