"""Arena votes in SQLite: every battle shown gets a one-time token; a vote is one transaction keyed by that token.

A vote that is refused (unknown token, another voter's battle, a second vote on the same battle, a bad
choice) changes nothing: the UNIQUE token of `votes` and the transaction keep every stored vote as it was.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from contextlib import closing
from pathlib import Path

CHOICES = ("a", "b", "tie", "both_bad")
SCHEMA = """
CREATE TABLE IF NOT EXISTS battles (
    token TEXT PRIMARY KEY, voter TEXT NOT NULL, prompt_id TEXT NOT NULL,
    model_a TEXT NOT NULL, model_b TEXT NOT NULL, shown TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, token TEXT NOT NULL UNIQUE REFERENCES battles(token),
    voter TEXT NOT NULL, time TEXT NOT NULL, prompt_id TEXT NOT NULL, model_a TEXT NOT NULL, model_b TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')));
"""


class VoteRefused(Exception):
    """A vote that is not stored; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class VoteStore:
    """One SQLite file (WAL journal, so readers never block the writer); a connection per call, safe across threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        return con

    def new_battle(self, voter: str, prompt_id: str, model_a: str, model_b: str) -> str:
        token = secrets.token_urlsafe(16)
        with closing(self._connect()) as con:
            con.execute("INSERT INTO battles VALUES (?, ?, ?, ?, ?, ?)", (token, voter, prompt_id, model_a, model_b, _now()))
        return token

    def vote(self, token: str, voter: str, choice: str) -> dict:
        """Store the vote on battle `token`; returns the battle (its model names revealed) or raises VoteRefused."""
        if choice not in CHOICES:
            raise VoteRefused(400, f"choice must be one of {', '.join(CHOICES)}")
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                battle = con.execute("SELECT * FROM battles WHERE token = ?", (token,)).fetchone()
                if battle is None:
                    raise VoteRefused(404, "unknown battle")
                if battle["voter"] != voter:
                    raise VoteRefused(403, "this battle was shown to another voter")
                try:
                    con.execute("INSERT INTO votes (token, voter, time, prompt_id, model_a, model_b, choice) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?)", (token, voter, _now(), battle["prompt_id"],
                                                                 battle["model_a"], battle["model_b"], choice))
                except sqlite3.IntegrityError:
                    raise VoteRefused(409, "this battle has already been voted on") from None
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return {"prompt_id": battle["prompt_id"], "model_a": battle["model_a"], "model_b": battle["model_b"], "choice": choice}

    def votes(self) -> list[dict]:
        """Every stored vote, in the order it was cast."""
        with closing(self._connect()) as con:
            return [dict(r) for r in con.execute("SELECT * FROM votes ORDER BY id")]
