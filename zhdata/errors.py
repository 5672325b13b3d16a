"""Errors and the bad-input policy shared by every command."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


class InputError(Exception):
    """Bad input: names the file, where in it (line or record), and what is wrong."""

    def __init__(self, path: str | Path, where: str | int | None, problem: str, hint: str = ""):
        self.path, self.where, self.problem = str(path), where, problem
        loc = self.path if where is None else f"{self.path}:{where}"
        msg = f"{loc}: {problem}"
        if hint:
            msg += f" ({hint})"
        self.hint = hint
        super().__init__(msg)

    def __reduce__(self):  # picklable, so an error raised in a worker process reaches the parent intact
        return (type(self), (self.path, self.where, self.problem, self.hint))


class ErrorPolicy:
    """`--on-error stop|skip`: stop raises `InputError`; skip counts the record under `reason`."""

    def __init__(self, mode: str = "stop"):
        if mode not in ("stop", "skip"):
            raise ValueError(f"--on-error must be 'stop' or 'skip', not {mode!r}")
        self.mode = mode
        self.skipped: Counter[str] = Counter()
        self.examples: list[str] = []
        self.empty_files: list[str] = []
        self.skipped_files: list[str] = []  # files in input folders passed over under skip, with why

    def empty(self, path: str | Path) -> None:
        """An empty file holds no record: stop, or list it (it is not a record, so it is not counted)."""
        if self.mode == "stop":
            raise InputError(path, None, "empty file", "remove it, or use --on-error skip to pass over empty files")
        self.empty_files.append(str(path))

    def unreadable_files(self, folder: str | Path, files: list[Path]) -> None:
        """Files in an input folder whose format cannot be told from the name: stop naming them, or list them."""
        if self.mode == "stop":
            names = ", ".join(str(Path(f).relative_to(folder)) for f in files[:10]) + (" ..." if len(files) > 10 else "")
            raise InputError(folder, None, f"{len(files)} file(s) of unknown format (not .jsonl/.json/.parquet/.txt, "
                             f"optionally .gz/.zst/.xz): {names}",
                             "convert or remove them, pass --format, or use --on-error skip to pass over them")
        self.skipped_files.extend(f"{f}: format unknown from the name, skipped" for f in files)

    def drop(self, path: str | Path, where: str | int | None, problem: str | None, reason: str) -> None:
        """A record dropped by a rule or a limit (empty text, --max-record-mb), not an error: counted in both modes."""
        self.skipped[reason] += 1
        if problem and len(self.examples) < 20:
            self.examples.append(str(InputError(path, where, problem)))

    def bad(self, path: str | Path, where: str | int | None, problem: str, reason: str) -> None:
        err = InputError(path, where, problem, hint="use --on-error skip to count and skip such records")
        if self.mode == "stop":
            raise err
        self.skipped[reason] += 1
        if len(self.examples) < 20:
            self.examples.append(str(err).split(" (use --on-error")[0])
