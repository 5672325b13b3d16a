"""`train eval MODEL --task bpc|ctx-ppl|mc`: bits per character, perplexity against context length, multiple choice.

bpc: the summed NLL (in bits) of every token that encodes each text (first token predicted from BOS;
dummy-prefix and byte-fallback pieces included), divided by the text's characters (and UTF-8 bytes).
It does not depend on the vocabulary, so the original and extended vocabularies compare fairly;
per-token perplexity is reported too, but it is NOT comparable across vocabularies.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

from zhdata.errors import ErrorPolicy, InputError
from zhdata.lock import locked_output
from zhdata.manifest import Manifest, cli_params, file_sha256
from zhdata.readers import add_read_options, read_options

from . import mc
from .evaldata import parse_sets, read_texts
from .plots import lines
from .scoring import LN2, conditioning_prefix, encode_text, load_model, model_window, token_nll, tokenizer_sha256

TASKS = ("bpc", "ctx-ppl", "mc")
PPL_NOTE = ("bpc and bits per byte do not depend on the vocabulary and compare fairly across tokenizers; "
            "per-token perplexity (token_ppl) does NOT: a vocabulary with longer pieces has fewer, harder tokens.")


def bpc_of_texts(model: Any, tok: Any, texts: list[str], window: int, stride: int | None = None,
                 desc: str = "bpc") -> dict[str, Any]:
    """Sums and ratios for one set of texts: bits, chars, bytes, tokens, bpc, bits/byte, token ppl."""
    prefix = conditioning_prefix(tok)
    bits = 0.0
    chars = nbytes = tokens = not_lossless = 0
    for text in tqdm(texts, desc=desc, unit="doc", leave=False):
        ids = encode_text(tok, text)
        if tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) != text:
            not_lossless += 1
        nll = token_nll(model, prefix + ids, window, stride)
        bits += float(nll.sum()) / LN2
        tokens += nll.numel()
        chars += len(text)
        nbytes += len(text.encode("utf-8"))
    return {
        "docs": len(texts), "chars": chars, "bytes": nbytes, "tokens": tokens, "bits": bits,
        "bpc": bits / chars, "bits_per_byte": bits / nbytes,
        "token_ppl": math.exp(bits * LN2 / tokens) if tokens else float("nan"),
        "tokens_per_char": tokens / chars, "docs_not_round_trip": not_lossless,
    }


def ctx_ppl_of_texts(model: Any, tok: Any, texts: list[str], lengths: list[int]) -> list[dict[str, Any]]:
    """Per document and context length: perplexity and bpc of the same tokens, sliding window with stride L/2."""
    prefix = conditioning_prefix(tok)
    rows = []
    for d, text in enumerate(texts):
        ids = prefix + encode_text(tok, text)
        for L in tqdm([x for x in lengths if x < len(ids)], desc=f"ctx-ppl doc {d + 1}/{len(texts)}", leave=False):
            nll = token_nll(model, ids, L, max(1, L // 2))
            rows.append({"doc": d, "context": L, "tokens": nll.numel(), "chars": len(text),
                         "ppl": math.exp(float(nll.mean())), "bpc": float(nll.sum()) / LN2 / len(text)})
    return rows


def _bpc_markdown(res: dict[str, Any]) -> str:
    out = [f"# Bits per character: `{res['model']}`", "",
           "| set | docs | chars | tokens | tokens/char | bpc | bits/byte | token ppl |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in res["sets"].items():
        out.append(f"| {name} | {s['docs']} | {s['chars']} | {s['tokens']} | {s['tokens_per_char']:.3f} | "
                   f"{s['bpc']:.4f} | {s['bits_per_byte']:.4f} | {s['token_ppl']:.2f} |")
    out += ["", f"Note: {PPL_NOTE}", ""]
    return "\n".join(out)


def _write(out: Path, stem: str, res: dict[str, Any], md: str) -> None:
    (out / f"{stem}.json").write_text(json.dumps(res, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / f"{stem}.md").write_text(md, encoding="utf-8")


def _read_sets(args: argparse.Namespace, man: Manifest, task: str, max_docs: int | None,
               max_chars: int | None) -> dict[str, list[str]]:
    if not args.data:
        raise InputError("--data", None, f"--task {task} needs held-out text", "pass --data zh=FILE --data en=FILE")
    policy = ErrorPolicy(args.on_error)
    texts = {}
    for name, files in parse_sets(args.data).items():
        man.add_inputs(files)
        texts[name] = read_texts(files, man.source(f"{task}:{name}"), args.text_field, max_docs, max_chars, policy, read_options(args))
    return texts


def run_bpc(model: Any, tok: Any, args: argparse.Namespace, man: Manifest, out: Path) -> dict[str, Any]:
    sets = _read_sets(args, man, "bpc", args.max_docs, args.max_chars)
    window = model_window(model, args.window)
    res = {"task": "bpc", "model": str(args.model), "tokenizer_sha256": tokenizer_sha256(tok),
           "vocab_size": len(tok), "window": window, "stride": args.stride or window, "note": PPL_NOTE,
           "sets": {name: bpc_of_texts(model, tok, texts, window, args.stride, desc=f"bpc {name}")
                    for name, texts in sets.items()}}
    _write(out, "bpc", res, _bpc_markdown(res))
    for name, s in res["sets"].items():
        if s["docs_not_round_trip"]:
            man.warnings.append(f"{name}: {s['docs_not_round_trip']} texts do not decode back to themselves "
                                "(the tokenizer normalises them); bpc is over the original characters")
        print(f"{name}: bpc {s['bpc']:.4f}  bits/byte {s['bits_per_byte']:.4f}  tokens/char {s['tokens_per_char']:.3f}  "
              f"token ppl {s['token_ppl']:.2f} (not comparable across vocabularies)")
    return {n: {k: s[k] for k in ("bpc", "bits_per_byte", "tokens_per_char")} for n, s in res["sets"].items()}


def run_ctx_ppl(model: Any, tok: Any, args: argparse.Namespace, man: Manifest, out: Path) -> dict[str, Any]:
    sets = _read_sets(args, man, "ctx-ppl", args.max_docs or 2, None)
    limit = model_window(model, 1 << 30)
    lengths = sorted(set(args.lengths or [2 ** k for k in range(9, 18) if 2 ** k <= limit]))
    if not lengths or max(lengths) > limit:
        raise InputError("--lengths", None, f"context lengths must be between 1 and the model's limit {limit}")
    res: dict[str, Any] = {"task": "ctx-ppl", "model": str(args.model), "tokenizer_sha256": tokenizer_sha256(tok),
                           "lengths": lengths, "max_chars_per_doc": args.doc_chars, "note": PPL_NOTE, "sets": {}}
    series = {}
    for name, texts in sets.items():
        texts = [t[: args.doc_chars] for t in texts]
        rows = ctx_ppl_of_texts(model, tok, texts, lengths)
        res["sets"][name] = rows
        for d in range(len(texts)):
            pts = [(r["context"], r["ppl"]) for r in rows if r["doc"] == d]
            if pts:
                series[f"{name} doc {d + 1}"] = tuple(zip(*pts))
        skipped = [L for L in lengths if all(r["context"] != L for r in rows)]
        if skipped:
            man.warnings.append(f"{name}: context lengths {skipped} are longer than every document (raise --doc-chars)")
    lines(series, out / "ctx_ppl.png", "Perplexity against context length", "context length (tokens)",
          "perplexity (per token)", logx=True)
    md = [f"# Perplexity against context length: `{args.model}`", "", "![ctx-ppl](ctx_ppl.png)", "",
          "| set | doc | context | tokens | ppl | bpc |", "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {n} | {r['doc'] + 1} | {r['context']} | {r['tokens']} | {r['ppl']:.3f} | {r['bpc']:.4f} |"
           for n, rows in res["sets"].items() for r in rows]
    _write(out, "ctx_ppl", res, "\n".join(md + ["", f"Each row scores the same tokens of the document; {PPL_NOTE}", ""]))
    return {"lengths": lengths, "rows": sum(len(r) for r in res["sets"].values())}


@locked_output("out")
def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    man = Manifest("train eval", cli_params(args))
    model, tok = load_model(args.model, args.device)
    tok_sha = tokenizer_sha256(tok)
    man.extra["model"] = {"path": str(args.model), "tokenizer_sha256": tok_sha, "vocab_size": len(tok)}
    if (Path(args.model) / "config.json").is_file():
        man.extra["model"]["config_sha256"] = file_sha256(Path(args.model) / "config.json")
    tasks = {"bpc": run_bpc, "ctx-ppl": run_ctx_ppl, "mc": mc.run_mc}
    for task in dict.fromkeys(args.task):
        man.extra[task] = tasks[task](model, tok, args, man, out)
    for c in man.sources.values():  # records of every task's inputs (texts, questions)
        man.counts.merge(c)
    man.write(out)
    print(f"results in {out}/")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a model: bits per character, perplexity vs context, C-Eval/CMMLU/MMLU",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__ + """
