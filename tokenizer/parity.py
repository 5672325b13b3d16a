"""SentencePiece vs Hugging Face: do both encoders of a tokenizer folder give the same ids?"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import sentencepiece as spm
from tokenizers import Tokenizer

from .spm import MODEL_FILE


def load_pair(folder: str | Path) -> tuple[spm.SentencePieceProcessor, Tokenizer]:
    """The SentencePiece processor and the raw HF tokenizer of a folder; specials in text are not parsed."""
    d = Path(folder)
    sp = spm.SentencePieceProcessor(model_file=str(d / MODEL_FILE))
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    hf.encode_special_tokens = True  # SentencePiece never reads '<s>' in text as a control token
    return sp, hf


def hf_ids(hf: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in hf.encode_batch(list(texts), add_special_tokens=False)]


def compare(folder: str | Path, texts: Sequence[str], max_examples: int = 5) -> dict:
    """Encode every text with both; count texts whose ids differ and keep a few examples."""
    sp, hf = load_pair(folder)
    a = sp.encode(list(texts))
    b = hf_ids(hf, texts)
    bad = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    examples = []
    for i in bad[:max_examples]:
        x, y = a[i], b[i]
        k = next((j for j, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        examples.append({"text": texts[i][:200], "at_token": k, "sentencepiece": x[k:k + 8], "huggingface": y[k:k + 8]})
    return {"texts": len(texts), "tokens": sum(map(len, a)), "mismatched": len(bad), "examples": examples}
