"""`train experts`: masking a router logit, expert importance and routing statistics on a tiny Mixtral."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import MixtralConfig, MixtralForCausalLM

from tokenizer.convert import convert_sentencepiece
from train.cli import main
from train.demo_model import make_demo_model
from train.routing import RouterProbe, expert_importance, mean_loss, routing_stats
from train.quant import LoraRouter

VOCAB = 97


def tiny_mixtral(seed: int = 0) -> MixtralForCausalLM:
    torch.manual_seed(seed)
    cfg = MixtralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                        max_position_embeddings=128, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = MixtralForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper routers than the tiny init, so that routing really differs between experts
        for layer in model.model.layers:
            layer.mlp.gate.weight.mul_(50)
    return model


@pytest.fixture(scope="module")
def docs() -> list[list[int]]:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    return [[1] + torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (40, 25)]


def test_disabling_none_leaves_loss_unchanged_and_one_expert_changes_it(docs):
    model = tiny_mixtral()
    plain = mean_loss(model, docs, 128)
    probe = RouterProbe(model)
    assert [layer for layer, _ in probe.routers] == [0, 1] and probe.num_experts == 4
    assert mean_loss(model, docs, 128) == plain  # hooks without a disabled expert change nothing
    base, delta = expert_importance(model, probe, docs, 128)
    assert base == plain
    assert len(delta) == 2 and all(len(row) == 4 for row in delta)
    assert all(d != 0 for row in delta for d in row)  # every expert gets tokens here, so removing any one matters
    assert mean_loss(model, docs, 128) == plain  # the context manager restored the full router
    probe.remove()


def test_disabled_expert_receives_no_tokens(docs):
    model = tiny_mixtral()
    probe = RouterProbe(model)
    full = routing_stats(model, probe, docs, 128)
    assert full["tokens"] == sum(len(d) for d in docs)
    for row in full["share"]:
        assert sum(row) == pytest.approx(1.0)
    assert all(0 <= h <= math.log2(4) + 1e-9 for h in full["entropy_bits"])
    with probe.disable(1, 2):
        masked = routing_stats(model, probe, docs, 128)
    assert masked["share"][1][2] == 0 and full["share"][1][2] > 0
    assert masked["share"][0] == pytest.approx(full["share"][0])  # the other layer's routing before it is untouched


def test_probe_finds_routers_inside_peft_and_lora_router(docs):
    model = tiny_mixtral()
    plain = mean_loss(model, docs, 128)
    for layer in model.model.layers:  # the train package's LoRA router (a MixtralTopKRouter subclass)
        layer.mlp.gate = LoraRouter(layer.mlp.gate, r=2, alpha=4)
    pm = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).eval()
    assert mean_loss(pm, docs, 128) == pytest.approx(plain, abs=1e-6)  # zero-initialised LoRA B
    probe = RouterProbe(pm)
    assert sorted(layer for layer, _ in probe.routers) == [0, 1]
    with probe.disable(0, 1):
        changed = mean_loss(pm, docs, 128)
    assert changed != pytest.approx(plain, abs=1e-6)


def test_cli_writes_heatmaps_and_json(tmp_path):
    sp = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"
    model_dir = make_demo_model(convert_sentencepiece(sp, tmp_path / "tok"), tmp_path / "model", max_positions=128)
    zh = tmp_path / "zh.txt"
    zh.write_text("今天天气很好，我们去公园散步吧。\n中文模型需要更大的词表。\n", encoding="utf-8")
    en = tmp_path / "en.txt"
    en.write_text("The quick brown fox jumps over the lazy dog.\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["experts", str(model_dir), "--data", f"zh={zh}", "--data", f"en={en}", "--max-tokens", "64",
                 "-o", str(out)]) == 0
    res = json.loads((out / "experts.json").read_text(encoding="utf-8"))
    assert (res["layers"], res["experts"]) == (2, 4)
    assert len(res["sets"]["zh"]["importance"]) == 2 and len(res["sets"]["en"]["routing"]["share"][0]) == 4
    for f in ("importance_zh.png", "routing_zh.png", "importance_en.png", "routing_en.png"):
        assert (out / f).read_bytes()[:4] == b"\x89PNG"
    man = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert man["counts"]["records_out"] == 3
