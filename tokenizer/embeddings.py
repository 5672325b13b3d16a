"""Resize `embed_tokens`/`lm_head` for an extended tokenizer and initialise the new rows.

`mean` (default): each new piece's row is the mean of the base model's rows for the ids the *base*
tokenizer gives that piece's text: encoded without BOS and without the dummy prefix, so a piece "国家"
averages "国" and "家" and only a piece that really starts with "▁" includes a "▁" id.
`mean-resizing`: transformers' sampling around the mean and covariance of the old rows.
`random`: transformers' normal(0, initializer_range).
Rows beyond the tokenizer (padding up to a multiple of `multiple_of`) get the mean of all old rows.
Only the two embedding matrices are touched, so the rest of the model may be 4-bit.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as pb
from tqdm import tqdm

from zhdata.errors import InputError
from zhdata.lock import locked_output
from zhdata.manifest import Manifest, cli_params
from zhdata.pack.tokfolder import load_tokenizer_folder

from .folder import copy_tokenizer_files
from .spm import NORMAL, SPACE, USER_DEFINED, load_proto, model_path, processor

INITS = ("mean", "mean-resizing", "random")


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


def check_extension(base: pb.ModelProto, new: pb.ModelProto, base_src: object, new_src: object) -> None:
    """`new` must keep every base piece at its id."""
    if len(new.pieces) < len(base.pieces):
        raise InputError(new_src, None, f"has {len(new.pieces):,} pieces, fewer than the base's {len(base.pieces):,}",
                         "give the extended tokenizer with --tokenizer and the original one as the base")
    for i, (a, b) in enumerate(zip(base.pieces, new.pieces)):
        if a.piece != b.piece:
            raise InputError(new_src, f"id {i}", f"piece {b.piece!r} differs from the base's {a.piece!r} ({base_src})",
                             "the new tokenizer is not an extension of this base; ids must be kept")


def base_ids_of_new_pieces(base: pb.ModelProto, new: pb.ModelProto) -> list[list[int] | None]:
    """For every piece past the base: the base ids of its text, or None (control/byte pieces have no text)."""
    plain = pb.ModelProto()
    plain.CopyFrom(base)
    plain.normalizer_spec.add_dummy_prefix = False  # no stray "▁" before pieces that do not start with one
    sp = processor(plain)
    out: list[list[int] | None] = []
    for p in new.pieces[len(base.pieces):]:
        if p.type in (NORMAL, USER_DEFINED) and p.piece:
            out.append(sp.encode(p.piece.replace(SPACE, " ")))
        else:
            out.append(None)
    return out


def _is_plain_matrix(module: torch.nn.Module) -> bool:
    import torch

    w = getattr(module, "weight", None)
    return isinstance(w, torch.Tensor) and w.dtype.is_floating_point and type(w) in (torch.Tensor, torch.nn.Parameter)


def resize_and_init(model, base_tokenizer: str | Path, new_tokenizer: str | Path, init: str = "mean",
                    multiple_of: int = 64) -> dict:
    """Resize the model's input/output embeddings to the new tokenizer and initialise the new rows (see module doc)."""
    import torch

    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, not {init!r}")
    base, new = load_proto(base_tokenizer), load_proto(new_tokenizer)
    check_extension(base, new, model_path(base_tokenizer), model_path(new_tokenizer))
    n_base, n_new = len(base.pieces), len(new.pieces)
    emb_in = model.get_input_embeddings()
    old_rows = emb_in.weight.shape[0]
    where = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    if old_rows < n_base:
        raise InputError(where, None, f"embedding has {old_rows:,} rows but the base tokenizer has {n_base:,} pieces",
                         "this model was not trained with this base tokenizer; pass the tokenizer the model was trained with")
    if old_rows >= n_new:
        raise InputError(where, None, f"embedding already has {old_rows:,} rows for the new tokenizer's {n_new:,} pieces",
                         "it was resized before; load it as it is instead of initialising again")
    out_emb = model.get_output_embeddings()
    for name, mod in (("embed_tokens", emb_in), ("lm_head", out_emb)):
        if mod is not None and not _is_plain_matrix(mod):
            raise InputError(where, None, f"{name} is quantized ({type(mod).__name__})",
                             "load the model with llm_int8_skip_modules=['lm_head'] (embeddings are never quantized) so these rows can be trained")
    tied = out_emb is not None and out_emb.weight is emb_in.weight
    target = round_up(n_new, multiple_of)
    # only the base rows were trained; rows a padded base embedding has past them are initialised like new ones
    old_in = emb_in.weight.detach()[:n_base].clone()
    old_out = None if out_emb is None or tied else out_emb.weight.detach()[:n_base].clone()
    model.resize_token_embeddings(target, mean_resizing=(init == "mean-resizing"))
    summary = {"method": init, "old_rows": old_rows, "base_vocab": n_base, "new_vocab": n_new, "new_rows": target,
               "multiple_of": multiple_of, "tied": tied, "rows_initialised": n_new - n_base, "padding_rows": target - n_new}
    if init != "mean":
        return summary
    ids = base_ids_of_new_pieces(base, new)
    fallback = 0
    with torch.no_grad():
        mats = [(model.get_input_embeddings().weight, old_in)]
        if old_out is not None:
            mats.append((model.get_output_embeddings().weight, old_out))
        for weight, old in mats:
            weight[n_new:] = old.float().mean(0).to(weight.dtype)
            for k, row_ids in enumerate(ids):
                row = n_base + k
                if row_ids:
                    weight[row] = old[row_ids].float().mean(0).to(weight.dtype)
                else:
                    weight[row] = old.float().mean(0).to(weight.dtype)
                    fallback += 1
    summary["rows_without_text"] = fallback // len(mats)
    return summary


