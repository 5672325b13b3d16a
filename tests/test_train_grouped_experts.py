"""The grouped expert path of `NF4LoraExperts`: torch's grouped GEMM and the loop that stands in for it where
the hardware has none give the same bits; the layer computes transformers' own Mixtral expert arithmetic
(with each LoRA folded into its weight), gradients included; each NF4 matrix is dequantized once per forward."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralExperts

import train.quant as quant
from train.quant import NF4LoraExperts, dequantized, grouped_linear

E, H, I, K, T = 4, 64, 96, 2, 40


def _offs(counts: list[int]) -> torch.Tensor:
    return torch.tensor(counts).cumsum(0).to(torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_gemm_and_its_fallback_are_bit_identical(monkeypatch, dtype):
    torch.manual_seed(0)
    offs = _offs([7, 0, 20, 13])  # an expert without tokens
    x = torch.randn(40, H, dtype=dtype, requires_grad=True)
    w = torch.randn(E, I, H, dtype=dtype, requires_grad=True)
    g = torch.randn(40, I, dtype=dtype)
    assert quant.grouped_mm_runs(x, w) and not quant.grouped_mm_runs(x, w[:, :3])  # rows of 16-byte multiples only
    torch.testing.assert_close(grouped_linear(x, w[:, :3], offs)[:7], x[:7] @ w[0, :3].T)
    results = []
    for grouped in (True, False):
        monkeypatch.setattr(quant, "grouped_mm_runs", lambda *_, grouped=grouped: grouped)
        x.grad = w.grad = None
        y = grouped_linear(x, w, offs)
        (y * g).sum().backward()
        results.append((y.detach(), x.grad.clone(), w.grad.clone()))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    expected = torch.cat([x[:7] @ w[0].T, x[7:27] @ w[2].T, x[27:] @ w[3].T])
    torch.testing.assert_close(results[0][0], expected.detach())


def _layer(seed: int = 0) -> tuple[NF4LoraExperts, MixtralExperts]:
    torch.manual_seed(seed)
    ref = MixtralExperts(MixtralConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=K))
    ref.config._experts_implementation = "eager"
    with torch.no_grad():
        ref.gate_up_proj.normal_(0, 0.05)
        ref.down_proj.normal_(0, 0.05)
    src = {"w1": ref.gate_up_proj[:, :I], "w3": ref.gate_up_proj[:, I:], "w2": ref.down_proj}
    ours = NF4LoraExperts(E, H, I, ref.act_fn, lambda e, w: src[w][e].detach().to(torch.bfloat16), torch.device("cpu"),
                          torch.float32, r=4, alpha=8)
    with torch.no_grad():
        for w in ("w1", "w2", "w3"):
            getattr(ours, f"{w}_B").normal_(0, 0.05)  # B starts at 0: make every LoRA do something
    return ours, ref


def test_grouped_layer_computes_transformers_expert_arithmetic():
    """Forward and gradients (input and every LoRA factor) against transformers' eager `MixtralExperts` run on
    the dequantized weights with each expert's LoRA update B @ A x alpha / r folded in."""
    ours, ref = _layer()
    x = torch.randn(T, H)
    weights, index = torch.topk(torch.softmax(torch.randn(T, E), -1), K, dim=-1)
    index[0] = torch.tensor([3, 1])  # slots not in expert order
    g = torch.randn(T, H)

    x1 = x.clone().requires_grad_(True)
    (ours(x1, index, weights) * g).sum().backward()

    factors = {n: getattr(ours, n).detach().clone().requires_grad_(True) for n in quant.EXPERT_ADAPTER_NAMES}
    eff = {w: torch.stack([dequantized(getattr(ours, w)[e]) for e in range(E)])
           + ours.scaling * factors[f"{w}_B"] @ factors[f"{w}_A"] for w in ("w1", "w2", "w3")}
    x2 = x.clone().requires_grad_(True)
    y = functional_call(ref, {"gate_up_proj": torch.cat([eff["w1"], eff["w3"]], 1), "down_proj": eff["w2"]},
                        (x2, index, weights))
    (y * g).sum().backward()
    torch.testing.assert_close(ours(x, index, weights), y.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-6)
    for n, f in factors.items():
        assert getattr(ours, n).grad.abs().sum() > 0, n
        torch.testing.assert_close(getattr(ours, n).grad, f.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_each_nf4_matrix_is_dequantized_once_per_forward_and_once_per_backward(monkeypatch):
    ours, _ = _layer()
    calls = []
    real = quant.dequantize_4bit
    monkeypatch.setattr(quant, "dequantize_4bit", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(T, H, requires_grad=True)
    weights, index = torch.topk(torch.softmax(torch.randn(T, E), -1), K, dim=-1)
    y = ours(x, index, weights)
    assert len(calls) == 3 * E
    y.sum().backward()
    assert len(calls) == 6 * E
