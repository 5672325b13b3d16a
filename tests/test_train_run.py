"""`train run` / `train merge` on tiny 2-layer models saved to disk and loaded through the real path, with data
packed by `zhdata pack` using the real Mixtral tokenizer (and a hand-made extension of it)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import bitsandbytes as bnb
import polars as pl
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from sentencepiece import sentencepiece_model_pb2 as pb
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

from tokenizer.convert import write_hf_folder
from tokenizer.spm import load_proto
from train.cli import main
from train.config import RunConfig
from train.model import attach_adapters, load_for_inference, load_quantized, verify_setup
from train.quant import LoraRouter, NF4LoraExperts
from zhdata.manifest import read_manifest
from zhdata.pack.packer import PackOptions, pack

MIXTRAL_SPM = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"
NEW_PIECES = ["▁中国", "学习", "我们", "语言", "模型"]
TEXTS = ["我们在中国学习语言模型。", "The quick brown fox jumps over the lazy dog.", "语言模型学习中文的文字和词语。",
         "小猫在花园里追蝴蝶，天气很好。"]
SMALL = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, lr=1e-2, weight_decay=0.0, warmup_ratio=0.1,
             micro_batch_size=2, grad_accum=1, save_every=0, max_val_batches=2, gradient_checkpointing=True)


def _mixtral(path: Path, vocab: int = 32000) -> Path:
    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=vocab, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                        max_position_embeddings=256, tie_word_embeddings=False)
    MixtralForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Tokenizers (base and extended), a tiny Mixtral and a tiny Llama, PT and SFT data packed for both."""
    root = tmp_path_factory.mktemp("train")
    base = write_hf_folder(load_proto(MIXTRAL_SPM), root / "tok-base")
    proto = load_proto(MIXTRAL_SPM)
    for piece in NEW_PIECES:  # scores above every base piece, so the extended tokenizer really uses them
        proto.pieces.append(pb.ModelProto.SentencePiece(piece=piece, score=0.0, type=1))
    ext = write_hf_folder(proto, root / "tok-ext")
    pt_src = root / "pt.jsonl"
    pt_src.write_text("".join(json.dumps({"id": f"d{i}", "text": TEXTS[i % 4] * 3, "source": "t"}, ensure_ascii=False) + "\n"
                              for i in range(48)), encoding="utf-8")
    sft_src = root / "sft.parquet"
    pl.DataFrame({"id": [f"c{i}" for i in range(32)], "source": ["t"] * 32, "system": [None] * 32,
                  "messages": [[{"role": "user", "content": f"请重复第{i % 4}句"},
                                {"role": "assistant", "content": TEXTS[i % 4]}] for i in range(32)]}).write_parquet(sft_src)
    out = {"base": base, "ext": ext, "mixtral": _mixtral(root / "mixtral"), "root": root}
    for vocab, tok in (("orig", base), ("ext", ext)):
        pack([pt_src], tok, root / f"pt-{vocab}", PackOptions(mode="pt", block_size=32, val_fraction=0.1, progress=False))
        pack([sft_src], tok, root / f"sft-{vocab}", PackOptions(mode="sft", block_size=64, val_fraction=0.1,
                                                                 packing="bfd", progress=False))
        out[f"pt-{vocab}"], out[f"sft-{vocab}"] = root / f"pt-{vocab}", root / f"sft-{vocab}"
    return out


def _run(world, name: str, stage="pt", vocab="orig", steps=8, **kw) -> Path:
    out = world["root"] / f"run-{name}"
    args = ["run", "--model", str(kw.pop("model", world["mixtral"])), "--data", str(world[f"{stage}-{vocab}"]),
            "--stage", stage, "--vocab", vocab, "--output-dir", str(out), "--max-steps", str(steps), "--quiet",
            "--tokenizer", str(world["base" if vocab == "orig" else "ext"])]
    if vocab == "ext":
        args += ["--base-tokenizer", str(world["base"])]
    for k, v in {**SMALL, **kw}.items():
        flag = "--" + k.replace("_", "-")
        args += [flag if v else "--no-" + flag[2:]] if isinstance(v, bool) else [flag, ",".join(v) if isinstance(v, list) else str(v)]
    assert main(args) == 0
    return out


