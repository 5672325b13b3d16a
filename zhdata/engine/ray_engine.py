"""`--engine ray`: the stage functions as Ray tasks, one task per stage task, results in order.

The driver holds only the plan (a list of small task descriptions: pieces, shard paths) and the results in
flight (at most two tasks per cluster CPU are submitted ahead of the one it waits for); each Ray task reads its own
input and, where the stage writes (clean's shards), writes its own output, exactly as a local worker process does,
so the outputs of both engines are the same files. Plain Ray tasks, not Ray Data: a map of opaque tasks needs no
blocks, planner or shuffle, and Ray Data's executor (its actors, its planning loop, a worker importing pyarrow and
pandas) was most of `--engine ray`'s fixed cost (BENCHMARKS.md section 9).

A task whose worker dies (killed, out of memory, node lost) is run again by Ray, at most MAX_RETRIES times; then the
command stops with a one-line error naming the piece. An exception raised by the stage itself is not retried: bad
input becomes the stage's one-line error, a bug its traceback. A stage writes its output atomically, so a retried
task leaves no trace of its first attempt. A killed driver is resumed by the stage itself (finished shards are
skipped), as with the local engine.

Fault injection for tests: `ZHDATA_FAULT_KILL_ONCE=[STAGE:]INDEX:MARKER` in the driver's environment kills
(SIGKILL) the worker running task INDEX of the next map (STAGE `map`, the default; `links`: partition INDEX of
dedupe's global step, its candidate links) once (MARKER, a file path, records that it happened), after the task's work
and before its result is handed in: the worst moment, its outputs written and then written again by the retry. MARKER
`always` kills every attempt: a task that can never finish.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import ray

from ..errors import InputError

T = TypeVar("T")
R = TypeVar("R")

FAULT_ENV = "ZHDATA_FAULT_KILL_ONCE"
MAX_RETRIES = 3  # runs of a task after its worker died; Ray Data's default for its tasks is -1, forever
# What the driver hands its tasks so that they reach the same object store: the variables s3fs (botocore) and fsspec
# read for credentials, region and endpoint; gcsfs's endpoint (an emulator's, another universe's) and project.
# Never names of files (AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS): another node may not have them.
STORAGE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
               "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
               "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_UNIVERSE_DOMAIN", "GOOGLE_CLOUD_PROJECT", "GCSFS_DEFAULT_PROJECT")


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
        # Ray sends a token only where RAY_AUTH_MODE=token (or, for `auto`, where one is on disk); a cluster with
        # token authentication refuses the rest, which Ray reports as an unreachable cluster after ~20 s of retries
        auth = "" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else (
            "; a cluster with token authentication also needs RAY_AUTH_MODE=token here, and its token "
            "(~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise InputError("--ray-address", None, f"cannot reach a Ray cluster at {address}: {e}",
                         f"start one with `ray start --head`, or leave --ray-address out for a local Ray{auth}") from None


def remote(fn: Callable, num_returns: int = 1) -> Any:
    """`fn` as a Ray task of one CPU with `num_returns` results, run again at most MAX_RETRIES times if its worker
    dies, never for an exception of its own."""
    return ray.remote(fn).options(num_cpus=1, num_returns=num_returns, max_retries=MAX_RETRIES, retry_exceptions=False)


def get(ref: Any, what: str) -> Any:
    """`ray.get(ref)`; a task lost for good (its worker died on every run, its node gone) is a one-line error naming
    `what` it was working on. An exception raised by the task's own code is raised again as it is."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError:
        raise
    except ray.exceptions.RayError as e:
        why = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise InputError(what, None, f"its Ray task failed {MAX_RETRIES + 1} times ({type(e).__name__}: {why})",
                         "a worker that dies on every run of one task is usually out of memory on it: "
                         "give workers more memory or use smaller pieces") from None


def cancel_and_drain(refs: list) -> None:
    """Cancel the tasks of `refs` (the command stopped: an error, a user's ^C; no task left running for nothing) and
    fetch the errors of those that failed meanwhile (the store unreachable from every worker): never fetched, Ray
    would print each as an "Unhandled error" traceback after the command's one-line error."""
    for ref in refs:
        ray.cancel(ref, force=True)
    for ref in ray.wait(refs, num_returns=len(refs), timeout=5)[0] if refs else ():
        try:
            ray.get(ref)
        except Exception:
            pass


def fault_from_env(stage: str = "map") -> tuple[int, str] | None:
    """The fault to inject into `stage` (ZHDATA_FAULT_KILL_ONCE), read in the driver and handed to the tasks."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    head, _, rest = spec.partition(":")
    named = "map"
    if not head.isdigit():
        named, (head, _, rest) = head, rest.partition(":")
    return (int(head), rest) if named == stage else None


def maybe_die(fault: tuple[int, str] | None, index: int) -> None:
    """Kill this worker if it runs task `index` and the fault asks for it (see the module's docstring)."""
    if fault is None or index != fault[0]:
        return
    if fault[1] != "always":
        if Path(fault[1]).exists():
            return
        Path(fault[1]).write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


class RayEngine:
    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None):
        self.address, self.workers = address, workers

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        items = list(items)
        if not items:
            return iter(())
        init_ray(self.address, self.workers)
        return self._map(fn, items)

    def _map(self, fn: Callable[[T], R], items: list[T]) -> Iterator[R]:
        ahead = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        task, fault = remote(_run), fault_from_env()
        pending: deque = deque()
        try:
            for i, item in enumerate(items):
                pending.append((item, task.remote(fn, item, i, fault)))
                if len(pending) > ahead:
                    yield _value(*pending.popleft())
            while pending:
                yield _value(*pending.popleft())
        finally:
            cancel_and_drain([ref for _, ref in pending])

    def describe(self) -> dict:
        out: dict[str, Any] = {"engine": "ray", "address": self.address or os.environ.get("RAY_ADDRESS") or "local"}
        if ray.is_initialized():
            out["cluster_cpus"] = int(ray.cluster_resources().get("CPU", 0))
        return out

    def nodes(self) -> int:
        init_ray(self.address, self.workers)
        return sum(1 for n in ray.nodes() if n.get("Alive"))


def _value(item: Any, ref: Any) -> Any:
    value = get(ref, label(item))
    if isinstance(value, _Failed):
        raise value.error
    return value


def label(item: Any) -> str:
    """The piece a stage task works on, for an error: its file (and bytes) or shard path."""
    first = item[0] if isinstance(item, tuple) and item else item
    if hasattr(first, "path"):
        where = f" bytes {first.start}-{first.end}" if getattr(first, "end", None) is not None else ""
        return f"{first.path}{where}"
    return str(first)


class _Failed:
    """Bad input found inside a task: carried back as a value and raised by the driver as the one-line error."""

    def __init__(self, error: InputError):
        self.error = error


def _run(fn: Callable[[Any], Any], item: Any, index: int, fault: tuple[int, str] | None) -> Any:
    # one Polars thread per task, as in the local engine's processes (read by Polars when first imported)
    os.environ.setdefault("POLARS_MAX_THREADS", "1")
    try:
        value: Any = fn(item)
    except InputError as e:
        value = _Failed(e)
    maybe_die(fault, index)  # dies with the task's work done, its result not handed in
    return value
