"""`train eval --task bpc / ctx-ppl` on a tiny Mixtral-architecture model with the real Mixtral tokenizer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from tokenizer.convert import convert_sentencepiece
from train.cli import main
from train.demo_model import make_demo_model
from train.evaluate import bpc_of_texts
from train.scoring import load_model, token_nll

SP_MODEL = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"
ZH = "中文模型需要更大的词表𠀋，对吧？"  # 𠀋 is outside Mixtral's vocabulary: four byte-fallback pieces
EN = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bpc")
    tok_dir = convert_sentencepiece(SP_MODEL, root / "tok")
    return make_demo_model(tok_dir, root / "model", max_positions=256)


@pytest.fixture(scope="module")
def loaded(demo):
    return load_model(demo)


def hand_bits(model, text: str) -> tuple[float, int]:
    """Summed NLL in bits of SentencePiece's own pieces of `text`, each predicted after BOS and what precedes it."""
    sp = spm.SentencePieceProcessor(model_file=str(SP_MODEL))
    ids = [sp.bos_id()] + sp.encode(text)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    nats = -sum(float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1))
    return nats / math.log(2), len(ids) - 1


def test_bpc_equals_hand_computation_with_byte_fallback(loaded):
    model, tok = loaded
    sp = spm.SentencePieceProcessor(model_file=str(SP_MODEL))
    pieces = sp.encode(ZH, out_type=str)
    assert pieces[0] == "▁" and "<0xF0>" in pieces  # the dummy prefix and byte fallback are both exercised
    bits_zh, n_zh = hand_bits(model, ZH)
    bits_en, n_en = hand_bits(model, EN)
    res = bpc_of_texts(model, tok, [ZH, EN], window=256)
    assert res["tokens"] == n_zh + n_en == len(pieces) + len(sp.encode(EN))
    assert res["chars"] == len(ZH) + len(EN)
    assert res["bytes"] == len((ZH + EN).encode("utf-8"))
    assert res["bpc"] == pytest.approx((bits_zh + bits_en) / (len(ZH) + len(EN)), rel=1e-6)
    assert res["bits_per_byte"] == pytest.approx((bits_zh + bits_en) / res["bytes"], rel=1e-6)
    assert res["token_ppl"] == pytest.approx(math.exp((bits_zh + bits_en) * math.log(2) / (n_zh + n_en)), rel=1e-6)
    assert res["docs_not_round_trip"] == 0


def test_sliding_window_scores_each_token_once_with_its_window(loaded):
    model, tok = loaded
    ids = [1] + tok(EN * 2, add_special_tokens=False)["input_ids"]
    full = token_nll(model, ids, window=len(ids))
    assert full.shape == (len(ids) - 1,)
    assert torch.allclose(token_nll(model, ids, window=len(ids) + 50), full)
    w = 5
    slid = token_nll(model, ids, window=w, stride=1)
    with torch.no_grad():  # stride 1: token t (t >= w-1) is predicted from exactly the w-1 tokens before it
        for t in (w - 1, w + 3, len(ids) - 1):
            logits = model(input_ids=torch.tensor([ids[t - w + 1: t + 1]])).logits[0, -2]
            expect = -float(torch.log_softmax(logits.double(), -1)[ids[t]])
            assert float(slid[t - 1]) == pytest.approx(expect, rel=1e-5)
    assert not torch.allclose(slid, full)  # a shorter context does change the numbers
    # the default stride (= window) on a text longer than the window: back-to-back windows, every token
    # scored from the context of its own window (the first token of each later window from one token)
    w = 8
    steps = token_nll(model, ids, window=w)
    assert steps.shape == full.shape and torch.isfinite(steps).all()
    with torch.no_grad():
        for t in range(1, len(ids)):
            begin = ((t - 1) // (w - 1)) * (w - 1)  # windows start at 0, w-1, 2(w-1), ...
            logits = model(input_ids=torch.tensor([ids[begin: t + 1]])).logits[0, -2]
            expect = -float(torch.log_softmax(logits.double(), -1)[ids[t]])
            assert float(steps[t - 1]) == pytest.approx(expect, rel=1e-5, abs=1e-6)


def test_cli_bpc_and_ctx_ppl(demo, tmp_path):
    zh = tmp_path / "zh.jsonl"
    zh.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in [ZH, "", ZH * 8]) + "\n", encoding="utf-8")
    en = tmp_path / "en.txt"
    en.write_text(EN + "\n" + EN[::-1] + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["eval", str(demo), "--task", "bpc", "ctx-ppl", "--data", f"zh={zh}", "--data", f"en={en}",
                 "--lengths", "8", "16", "32", "--max-docs", "3", "-o", str(out)]) == 0
    res = json.loads((out / "bpc.json").read_text(encoding="utf-8"))
    assert set(res["sets"]) == {"zh", "en"}
    assert res["sets"]["zh"]["docs"] == 2 and res["sets"]["zh"]["chars"] == 9 * len(ZH)
    assert res["sets"]["en"]["docs"] == 2
    assert "NOT" in (out / "bpc.md").read_text(encoding="utf-8")  # says per-token ppl is not comparable
    man = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert man["sources"]["bpc:zh"]["dropped"] == {"empty_text": 1}
    assert man["counts"]["records_in"] == man["counts"]["records_out"] + man["counts"]["dropped_total"]
    ctx = json.loads((out / "ctx_ppl.json").read_text(encoding="utf-8"))
    rows = ctx["sets"]["zh"]
    long_doc = [r for r in rows if r["doc"] == 1]
    assert [r["context"] for r in long_doc] == [8, 16, 32]
    assert len({r["tokens"] for r in long_doc}) == 1  # every context length scores the same tokens
    assert all(r["ppl"] > 1 for r in rows)
    assert (out / "ctx_ppl.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_reports_missing_text_field(demo, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "x"}\n', encoding="utf-8")
    assert main(["eval", str(demo), "--task", "bpc", "--data", f"zh={bad}", "-o", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
