"""One writer per output folder: `with output_lock(folder):` around everything a command writes there.

The lock is `folder/.zh-adapt.lock`, a file holding the writer's pid, host and start time, held with an
exclusive `flock` for the whole run: the kernel drops it when the process dies, so a lock left behind by a
killed run is stale by construction and is taken over (with a notice naming the dead writer). A second
writer while the first is alive is refused with one line naming the folder and the holder. On filesystems
without `flock` the file's content decides: a lock of a dead pid on this host is stale, any other is live.
A process may nest locks of one folder (quickstart runs other commands in-process); only the outermost
one takes and releases it. While it holds the lock, a failed write into the folder (disk full, read-only,
no permission) becomes one line naming the folder (`_write_errors`).

On a remote folder (`s3://`, `gs://`, `hdfs://`: `zhdata.fs`) there is no flock. The lock is an object created only
if absent (one conditional put on S3, `If-None-Match: *`), so of two runs starting together exactly one gets it, and
the content decides as above: a lock of a dead pid on this host is stale and taken over, any other is live, even
one left by a driver killed on another machine; that one is refused with its holder named, and a user who knows it
is dead deletes the lock object. The guarantee is advisory (a writer that ignores the lock is not stopped) and holds
on stores with conditional writes; elsewhere two runs starting in the same instant could both pass the check.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import socket
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

from . import fs
from .errors import InputError

LOCK_FILE = ".zh-adapt.lock"
_held: dict[str, int] = {}  # folders this process holds (fs.canonical), with nesting depth


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    return True


def _holder(text: str) -> dict:
    try:
        info = json.loads(text)
        return info if isinstance(info, dict) else {}
    except ValueError:
        return {}


def _describe(info: dict) -> str:
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}"


def _stale(info: dict) -> bool:
    """Without flock: only a lock of a dead process on this very host is known to be stale."""
    if not info:
        return True
    return info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and not _alive(info["pid"])


def _refuse(folder: Path, info: dict) -> InputError:
    return InputError(folder, None, f"is being written by another run ({_describe(info)})",
                      f"wait for it to finish, or use another output folder; lock file {LOCK_FILE}")


def _acquire(folder: Path) -> int:
    """Open and lock the lock file; returns its descriptor holding the lock."""
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flock = True
        except BlockingIOError:
            info = _holder(os.read(fd, 4096).decode("utf-8", "replace"))
            os.close(fd)
            raise _refuse(folder, info) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            flock = False
        try:  # the file may have been removed and re-created by its last holder between open and flock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        info = _holder(os.read(fd, 4096).decode("utf-8", "replace"))
        if info and not flock and not _stale(info):
            os.close(fd)
            raise _refuse(folder, info)
        if info:
            print(f"note: taking over the stale lock of {folder} ({_describe(info)}, no longer running)", file=sys.stderr)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        return fd


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


@contextmanager
def _write_errors(out: str | Path) -> Iterator[None]:
    """Turn a failed write into the output folder (disk full, read-only, no permission) into one line naming it.

    The resumable stages write shards, progress and manifest to temporary names and rename them, so what was
    finished stays finished and a rerun resumes there. An error about a file elsewhere (an input) passes through.
    """
    try:
        yield
    except OSError as e:
        folder = Path(out).resolve()
        if e.errno not in _WRITE_ERRNOS or (e.filename and folder != Path(e.filename).resolve()
                                            and folder not in Path(e.filename).resolve().parents):
            raise
        raise InputError(out, None, f"cannot write the output here: {e.strerror or os.strerror(e.errno)}",
                         "free space or make it writable and rerun: clean, dedupe, pack and `train run --resume auto` resume "
                         "where they stopped") from None


def _acquire_remote(folder: str) -> str:
    """Create the lock object of a remote folder (module doc); returns the content that marks it as ours."""
    path = fs.join(folder, LOCK_FILE)
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": os.urandom(8).hex()}) + "\n"
    info: dict = {}
    for _ in range(3):  # a stale lock removed, or a live one released between our put and our read: try again
        if fs.create_exclusive(path, me.encode()):
            return me
        try:
            info = _holder(fs.read_text(path))
        except FileNotFoundError:
            continue
        if not _stale(info):
            break
        print(f"note: taking over the stale lock of {folder} ({_describe(info)}, no longer running)", file=sys.stderr)
        fs.remove(path)
    raise _refuse(folder, info)


@contextmanager
def _remote_lock(folder: str) -> Iterator[None]:
    try:
        me = _acquire_remote(folder)
    except PermissionError as e:
        raise InputError(folder, None, f"cannot write the lock object here: {e}", "check the credentials' write access") from None
    except FileNotFoundError as e:  # S3: no such bucket
        raise InputError(folder, None, f"cannot write here: {e}", "create the bucket first, or check its name") from None
    try:
        yield
    finally:
        try:
            if fs.read_text(fs.join(folder, LOCK_FILE)) == me:  # never remove a lock someone else took over
                fs.remove(fs.join(folder, LOCK_FILE))
        except OSError:
            pass


@contextmanager
def output_lock(folder: str | Path) -> Iterator[str | Path]:
    """Hold the exclusive write lock of `folder` (created if missing; a local path or a URI) for the block."""
    folder = fs.local(folder)
    key = fs.canonical(folder)
    if key in _held:
        _held[key] += 1
        try:
            yield folder
        finally:
            _held[key] -= 1
        return
    if isinstance(folder, str):
        _held[key] = 1
        try:
            with _remote_lock(folder):
                yield folder
        finally:
            _held.pop(key, None)
        return
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(folder, None, f"cannot create the output folder: {e.strerror}") from None
    try:
        fd = _acquire(folder)
    except OSError as e:
        raise InputError(folder, None, f"cannot write the lock file here: {e.strerror}",
                         "is the folder or its filesystem read-only?") from None
    _held[key] = 1
    try:
        with _write_errors(folder):
            yield folder
    finally:
        _held.pop(key, None)
        try:  # remove while still holding it, so that no one locks a file that is gone
            os.unlink(folder / LOCK_FILE)
            if created:  # a run refused before writing anything leaves no empty folder behind
                folder.rmdir()
        except OSError:
            pass
        os.close(fd)


def locked_output(attr: str, remote: bool = False) -> Callable[[Callable[[Any], int]], Callable[[Any], int]]:
    """Decorator of a command's `run(args)`: hold the lock of the folder in `args.<attr>` (if given) while it runs.
    A command that writes through `zhdata.fs` says `remote=True`; any other refuses an object-store URI up front."""
    def wrap(fn: Callable[[Any], int]) -> Callable[[Any], int]:
        @functools.wraps(fn)
        def run(args: Any) -> int:
            folder = getattr(args, attr, None)
            if folder and not remote and fs.is_remote(str(folder)):
                raise InputError(folder, None, "this command writes to a local folder only, not to an object store",
                                 "write to a local folder, then copy it up (e.g. aws s3 cp --recursive)")
            with output_lock(folder) if folder else nullcontext():
                return fn(args)
        return run
    return wrap
