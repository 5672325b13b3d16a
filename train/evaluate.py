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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from zhdata.errors import ErrorPolicy, InputError
from zhdata.hashing import hash64
from zhdata.lock import locked_output, output_lock
from zhdata.manifest import Manifest, file_sha256
from zhdata.readers import DEFAULT_MAX_RECORD_MB, ReadOptions, add_read_options

from .evaldata import parse_sets, read_texts

TASKS = ("bpc", "ctx-ppl", "mc", "lm-eval")
MC_SPLITS = ("dev", "val", "test")
PPL_NOTE = ("bpc and bits per byte do not depend on the vocabulary and compare fairly across tokenizers; "
            "per-token perplexity (token_ppl) does NOT: a vocabulary with longer pieces has fewer, harder tokens.")


@dataclass
class EvalOptions:
    """Settings of `train eval` (each is the `--flag` of the same name)."""

    data: dict[str, list[Path]] = field(default_factory=dict)  # bpc / ctx-ppl: {set name: files}
    text_field: str = "text"
    encoding: str = "utf-8"
    max_record_mb: float = DEFAULT_MAX_RECORD_MB
    max_docs: int | None = None
    max_chars: int | None = None
    window: int | None = None
    stride: int | None = None
    lengths: list[int] | None = None
    doc_chars: int = 200_000
    on_error: str = "stop"
    device: str = "cpu"
    bench: list[str] = field(default_factory=list)  # mc: [NAME=]DIR
    shots: list[int] = field(default_factory=lambda: [0, 5])
    split: str = "auto"
    subjects: list[str] | None = None
    max_questions: int | None = None
    mc_lang: str = "auto"
    lm_eval_tasks: list[str] = field(default_factory=list)  # lm-eval: see train/lmeval.py
    lm_eval_include: list[str] = field(default_factory=list)
    lm_eval_shots: int | None = None
    lm_eval_limit: float | None = None
    lm_eval_batch_size: int = 8
    lm_eval_max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        # `{"zh": "heldout/zh.jsonl"}` or `["zh=heldout/zh.jsonl"]` are accepted too, as from the command line
        specs = self.data if isinstance(self.data, list) else [
            f"{n}={p}" for n, paths in self.data.items() for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
        self.data = parse_sets([str(s) for s in specs])


def doc_key(text: str) -> str:
    """Identity of a held-out document, so that two runs' per-document results can be paired (`hash64` in hex)."""
    return f"{hash64(text):016x}"


def bpc_of_texts(model: Any, tok: Any, texts: list[str], window: int, stride: int | None = None,
                 desc: str = "bpc") -> dict[str, Any]:
    """Sums and ratios for one set of texts: bits, chars, bytes, tokens, bpc, bits/byte, token ppl;
    and per document (`documents`: key, chars, tokens, bits) for paired comparisons."""
    from .scoring import LN2, conditioning_prefix, encode_text, token_nll

    prefix = conditioning_prefix(tok)
    docs: dict[str, list[Any]] = {"key": [], "chars": [], "tokens": [], "bits": []}
    nbytes = not_lossless = 0
    for text in tqdm(texts, desc=desc, unit="doc", leave=False):
        ids = encode_text(tok, text)
        if tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) != text:
            not_lossless += 1
        nll = token_nll(model, prefix + ids, window, stride)
        docs["key"].append(doc_key(text))
        docs["chars"].append(len(text))
        docs["tokens"].append(int(nll.numel()))
        docs["bits"].append(float(nll.sum()) / LN2)
        nbytes += len(text.encode("utf-8"))
    bits, chars, tokens = sum(docs["bits"]), sum(docs["chars"]), sum(docs["tokens"])
    return {
        "docs": len(texts), "chars": chars, "bytes": nbytes, "tokens": tokens, "bits": bits,
        "bpc": bits / chars, "bits_per_byte": bits / nbytes,
        "token_ppl": math.exp(bits * LN2 / tokens) if tokens else float("nan"),
        "tokens_per_char": tokens / chars, "docs_not_round_trip": not_lossless, "documents": docs,
    }


