"""`tokenizer convert`: a SentencePiece BPE model into a Hugging Face tokenizer folder with id parity.

The folder holds `tokenizer.json` (written deterministically; the tokenizer's identity is its behaviour
fingerprint, `zhdata.pack.tokfolder.tokenizer_fingerprint`),
`tokenizer_config.json` with Mixtral's chat template, `special_tokens_map.json` and a copy of
`tokenizer.model`. Encodings equal SentencePiece's: merges are ordered by piece score (SentencePiece's
merge priority), the dummy prefix and whitespace are handled as Mixtral's identity normaliser does, and
characters outside the vocabulary fall back to byte pieces.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

from zhdata.errors import InputError
from zhdata.lock import locked_output
from zhdata.manifest import Manifest
from zhdata.pack.tokfolder import load_tokenizer_folder
from zhdata.readers import add_read_options, read_options

from .spm import BYTE, CONTROL, MODEL_FILE, SPACE, UNKNOWN, USER_DEFINED, is_bpe, load_proto, model_path, save_proto

# Mixtral-Instruct's prompt format: <s>[INST] user [/INST] assistant</s>[INST] user [/INST] assistant</s>...
# A leading system message is folded into the first user turn (Mixtral has no system role).
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{{- bos_token -}}"
    "{%- for m in turns -%}"
    "{%- if m['role'] not in ('user', 'assistant') -%}"
    "{{- raise_exception(\"Mixtral's chat format has only user and assistant turns (and a first system message); got role \" + m['role']) -}}"
    "{%- endif -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('turns must alternate user/assistant/user/..., starting with user') -}}"
    "{%- endif -%}"
    "{%- if m['role'] == 'user' -%}"
    "{%- if loop.first and system -%}{{- '[INST] ' + system + '\\n\\n' + m['content'] + ' [/INST]' -}}"
    "{%- else -%}{{- '[INST] ' + m['content'] + ' [/INST]' -}}{%- endif -%}"
    "{%- else -%}{{- ' ' + m['content'] + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)


def special_pieces(proto: pb.ModelProto) -> dict[str, str]:
    """The unk/bos/eos/pad piece strings that the model defines (ids >= 0 and in range)."""
    ts, n = proto.trainer_spec, len(proto.pieces)
    out = {}
    for name, pid in (("unk_token", ts.unk_id), ("bos_token", ts.bos_id), ("eos_token", ts.eos_id), ("pad_token", ts.pad_id)):
        if 0 <= pid < n:
            out[name] = proto.pieces[pid].piece
    return out


def build_tokenizer(proto: pb.ModelProto, source: str | Path = "model") -> Tokenizer:
    """A `tokenizers.Tokenizer` that encodes exactly as SentencePiece does with this BPE model."""
    if not is_bpe(proto):
        raise InputError(source, None, "not a BPE SentencePiece model",
                         "only BPE models (as Llama/Mistral/Mixtral use) can be converted with id parity")
    ns = proto.normalizer_spec
    if ns.precompiled_charsmap or ns.remove_extra_whitespaces:
        raise InputError(source, None, f"normaliser {ns.name!r} rewrites text (charsmap or whitespace collapsing)",
                         "only identity-normalised models (as Mixtral's) are converted with guaranteed id parity")
    from transformers.convert_slow_tokenizer import generate_merges  # here: transformers takes seconds to import

    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    # Merge candidates are pieces SentencePiece may merge into: normal pieces only (specials, bytes and
    # user-defined symbols are never the result of a merge).
    scores = {p.piece: p.score for p in proto.pieces if p.type not in (UNKNOWN, CONTROL, USER_DEFINED, BYTE)}
    skip = [p.piece for p in proto.pieces if p.type in (UNKNOWN, CONTROL, USER_DEFINED, BYTE)]
    merges = generate_merges(vocab, scores, skip_tokens=skip)
    unk = proto.pieces[proto.trainer_spec.unk_id].piece if proto.trainer_spec.unk_id >= 0 else None
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                        byte_fallback=proto.trainer_spec.byte_fallback, dropout=None))
    norm = [normalizers.Replace(" ", SPACE)]
    if ns.add_dummy_prefix:
        norm.insert(0, normalizers.Prepend(SPACE))
    tok.normalizer = normalizers.Sequence(norm)
    dec = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if ns.add_dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    specials = [AddedToken(p.piece, special=True, normalized=False) for p in proto.pieces if p.type in (UNKNOWN, CONTROL)]
    tok.add_special_tokens(specials)
    user = [AddedToken(p.piece, special=False, normalized=False) for p in proto.pieces if p.type == USER_DEFINED]
    if user:
        tok.add_tokens(user)
    bos = special_pieces(proto).get("bos_token")
    if bos is not None:
        bos_id = vocab[bos]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    return tok


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_hf_folder(proto: pb.ModelProto, out_dir: str | Path, source: str | Path = "model") -> Path:
    """Write `proto` as a Hugging Face tokenizer folder (plus its `tokenizer.model`); return the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(proto, source)
    # tokenizers serialises vocab by id, merges in rank order and added tokens by id: the text is deterministic.
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    special = special_pieces(proto)
    _write_json(out / "special_tokens_map.json", {k: v for k, v in special.items()})
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # loads tokenizer.json as written (LlamaTokenizer would rebuild it)
        "add_bos_token": "bos_token" in special,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "chat_template": CHAT_TEMPLATE,
        "pad_token": special.get("pad_token"),
        **special,
    }
    _write_json(out / "tokenizer_config.json", config)
    save_proto(proto, out / MODEL_FILE)
    return out


