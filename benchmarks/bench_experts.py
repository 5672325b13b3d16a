"""Speed of the MoE expert path of `train run` on CPU: forward + backward of one `NF4LoraExperts` layer (NF4
experts, per-expert LoRA on w1, w2, w3) run grouped (its forward) and as the per-expert loop it replaced, against
transformers' own `MixtralExperts` (fp32 weights, its default experts implementation `grouped_mm`; no LoRA, input
gradient only) on the same tokens and routing, same run.

    python benchmarks/bench_experts.py                       # hidden 1024, intermediate 3584, 8 experts, top 2
    python benchmarks/bench_experts.py --tokens 4096 --repeats 5

Prints one JSON line: tokens/s of each and their ratio. Timings are the median of `--repeats` after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralExperts

from train.quant import NF4LoraExperts


def per_expert_forward(m: NF4LoraExperts, hidden: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The expert path before the grouped one (as transformers' eager `MixtralExperts`): a loop over the experts
    hit, each matrix a bitsandbytes `Linear4bit` call plus its LoRA; kept here as the before figure."""
    out = torch.zeros_like(hidden)
    mask = torch.nn.functional.one_hot(index, num_classes=m.num_experts).permute(2, 1, 0)
    for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()[:, 0].tolist():
        slot, token = torch.where(mask[e])

        def proj(x: torch.Tensor, w: str) -> torch.Tensor:
            return getattr(m, w)[e](x) + m._lora(x, getattr(m, f"{w}_A")[e], getattr(m, f"{w}_B")[e])

        x = hidden[token]
        y = proj(m.act_fn(proj(x, "w1")) * proj(x, "w3"), "w2") * weights[token, slot, None]
        out.index_add_(0, token, y.to(out.dtype))
    return out


def _time(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function; rounds interleaved, so a change of machine load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for round_ in range(repeats + 1):  # round 0 warms up
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            if round_:
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=3584)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank of every expert matrix")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    h, i, e = args.hidden, args.intermediate, args.experts
    config = MixtralConfig(hidden_size=h, intermediate_size=i, num_local_experts=e, num_experts_per_tok=args.top_k)
    config._experts_implementation = "grouped_mm"  # what `from_pretrained` picks by default (torch >= 2.9)
    plain = MixtralExperts(config)
    with torch.no_grad():
        plain.gate_up_proj.normal_(0, 0.02)
        plain.down_proj.normal_(0, 0.02)
    plain.requires_grad_(False)
    gate_up, down = plain.gate_up_proj.to(torch.bfloat16), plain.down_proj.to(torch.bfloat16)

    def read(k: int, w: str) -> torch.Tensor:  # the same weights as 16-bit checkpoint tensors
        return {"w1": gate_up[k, :i], "w3": gate_up[k, i:], "w2": down[k]}[w]

    ours = NF4LoraExperts(e, h, i, plain.act_fn, read, torch.device("cpu"), torch.float32, r=args.rank,
                          alpha=2 * args.rank)
    x = torch.randn(args.tokens, h)
    weights, index = torch.topk(torch.softmax(torch.randn(args.tokens, e), -1), args.top_k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)

    def step(forward) -> None:
        xi = x.clone().requires_grad_(True)
        forward(xi, index, weights).square().mean().backward()

    with torch.no_grad():  # bitsandbytes' fused 4-bit GEMM vs dequantize + fp32 GEMM: not the same bits
        grouped, looped = ours(x, index, weights), per_expert_forward(ours, x, index, weights)
        rel_diff = float((grouped - looped).abs().max() / looped.abs().max())
    t = _time({"grouped": lambda: step(ours), "per_expert": lambda: step(lambda *a: per_expert_forward(ours, *a)),
               "transformers": lambda: step(plain)}, args.repeats)
    tps = {k: round(args.tokens / v, 1) for k, v in t.items()}
    print(json.dumps({"hidden": h, "intermediate": i, "experts": e, "top_k": args.top_k, "tokens": args.tokens,
                      "lora_r": args.rank, "threads": torch.get_num_threads(),
                      "nf4_lora_grouped_tokens_per_s": tps["grouped"],
                      "nf4_lora_per_expert_loop_tokens_per_s": tps["per_expert"],
                      "transformers_grouped_mm_fp32_tokens_per_s": tps["transformers"],
                      "grouped_vs_per_expert": round(t["per_expert"] / t["grouped"], 3),
                      "max_rel_output_diff_grouped_vs_per_expert": float(f"{rel_diff:.2g}"),
                      "grouped_vs_transformers": round(t["transformers"] / t["grouped"], 3)}))


if __name__ == "__main__":
    main()
