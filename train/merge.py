"""`train merge RUN_DIR -o MODEL_DIR`: dequantize the NF4 base, merge LoRA (attention, experts, router) and the
trained embedding rows, and save a plain Hugging Face model (with the run's vocabulary and tokenizer)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from zhdata.lock import locked_output
from zhdata.manifest import Manifest, read_manifest

from .loop import _copy_tokenizer
from .model import ADAPTER_DIR, TOKENIZER_DIR, merge_to_plain

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def merge(run_dir: Path, out_dir: Path, dtype: str = "bf16", progress: bool = True) -> dict:
    t0 = time.time()
    manifest = Manifest("train merge", {"run_dir": str(run_dir), "out_dir": str(out_dir), "dtype": dtype})
    model, _ = merge_to_plain(run_dir, DTYPES[dtype], progress=progress)
    model.save_pretrained(out_dir)
    _copy_tokenizer(run_dir / TOKENIZER_DIR, out_dir)
    manifest.add_inputs(sorted((run_dir / ADAPTER_DIR).glob("*.safetensors")))
    try:
        manifest.extra["run"] = {k: read_manifest(run_dir).get(k) for k in ("params", "tokenizer", "train")}
    except FileNotFoundError:
        manifest.warnings.append(f"{run_dir} has no manifest.json")
    manifest.extra["model"] = {"vocab_size": model.config.vocab_size, "dtype": dtype,
                               "parameters": sum(p.numel() for p in model.parameters()),
                               "merge_s": round(time.time() - t0, 3)}
    manifest.write(out_dir)
    return manifest.to_dict()


@locked_output("output")
def run(args: argparse.Namespace) -> int:
    m = merge(Path(args.run_dir), Path(args.output), args.dtype, progress=not args.quiet)
    print(f"train merge: {m['model']['parameters']:,} "
          f"parameters, vocab {m['model']['vocab_size']:,} -> {args.output}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge a `train run` folder into a plain Hugging Face model", description=__doc__,
                       epilog="example:\n  train merge runs/zh-pt -o models/zh-pt-merged --dtype bf16",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="output folder of `train run`")
    p.add_argument("-o", "--output", required=True, help="folder for the merged model (config, safetensors, tokenizer)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of the saved weights (default bf16)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
