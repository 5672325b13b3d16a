"""The recipe steps of `train run` called alone: one optimizer step applies the router aux-loss coefficient as
configured, checked against the model's own loss (transformers' Mixtral adds `router_aux_loss_coef` x its
load-balancing loss to the LM loss when asked for router logits)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

from tokenizer.convert import convert_sentencepiece
from train.config import RunConfig
from train.loop import Ranks, Trainer, _trainable, setup_model, setup_optimizer, wrap_for_ranks
from zhdata.manifest import Manifest

SPM = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"
CPU = Ranks(rank=0, world=1, device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("step")
    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=32000, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=256,
                        tie_word_embeddings=False)
    MixtralForCausalLM(cfg).save_pretrained(root / "mixtral")
    tok = convert_sentencepiece(SPM, root / "tok")
    ids = torch.randint(3, 32000, (2, 24), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :5] = -100  # a masked prompt
    return {"model": root / "mixtral", "tok": AutoTokenizer.from_pretrained(tok), "batch": {"input_ids": ids, "labels": labels}}


def _one_step(tiny, coef: float) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Gradients of the model's own `loss` (LM + its coefficient x aux) and of `Trainer.step` from the same weights,
    and the step's record."""
    cfg = RunConfig(model=str(tiny["model"]), data="-", output_dir="-", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                    router_aux_loss_coef=coef, max_grad_norm=0.0, gradient_checkpointing=False)
    torch.manual_seed(0)
    model, _ = setup_model(cfg, CPU, Path(cfg.model), Manifest("test", {}), progress=False)
    assert model.config.output_router_logits is (coef > 0)
    params = _trainable(model)
    base = model.get_base_model()
    base.router_aux_loss_coef = coef  # the model's own loss then adds coef x its aux loss
    own = model(**tiny["batch"], output_router_logits=coef > 0)
    own.loss.backward()
    expected = {n: p.grad.clone() for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    opt, sched = setup_optimizer(cfg, model, CPU.device, total=1)
    seen: dict[str, torch.Tensor] = {}
    opt.register_step_pre_hook(lambda *_: seen.update({n: p.grad.clone() for n, p in params.items()}))
    trainer = Trainer(cfg, CPU, model, wrap_for_ranks(model, CPU), opt, sched, tiny["tok"])
    assert trainer.coef == coef
    record = trainer.step([tiny["batch"]])
    aux = float(own.aux_loss.detach()) if coef > 0 else 0.0
    assert record["lm_loss"] == pytest.approx(float(own.loss.detach()) - coef * aux, rel=1e-5)
    assert record["aux_loss"] == pytest.approx(aux, rel=1e-5)
    return record, expected, seen


@pytest.mark.parametrize("coef", [0.0, 0.5])
def test_step_loss_is_lm_plus_coef_times_aux(tiny, coef):
    record, expected, seen = _one_step(tiny, coef)
    assert seen.keys() == expected.keys() and any("adapter_B" in n for n in seen)
    for n in expected:
        torch.testing.assert_close(seen[n], expected[n], rtol=1e-4, atol=1e-7, msg=n)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in expected.values()]))
    assert record["grad_norm"] == pytest.approx(float(norm), rel=1e-4)
    assert record["tokens"] == 48 and record["chars"] > 0



def test_wrapping_the_model_in_adapters_prints_no_deprecation_warning(tiny):
    """peft reads transformers 5's deprecated `is_gradient_checkpointing`: its FutureWarning is not the user's."""
    import warnings

    cfg = RunConfig(model=str(tiny["model"]), data="-", output_dir="-", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                    gradient_checkpointing=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        setup_model(cfg, CPU, Path(cfg.model), Manifest("test", {}), progress=False)
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)], [str(w.message) for w in seen]
