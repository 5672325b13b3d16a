"""Tiny causal LMs on disk for the generation, chat, arena and lm-eval tests (no weights download).

The model is a 2-layer Mixtral-architecture model with the real Mixtral tokenizer (and its chat template); its
LM head is scaled up so that next-token distributions are peaked: greedy decoding then has clear winners,
and float rounding (KV cache, padding, NF4 on the fly vs merged) cannot flip an argmax.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

MIXTRAL_SPM = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"


def tokenizer_folder(out: Path) -> Path:
    from tokenizer.convert import write_hf_folder
    from tokenizer.spm import load_proto

    return write_hf_folder(load_proto(MIXTRAL_SPM), out)


def tiny_model(out: Path, tok_dir: Path, head_scale: float = 30.0, seed: int = 0) -> Path:
    from train.demo_model import make_demo_model

    make_demo_model(tok_dir, out, layers=2, hidden=64, experts=4, max_positions=512, seed=seed)
    (f,) = out.glob("*.safetensors")
    state = load_file(f)
    state["lm_head.weight"] = state["lm_head.weight"] * head_scale
    save_file(state, f, metadata={"format": "pt"})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path
