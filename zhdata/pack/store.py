"""On-disk layout of a packed folder: flat memory-mappable arrays per split, appended while streaming.

Per split (`train`, `val`):
  {split}.tokens.bin  token ids, uint16 when the vocabulary fits, else uint32
  {split}.docs.bin    int64 start offset (in tokens) of every document / example, in file order
  {split}.labels.bin  uint8 loss mask, 1 where a token is trained on (SFT only)
  {split}.blocks.bin  int64 block boundaries: block i is tokens [blocks[i], blocks[i+1])
A block is always a contiguous token range; its documents are found from docs.bin, so nothing but the
requested block is read.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

SPLITS = ("train", "val")
INDEX_DTYPE = np.int64


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def split_file(out: Path, split: str, kind: str) -> Path:
    return Path(out) / f"{split}.{kind}.bin"


def open_array(path: Path, dtype: np.dtype | type) -> np.ndarray:
    """Read-only memmap of a flat array file (an empty array for an empty file, which mmap refuses)."""
    if path.stat().st_size == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class SplitWriter:
    """Appends tokens, document starts and (optionally) a loss mask of one split; truncates back on resume."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, with_mask: bool, kind_prefix: str = ""):
        self.dtype, self.with_mask = np.dtype(dtype), with_mask
        self.paths = {k: split_file(out, split, kind_prefix + k) for k in ("tokens", "docs") + (("labels",) if with_mask else ())}
        self.files = {k: open(p, "ab") for k, p in self.paths.items()}
        self.n_tokens = self.files["tokens"].tell() // self.dtype.itemsize
        self.n_docs = self.files["docs"].tell() // np.dtype(INDEX_DTYPE).itemsize

    def append(self, ids: np.ndarray, lengths: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Append documents given as their concatenated ids and lengths (and mask, aligned with ids)."""
        starts = self.n_tokens + np.concatenate(([0], np.cumsum(lengths[:-1], dtype=INDEX_DTYPE)))
        self.files["tokens"].write(ids.astype(self.dtype, copy=False).tobytes())
        self.files["docs"].write(starts.astype(INDEX_DTYPE).tobytes())
        if self.with_mask:
            self.files["labels"].write(mask.astype(np.uint8, copy=False).tobytes())
        self.n_tokens += len(ids)
        self.n_docs += len(lengths)

    def append_split(self, src: Path, split: str) -> None:
        """Append, streaming, the split that another SplitWriter wrote into folder `src` (one piece, packed by a
        worker): its tokens and mask as they are, its document starts shifted to follow what is here."""
        for k, f in self.files.items():
            part = split_file(src, split, k)
            if k == "docs":
                starts = np.fromfile(part, dtype=INDEX_DTYPE)  # 8 bytes per document
                f.write((starts + self.n_tokens).astype(INDEX_DTYPE).tobytes())
                added_docs = len(starts)
            else:
                with open(part, "rb") as g:
                    shutil.copyfileobj(g, f, 1 << 22)
        self.n_tokens += split_file(src, split, "tokens").stat().st_size // self.dtype.itemsize
        self.n_docs += added_docs

    def sizes(self) -> dict[str, int]:
        return {"tokens": self.n_tokens, "docs": self.n_docs}

    def sync(self) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())

    def truncate(self, sizes: dict[str, int]) -> None:
        """Cut the files back to `sizes` (what the last finished input left), dropping a crashed run's tail."""
        self.sync()
        self.n_tokens, self.n_docs = sizes["tokens"], sizes["docs"]
        for k, f in self.files.items():
            item = {"tokens": self.dtype.itemsize, "docs": np.dtype(INDEX_DTYPE).itemsize, "labels": 1}[k]
            f.truncate((self.n_docs if k == "docs" else self.n_tokens) * item)
            f.seek(0, os.SEEK_END)

    def close(self) -> None:
        self.sync()
        for f in self.files.values():
            f.close()


def write_blocks(out: Path, split: str, bounds: np.ndarray) -> None:
    bounds.astype(INDEX_DTYPE).tofile(split_file(out, split, "blocks"))
