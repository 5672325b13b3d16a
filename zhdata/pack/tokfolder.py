"""A Hugging Face tokenizer folder as packing needs it: the fast tokenizer, its identity and special tokens."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from ..errors import InputError
from ..manifest import file_sha256

_NO_LIMIT = 1_000_000_000  # transformers writes a huge model_max_length when a tokenizer sets none


@dataclass
class TokenizerFolder:
    path: Path
    tokenizer: Tokenizer
    sha256: str
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
        return {"sha256": self.sha256, "vocab_size": self.vocab_size, "path": str(self.path.resolve())}


def load_tokenizer_folder(path: str | Path) -> TokenizerFolder:
    """Load DIR/tokenizer.json (+ tokenizer_config.json); clear errors when it is not a tokenizer folder."""
    p = Path(path)
    if p.is_file() and p.suffix == ".model":
        raise InputError(p, None, "this is a SentencePiece model, not a Hugging Face tokenizer folder",
                         f"convert it first: tokenizer convert {p} -o TOK_DIR")
    if not p.is_dir():
        raise InputError(p, None, "tokenizer folder not found", "pass the folder written by `tokenizer convert` or `tokenizer extend`")
    tj = p / "tokenizer.json"
    if not tj.exists():
        raise InputError(p, None, "no tokenizer.json in this folder", "pass the folder written by `tokenizer convert` or `tokenizer extend`")
    try:
        tok = Tokenizer.from_file(str(tj))
    except Exception as e:  # tokenizers raises a bare Exception on a broken file
        raise InputError(tj, None, f"not a readable tokenizer.json: {e}") from None
    cfg_file = p / "tokenizer_config.json"
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.exists() else {}
    except json.JSONDecodeError as e:
        raise InputError(cfg_file, e.lineno, f"malformed JSON: {e.msg} at column {e.colno}") from None
    return TokenizerFolder(p, tok, file_sha256(tj), tok.get_vocab_size(with_added_tokens=True), config)
