"""Silent failures of training arithmetic, checked on a tiny Mixtral against computations done here by hand:
packed SFT examples do not see each other, validation loss weighs every token alike, weight decay spares the
embedding and LM-head rows."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from transformers import MixtralConfig, MixtralForCausalLM

from tokenizer.convert import convert_sentencepiece
from train.config import RunConfig
from train.data import model_inputs
from train.loop import _trainable, _val_loss, make_optimizer
from train.model import attach_adapters, load_quantized
from zhdata.pack import PackedDataset, collate_packed
from zhdata.pack.packer import PackOptions, pack

SPM = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"
ANSWERS = ["我们在中国学习语言模型。", "好。", "小猫在花园里追蝴蝶，天气很好，它跑了很久才停下来。", "The fox jumps.",
           "语言模型学习中文的文字和词语，也学习标点。", "是的"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("math")
    tok = convert_sentencepiece(SPM, root / "tok")
    src = root / "sft.parquet"
    pl.DataFrame({"id": [f"c{i}" for i in range(24)], "source": ["t"] * 24, "system": [None] * 24,
                  "messages": [[{"role": "user", "content": f"第{i}题：请说一句话" + "。" * (i % 5)},
                                {"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]}] for i in range(24)]}
                 ).write_parquet(src)
    pack([src], tok, root / "bfd", PackOptions(mode="sft", block_size=128, val_fraction=0.0, packing="bfd", progress=False))
    pack([src], tok, root / "one", PackOptions(mode="sft", block_size=128, val_fraction=0.5, packing="none", progress=False))
    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=32000, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=256,
                        tie_word_embeddings=False)
    model = MixtralForCausalLM(cfg).eval()
    model.save_pretrained(root / "mixtral")
    # as `train run` sets it: transformers finds packed sequences in the position ids only without a KV cache
    # (with one, examples of a block attend to each other)
    model.config.use_cache = False
    return {"root": root, "tok": tok, "model": model}


def _nll_sum(model, ids: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL over the labelled positions of one unpadded sequence, and their number."""
    with torch.no_grad():
        logits = model(input_ids=ids[None], position_ids=torch.arange(len(ids))[None]).logits[0].float()
    target = labels[1:]
    keep = target != -100
    nll = F.cross_entropy(logits[:-1][keep], target[keep], reduction="sum")
    return float(nll), int(keep.sum())


def test_packed_examples_do_not_attend_to_each_other(tiny):
    ds = PackedDataset(tiny["root"] / "bfd", "train")
    block = max((ds[i] for i in range(len(ds))), key=lambda b: int(b["segment_ids"].max()))
    segments = int(block["segment_ids"].max()) + 1
    assert segments >= 3  # several conversations share the block
    batch = collate_packed([block])
    with torch.no_grad():
        packed = tiny["model"](**{k: v for k, v in model_inputs(batch, torch.device("cpu")).items() if k != "labels"}).logits[0]
    for s in range(segments):
        where = (block["segment_ids"] == s).nonzero()[:, 0]
        assert block["position_ids"][where[0]] == 0  # positions restart with every example
        ids = block["input_ids"][where]
        with torch.no_grad():
            alone = tiny["model"](input_ids=ids[None], position_ids=torch.arange(len(ids))[None]).logits[0]
        torch.testing.assert_close(packed[where], alone, atol=2e-4, rtol=1e-4)


def test_validation_loss_weighs_every_token_alike(tiny):
    ds = PackedDataset(tiny["root"] / "one", "val")
    model = tiny["model"]
    per_block = [_nll_sum(model, ds[i]["input_ids"], ds[i]["labels"]) for i in range(len(ds))]
    counts = [n for _, n in per_block]
    assert len(ds) >= 4 and len(set(counts)) > 1
    expected = sum(s for s, _ in per_block) / sum(counts)
    cfg = RunConfig(model="-", data=str(tiny["root"] / "one"), output_dir="-", micro_batch_size=3, max_val_batches=100)
    got = _val_loss(cfg, model, 0, torch.device("cpu"), nullcontext())
    assert got == pytest.approx(expected, rel=1e-5)
    # the mean of batch means (the old rule) is measurably another number on these blocks
    batches = [per_block[i:i + 3] for i in range(0, len(per_block), 3)]
    mean_of_means = sum(sum(s for s, _ in b) / sum(n for _, n in b) for b in batches) / len(batches)
    assert abs(mean_of_means - expected) > 1e-3
    assert _val_loss(RunConfig(model="-", data=str(tiny["root"] / "one"), output_dir="-", max_val_batches=0),
                     model, 0, torch.device("cpu"), nullcontext()) is None


def test_weight_decay_spares_embedding_and_head_rows(tiny):
    """One AdamW step with zero gradients moves a parameter only by decoupled decay: adapters shrink by
    (1 - lr * wd), trained embedding and LM-head rows stay as they are."""
    cfg = RunConfig(model=str(tiny["root"] / "mixtral"), data="-", output_dir="-", embeddings="train", lora_r=4,
                    lora_alpha=8, lr=0.1, weight_decay=0.5)
    model = load_quantized(cfg.model, torch.device("cpu"), torch.float32, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                           progress=False)
    named = _trainable(attach_adapters(model, cfg))
    rows = {n: p for n, p in named.items() if "embed_tokens" in n or "lm_head" in n}
    adapters = {n: p for n, p in named.items() if n not in rows and p.detach().abs().sum() > 0}
    assert len(rows) == 2 and adapters
    before = {n: p.detach().clone() for n, p in named.items()}
    opt = make_optimizer(cfg, named, torch.device("cpu"))
    for p in named.values():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n in rows:
        assert torch.equal(named[n].detach(), before[n]), n
    for n in adapters:
        torch.testing.assert_close(named[n].detach(), before[n] * (1 - cfg.lr * cfg.weight_decay))


