"""`train merge RUN_DIR -o MODEL_DIR`: a plain Hugging Face model with the run's LoRA (attention, each expert's
w1/w2/w3, router) and trained embedding rows merged in, streamed shard by shard: each base shard is read one
tensor at a time, its NF4-as-trained weights get their LoRA update, and the shard is written under the same
name with the same keys (the Hub's per-expert layout stays per-expert). Host memory is about one shard, not
the model. The output loads with `AutoModelForCausalLM.from_pretrained` and has the run's vocabulary and
tokenizer. bf16 output (default) rounds the merged weights: see README for what that costs; fp32 is exact."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from zhdata.lock import locked_output
from zhdata.manifest import Manifest, read_manifest

DTYPES = ("bf16", "fp16", "fp32")


def merge(run_dir: Path, out_dir: Path, dtype: str = "bf16", progress: bool = True) -> dict:
    import torch

    from tokenizer.folder import copy_tokenizer_files

    from .merging import merge_checkpoint
    from .model import ADAPTER_DIR, TOKENIZER_DIR

    t0 = time.time()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    manifest = Manifest("train merge", {"run_dir": str(run_dir), "out_dir": str(out_dir), "dtype": dtype})
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    stats = merge_checkpoint(run_dir, out_dir, torch_dtype, progress=progress)
    copy_tokenizer_files(run_dir / TOKENIZER_DIR, out_dir)
    manifest.add_inputs(sorted((run_dir / ADAPTER_DIR).glob("*.safetensors")))
    try:
        manifest.extra["run"] = {k: read_manifest(run_dir).get(k) for k in ("params", "tokenizer", "train")}
    except FileNotFoundError:
        manifest.warnings.append(f"{run_dir} has no manifest.json")
    manifest.extra["model"] = {**stats, "dtype": dtype, "merge_s": round(time.time() - t0, 3)}
    manifest.write(out_dir)
    return manifest.to_dict()


@locked_output("output")
def run(args: argparse.Namespace) -> int:
    m = merge(Path(args.run_dir), Path(args.output), args.dtype, progress=not args.quiet)
    print(f"train merge: {m['model']['parameters']:,} "
          f"parameters, vocab {m['model']['vocab_size']:,} -> {args.output}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", description=__doc__,
                       epilog="examples:\n  train merge runs/zh-pt -o models/zh-pt-merged\n"
                              "  train merge runs/zh-pt -o models/zh-pt-fp32 --dtype fp32   # exact, twice the size",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="output folder of `train run`")
    p.add_argument("-o", "--output", required=True, help="folder for the merged model (config, safetensors, tokenizer)")
    p.add_argument("--dtype", choices=DTYPES, default="bf16", help="dtype of the saved weights (default bf16)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
