"""Pre-training mode: documents → token ids with EOS after each (BOS before each if asked)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ..documents import record_text
from ..errors import ErrorPolicy
from ..manifest import Counts
from .split import split_of
from .tokfolder import TokenizerFolder

Batch = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]


class PretrainEncoder:
    """Turns a batch of text records into per-split (ids, document lengths, None)."""

    with_mask = False

    def __init__(self, tok: TokenizerFolder, val_fraction: float, bos: bool):
        self.tok, self.val_fraction = tok.tokenizer, val_fraction
        eos = tok.token_id("eos_token")
        if eos is None:
            raise ValueError(f"{tok.path}: the tokenizer defines no eos_token; pre-training packing appends one to every document")
        self.eos = [eos]
        self.bos = [tok.token_id("bos_token")] if bos else []
        if bos and self.bos[0] is None:
            raise ValueError(f"{tok.path}: --bos asked for, but the tokenizer defines no bos_token")

    def encode(self, records: list[tuple[Any, Any]], path: str, policy: ErrorPolicy, counts: Counts, stats: Counter) -> Batch:
        texts, splits = [], []
        for where, rec in records:
            text = record_text(rec, "text", path, where, policy)
            if text is None:
                continue  # bad or empty: counted through the policy
            counts.records_in += 1
            texts.append(text)
            splits.append(split_of(text, self.val_fraction))
        encs = self.tok.encode_batch_fast(texts, add_special_tokens=False)
        out: Batch = {}
        for split in ("train", "val"):
            flat: list[int] = []
            lengths: list[int] = []
            for text, enc, s in zip(texts, encs, splits):
                if s != split:
                    continue
                before = len(flat)
                flat.extend(self.bos)
                flat.extend(enc.ids)
                flat.extend(self.eos)
                lengths.append(len(flat) - before)
                stats["chars"] += len(text)
                stats["text_tokens"] += len(enc.ids)
            if lengths:
                out[split] = (np.array(flat, dtype=np.int64), np.array(lengths, dtype=np.int64), None)
        counts.records_out += len(texts)
        return out
