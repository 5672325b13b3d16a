"""Training data for `train run`: packed data from `zhdata pack`, its checks, and a resumable batch order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from zhdata.errors import InputError


def open_packed(path: str | Path, split: str = "train"):
    """`zhdata.pack.PackedDataset` for `split`; a clear error when the folder is not packed data."""
    from zhdata import fs
    from zhdata.pack import PackedDataset

    if fs.is_remote(str(path)):
        raise InputError(path, None, "training memory-maps a local folder, not one on an object store",
                         f"copy it to this machine first, e.g. aws s3 cp --recursive {path} packed/")
    path = Path(path)
    if not (path / "manifest.json").exists():
        raise InputError(path, None, "not a packed data folder (no manifest.json)", hint="make one with `zhdata pack`")
    return PackedDataset(path, split=split)


def check_dataset(ds, data_path: str | Path, tokenizer_dir: str | Path, stage: str) -> str:
    """The packed data must be tokenized by a tokenizer that encodes as the run's does, and packed for the
    run's stage; returns the tokenizer's fingerprint (`zhdata.pack.tokfolder.tokenizer_fingerprint`)."""
    ds.check_tokenizer(Path(tokenizer_dir))  # a missing or non-tokenizer folder is named as such there
    if ds.mode != stage:
        raise InputError(Path(data_path) / "manifest.json", "pack.mode",
                         f"data packed for stage {ds.mode!r} but the run's stage is {stage!r}")
    return ds.tokenizer_fingerprint


def micro_batches_per_epoch(n_items: int, micro_batch_size: int, world: int) -> int:
    per = n_items // (micro_batch_size * world)
    if per == 0:
        raise InputError("data", None, f"{n_items} sequences are fewer than one micro-batch on every process "
                                       f"({micro_batch_size} x {world})")
    return per


def batch_indices(n_items: int, micro_batch_size: int, world: int, rank: int, seed: int,
                  start: int = 0) -> Iterator[list[int]]:
    """Micro-batch `k` (k = start, start+1, ...) of this rank: epoch `k // per_epoch` shuffles with
    `seed + epoch`; so the order depends only on k, and resuming at k repeats an uninterrupted run."""
    per = micro_batches_per_epoch(n_items, micro_batch_size, world)
    k, epoch, perm = start, -1, None
    while True:
        e, j = divmod(k, per)
        if e != epoch:
            epoch, perm = e, torch.randperm(n_items, generator=torch.Generator().manual_seed(seed + e)).tolist()
        first = (j * world + rank) * micro_batch_size
        yield perm[first:first + micro_batch_size]
        k += 1


def model_inputs(batch: dict, device: torch.device) -> dict:
    """Inputs for a causal LM. No attention mask: transformers builds block-diagonal attention from
    `position_ids` that restart at 0 (packed examples); right padding (position 0) only attends to itself."""
    out = {"input_ids": batch["input_ids"], "labels": batch["labels"]}
    if "position_ids" in batch:
        out["position_ids"] = batch["position_ids"]
    return {k: v.to(device) for k, v in out.items()}
