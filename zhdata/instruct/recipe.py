"""Data recipes (TOML): named sources with format, upstream count, licence and where to get them, plus
the cleaning options, so a published SFT mix can be rebuilt with one command and compared with its paper.

    [recipe]   name, description, reference_examples (the paper's count after its own cleaning), reference
    [options]  any `zhdata instruct` option by its long name (split_turns = true, opencc = "t2s", ...)
    [[sources]] name, files (globs under --data-dir), format, upstream_records, upstream_approx, licence, url,
               lang ("zh"/"en"), columns (LLaMA-Factory `columns`/`tags` keys), notes, optional (skip when absent)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .formats import FORMATS, column_map
from .pipeline import Source

_SOURCE_KEYS = {"name", "files", "format", "upstream_records", "upstream_approx", "licence", "url", "lang",
                "columns", "notes", "optional"}


@dataclass
class Recipe:
    path: Path
    info: dict[str, Any]
    options: dict[str, Any]
    sources: list[dict[str, Any]]


def load_recipe(path: str | Path, known_options: set[str]) -> Recipe:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(p, None, "recipe file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(p, None, f"not valid TOML: {e}") from None
    options = {k.replace("-", "_"): v for k, v in data.get("options", {}).items()}
    if bad := sorted(set(options) - known_options):
        raise InputError(p, "[options]", f"unknown options {bad}", f"known: {', '.join(sorted(known_options))}")
    sources = data.get("sources", [])
    if not sources:
        raise InputError(p, None, "recipe has no [[sources]]")
    for k, s in enumerate(sources, 1):
        where = f"[[sources]] #{k}"
        if bad := sorted(set(s) - _SOURCE_KEYS):
            raise InputError(p, where, f"unknown keys {bad}", f"known: {', '.join(sorted(_SOURCE_KEYS))}")
        if "name" not in s or not s.get("files"):
            raise InputError(p, where, "a source needs a name and files")
        if s.get("format", "auto") not in (*FORMATS, "auto"):
            raise InputError(p, where, f"unknown format {s['format']!r}", f"choose one of {', '.join(FORMATS)}, auto")
    return Recipe(p, data.get("recipe", {}), options, sources)


def resolve_sources(recipe: Recipe, data_dir: str | Path) -> tuple[list[Source], list[str]]:
    """The recipe's sources with their files found under `data_dir`, and warnings for optional sources left out
    (a missing required source is an error naming where to get it)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(root, None, "--data-dir is not a folder")
    out, warnings = [], []
    for s in recipe.sources:
        files: list[Path] = []
        for pattern in ([s["files"]] if isinstance(s["files"], str) else s["files"]):
            files += sorted(f for f in root.glob(pattern) if f.is_file())
        if not files and s.get("optional"):
            warnings.append(f"optional source {s['name']!r}: no file matching {s['files']} under {root}; left out")
            continue
        if not files:
            raise InputError(recipe.path, f"source {s['name']!r}",
                             f"no file matching {s['files']} under {root}",
                             f"download it from {s.get('url', 'its upstream')} into {root}")
        try:
            cols = column_map(s.get("columns", {}))
        except ValueError as e:
            raise InputError(recipe.path, f"source {s['name']!r}", str(e)) from None
        fmt = s.get("format", "auto")
        info = {k: s[k] for k in ("upstream_records", "upstream_approx", "licence", "url", "notes") if k in s}
        out.append(Source(s["name"], files, None if fmt == "auto" else fmt, cols, s.get("lang", "zh") == "en", info))
    return out, warnings
