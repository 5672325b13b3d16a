"""SentencePiece model files: load a base (a `.model` file or a tokenizer folder holding one), inspect and save.

The `ModelProto` is the single source of truth of this package: the Hugging Face `tokenizer.json` is always
derived from it (`tokenizer.convert`), never edited on its own.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from zhdata.errors import InputError

MODEL_FILE = "tokenizer.model"
# SentencePiece piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
TYPE_NAMES = {NORMAL: "normal", UNKNOWN: "unknown", CONTROL: "control", USER_DEFINED: "user_defined",
              UNUSED: "unused", BYTE: "byte"}
SPACE = "\u2581"  # '▁', SentencePiece's whitespace symbol


def model_path(base: str | Path) -> Path:
    """The `.model` file of `base`: the file itself, or `tokenizer.model` inside a tokenizer folder."""
    p = Path(base)
    if not p.exists():
        raise InputError(p, None, "no such file or folder", "give a SentencePiece .model file or a tokenizer folder")
    if p.is_dir():
        if (p / MODEL_FILE).is_file():
            return p / MODEL_FILE
        hint = ("this Hugging Face folder has no tokenizer.model; rebuild it with `tokenizer convert MODEL -o DIR` "
                "from the SentencePiece model") if (p / "tokenizer.json").exists() else \
            "expected a SentencePiece .model file or a folder made by `tokenizer convert` / `tokenizer extend`"
        raise InputError(p, None, f"no {MODEL_FILE} in this folder", hint)
    return p


def load_proto(base: str | Path) -> pb.ModelProto:
    """Parse the SentencePiece model of `base`, with a clear error when it is not one or repeats a piece."""
    path = model_path(base)
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf raises DecodeError or RuntimeError depending on the backend
        raise InputError(path, None, f"not a SentencePiece model ({type(e).__name__})",
                         "give the tokenizer.model file of a SentencePiece tokenizer") from None
    if not proto.pieces:
        raise InputError(path, None, "not a SentencePiece model (no pieces)",
                         "give the tokenizer.model file of a SentencePiece tokenizer")
    first: dict[str, int] = {}
    for i, p in enumerate(proto.pieces):  # a repeated piece would silently leave its id out of a converted vocab
        j = first.setdefault(p.piece, i)
        if j != i:
            raise InputError(path, None, f"piece {i} {p.piece!r} repeats piece {j}",
                             "every piece of a SentencePiece model must be distinct; rebuild the model without the repeat")
    return proto


def processor(proto: pb.ModelProto) -> spm.SentencePieceProcessor:
    """A SentencePiece encoder for an in-memory model."""
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto.SerializeToString())
    return sp


def is_bpe(proto: pb.ModelProto) -> bool:
    return proto.trainer_spec.model_type == pb.TrainerSpec.BPE


def save_proto(proto: pb.ModelProto, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(proto.SerializeToString())
    return p
