"""`zhdata` command line. As in tokenizer/cli.py and train/cli.py, sub-commands are declared below, one
`Command(name, module, help)` each (add one line for a new sub-command); the module has `add_parser(sub)` and
`run(args) -> int` and is imported only when its sub-command runs (zhdata/command.py)."""

from __future__ import annotations

import sys

from zhdata.command import Command, program

COMMANDS = [
    Command("clean", "zhdata.clean", "normalise and quality-filter raw Chinese text into Parquet shards"),
    Command("filter", "zhdata.filter", "keep documents of a `clean --signals-only` output by an expression over the signals"),
    Command("quality", "zhdata.quality", "train the fastText quality model behind `zhdata clean --quality-model`"),
    Command("dedupe", "zhdata.dedupe", "remove exact and near-duplicate documents across a whole corpus"),
    Command("pack", "zhdata.pack.cli", "tokenise and pack text (pre-training) or conversations (SFT) into training blocks"),
    Command("instruct", "zhdata.instruct.cli", "instruction data (Alpaca, ShareGPT, OpenAI messages) into clean conversation Parquet"),
]
DESCRIPTION = ("Chinese data pipelines: clean and deduplicate corpora, normalise instruction data, pack training blocks. "
    "Every command writes manifest.json beside its output.")
main = program("zhdata", DESCRIPTION, COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
