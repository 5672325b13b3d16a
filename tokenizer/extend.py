"""`tokenizer extend`: add exactly N Chinese pieces to a base SentencePiece BPE vocabulary, losslessly.

Order and priority (deliberate choices): the CJK characters the Chinese model covers and the base lacks
come first, most frequent first (each saves 2-3 byte-fallback tokens wherever it occurs), then
multi-character pieces in the Chinese BPE model's own merge order (`--order merge` skips the
characters-first step). New pieces get scores *below every base piece*, in that order. SentencePiece BPE merges the best-scored adjacent pair
first, so every base merge happens before any new one: text the base handled keeps its base merges and
only then do Chinese pieces join. Consequences, by construction:
- ids 0..V-1 and their pieces, scores and types are unchanged; new pieces get ids V..V+N-1;
- every new piece contains a CJK character, so text with no CJK encodes to exactly the base's ids;
- a piece is taken only if it splits into two pieces already in the merged vocabulary (its missing
  CJK characters are added first), and after every build each new piece is encoded from its own text;
  pieces the encoder does not produce are dropped and replaced by the next candidates until all N are
  reachable.
The common alternative (Chinese-LLaMA's merge script) appends pieces with score 0, above every base
merge, which changes encodings the base had and leaves pieces the encoder never produces;
`--priority score0` writes that variant of the same pieces, for comparison (`tokenizer report`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from sentencepiece import sentencepiece_model_pb2 as pb
from tqdm import tqdm

from zhdata.errors import ErrorPolicy, InputError
from zhdata.lock import locked_output
from zhdata.manifest import Manifest, file_sha256
from zhdata.pack.tokfolder import load_tokenizer_folder
from zhdata.readers import ReadOptions, read_options

from .convert import write_hf_folder
from .corpus import CJK_RE, has_cjk, sample_texts
from .parity import compare
from .reach import unreachable
from .spm import NORMAL, load_proto, model_path, processor
from .train_spm import add_common, train_bpe, write_training_text

PRIORITIES = ("after-base", "score0")
MAX_PIECE_CHARS = 16
MAX_ROUNDS = 50
# Non-CJK probes for the identity check (English, code, digits, URLs, whitespace); the corpus adds its own.
NON_CJK_PROBES = [
    "The quick brown fox jumps over the lazy dog. It's 3.14159, isn't it?",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\tindented",
    "https://example.com/path?q=1&lang=en-US#frag  user@example.org",
    "Ünïcödé façade naïve — “quotes” … 1,234,567.89 €",
    "   leading and trailing   ", "",
]
# Chinese probes for the round-trip and parity checks: whitespace runs, emoji, characters needing byte fallback.
ZH_PROBES = ["  两个空格  和\t制表符\n\n换行", "表情😀👩‍👩‍👧与生僻字𠀀𪚥龘", "中文English混合123,456.7元 https://例子.中国/路径",
             "\u3000全角空格，全角标点：“引号”（括号）", "繁體中文與简体中文混排"]


@dataclass
class Selection:
    """The outcome of choosing pieces: pieces in id order and why candidates were passed over."""

    pieces: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    dropped_unreachable: list[str] = field(default_factory=list)
    rounds: int = 0


ORDERS = ("chars-first", "merge")


def candidates(source: pb.ModelProto, order: str = "chars-first") -> list[str]:
    """Normal pieces of a model in its merge order (best score first, id breaks ties), CJK characters first.

    SentencePiece BPE lists single characters after all merges, by decreasing frequency.
    """
    ids = sorted((i for i, p in enumerate(source.pieces) if p.type == NORMAL), key=lambda i: (-source.pieces[i].score, i))
    pieces = [source.pieces[i].piece for i in ids]
    if order == "merge":
        return pieces
    chars = [p for p in pieces if len(p) == 1 and CJK_RE.match(p)]
    return chars + [p for p in pieces if not (len(p) == 1 and CJK_RE.match(p))]


def scores_below(floor: float, n: int) -> list[float]:
    """`n` strictly decreasing float32 scores below `floor` (a float32 step can exceed 1 near -1e9)."""
    out, s = [], np.float32(floor)
    for _ in range(n):
        s = np.nextafter(s, np.float32(-np.inf), dtype=np.float32)
        out.append(float(s))
    return out


def build(base: pb.ModelProto, pieces: list[str], priority: str = "after-base") -> pb.ModelProto:
    """The base model with `pieces` appended (ids follow), scored per `priority`."""
    proto = pb.ModelProto()
    proto.CopyFrom(base)
    if priority == "after-base":
        scores = scores_below(min(p.score for p in base.pieces), len(pieces))
    elif priority == "score0":
        scores = [0.0] * len(pieces)
    else:
        raise ValueError(f"priority must be one of {PRIORITIES}")
    for piece, score in zip(pieces, scores):
        proto.pieces.append(pb.ModelProto.SentencePiece(piece=piece, score=score, type=NORMAL))
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return proto


def _producible(piece: str, vocab: set[str], new_chars: set[str]) -> bool:
    """Some split of `piece` into two pieces of `vocab` (or characters about to be added) exists."""
    def have(s: str) -> bool:
        return s in vocab or (len(s) == 1 and s in new_chars)

    return any(have(piece[:k]) and have(piece[k:]) for k in range(1, len(piece)))


def select(base: pb.ModelProto, pool: Iterable[str], n: int, source: str = "pieces") -> Selection:
    """Exactly `n` new reachable pieces from `pool` (merge order), as the module docstring explains."""
    base_vocab = {p.piece for p in base.pieces}
    sel = Selection()
    vocab = set(base_vocab)
    dropped: set[str] = set()
    it: Iterator[str] = iter(pool)

    def fill() -> None:
        while len(sel.pieces) < n and (piece := next(it, None)) is not None:
            reason = None
            if piece in base_vocab:
                reason = "in_base"
            elif piece in vocab or piece in dropped:
                reason = "already_added" if piece in vocab else "unreachable"
            elif not has_cjk(piece):
                reason = "no_cjk"
            elif len(piece) > MAX_PIECE_CHARS:
                reason = "too_long"
            else:
                missing = [c for c in dict.fromkeys(piece) if c not in vocab]
                if any(not CJK_RE.match(c) for c in missing):
                    reason = "needs_non_cjk_character"  # adding it would change non-CJK encodings
                elif len(piece) > 1 and not _producible(piece, vocab, set(missing)):
                    reason = "not_producible"
            if reason:
                sel.skipped[reason] += 1
                continue
            for c in missing:
                if c != piece:
                    sel.pieces.append(c)
                    vocab.add(c)
            sel.pieces.append(piece)
            vocab.add(piece)
        del sel.pieces[n:]  # characters added for the last piece may overshoot
        vocab.intersection_update(base_vocab | set(sel.pieces))

    with tqdm(total=n, desc="selecting pieces", unit="piece") as bar:
        while True:
            sel.rounds += 1
            fill()
            bar.update(len(sel.pieces) - bar.n)
            proto = build(base, sel.pieces)
            v = len(base.pieces)
            bad = unreachable(proto, list(range(v, len(proto.pieces))))
            if not bad:
                break
            lost = {proto.pieces[i].piece for i in bad}
            sel.dropped_unreachable.extend(sorted(lost))
            dropped |= lost
            vocab -= lost
            sel.pieces = [p for p in sel.pieces if p not in lost]
            bar.update(len(sel.pieces) - bar.n)
            if sel.rounds >= MAX_ROUNDS:
                raise RuntimeError(f"no reachable selection after {MAX_ROUNDS} rounds")  # never seen; a bug if it happens
    if len(sel.pieces) < n:
        raise InputError(source, None, f"only {len(sel.pieces):,} new reachable Chinese pieces are available, not {n:,} "
                         f"(passed over: {dict(sel.skipped)})",
                         "lower --add, or give more Chinese text / a larger --zh-vocab-size so the Chinese model has more pieces")
    return sel


def verify(base: pb.ModelProto, proto: pb.ModelProto, folder: Path, texts: list[str]) -> dict:
    """Checks after every build: reachability, base ids kept, non-CJK identity, round trip, SP/HF parity."""
    v = len(base.pieces)
    assert [p.piece for p in proto.pieces[:v]] == [p.piece for p in base.pieces], "base pieces changed"
    sp_base, sp_new = processor(base), processor(proto)
    texts = texts + ZH_PROBES
    lines = [line for t in texts for line in t.split("\n")]
    non_cjk = [t for t in lines if not has_cjk(t)] + NON_CJK_PROBES
    changed = sum(a != b for a, b in zip(sp_base.encode(non_cjk), sp_new.encode(non_cjk)))
    enc = sp_new.encode(texts)
    round_trip_bad = sum(sp_new.decode(ids) != t for ids, t in zip(enc, texts))
    parity = compare(folder, texts + non_cjk)
    return {
        "unreachable_new": len(unreachable(proto, list(range(v, len(proto.pieces))))),
        "non_cjk_texts": len(non_cjk), "non_cjk_changed": changed,
        "round_trip_texts": len(texts), "round_trip_failed": round_trip_bad,
        "parity_texts": parity["texts"], "parity_mismatched": parity["mismatched"], "parity_examples": parity["examples"],
    }


def extend(base: pb.ModelProto, pool: list[str], n: int, out: str | Path, check_texts: list[str],
           priority: str = "after-base", source: str = "pieces") -> tuple[pb.ModelProto, Selection, dict]:
    """Select `n` pieces, write the merged model and HF folder to `out`, verify; return (model, selection, checks)."""
    sel = select(base, pool, n, source)
    proto = build(base, sel.pieces, priority)
    folder = write_hf_folder(proto, out)
    checks = verify(base, proto, folder, check_texts)
    if priority == "after-base":
        problems = {k: checks[k] for k in ("unreachable_new", "non_cjk_changed", "round_trip_failed", "parity_mismatched") if checks[k]}
        if problems:
            raise RuntimeError(f"extension failed its own checks: {problems}; examples {checks['parity_examples'][:2]}")
    return proto, sel, checks


@dataclass(frozen=True)
class ExtendOptions:
    """Settings of `tokenizer extend` besides its inputs (each the `--flag` of the same name)."""

    zh_vocab_size: int | None = None  # of the Chinese model trained on the corpus; None: 1.6 x add + 4000
    priority: str = "after-base"
    order: str = "chars-first"
    check_corpus: tuple[str, ...] = ()  # text for the parity and round-trip checks; () = the corpus
    check_chars: int = 1_000_000
    text_field: str = "text"
    max_chars: int | None = None
    max_sentences: int = 2_000_000
    character_coverage: float = 0.9995
    threads: int | None = None
    on_error: str = "stop"
    read: ReadOptions = ReadOptions()

    def params(self) -> dict:
        return {**{f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                   for f in fields(self) if f.name != "read"}, **self.read.params()}


def extend_tokenizer(base: str | Path, out: str | Path, add: int, corpus: Sequence[str | Path] = (),
                     pieces: str | Path | None = None, opts: ExtendOptions = ExtendOptions()) -> Manifest:
    """`tokenizer extend`: `base` (a .model or a folder holding tokenizer.model) with exactly `add` new Chinese
    pieces of a BPE model trained on `corpus` (files or folders), or taken from the model `pieces`; writes
    tokenizer.model, the Hugging Face folder, added_pieces.tsv and manifest.json (with the checks) to `out`."""
    if bool(corpus) == (pieces is not None):
        raise InputError("tokenizer extend", None, "give either --corpus (train Chinese pieces) or --pieces MODEL",
                         "see tokenizer extend --help")
    if add <= 0:
        raise InputError("tokenizer extend", None, f"--add must be positive, not {add}")
    corpus = [str(c) for c in corpus]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    params = {"base": str(base), "out": str(out), "add": add, "corpus": corpus or None,
              "pieces": str(pieces) if pieces is not None else None, **opts.params()}
    m = Manifest("tokenizer extend", params)
    base_file = model_path(base)
    base_proto = load_proto(base_file)
    if base_proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise InputError(base_file, None, "the base is not a BPE SentencePiece model", "extension keeps BPE merge semantics; give a BPE base such as Mixtral's")
    m.add_inputs([base_file])
    t0 = time.time()
    check_corpus = list(opts.check_corpus)
    if pieces is not None:
        src_file = model_path(pieces)
        m.add_inputs([src_file])
        source = load_proto(src_file)
        check_texts = sample_texts(check_corpus, opts.check_chars, opts.text_field, opts.read,
                                   ErrorPolicy(opts.on_error)) if check_corpus else []
    else:
        zh_vocab = opts.zh_vocab_size or int(add * 1.6) + 4000
        policy = ErrorPolicy(opts.on_error)
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            text = Path(tmp) / "train.txt"
            m.extra["corpus"] = write_training_text(corpus, text, opts.text_field, opts.max_chars, policy, m, opts.read)
            print(f"training a {zh_vocab:,}-piece Chinese BPE model on {m.extra['corpus']['chars']:,} characters ...")
            src_file = train_bpe(text, Path(tmp) / "zh", zh_vocab, opts.character_coverage, opts.max_sentences, opts.threads,
                                 source=", ".join(corpus), hard_limit=False)
            source = load_proto(src_file)
            (out / "source_pieces.model").write_bytes(src_file.read_bytes())
        check_texts = sample_texts(check_corpus or corpus, opts.check_chars, opts.text_field, opts.read,
                                   ErrorPolicy(opts.on_error))  # counted once, while training
    m.extra["source_model"] = {"pieces": len(source.pieces), "seconds": round(time.time() - t0, 2)}
    t1 = time.time()
    proto, sel, checks = extend(base_proto, candidates(source, opts.order), add, out, check_texts, opts.priority,
                                source=str(pieces if pieces is not None else corpus[0]))
    v = len(base_proto.pieces)
    with open(out / "added_pieces.tsv", "w", encoding="utf-8") as f:
        f.write("id\tpiece\tscore\n")
        for i in range(v, len(proto.pieces)):
            f.write(f"{i}\t{proto.pieces[i].piece}\t{proto.pieces[i].score:.9g}\n")
    m.extra["extension"] = {
        "priority": opts.priority, "base_vocab": v, "added": len(sel.pieces), "vocab_size": len(proto.pieces),
        "single_characters_added": sum(len(p) == 1 for p in sel.pieces), "order": opts.order, "rounds": sel.rounds,
        "candidates_passed_over": dict(sorted(sel.skipped.items())), "dropped_unreachable": len(sel.dropped_unreachable),
        "dropped_unreachable_examples": sel.dropped_unreachable[:30], "seconds": round(time.time() - t1, 2),
    }
    m.extra["checks"] = checks
    m.extra["base"] = {"path": str(base_file.resolve()), "sha256": file_sha256(base_file), "vocab_size": v}
    m.extra["tokenizer"] = load_tokenizer_folder(out).describe()
    m.write(out)
    return m


@locked_output("out")
def run(args: argparse.Namespace) -> int:
    opts = ExtendOptions(args.zh_vocab_size, args.priority, args.order, tuple(args.check_corpus or ()), args.check_chars,
                         args.text_field, args.max_chars, args.max_sentences, args.character_coverage, args.threads,
                         args.on_error, read_options(args))
    m = extend_tokenizer(args.base, args.out, args.add, args.corpus or (), args.pieces, opts)
    e, checks = m.extra["extension"], m.extra["checks"]
    print(f"added {e['added']:,} pieces ({e['single_characters_added']:,} single characters) → "
          f"{e['vocab_size']:,}; unreachable new pieces: {checks['unreachable_new']}; non-CJK texts changed: "
          f"{checks['non_cjk_changed']}/{checks['non_cjk_texts']}; SP/HF mismatches: {checks['parity_mismatched']}; wrote {args.out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extend",
        description="Extend a SentencePiece BPE tokenizer (a .model file or a tokenizer folder) with exactly --add new "
        "Chinese pieces from a Chinese BPE model trained on --corpus (or given with --pieces): the CJK characters it covers "
        "and the base lacks first, most frequent first, then its multi-character pieces in merge order. "
        "New pieces score below every base piece, so base merges always win: ids 0..V-1 are unchanged, text without "
        "CJK encodes exactly as the base, and every new piece is checked to be produced by the encoder. Writes "
        "tokenizer.model and a Hugging Face tokenizer folder (with Mixtral's chat template), added_pieces.tsv and "
        "manifest.json with the checks.",
        epilog="examples:\n  tokenizer extend --base mixtral.model --corpus data/zh --add 20000 -o tok/ext20k\n"
        "  tokenizer extend --base mixtral.model --pieces tok/ext20k --add 20000 --priority score0 -o tok/ext20k-score0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = ExtendOptions()
    p.add_argument("--base", required=True, help="base SentencePiece .model or tokenizer folder holding tokenizer.model")
    p.add_argument("--corpus", nargs="+", help="Chinese text to train the pieces on (files or folders)")
    p.add_argument("--pieces", help="take pieces from this SentencePiece model or tokenizer folder instead of training")
    p.add_argument("--add", type=int, required=True, help="exactly this many new pieces")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--zh-vocab-size", type=int, default=None, help="vocabulary of the Chinese model trained on --corpus (default 1.6 x --add + 4000)")
    p.add_argument("--priority", choices=PRIORITIES, default=d.priority,
                   help="after-base (default): new pieces merge after every base merge; score0: Chinese-LLaMA's score-0 append of the same pieces, for comparison")
    p.add_argument("--order", choices=ORDERS, default=d.order,
                   help="chars-first (default): missing CJK characters of the Chinese model first, then merges in merge order; merge: merge order only")
    p.add_argument("--check-corpus", nargs="+", help="text for the parity/round-trip checks (default: the --corpus)")
    p.add_argument("--check-chars", type=int, default=d.check_chars, help=f"characters of text for the checks (default {d.check_chars:,})")
    add_common(p)
