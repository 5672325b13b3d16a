"""Reachability: does the encoder produce a piece for its own text?

A multi-character BPE piece is only ever emitted if the merges the encoder actually performs build it;
a piece that is in the vocabulary but never produced wastes an embedding row.
"""

from __future__ import annotations

from sentencepiece import sentencepiece_model_pb2 as pb

from .spm import NORMAL, SPACE, processor


def unreachable(proto: pb.ModelProto, ids: list[int] | None = None) -> list[int]:
    """Ids of normal pieces (all, or `ids`) that SentencePiece does not encode to themselves."""
    plain = pb.ModelProto()
    plain.CopyFrom(proto)
    plain.normalizer_spec.add_dummy_prefix = False  # the piece's own text, without a "▁" in front
    sp = processor(plain)
    if ids is None:
        ids = [i for i, p in enumerate(proto.pieces) if p.type == NORMAL]
    texts = [proto.pieces[i].piece.replace(SPACE, " ") for i in ids]
    return [i for i, got in zip(ids, sp.encode(texts)) if got != [i]]
