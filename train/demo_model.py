"""A small randomly initialised Mixtral-architecture model, for demonstrations and tests (no weights download).

The folder is a normal Hugging Face model folder, labelled as a demonstration model in its
config (`zh_adapt_demo`) and in a README, so nobody mistakes its numbers for Mixtral's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tokenizer.folder import copy_tokenizer_files

DEMO_NOTE = ("DEMONSTRATION MODEL: a randomly initialised, tiny Mixtral-architecture model created locally by "
             "zh-adapt; it is not Mixtral-8x7B and its scores say nothing about Mixtral.")


def make_demo_model(tokenizer_dir: str | Path, out_dir: str | Path, layers: int = 2, hidden: int = 64,
                    experts: int = 4, top_k: int = 2, heads: int = 4, kv_heads: int = 2, intermediate: int | None = None,
                    max_positions: int = 1024, seed: int = 0) -> Path:
    """Write a Mixtral-architecture model with the tokenizer's vocabulary (and a copy of the tokenizer) to `out_dir`."""
    from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = MixtralConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        num_local_experts=experts, num_experts_per_tok=top_k, max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    cfg.zh_adapt_demo = DEMO_NOTE
    torch.manual_seed(seed)
    model = MixtralForCausalLM(cfg).eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    copy_tokenizer_files(tokenizer_dir, out)
    (out / "README.md").write_text(f"# {DEMO_NOTE}\n\n```json\n{json.dumps(cfg.to_diff_dict(), indent=2, default=str)}\n```\n",
                                   encoding="utf-8")
    return out
