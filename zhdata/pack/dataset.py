"""Training reader over a `zhdata pack` folder: random access to blocks through memory maps."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from ..manifest import read_manifest
from .store import INDEX_DTYPE, open_array, split_file
from .tokfolder import load_tokenizer_folder

_FINGERPRINT = re.compile("[0-9a-f]{64}")


class PackedDataset(Dataset):
    """Blocks of a packed split; `ds[i]` is a dict of 1-D LongTensors input_ids, labels, position_ids, segment_ids.

    position_ids restart at 0 at every document/example start (and at the block start); segment_ids number
    the documents within the block (0, 1, ...) for block-diagonal attention. Labels are -100 where there is
    no loss: in SFT outside assistant answers, in pre-training at each document's first token after the
    block's first (it would be predicted from another document). Only the requested block is read.
    Pass `tokenizer=` (a tokenizer folder or a fingerprint) to refuse data packed with another tokenizer.
    """

    def __init__(self, path: str | Path, split: str = "train", tokenizer: str | Path | None = None):
        self.path = Path(path)
        try:
            self.manifest: dict[str, Any] = read_manifest(self.path)
        except FileNotFoundError as e:
            raise InputError(self.path, None, str(e).split(": ", 1)[-1]) from None
        pack = self.manifest.get("pack")
        if not pack or "tokenizer" not in self.manifest:
            raise InputError(self.path / "manifest.json", None, "not the output of `zhdata pack`")
        if split not in pack["splits"]:
            raise InputError(self.path, None, f"no split {split!r}", f"splits here: {', '.join(pack['splits'])}")
        self.split, self.mode, self.block_size = split, pack["mode"], pack["block_size"]
        self.tokenizer_fingerprint: str | None = self.manifest["tokenizer"].get("fingerprint")
        if tokenizer is not None:
            self.check_tokenizer(tokenizer)
        self._dtype = np.dtype(pack["dtype"])
        self._len = split_file(self.path, split, "blocks").stat().st_size // np.dtype(INDEX_DTYPE).itemsize - 1
        self._arrays: dict[str, np.ndarray] | None = None  # opened lazily, so each DataLoader worker maps its own

    def check_tokenizer(self, tokenizer: str | Path) -> None:
        """Raise InputError unless `tokenizer` (a folder, or a fingerprint) encodes as the one this data was
        packed with does (same `tokenizer_fingerprint`; the bytes of tokenizer.json may differ)."""
        fp = str(tokenizer) if _FINGERPRINT.fullmatch(str(tokenizer)) else load_tokenizer_folder(tokenizer).fingerprint
        ours = self.tokenizer_fingerprint
        if ours is None:
            raise InputError(self.path / "manifest.json", "tokenizer", "packed by an older version that recorded no tokenizer "
                             "fingerprint", "pack the data again: zhdata pack ... --tokenizer DIR")
        if fp != ours:
            raise InputError(self.path, None, f"packed with tokenizer {ours[:12]} ({self.manifest['tokenizer'].get('path')}), "
                             f"not with {fp[:12]} ({tokenizer}): the two encode text differently",
                             "pack the data again with this tokenizer: zhdata pack ... --tokenizer DIR")

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            a = {"blocks": open_array(split_file(self.path, self.split, "blocks"), INDEX_DTYPE),
                 "tokens": open_array(split_file(self.path, self.split, "tokens"), self._dtype),
                 "docs": open_array(split_file(self.path, self.split, "docs"), INDEX_DTYPE)}
            if self.mode == "sft":
                a["labels"] = open_array(split_file(self.path, self.split, "labels"), np.uint8)
            self._arrays = a
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:  # pickled for spawned DataLoader workers: never copy the maps
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"block {i} out of range ({len(self)} blocks)")
        i %= len(self)
        a = self._open()
        s, e = int(a["blocks"][i]), int(a["blocks"][i + 1])
        ids = torch.from_numpy(np.asarray(a["tokens"][s:e], dtype=np.int64))
        docs = a["docs"]
        lo, hi = np.searchsorted(docs, s, side="right"), np.searchsorted(docs, e, side="left")
        starts = np.asarray(docs[lo:hi], dtype=np.int64) - s  # documents that start inside the block, after its first token
        is_start = torch.zeros(e - s, dtype=torch.long)
        is_start[0] = 1
        is_start[torch.from_numpy(starts)] = 1
        segment_ids = torch.cumsum(is_start, 0) - 1
        seg_first = torch.from_numpy(np.concatenate(([0], starts)))
        position_ids = torch.arange(e - s) - seg_first[segment_ids]
        if self.mode == "sft":
            mask = torch.from_numpy(np.asarray(a["labels"][s:e], dtype=np.bool_))
            labels = torch.where(mask, ids, torch.full_like(ids, -100))
        else:
            labels = ids.clone()
            labels[torch.from_numpy(starts)] = -100
        return {"input_ids": ids, "labels": labels, "position_ids": position_ids, "segment_ids": segment_ids}


def collate_packed(items: list[dict[str, torch.Tensor]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack blocks, right-padding to the longest: input_ids with pad_id, labels -100, position_ids 0,
    segment_ids -1; attention_mask is 1 on real tokens."""
    n = max(len(x["input_ids"]) for x in items)
    pads = {"input_ids": pad_id, "labels": -100, "position_ids": 0, "segment_ids": -1}
    out = {k: torch.full((len(items), n), v, dtype=torch.long) for k, v in pads.items()}
    out["attention_mask"] = torch.zeros((len(items), n), dtype=torch.long)
    for r, x in enumerate(items):
        L = len(x["input_ids"])
        for k in pads:
            out[k][r, :L] = x[k]
        out["attention_mask"][r, :L] = 1
    return out