def ctx_ppl_of_texts(model: Any, tok: Any, texts: list[str], lengths: list[int]) -> list[dict[str, Any]]:
    """Per document and context length: perplexity and bpc of the same tokens, sliding window with stride L/2."""
    from .scoring import LN2, conditioning_prefix, encode_text, token_nll

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
        out.append(f"| {name} | {s['docs']:,} | {s['chars']:,} | {s['tokens']:,} | {s['tokens_per_char']:.3f} | "
                   f"{s['bpc']:.4f} | {s['bits_per_byte']:.4f} | {s['token_ppl']:,.2f} |")
    out += ["", f"Note: {PPL_NOTE}", ""]
    return "\n".join(out)


def _write(out: Path, stem: str, res: dict[str, Any], md: str) -> None:
    (out / f"{stem}.json").write_text(json.dumps(res, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / f"{stem}.md").write_text(md, encoding="utf-8")


def _read_sets(opts: EvalOptions, man: Manifest, task: str, max_docs: int | None,
               max_chars: int | None) -> dict[str, list[str]]:
    if not opts.data:
        raise InputError("--data", None, f"--task {task} needs held-out text", "pass --data zh=FILE --data en=FILE")
    policy = ErrorPolicy(opts.on_error)
    texts = {}
    for name, files in opts.data.items():
        man.add_inputs(files)
        texts[name] = read_texts(files, man.source(f"{task}:{name}"), opts.text_field, max_docs, max_chars, policy,
                                 ReadOptions(opts.encoding, opts.max_record_mb))
    return texts


def run_bpc(model: Any, tok: Any, name: str, opts: EvalOptions, man: Manifest, out: Path) -> dict[str, Any]:
    from .scoring import model_window, tokenizer_fingerprint

    sets = _read_sets(opts, man, "bpc", opts.max_docs, opts.max_chars)
    window = model_window(model, opts.window)
    res = {"task": "bpc", "model": name, "tokenizer_fingerprint": tokenizer_fingerprint(tok),
           "vocab_size": len(tok), "window": window, "stride": opts.stride or window, "note": PPL_NOTE,
           "sets": {n: bpc_of_texts(model, tok, texts, window, opts.stride, desc=f"bpc {n}") for n, texts in sets.items()}}
    _write(out, "bpc", res, _bpc_markdown(res))
    for n, s in res["sets"].items():
        if s["docs_not_round_trip"]:
            man.warnings.append(f"{n}: {s['docs_not_round_trip']} texts do not decode back to themselves "
                                "(the tokenizer normalises them); bpc is over the original characters")
        print(f"{n}: bpc {s['bpc']:.4f}  bits/byte {s['bits_per_byte']:.4f}  tokens/char {s['tokens_per_char']:.3f}  "
              f"token ppl {s['token_ppl']:.2f} (not comparable across vocabularies)")
    return {n: {k: s[k] for k in ("bpc", "bits_per_byte", "tokens_per_char")} for n, s in res["sets"].items()}


def run_ctx_ppl(model: Any, tok: Any, name: str, opts: EvalOptions, man: Manifest, out: Path) -> dict[str, Any]:
    from .plots import lines
    from .scoring import model_window, tokenizer_fingerprint

    sets = _read_sets(opts, man, "ctx-ppl", opts.max_docs or 2, None)
    limit = model_window(model, 1 << 30)
    lengths = sorted(set(opts.lengths or [2 ** k for k in range(9, 18) if 2 ** k <= limit]))
    if not lengths or max(lengths) > limit:
        raise InputError("--lengths", None, f"context lengths must be between 1 and the model's limit {limit}")
    res: dict[str, Any] = {"task": "ctx-ppl", "model": name, "tokenizer_fingerprint": tokenizer_fingerprint(tok),
                           "lengths": lengths, "max_chars_per_doc": opts.doc_chars, "note": PPL_NOTE, "sets": {}}
    series = {}
    for set_name, texts in sets.items():
        texts = [t[: opts.doc_chars] for t in texts]
        rows = ctx_ppl_of_texts(model, tok, texts, lengths)
        res["sets"][set_name] = rows
        for d in range(len(texts)):
            pts = [(r["context"], r["ppl"]) for r in rows if r["doc"] == d]
            if pts:
                series[f"{set_name} doc {d + 1}"] = tuple(zip(*pts))
        skipped = [L for L in lengths if all(r["context"] != L for r in rows)]
        if skipped:
            man.warnings.append(f"{set_name}: context lengths {skipped} are longer than every document (raise --doc-chars)")
    lines(series, out / "ctx_ppl.png", "Perplexity against context length", "context length (tokens)",
          "perplexity (per token)", logx=True)
    md = [f"# Perplexity against context length: `{name}`", "", "![ctx-ppl](ctx_ppl.png)", "",
          "| set | doc | context | tokens | ppl | bpc |", "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {n} | {r['doc'] + 1} | {r['context']:,} | {r['tokens']:,} | {r['ppl']:,.3f} | {r['bpc']:.4f} |"
           for n, rows in res["sets"].items() for r in rows]
    _write(out, "ctx_ppl", res, "\n".join(md + ["", f"Each row scores the same tokens of the document; {PPL_NOTE}", ""]))
    return {"lengths": lengths, "rows": sum(len(r) for r in res["sets"].values())}


def run_mc(model: Any, tok: Any, name: str, opts: EvalOptions, man: Manifest, out: Path) -> dict[str, Any]:
    from . import mc

    return mc.run_mc(model, tok, name, opts, man, out)


def run_lm_eval(model: Any, tok: Any, name: str, opts: EvalOptions, man: Manifest, out: Path) -> dict[str, Any]:
    from . import lmeval

    return lmeval.run_lm_eval(model, tok, name, opts, man, out)


STAGES = {"bpc": run_bpc, "ctx-ppl": run_ctx_ppl, "mc": run_mc, "lm-eval": run_lm_eval}


def evaluate(model: str | Path, tasks: list[str], out: str | Path, opts: EvalOptions | None = None,
             params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the tasks on a `train run` folder or Hugging Face model folder; writes <task>.json/.md and manifest.json
    into `out` and returns the manifest as a dict (its `bpc`, `ctx-ppl`, `mc` entries hold the summaries)."""
    from .scoring import load_model, tokenizer_fingerprint

    opts = opts or EvalOptions()
    unknown = [t for t in tasks if t not in STAGES]
    if unknown:
        raise InputError("--task", None, f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    out = Path(out)
    with output_lock(out):
        man = Manifest("train eval", params if params is not None else {
            "model": str(model), "task": list(tasks),
            **{k: (v if k != "data" else {n: [str(p) for p in ps] for n, ps in v.items()}) for k, v in asdict(opts).items()}})
        loaded, tok = load_model(model, opts.device)
        man.extra["model"] = {"path": str(model), "tokenizer_fingerprint": tokenizer_fingerprint(tok), "vocab_size": len(tok)}
        if (Path(model) / "config.json").is_file():
            man.extra["model"]["config_sha256"] = file_sha256(Path(model) / "config.json")
        for task in dict.fromkeys(tasks):
            man.extra[task] = STAGES[task](loaded, tok, str(model), opts, man, out)
        for c in man.sources.values():  # records of every task's inputs (texts, questions)
            man.counts.merge(c)
        man.write(out)
    return man.to_dict()


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    return EvalOptions(**{f: getattr(args, f) for f in EvalOptions.__dataclass_fields__})


@locked_output("out")
def run(args: argparse.Namespace) -> int:
    from zhdata.manifest import cli_params

    evaluate(args.model, args.task, args.out, options_from_args(args), params=cli_params(args))
    print(f"results in {args.out}/")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
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
    _mc_arguments(p.add_argument_group("mc"))
    from .lmeval import add_arguments

    add_arguments(p.add_argument_group("lm-eval (lm-evaluation-harness, offline; see train/lmeval.py)"))


def _mc_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--bench", action="append", default=[], metavar="[NAME=]DIR",
                   help="benchmark folder in the C-Eval, CMMLU or MMLU layout; repeat for several")
    g.add_argument("--shots", type=int, nargs="+", default=[0, 5], help="numbers of dev examples in the prompt (default 0 5)")
    g.add_argument("--split", default="auto", choices=("auto",) + MC_SPLITS,
                   help="split to score (auto: test when it has answers, else val; C-Eval's test has none)")
    g.add_argument("--subjects", nargs="+", default=None, help="only these subjects (file stems, e.g. computer_network)")
    g.add_argument("--max-questions", type=int, default=None, help="at most N questions per subject (quick runs)")
    g.add_argument("--mc-lang", choices=("auto", "zh", "en"), default="auto",
                   help="prompt language (auto: Chinese for C-Eval/CMMLU or CJK questions)")
