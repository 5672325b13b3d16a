"""Token log-likelihoods of text under a causal LM: the exact sums that bpc, ctx-ppl and the experts use.

A text is scored through every token that encodes it: the tokenizer's own pieces (the dummy-prefix
piece and byte-fallback pieces included), each predicted from what precedes it; the first one from
the beginning-of-sequence token, which is a condition and never scored itself.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zhdata.pack.tokfolder import load_tokenizer_folder

LN2 = math.log(2.0)


def load_model(path: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) for a `train run` folder or a plain Hugging Face model folder."""
    from .model import load_for_inference

    model, tok = load_for_inference(path, device=device)
    return model.eval(), tok


def tokenizer_fingerprint(tok: Any) -> str | None:
    """The tokenizer's identity (`zhdata.pack.tokfolder.tokenizer_fingerprint` of its folder), when it was
    loaded from a folder."""
    p = Path(str(getattr(tok, "name_or_path", "")))
    return load_tokenizer_folder(p).fingerprint if (p / "tokenizer.json").is_file() else None


def conditioning_prefix(tok: Any) -> list[int]:
    """The token every text is conditioned on: BOS, or EOS as a document separator when there is no BOS."""
    for tid in (tok.bos_token_id, tok.eos_token_id):
        if tid is not None:
            return [int(tid)]
    raise ValueError(f"tokenizer {getattr(tok, 'name_or_path', '')!r} has neither a BOS nor an EOS token to condition the first token on")


def encode_text(tok: Any, text: str) -> list[int]:
    """The pieces that encode `text` (no special tokens; the dummy prefix as the tokenizer adds it)."""
    return list(tok(text, add_special_tokens=False)["input_ids"])


def model_window(model: Any, requested: int | None = None) -> int:
    """Longest context to use: the request, capped by the model's position limit."""
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 2048
    return min(requested, limit) if requested else min(limit, 2048)


@torch.no_grad()
def token_nll(model: Any, ids: list[int], window: int, stride: int | None = None) -> torch.Tensor:
    """NLL in nats of ids[1:], each token predicted exactly once.

    Sequences longer than `window` are scored with a sliding window that advances by `stride`
    (default: window, i.e. back-to-back windows that overlap by the one token that predicts the next
    window's first); every scored token then sees at least `window - stride` tokens of context.
    """
    if len(ids) < 2:
        return torch.zeros(0)
    stride = min(stride or window, window)
    from .model import run_autocast

    device = next(model.parameters()).device
    seq = torch.tensor(ids, dtype=torch.long, device=device)
    n = len(ids)
    out = torch.full((n - 1,), float("nan"), dtype=torch.float64)
    done = 1  # next position to score
    begin = 0
    while done < n:
        end = min(begin + window, n)
        first = max(done, begin + 1)
        keep = end - first + 1  # logits only where they predict a scored token (plus the last, unused)
        with run_autocast(device):
            logits = model(input_ids=seq[begin:end].unsqueeze(0), use_cache=False, logits_to_keep=keep).logits[0, :-1]
        nll = F.cross_entropy(logits.float(), seq[first:end], reduction="none")
        out[first - 1: end - 1] = nll.double().cpu()
        done = end
        if end == n:
            break
        # the next window must hold token done-1, which predicts token done: never skip a token
        begin = min(begin + stride, done - 1)
    assert not torch.isnan(out).any(), "a token was left unscored"
    return out


def text_bits(model: Any, tok: Any, text: str, window: int, stride: int | None = None) -> tuple[float, int]:
    """(total NLL in bits, number of scored tokens) of `text` conditioned on the tokenizer's BOS."""
    ids = conditioning_prefix(tok) + encode_text(tok, text)
    nll = token_nll(model, ids, window, stride)
    return float(nll.sum()) / LN2, int(nll.numel())
