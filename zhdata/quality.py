"""Model-based quality score: a fastText classifier trained by `zhdata quality train` on a reference corpus the
user names (positive: e.g. laws and encyclopedia text; negative: filtered-out web text), scored by
`zhdata clean --quality-model` as the `quality` column and the `--min-quality` filter.

fastText (`fasttext-numpy2-wheel`, the `quality` extra: a manylinux wheel, nothing compiled) is the field's
classifier for this (ChineseWebText, DCLM, FineWeb-2's filters); KenLM perplexity was the other candidate, but
PyPI has no KenLM wheel and training an n-gram model needs its `lmplz` binary. Chinese has no spaces, so the
text is cut into tokens first (`tokens`): every character is a token and each run of white space one more,
`▁`; `--word-ngrams 2` adds character bigrams, which is what tells real text from shuffled text with the same
characters. (ASCII words kept whole cost a regular expression per character: 2.2x slower, no better on the
benchmark's held-out sets; BENCHMARKS.md.) `quality` is the model's probability of the positive
class. Training streams: documents are tokenised a batch at a time into bucket files on disk, each bucket
shuffled in memory (fastText's SGD wants the classes mixed), the larger class thinned to the size of the
smaller (`balance`, counted), and a held-out share is kept back to measure the model (AUC, accuracy) into its
manifest.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from tqdm import tqdm

from .errors import ErrorPolicy, InputError
from .lock import locked_output
from .manifest import Counts, Manifest, file_sha256
from .readers import ReadOptions, add_read_options, expand_inputs, plan_pieces, read_options
from .documents import iter_documents
from .shards import check_output_folder, run_inputs

if TYPE_CHECKING:  # numpy and polars are imported where used, so that `--help` loads neither (tests/test_cli.py)
    import numpy as np
    import polars as pl

MODEL_FILE = "quality.bin"
SPACE = "\u2581"  # stands for a run of white space (line breaks included) among the character tokens
LABELS = {"positive": "__label__pos", "negative": "__label__neg"}
BUCKET_BYTES = 128 << 20  # tokenised text per shuffle bucket, held in memory once each
BATCH = 10_000
MAX_VALID = 20_000  # held-out documents per class, kept in memory to score
_MODELS: dict[str, Any] = {}  # one loaded model per process and file


def tokens(texts: pl.Series) -> list[str]:
    """fastText input lines: every character a token (lower-cased), each run of white space one `▁` token."""
    import polars as pl

    flat = texts.cast(pl.String).str.to_lowercase().str.replace_all(r"\s+", SPACE).str.strip_chars(SPACE)
    return [" ".join(t) if t else SPACE for t in flat.to_list()]


def _fasttext() -> Any:
    try:
        import fasttext
    except ImportError:
        raise InputError("(command line)", None, "the quality model needs fastText, which is not installed",
                         "pip install 'zh-adapt[quality]'") from None
    if not hasattr(fasttext, "train_supervised"):  # fasttext-predict installs a `fasttext` that only predicts
        raise InputError("(command line)", None, f"the installed `fasttext` ({fasttext.__file__}) cannot train "
                         "(fasttext-predict?)", "pip uninstall fasttext-predict; pip install 'zh-adapt[quality]'")
    return fasttext


def model_file(path: str | Path) -> Path:
    """The model file of `path`: the file itself, or `quality.bin` in a `zhdata quality train` output folder."""
    p = Path(path)
    f = p / MODEL_FILE if p.is_dir() else p
    if not f.is_file():
        raise InputError(path, None, "no quality model here", "give the output folder of `zhdata quality train` or its quality.bin")
    return f


def load_model(path: str | Path) -> Any:
    key = str(Path(path).resolve())
    if key not in _MODELS:
        ft = _fasttext()
        try:
            model = ft.load_model(key)
        except ValueError as e:  # fastText's own message: not a model file, or a version it cannot read
            raise InputError(path, None, f"not a fastText model: {e}") from None
        if set(model.get_labels()) != set(LABELS.values()):
            raise InputError(path, None, f"not a zhdata quality model (labels {model.get_labels()})",
                             "train one with `zhdata quality train`")
        _MODELS[key] = model
    return _MODELS[key]


def score_tokens(model: Any, lines: list[str]) -> np.ndarray:
    """Probability of the positive class for each tokenised line."""
    import numpy as np

    labels, probs = model.predict(lines, k=2)
    pos = LABELS["positive"]
    return np.array([p[0] if ls[0] == pos else p[1] for ls, p in zip(labels, probs)], dtype=np.float64).clip(0.0, 1.0)


@dataclass(frozen=True)
class Quality:
    """`zhdata clean --quality-model PATH [--min-quality X]`: score every document, drop below X as low_quality."""

    model: str | None = None  # the model file (resolved by `model_file`)
    min_score: float = 0.0
    sha256: str = ""  # of the model file: another model is another run

    @classmethod
    def from_path(cls, path: str | None, min_score: float = 0.0) -> "Quality":
        if path is None:
            if min_score:
                raise InputError("(command line)", None, "--min-quality needs --quality-model")
            return cls()
        f = model_file(path)
        load_model(f)  # a bad model file is refused before any work starts
        return cls(str(f.resolve()), min_score, file_sha256(f))

    def params(self) -> dict:
        return {"model": self.model, "sha256": self.sha256, "min_score": self.min_score}

    def score(self, texts: pl.Series) -> pl.Series:
        import polars as pl

        lines = tokens(texts)
        return pl.Series("quality", score_tokens(load_model(self.model), lines), dtype=pl.Float64)

    def reasons(self, scores: pl.Series) -> pl.Series:
        """`low_quality` where the score is under `min_score`, else null."""
        import polars as pl

        return pl.select(pl.when(scores < self.min_score).then(pl.lit("low_quality"))
                         .otherwise(pl.lit(None, dtype=pl.String))).to_series().rename("reason")

    def where(self) -> str:
        return f"quality >= {self.min_score!r}" if self.model and self.min_score else ""


# ---- training -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainOptions:
    dim: int = 32
    epoch: int = 5
    lr: float = 0.5
    word_ngrams: int = 2
    min_count: int = 2
    bucket: int = 400_000  # hashed n-gram rows: the model holds (vocabulary + bucket) x dim floats
    valid_frac: float = 0.1
    balance: bool = True
    threads: int = 1
    seed: int = 0
    text_field: str = "text"
    fmt: str | None = None
    on_error: str = "stop"
    read: ReadOptions = ReadOptions()

    def fasttext_args(self) -> dict[str, Any]:
        return {"dim": self.dim, "epoch": self.epoch, "lr": self.lr, "wordNgrams": self.word_ngrams,
                "minCount": self.min_count, "bucket": self.bucket, "thread": self.threads, "seed": self.seed}


def _class_lines(files: list[Path], opts: TrainOptions, policy: ErrorPolicy) -> Iterator[list[str]]:
    """Tokenised documents of `files`, a batch at a time."""
    import polars as pl

    batch: list[str] = []
    for piece in plan_pieces(files, opts.fmt, 64 << 20, opts.read):
        for _, text, _ in iter_documents(piece, opts.text_field, policy, opts.read):
            batch.append(text)
            if len(batch) >= BATCH:
                yield tokens(pl.Series(batch, dtype=pl.String))
                batch = []
    if batch:
        yield tokens(pl.Series(batch, dtype=pl.String))


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half): the Mann-Whitney U statistic."""
    import numpy as np

    if not len(pos) or not len(neg):
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    # average ranks over ties
    uniq, first, counts = np.unique(sv, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def validation_report(model: Any, valid: dict[str, list[str]]) -> dict[str, Any]:
    """Held-out AUC, accuracy at 0.5 and score quantiles per class."""
    import numpy as np

    s = {k: score_tokens(model, v) if v else np.zeros(0) for k, v in valid.items()}
    out: dict[str, Any] = {"documents": {k: len(v) for k, v in valid.items()}}
    if len(s["positive"]) and len(s["negative"]):
        out["auc"] = round(_auc(s["positive"], s["negative"]), 4)
        right = int((s["positive"] >= 0.5).sum() + (s["negative"] < 0.5).sum())
        out["accuracy_at_0.5"] = round(right / (len(s["positive"]) + len(s["negative"])), 4)
    for k, v in s.items():
        if len(v):
            out[f"{k}_score_quantiles_10_50_90"] = [round(float(q), 4) for q in np.quantile(v, [0.1, 0.5, 0.9])]
    return out


def _train_process(train_file: str, args: dict[str, Any], model_out: str) -> None:
    """fastText training, in a fresh process: in one that has trained before, fastText 0.9.2 can end a second
    training on the same data with "Encountered NaN" (seen in the test suite); a new process never did."""
    _fasttext().train_supervised(train_file, **args).save_model(model_out)


def run_train(positive: list[str | Path], negative: list[str | Path], out_dir: str | Path, opts: TrainOptions,
              progress: bool = True) -> Manifest:
    """Train the quality classifier into `out_dir/quality.bin` with its manifest."""
    _fasttext()  # installed, and able to train, before any work
    out = Path(out_dir)
    check_output_folder(out, [*positive, *negative])
    policy = ErrorPolicy(opts.on_error)
    files = {k: expand_inputs(list(v), opts.fmt, policy) for k, v in (("positive", positive), ("negative", negative))}
    for k, fs in files.items():
        if not fs:
            raise InputError("(command line)", None, f"no {k} input files found")
    described, identity = run_inputs([*files["positive"], *files["negative"]])
    params = {"positive": [str(p) for p in files["positive"]], "negative": [str(p) for p in files["negative"]],
              "inputs": identity, "fasttext": opts.fasttext_args(), "valid_frac": opts.valid_frac,
              "balance": opts.balance, "text_field": opts.text_field, "format": opts.fmt, "on_error": opts.on_error,
              "tokens": "characters, lower-cased; white space runs as one \u2581", **opts.read.params()}
    manifest = Manifest("zhdata quality train", params)
    manifest.inputs.extend(described)
    manifest.warnings.extend(policy.skipped_files)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".train"
    work.mkdir(exist_ok=True)
    size = sum(f.stat().st_size for fs in files.values() for f in fs)
    nb = max(1, math.ceil(size * 1.4 / BUCKET_BYTES))  # tokenised text is about 1.3x the UTF-8 input
    rng = random.Random(opts.seed)
    buckets = [open(work / f"bucket-{i:04d}.txt", "w", encoding="utf-8") for i in range(nb)]
    valid: dict[str, list[str]] = {"positive": [], "negative": []}
    n_train = {"positive": 0, "negative": 0}
    try:
        for k in ("positive", "negative"):
            before = Counter(policy.skipped)
            read = 0
            bar = tqdm(desc=f"read {k}", unit=" docs", disable=not progress)
            for lines in _class_lines(files[k], opts, policy):
                read += len(lines)
                bar.update(len(lines))
                for line in lines:
                    if len(valid[k]) < MAX_VALID and rng.random() < opts.valid_frac:
                        valid[k].append(line)
                    else:
                        n_train[k] += 1
                        buckets[rng.randrange(nb)].write(f"{LABELS[k]} {line}\n")
            bar.close()
            if read == 0:
                raise InputError("(command line)", None, f"the {k} inputs hold no documents")
            src = manifest.source(k)
            src.dropped.update(policy.skipped - before)  # bad records (--on-error skip) and empty texts
            src.records_in = read + sum(src.dropped.values())
    finally:
        for b in buckets:
            b.close()
    # thin the larger class to the smaller one's size, shuffle each bucket, concatenate
    keep = {k: 1.0 for k in n_train}
    if opts.balance:
        small = min(n_train.values())
        keep = {k: small / n for k, n in n_train.items()}
    kept = {k: 0 for k in n_train}
    train_file = work / "train.txt"
    with open(train_file, "w", encoding="utf-8") as tf:
        for i in range(nb):
            bf = work / f"bucket-{i:04d}.txt"
            lines = bf.read_text(encoding="utf-8").split("\n")[:-1]  # not splitlines: \x1c or U+2028 stay in a line
            rng.shuffle(lines)
            for line in lines:
                k = "positive" if line.startswith(LABELS["positive"] + " ") else "negative"
                if keep[k] >= 1.0 or rng.random() < keep[k]:
                    kept[k] += 1
                    tf.write(line + "\n")
            bf.unlink()
    for k in n_train:
        src = manifest.source(k)
        src.records_out = kept[k] + len(valid[k])
        if n_train[k] - kept[k]:
            src.dropped["balance"] = n_train[k] - kept[k]
        manifest.counts.merge(src)
    tmp = out / (MODEL_FILE + ".tmp")
    args = {"verbose": 2 if progress else 0, **opts.fasttext_args()}
    with mp.get_context("spawn").Pool(1) as pool:
        try:
            pool.apply(_train_process, (str(train_file), args, str(tmp)))
        except RuntimeError as e:  # fastText's "Encountered NaN": training diverged
            raise InputError("(command line)", None, f"fastText training failed: {e}", "lower --lr") from None
    os.replace(tmp, out / MODEL_FILE)
    _MODELS.pop(str((out / MODEL_FILE).resolve()), None)
    model = load_model(out / MODEL_FILE)
    train_file.unlink()
    work.rmdir()
    manifest.extra["training_documents"] = kept
    manifest.extra["validation"] = validation_report(model, valid)
    manifest.extra["model"] = {"file": MODEL_FILE, "bytes": (out / MODEL_FILE).stat().st_size,
                               "words": len(model.words), "labels": LABELS}
    manifest.write(out)
    return manifest


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quality", help="train the model behind `zhdata clean --quality-model`",
                       description="Model-based quality score for `zhdata clean`.")
    s = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = s.add_parser(
        "train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a fastText classifier that tells reference text (--positive: e.g. laws, encyclopedia\n"
        "articles, textbooks) from text you do not want (--negative: e.g. web pages that `zhdata clean` dropped, spam,\n"
        "boilerplate). `zhdata clean --quality-model OUT` then scores every document (the `quality` column, the\n"
        "probability of the positive class) and --min-quality drops the low ones. Train on text cleaned the same way\n"
        "as the text you will score (the outputs of `zhdata clean`, same --convert), so the model sees what it scores.\n"
        "The larger class is thinned to the size of the smaller (counted as `balance`); a held-out share measures the\n"
        "model (AUC, accuracy) into manifest.json. Needs the `quality` extra: pip install 'zh-adapt[quality]'.\n\n"
        "examples:\n"
        "  zhdata clean laws.jsonl wiki/ -o out/ref                       # the reference text, cleaned\n"
        "  zhdata clean web/ -o out/web-signals --signals-only\n"
        "  zhdata filter out/web-signals --where \"reason IS NOT NULL\" -o out/web-dropped\n"
        "  zhdata quality train --positive out/ref --negative out/web-dropped -o models/quality\n"
        "  zhdata clean web/ -o out/signals --signals-only --quality-model models/quality\n"
        "  zhdata filter out/signals --where \"quality > 0.5 and chinese_ratio > 0.6\" -o out/kept")
    t.add_argument("--positive", nargs="+", required=True, metavar="INPUT", help="files or folders of reference text")
    t.add_argument("--negative", nargs="+", required=True, metavar="INPUT", help="files or folders of unwanted text")
    t.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for quality.bin and manifest.json")
    g = t.add_argument_group("input")
    g.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    g.add_argument("--format", choices=["jsonl", "json", "parquet", "txt"], help="override format detection by file name")
    g.add_argument("--on-error", choices=["stop", "skip"], default="stop", help="bad records: stop (default) or count and skip")
    add_read_options(g)
    d = TrainOptions()
    g = t.add_argument_group("model (fastText supervised)")
    g.add_argument("--dim", type=int, default=d.dim, help=f"vector size (default {d.dim})")
    g.add_argument("--epoch", type=int, default=d.epoch, help=f"passes over the data (default {d.epoch})")
    g.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    g.add_argument("--word-ngrams", type=int, default=d.word_ngrams, help=f"token n-grams, 2 = character bigrams (default {d.word_ngrams})")
    g.add_argument("--min-count", type=int, default=d.min_count, help=f"rarer tokens are left out (default {d.min_count})")
    g.add_argument("--bucket", type=int, default=d.bucket, help=f"hashed n-gram rows; model size is about (bucket + tokens) x dim x 4 bytes (default {d.bucket:,})")
    g.add_argument("--valid-frac", type=float, default=d.valid_frac, help=f"share of documents held out to measure the model (default {d.valid_frac})")
    g.add_argument("--no-balance", action="store_true", help="keep every document of the larger class")
    g.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="training threads (default: all cores; 1 = reproducible)")
    g.add_argument("--seed", type=int, default=d.seed, help=f"seed of the split, the shuffle and fastText (default {d.seed})")
    t.add_argument("--no-progress", action="store_true", help="no progress output")


@locked_output("output")
def run(a: argparse.Namespace) -> int:
    if not 0 <= a.valid_frac < 1 or min(a.dim, a.epoch, a.word_ngrams, a.min_count, a.bucket, a.threads) < 1 or a.lr <= 0:
        raise InputError("(command line)", None, "--valid-frac must be in [0, 1); --dim, --epoch, --word-ngrams, "
                         "--min-count, --bucket and --threads at least 1; --lr above 0")
    opts = TrainOptions(a.dim, a.epoch, a.lr, a.word_ngrams, a.min_count, a.bucket, a.valid_frac, not a.no_balance,
                        a.threads, a.seed, a.text_field, a.format, a.on_error, read_options(a))
    m = run_train(a.positive, a.negative, a.output, opts, progress=not a.no_progress)
    v = m.extra["validation"]
    held = f"held-out AUC {v['auc']:.4f}, accuracy {v['accuracy_at_0.5']:.4f}" if "auc" in v else "no held-out documents"
    print(f"trained on {m.extra['training_documents']['positive']:,} positive and "
          f"{m.extra['training_documents']['negative']:,} negative documents; {held}; wrote {a.output}")
    return 0
