"""`train generate` throughput: batched with left padding and a KV cache, against one prompt at a time (same code)
and against a plain greedy loop without a cache (what a hand-written script does), on the same prompts.

The model is the demonstration Mixtral (random weights, Mixtral's tokenizer; `train quickstart`'s `demo` size),
so the absolute rates say nothing about Mixtral-8x7B; the ratios show what batching and the cache buy.

    OMP_NUM_THREADS=1 python benchmarks/bench_generate.py --instruct ../shared/instruct/sharegpt_zh_1K_format.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from tokenizer.convert import convert_sentencepiece
from train.demo_model import make_demo_model
from train.generate import GenSettings, Prompt, eos_ids, generate_answers, prompt_ids
from train.model import load_for_inference
from train.quickstart import PACKAGED_TOKENIZER


def first_questions(path: Path, n: int) -> list[Prompt]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        turns = json.loads(line).get("conversations") or []
        if turns and turns[0].get("from") == "human" and 10 <= len(turns[0]["value"]) <= 200:
            out.append(Prompt(f"q{len(out)}", messages=[{"role": "user", "content": turns[0]["value"]}]))
        if len(out) == n:
            break
    return out


def naive(model, tok, prompts: list[Prompt], n: int) -> list[str]:
    """Greedy decoding by hand: the whole sequence through the model at every step; the answers' texts."""
    eos, out = eos_ids(model, tok), []
    with torch.no_grad():
        for p in prompts:
            ids = prompt_ids(tok, p)
            new: list[int] = []
            for _ in range(n):
                nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
                new.append(nxt)
                if nxt in eos:
                    break
            out.append((len(new), tok.decode(new, skip_special_tokens=True)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instruct", type=Path, required=True, help="ShareGPT JSONL; the first user turns are the prompts")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()
    prompts = first_questions(a.instruct, a.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = convert_sentencepiece(PACKAGED_TOKENIZER, Path(tmp) / "tok")
        model_dir = make_demo_model(tok_dir, Path(tmp) / "model", layers=2, hidden=64, experts=4)
        model, tok = load_for_inference(model_dir)
        rows, texts = [], []
        for name, bs in ((f"train generate, batch {a.batch_size}", a.batch_size), ("train generate, batch 1", 1)):
            t0 = time.perf_counter()
            ans = generate_answers(model, prompts, GenSettings(max_new_tokens=a.max_new_tokens, batch_size=bs), tokenizer=tok)
            dt = time.perf_counter() - t0
            rows.append((name, sum(x["answer_tokens"] for x in ans), dt))
            texts.append([x["answer"] for x in ans])
        t0 = time.perf_counter()
        loop = naive(model, tok, prompts, a.max_new_tokens)
        rows.append(("greedy loop, no cache, one prompt at a time", sum(k for k, _ in loop), time.perf_counter() - t0))
        texts.append([t for _, t in loop])
    base = rows[-1][1] / rows[-1][2]
    print("| decoding | new tokens | seconds | tokens/s | vs no-cache loop |\n|---|---:|---:|---:|---:|")
    for name, n, dt in rows:
        print(f"| {name} | {n} | {dt:.1f} | {n / dt:.0f} | {n / dt / base:.1f}x |")
    same = [sum(x == y for x, y in zip(texts[0], t)) for t in texts[1:]]
    print(f"answers equal to batch {a.batch_size}'s: batch 1 {same[0]}/{len(prompts)}, no-cache loop {same[1]}/{len(prompts)}")


if __name__ == "__main__":
    main()
