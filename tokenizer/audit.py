"""`tokenizer audit`: find what silently hurts a tokenizer before training on it.

Duplicate pieces, pieces the encoder never produces, special tokens stored as normal pieces, missing
byte-fallback pieces, SentencePiece/Hugging Face id mismatches, and a model embedding too small (or
not matching) for the vocabulary.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from zhdata.errors import InputError
from zhdata.lock import locked_output
from zhdata.manifest import Manifest, cli_params, file_sha256
from zhdata.readers import add_read_options, read_options

from .corpus import sample_texts
from .parity import compare
from .reach import unreachable
from .spm import BYTE, MODEL_FILE, NORMAL, TYPE_NAMES, is_bpe, load_proto, model_path, processor

SPECIAL_LOOKING = re.compile(r"^(<(pad|mask|unk|s|/s|cls|sep|eos|bos)>|<\|[^|<>\s]+\|>|\[(PAD|MASK|CLS|SEP|UNK)\])$")
PROBES = ["Hello  world, this is   a test.", "中文测试：你好，世界！", "😀 𠀀 ꙮ\t\n", "def f(x):\n    return x", ""]


def _named_specials(folder: Path) -> dict[str, str]:
    """Special token strings named in tokenizer_config.json / special_tokens_map.json."""
    out: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = folder / name
        if not f.exists():
            continue
        try:
            cfg = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f, e.lineno, f"malformed JSON: {e.msg}") from None
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            v = cfg.get(key)
            v = v.get("content") if isinstance(v, dict) else v
            if isinstance(v, str):
                out.setdefault(key, v)
    return out


def model_vocab_rows(model_dir: Path) -> int:
    cfg_file = model_dir / "config.json"
    if not cfg_file.exists():
        raise InputError(model_dir, None, "no config.json: not a Hugging Face model folder")
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    rows = cfg.get("vocab_size") or cfg.get("text_config", {}).get("vocab_size")
    if not isinstance(rows, int):
        raise InputError(cfg_file, None, "no vocab_size in the model config")
    return rows


def audit(tokenizer: str | Path, texts: list[str] | None = None, model: str | Path | None = None) -> dict:
    """All checks on a tokenizer (folder or .model); `problems` lists what is wrong, empty when all is well."""
    path = model_path(tokenizer)
    # a folder's own files (tokenizer.json, configs) belong to its tokenizer.model, not to another .model beside them
    folder = Path(tokenizer) if Path(tokenizer).is_dir() else path.parent if path.name == MODEL_FILE else None
    proto = load_proto(path)
    n = len(proto.pieces)
    problems: list[str] = []
    try:
        processor(proto)
        load_error = None
    except RuntimeError as e:  # missing byte pieces ...: the encoder checks below cannot run (load_proto refused repeats)
        load_error = str(e).splitlines()[0]
        problems.append(f"SentencePiece refuses to load the model: {load_error}")
    unreach = unreachable(proto) if is_bpe(proto) and load_error is None else []
    if unreach:
        problems.append(f"{len(unreach)} pieces the encoder never produces, e.g. {[proto.pieces[i].piece for i in unreach[:8]]}")
    named = _named_specials(folder) if folder is not None else {}
    ids = {p.piece: i for i, p in enumerate(proto.pieces)}
    special_normal = sorted({i for i, p in enumerate(proto.pieces) if p.type == NORMAL and SPECIAL_LOOKING.match(p.piece)}
                            | {ids[s] for s in named.values() if s in ids and proto.pieces[ids[s]].type == NORMAL})
    if special_normal:
        problems.append(f"special tokens typed as normal pieces (split by the encoder, not one id): "
                        f"{[(i, proto.pieces[i].piece) for i in special_normal[:8]]}")
    missing_specials = sorted(f"{k}={v}" for k, v in named.items() if v not in ids)
    if missing_specials:
        problems.append(f"special tokens named in the config but not in the vocabulary: {missing_specials}")
    byte_pieces = {p.piece for p in proto.pieces if p.type == BYTE}
    missing_bytes = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in byte_pieces]
    if proto.trainer_spec.byte_fallback and missing_bytes:
        problems.append(f"byte fallback is on but {len(missing_bytes)} byte pieces are missing")
    result = {
        "path": str(path), "vocab_size": n, "model_type": "bpe" if is_bpe(proto) else "other",
        "types": {TYPE_NAMES.get(t, str(t)): c for t, c in sorted(Counter(p.type for p in proto.pieces).items())},
        "unreachable": len(unreach),
        "unreachable_examples": [proto.pieces[i].piece for i in unreach[:30]],
        "special_typed_normal": [proto.pieces[i].piece for i in special_normal], "named_special_tokens": named,
        "byte_fallback": bool(proto.trainer_spec.byte_fallback), "byte_pieces": len(byte_pieces),
        "normalizer": proto.normalizer_spec.name, "add_dummy_prefix": proto.normalizer_spec.add_dummy_prefix,
    }
    hf = folder / "tokenizer.json" if folder is not None else None
    if hf is not None and hf.exists() and load_error is None:
        result["tokenizer_json_sha256"] = file_sha256(hf)
        par = compare(folder, (texts or []) + PROBES)
        result["parity"] = par
        if par["mismatched"]:
            problems.append(f"{par['mismatched']} of {par['texts']} texts encode differently in SentencePiece and Hugging Face")
    else:
        result["parity"] = None
    if model is not None:
        rows = model_vocab_rows(Path(model))
        result["model_vocab_size"] = rows
        if rows < n:
            problems.append(f"the model's embedding has {rows:,} rows but the tokenizer has {n:,} pieces: ids ≥ {rows:,} would "
                            "fail; run `tokenizer init-embeddings` (or train run --vocab ext) with this tokenizer")
        elif rows > n + 127:
            problems.append(f"the model's embedding has {rows:,} rows for {n:,} pieces: is this the tokenizer it was trained with?")
    result["problems"] = problems
    return result


@locked_output("out")
def run(args: argparse.Namespace) -> int:
    texts = sample_texts(args.corpus, args.max_chars, args.text_field, read_options(args)) if args.corpus else []
    res = audit(args.tokenizer, texts, args.model)
    if args.out:
        m = Manifest("tokenizer audit", cli_params(args))
        m.add_inputs([model_path(args.tokenizer)])
        m.counts.records_in = m.counts.records_out = len(texts)
        m.extra["audit"] = res
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "audit.json").write_text(json.dumps(res, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        m.write(out)
    par = res["parity"]
    parity = "n/a (no tokenizer.json)" if par is None else f"{par['mismatched']} of {par['texts']}"
    print(f"{res['path']}: {res['vocab_size']:,} pieces ({', '.join(f'{k} {v:,}' for k, v in res['types'].items())})")
    print(f"  unreachable {res['unreachable']}, special typed normal {len(res['special_typed_normal'])}, "
          f"byte pieces {res['byte_pieces']}/256, SP/HF mismatches {parity}"
          + (f", model embedding rows {res['model_vocab_size']:,}" if "model_vocab_size" in res else ""))
    for p in res["problems"]:
        print(f"  PROBLEM: {p}")
    if not res["problems"]:
        print("  OK")
    return 1 if res["problems"] else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        description="Audit a tokenizer folder (or .model): pieces the BPE encoder never produces, special "
        "tokens stored as normal pieces, byte-fallback coverage, SentencePiece/Hugging Face id parity (on --corpus text "
        "and built-in probes) and, with --model, the model's vocab_size against the tokenizer. Exit code 1 when a "
        "problem is found; a model that repeats a piece is refused (exit 2), as every command does.",
        epilog="example: tokenizer audit tok/ext20k --corpus data/zh_heldout --model models/mixtral-ext -o reports/audit",
    )
    p.add_argument("tokenizer", help="tokenizer folder or SentencePiece .model")
    p.add_argument("--corpus", nargs="+", help="text for the parity check")
    p.add_argument("--max-chars", type=int, default=1_000_000, help="characters of --corpus to check (default 1M)")
    p.add_argument("--text-field", default="text", help="field holding the text (default text)")
    add_read_options(p)
    p.add_argument("--model", help="Hugging Face model folder whose vocab_size must fit the tokenizer")
    p.add_argument("-o", "--out", help="write audit.json and manifest.json here")