examples:
  train eval runs/ext --task bpc mc --data zh=heldout/zh.jsonl --data en=heldout/en.jsonl \\
      --bench ../shared/eval/ceval --bench ../shared/eval/cmmlu --shots 0 5 -o runs/ext/eval
  train eval runs/ext --task ctx-ppl --data zh=../shared/eval/longtext/long_docs_zh.jsonl -o runs/ext/eval-ctx
  train eval merged/ --task mc --bench ../shared/eval/ceval --subjects computer_network --max-questions 20 -o quick-mc
MODEL is a `train run` folder (4-bit base + adapter) or a plain Hugging Face model folder.
`train compare` reads bpc.json and mc.json from RUN/eval: run the tasks it needs in one invocation
(manifest.json describes the last invocation into a folder).""")
    p.add_argument("model", help="`train run` output folder or Hugging Face model folder")
    p.add_argument("--task", nargs="+", choices=TASKS, required=True, help="one or more tasks to run")
    p.add_argument("-o", "--out", required=True, help="folder for <task>.json, <task>.md, plots and manifest.json")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    g = p.add_argument_group("bpc / ctx-ppl")
    g.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                   help="held-out text set (JSONL/JSON/Parquet/txt file or folder); repeat for zh, en, ...")
    g.add_argument("--text-field", default="text", help="field holding the text in JSON/Parquet records")
    add_read_options(g)
    g.add_argument("--max-docs", type=int, default=None, help="at most this many documents per set (ctx-ppl default 2)")
    g.add_argument("--max-chars", type=int, default=None, help="bpc: stop a set once this many characters are read")
    g.add_argument("--window", type=int, default=None, help="bpc: context window in tokens (default min(2048, model limit))")
    g.add_argument("--stride", type=int, default=None, help="bpc: window step for long texts (default = window)")
    g.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="ctx-ppl: context lengths (default 512, 1024, ... up to the model limit)")
    g.add_argument("--doc-chars", type=int, default=200_000, help="ctx-ppl: score the first N characters of each document")
    g.add_argument("--on-error", choices=("stop", "skip"), default="stop", help="bad input records: stop or count and skip")
    mc.add_arguments(p.add_argument_group("mc"))
    p.set_defaults(func=run)
