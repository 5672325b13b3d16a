"""Tokenizer benchmarks: time of `tokenizer extend`, and encode throughput per core (SentencePiece and HF).

    # extend time on a corpus folder (runs the real CLI; reads its manifest for the breakdown)
    .venv/bin/python benchmarks/bench_tokenizer.py extend --base tokenizer/data/mixtral-8x7b-v0.1.model \
        --corpus /tmp/tokbench/train --add 20000 -o /tmp/tokbench/bench_ext40
    # encode throughput, one core, of each tokenizer on each corpus
    .venv/bin/python benchmarks/bench_tokenizer.py encode --tokenizer mixtral=/tmp/tk/mixtral \
        --tokenizer ext20k=/tmp/tokbench/ext20k --corpus zh=/tmp/tokbench/heldout/zh --corpus en=/tmp/tokbench/heldout/en

    # the issue's targets for an extension, on held-out Chinese and on English
    .venv/bin/python benchmarks/bench_tokenizer.py targets --base tokenizer/data/mixtral-8x7b-v0.1.model \
        --ext /tmp/tokbench/ext20k --score0 /tmp/tokbench/ext20k-score0 --zh /tmp/tokbench/heldout/zh \
        --zh-tech /tmp/tokbench/heldout/zh_tech --en ../shared/corpus/en

Each prints a Markdown table and writes JSON (--json).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # HF tokenizers: one core, as SentencePiece below
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import sentencepiece as spm  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from launch import figures, launched  # noqa: E402
from tokenizer.corpus import iter_texts, sample_texts  # noqa: E402
from tokenizer.parity import compare  # noqa: E402
from tokenizer.reach import unreachable  # noqa: E402
from tokenizer.spm import load_proto  # noqa: E402
from zhdata.manifest import read_manifest  # noqa: E402
from zhdata.readers import expand_inputs, open_binary  # noqa: E402

CLI = str(Path(sys.executable).with_name("tokenizer"))


def bench_extend(a: argparse.Namespace) -> dict:
    size = 0
    for f in expand_inputs(a.corpus):  # uncompressed bytes
        with open_binary(f) as fh:
            while block := fh.read(1 << 24):
                size += len(block)
    cmd = [CLI, "extend", "--base", a.base, "--corpus", *a.corpus, "--add", str(a.add), "-o", a.out]
    fd, fig = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    t0 = time.perf_counter()
    # through launch.py: Linux carries ru_maxrss over fork and exec, so a child started here would report this
    # script's peak if that were larger than its own
    subprocess.run(launched(cmd, fig), check=True, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    peak_kib = figures(fig)["peak_rss_kib"]
    os.unlink(fig)
    m = read_manifest(a.out)
    res = {"corpus_bytes": size, "corpus_chars": m["corpus"]["chars"], "add": a.add, "wall_s": round(wall, 1),
           "train_s": m["source_model"]["seconds"], "select_write_verify_s": m["extension"]["seconds"],
           "max_rss_mb": round(peak_kib / 1024), "cores": os.cpu_count(),
           "checks": {k: v for k, v in m["checks"].items() if k != "parity_examples"}}
    print(f"| corpus | chars | --add | wall | of which reading + SentencePiece training | select + write + verify | peak RSS |\n|---|---|---|---|---|---|---|\n"
          f"| {size / 1e6:.0f} MB | {res['corpus_chars']:,} | {a.add:,} | {wall:.0f} s | {res['train_s']:.0f} s | "
          f"{res['select_write_verify_s']:.0f} s | {res['max_rss_mb']:,} MB |")
    return res


def _rate(fn, texts: list[str], repeat: int) -> tuple[int, float]:
    best = float("inf")
    tokens = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        tokens = sum(map(len, fn(texts)))
        best = min(best, time.perf_counter() - t0)
    return tokens, best


def bench_encode(a: argparse.Namespace) -> dict:
    res: dict = {}
    rows = ["| tokenizer | corpus | chars | tokens | SentencePiece tokens/s | HF tokenizers tokens/s |", "|---|---|---|---|---|---|"]
    for cspec in a.corpus:
        cname, _, cpath = cspec.partition("=")
        texts = sample_texts([cpath], a.max_chars)
        for tspec in a.tokenizer:
            tname, _, tpath = tspec.partition("=")
            sp = spm.SentencePieceProcessor(model_file=str(Path(tpath) / "tokenizer.model"))
            hf = Tokenizer.from_file(str(Path(tpath) / "tokenizer.json"))
            hf.encode_special_tokens = True
            n_sp, t_sp = _rate(lambda xs: sp.encode(xs, num_threads=1), texts, a.repeat)
            n_hf, t_hf = _rate(lambda xs: [e.ids for e in hf.encode_batch(xs, add_special_tokens=False)], texts, a.repeat)
            assert n_sp == n_hf, f"{tname}/{cname}: token counts differ ({n_sp} vs {n_hf})"
            res[f"{tname}/{cname}"] = {"chars": sum(map(len, texts)), "tokens": n_sp,
                                       "sp_tokens_per_s": round(n_sp / t_sp), "hf_tokens_per_s": round(n_hf / t_hf)}
            r = res[f"{tname}/{cname}"]
            rows.append(f"| {tname} | {cname} | {r['chars']:,} | {n_sp:,} | {r['sp_tokens_per_s']:,} | {r['hf_tokens_per_s']:,} |")
    print("\n".join(rows))
    return res


def bench_targets(a: argparse.Namespace) -> dict:
    """Every text of each corpus, whole: token counts, English id identity, round trip, reachability, parity."""
    sp = {k: spm.SentencePieceProcessor(model_file=str(Path(p) / "tokenizer.model") if Path(p).is_dir() else p)
          for k, p in (("base", a.base), ("ext", a.ext), ("score0", a.score0))}
    res: dict = {}
    for name, path in (("zh", a.zh), ("zh_tech", a.zh_tech)):
        texts = list(iter_texts([path]))
        n = {k: sum(map(len, s.encode(texts))) for k, s in sp.items()}
        ext_ids = sp["ext"].encode(texts)
        res[name] = {"texts": len(texts), "chars": sum(map(len, texts)), "tokens": n,
                     "x_fewer_than_base": n["base"] / n["ext"], "ext_minus_score0": n["ext"] - n["score0"],
                     "round_trip_ok": sum(sp["ext"].decode(x) == t for x, t in zip(ext_ids, texts)),
                     "hf_parity_mismatched": compare(a.ext, texts)["mismatched"]}
    en = list(iter_texts([a.en]))
    en_lines = [x for t in en for x in t.split("\n") if x]
    for name, texts in (("en_docs", en), ("en_lines", en_lines)):
        same = sum(x == y for x, y in zip(sp["base"].encode(texts), sp["ext"].encode(texts)))
        res[name] = {"texts": len(texts), "identical_ids": same, "share_identical": same / len(texts)}
    proto = load_proto(a.ext)
    res["unreachable_new"] = len(unreachable(proto, list(range(len(load_proto(a.base).pieces), len(proto.pieces)))))
    rows = ["| corpus | texts | base tokens | ext tokens | score-0 tokens | base/ext | ext - score0 | round trip | SP/HF mismatches |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in ("zh", "zh_tech"):
        r = res[name]
        rows.append(f"| {name} | {r['texts']:,} | {r['tokens']['base']:,} | {r['tokens']['ext']:,} | {r['tokens']['score0']:,} | "
                    f"{r['x_fewer_than_base']:.3f}x | {r['ext_minus_score0']:+,} | {r['round_trip_ok']}/{r['texts']} | {r['hf_parity_mismatched']} |")
    print("\n".join(rows))
    for name in ("en_docs", "en_lines"):
        print(f"{name}: {res[name]['identical_ids']}/{res[name]['texts']} identical ids")
    print(f"unreachable new pieces: {res['unreachable_new']}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    e = sub.add_parser("extend")
    e.add_argument("--base", required=True)
    e.add_argument("--corpus", nargs="+", required=True)
    e.add_argument("--add", type=int, default=20000)
    e.add_argument("-o", "--out", required=True)
    c = sub.add_parser("encode")
    c.add_argument("--tokenizer", action="append", required=True, help="NAME=FOLDER (with tokenizer.model and tokenizer.json)")
    c.add_argument("--corpus", action="append", required=True, help="NAME=PATH")
    c.add_argument("--max-chars", type=int, default=2_000_000)
    c.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    t = sub.add_parser("targets")
    for name in ("--base", "--ext", "--score0", "--zh", "--zh-tech", "--en"):
        t.add_argument(name, required=True)
    for p in (e, c, t):
        p.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    res = {"extend": bench_extend, "encode": bench_encode, "targets": bench_targets}[a.what](a)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
