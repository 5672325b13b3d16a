"""Resumable sharded output and an ordered parallel map, shared by the streaming commands.

A shard is finished when both `NAME.parquet` and `.parts/NAME.json` (its counts) exist; both are
written to a temporary name first and renamed, so an interrupted run never leaves a half shard
that looks finished. `.parts/plan.json` holds the run's parameters: resuming with other inputs
or options is refused instead of mixing two runs in one folder.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import polars as pl

from .errors import InputError

T = TypeVar("T")
R = TypeVar("R")


class ShardState:
    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.parts = self.dir / ".parts"

    def start(self, params: dict[str, Any], overwrite: bool = False) -> None:
        plan = self.parts / "plan.json"
        text = json.dumps(params, sort_keys=True, ensure_ascii=False, default=str)
        if plan.exists() and plan.read_text(encoding="utf-8") != text:
            if not overwrite:
                raise InputError(self.dir, None, "this output folder holds a run with other inputs or options",
                                 "use a new output folder, or --overwrite to start again here")
            shutil.rmtree(self.parts)
            for f in self.dir.glob("*.parquet"):
                f.unlink()
        self.parts.mkdir(parents=True, exist_ok=True)
        _atomic_write(plan, text)

    def done(self, name: str) -> bool:
        return (self.parts / f"{name}.json").exists() and (self.dir / f"{name}.parquet").exists()

    def stats(self, name: str) -> dict[str, Any]:
        return json.loads((self.parts / f"{name}.json").read_text(encoding="utf-8"))

    def finish(self, name: str, frame: pl.DataFrame, stats: dict[str, Any]) -> None:
        tmp = self.dir / f".{name}.parquet.tmp"
        frame.write_parquet(tmp, compression="zstd", statistics=False)
        os.replace(tmp, self.dir / f"{name}.parquet")
        _atomic_write(self.parts / f"{name}.json", json.dumps(stats, ensure_ascii=False))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
