"""Executors for the data stages: the stages are pure functions of a task (a piece, a shard, a batch), an engine runs
them over many tasks and hands the results back in task order.

`--engine local` (default) runs them on this machine's processes (`zhdata.shards.parallel_map`) and never imports
Ray; `--engine ray` runs the same functions as Ray tasks on a Ray cluster
(`zhdata.engine.ray_engine`, imported only then). Every command that takes `--engine` gets it, with
`--ray-address`, from `add_engine_options`, and builds its engine with `engine_from_args`.

A stage passed to an engine must be a module-level function (pickled by reference) of one picklable task.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, TypeVar

from ..errors import InputError

T = TypeVar("T")
R = TypeVar("R")

ENGINES = ("local", "ray")


class Engine(Protocol):
    name: str

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """`map(fn, items)`, results in the order of `items`, yielded as they become ready in that order."""
        ...

    def describe(self) -> dict:
        """What ran the stage, for the manifest."""
        ...

    def nodes(self) -> int:
        """Machines the tasks may run on."""
        ...


class LocalEngine:
    """Today's executor: `workers` spawned processes on this machine."""

    name = "local"

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        from ..shards import parallel_map

        return parallel_map(fn, items, self.workers)

    def describe(self) -> dict:
        return {"engine": "local", "workers": self.workers}

    def nodes(self) -> int:
        return 1


def warn_if_unshared(engine: Engine, locations: Iterable[str | Path]) -> None:
    """On several nodes every task reads its inputs and writes its outputs itself, so a local path works only where
    every node mounts it at that path (a shared filesystem), which the driver cannot check: say so, naming them."""
    from .. import fs

    if engine.name == "local":  # one machine: nothing to ask (and no Ray to import)
        return
    local = [str(p) for p in locations if not fs.is_remote(str(p))]
    if local and (n := engine.nodes()) > 1:
        print(f"warning: the Ray cluster has {n} nodes and tasks on each read or write {', '.join(local[:3])}"
              f"{f' and {len(local) - 3} more' if len(local) > 3 else ''}: local paths must be on a filesystem "
              "every node mounts at the same path; else use an object store (s3://...)", file=sys.stderr)


def get_engine(name: str, ray_address: str | None = None, workers: int | None = None) -> Engine:
    """The engine called `name`: local (`workers` processes) or ray (a cluster at `ray_address`, `auto` for the one
    this machine belongs to, or None: a local Ray started on demand with `workers` CPUs)."""
    if name == "local":
        if ray_address:
            raise InputError("(command line)", None, "--ray-address needs --engine ray")
        return LocalEngine(workers or os.cpu_count() or 1)
    if name == "ray":
        try:
            from .ray_engine import RayEngine
        except ImportError as e:
            raise InputError("(command line)", None, f"--engine ray needs Ray ({e.name or e} is not installed)",
                             'pip install "zh-adapt[ray]"') from None
        return RayEngine(ray_address, workers)
    raise InputError("(command line)", None, f"unknown engine {name!r}", f"choose one of {', '.join(ENGINES)}")


def add_engine_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--engine` and `--ray-address`, the same on every command that can run on Ray."""
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: processes on this machine (default; --workers of them); ray: Ray tasks on a Ray "
                   "cluster (pip install \"zh-adapt[ray]\"), same outputs")
    p.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="--engine ray: the cluster to join (auto: the one started on this machine with `ray start`; "
                   "default: RAY_ADDRESS if set, else a local Ray started for this run with --workers CPUs)")


def engine_from_args(a: argparse.Namespace, workers: int | None = None) -> Engine:
    return get_engine(a.engine, a.ray_address, workers if workers is not None else getattr(a, "workers", None))
