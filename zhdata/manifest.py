"""`manifest.json` beside every output: inputs with checksums, parameters, versions, time, and counts.

Counts always add up: records in = records out + records dropped (summed over reasons).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from . import fs

MANIFEST = "manifest.json"
_VERSIONED = (
    "zh-adapt", "polars", "pyarrow", "numpy", "opencc", "sentencepiece",
    "tokenizers", "torch", "transformers", "peft", "bitsandbytes",
)


@dataclass
class Counts:
    """Records in and out, and records dropped or modified, per reason."""

    records_in: int = 0
    records_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    modified: Counter = field(default_factory=Counter)

    def merge(self, other: "Counts") -> "Counts":
        self.records_in += other.records_in
        self.records_out += other.records_out
        self.dropped.update(other.dropped)
        self.modified.update(other.modified)
        return self

    def check(self, what: str = "counts") -> None:
        dropped = sum(self.dropped.values())
        if self.records_in != self.records_out + dropped:
            raise AssertionError(
                f"{what} do not add up: in={self.records_in} out={self.records_out} dropped={dropped}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "records_in": self.records_in,
            "records_out": self.records_out,
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_total": sum(self.dropped.values()),
            "modified": dict(sorted(self.modified.items())),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Counts":
        return cls(d["records_in"], d["records_out"], Counter(d.get("dropped", {})), Counter(d.get("modified", {})))


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with fs.open_read(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_input(path: str | Path) -> dict[str, Any]:
    """A local path or URI (`zhdata.fs`) with its size and checksum."""
    return {"path": fs.canonical(path), "size": fs.size(path), "sha256": file_sha256(path)}


def cli_params(args: Any) -> dict[str, Any]:
    """A command's parsed arguments as manifest parameters (paths and other objects as strings)."""
    def plain(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return str(v)

    return {k: plain(v) for k, v in vars(args).items() if k != "func"}


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class Manifest:
    """Collects what a command did; `write` checks the counts and saves `manifest.json` atomically."""

    def __init__(self, command: str, params: dict[str, Any]):
        self.command = command
        self.params = params
        self.started = time.time()
        self.inputs: list[dict[str, Any]] = []
        self.counts = Counts()
        self.sources: dict[str, Counts] = {}
        self.warnings: list[str] = []
        self.extra: dict[str, Any] = {}

    def add_inputs(self, paths: Iterable[str | Path]) -> None:
        self.inputs.extend(describe_input(p) for p in paths)

    def source(self, name: str) -> Counts:
        return self.sources.setdefault(name, Counts())

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "params": self.params,
            "versions": package_versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "elapsed_s": round(time.time() - self.started, 3),
            "inputs": self.inputs,
            "counts": self.counts.to_dict(),
            "sources": {k: v.to_dict() for k, v in sorted(self.sources.items())},
            "warnings": self.warnings,
            **self.extra,
        }

    def write(self, out_dir: str | Path, name: str = MANIFEST) -> Path:
        """Save `out_dir/manifest.json` (or `name`, for commands whose outputs share a folder); `out_dir` may be a URI."""
        self.counts.check()
        for source, c in self.sources.items():
            c.check(f"counts of source {source!r}")
        out = fs.join(out_dir, name)
        fs.makedirs(fs.parent(out))
        fs.write_text(out, json.dumps(self.to_dict(), ensure_ascii=False, indent=2, default=str) + "\n")
        return out


def read_manifest(dir_or_file: str | Path) -> dict[str, Any]:
    p = fs.local(dir_or_file)
    if fs.isdir(p):
        p = fs.join(p, MANIFEST)
    if not fs.exists(p):
        raise FileNotFoundError(f"{p}: no manifest.json here; is this the output folder of a zhdata/tokenizer/train command?")
    return json.loads(fs.read_text(p))
