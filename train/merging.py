"""Streaming merge of a `train run` folder into its base checkpoint: shard in, deltas added, shard out.

Each shard of the base checkpoint is read one tensor at a time; every weight the run held in NF4 is quantized
and dequantized exactly as the loader does (fp32, bitsandbytes' `quantize_4bit`), so the merged model computes
what the run computed; then its LoRA update B @ A * scale is added: q/k/v/o (and a dense MLP) from peft's
factors, each expert's w1/w2/w3 and the router from `moe_adapter.safetensors`. Embedding and LM-head rows come
from the run's `embeddings.safetensors`. The output keeps the input's file names and key layout (per-expert
stays per-expert, fused stays fused); host memory is one output shard plus one fp32 matrix, not the model.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch
from bitsandbytes.functional import dequantize_4bit
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm
from transformers import AutoConfig
from transformers.models.mixtral.modeling_mixtral import MixtralExperts

from zhdata.errors import InputError

from .loader import INDEX_FILE, Checkpoint, output_embedding_name, skeleton
from .model import ADAPTER_DIR, EMB_FILE, MOE_FILE, run_meta
from .quant import quantize_nf4

PEFT_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")
PER_EXPERT = re.compile(r"^(.+\.experts)\.(\d+)\.(w[123])\.weight$")
FUSED = re.compile(r"^(.+\.experts)\.(gate_up_proj|down_proj)$")
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def nf4_roundtrip(w: torch.Tensor, blocksize: int) -> torch.Tensor:
    """`w` as the run saw it: quantized to NF4 (double quantisation) in fp32 and dequantized."""
    q, state = quantize_nf4(w.float(), blocksize)
    return dequantize_4bit(q, state).float()


class RunDeltas:
    """The LoRA updates and embedding rows of a run folder, read lazily; records which were applied."""

    def __init__(self, run_dir: Path, meta: dict):
        adir = run_dir / ADAPTER_DIR
        conf = json.loads((adir / "adapter_config.json").read_text(encoding="utf-8"))
        if conf.get("use_dora") or conf.get("rank_pattern") or conf.get("alpha_pattern"):
            raise InputError(adir / "adapter_config.json", None, "DoRA and per-module ranks are not merged here")
        r = conf["r"]
        self.peft_scale = conf["lora_alpha"] / (math.sqrt(r) if conf.get("use_rslora") else r)
        self.moe_scale = meta["lora_alpha"] / meta["lora_r"] if meta["lora_r"] else 0.0
        self.peft = safe_open(adir / "adapter_model.safetensors", framework="pt")
        self.linear: dict[str, dict[str, str]] = {}
        for k in self.peft.keys():
            m = PEFT_KEY.match(k)
            if m:
                self.linear.setdefault(m.group(1), {})[m.group(2)] = k
            elif not re.search(r"(embed_tokens|lm_head)\.", k):  # embedding rows: taken from EMB_FILE
                raise InputError(adir / "adapter_model.safetensors", k, "adapter tensor this merge does not know")
        self.moe = safe_open(adir / MOE_FILE, framework="pt") if (adir / MOE_FILE).exists() else None
        self.moe_keys = set(self.moe.keys()) if self.moe else set()
        self._cached: tuple = (None, None)
        self.rows = safe_open(adir / EMB_FILE, framework="pt") if (adir / EMB_FILE).exists() else None
        self.pending = set(self.linear) | self.moe_keys
        self.where = adir

    def linear_delta(self, module: str) -> torch.Tensor | None:
        ab = self.linear.get(module)
        if ab is None:
            return None
        self.pending.discard(module)
        b, a = self.peft.get_tensor(ab["B"]).float(), self.peft.get_tensor(ab["A"]).float()
        return b @ a * self.peft_scale

    def expert_delta(self, layer: int, e: int, w: str) -> torch.Tensor | None:
        f = self._factor(f"layers.{layer}.mlp.experts.{w}")
        return None if f is None else f[0][e].float() @ f[1][e].float() * self.moe_scale

    def router_delta(self, layer: int) -> torch.Tensor | None:
        f = self._factor(f"layers.{layer}.mlp.gate.adapter")
        return None if f is None else f[0].float() @ f[1].float() * self.moe_scale

    def _factor(self, name: str):
        """(B, A) of `name` from the expert/router file (cached per name: the experts of a layer share them)."""
        if f"{name}_A" not in self.moe_keys:
            return None
        self.pending -= {f"{name}_A", f"{name}_B"}
        if self._cached[0] != name:
            self._cached = (name, (self.moe.get_tensor(f"{name}_B"), self.moe.get_tensor(f"{name}_A")))
        return self._cached[1]

    def embedding_rows(self, which: str) -> torch.Tensor | None:
        return self.rows.get_tensor(which) if self.rows is not None and which in self.rows.keys() else None

    def check_all_applied(self) -> None:
        if self.pending:
            first = sorted(self.pending)[0]
            raise InputError(self.where, first, f"adapter matched no weight of the base checkpoint "
                             f"({len(self.pending)} such adapters)", hint="is the run's base_model the checkpoint it trained?")


def _nf4_names(model: nn.Module) -> tuple[set[str], set[str], set[str]]:
    """(decoder `nn.Linear` weight names, expert module names, router weight names) of a meta skeleton."""
    layers = model.get_decoder().layers
    prefix = next(n for n, m in model.named_modules() if m is layers) + "."
    linear, experts, routers = set(), set(), set()
    for i, layer in enumerate(layers):
        for name, mod in layer.named_modules():
            full = f"{prefix}{i}.{name}"
            if type(mod) is nn.Linear:
                linear.add(f"{full}.weight")
            elif isinstance(mod, MixtralExperts):
                experts.add(full)
            elif type(mod).__name__.endswith("TopKRouter"):
                routers.add(f"{full}.weight")
    return linear, experts, routers


def merge_checkpoint(run_dir: Path, out_dir: Path, dtype: torch.dtype, progress: bool = True) -> dict:
    """Write the merged model (config, safetensors in the base's layout, index) to `out_dir`; returns counts."""
    meta = run_meta(run_dir)
    base = Path(meta["base_model"])
    ckpt = Checkpoint(base)
    config = AutoConfig.from_pretrained(base)
    shape = skeleton(config, torch.float32)
    linear, experts, routers = _nf4_names(shape)
    embed = shape.get_input_embeddings()
    out_emb = {next(n for n, m in shape.named_modules() if m is embed) + ".weight": "embed_tokens",
               output_embedding_name(shape): "lm_head"}
    deltas = RunDeltas(run_dir, meta)
    blocksize = meta["quant_blocksize"]

    def merged(key: str, t: torch.Tensor) -> torch.Tensor:
        name = key.replace(".block_sparse_moe.", ".mlp.")
        layer = LAYER.search(name)
        if name in linear:
            w = nf4_roundtrip(t, blocksize)
            d = deltas.linear_delta(name.removesuffix(".weight"))
            return (w if d is None else w + d).to(dtype)
        if (m := PER_EXPERT.match(name)) and m.group(1) in experts:
            w = nf4_roundtrip(t, blocksize)
            d = deltas.expert_delta(int(layer.group(1)), int(m.group(2)), m.group(3))
            return (w if d is None else w + d).to(dtype)
        if (m := FUSED.match(name)) and m.group(1) in experts:
            out = torch.empty(t.shape, dtype=dtype)
            half = t.shape[1] // 2
            parts = {"w1": slice(0, half), "w3": slice(half, None)} if m.group(2) == "gate_up_proj" else {"w2": slice(None)}
            for e in range(t.shape[0]):
                for w, rows in parts.items():
                    x = nf4_roundtrip(t[e, rows], blocksize)
                    d = deltas.expert_delta(int(layer.group(1)), e, w)
                    out[e, rows] = x if d is None else x + d
            return out
        if name in routers:
            d = deltas.router_delta(int(layer.group(1)))
            return (t.float() if d is None else t.float() + d).to(dtype)
        if name in out_emb and (rows := deltas.embedding_rows(out_emb[name])) is not None:
            return rows.to(dtype)
        return t.to(dtype)

    out_dir.mkdir(parents=True, exist_ok=True)
    shards = sorted(set(ckpt.file_of.values()))
    weight_map, total, params = {}, 0, 0
    bar = tqdm(total=len(ckpt.file_of), desc="merge", unit="tensor", disable=not progress)
    for src in shards:
        out: dict[str, torch.Tensor] = {}
        with safe_open(src, framework="pt") as f:
            for key in f.keys():
                out[key] = merged(key, f.get_tensor(key)).contiguous()
                bar.update(1)
        save_file(out, out_dir / src.name, metadata={"format": "pt"})
        for key, t in out.items():
            weight_map[key] = src.name
            total += t.numel() * t.element_size()
            params += t.numel()
        del out
    bar.close()
    deltas.check_all_applied()
    if (base / INDEX_FILE).exists():
        (out_dir / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                     indent=2) + "\n", encoding="utf-8")
    vocab = deltas.embedding_rows("embed_tokens")
    text = config.get_text_config()
    if vocab is not None:
        text.vocab_size = vocab.shape[0]
    config.dtype = dtype
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.save_pretrained(out_dir)
    if (base / "generation_config.json").exists():
        shutil.copy2(base / "generation_config.json", out_dir / "generation_config.json")
    return {"vocab_size": text.vocab_size, "parameters": params, "bytes": total, "shards": len(shards),
            "base_model": str(base)}
