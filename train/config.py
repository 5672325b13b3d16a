"""Run settings of `train run`: defaults < run file (TOML) < command-line flags.

Every field of `RunConfig` is a key of the run file and a `--flag` (underscores become dashes). The resolved
settings are written to `run.toml` in the output folder, so `train run --config OUT/run.toml` repeats a run.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_origin

from zhdata.errors import InputError

EXPERT_TARGETS = ("experts", "router")  # our own MoE adapters; every other target is a peft target_modules name


@dataclass
class RunConfig:
    model: str = field(default="", metadata={"help": "base model folder (Hugging Face format; Mixtral or a dense Llama/Mistral)"})
    data: str = field(default="", metadata={"help": "packed data folder from `zhdata pack`"})
    output_dir: str = field(default="", metadata={"help": "output folder (adapter, embeddings, tokenizer, logs, checkpoints, manifest.json)"})
    stage: str = field(default="pt", metadata={"help": "pt (pre-training blocks) or sft (conversations, prompt masked)", "choices": ("pt", "sft")})
    vocab: str = field(default="orig", metadata={"help": "orig: the model's tokenizer; ext: extend to --tokenizer and initialise new rows", "choices": ("orig", "ext")})
    tokenizer: str = field(default="", metadata={"help": "tokenizer folder of the run (required for ext; default for orig: the model folder)"})
    base_tokenizer: str = field(default="", metadata={"help": "ext: the tokenizer the base model was trained with (default: the model folder)"})
    embed_init: str = field(default="mean", metadata={"help": "ext: initialisation of new rows", "choices": ("mean", "mean-resizing", "random")})
    embeddings: str = field(default="train", metadata={"help": "embeddings and LM head: train (full rows, peft modules_to_save), new (ext: only the new rows, peft trainable_token_indices) or frozen", "choices": ("train", "new", "frozen")})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=128.0, metadata={"help": "LoRA alpha (scaling alpha/r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (our expert/router adapters support it too)"})
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "experts", "router"],
                                    metadata={"help": "LoRA targets: linear module names (q_proj ... o_proj; gate_proj/up_proj/down_proj for dense), 'experts' (w1/w2/w3 of every expert), 'router'"})
    quant_blocksize: int = field(default=64, metadata={"help": "NF4 block size (double quantisation always on)"})
    router_aux_loss_coef: float = field(default=0.02, metadata={"help": "load-balancing loss coefficient (MoE models; 0 turns it off)"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay of the adapter matrices (embedding and LM-head rows, norms and biases get none)"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "linear warm-up as a fraction of all optimizer steps, then cosine to 0"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw (torch) or paged_adamw_8bit (bitsandbytes, GPU)", "choices": ("adamw", "paged_adamw_8bit")})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    micro_batch_size: int = field(default=1, metadata={"help": "sequences per forward pass and process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data (ignored when --max-steps > 0)"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps (0 = from --epochs)"})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "recompute activations in backward"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), bf16 or fp32", "choices": ("auto", "bf16", "fp32")})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    shard: str = field(default="none", metadata={"help": "under torchrun: none (DDP, every GPU holds the whole 4-bit model) or experts (each of N GPUs holds E/N experts of every MoE layer; tokens exchanged all-to-all)", "choices": ("none", "experts")})
    seed: int = field(default=42, metadata={"help": "seed of initialisation, data order and dropout"})
    save_every: int = field(default=500, metadata={"help": "checkpoint every N optimizer steps (0 = only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept (oldest removed)"})
    log_every: int = field(default=1, metadata={"help": "log line every N optimizer steps"})
    resume: str = field(default="", metadata={"help": "checkpoint folder to resume from, or 'auto' (latest in the output folder)"})
    stop_after: int = field(default=0, metadata={"help": "stop with a checkpoint after N optimizer steps of this invocation (0 = run to the end); continue with --resume auto"})
    max_val_batches: int = field(default=20, metadata={"help": "micro-batches of the val split scored at the end (0 = skip)"})

    @property
    def expert_lora(self) -> bool:
        return "experts" in self.lora_targets

    @property
    def router_lora(self) -> bool:
        return "router" in self.lora_targets

    @property
    def linear_targets(self) -> list[str]:
        return [t for t in self.lora_targets if t not in EXPERT_TARGETS]


def _field_type(f) -> type:
    t = f.type if not isinstance(f.type, str) else eval(f.type)  # noqa: S307 (annotations are ours)
    return list if get_origin(t) is list else t


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field; defaults are suppressed so only flags actually given override the run file."""
    parser.add_argument("--config", help="run file (TOML) with any of the settings below")
    for f in fields(RunConfig):
        flag, kind, meta = "--" + f.name.replace("_", "-"), _field_type(f), f.metadata
        default = f.default if f.default is not MISSING else f.default_factory()
        help_ = f"{meta['help']} (default: {default})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        elif kind is list:
            parser.add_argument(flag, type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
                                default=argparse.SUPPRESS, help=help_ + "; comma-separated")
        else:
            parser.add_argument(flag, type=kind, choices=meta.get("choices"), default=argparse.SUPPRESS, help=help_)


def _check(cfg: RunConfig, source: str) -> RunConfig:
    for f in fields(RunConfig):
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            raise InputError(source, f.name, f"{getattr(cfg, f.name)!r} is not one of {', '.join(choices)}")
    for name in ("model", "data", "output_dir"):
        if not getattr(cfg, name):
            raise InputError(source, name, "is required", hint=f"pass --{name.replace('_', '-')} or set it in the run file")
    if cfg.vocab == "ext" and not cfg.tokenizer:
        raise InputError(source, "tokenizer", "--vocab ext needs the extended tokenizer folder", hint="pass --tokenizer DIR")
    if cfg.embeddings == "new" and cfg.vocab != "ext":
        raise InputError(source, "embeddings", "'new' (train only new rows) needs --vocab ext")
    out = Path(cfg.output_dir).resolve()
    for name in ("model", "data", "tokenizer", "base_tokenizer"):
        if getattr(cfg, name) and Path(getattr(cfg, name)).resolve() == out:
            raise InputError(source, "output_dir", f"is the {name} folder; it would be overwritten")
    if cfg.lora_r <= 0:
        raise InputError(source, "lora_r", "must be positive")
    if cfg.micro_batch_size <= 0 or cfg.grad_accum <= 0:
        raise InputError(source, "micro_batch_size/grad_accum", "must be positive")
    return cfg


def resolve(args: argparse.Namespace) -> RunConfig:
    """Defaults, then the run file (`--config`), then the flags given on the command line."""
    values: dict[str, Any] = {}
    source = "command line"
    if getattr(args, "config", None):
        path = Path(args.config)
        source = str(path)
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(path, "-", "run file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise InputError(path, "-", f"not valid TOML: {e}") from None
        known = {f.name for f in fields(RunConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(path, unknown[0], "unknown setting", hint=f"known settings: {', '.join(sorted(known))}")
        for f in fields(RunConfig):
            if f.name in values and not isinstance(values[f.name], _field_type(f)) and not (
                    _field_type(f) is float and isinstance(values[f.name], int)):
                raise InputError(path, f.name, f"expected {_field_type(f).__name__}, got {values[f.name]!r}")
    for f in fields(RunConfig):
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    return _check(RunConfig(**values), source)


def to_toml(cfg: RunConfig) -> str:
    """The resolved settings as a flat TOML file (JSON scalars and string lists are valid TOML values)."""
    return "".join(f"{k} = {json.dumps(v, ensure_ascii=False)}\n" for k, v in asdict(cfg).items())
