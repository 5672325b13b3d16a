"""The one command-line runner behind `zhdata`, `tokenizer` and `train`.

Each program declares its sub-commands as a list of `Command(name, module, help)`. The module of a
sub-command has two functions: `add_parser(sub)` registers the sub-command `name` (its arguments, description,
examples) and `run(args) -> int` carries it out. Only the module of the sub-command being run is imported, so
`prog --help` lists the sub-commands from their declarations and `prog X --help` loads X alone (no torch for a
help text)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from importlib import import_module
from typing import Callable, Sequence

from . import fs
from .errors import InputError


@dataclass(frozen=True)
class Command:
    name: str    # the sub-command as typed: `train NAME ...`
    module: str  # importable module with `add_parser(sub)` and `run(args) -> int`
    help: str    # its line in `prog --help`


def build_parser(prog: str, description: str, commands: Sequence[Command],
                 load: str | None = None) -> argparse.ArgumentParser:
    """The program's parser; only the sub-command `load` gets its real arguments (its module is imported),
    the others are listed by name and help line."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in commands:
        if c.name == load:
            import_module(c.module).add_parser(sub)
        else:
            sub.add_parser(c.name, help=c.help, add_help=False)
    return parser


def run(prog: str, description: str, commands: Sequence[Command], argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the sub-command; bad input is one clear line on stderr and exit code 2, not a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    by_name = {c.name: c for c in commands}
    # the program itself takes no option but --help, so the sub-command is the first word or there is none to load
    chosen = by_name.get(argv[0]) if argv else None
    args = build_parser(prog, description, commands, chosen.name if chosen else None).parse_args(argv)
    try:
        return int(import_module(chosen.module).run(args) or 0)
    except InputError as e:
        print(f"{prog} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # an object store this machine cannot reach: the user's setup, not a bug
        values = [x for v in vars(args).values() for x in (v if isinstance(v, list) else [v])]
        uris = [x for x in values if isinstance(x, str) and fs.is_remote(x)]
        where = " or ".join(dict.fromkeys(uris)) or "(object store)"  # which of them refused, the client rarely says
        if (err := fs.unreachable(e, where)) is None:
            raise
        print(f"{prog} {args.command}: error: {err}", file=sys.stderr)
        return 2


def program(prog: str, description: str, commands: Sequence[Command]) -> Callable[..., int]:
    """The `main(argv=None) -> int` of a program: its console-script entry point."""
    def main(argv: Sequence[str] | None = None) -> int:
        return run(prog, description, commands, argv)
    return main
