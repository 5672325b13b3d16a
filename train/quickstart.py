"""`train quickstart -o DIR`: the whole adaptation, original vs extended vocabulary, in one command.

Stages (each is the documented command; DIR/commands.sh lists them so they can be rerun one by one):
  1. zhdata clean --sample (or your --input)      5. zhdata pack, once per vocabulary
  2. zhdata dedupe                                6. a model: --model, or a tiny demonstration Mixtral
  3. split: held-out text / training text          7. train run, once per vocabulary (same text)
  4. tokenizer convert + tokenizer extend          8. train eval: the base model, then each run (Chinese and
                                                     English held-out bpc; mc with --bench)  9. train compare
                                                  10. train generate: a few answers of both runs
Offline. Without --model the model is a small, randomly initialised Mixtral-architecture model created
here and labelled as a demonstration model: its numbers show the pipeline, not Mixtral's quality.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import time
from dataclasses import MISSING, fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from zhdata.errors import InputError
from zhdata.hashing import hash64
from zhdata.lock import locked_output
from zhdata.manifest import Manifest, cli_params

# The Mixtral tokenizer shipped with the package (Apache-2.0), used when neither --model nor --tokenizer gives one.
PACKAGED_TOKENIZER = Path(str(resources.files("tokenizer") / "data" / "mixtral-8x7b-v0.1.model"))
# English held-out text shipped with the package (C4 documents, ODC-BY; see train/data/README.md): English retention.
ENGLISH_HELDOUT = Path(str(resources.files("train") / "data" / "heldout_en.jsonl"))
# Demonstration model sizes: `demo` for the README's run, `tiny` for CI (hidden >= 64: the NF4 block size on CPU).
STAGE_DIRS = ("clean", "dedup", "corpus", "heldout", "tok-orig", "tok-ext", "packed-orig", "packed-ext", "model", "runs",
              "report", "answers")
# A few prompts both runs answer at the end (a demonstration model's answers show the plumbing, not quality).
PROMPTS = [{"id": "capital", "prompt": "中国的首都是哪里？"}, {"id": "poem", "prompt": "请写一句关于春天的诗。"},
           {"id": "english", "prompt": "What is the capital of France?"}]
ANSWER_TOKENS = 24
SIZES = {"demo": {"layers": 2, "hidden": 64, "experts": 4}, "tiny": {"layers": 1, "hidden": 64, "experts": 4}}


def split_corpus(dedup_dir: Path, corpus_dir: Path, heldout_file: Path, train_chars: int, heldout_chars: int,
                 heldout_every: int = 50) -> dict[str, int]:
    """Held-out documents (stable hash of the id, 1 in `heldout_every`) and a training subset of about
    `train_chars` characters drawn in stable-hash order, so that every source is represented."""
    import polars as pl

    from zhdata.pack.split import split_of

    shards = [f for f in sorted(dedup_dir.glob("*.parquet")) if f.name != "clusters.parquet"]
    if not shards:
        raise InputError(dedup_dir, None, "no Parquet shards to split")
    df = pl.concat([pl.read_parquet(f, columns=["id", "text", "source"]) for f in shards])
    df = df.with_columns(pl.col("id").map_elements(hash64, return_dtype=pl.UInt64).alias("_key")).sort("_key")
    held = df["id"].map_elements(lambda i: split_of(i, 1 / heldout_every) == "val", return_dtype=pl.Boolean)
    held_df, train_df = df.filter(held), df.filter(~held)
    held_df = held_df.filter(held_df["text"].str.len_chars().cum_sum() <= heldout_chars)
    if held_df.height == 0:  # a small corpus: take the first document in hash order
        held_df, train_df = df.head(1), df.slice(1)
    train_df = train_df.filter(train_df["text"].str.len_chars().cum_sum().shift(1, fill_value=0) < train_chars)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    train_df.drop("_key").write_parquet(corpus_dir / "train.parquet")
    heldout_file.parent.mkdir(parents=True, exist_ok=True)
    with heldout_file.open("w", encoding="utf-8") as f:
        for rec in held_df.drop("_key").iter_rows(named=True):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return {"documents": df.height, "train_documents": train_df.height, "train_chars": int(train_df["text"].str.len_chars().sum()),
            "heldout_documents": held_df.height, "heldout_chars": int(held_df["text"].str.len_chars().sum())}


def base_tokenizer(args: argparse.Namespace) -> Path:
    """The SentencePiece model of the original vocabulary: --tokenizer, the --model folder's, or the repository's."""
    for cand in (args.tokenizer, args.model and Path(args.model) / "tokenizer.model", PACKAGED_TOKENIZER):
        if cand and Path(cand).exists():
            return Path(cand)
    raise InputError(args.model or "--tokenizer", None, "no SentencePiece tokenizer.model for the original vocabulary",
                     "pass --tokenizer mixtral.model (Mixtral's tokenizer.model)")


class Chain:
    """Runs the stages with a numbered progress line each, and records the equivalent shell commands."""

    def __init__(self, out: Path, total: int):
        self.out, self.total, self.n = out, total, 0
        self.commands: list[str] = []
        self.timings: dict[str, float] = {}

    def stage(self, name: str, fn: Callable[[], Any], command: list[str] | None = None) -> Any:
        self.n += 1
        print(f"\n[{self.n}/{self.total}] {name}" + (f"\n  $ {shlex.join(command)}" if command else ""), flush=True)
        t = time.perf_counter()
        result = fn()
        self.timings[name] = round(time.perf_counter() - t, 2)
        self.commands.append(shlex.join(command) if command else f"# {name}: done inside `train quickstart`")
        print(f"  done in {self.timings[name]:.1f} s", flush=True)
        return result


def _flags(opts: Any, skip: tuple[str, ...] = (), repeat: tuple[str, ...] = (), comma: bool = False) -> list[str]:
    """The command-line flags that reproduce a stage's options: every field that differs from its default.
    Lists are `--x a b` (nargs), `--x a --x b` for the names in `repeat`, or `--x a,b` with `comma`."""
    flags = []
    for f in fields(opts):
        v = getattr(opts, f.name)
        default = f.default if f.default is not MISSING else f.default_factory() if f.default_factory is not MISSING else MISSING
        if f.name in skip or v == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            flags.append(flag if v else "--no-" + f.name.replace("_", "-"))
        elif isinstance(v, list) and f.name in repeat:
            flags += [x for item in v for x in (flag, str(item))]
        elif isinstance(v, list):
            flags += [flag, ",".join(map(str, v))] if comma else [flag, *map(str, v)]
        else:
            flags += [flag, str(v)]
    return flags


def _train_and_eval(args: argparse.Namespace, chain: Chain, d: dict[str, Path], model: Path, heldout: Path) -> Path:
    """Both runs (same text, one vocabulary each), the base model's and both runs' bpc; returns the base eval folder."""
    from zhdata.lock import output_lock

    from .config import RunConfig
    from .evaluate import EvalOptions, evaluate
    from .loop import train

    for v in ("orig", "ext"):
        # always the tokenizer the data was packed with (a downloaded model's own tokenizer.json differs in bytes)
        cfg = RunConfig(model=str(model), data=str(d[f"packed-{v}"]), output_dir=str(d["runs"] / v), stage="pt", vocab=v,
                        tokenizer=str(d[f"tok-{v}"]), base_tokenizer=str(d["tok-orig"]) if v == "ext" else "",
                        epochs=1.0, micro_batch_size=args.micro_batch_size, lr=args.lr, lora_r=args.lora_r,
                        lora_alpha=float(2 * args.lora_r), save_every=0, max_val_batches=4, device=args.device, log_every=1,
                        # the demonstration model is small: recomputation would only cost time
                        gradient_checkpointing=args.model is not None)

        def run_one(cfg: RunConfig = cfg) -> dict[str, Any]:
            with output_lock(cfg.output_dir):
                return train(cfg)
        chain.stage(f"train ({v} vocabulary, one pass over the same text)", run_one, ["train", "run", *_flags(cfg, comma=True)])
    heldout_en = Path(args.heldout_en) if args.heldout_en else ENGLISH_HELDOUT
    data = [f"zh={heldout}", f"en={heldout_en}"]
    base_eval = d["runs"] / "base" / "eval"
    opts = EvalOptions(data=data, device=args.device)
    chain.stage("evaluate the base model before training (bpc)", lambda: evaluate(model, ["bpc"], base_eval, opts),
                ["train", "eval", str(model), "--task", "bpc", *[x for s in data for x in ("--data", s)],
                 *_flags(opts, skip=("data",)), "-o", str(base_eval)])
    tasks = ["bpc", "mc"] if args.bench else ["bpc"]
    opts = EvalOptions(data=data, device=args.device, bench=list(args.bench),
                       max_questions=args.max_questions if args.bench else None)
    for v in ("orig", "ext"):
        run_dir = d["runs"] / v
        chain.stage(f"evaluate ({v} vocabulary)", lambda run_dir=run_dir: evaluate(run_dir, tasks, run_dir / "eval", opts),
                    ["train", "eval", str(run_dir), "--task", *tasks, *[x for s in data for x in ("--data", s)],
                     *_flags(opts, skip=("data",), repeat=("bench",)), "-o", str(run_dir / "eval")])
    return base_eval


@locked_output("out")
def run(args: argparse.Namespace) -> int:
    from tokenizer.convert import convert_sentencepiece
    from tokenizer.extend import extend_tokenizer
    from zhdata.clean import CleanOptions, run_clean, sample_path
    from zhdata.dedupe import DedupeOptions, run_dedupe
    from zhdata.pack.packer import PackOptions, pack
    from zhdata.readers import expand_inputs
    from zhdata.shards import check_output_folder

    from .compare import compare
    from .demo_model import make_demo_model

    out = Path(args.out)
    check_output_folder(out, args.input or [])  # before --overwrite deletes anything
    d = {k: out / k for k in STAGE_DIRS}
    if any(p.exists() for p in d.values()):
        if not args.overwrite:
            raise InputError(out, None, "holds the output of an earlier quickstart", "use a new folder, or --overwrite")
        for p in d.values():
            shutil.rmtree(p, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    man = Manifest("train quickstart", cli_params(args))
    started = time.perf_counter()
    chain = Chain(out, 15 + (1 if args.model is None else 0))
    workers = os.cpu_count() or 1  # as the commands' default
    inputs = [str(p) for p in expand_inputs(args.input)] if args.input else [str(sample_path())]
    chain.stage("clean", lambda: run_clean(inputs, d["clean"], CleanOptions(), workers, overwrite=True),
                ["zhdata", "clean", *(inputs if args.input else ["--sample"]), "-o", str(d["clean"])])
    chain.stage("dedupe", lambda: run_dedupe(d["clean"], d["dedup"], DedupeOptions(), workers, overwrite=True),
                ["zhdata", "dedupe", str(d["clean"]), "-o", str(d["dedup"])])
    heldout = d["heldout"] / "zh.jsonl"
    split = chain.stage("split held-out / training text", lambda: split_corpus(
        d["dedup"], d["corpus"], heldout, args.train_chars, args.heldout_chars))
    print(f"  {split['train_documents']:,} training documents ({split['train_chars']:,} characters), "
          f"{split['heldout_documents']:,} held out ({split['heldout_chars']:,} characters)")
    base = base_tokenizer(args)
    chain.stage("tokenizer convert (original vocabulary)", lambda: convert_sentencepiece(base, d["tok-orig"]),
                ["tokenizer", "convert", str(base), "-o", str(d["tok-orig"])])
    chain.stage(f"tokenizer extend (+{args.add:,} Chinese pieces)",
                lambda: extend_tokenizer(d["tok-orig"], d["tok-ext"], args.add, corpus=[d["corpus"]]),
                ["tokenizer", "extend", "--base", str(d["tok-orig"]), "--corpus", str(d["corpus"]), "--add", str(args.add),
                 "-o", str(d["tok-ext"])])
    for v in ("orig", "ext"):
        opts = PackOptions(mode="pt", block_size=args.block_size, overwrite=True)
        chain.stage(f"pack ({v} vocabulary)", lambda v=v, opts=opts: pack([d["corpus"]], d[f"tok-{v}"], d[f"packed-{v}"], opts),
                    ["zhdata", "pack", str(d["corpus"]), "--tokenizer", str(d[f"tok-{v}"]), "-o", str(d[f"packed-{v}"]),
                     "--mode", "pt", "--block-size", str(args.block_size), "--overwrite"])
    model = Path(args.model) if args.model else d["model"]
    if args.model is None:
        size = SIZES[args.size]
        chain.stage(f"create the demonstration model (layers {size['layers']}, hidden {size['hidden']}, "
                    f"{size['experts']} experts; NOT Mixtral)",
                    lambda: make_demo_model(d["tok-orig"], model, layers=size["layers"], hidden=size["hidden"],
                                            experts=size["experts"], max_positions=max(512, args.block_size)))
    base_eval = _train_and_eval(args, chain, d, model, heldout)
    runs = [d["runs"] / "orig"], [d["runs"] / "ext"]
    result = chain.stage("compare", lambda: compare(*runs, d["report"], base_eval=base_eval),
                         ["train", "compare", str(runs[0][0]), str(runs[1][0]), "--base", str(base_eval), "-o", str(d["report"])])
    answers = _answers(args, chain, d)
    (out / "commands.sh").write_text("#!/bin/sh\n# the stages `train quickstart` ran, as commands\nset -e\n"
                                     + "\n".join(chain.commands) + "\n", encoding="utf-8")
    man.counts.records_in = man.counts.records_out = split["documents"]
    man.extra["quickstart"] = {"split": split, "stage_seconds": chain.timings, "model": str(model),
                               "demonstration_model": args.model is None, "verdict": result["verdict"],
                               "total_seconds": round(time.perf_counter() - started, 1)}
    man.write(out)
    for pid in (p["id"] for p in PROMPTS):
        print(f"\n{pid}: " + "  |  ".join(f"{v}: {answers[v][pid]!r}" for v in answers))
    print(f"\n{result['verdict']}")
    print(f"\nquickstart finished in {man.extra['quickstart']['total_seconds']:.0f} s")
    print(f"report: {d['report'] / 'report.html'}  (Markdown: {d['report'] / 'report.md'})")
    return 0


def _answers(args: argparse.Namespace, chain: Chain, d: dict[str, Path]) -> dict[str, dict[str, str]]:
    """A few answers of both runs (`train generate`), written to OUT/answers/{orig,ext}.jsonl."""
    from .generate import GenSettings, generate_answers

    prompts = d["answers"] / "prompts.jsonl"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PROMPTS), encoding="utf-8")
    out: dict[str, dict[str, str]] = {}
    for v in ("orig", "ext"):
        def gen(v: str = v) -> None:
            answers = generate_answers(d["runs"] / v, PROMPTS, GenSettings(max_new_tokens=ANSWER_TOKENS), device=args.device)
            with (d["answers"] / f"{v}.jsonl").open("w", encoding="utf-8") as f:
                for a in answers:
                    f.write(json.dumps({"model": v, **a}, ensure_ascii=False) + "\n")
            out[v] = {a["id"]: a["answer"] for a in answers}
        chain.stage(f"generate a few answers ({v} vocabulary)", gen,
                    ["train", "generate", str(d["runs"] / v), "--prompts", str(prompts), "-o", str(d["answers"] / f"{v}.jsonl"),
                     "--max-new-tokens", str(ANSWER_TOKENS), "--device", args.device, "--name", v])
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__ + """
examples:
  train quickstart -o qs/            # built-in sample, demonstration model, CPU: about 6 minutes (limit 15) on 2 cores
  train quickstart -o qs/ --model mixtral-8x7b/ --input corpus/zh --heldout-en heldout/en.jsonl \\
      --bench ../shared/eval/ceval --train-chars 50000000 --add 20000 --block-size 1024 --lr 1e-4 --device cuda""")
    p.add_argument("-o", "--out", required=True, help="folder for every stage's output; the report is in OUT/report/")
    p.add_argument("--input", nargs="+", default=None, help="Chinese text files/folders instead of the built-in sample")
    p.add_argument("--model", default=None, help="Hugging Face Mixtral folder (default: create a demonstration model)")
    p.add_argument("--tokenizer", default=None, help="original SentencePiece tokenizer.model (default: the model's, "
                                                     "else the Mixtral tokenizer shipped with the package)")
    p.add_argument("--heldout-en", default=None, help="English held-out text for bpc (default: 34 English C4 documents "
                                                       "shipped with the package, ODC-BY)")
    p.add_argument("--bench", action="append", default=[], help="benchmark folder for `train eval --task mc` (repeatable)")
    p.add_argument("--max-questions", type=int, default=20, help="questions per subject with --bench (default 20)")
    p.add_argument("--train-chars", type=int, default=150_000, help="characters of training text (default 150,000)")
    p.add_argument("--heldout-chars", type=int, default=20_000, help="characters of held-out text (default 20,000)")
    p.add_argument("--add", type=int, default=2000, help="new Chinese pieces for the extended vocabulary (default 2,000)")
    p.add_argument("--block-size", type=int, default=256, help="tokens per training block (default 256)")
    p.add_argument("--micro-batch-size", type=int, default=4, help="blocks per step (default 4)")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate (default 2e-3 for the demonstration model; "
                                                          "use about 1e-4 with a real model)")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default 8; alpha = 2 x rank)")
    p.add_argument("--size", choices=sorted(SIZES), default="demo", help="demonstration model size (tiny: for CI)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace the stage folders of an earlier quickstart in OUT")
