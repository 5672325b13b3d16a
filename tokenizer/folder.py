"""The files of a Hugging Face tokenizer folder, and the one way to copy them beside a model or a run."""

from __future__ import annotations

import shutil
from pathlib import Path

from .spm import MODEL_FILE

# everything transformers reads to build a tokenizer (chat templates may sit in files of their own)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", MODEL_FILE,
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[Path]:
    """Copy the tokenizer files that folder `src` holds into `dst` (created if needed); returns the copies."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(src / name, dst / name)) for name in TOKENIZER_FILES if (src / name).is_file()]
