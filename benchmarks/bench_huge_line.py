"""Peak memory of `zhdata clean` and `zhdata pack` on a JSONL file with one huge line (issue 11, bounded memory).

    python benchmarks/bench_huge_line.py --line-mb 200 --work /tmp/huge [--src OLD_CHECKOUT]

Writes 1,000 ordinary documents with one line of --line-mb MB in the middle, then runs clean and pack (pt, the
bundled Mixtral tokenizer) as separate processes under /usr/bin/time and prints each one's peak RSS and the
reasons it dropped. --src runs another checkout of the project (e.g. the code before --max-record-mb) instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_input(path: Path, line_mb: int) -> None:
    doc = "第{}段：这是一段普通的中文文本，用来测试读取器在遇到超长记录时的内存占用。今天天气很好，我们去公园散步。"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(1000):
            if i == 500:
                f.write('{"text": "' + "长" * ((line_mb << 20) // 3) + '"}\n')  # "长" is 3 bytes in UTF-8
            f.write(json.dumps({"text": doc.format(i)}, ensure_ascii=False) + "\n")


def peak(cmd: list[str], src: Path) -> tuple[int, float, int]:
    """(exit code, peak RSS in GB, seconds) of one command run with `src` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run(["/usr/bin/time", "-f", "%M %e", *cmd], env=env, capture_output=True, text=True)
    kb, secs = r.stderr.strip().splitlines()[-1].split()
    return r.returncode, int(kb) / 2**20, float(secs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--line-mb", type=int, default=200)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_huge_line"))
    ap.add_argument("--src", type=Path, default=ROOT, help="checkout to run (default: this one)")
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    data = a.work / "huge.jsonl"
    make_input(data, a.line_mb)
    sys.path.insert(0, str(ROOT))
    from tokenizer.convert import convert_sentencepiece

    tok = convert_sentencepiece(ROOT / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model", a.work / "tok")
    py = sys.executable
    runs = {
        "clean": [py, "-m", "zhdata.cli", "clean", str(data), "-o", str(a.work / "clean"), "--workers", "1",
                  "--no-progress", "--on-error", "skip"],
        "pack": [py, "-m", "zhdata.cli", "pack", str(data), "--tokenizer", str(tok), "-o", str(a.work / "pack"),
                 "--mode", "pt", "-q", "--on-error", "skip"],
    }
    print(f"input: {data.stat().st_size / 2**20:,.0f} MB, one line of {a.line_mb} MB; code: {a.src}")
    for name, cmd in runs.items():
        rc, gb, secs = peak(cmd, a.src)
        man = a.work / name / "manifest.json"
        dropped = json.loads(man.read_text())["counts"]["dropped"] if man.exists() else "(no manifest)"
        print(f"{name:<6} exit {rc}  peak RSS {gb:.2f} GB  {secs:.1f} s  dropped {dropped}")


if __name__ == "__main__":
    main()
