"""Every file zhdata opens, lists, renames or deletes, by local path or URI: `s3://`, `gs://`, `hdfs://`, `file://`.

A location is a local path (`str` or `Path`, also `file://...`) or a URI of a remote filesystem, reached through
fsspec (s3fs for `s3://`, gcsfs for `gs://`, pyarrow for `hdfs://`; credentials and endpoints from the usual
environment: `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `GOOGLE_APPLICATION_CREDENTIALS`, `STORAGE_EMULATOR_HOST`, ...).
Local paths stay `Path`s, so the local path never pays for fsspec; remote locations stay URI strings (`Path` would
fold `s3://` into `s3:/`).

Atomic replacement (`atomic_writer`): locally a temporary name and `os.replace`; elsewhere a temporary key, then
on an object store (s3://, gs://) a server-side copy to the final key and a delete: the final object appears whole
or not at all (a copy is atomic), but a crash between the two leaves a `.tmp` object behind, which the next run
overwrites. On HDFS a move, an atomic rename.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from contextlib import contextmanager
from os import scandir
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from .errors import InputError

OBJECT_STORES = ("s3", "s3a", "gs", "gcs")  # URI schemes of stores of objects: no folders, no rename

# gcsfs logs warnings, and each error it is about to raise with its traceback, which reach stderr through logging's
# last resort when the program configured no logging; zhdata reports the error itself, in one line.
logging.getLogger("gcsfs").addHandler(logging.NullHandler())


def is_remote(loc: str | Path) -> bool:
    """A URI of a filesystem other than the local one (`file://` and plain paths are local)."""
    return isinstance(loc, str) and "://" in loc and not loc.startswith("file://")


def local(loc: str | Path) -> str | Path:
    """`loc` as this module passes it around: a `Path` for a local location, the URI string for a remote one."""
    if is_remote(loc):
        return str(loc).rstrip("/")
    s = str(loc)
    return Path(s[len("file://"):] if s.startswith("file://") else s)


# Errors of the object-store clients that mean this machine cannot reach the store at all (no credentials, an endpoint
# that does not answer), known by name: importing botocore, aiohttp or google.auth to test for them would load them
# every run. gcsfs reports a refused connection as aiohttp's error, after its retries.
_UNREACHABLE = {"NoCredentialsError": "no credentials found", "PartialCredentialsError": "incomplete credentials",
                "CredentialRetrievalError": "the credentials could not be fetched",
                "EndpointConnectionError": "its endpoint does not answer",
                "ClientConnectorError": "its endpoint does not answer",
                "DefaultCredentialsError": "no credentials found", "RefreshError": "the credentials could not be refreshed"}
_CLIENTS = ("botocore", "google", "aiohttp")
_HINTS = {"gs": "set GOOGLE_APPLICATION_CREDENTIALS or give the machine a service account, and STORAGE_EMULATOR_HOST "
                "for an emulator",
          "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, with AWS_ENDPOINT_URL for an S3-compatible store; "
                "or give the machine a role"}


def unreachable(e: BaseException | None, where: str) -> InputError | None:
    """The one-line error for an exception, or one it was raised from (a Ray task's), saying that the object store
    at `where` cannot be reached from here or refuses access (HTTP 403); None for any other exception."""
    hint = _HINTS.get(where.split("://", 1)[0].replace("gcs", "gs")) or "; ".join(_HINTS.values())
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for cls in type(e).__mro__:
            why = None
            if cls.__name__ in _UNREACHABLE and cls.__module__.split(".")[0] in _CLIENTS:
                why = f"{_UNREACHABLE[cls.__name__]} ({cls.__name__})"
            elif cls.__name__ == "HttpError" and cls.__module__.startswith("gcsfs") and getattr(e, "code", None) == 401:
                why = "no credentials accepted (HTTP 401)"  # gcsfs goes on anonymously when it finds none
            if why:
                return InputError(where, None, f"cannot reach the object store: {why}", hint)
        if _refused(e):
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), "Forbidden")
            return InputError(where, None, f"the object store refused access ({first})",
                              "check that these credentials may read the inputs and write the output there")
        e = e.__cause__ or e.__context__
    return None


def _refused(e: BaseException) -> bool:
    """HTTP 403 from the store, as the fsspec client raised it: s3fs's PermissionError (a bad key, no permission),
    gcsfs's plain OSError "Forbidden" (its only form for 403); never a local file's PermissionError. Raised here, its
    frames say so; raised in a worker process or Ray task, the traceback that came back as text does."""
    import traceback

    text = f"{e}\n{e.__cause__ or ''}"  # with Ray's RayTaskError text or multiprocessing's RemoteTraceback (the cause)
    if not (isinstance(e, PermissionError) or (isinstance(e, OSError) and "Forbidden" in text)):
        return False
    if any(f.f_globals.get("__name__", "").split(".")[0] in ("s3fs", "gcsfs") for f, _ in traceback.walk_tb(e.__traceback__)):
        return True
    return any(f"{os.sep}{client}{os.sep}" in text for client in ("s3fs", "gcsfs"))


def _fs(loc: str) -> tuple[Any, str]:
    """The filesystem and path of a URI, with the filesystem's listing cache dropped: other processes (workers)
    write into the same folders, so a cached listing would miss their files."""
    import fsspec  # only remote locations need it

    try:
        fs, path = fsspec.core.url_to_fs(loc)
    except (ImportError, ValueError) as e:
        raise InputError(loc, None, f"cannot reach this location: {e}",
                         "install the filesystem's package (s3fs for s3://, gcsfs for gs://; `pip install -e \".[cloud]\"`)") from None
    fs.invalidate_cache()
    return fs, path


def join(loc: str | Path, *names: str) -> str | Path:
    loc = local(loc)
    if isinstance(loc, Path):
        return loc.joinpath(*names)
    return "/".join([loc, *names])


def name(loc: str | Path) -> str:
    """The last component: `part-00000.parquet` of `s3://b/clean/part-00000.parquet`."""
    loc = local(loc)
    return loc.name if isinstance(loc, Path) else loc.rsplit("/", 1)[-1]


def parent(loc: str | Path) -> str | Path:
    loc = local(loc)
    return loc.parent if isinstance(loc, Path) else loc.rsplit("/", 1)[0]


def canonical(loc: str | Path) -> str:
    """A string that names the location the same way however it was written (absolute local path, or URI)."""
    loc = local(loc)
    return str(loc.resolve()) if isinstance(loc, Path) else loc


def within(inner: str | Path, outer: str | Path) -> bool:
    """Whether `inner` is `outer` or lies below it."""
    a, b = canonical(inner), canonical(outer)
    return a == b or a.startswith(b.rstrip("/") + "/")


def exists(loc: str | Path) -> bool:
    loc = local(loc)
    if isinstance(loc, Path):
        return loc.exists()
    fs, path = _fs(loc)
    return fs.exists(path)


def isdir(loc: str | Path) -> bool:
    loc = local(loc)
    if isinstance(loc, Path):
        return loc.is_dir()
    fs, path = _fs(loc)
    return fs.isdir(path)


def size(loc: str | Path) -> int:
    loc = local(loc)
    if isinstance(loc, Path):
        return loc.stat().st_size
    fs, path = _fs(loc)
    return int(fs.size(path))


def open_read(loc: str | Path) -> BinaryIO:
    """Open for reading bytes (seekable, buffered); OSError as the local `open` raises it."""
    loc = local(loc)
    if isinstance(loc, Path):
        return open(loc, "rb")
    fs, path = _fs(loc)
    return io.BufferedReader(fs.open(path, "rb"), buffer_size=1 << 20)  # fsspec's readline takes no size


def readable(loc: str | Path) -> Any:
    """What Parquet readers (pyarrow, Polars) take: a local path, read natively, or an open remote file."""
    loc = local(loc)
    return loc if isinstance(loc, Path) else open_read(loc)


def read_bytes(loc: str | Path) -> bytes:
    with open_read(loc) as f:
        return f.read()


def read_text(loc: str | Path) -> str:
    return read_bytes(loc).decode("utf-8")


def makedirs(loc: str | Path) -> None:
    """Create the folder and its parents (on object stores, where folders are only key prefixes: nothing to do)."""
    loc = local(loc)
    if isinstance(loc, Path):
        loc.mkdir(parents=True, exist_ok=True)
        return
    fs, path = _fs(loc)
    fs.makedirs(path, exist_ok=True)


def files(folder: str | Path) -> list[str | Path]:
    """Every file below `folder`, sorted, skipping hidden names at any depth (a run's `.parts/` state)."""
    folder = local(folder)
    if isinstance(folder, Path):
        out: list[Path] = []
        stack = [folder]
        while stack:
            d = stack.pop()
            for entry in scandir(d):
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif entry.is_file():
                    out.append(Path(entry.path))
        return sorted(out)
    fs, path = _fs(folder)
    proto = folder.split("://", 1)[0]
    found = []
    for p in fs.find(path):
        rel = p[len(path.rstrip("/")) + 1:]
        if rel and not any(part.startswith(".") for part in rel.split("/")):
            found.append(f"{proto}://{p}")
    return sorted(found)


def listdir(folder: str | Path) -> list[str]:
    """Names of the files directly in `folder` (hidden ones too), sorted; an empty list when it does not exist."""
    folder = local(folder)
    if isinstance(folder, Path):
        return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    fs, path = _fs(folder)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "file")


def remove(loc: str | Path) -> None:
    """Delete a file if it is there."""
    loc = local(loc)
    if isinstance(loc, Path):
        loc.unlink(missing_ok=True)
        return
    fs, path = _fs(loc)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def rmtree(loc: str | Path) -> None:
    """Delete a folder and everything below it, if it is there."""
    loc = local(loc)
    if isinstance(loc, Path):
        shutil.rmtree(loc, ignore_errors=True)
        return
    fs, path = _fs(loc)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@contextmanager
def atomic_writer(loc: str | Path) -> Iterator[BinaryIO]:
    """A binary file that replaces `loc` only when the block ends without an error (see the module doc)."""
    loc = local(loc)
    if isinstance(loc, Path):
        tmp = loc.with_name(f".{loc.name}.tmp")
        try:
            with open(tmp, "wb") as f:
                yield f
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, loc)
        return
    fs, path = _fs(loc)
    head, _, tail = path.rpartition("/")
    tmp = f"{head}/.{tail}.tmp"
    try:
        with fs.open(tmp, "wb") as f:
            yield f
    except BaseException:
        try:
            fs.rm_file(tmp)
        except OSError:
            pass
        raise
    if loc.split("://", 1)[0] in OBJECT_STORES:
        # the copy and delete a move is here, asked for directly: gcsfs's mv first tries GCS's objects.moveTo, and a
        # store without it answers 501, which gcsfs retries for about 30 s before copying
        try:
            fs.cp_file(tmp, path)
        finally:
            try:
                fs.rm_file(tmp)
            except OSError:  # a store that lets us write but not delete: the output is in place all the same
                pass
    else:
        fs.mv(tmp, path)


