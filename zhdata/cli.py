"""`zhdata` command line: one sub-command per pipeline stage; each module registers its own parser."""

from __future__ import annotations

import sys

from zhdata.command import run

# Each module has `add_parser(subparsers)` that registers its sub-command(s) and sets `func(args) -> int`.
COMMANDS = ["zhdata.clean", "zhdata.dedupe", "zhdata.pack.cli", "zhdata.instruct.cli"]
DESCRIPTION = ("Chinese data pipelines: clean and deduplicate corpora, normalise instruction data, pack training blocks. "
    "Every command writes manifest.json beside its output.")


def main(argv: list[str] | None = None) -> int:
    return run("zhdata", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