def convert_sentencepiece(model_file: str | Path, out_dir: str | Path) -> Path:
    """Library entry: SentencePiece `model_file` (or a folder holding `tokenizer.model`) → HF folder `out_dir`."""
    return write_hf_folder(load_proto(model_file), out_dir, source=model_path(model_file))


@locked_output("out")
def run(args: argparse.Namespace) -> int:
    src = model_path(args.base)
    m = Manifest("tokenizer convert", {"base": str(args.base), "out": str(args.out)})
    m.add_inputs([src])
    proto = load_proto(src)
    out = write_hf_folder(proto, args.out, source=src)
    m.extra["tokenizer"] = load_tokenizer_folder(out).describe()
    if args.check:
        from .corpus import sample_texts
        from .parity import compare

        texts = sample_texts(args.check, args.check_chars, read=read_options(args))
        res = compare(out, texts)
        m.extra["parity"] = res
        m.counts.records_in = m.counts.records_out = res["texts"]
        print(f"parity on {res['texts']:,} texts: {res['mismatched']:,} differ")
        if res["mismatched"]:
            m.write(out)
            raise InputError(args.check[0], None, f"{res['mismatched']} texts encode differently in SentencePiece and Hugging Face",
                             f"first: {res['examples'][:1]}; please report this with the model file")
    m.write(out)
    print(f"wrote {out} ({len(proto.pieces):,} pieces, tokenizer fingerprint {m.extra['tokenizer']['fingerprint'][:12]})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        description="Convert a SentencePiece BPE model (e.g. Mixtral's tokenizer.model) into a Hugging Face tokenizer "
        "folder: tokenizer.json (deterministic; the manifest records its behaviour fingerprint), tokenizer_config.json with "
        "Mixtral's chat template, special_tokens_map.json and a copy of tokenizer.model. "
        "transformers.AutoTokenizer.from_pretrained(DIR) loads it and gives SentencePiece's ids.",
        epilog="example: tokenizer convert mixtral-8x7b-v0.1.model -o tok/mixtral --check corpus/zh corpus/en",
    )
    p.add_argument("base", help="SentencePiece .model file, or a folder holding tokenizer.model")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--check", nargs="+", metavar="CORPUS", help="also verify SentencePiece/HF id parity on these corpora")
    p.add_argument("--check-chars", type=int, default=2_000_000, help="characters of --check text to verify (default 2M)")
    add_read_options(p)