def upload(src: Path, loc: str | Path) -> None:
    """Copy the local file `src` to `loc`, streaming (s3fs: a multipart upload, whose object appears only once it is
    complete; memory: one part, 50 MB). Not atomic on every store: a caller that needs that writes a marker last."""
    loc = local(loc)
    if isinstance(loc, Path):
        with open(src, "rb") as f, atomic_writer(loc) as g:
            shutil.copyfileobj(f, g, 1 << 22)
        return
    fs, path = _fs(loc)
    fs.put_file(str(src), path)


def download(loc: str | Path, dst: Path) -> None:
    """Copy `loc` to the local file `dst`, streaming."""
    loc = local(loc)
    if isinstance(loc, Path):
        shutil.copyfile(loc, dst)
        return
    fs, path = _fs(loc)
    fs.get_file(path, str(dst))


def write_bytes(loc: str | Path, data: bytes) -> None:
    """Replace `loc` with `data` atomically."""
    with atomic_writer(loc) as f:
        f.write(data)


def write_text(loc: str | Path, text: str) -> None:
    write_bytes(loc, text.encode("utf-8"))


def create_exclusive(loc: str | Path, data: bytes) -> bool:
    """Create `loc` holding `data` only if nothing is there; False when something is. On S3 (and stores that
    honour `If-None-Match: *`) this is one conditional put, so of two writers at once exactly one succeeds;
    a store without conditional writes gets a check then a put, which two writers at the same instant can both pass."""
    loc = local(loc)
    if isinstance(loc, Path):
        try:
            fd = os.open(loc, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    fs, path = _fs(loc)
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    except (TypeError, NotImplementedError):  # a filesystem without exclusive create
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
    return True
