"""`zhdata instruct`: Alpaca / ShareGPT / OpenAI-messages instruction data into one clean conversation Parquet set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine import add_engine_options, engine_from_args
from ..errors import ErrorPolicy, InputError
from ..lock import locked_output
from ..manifest import Manifest
from ..normalize import OPENCC_MODES
from ..readers import add_read_options, expand_inputs, read_options, split_compression
from ..shards import check_output_folder
from .clean import DEFAULT_REFUSALS, CleanConfig, instruct_normalizer, load_phrases
from .formats import FORMATS, PREFERENCE_MODES, parse_columns

if TYPE_CHECKING:  # the pipeline (polars, pyarrow) is imported when the command runs, not for --help
    from .pipeline import Source

# Options a recipe's [options] may set; the command line wins over the recipe, the recipe over these defaults.
DEFAULTS: dict[str, Any] = {
    "format": "auto", "columns": None, "convert": "t2s", "normalize": True, "empty_turns": True, "role_order": True,
    "refusals": True, "refusal_file": None, "garbled": True, "max_chars": 16_000, "max_tokens": None,
    "min_chinese_ratio": 0.1, "chinese_prompt_exempt": True, "english": [], "exact_dup": True, "near_dup": True, "near_threshold": 0.7,
    "num_perm": 128, "ngram": 3, "split_turns": False, "preference": "error", "keep": [], "on_error": "stop",
    "batch_size": 10_000,
}

EPILOG = """\
examples:
  zhdata instruct alpaca_gpt4_data_zh.json sharegpt_zh.jsonl.gz -o sft/
  zhdata instruct data/ --split-turns --tokenizer tok/ --max-tokens 1024 -o sft/
  zhdata instruct qa.jsonl --columns prompt=question,response=answer -o sft/
  zhdata instruct --recipe manifests/aurora-sft.toml --data-dir downloads/ -o aurora-sft/
  zhdata instruct data/ -o sft/ --engine ray --ray-address auto   # a file per Ray task; dedup on the driver
  zhdata instruct s3://bucket/raw-sft -o s3://bucket/sft           # object stores in and out (scratch in TMPDIR)

