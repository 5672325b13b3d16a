"""`zhdata pack` command line."""

from __future__ import annotations

import argparse

from ..engine import add_engine_options, engine_from_args
from ..lock import locked_output
from ..errors import InputError
from ..readers import add_read_options, read_options


def _fraction(v: str) -> float:
    x = float(v)
    if not 0 <= x < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), not {v}")
    return x


def _block(v: str) -> int:
    n = int(v)
    if n < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, not {v}")
    return n


@locked_output("out", remote=True)
def run(args: argparse.Namespace) -> int:
    from .packer import PackOptions, pack  # imported here: transformers' template engine loads slowly

    o = PackOptions(
        mode=args.mode, block_size=args.block_size, val_fraction=args.val_fraction, bos=args.bos,
        packing=args.packing, overlong=args.overlong, max_context=args.max_context, on_error=args.on_error,
        overwrite=args.overwrite, progress=not args.quiet, read=read_options(args),
    )
    if args.workers < 1:
        raise InputError("(command line)", None, "--workers must be at least 1")
    m = pack(args.inputs, args.tokenizer, args.out, o, engine_from_args(args))
    p = m.extra["pack"]
    print(f"packed {m.counts.records_out:,} of {m.counts.records_in:,} {'documents' if o.mode == 'pt' else 'conversations'} "
          f"into {p['blocks']:,} blocks of {p['block_size']} ({p['tokens']:,} tokens, {p['tokens_per_char']} tokens/char, "
          f"efficiency {p['efficiency']:.1%}); train {p['splits']['train']['blocks']:,} / val {p['splits']['val']['blocks']:,} blocks "
          f"→ {args.out}")
    if m.counts.dropped:
        print("dropped: " + ", ".join(f"{k} {v:,}" for k, v in sorted(m.counts.dropped.items())))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack",
        description="Tokenise cleaned text shards (--mode pt) or conversation Parquet (--mode sft) with a Hugging Face "
        "tokenizer folder and write memory-mappable training blocks, a deterministic train/val split and manifest.json "
        "(tokenizer fingerprint, token counts, tokens per character, blocks, padding, truncation). "
        "pt: EOS after every document (BOS before it if the tokenizer adds one), concatenated and cut into "
        "--block-size blocks; the reader restarts position ids at every document. sft: each conversation rendered with "
        "the folder's chat template, loss only on assistant answers and their closing EOS; --packing bfd puts several "
        "examples in a block (best-fit-decreasing) with per-example position and segment ids. An interrupted run "
        "resumes where it stopped when rerun with the same arguments. Read the output with "
        "`from zhdata.pack import PackedDataset, collate_packed`.",
        epilog="examples:\n"
        "  zhdata pack clean/ --tokenizer tok/mixtral -o packed/pt --mode pt --block-size 1024\n"
        "  zhdata pack instruct/ --tokenizer tok/mixtral -o packed/sft --mode sft --packing bfd --block-size 4096\n"
        "  zhdata pack clean/ --tokenizer tok/mixtral -o packed/pt --mode pt --engine ray --ray-address auto\n"
        "  zhdata pack s3://bucket/clean --tokenizer tok/mixtral -o s3://bucket/packed/pt --mode pt\n"
        "  aws s3 cp --recursive s3://bucket/packed/pt packed/pt     # training memory-maps a local copy\n"
        "Into an object store, pieces are packed onto the store (OUT/.pack-work, resumable from any machine), "
        "assembled in a local\ntemporary folder (TMPDIR: disk for the packed output) and uploaded, manifest.json last.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="files or folders: Parquet shards (or JSONL) with a 'text' column (pt) "
                   "or 'system'/'messages' columns (sft)")
    p.add_argument("--tokenizer", required=True, metavar="TOK_DIR", help="Hugging Face tokenizer folder "
                   "(from `tokenizer convert` or `tokenizer extend`)")
    p.add_argument("-o", "--out", required=True, help="output folder, or an object-store URI (s3://bucket/prefix, gs://...)")
    p.add_argument("--mode", required=True, choices=("pt", "sft"), help="pt: pre-training text; sft: conversations")
    p.add_argument("--block-size", type=_block, default=1024, help="tokens per block (default 1024, as Chinese-Mixtral)")
    p.add_argument("--val-fraction", type=_fraction, default=0.01,
                   help="fraction of documents for validation, chosen by a stable hash of their content (default 0.01)")
    p.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None,
                   help="pt: put BOS before every document (default: as the tokenizer's add_bos_token)")
    p.add_argument("--packing", choices=("none", "bfd"), default="bfd",
                   help="sft: none = one example per block; bfd = best-fit-decreasing packing (default)")
    p.add_argument("--overlong", choices=("truncate", "drop"), default="truncate",
                   help="sft: conversations longer than --block-size are truncated (default) or dropped; both are counted")
    p.add_argument("--max-context", type=int, default=None,
                   help="the model's context length; a larger --block-size is refused (default: the tokenizer's model_max_length)")
    p.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                   help="bad records (malformed, no assistant turn, ...) and files of unknown format in input folders: "
                   "stop with an error (default) or skip and count them")
    add_read_options(p)
    p.add_argument("--workers", type=int, default=1, help="processes tokenising input pieces at once (default 1: the "
                   "tokenizer already uses every core); with --engine ray and no --ray-address, the CPUs of the local Ray")
    add_engine_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished pack in the output folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
