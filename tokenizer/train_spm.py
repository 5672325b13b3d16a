"""`tokenizer train`: a SentencePiece BPE model of Chinese text, set up like Mixtral's tokenizer.

Same conventions as the base so its pieces can be merged into it: identity normaliser (no NFKC), dummy
prefix, whitespace kept as is, byte fallback, digits split, pieces of at most 16 characters.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable

import sentencepiece as spm
from tqdm import tqdm

from zhdata.errors import ErrorPolicy, InputError
from zhdata.lock import locked_output
from zhdata.documents import iter_documents
from zhdata.manifest import Manifest, cli_params
from zhdata.pack.tokfolder import load_tokenizer_folder
from zhdata.readers import ReadOptions, add_read_options, expand_inputs, read_options

from .convert import write_hf_folder
from .corpus import HAN_RE
from .spm import MODEL_FILE, load_proto

MAX_LINE = 4000  # characters; SentencePiece drops longer sentences, so long lines are cut at sentence ends
MIN_HAN_SHARE = 0.05
MIN_HAN_CHARS = 100


def _cut(line: str) -> Iterable[str]:
    """Cut a long line after sentence-final punctuation (or hard, as a last resort) into pieces under MAX_LINE."""
    while len(line) > MAX_LINE:
        head = line[:MAX_LINE]
        k = max(head.rfind(c) for c in "。！？；.!?;")
        k = k + 1 if k > MAX_LINE // 4 else MAX_LINE
        yield line[:k]
        line = line[k:]
    if line.strip():
        yield line


def write_training_text(paths: list[str | Path], dest: Path, field: str = "text", max_chars: int | None = None,
                        policy: ErrorPolicy | None = None, manifest: Manifest | None = None,
                        read: ReadOptions | None = None) -> dict:
    """One sentence per line for the SentencePiece trainer; checks that the text is Chinese."""
    policy = policy or ErrorPolicy("stop")
    files = expand_inputs(paths, policy=policy)
    if manifest is not None:
        manifest.add_inputs(files)
        manifest.warnings.extend(policy.skipped_files)
    chars = han = lines = records = 0
    with open(dest, "w", encoding="utf-8") as out, tqdm(desc="reading corpus", unit="char", unit_scale=True) as bar:
        for f in files:
            mark, used = policy.skipped.copy(), 0
            for _, text, _ in iter_documents(f, field, policy, read):
                used += 1
                for raw in text.splitlines():
                    for line in _cut(raw):
                        out.write(line + "\n")
                        lines += 1
                chars += len(text)
                han += len(HAN_RE.findall(text))
                bar.update(len(text))
                if max_chars is not None and chars >= max_chars:
                    break
            dropped = policy.skipped - mark
            records += used + sum(dropped.values())
            if manifest is not None:  # bad records are counted here, per source, whatever the policy
                src = manifest.source(f.name)
                src.records_in += used + sum(dropped.values())
                src.records_out += used
                src.dropped.update(dropped)
            if max_chars is not None and chars >= max_chars:
                break
    where = ", ".join(map(str, paths))
    if chars == 0 or han < MIN_HAN_SHARE * chars:
        share = han / chars if chars else 0.0
        raise InputError(where, None, f"the corpus has almost no Chinese ({han:,} Han characters of {chars:,}, {share:.1%})",
                         "give Chinese text (a field other than 'text'? use --text-field)")
    if han < MIN_HAN_CHARS:
        raise InputError(where, None, f"the corpus is too small: {chars:,} characters, {han:,} of them Han "
                         f"({han / chars:.1%}); training needs at least {MIN_HAN_CHARS} Han characters", "give more text")
    if manifest is not None:
        for c in manifest.sources.values():
            manifest.counts.merge(c)
    return {"records": records, "chars": chars, "han_chars": han, "lines": lines}


def train_bpe(text_file: Path, prefix: Path, vocab_size: int, character_coverage: float = 0.9995,
              max_sentences: int = 2_000_000, threads: int | None = None, source: str = "corpus",
              hard_limit: bool = True) -> Path:
    """Train the SentencePiece BPE model `prefix`.model on `text_file`; return the model path."""
    try:
        spm.SentencePieceTrainer.train(
            input=str(text_file), model_prefix=str(prefix), model_type="bpe", vocab_size=vocab_size,
            character_coverage=character_coverage, byte_fallback=True, split_digits=True,
            normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, split_by_unicode_script=True, split_by_whitespace=True,
            split_by_number=True, max_sentencepiece_length=16, max_sentence_length=4 * MAX_LINE + 64,
            input_sentence_size=max_sentences, shuffle_input_sentence=True, hard_vocab_limit=hard_limit,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=threads or os.cpu_count() or 1,
            minloglevel=2, seed_sentencepiece_size=1_000_000,
        )
    except RuntimeError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = ("the corpus has more distinct characters than the vocabulary holds: raise --vocab-size or lower --character-coverage"
                if "required_chars" in msg else "the corpus may be too small for this vocabulary size: give more text or a smaller --vocab-size")
        raise InputError(source, None, f"SentencePiece training failed: {msg}", hint) from None
    return prefix.with_suffix(".model")


@locked_output("out")
def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    m = Manifest("tokenizer train", cli_params(args))
    policy = ErrorPolicy(args.on_error)
    t0 = time.time()
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        text = Path(tmp) / "train.txt"
        stats = write_training_text(args.corpus, text, args.text_field, args.max_chars, policy, m, read_options(args))
        print(f"training a {args.vocab_size:,}-piece BPE model on {stats['chars']:,} characters ...")
        model = train_bpe(text, Path(tmp) / "zh", args.vocab_size, args.character_coverage, args.max_sentences,
                          args.threads, source=", ".join(args.corpus))
        proto = load_proto(model)
    write_hf_folder(proto, out, source=model)
    m.extra["corpus"] = stats
    m.extra["train_seconds"] = round(time.time() - t0, 2)
    m.extra["tokenizer"] = load_tokenizer_folder(out).describe()
    m.write(out)
    print(f"wrote {out / MODEL_FILE} and its Hugging Face files ({len(proto.pieces):,} pieces)")
    return 0


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared by `train` and `extend` for training on a corpus."""
    p.add_argument("--text-field", default="text", help="field holding the text in JSON/Parquet records (default text)")
    p.add_argument("--max-chars", type=int, default=None, help="read at most this many characters of the corpus")
    p.add_argument("--max-sentences", type=int, default=2_000_000, help="lines SentencePiece samples for training (default 2M)")
    p.add_argument("--character-coverage", type=float, default=0.9995, help="share of characters the model covers (default 0.9995)")
    p.add_argument("--threads", type=int, default=None, help="training threads (default: all cores)")
    p.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                   help="bad records and files of unknown format in corpus folders: stop, or count and skip")
    add_read_options(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        description="Train a SentencePiece BPE model of Chinese text with Mixtral's conventions (identity normaliser, "
        "dummy prefix, whitespace kept, byte fallback, split digits), written as tokenizer.model plus a Hugging Face "
        "tokenizer folder. Its pieces, in merge order, are what `tokenizer extend --pieces` takes.",
        epilog="example: tokenizer train --corpus data/zh_clean --vocab-size 32000 -o tok/zh32k",
    )
    p.add_argument("--corpus", nargs="+", required=True, help="files or folders (JSONL/JSON/Parquet/txt, compressed or not)")
    p.add_argument("--vocab-size", type=int, required=True, help="number of pieces")
    p.add_argument("-o", "--out", required=True, help="output folder")
    add_common(p)
