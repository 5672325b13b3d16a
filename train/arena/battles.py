"""Answer files of several models (`train generate` output), matched by prompt id, and battles drawn from them."""

from __future__ import annotations

import random
from itertools import combinations
from pathlib import Path

from zhdata.errors import InputError
from zhdata.readers import iter_records


def load_answers(files: list[str | Path]) -> dict[str, dict[str, dict]]:
    """{model: {prompt id: answer record}}; the model is the records' `model` field (else the file's stem)."""
    models: dict[str, dict[str, dict]] = {}
    for f in files:
        answers: dict[str, dict] = {}
        name = None
        for where, rec in iter_records(f):
            if not isinstance(rec, dict) or not isinstance(rec.get("answer"), str) or rec.get("id") is None:
                raise InputError(f, where, "not an answer record (needs `id` and `answer`, as `train generate` writes)")
            name = name or str(rec.get("model") or Path(f).name.split(".")[0])
            answers[str(rec["id"])] = rec
        if name in models:
            raise InputError(f, None, f"a second answer file of model {name!r}", "one answer file per model")
        models[name] = answers
    if len(models) < 2:
        raise InputError(files[0] if files else "--answers", None, "the arena needs the answer files of at least two models")
    return models


class Deck:
    """Battles: a pair of models that answered the same prompt, drawn uniformly, and one of their common prompts."""

    def __init__(self, answers: dict[str, dict[str, dict]]):
        self.answers = answers
        self.pairs = {}
        for a, b in combinations(sorted(answers), 2):
            common = sorted(set(answers[a]) & set(answers[b]))
            if common:
                self.pairs[(a, b)] = common
        if not self.pairs:
            raise InputError("--answers", None, "no two answer files share a prompt id (answer the same prompt file)")

    def draw(self, rng: random.Random) -> tuple[str, str, str]:
        """(prompt id, model shown as A, model shown as B), sides in random order."""
        pair = rng.choice(sorted(self.pairs))
        pid = rng.choice(self.pairs[pair])
        a, b = pair if rng.random() < 0.5 else pair[::-1]
        return pid, a, b

    def prompt(self, pid: str, model: str) -> dict:
        """The prompt as the answer record carries it: `messages` (chat) or `text`."""
        rec = self.answers[model][pid]
        return {k: rec[k] for k in ("messages", "text") if k in rec}
