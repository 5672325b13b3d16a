"""`--engine ray`: the stage functions as Ray Data `map_batches` tasks, one task per stage task, results in order.

The driver holds only the plan (a list of small task descriptions: pieces, shard paths) and the results in
flight; each Ray task reads its own input and, where the stage writes (clean's shards), writes its own output,
exactly as a local worker process does, so the outputs of both engines are the same files. A task whose worker
dies (killed, out of memory, node lost) is retried by Ray Data (its default: until it succeeds; an exception raised by
the stage itself is not retried, bad input becomes the stage's one-line error); a stage writes its output atomically,
so a retried task leaves no trace of its first attempt. A killed driver is resumed by the stage itself (finished
shards are skipped), as with the local engine.

Fault injection for tests: `ZHDATA_FAULT_KILL_ONCE=INDEX:MARKER` in the driver's environment kills (SIGKILL) the
worker running task INDEX of the next map, once (MARKER, a file path, records that it happened), after the task's
work and before its result is handed in: the worst moment, its outputs written and then written again by the retry.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import ray
import ray.data

from ..errors import InputError

T = TypeVar("T")
R = TypeVar("R")

FAULT_ENV = "ZHDATA_FAULT_KILL_ONCE"
# What the driver hands its tasks so that they reach the same object store: the variables s3fs (botocore) and fsspec
# read for credentials, region and endpoint. Never names of files (AWS_PROFILE, credential files): another node
# may not have them.
STORAGE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
               "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def storage_env() -> dict[str, str]:
    """The driver's STORAGE_ENV and FSSPEC_* variables that are set, less those the submitted job's own runtime_env
    (`ray job submit --runtime-env-json`) sets already: Ray refuses to merge a variable set twice."""
    env = {k: v for k, v in os.environ.items() if k in STORAGE_ENV or k.startswith("FSSPEC_")}
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    for k in ((job.get("runtime_env") or {}).get("env_vars") or {}):
        env.pop(k, None)
    return env


def init_ray(address: str | None = None, num_cpus: int | None = None, **local: Any) -> None:
    """Join the cluster at `address` (`auto`, HOST:PORT, ray://...), else RAY_ADDRESS, else start a local Ray with
    `num_cpus` CPUs (`local`: more `ray.init` arguments for it, e.g. object_store_memory). Nothing if already joined.
    Every task of the job gets the driver's object-store credentials and endpoint (`storage_env`) as environment
    variables, whichever node it runs on."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = storage_env()
    runtime_env = {"env_vars": env} if env else None
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
        else:
            # "local": a new Ray for this run, even where `ray start` left a cluster's address on this machine
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                     runtime_env=runtime_env, **local)
    except ConnectionError as e:
        raise InputError("--ray-address", None, f"cannot reach a Ray cluster at {address}: {e}",
                         "start one with `ray start --head`, or leave --ray-address out for a local Ray") from None


class RayEngine:
    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None):
        self.address, self.workers = address, workers

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        items = list(items)
        if not items:
            return iter(())
        init_ray(self.address, self.workers)
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # results in task order, as the local engine gives them
        ctx.enable_progress_bars = False  # the stage draws its own bar
        ctx.print_on_execution_start = False
        stage = _stage(pickle.dumps(fn), _fault())
        rows = [{"index": i, "task": pickle.dumps(item)} for i, item in enumerate(items)]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(stage, batch_size=1, num_cpus=1)
        return _results(ds)

    def describe(self) -> dict:
        out: dict[str, Any] = {"engine": "ray", "address": self.address or os.environ.get("RAY_ADDRESS") or "local"}
        if ray.is_initialized():
            out["cluster_cpus"] = int(ray.cluster_resources().get("CPU", 0))
        return out

    def nodes(self) -> int:
        init_ray(self.address, self.workers)
        return sum(1 for n in ray.nodes() if n.get("Alive"))


def _results(ds: "ray.data.Dataset") -> Iterator[Any]:
    for row in ds.iter_rows():
        value = pickle.loads(row["result"])
        if isinstance(value, _Failed):
            raise value.error
        yield value


class _Failed:
    """Bad input found inside a task: carried back as a value and raised by the driver as the one-line error."""

    def __init__(self, error: InputError):
        self.error = error


def _fault() -> tuple[int, str] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    index, _, marker = spec.partition(":")
    return int(index), marker


def _stage(fn_bytes: bytes, fault: tuple[int, str] | None) -> Callable[[dict], dict]:
    def run(batch: dict) -> dict:
        # one Polars thread per task, as in the local engine's processes (read by Polars when first imported)
        os.environ.setdefault("POLARS_MAX_THREADS", "1")
        fn = pickle.loads(fn_bytes)
        out = []
        for index, task in zip(batch["index"], batch["task"]):
            try:
                value: Any = fn(pickle.loads(task))
            except InputError as e:
                value = _Failed(e)
            if fault is not None and int(index) == fault[0] and not Path(fault[1]).exists():
                Path(fault[1]).write_text(str(os.getpid()))  # dies with the task's work done, its result not handed in
                os.kill(os.getpid(), signal.SIGKILL)
            out.append(pickle.dumps(value))
        return {"result": out}

    return run
