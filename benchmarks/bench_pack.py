"""Benchmark `zhdata pack`: pre-training throughput per core, bytes on disk per billion tokens, memory while
reading random blocks, and SFT packing efficiency (best-fit-decreasing vs one example per block).

    RAYON_RS_NUM_CPUS=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pack.py \
        --corpus ../shared/corpus/zh --instruct ../shared/instruct [--ext-tokenizer DIR] --work /tmp/bench_pack

RAYON_RS_NUM_CPUS caps the tokenizer's Rust thread pool, so tokens/s is per core when it is 1.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenizer.convert import convert_sentencepiece  # noqa: E402
from zhdata.pack.packer import PackOptions, pack  # noqa: E402

READER = r"""
import json, sys, time, numpy as np
from zhdata.pack import PackedDataset
def status():
    d = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    return {k: int(d[k].split()[0]) // 1024 for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
ds = PackedDataset(sys.argv[1], "train")
before = status()
rng = np.random.default_rng(0)
idx = rng.integers(0, len(ds), int(sys.argv[2]))
t = time.perf_counter()
n = sum(len(ds[int(i)]["input_ids"]) for i in idx)
dt = time.perf_counter() - t
print(json.dumps({"blocks": len(ds), "reads": len(idx), "tokens_read": n, "us_per_block": round(dt / len(idx) * 1e6, 1),
                  "mib_before": before, "mib_after": status()}))
"""


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_pt(corpus: Path, tok: Path, out: Path, reads: int) -> dict:
    t, c = time.perf_counter(), cpu_seconds()
    m = pack([corpus], tok, out, PackOptions(mode="pt", overwrite=True, progress=False))
    wall, cpu = time.perf_counter() - t, cpu_seconds() - c
    p = m.extra["pack"]
    disk = sum(f.stat().st_size for f in out.glob("*.bin"))
    reader = subprocess.run([sys.executable, "-c", READER, str(out), str(reads)], capture_output=True, text=True, check=True, cwd=ROOT)
    return {"tokenizer": str(tok), "vocab_size": m.extra["tokenizer"]["vocab_size"], "documents": m.counts.records_out,
            "chars": p["chars"], "tokens": p["tokens"], "tokens_per_char": p["tokens_per_char"], "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2), "tokens_per_s": round(p["tokens"] / wall), "tokens_per_cpu_s": round(p["tokens"] / cpu),
            "disk_bytes": disk, "gb_per_billion_tokens": round(disk / p["tokens"], 3),
            "reader": json.loads(reader.stdout)}


def bench_sft(conv: Path, tok: Path, work: Path) -> list[dict]:
    rows = []
    for block in (1024, 4096):
        for packing in ("bfd", "none"):
            m = pack([conv], tok, work / f"sft-{block}-{packing}",
                     PackOptions(mode="sft", block_size=block, packing=packing, overwrite=True, progress=False))
            p = m.extra["pack"]
            rows.append({"block_size": block, "packing": packing, "conversations": m.counts.records_out,
                         "tokens": p["tokens"], "blocks": p["blocks"], "padding_tokens": p["padding_tokens"],
                         "efficiency": p["efficiency"], "truncated": p["truncated"], "dropped": dict(m.counts.dropped),
                         "elapsed_s": m.to_dict()["elapsed_s"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "zh")
    ap.add_argument("--instruct", type=Path, default=ROOT.parent / "shared" / "instruct")
    ap.add_argument("--spm", type=Path, default=ROOT / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model")
    ap.add_argument("--ext-tokenizer", type=Path, help="an extended tokenizer folder (from `tokenizer extend`) to compare")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_pack"))
    ap.add_argument("--reads", type=int, default=20_000, help="random blocks to read")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = convert_sentencepiece(args.spm, args.work / "tok-base")
    result = {"pt": [bench_pt(args.corpus, base, args.work / "pt-base", args.reads)]}
    if args.ext_tokenizer:
        result["pt"].append(bench_pt(args.corpus, args.ext_tokenizer, args.work / "pt-ext", args.reads))
    conv = args.work / "conversations"
    subprocess.run([str(Path(sys.executable).parent / "zhdata"), "instruct", str(args.instruct), "-o", str(conv)],
                   check=True, capture_output=True)
    result["sft"] = bench_sft(conv, base, args.work)
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