Each input file is one source named after the file (or all of them --source NAME). Output: part-*.parquet
with id, source, system, messages (list of {role, content}; roles user/assistant/tool), origin (file:line),
kept fields; manifest.json with per-source counts in/out/dropped by reason.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("instruct",
                       description=__doc__ + " Multi-turn conversations stay whole unless --split-turns; duplicates are "
                       "judged over all inputs together (first occurrence kept).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="files or folders (.json array or lines, .jsonl, .parquet; .gz/.zst/.xz)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder, or an object-store URI (s3://bucket/prefix, ...)")
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", metavar="TOML", help="a data recipe (sources + options), e.g. manifests/aurora-sft.toml")
    g.add_argument("--data-dir", metavar="DIR", help="where the recipe's files are")
    g = p.add_argument_group("input")
    g.add_argument("--format", choices=(*FORMATS, "auto"), help="record format (default: detected per file from its fields)")
    g.add_argument("--columns", metavar="SPEC", help="LLaMA-Factory style field names: key=name,... (prompt, query, response, "
                   "history, system, messages, chosen, rejected, role_tag, content_tag, user_tag, assistant_tag, "
                   "observation_tag, function_tag, system_tag) or a .json/.toml file with a dataset_info entry")
    g.add_argument("--source", metavar="NAME", help="one source name for all inputs (default: each file's name)")
    g.add_argument("--english", action="append", metavar="SOURCE", help="a source in English: no Chinese-ratio check (repeatable)")
    g.add_argument("--preference", choices=PREFERENCE_MODES, help="chosen/rejected data: stop with an error (default) "
                   "or keep the chosen response as the assistant turn")
    g.add_argument("--keep", action="append", metavar="FIELD", help="input field kept as a metadata column (repeatable)")
    g.add_argument("--on-error", choices=["stop", "skip"], help="bad records and files of unknown format in input "
                   "folders stop the run (default) or are counted and skipped")
    add_read_options(g)
    g = p.add_argument_group("cleaning (each step can be switched off)")
    g.add_argument("--convert", choices=OPENCC_MODES, help="OpenCC conversion (default t2s; none to keep the script)")
    g.add_argument("--normalize", action=argparse.BooleanOptionalAction, help="`zhdata clean` normalisation of every turn: NFC, "
                   "ANSI escapes, control characters, full-width letters/digits, strip (default on; its HTML and "
                   "whitespace steps are never applied here: they would break code in responses)")
    g.add_argument("--empty-turns", action=argparse.BooleanOptionalAction, help="cut at an empty or whitespace-only turn (default on)")
    g.add_argument("--role-order", action=argparse.BooleanOptionalAction, help="cut at a turn out of order, and after the last "
                   "assistant turn (default on)")
    g.add_argument("--refusals", action=argparse.BooleanOptionalAction, help="cut at a response with refusal/AI-identity "
                   f"boilerplate (default on; {len(DEFAULT_REFUSALS)} built-in zh+en phrases)")
    g.add_argument("--refusal-file", metavar="FILE", help="phrase list, one per line, instead of the built-in one")
    g.add_argument("--garbled", action=argparse.BooleanOptionalAction, help="drop conversations with U+FFFD or mojibake (default on)")
    g.add_argument("--max-chars", type=int, help="characters per conversation; longer ones are cut at a turn (default 16000; 0 off)")
    g.add_argument("--tokenizer", metavar="DIR", help="Hugging Face tokenizer folder for --max-tokens")
    g.add_argument("--max-tokens", type=int, help="tokens per conversation (content only), cut at a turn")
    g.add_argument("--min-chinese-ratio", type=float, help="Han / (Han + Latin letters) over the responses (default 0.1; 0 off)")
    g.add_argument("--chinese-prompt-exempt", action=argparse.BooleanOptionalAction, help="responses below the ratio "
                   "pass when the user turns reach it: Chinese prompts that ask for translations, English text or code "
                   "(default on)")
    g.add_argument("--exact-dup", action=argparse.BooleanOptionalAction, help="drop exact duplicate conversations (default on)")
    g.add_argument("--near-dup", action=argparse.BooleanOptionalAction, help="drop near-duplicate prompts (MinHash LSH, default on)")
    g.add_argument("--near-threshold", type=float, help="Jaccard of prompt character n-grams (default 0.7)")
    g.add_argument("--num-perm", type=int, help="MinHash permutations (default 128)")
    g.add_argument("--ngram", type=int, help="character n-gram for prompts (default 3: prompts are short)")
    g = p.add_argument_group("output")
    g.add_argument("--split-turns", action=argparse.BooleanOptionalAction, help="each assistant turn its own example with the "
                   "earlier turns as history (as Aurora did); default: conversations stay whole")
    g.add_argument("--batch-size", type=int, help="records per batch and stage shard (default 10000)")
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=int, default=1, help="input files read and cleaned at once (default 1); with "
                   "--engine ray and no --ray-address, the CPUs of the local Ray")
    add_engine_options(g)


def _options(args: argparse.Namespace, recipe_options: dict[str, Any]) -> dict[str, Any]:
    return {k: (getattr(args, k) if getattr(args, k) is not None else recipe_options.get(k, d)) for k, d in DEFAULTS.items()}


def _sources(args: argparse.Namespace, o: dict[str, Any], warnings: list[str]) -> list[Source]:
    from .pipeline import Source

    cols, entry_fmt = parse_columns(o["columns"])
    fmt = o["format"] if o["format"] != "auto" else entry_fmt
    policy = ErrorPolicy(o["on_error"])
    files = expand_inputs(args.inputs, policy=policy)
    warnings.extend(policy.skipped_files)
    if args.source:
        return [Source(args.source, files, fmt, cols, args.source in o["english"])]
    by_name: dict[str, Source] = {}
    for f in files:
        name = Path(split_compression(f)[0]).stem
        by_name.setdefault(name, Source(name, [], fmt, cols, name in o["english"])).files.append(f)
    return list(by_name.values())


@locked_output("output", remote=True)
def run(args: argparse.Namespace) -> int:
    from .pipeline import BASE_SCHEMA, InstructOptions, run_instruct
    from .recipe import load_recipe, resolve_sources

    recipe = None
    if args.recipe:
        if args.inputs or not args.data_dir:
            raise InputError(args.recipe, None, "with --recipe, give --data-dir DIR and no INPUT")
        recipe = load_recipe(args.recipe, set(DEFAULTS))
    elif not args.inputs:
        raise InputError(".", None, "no INPUT given", "give files or folders, or --recipe TOML --data-dir DIR")
    o = _options(args, recipe.options if recipe else {})
    if clash := [k for k in o["keep"] if k in BASE_SCHEMA.names]:
        raise InputError("--keep", None, f"kept field {', '.join(map(repr, clash))} has the name of an output column "
                         f"({', '.join(BASE_SCHEMA.names)})", "keep only other fields; the output already has these columns")
    warnings: list[str] = []
    if recipe:
        sources, warnings = resolve_sources(recipe, args.data_dir)
    else:
        try:
            sources = _sources(args, o, warnings)
        except ValueError as e:  # a bad --columns
            raise InputError(o["columns"] or ".", None, str(e)) from None
    for s in sources:
        s.english = s.english or s.name in o["english"]
    tokenizer = None
    if o["max_tokens"]:
        if not args.tokenizer:
            raise InputError(".", None, "--max-tokens needs --tokenizer DIR")
        from ..pack.tokfolder import load_tokenizer_folder

        tokenizer = load_tokenizer_folder(args.tokenizer).tokenizer
    refusals = load_phrases(o["refusal_file"]) if o["refusal_file"] else DEFAULT_REFUSALS
    clean = CleanConfig(
        normalizer=None if o["convert"] == "none" and not o["normalize"] else instruct_normalizer(o["convert"], o["normalize"]),
        drop_empty_turns=o["empty_turns"], role_order=o["role_order"], refusals=refusals if o["refusals"] else (),
        garbled=o["garbled"], max_chars=o["max_chars"] or None, max_tokens=o["max_tokens"] or None,
        min_chinese_ratio=o["min_chinese_ratio"] or None, chinese_prompt_exempt=o["chinese_prompt_exempt"])
    cfg = InstructOptions(clean, o["exact_dup"], o["near_dup"], o["near_threshold"], o["num_perm"], o["ngram"],
                    o["split_turns"], o["preference"], o["on_error"], tuple(o["keep"]), o["batch_size"], read_options(args))
    params = {**o, "clean": clean.params(), "recipe": str(args.recipe) if recipe else None,
              "tokenizer": args.tokenizer, **cfg.read.params()}
    manifest = Manifest("instruct", params)
    manifest.warnings.extend(warnings)
    for w in warnings:
        print(f"zhdata instruct: warning: {w}", file=sys.stderr)
    if recipe:
        manifest.extra["recipe"] = recipe.info
    check_output_folder(args.output, args.inputs)  # folders given: the output must not be read by the next run
    if args.workers < 1:
        raise InputError("(command line)", None, "--workers must be at least 1")
    run_instruct(sources, args.output, cfg, manifest, tokenizer, engine_from_args(args))
    print(format_table(manifest, sources, recipe.info if recipe else {}))
    return 0


def format_table(manifest: Manifest, sources: list[Source], info: dict[str, Any]) -> str:
    """Per-source counts: upstream, read, dropped by reason, conversations kept, examples written."""
    ex = manifest.extra["instruct"]["examples_out"]
    head = f"{'source':<28} {'upstream':>9} {'read':>9} {'dropped':>8} {'kept':>9} {'examples':>9}  dropped by reason"
    lines = [head, "-" * len(head)]
    for s in sources:
        c = manifest.source(s.name)
        up = f"{'~' if s.info.get('upstream_approx') else ''}{s.info.get('upstream_records', '')}"
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(c.dropped.items(), key=lambda kv: -kv[1]))
        lines.append(f"{s.name:<28} {up:>9} {c.records_in:>9} {sum(c.dropped.values()):>8} {c.records_out:>9} "
                     f"{ex.get(s.name, 0):>9}  {reasons}")
    t = manifest.counts
    lines.append(f"{'total':<28} {sum(s.info.get('upstream_records', 0) for s in sources) or '':>9} {t.records_in:>9} "
                 f"{sum(t.dropped.values()):>8} {t.records_out:>9} {sum(ex.values()):>9}")
    if ref := info.get("reference_examples"):
        lines.append(f"reference ({info.get('reference', 'paper')}): {ref} examples")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main as zmain

    sys.exit(zmain(["instruct", *sys.argv[1:]]))
