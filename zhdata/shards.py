"""Resumable sharded output and an ordered parallel map, shared by the streaming commands.

A shard is finished when both `NAME.parquet` and `.parts/NAME.json` (its counts) exist; both are
written to a temporary name first and renamed, so an interrupted run never leaves a half shard
that looks finished. The folder may be a URI (`zhdata.fs`): state and shards live beside each other wherever
it is. `.parts/plan.json` holds the run's parameters, inputs by the sha256 of their
content (`run_inputs`): resuming with changed inputs or other options is refused, naming what changed,
instead of mixing two runs in one folder.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

from . import fs
from .errors import InputError
from .manifest import MANIFEST, describe_input

if TYPE_CHECKING:  # the annotation only: importing this module must not load polars (tests/test_cli.py)
    import polars as pl

T = TypeVar("T")
R = TypeVar("R")


class ShardState:
    def __init__(self, out_dir: str | Path):
        self.dir = fs.local(out_dir)
        self.parts = fs.join(self.dir, ".parts")

    def start(self, params: dict[str, Any], overwrite: bool = False) -> None:
        plan = fs.join(self.parts, "plan.json")
        text = json.dumps(params, sort_keys=True, ensure_ascii=False, default=str)
        if fs.exists(plan) and (old_text := fs.read_text(plan)) != text:
            if not overwrite:
                raise InputError(self.dir, None, f"holds a run of other inputs or options: {run_difference(json.loads(old_text), params)}",
                                 "rerun with the same inputs and options to resume, use a new output folder, "
                                 "or --overwrite to start again here")
            fs.rmtree(self.parts)
            for name in fs.listdir(self.dir):
                if name.endswith(".parquet") or name == MANIFEST:
                    fs.remove(fs.join(self.dir, name))
        fs.makedirs(self.parts)
        fs.write_text(plan, text)

    def finished(self) -> set[str]:
        """Names of every finished shard, from two listings (one request each on an object store)."""
        shards = {n[: -len(".parquet")] for n in fs.listdir(self.dir) if n.endswith(".parquet")}
        return {n[: -len(".json")] for n in fs.listdir(self.parts) if n.endswith(".json")} & shards

    def stats(self, name: str) -> dict[str, Any]:
        return json.loads(fs.read_text(fs.join(self.parts, f"{name}.json")))

    def finish(self, name: str, frame: pl.DataFrame, stats: dict[str, Any]) -> None:
        with fs.atomic_writer(fs.join(self.dir, f"{name}.parquet")) as f:
            frame.write_parquet(f, compression="zstd", statistics=False, row_group_size=row_group_rows(frame))
        fs.write_text(fs.join(self.parts, f"{name}.json"), json.dumps(stats, ensure_ascii=False))


ROW_GROUP_BYTES = 8 << 20  # of Arrow data per row group: a reader of a few rows (dedupe's verifier) decodes no more


def row_group_rows(frame: pl.DataFrame) -> int:
    """Rows per Parquet row group for `frame`: about ROW_GROUP_BYTES each (one group for the whole 64 MB piece made
    each column one page, decoded whole to read any row of it)."""
    return max(1, min(frame.height, frame.height * ROW_GROUP_BYTES // max(1, frame.estimated_size())))


def run_inputs(files: list[str | Path]) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """The inputs of a run, hashed once: (manifest entries, [path, sha256] pairs that identify the run).

    Resume keys on content: a file edited in place, even with its size and mtime restored, is another run.
    Every input is read once more per run for this; the manifest records the same hashes, so only once.
    """
    described = []
    for f in files:
        try:
            described.append(describe_input(f))
        except OSError as e:
            raise InputError(f, None, f"cannot read this input: {e.strerror}") from None
    return described, [[str(f), d["sha256"]] for f, d in zip(files, described)]


def run_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What makes `new` another run than `old`: the inputs that changed, else the options that differ."""
    if old.get("inputs") != new.get("inputs"):
        o = {str(e[0]): e[1:] for e in old.get("inputs") or [] if isinstance(e, list) and e}
        n = {str(e[0]): e[1:] for e in new.get("inputs") or [] if isinstance(e, list) and e}
        if old.get("inputs") and not o:
            return "its inputs were recorded by an older version of zh-adapt"
        what = ([f"input {p} changed (its content differs)" for p in n if p in o and o[p] != n[p]]
                + [f"input {p} is new" for p in n if p not in o] + [f"input {p} is gone" for p in o if p not in n])
        if not what:  # the same inputs in another order, or recorded by an older version
            return "the list of inputs differs"
        return "; ".join(what[:3]) + (f" and {len(what) - 3} more" if len(what) > 3 else "")
    keys = sorted(k for k in {*old, *new} if k != "inputs" and old.get(k) != new.get(k))
    return "options differ: " + ", ".join(f"{k} {old.get(k)!r} → {new.get(k)!r}" for k in keys[:4])


def check_output_folder(out: str | Path, inputs: list[str | Path]) -> None:
    """Refuse, before anything is written or deleted, an output folder that is an input, holds one, or lies in one."""
    for raw in inputs:
        if fs.canonical(raw) == fs.canonical(out):
            raise InputError(out, None, f"the output folder is the input {raw}", "write to a new folder")
        if fs.within(raw, out):
            raise InputError(out, None, f"the output folder holds the input {raw}", "write to a folder without inputs")
        if fs.within(out, raw):
            raise InputError(out, None, f"the output folder lies inside the input folder {raw}: its output would be "
                             "read as input by the next run", "write to a folder outside the inputs")


def _init_worker() -> None:
    os.environ.setdefault("POLARS_MAX_THREADS", "1")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """`map(fn, items)` in order, on `workers` fresh processes (spawned: Polars' threads do not survive fork)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    old = os.environ.get("POLARS_MAX_THREADS")
    os.environ["POLARS_MAX_THREADS"] = "1"  # read by each worker's Polars at import: one thread per process
    try:
        with mp.get_context("spawn").Pool(min(workers, len(items)), initializer=_init_worker) as pool:
            yield from pool.imap(fn, items)
    finally:
        if old is None:
            os.environ.pop("POLARS_MAX_THREADS", None)
        else:
            os.environ["POLARS_MAX_THREADS"] = old
