"""GPU measurement of `train run`'s QLoRA backend on Mixtral-8x7B dimensions with random weights.

Builds the model on the meta device and fills it through the streaming loader's own path
(`train.loader.materialize`), with random weights drawn on the GPU in place of checkpoint reads, one matrix at a
time quantized to NF4; attaches the paper's LoRA (r=64, alpha=128 on q/k/v/o, separate adapters on every
expert's w1, w2 and w3, and the router; embeddings and LM head trained) and times
forward + backward + AdamW steps at micro-batch 1 with gradient checkpointing. Prints one JSON line per
sequence length (peak GPU memory, tokens/s, setup summary) and the computed footprint of the plain
transformers + bitsandbytes path (experts left 16-bit), which does not fit one 80 GB GPU.

    python benchmarks/bench_train_gpu.py --layers 32 --seq 1024 4096 --steps 3
    python benchmarks/bench_train_gpu.py --layers 4 --seq 4096          # quicker; per-layer figures printed
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import MixtralConfig

from train.config import RunConfig
from train.loader import materialize, skeleton
from train.model import attach_adapters, verify_setup

GiB = 2**30
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit block scales + fp32 second-level scales


def mixtral_8x7b(layers: int) -> MixtralConfig:
    return MixtralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
                         max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=False)


def footprint(c: MixtralConfig, r: int = 64, gpus: int = 1) -> dict:
    """Weights and trainable state in GiB, from the dimensions alone; `gpus` > 1: per GPU under `--shard experts`
    (each GPU holds E/gpus experts of every layer and their LoRA state; the rest replicated)."""
    h, i, e, n = c.hidden_size, c.intermediate_size, c.num_local_experts, c.num_hidden_layers
    hd = h // c.num_attention_heads
    attn = n * (2 * h * h + 2 * h * c.num_key_value_heads * hd)
    experts = n * e * 3 * h * i
    emb = 2 * c.vocab_size * h
    expert_lora = n * e * 3 * r * (h + i)                                     # experts w1/w2/w3
    lora = n * (r * (h + h) * 2 + r * (h + c.num_key_value_heads * hd) * 2   # q, o, k, v
                + r * (h + e)) + expert_lora                                   # router
    trainable = lora + emb
    held = trainable - expert_lora + expert_lora // gpus
    ours = {"experts_nf4": experts // gpus * NF4_BYTES_PER_PARAM, "attention_nf4": attn * NF4_BYTES_PER_PARAM,
            "embeddings_fp32_frozen_and_trained_copy": 2 * emb * 4,
            "trainable_fp32_param_grad_adamw": held * 16}
    plain = {"experts_bf16": experts * 2, "attention_nf4": attn * NF4_BYTES_PER_PARAM, "embeddings_bf16": emb * 2,
             "trainable_fp32_param_grad_adamw": trainable * 16}
    plain_kbit = dict(plain, experts_bf16=0, experts_fp32_after_prepare_model_for_kbit_training=experts * 4)
    gib = lambda d: {k: round(v / GiB, 2) for k, v in d.items()} | {"total": round(sum(d.values()) / GiB, 2)}  # noqa: E731
    return {"params_total": attn + experts + emb + n * e * h, "trainable": trainable, "lora": lora,
            "qlora_nf4_experts_gib": gib(ours), "plain_bnb_gib": gib(plain),
            "plain_bnb_after_prepare_model_for_kbit_training_gib": gib(plain_kbit)}


def activations(c: MixtralConfig, seq: int, gpus: int = 1) -> dict:
    """Estimated activation memory in GiB at micro-batch 1, gradient checkpointing per decoder layer, bf16
    autocast, `--shard experts` over `gpus` with balanced routing (an estimate to compare with the measured peak,
    not a bound): the fp32 residual stream saved at every layer's input, the logits (bf16, the loss's fp32 copy
    and its gradient), one layer recomputed and differentiated (expert pairs: gathered inputs, w1/w3 outputs,
    activation, product and their gradients; attention projections with SDPA, no seq x seq matrix), and this
    rank's experts of one matrix kind dequantized to bf16 in the forward and again in the backward."""
    h, i, e, k, n = c.hidden_size, c.intermediate_size, c.num_local_experts, c.num_experts_per_tok, c.num_hidden_layers
    pairs = seq * k
    parts = {"saved_layer_inputs": n * seq * h * 4, "logits_and_loss": seq * c.vocab_size * (2 + 4 + 4),
             "one_layer_moe": pairs * (2 * h * 4 + 7 * i * 2), "one_layer_attention": 10 * seq * h * 2,
             "dequantized_experts": 2 * (e // gpus) * i * h * 2}
    return {key: round(v / GiB, 2) for key, v in parts.items()} | {"total": round(sum(parts.values()) / GiB, 2)}


def memory_table(c: MixtralConfig) -> list[dict]:
    """GPU memory per GPU for 1, 2, 4 and 8 GPUs, with and without `--shard experts`, before activations and with
    the activation estimate at sequence 1024 and 4096 (what README's memory table shows)."""
    rows = []
    for gpus in (1, 2, 4, 8):
        for shard in (("none", "experts") if gpus > 1 else ("none",)):
            split = gpus if shard == "experts" else 1
            base = footprint(c, gpus=split)["qlora_nf4_experts_gib"]["total"]
            rows.append({"gpus": gpus, "shard": shard, "before_activations_gib": base,
                         **{f"seq_{s}_gib": round(base + activations(c, s, split)["total"], 1) for s in (1024, 4096)}})
    return rows


def tiny(layers: int) -> MixtralConfig:
    """A small stand-in to check the script itself on CPU (--tiny)."""
    return MixtralConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
                         max_position_embeddings=8192, tie_word_embeddings=False)


class RandomWeights:
    """Stands in for `train.loader.Checkpoint`: each weight the loader asks for is drawn on `device` (N(0, std),
    vectors 1), so the model is built exactly as from a checkpoint, without one."""

    def __init__(self, device: torch.device, std: float):
        self.device, self.std = device, std

    def tensor(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, to_quantize: bool = False,
               keep_16bit: bool = False) -> torch.Tensor:
        dtype = torch.bfloat16 if keep_16bit and dtype == torch.float32 else dtype  # as a bf16 checkpoint's
        if len(shape) == 1:
            return torch.ones(shape, dtype=dtype, device=self.device)
        return torch.randn(shape, dtype=torch.float32, device=self.device).mul_(self.std).to(dtype)

    def expert(self, experts: str, e: int, w: str, mod, dtype: torch.dtype) -> torch.Tensor:
        h, i = mod.hidden_dim, mod.intermediate_dim
        return self.tensor(f"{experts}.{e}.{w}", (h, i) if w == "w2" else (i, h), dtype)

    def release(self) -> None:
        pass


def build(config: MixtralConfig, device: torch.device, cfg: RunConfig):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = skeleton(config, dtype)
    materialize(model, RandomWeights(device, config.initializer_range), device, dtype, progress=True,
                lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout)
    model.config.output_router_logits = True
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return attach_adapters(model, cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32, help="decoder layers (Mixtral-8x7B has 32)")
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 4096], help="sequence lengths")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per length (after one warm-up)")
    ap.add_argument("--optimizer", choices=("adamw", "paged_adamw_8bit"), default="adamw")
    ap.add_argument("--tiny", action="store_true", help="tiny dimensions on CPU: checks the script, measures nothing")
    args = ap.parse_args()
    print(json.dumps({"computed_footprint_32_layers": footprint(mixtral_8x7b(32)),
                      "estimated_activations_32_layers": {s: activations(mixtral_8x7b(32), s) for s in args.seq},
                      "computed_memory_per_gpu": memory_table(mixtral_8x7b(32))}))
    device = torch.device("cpu" if args.tiny else "cuda")
    cfg = RunConfig(model="bench", data="-", output_dir="-", optimizer=args.optimizer)
    t0 = time.time()
    model = build(tiny(args.layers) if args.tiny else mixtral_8x7b(args.layers), device, cfg)
    summary = verify_setup(model, cfg)
    cuda = device.type == "cuda"
    load_s, after_load = time.time() - t0, (torch.cuda.memory_allocated() / GiB if cuda else 0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "paged_adamw_8bit":
        import bitsandbytes as bnb
        opt = bnb.optim.PagedAdamW8bit(params, lr=1e-4)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = model.get_base_model().loss_function
    for seq in args.seq:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        ids = torch.randint(0, 32000, (1, seq), device=device)
        times = []
        for step in range(args.steps + 1):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                out = model(input_ids=ids)
            loss = loss_fn(out.logits, ids, vocab_size=32000) + 0.02 * out.aux_loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            if step:
                times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() / GiB if cuda else 0.0
        print(json.dumps({"layers": args.layers, "seq": seq, "micro_batch": 1, "optimizer": args.optimizer,
                          "peak_gib": round(peak, 2), "after_load_gib": round(after_load, 2),
                          "peak_gib_per_layer": round(peak / args.layers, 3),
                          "tokens_per_s": round(seq / (sum(times) / len(times)), 1), "load_s": round(load_s, 1),
                          "weight_bytes": summary["weight_bytes"], "trainable": summary["trainable_params"],
                          "problems": summary["problems"]}), flush=True)


if __name__ == "__main__":
    main()