@locked_output("out")
def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    model_dir, tok_dir, out = Path(args.model), Path(args.tokenizer), Path(args.out)
    base_tok = Path(args.base_tokenizer) if args.base_tokenizer else model_dir
    m = Manifest("tokenizer init-embeddings", cli_params(args))
    m.add_inputs([model_path(base_tok), model_path(tok_dir)])
    if not model_dir.is_dir():
        raise InputError(model_dir, None, "model folder does not exist", "give the folder save_pretrained wrote")
    if not (model_dir / "config.json").exists():
        raise InputError(model_dir, None, "no config.json: not a Hugging Face model folder", "give the folder save_pretrained wrote")
    tok_info = load_tokenizer_folder(tok_dir).describe()  # checked before any work: it is copied at the end
    t0 = time.time()
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    with tqdm(total=3, desc="init-embeddings", unit="step") as bar:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        bar.update()
        summary = resize_and_init(model, base_tok, tok_dir, init=args.init, multiple_of=args.multiple_of)
        bar.update()
        model.save_pretrained(out)
        copy_tokenizer_files(tok_dir, out)
        bar.update()
    m.extra["embeddings"] = summary
    m.extra["tokenizer"] = tok_info
    m.extra["seconds"] = round(time.time() - t0, 2)
    m.write(out)
    print(f"{summary['rows_initialised']:,} new rows ({args.init}), embeddings {summary['old_rows']:,} → {summary['new_rows']:,}; wrote {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init-embeddings",
        description="Resize embed_tokens and lm_head of a Hugging Face causal LM to an extended tokenizer (rounded up to "
        "--multiple-of) and initialise every new row: 'mean' = mean of the base rows of the base tokenizer's ids for "
        "the piece's text (no BOS, no stray dummy-prefix piece); 'mean-resizing' = transformers' sampling around the "
        "old mean; 'random' = normal(0, initializer_range). Writes the model and the tokenizer to OUT_DIR.",
        epilog="example: tokenizer init-embeddings --model models/tiny-mixtral --tokenizer tok/ext20k -o models/tiny-mixtral-ext",
    )
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--tokenizer", required=True, help="extended tokenizer folder (from `tokenizer extend`)")
    p.add_argument("--base-tokenizer", help="tokenizer the model was trained with (default: the model folder's tokenizer.model)")
    p.add_argument("-o", "--out", required=True, help="output model folder")
    p.add_argument("--init", choices=INITS, default="mean", help="how to initialise new rows (default mean)")
    p.add_argument("--multiple-of", type=int, default=64, help="round the embedding rows up to a multiple of this (default 64)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help="load dtype (default auto)")
