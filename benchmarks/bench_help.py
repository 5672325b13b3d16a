"""Time `prog --help` and `prog X --help` for every sub-command of zhdata, tokenizer and train.

Each help runs in a fresh interpreter `--repeat` times; the table has the fastest wall time (the machine's
other load only ever adds) and the heavy libraries the help loaded.

    python benchmarks/bench_help.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from importlib import import_module
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "matplotlib", "polars", "sentencepiece")
PROBE = """
import contextlib, io, sys
from {prog}.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main({words!r} + ["--help"])
    except SystemExit:
        pass
print(" ".join(m for m in {heavy!r} if m in sys.modules) or "-")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print("| command | fastest of %d (s) | heavy libraries loaded |\n|---|---:|---|" % args.repeat)
    for prog in ("zhdata", "tokenizer", "train"):
        for words in [[]] + [[c.name] for c in import_module(f"{prog}.cli").COMMANDS]:
            best, loaded = float("inf"), ""
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-c", PROBE.format(prog=prog, words=words, heavy=HEAVY)],
                                   capture_output=True, text=True, env=env, cwd=ROOT)
                best = min(best, time.perf_counter() - t0)
                loaded = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else f"exit {r.returncode}"
            print(f"| `{' '.join([prog, *words, '--help'])}` | {best:.2f} | {loaded} |", flush=True)


if __name__ == "__main__":
    main()
