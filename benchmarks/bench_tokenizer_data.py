"""Split ../shared/corpus into the tokenizer benchmark's training text and held-out text.

Every 10th record of each Chinese file is held out (never trained on); of the rest, every file gets an
equal byte budget (small files give all they have, their unused budget goes to the others) so the
training text is about --train-mb MB and no one genre (the poetry files are 55% of the corpus) dominates. Writes DIR/train/*.jsonl,
DIR/heldout/{zh,zh_tech,en}/*.jsonl.

    .venv/bin/python benchmarks/bench_tokenizer_data.py --shared ../shared/corpus --train-mb 40 -o /tmp/tokbench
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zhdata.readers import expand_inputs, iter_records

TECH = ("python_docs", "react_docs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="../shared/corpus")
    ap.add_argument("--train-mb", type=float, default=40)
    ap.add_argument("--heldout-chars", type=int, default=400_000, help="held-out characters per file at most")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    zh = expand_inputs([Path(a.shared) / "zh"])
    sizes = {}
    for f in zh:
        sizes[f] = sum(len(json.dumps(r, ensure_ascii=False).encode()) for _, r in iter_records(f))
    budgets, left, files = {}, a.train_mb * 1e6, sorted(zh, key=lambda f: sizes[f])
    for k, f in enumerate(files):
        budgets[f] = min(0.9 * sizes[f], left / (len(files) - k))
        left -= budgets[f]
    for f in zh:
        stem = f.name.split(".")[0]
        kind = "zh_tech" if stem.startswith(TECH) else "zh"
        (out / "train").mkdir(parents=True, exist_ok=True)
        (out / "heldout" / kind).mkdir(parents=True, exist_ok=True)
        budget, held = budgets[f], 0
        with open(out / "train" / f"{stem}.jsonl", "w", encoding="utf-8") as tr, \
                open(out / "heldout" / kind / f"{stem}.jsonl", "w", encoding="utf-8") as ho:
            for k, (_, r) in enumerate(iter_records(f)):
                line = json.dumps(r, ensure_ascii=False) + "\n"
                if k % 10 == 9:
                    if held < a.heldout_chars:
                        ho.write(line)
                        held += len(r["text"])
                elif budget > 0:
                    tr.write(line)
                    budget -= len(line.encode())
    (out / "heldout" / "en").mkdir(parents=True, exist_ok=True)
    for f in expand_inputs([Path(a.shared) / "en"]):
        (out / "heldout" / "en" / f.name).write_bytes(f.read_bytes())
    total = sum(p.stat().st_size for p in (out / "train").glob("*.jsonl"))
    print(f"train: {total / 1e6:.1f} MB in {out / 'train'}; held out: {out / 'heldout'}")


if __name__ == "__main__":
    main()
