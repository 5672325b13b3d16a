"""`train run`: QLoRA training (NF4 base, experts included) for the original or the extended vocabulary."""

from __future__ import annotations

import argparse
import os
from contextlib import nullcontext

from zhdata.lock import output_lock

from .config import add_arguments, resolve

EPILOG = """examples:
  train run --model mixtral/ --data packed-pt/ --stage pt --vocab orig --max-steps 5 --output-dir out/
  train run --model mixtral/ --data packed-pt-ext/ --vocab ext --tokenizer tok-ext/ --embeddings new --output-dir out-ext/
  train run --config manifests/chinese-mixtral-pt.toml --model mixtral/ --data packed/ --output-dir out/ --lr 5e-5
  torchrun --nproc-per-node 2 -m train.cli run --config RUN.toml          (DDP: each GPU holds the whole model)
  torchrun --nproc-per-node 8 -m train.cli run --config RUN.toml --shard experts   (each GPU holds E/8 experts per layer)
  train run --config out/run.toml --resume auto                           (continue after a stop)

The setup summary (4-bit vs 16-bit bytes and trainable parameters per module type, checked against the
analytic count) is printed and stored in manifest.json; the run refuses to train when an expert weight is
not 4-bit or a LoRA target has no adapter. log.jsonl has lm_loss, aux_loss, lr, grad_norm, tokens/s and
characters/s per step."""


def run(args: argparse.Namespace) -> int:
    from .loop import train

    cfg = resolve(args)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with output_lock(cfg.output_dir) if rank0 else nullcontext():  # rank 0 writes the folder
        result = train(cfg, progress=not args.quiet)
    t = result["train"]
    if rank0:
        print(f"train run: {t['steps']}/{t['total_steps']} steps, {t['tokens']:,} tokens, last lm_loss "
              f"{(t['last'] or {}).get('lm_loss', float('nan')):.4f} -> {cfg.output_dir}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
