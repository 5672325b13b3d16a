"""`train` command line: its sub-commands, declared as zhdata/cli.py explains."""

from __future__ import annotations

import sys

from zhdata.command import Command, program

COMMANDS = [
    Command("eval", "train.evaluate", "evaluate a model: bits per character, perplexity vs context, C-Eval/CMMLU/MMLU"),
    Command("run", "train.run", "QLoRA training, experts included, for --vocab orig|ext (pt or sft)"),
    Command("merge", "train.merge", "merge a `train run` folder into a plain Hugging Face model"),
    Command("experts", "train.experts", "expert importance (disable one expert at a time) and routing statistics"),
    Command("compare", "train.compare", "report: original vs extended vocabulary (Markdown + self-contained HTML)"),
    Command("quickstart", "train.quickstart", "the whole chain on the built-in sample: clean ... train both vocabularies ... report"),
    Command("generate", "train.generate", "answer a file of prompts with a trained model (batched, greedy or sampled)"),
    Command("chat", "train.chat", "interactive chat with a trained model in the terminal (streamed answers)"),
    Command("arena", "train.arena", "local chatbot arena: anonymous pair-wise votes on answers, and its report"),
]
DESCRIPTION = ("QLoRA training of Mixtral-architecture models (4-bit experts included) for the original or the extended vocabulary, evaluation, expert analysis and the vocabulary comparison.")
main = program("train", DESCRIPTION, COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
