"""A model folder's files as identity and size, without reading a tensor: `config.json`, the safetensors index and
each `*.safetensors` file's header (the JSON before the tensor bytes: names, shapes, dtypes and offsets)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from zhdata.errors import InputError


def safetensors_header(path: Path) -> bytes:
    """The JSON header of a safetensors file, as stored (its first 8 bytes give its length)."""
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise InputError(path, None, "not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > path.stat().st_size - 8:
            raise InputError(path, None, "not a safetensors file (its header length runs past the end)")
        return fh.read(n)


def safetensors_parameters(folder: Path) -> int | None:
    """Number of parameters from the headers of the folder's *.safetensors files (no tensor is read)."""
    import math

    files = sorted(folder.glob("*.safetensors"))
    total = 0
    for f in files:
        header = json.loads(safetensors_header(f))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total if files else None


def model_identity(folder: str | Path) -> dict[str, str]:
    """Per file of a model folder, what identifies it cheaply: sha256 of `config.json` and of the index, and each
    weight file's size and header sha256 (a 93 GB checkpoint is identified by reading a few MB). Changed weights
    of the same shapes keep the header; their file is then told apart only by its size, not at all when equal."""
    d = Path(folder)
    out: dict[str, str] = {}
    for name in ("config.json", "model.safetensors.index.json"):
        if (d / name).is_file():
            out[name] = "sha256 " + hashlib.sha256((d / name).read_bytes()).hexdigest()[:16]
    for f in sorted(d.glob("*.safetensors")):
        out[f.name] = f"{f.stat().st_size:,} bytes, header sha256 {hashlib.sha256(safetensors_header(f)).hexdigest()[:16]}"
    return out
