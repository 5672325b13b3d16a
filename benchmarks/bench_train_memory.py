"""Host memory of `train run`, `train merge` and the streaming loader against the plain transformers + peft +
bitsandbytes path, on a wide Mixtral-architecture model written in the Hub's per-expert sharded layout.

    python benchmarks/bench_train_memory.py write WORK      # checkpoint (bf16, 3 shards), tokenizer, packed data
    python benchmarks/bench_train_memory.py measure WORK    # each phase in its own process, one after another
    python benchmarks/bench_train_memory.py write WORK2 --vocab-size 2249             # Mixtral's embedding share
    python benchmarks/bench_train_memory.py measure WORK2 --phases ours-load

The model's embeddings and LM head (vocab 32000 x hidden 1024) are 7.4% of its parameters, Mixtral-8x7B's
(32000 x 4096 of 46.7B) 0.56%; `--vocab-size 2249` gives this model Mixtral's share (only the load phase is
meaningful then: the packed data holds ids of the 32000-token tokenizer).

Each phase runs in a fresh process and its peak RSS is the kernel's (`wait4` ru_maxrss), so phases do not
share allocator state; the process is started through `launch.py`, so that its peak is its own (Linux carries
ru_maxrss over fork and exec). Phases: `ours-load` (streaming load; peak anonymous memory above the imports, sampled
every 5 ms from /proc/self/status; also the loaded model's own share and the transient above it), `ours-run` (2-step `train run`), `plain-run` (from_pretrained with
BitsAndBytesConfig 4-bit: attention NF4, experts left bf16 as transformers 5 does; peft LoRA with the same
rank on q/k/v/o and, through `target_parameters`, on the experts; the same 2 steps), `ours-merge`
(`train merge` of the run) and `plain-merge` (bf16 from_pretrained, peft `merge_and_unload` of the run's
attention adapter, save_pretrained). Both run paths: same data, micro-batch 1, LoRA r=16, embeddings frozen.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from launch import figures, launched

GiB = 2**30
WIDE = dict(vocab_size=32000, hidden_size=1024, intermediate_size=8192, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=4096,
            tie_word_embeddings=False)
RUN_FLAGS = ["--max-steps", "2", "--micro-batch-size", "1", "--lora-r", "16", "--lora-alpha", "32", "--embeddings", "frozen",
             "--max-val-batches", "0", "--save-every", "0", "--quiet"]
REPO = Path(__file__).resolve().parent.parent


def write(work: Path, dims: dict = WIDE) -> None:
    """A bf16 checkpoint of `dims` in the Hub's layout (per-expert keys, 3 shards, index), written shard by shard."""
    import torch
    from safetensors.torch import save_file
    from transformers import MixtralConfig

    from tokenizer.convert import write_hf_folder
    from tokenizer.spm import load_proto
    from zhdata.pack.packer import PackOptions, pack

    cfg = MixtralConfig(**dims)
    h, i, e, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_local_experts, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * h // cfg.num_attention_heads
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h)}
    for layer in range(n):
        p = f"model.layers.{layer}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "block_sparse_moe.gate.weight": (e, h)})
        for x in range(e):
            q = f"{p}block_sparse_moe.experts.{x}."
            shapes.update({q + "w1.weight": (i, h), q + "w2.weight": (h, i), q + "w3.weight": (i, h)})
    shapes.update({"model.norm.weight": (h,), "lm_head.weight": (cfg.vocab_size, h)})
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    model = work / "model"
    model.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(model)
    names, weight_map, acc, part = list(shapes), {}, 0, 0
    groups: list[list[str]] = [[]]
    for k in names:  # cut into 3 shards by size (one layer's experts end up split across two of them)
        if acc > (len(groups)) * total / 3 and len(groups) < 3:
            groups.append([])
        groups[-1].append(k)
        acc += 2 * torch.Size(shapes[k]).numel()
    g = torch.Generator().manual_seed(0)
    for part, keys in enumerate(groups, 1):
        fname = f"model-{part:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: (torch.ones(shapes[k]) if len(shapes[k]) == 1 else torch.randn(shapes[k], generator=g) * 0.02)
                   .to(torch.bfloat16) for k in keys}
        save_file(tensors, model / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in keys})
        del tensors
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": weight_map}, indent=1))
    tok = write_hf_folder(load_proto(REPO / "tokenizer/data/mixtral-8x7b-v0.1.model"), work / "tok")
    src = work / "pt.jsonl"
    lines = ["我们在中国学习语言模型。中文的文字和词语很丰富，小猫在花园里追蝴蝶。" * 20,
             "The quick brown fox jumps over the lazy dog, and the model learns both languages." * 10]
    src.write_text("".join(json.dumps({"id": f"d{j}", "text": lines[j % 2], "source": "b"}, ensure_ascii=False) + "\n"
                           for j in range(64)), encoding="utf-8")
    pack([src], tok, work / "packed", PackOptions(mode="pt", block_size=256, val_fraction=0.0, progress=False))
    print(json.dumps({"checkpoint_bytes_bf16": total, "shards": len(groups), "tensors": len(shapes)}))


