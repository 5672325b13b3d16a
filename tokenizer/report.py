"""`tokenizer report`: encoding efficiency of tokenizers on corpora, as Markdown, JSON and a PNG chart.

Per corpus and tokenizer: tokens per character, characters and bytes per token, byte-fallback and unknown
shares, vocabulary utilisation (and of pieces past the first tokenizer's vocabulary), sequence lengths,
tokens relative to the first tokenizer, and what that means for training on a corpus of a given size.
Counting uses the SentencePiece encoder when the tokenizer has one (ids equal the HF tokenizer's).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from zhdata.errors import InputError
from zhdata.lock import locked_output
from zhdata.manifest import Manifest, cli_params, file_sha256
from zhdata.readers import add_read_options, read_options

from .corpus import sample_texts
from .spm import BYTE, UNKNOWN, load_proto, model_path, processor


@dataclass
class Encoder:
    """A named tokenizer: encodes a batch of texts to ids."""

    name: str
    path: Path
    vocab_size: int
    byte_ids: np.ndarray
    unk_ids: np.ndarray
    sp: object

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)


def load_encoder(spec: str) -> Encoder:
    """`NAME=PATH` or `PATH` (named after the file or folder); PATH is a .model file or a tokenizer folder."""
    name, _, path = spec.rpartition("=")
    p = Path(path)
    name = name or (p.stem if p.is_file() else p.name)
    proto = load_proto(p)
    types = np.array([q.type for q in proto.pieces])
    return Encoder(name, model_path(p), len(proto.pieces), np.flatnonzero(types == BYTE), np.flatnonzero(types == UNKNOWN),
                   processor(proto))


def measure(enc: Encoder, texts: list[str], base_vocab: int) -> dict:
    ids = enc.encode(texts)
    lens = np.array([len(x) for x in ids])
    flat = np.fromiter((i for x in ids for i in x), dtype=np.int64, count=int(lens.sum()))
    chars = sum(map(len, texts))
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    tokens = int(flat.size)
    used = np.unique(flat)
    extra = used[used >= base_vocab]
    return {
        "texts": len(texts), "chars": chars, "bytes": nbytes, "tokens": tokens,
        "tokens_per_char": tokens / chars, "chars_per_token": chars / tokens, "bytes_per_token": nbytes / tokens,
        "byte_fallback_share": float(np.isin(flat, enc.byte_ids).mean()) if tokens else 0.0,
        "unk_share": float(np.isin(flat, enc.unk_ids).mean()) if tokens else 0.0,
        "vocab_used": int(used.size), "vocab_utilisation": used.size / enc.vocab_size,
        "added_used": int(extra.size), "added_utilisation": extra.size / (enc.vocab_size - base_vocab) if enc.vocab_size > base_vocab else None,
        "seq_len_mean": float(lens.mean()), "seq_len_p50": float(np.percentile(lens, 50)),
        "seq_len_p95": float(np.percentile(lens, 95)), "seq_len_max": int(lens.max()),
    }


def plan(row: dict, size_gb: float, block: int, batch: int, throughput: float) -> dict:
    """Training tokens, optimiser steps and hours for `size_gb` GB of text like this corpus."""
    tokens = size_gb * 1e9 / row["bytes_per_token"]
    return {"tokens": tokens, "steps": tokens / (block * batch), "hours": tokens / throughput / 3600}


def render_markdown(result: dict) -> str:
    p = result["plan"]
    lines = ["# Tokenizer encoding efficiency", "",
             f"Text per corpus: up to {result['max_chars']:,} characters. Ratio = tokens of `{result['reference']}` / tokens of this tokenizer "
             "(higher = fewer tokens). Plan: {size_gb:g} GB of such text, blocks of {block_size} tokens, {global_batch} sequences per step, "
             "{throughput:,.0f} tokens/s.".format(**p), ""]
    head = ("| tokenizer | vocab | tokens | tokens/char | chars/token | bytes/token | ratio | byte fallback | vocab used | added used "
            "| seq len mean / p95 | plan tokens | plan steps | plan hours |")
    for corpus, rows in result["corpora"].items():
        lines += [f"## {corpus}", "", head, "|" + "---|" * 14]
        for name, r in rows.items():
            added = "–" if r["added_utilisation"] is None else f"{r['added_used']:,} ({r['added_utilisation']:.1%})"
            lines.append(
                f"| {name} | {result['tokenizers'][name]['vocab_size']:,} | {r['tokens']:,} | {r['tokens_per_char']:.3f} | "
                f"{r['chars_per_token']:.3f} | {r['bytes_per_token']:.2f} | {r['ratio_vs_reference']:.3f}x | "
                f"{r['byte_fallback_share']:.2%} | {r['vocab_used']:,} ({r['vocab_utilisation']:.1%}) | {added} | "
                f"{r['seq_len_mean']:.0f} / {r['seq_len_p95']:.0f} | {r['plan']['tokens'] / 1e9:.2f}B | {r['plan']['steps']:,.0f} | "
                f"{r['plan']['hours']:,.1f} |")
        lines.append("")
    return "\n".join(lines)


def chart(result: dict, path: Path) -> None:
    """Characters per token, a bar per tokenizer and corpus. Drawn on an Agg canvas without pyplot (as
    train/plots.py), so the process keeps its matplotlib backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    corpora = list(result["corpora"])
    names = list(result["tokenizers"])
    width = 0.8 / len(names)
    fig = Figure(figsize=(max(6, 1.6 * len(corpora) * len(names) / 2), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(len(corpora))
    for k, name in enumerate(names):
        vals = [result["corpora"][c][name]["chars_per_token"] for c in corpora]
        bars = ax.bar(x + k * width - 0.4 + width / 2, vals, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, corpora)
    ax.set_ylabel("characters per token (higher = fewer tokens)")
    ax.set_title("Encoding efficiency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


@locked_output("out")
def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    m = Manifest("tokenizer report", cli_params(args))
    encs = [load_encoder(s) for s in args.tokenizer]
    if len({e.name for e in encs}) != len(encs):
        raise InputError("--tokenizer", None, "two tokenizers have the same name", "name them: --tokenizer NAME=PATH")
    m.add_inputs([e.path for e in encs])
    corpora = {}
    for spec in args.corpus:
        name, sep, path = spec.partition("=")
        if not sep:
            raise InputError(spec, None, "a corpus is given as NAME=PATH", "e.g. --corpus zh=data/zh_heldout")
        corpora[name] = [Path(x) for x in path.split(",")]
    ref = encs[0]
    result = {"reference": ref.name, "max_chars": args.max_chars,
              "tokenizers": {e.name: {"path": str(e.path), "vocab_size": e.vocab_size, "sha256": file_sha256(e.path)} for e in encs},
              "plan": {"size_gb": args.plan_gb, "block_size": args.block_size, "global_batch": args.global_batch,
                       "throughput": args.throughput},
              "corpora": {}}
    for cname, paths in corpora.items():
        texts = sample_texts(paths, args.max_chars, args.text_field, read_options(args))
        if not any(texts):
            raise InputError(spec, None, "this corpus holds no text", "check the path and --text-field")
        m.source(cname).records_in = m.source(cname).records_out = len(texts)
        m.counts.records_in += len(texts)
        m.counts.records_out += len(texts)
        rows = {}
        for e in tqdm(encs, desc=f"encoding {cname}", unit="tokenizer"):
            rows[e.name] = measure(e, texts, ref.vocab_size)
        for e in encs:
            r = rows[e.name]
            r["ratio_vs_reference"] = rows[ref.name]["tokens"] / r["tokens"]
            r["plan"] = plan(r, args.plan_gb, args.block_size, args.global_batch, args.throughput)
        result["corpora"][cname] = rows
    (out / "report.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    md = render_markdown(result)
    (out / "report.md").write_text(md + "\n", encoding="utf-8")
    chart(result, out / "report.png")
    m.extra["report"] = {"files": ["report.md", "report.json", "report.png"]}
    m.write(out)
    print(md)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        description="Encode corpora with several tokenizers and report tokens per character, characters and bytes per "
        "token, byte-fallback share, vocabulary utilisation and sequence lengths, relative to the first tokenizer, and "
        "what it means for training on --plan-gb GB of such text (tokens, steps, hours at --throughput).",
        epilog="example: tokenizer report --tokenizer base=tok/mixtral --tokenizer ext=tok/ext20k "
        "--corpus zh=heldout/zh --corpus en=heldout/en -o reports/tok",
    )
    p.add_argument("--tokenizer", action="append", required=True, metavar="[NAME=]PATH",
                   help="tokenizer folder or .model file; repeat; the first is the reference")
    p.add_argument("--corpus", action="append", required=True, metavar="NAME=PATH[,PATH...]", help="corpus to measure; repeat")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--max-chars", type=int, default=3_000_000, help="characters per corpus, shared evenly between its files (default 3M)")
    p.add_argument("--text-field", default="text", help="field holding the text (default text)")
    add_read_options(p)
    p.add_argument("--plan-gb", type=float, default=20.0, help="size of the training corpus to plan for, in GB of text (default 20)")
    p.add_argument("--block-size", type=int, default=1024, help="tokens per training sequence (default 1024)")
    p.add_argument("--global-batch", type=int, default=512, help="sequences per optimiser step (default 512)")
    p.add_argument("--throughput", type=float, default=50_000, help="training tokens per second of the cluster (default 50,000)")