def _log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]


def _model(world):
    cfg = RunConfig(model=str(world["mixtral"]), data="-", output_dir="-", **{k: v for k, v in SMALL.items()
                                                                           if k in ("lora_r", "lora_alpha", "lora_dropout")})
    model = load_quantized(cfg.model, torch.device("cpu"), torch.float32, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                           progress=False)
    model.config.output_router_logits = True
    return cfg, attach_adapters(model, cfg)


def _randomize_b(model) -> None:
    """LoRA B starts at 0 (so A gets no gradient yet); a random B shows both factors are on the gradient path."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and (n.endswith("_B") or ".lora_B." in n):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_experts_are_nf4_and_every_adapter_gets_a_gradient(world):
    cfg, pm = _model(world)
    summary = verify_setup(pm, cfg)
    assert summary["problems"] == []
    assert summary["trainable_params"] == summary["analytic_trainable_params"]
    assert set(summary["weight_bytes"]["experts"]) == {"nf4"} and set(summary["weight_bytes"]["attention"]) == {"nf4"}
    experts = [m for m in pm.modules() if isinstance(m, NF4LoraExperts)]
    assert len(experts) == 2 and not any(type(m).__name__ == "MixtralExperts" for m in pm.modules())
    for ex in experts:
        for lin in [*ex.w1, *ex.w2, *ex.w3]:
            assert isinstance(lin.weight, bnb.nn.Params4bit) and lin.weight.dtype == torch.uint8
            assert lin.weight.quant_state.quant_type == "nf4" and lin.weight.quant_state.nested  # double quantisation
    assert sum(isinstance(m, LoraRouter) for m in pm.modules()) == 2
    _randomize_b(pm)
    ids = torch.randint(3, 32000, (4, 48), generator=torch.Generator().manual_seed(0))
    out = pm(input_ids=ids)
    (pm.get_base_model().loss_function(out.logits, ids, vocab_size=32000) + 0.02 * out.aux_loss).backward()
    trainable = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    assert any("q_proj.lora_A" in n for n in trainable) and any(n.endswith("gate.adapter_A") for n in trainable)
    for n, p in trainable.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    for ex in experts:  # every expert's own slice of every factor
        for name in ("w1_A", "w1_B", "w2_A", "w2_B", "w3_A", "w3_B"):
            per_expert = getattr(ex, name).grad.flatten(1).abs().sum(1)
            assert (per_expert > 0).all(), (name, per_expert)


def test_setup_check_refuses_16bit_experts_and_missing_adapters(world):
    cfg, pm = _model(world)
    layer = pm.get_base_model().model.layers[0].mlp
    layer.experts.w3_A.requires_grad_(False)
    assert any("no trainable expert adapter" in p for p in verify_setup(pm, cfg)["problems"])
    layer.experts.w3_A.requires_grad_(True)
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts
    layer.experts = MixtralExperts(pm.get_base_model().config)
    problems = verify_setup(pm, cfg)["problems"]
    assert any("16-bit MixtralExperts" in p for p in problems) and any("not 4-bit" in p for p in problems)


def test_aux_loss_changes_the_router_gradient(world):
    grads = {}
    for coef in (0.0, 0.02):
        torch.manual_seed(0)
        cfg, pm = _model(world)
        _randomize_b(pm)
        ids = torch.randint(3, 32000, (2, 32), generator=torch.Generator().manual_seed(0))
        out = pm(input_ids=ids)  # the loss as `train run` forms it: LM loss + coef * load-balancing loss
        assert float(out.aux_loss) > 0
        (pm.get_base_model().loss_function(out.logits, ids, vocab_size=32000) + coef * out.aux_loss).backward()
        grads[coef] = {n: p.grad.clone() for n, p in pm.named_parameters() if n.endswith(("gate.adapter_A", "gate.adapter_B"))}
    assert len(grads[0.0]) == 4
    for n in grads[0.0]:
        assert not torch.allclose(grads[0.0][n], grads[0.02][n]), n


def test_pt_orig_loss_falls_resume_is_exact_and_merge_matches(world, capsys):
    full = _run(world, "pt-orig-full", steps=8, lora_dropout=0.1)  # dropout: resume must restore the RNG too
    log = _log(full)
    assert [r["step"] for r in log] == list(range(1, 9))
    assert log[-1]["lm_loss"] < log[0]["lm_loss"] - 1.0
    assert all(r["aux_loss"] > 0 and r["tokens_per_s"] > 0 and r["chars_per_s"] > 0 for r in log)
    assert [r["chars"] for r in log] == sorted(r["chars"] for r in log) and log[0]["chars"] > 0  # cumulative
    assert log[-1]["elapsed"] >= log[0]["elapsed"] > 0
    m = read_manifest(full)
    assert m["setup"]["problems"] == [] and m["setup"]["trainable_params"] == m["setup"]["analytic_trainable_params"]
    assert m["setup"]["weight_bytes"]["experts"].keys() == {"nf4"}
    assert m["train"]["steps"] == 8 and m["tokenizer"]["fingerprint"] and m["train"]["val_lm_loss"] is not None
    assert (full / "adapter" / "adapter_model.safetensors").exists() and (full / "run.toml").exists()

    part = _run(world, "pt-orig-resume", steps=8, stop_after=3, lora_dropout=0.1)
    assert len(_log(part)) == 3 and not (part / "adapter").exists()
    with pytest.raises(AssertionError):  # a fresh run into a folder with checkpoints is refused ...
        _run(world, "pt-orig-resume", steps=8, lora_dropout=0.1)
    # ... and so is resuming with settings that change the training path
    assert main(["run", "--config", str(part / "run.toml"), "--resume", "auto", "--lr", "0.5", "--quiet"]) == 2
    assert "other settings: lr 0.01 → 0.5" in capsys.readouterr().err
    assert main(["run", "--config", str(part / "run.toml"), "--resume", "auto", "--stop-after", "0", "--quiet"]) == 0
    resumed = _log(part)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    for a, b in zip(log, resumed):
        assert a["lm_loss"] == pytest.approx(b["lm_loss"], rel=1e-5, abs=1e-6)
        assert a["lr"] == pytest.approx(b["lr"])

    model, tok = load_for_inference(full)
    ids = torch.tensor([tok("我们在中国学习语言模型。")["input_ids"]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    merged_dir = world["root"] / "merged"
    assert main(["merge", str(full), "-o", str(merged_dir), "--dtype", "fp32", "--quiet"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert type(merged.model.layers[0].mlp.experts).__name__ == "MixtralExperts"
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    base = AutoModelForCausalLM.from_pretrained(world["mixtral"])
    with torch.no_grad():
        untrained = base(input_ids=ids).logits
    assert (got - want).abs().max() < 1e-3  # merge is exact up to float rounding of dequantized NF4 + B@A
    assert (untrained - want).abs().max() > 0.1  # the training really changed the model


@pytest.mark.parametrize("stage,vocab,embeddings", [("sft", "orig", "train"), ("pt", "ext", "new"), ("sft", "ext", "train")])
def test_stages_and_vocabularies_train(world, stage, vocab, embeddings):
    out = _run(world, f"{stage}-{vocab}", stage=stage, vocab=vocab, steps=8, embeddings=embeddings)
    log = _log(out)
    assert log[-1]["lm_loss"] < log[0]["lm_loss"] - (0.2 if embeddings == "new" else 0.5)
    m = read_manifest(out)
    assert m["setup"]["problems"] == []
    if vocab == "ext":
        assert m["resize"]["new_vocab"] == 32005 and m["resize"]["new_rows"] == 32064
        assert m["setup"]["trainable_params"]["embed_tokens"] == (5 * 64 if embeddings == "new" else 32064 * 64)
        rows = load_file(out / "adapter" / "embeddings.safetensors")
        assert rows["embed_tokens"].shape == rows["lm_head"].shape == (32064, 64)
        merged_dir = world["root"] / f"merged-{stage}-{vocab}"
        assert main(["merge", str(out), "-o", str(merged_dir), "--quiet"]) == 0
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)
        assert merged.config.vocab_size == 32064 and merged.get_output_embeddings().weight.shape[0] == 32064


def test_dense_llama_trains(world):
    torch.manual_seed(0)
    path = world["root"] / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=False)).save_pretrained(path)
    out = _run(world, "llama", model=path, steps=6,
               lora_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    log = _log(out)
    assert log[-1]["lm_loss"] < log[0]["lm_loss"] - 0.5 and all(r["aux_loss"] == 0 for r in log)
    m = read_manifest(out)
    assert m["setup"]["moe"] is False and set(m["setup"]["weight_bytes"]["mlp"]) == {"nf4"}
    assert m["setup"]["trainable_params"]["mlp"] == 2 * 4 * 3 * (64 + 128)


def test_bad_inputs_give_clear_errors(world, capsys):
    # data packed with the extended tokenizer, run with the original one
    assert main(["run", "--model", str(world["mixtral"]), "--data", str(world["pt-ext"]), "--tokenizer",
                 str(world["base"]), "--output-dir", str(world["root"] / "bad"), "--quiet"]) == 2
    assert "packed with tokenizer" in capsys.readouterr().err
    assert main(["run", "--model", str(world["mixtral"]), "--data", str(world["sft-orig"]), "--tokenizer",
                 str(world["base"]), "--stage", "pt", "--output-dir", str(world["root"] / "bad"), "--quiet"]) == 2
    assert "stage" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--stage", "xx"])
    bad = world["root"] / "bad.toml"
    bad.write_text('lora_rank = 8\n')
    assert main(["run", "--config", str(bad)]) == 2
    assert "unknown setting" in capsys.readouterr().err
    # an extended tokenizer run as --vocab orig: the model has fewer embedding rows than the tokenizer has tokens
    assert main(["run", "--model", str(world["mixtral"]), "--data", str(world["pt-ext"]), "--tokenizer",
                 str(world["ext"]), "--vocab", "orig", "--output-dir", str(world["root"] / "bad"), "--quiet"]) == 2
    assert "--vocab ext" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, argv: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    assert main(argv) == 0
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_equal_one_process_with_double_batch(world):
    common = dict(steps=3, router_aux_loss_coef=0.0)  # the aux loss is per-rank (not additive), so off here
    single = _run(world, "ddp-single", micro_batch_size=2, **common)
    out = world["root"] / "ddp"
    argv = ["run", "--model", str(world["mixtral"]), "--data", str(world["pt-orig"]), "--tokenizer", str(world["base"]),
            "--output-dir", str(out), "--max-steps", "3", "--quiet", "--micro-batch-size", "1",
            "--router-aux-loss-coef", "0", "--lora-r", "4", "--lora-alpha", "8",
            "--lora-dropout", "0", "--lr", "1e-2", "--weight-decay", "0", "--warmup-ratio", "0.1", "--save-every", "0",
            "--max-val-batches", "0"]
    mp.start_processes(_ddp_worker, args=(_free_port(), argv), nprocs=2, start_method="spawn", join=True)
    assert read_manifest(out)["world_size"] == 2
    for f in ("adapter_model.safetensors", "moe_adapter.safetensors"):
        a, b = load_file(single / "adapter" / f), load_file(out / "adapter" / f)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-5), (f, k)


def test_aux_loss_ignores_right_padding():
    from train.loop import _aux_loss
    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=100, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True)
    model = MixtralForCausalLM(cfg).eval()
    ids = torch.randint(3, 100, (1, 12))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 12), torch.zeros(1, 6)], 1).long()
    with torch.no_grad():
        alone = model(input_ids=ids).aux_loss
        out = model(input_ids=padded)
    assert _aux_loss(out.router_logits, cfg, mask, torch.device("cpu")) == pytest.approx(float(alone), rel=1e-5)
    assert float(out.aux_loss) != pytest.approx(float(alone), rel=1e-3)  # the model's own value counts the padding