class _Rigged(torch.nn.Module):
    """A 'model' that reads which question it is asked (the last one in the prompt) and puts all its weight on
    that question's answer letter (`honest`) or on the letter after it."""

    def __init__(self, tok, questions, letter_ids: dict[str, int], honest: bool):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.questions, self.letter_ids, self.honest = tok, questions, letter_ids, honest

    def forward(self, input_ids, use_cache=False, logits_to_keep=0):
        text = self.tok.decode(input_ids[0])
        q = max(self.questions, key=lambda q: text.rfind(q.question))
        letter = q.answer if self.honest else "ABCD"[("ABCD".index(q.answer) + 1) % 4]
        logits = torch.zeros(1, input_ids.shape[1], len(self.tok))
        logits[..., self.letter_ids[letter]] = 20.0
        return type("Out", (), {"logits": logits})()


@pytest.mark.parametrize("shots", [0, 2])
def test_multiple_choice_scores_a_rigged_model_exactly(tiny, shots):
    from transformers import AutoTokenizer

    from train.mc import LETTERS, answer_text, evaluate_subject, load_benchmark, summarise
    from train.scoring import encode_text

    tok = AutoTokenizer.from_pretrained(tiny["tok"])
    bench = load_benchmark(Path(__file__).parent / "fixtures" / "eval" / "cmmlu")
    subjects = {s.name: s for s in bench.subjects}
    letter_ids = {L: encode_text(tok, "答案：" + answer_text(L, bench.lang))[-1] for L in LETTERS}
    assert len(set(letter_ids.values())) == 4
    for honest, acc in ((True, 1.0), (False, 0.0)):
        res = {}
        for name, subj in subjects.items():
            model = _Rigged(tok, [*subj.eval, *subj.dev], letter_ids, honest)
            res[name] = evaluate_subject(model, tok, bench, subj, shots, window=2048)
            assert res[name]["n"] == len(subj.eval) > 0 and res[name]["acc"] == acc
            assert res[name]["right"] == [int(honest)] * len(subj.eval)
        assert summarise(res)["overall"]["acc"] == acc
    assert {q.answer for s in subjects.values() for q in s.eval} >= {"A", "B"}  # not one letter for every question


def _train(tiny, name: str, **kw) -> tuple[list[dict], dict]:
    """One optimizer step of `train run` on the first 4 packed SFT blocks (the shuffle is the same for any micro-batch
    size within an epoch): (log lines, trained adapter tensors)."""
    from safetensors.torch import load_file

    from train.cli import main

    out = tiny["root"] / f"run-{name}"
    settings = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, lr=1e-2, warmup_ratio=0.0, save_every=0, max_val_batches=0,
                    router_aux_loss_coef=0.0, max_grad_norm=0.0, **kw)
    args = ["run", "--model", str(tiny["root"] / "mixtral"), "--data", str(tiny["root"] / "bfd"), "--stage", "sft",
            "--vocab", "orig", "--tokenizer", str(tiny["tok"]), "--output-dir", str(out), "--max-steps", "1", "--quiet"]
    for k, v in settings.items():
        flag = "--" + k.replace("_", "-")
        args += [flag if v else "--no-" + flag[2:]] if isinstance(v, bool) else [flag, str(v)]
    assert main(args) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    tensors = {**load_file(out / "adapter" / "adapter_model.safetensors"),
               **load_file(out / "adapter" / "moe_adapter.safetensors")}
    return log, tensors


def _same_training(a, b) -> None:
    (log_a, ten_a), (log_b, ten_b) = a, b
    for x, y in zip(log_a, log_b, strict=True):
        assert x["lm_loss"] == pytest.approx(y["lm_loss"], rel=1e-5) and x["tokens"] == y["tokens"]
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)  # the gradient before clipping (off)
    assert ten_a.keys() == ten_b.keys() and ten_a
    for k in ten_a:
        torch.testing.assert_close(ten_a[k], ten_b[k], atol=1e-5, rtol=1e-4)


def test_gradient_accumulation_and_checkpointing_change_nothing(tiny):
    """2 micro-batches x accumulation 2 train exactly as one batch of 4 (the loss is a mean over all predicted
    tokens of the step, and blocks hold different numbers of them); gradient checkpointing recomputes the same
    gradients. The aux loss is off here: load balancing over 4 blocks is not the mean over two halves."""
    ds = PackedDataset(tiny["root"] / "bfd", "train")
    assert len({int((ds[i]["labels"] != -100).sum()) for i in range(len(ds))}) > 1
    whole = _train(tiny, "b4", micro_batch_size=4, grad_accum=1, gradient_checkpointing=False)
    _same_training(whole, _train(tiny, "b2x2", micro_batch_size=2, grad_accum=2, gradient_checkpointing=False))
    _same_training(whole, _train(tiny, "b4-ckpt", micro_batch_size=4, grad_accum=1, gradient_checkpointing=True))