def proc_status(field: str = "RssAnon") -> int:
    """A memory field of /proc/self/status in bytes (RssAnon: anonymous, RssFile: mapped files, VmHWM: peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


@contextmanager
def anon_peak():
    """Anonymous memory (RssAnon) of this process around the block, sampled every 5 ms: yields a dict that holds
    `base` at entry, and `after` and `peak` (the highest sample, at least `after`) once the block has run."""
    m = {"base": proc_status()}
    peak, stop = [m["base"]], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc_status())
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield m
    finally:
        stop.set()
        t.join()
        m["after"] = proc_status()
        m["peak"] = max(peak[0], m["after"])


def phase(name: str, work: Path) -> None:
    import torch

    if name == "ours-load":
        import bitsandbytes as bnb

        from train.model import load_quantized
        from train.quant import MOE_ADAPTER_NAMES, module_type, setup_summary
        file_base = proc_status("RssFile")
        with anon_peak() as m:  # as `train run` with RUN_FLAGS loads it: LoRA r=16 on experts and router, embeddings frozen
            model = load_quantized(work / "model", torch.device("cpu"), torch.float32, lora_r=16, lora_alpha=32,
                                   progress=False, frozen_embeddings=True)
        file_after = proc_status("RssFile")
        kinds = {"nf4": 0, "embeddings_lm_head": 0, "lora": 0, "other": 0}  # the loaded model's own tensors
        for n, p in model.named_parameters():
            if not isinstance(p, bnb.nn.Params4bit):
                kind = ("lora" if n.rsplit(".", 1)[-1] in MOE_ADAPTER_NAMES else
                        "embeddings_lm_head" if module_type(n) in ("embed_tokens", "lm_head") else "other")
                kinds[kind] += p.numel() * p.element_size()
        kinds["nf4"] = sum(v.get("nf4", 0) for v in setup_summary(model)["weight_bytes"].values())
        print(json.dumps({"anon_before_load": m["base"], "anon_peak_above_imports": m["peak"] - m["base"],
                          "anon_loaded_model": m["after"] - m["base"],
                          "anon_transient_above_loaded_model": m["peak"] - m["after"],
                          # page cache the model maps: safetensors hands out tensors backed by the shard mapping
                          "rss_file_after_load_above_imports": file_after - file_base,
                          **{f"tensors_{k}": v for k, v in kinds.items()}}))
    elif name == "ours-run":
        from train.cli import main
        assert main(["run", "--model", str(work / "model"), "--data", str(work / "packed"), "--tokenizer", str(work / "tok"),
                     "--output-dir", str(work / "run"), *RUN_FLAGS]) == 0
    elif name == "plain-run":
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        from zhdata.pack import collate_packed
        from train.data import open_packed
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(work / "model", quantization_config=q, dtype=torch.bfloat16,
                                                     device_map="cpu")
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                              target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]))
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)
        ds = open_packed(work / "packed", "train")
        for step in range(2):
            batch = collate_packed([ds[step]], pad_id=0)
            out = pm(input_ids=batch["input_ids"], labels=batch["labels"])
            out.loss.backward()
            opt.step()
            opt.zero_grad()
    elif name == "ours-merge":
        from train.cli import main
        assert main(["merge", str(work / "run"), "-o", str(work / "merged"), "--quiet"]) == 0
    elif name == "plain-merge":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.bfloat16)
        pm = PeftModel.from_pretrained(model, work / "run" / "adapter")
        pm.merge_and_unload().save_pretrained(work / "merged-plain")
    else:
        raise SystemExit(f"unknown phase {name}")


PHASES = ("ours-load", "ours-run", "plain-run", "ours-merge", "plain-merge")


def measure(work: Path, phases: tuple[str, ...] = PHASES) -> None:
    size = json.loads((work / "model" / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    res: dict = {"checkpoint_bf16_gib": round(size / GiB, 3)}
    for name in phases:
        t = time.time()
        fig = work / f"{name}.wait4.json"
        p = subprocess.Popen(launched([sys.executable, __file__, "phase", name, work], fig), stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        out = p.stdout.read()
        if p.wait() != 0:
            raise SystemExit(f"phase {name} failed ({p.returncode})")
        usage = figures(fig)
        res[name] = {"peak_rss_gib": round(usage["peak_rss_kib"] * 1024 / GiB, 3), "wall_s": round(time.time() - t, 1),
                     "cpu_s": round(usage["cpu_s"], 1), "load_avg_1min": round(os.getloadavg()[0], 2)}
        for line in out.splitlines():  # a phase's own figures: its JSON line (train run prints its setup too)
            if line.startswith("{"):
                res[name].update({k: round(v / GiB, 3) for k, v in json.loads(line).items()})
        print(name, res[name], flush=True)
    if "ours-run" in res and "plain-run" in res:
        res["run_ratio"] = round(res["ours-run"]["peak_rss_gib"] / res["plain-run"]["peak_rss_gib"], 3)
    if "ours-merge" in res and "plain-merge" in res:
        res["merge_ratio"] = round(res["ours-merge"]["peak_rss_gib"] / res["plain-merge"]["peak_rss_gib"], 3)
    if "ours-load" in res:
        load = res["ours-load"]
        res["load_anon_over_checkpoint"] = round(load["anon_peak_above_imports"] / res["checkpoint_bf16_gib"], 3)
        res["load_model_over_checkpoint"] = round(load["anon_loaded_model"] / res["checkpoint_bf16_gib"], 3)
        res["load_transient_over_checkpoint"] = round(load["anon_transient_above_loaded_model"] / res["checkpoint_bf16_gib"], 3)
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("write", "measure", "phase"))
    ap.add_argument("args", nargs="+", help="WORK folder (phase: NAME WORK)")
    ap.add_argument("--vocab-size", type=int, default=WIDE["vocab_size"],
                    help="write: vocabulary rows (2249 gives Mixtral-8x7B's embedding share of the parameters)")
    ap.add_argument("--phases", type=lambda v: tuple(x for x in v.split(",") if x), default=PHASES,
                    help=f"measure: comma-separated phases (default: all: {','.join(PHASES)})")
    a = ap.parse_args()
    if a.what == "write":
        write(Path(a.args[0]), {**WIDE, "vocab_size": a.vocab_size})
    elif a.what == "measure":
        unknown = set(a.phases) - set(PHASES)
        if unknown:
            ap.error(f"unknown phase(s) {sorted(unknown)}; phases: {', '.join(PHASES)}")
        measure(Path(a.args[0]), a.phases)
    else:
        phase(a.args[0], Path(a.args[1]))


if __name__ == "__main__":
    main()
