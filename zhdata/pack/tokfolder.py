"""A Hugging Face tokenizer folder as packing needs it: the fast tokenizer, its identity and special tokens.

A tokenizer's identity is `tokenizer_fingerprint`: a sha256 of what it does, not of its file bytes, so
that a Hub `tokenizer.json` and the `tokenizer convert` output of the same SentencePiece model match.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ..errors import InputError
from ..manifest import file_sha256

_NO_LIMIT = 1_000_000_000  # transformers writes a huge model_max_length when a tokenizer sets none
# tokenizer.json parts that decide which ids a text becomes (and which piece each id is). Left out:
# the decoder (ids -> display text; it cannot change what packed ids mean), truncation and padding (set
# per call by transformers) and the format version.
_ENCODING_PARTS = ("model", "normalizer", "pre_tokenizer", "post_processor")
# tokenizer_config.json entries that packing reads (EOS after each document, BOS by add_bos_token). Chat
# templates, class names and display options are left out.
_CONFIG_ROLES = ("bos_token", "eos_token", "unk_token")
_CONFIG_FLAGS = ("add_bos_token", "add_eos_token")


def _token_content(tok: Any) -> str | None:
    return tok.get("content") if isinstance(tok, dict) else tok  # an AddedToken is serialised as a dict


def tokenizer_fingerprint(tokenizer: Tokenizer, config: Mapping[str, Any] | None = None) -> str:
    """The identity of a tokenizer: sha256 of a canonical form of what it does.

    Covers the model (type, pieces and ids, merges in rank order or unigram scores, byte fallback, unk,
    dropout), normalizer, pre-tokenizer, post-processor (BOS/EOS insertion), the added and special tokens
    with their ids and flags, and from `config` (tokenizer_config.json) the bos/eos/unk tokens and
    add_bos_token/add_eos_token. Equivalent serialisations (key order, formatting, merges as "a b" strings
    or ["a", "b"] pairs, defaults written or not) give one fingerprint, because the tokenizer is first
    loaded and re-serialised by `tokenizers` itself; any change in encoding gives another.
    """
    d = json.loads(tokenizer.to_str())
    canon: dict[str, Any] = {k: d.get(k) for k in _ENCODING_PARTS}
    model = dict(canon["model"] or {})
    if isinstance(model.get("merges"), list):
        model["merges"] = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model["merges"]]
    canon["model"] = model
    canon["added_tokens"] = sorted(d.get("added_tokens") or [], key=lambda t: t["id"])
    cfg = config or {}
    roles = {}
    for key in _CONFIG_ROLES:
        content = _token_content(cfg.get(key))
        roles[key] = None if content is None else [content, tokenizer.token_to_id(content)]
    roles.update({key: bool(cfg.get(key, False)) for key in _CONFIG_FLAGS})
    canon["config"] = roles
    text = json.dumps(canon, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class TokenizerFolder:
    path: Path
    tokenizer: Tokenizer
    fingerprint: str  # tokenizer_fingerprint: the identity to compare
    file_sha256: str  # of tokenizer.json's bytes, for the record only
    vocab_size: int
    config: dict

    def token_id(self, key: str) -> int | None:
        """Id of the special token named `key` in tokenizer_config.json (e.g. 'eos_token'), or None."""
        tok = self.config.get(key)
        if isinstance(tok, dict):  # AddedToken serialised as a dict
            tok = tok.get("content")
        return None if tok is None else self.tokenizer.token_to_id(tok)

    def token_str(self, key: str) -> str | None:
        tok = self.config.get(key)
        return tok.get("content") if isinstance(tok, dict) else tok

    @property
    def max_length(self) -> int | None:
        n = self.config.get("model_max_length")
        return int(n) if isinstance(n, (int, float)) and n < _NO_LIMIT else None

    def describe(self) -> dict:
        return {"fingerprint": self.fingerprint, "file_sha256": self.file_sha256, "vocab_size": self.vocab_size,
                "path": str(self.path.resolve())}


def load_tokenizer_folder(path: str | Path) -> TokenizerFolder:
    """Load DIR/tokenizer.json (+ tokenizer_config.json); clear errors when it is not a tokenizer folder."""
    p = Path(path)
    if p.is_file() and p.suffix == ".model":
        raise InputError(p, None, "this is a SentencePiece model, not a Hugging Face tokenizer folder",
                         f"convert it first: tokenizer convert {p} -o TOK_DIR")
    hint = "pass the folder written by `tokenizer convert` or `tokenizer extend` (or a model folder with its tokenizer)"
    if not p.exists():
        raise InputError(p, None, "tokenizer folder does not exist", hint)
    if not p.is_dir():
        raise InputError(p, None, "not a folder (a tokenizer is a folder holding tokenizer.json)", hint)
    tj = p / "tokenizer.json"
    if not tj.is_file():
        raise InputError(p, None, "not a tokenizer folder (no tokenizer.json in it)", hint)
    try:
        tok = Tokenizer.from_file(str(tj))
    except Exception as e:  # tokenizers raises a bare Exception on a broken file
        raise InputError(tj, None, f"not a readable tokenizer.json: {e}") from None
    cfg_file = p / "tokenizer_config.json"
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.exists() else {}
    except json.JSONDecodeError as e:
        raise InputError(cfg_file, e.lineno, f"malformed JSON: {e.msg} at column {e.colno}") from None
    return TokenizerFolder(p, tok, tokenizer_fingerprint(tok, config), file_sha256(tj),
                           tok.get_vocab_size(with_added_tokens=True), config)
