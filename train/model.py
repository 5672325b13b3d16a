"""Loading a base model as 4-bit QLoRA, the adapters, their checks, and the run folder's adapter format.

A `train run` output folder holds (see `save_adapter`):
- `adapter/`: peft's own adapter (`adapter_config.json`, `adapter_model.safetensors`: attention LoRA and, when
  trained, the embedding / LM-head rows), plus `moe_adapter.safetensors` (our expert and router LoRA factors,
  keys `layers.N.mlp.experts.{w1,w2,w3}_{A,B}` of shape (E, r, in) / (E, out, r) and
  `layers.N.mlp.gate.adapter_{A,B}`; update = B @ A * alpha / r) and `zh_adapt.json` (`format` 2; base model,
  vocab size, LoRA settings needed to rebuild the model);
- `adapter/embeddings.safetensors` for `--vocab ext` or trained embeddings: the full (resized) `embed_tokens` /
  `lm_head` weights the run uses;
- `tokenizer/`: the run's tokenizer folder.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import bitsandbytes as bnb
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from zhdata.errors import InputError

from .config import RunConfig
from .loader import load_nf4
from .quant import (EXPERT_ADAPTER_NAMES, MOE_ADAPTER_NAMES, LoraRouter, NF4LoraExperts, enable_moe_adapters,
                    load_moe_adapter_state, module_type, moe_adapter_state, setup_summary)
from .sharding import ExpertPlacement

ADAPTER_DIR, TOKENIZER_DIR = "adapter", "tokenizer"
META_FILE, MOE_FILE, EMB_FILE = "zh_adapt.json", "moe_adapter.safetensors", "embeddings.safetensors"
# 2: separate LoRA on each expert's w1, w2, w3 (format 1 shared one LoRA between w1 and w3).
ADAPTER_FORMAT = 2


class SetupError(RuntimeError):
    """The quantized/adapted model is not what the run asked for; training is refused."""


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def compute_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def run_autocast(device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """The forward precision of `train run` on `device`: bf16 autocast on a GPU (unless the run's compute dtype
    `dtype` is fp32: `--precision fp32`), none on CPU (fp32); eval, mc and experts score a model under it, so a
    run folder is evaluated as it was trained."""
    bf16_gpu = device.type == "cuda" and dtype == torch.bfloat16
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16_gpu else nullcontext()


def is_moe(model) -> bool:
    return any(isinstance(m, NF4LoraExperts) for m in model.modules())


def load_quantized(model_dir: str | Path, device: torch.device, dtype: torch.dtype, *, lora_r: int, lora_alpha: float,
                   lora_dropout: float = 0.0, expert_lora: bool = True, router_lora: bool = True, blocksize: int = 64,
                   progress: bool = True, placement: ExpertPlacement | None = None, frozen_embeddings: bool = False):
    """The base model with every decoder `nn.Linear` and MoE expert matrix in NF4 (double quantisation),
    streamed from the checkpoint's safetensors one tensor at a time (`train/loader.py`) and quantized onto
    `device`; LoRA factors on experts and router are created here (peft adds the attention ones in
    `attach_adapters`). `placement`: hold only this rank's experts (`train/sharding.py`). `frozen_embeddings`
    (see `embeddings_frozen`): a 16-bit checkpoint's embeddings and LM head stay 16-bit, used as fp32."""
    return load_nf4(model_dir, device, dtype, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                    expert_lora=expert_lora, router_lora=router_lora, blocksize=blocksize, progress=progress,
                    placement=placement, frozen_embeddings=frozen_embeddings)


def embeddings_frozen(embeddings: str, vocab: str) -> bool:
    """Whether a run's embeddings and LM head are the checkpoint's own, untouched (neither trained nor resized), so
    they need no fp32 copy (trained rows keep fp32 master weights)."""
    return embeddings == "frozen" and vocab == "orig"


def peft_config(cfg: RunConfig, new_token_ids: list[int] | None, inference: bool = False) -> LoraConfig:
    kwargs: dict = {}
    if cfg.embeddings == "train":
        kwargs["modules_to_save"] = ["embed_tokens", "lm_head"]
    elif cfg.embeddings == "new":
        kwargs["trainable_token_indices"] = {"embed_tokens": new_token_ids, "lm_head": new_token_ids}
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.linear_targets, task_type="CAUSAL_LM", inference_mode=inference, **kwargs)


@contextmanager
def _peft_wrapping():
    """peft reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model: its FutureWarning
    is peft's to fix, not the user's, and would print on every run, eval and generate."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        yield


def attach_adapters(model, cfg: RunConfig, new_token_ids: list[int] | None = None) -> PeftModel:
    """peft LoRA on the linear targets (+ embedding rows); our expert/router factors made trainable."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.get_decoder().layers.named_modules()}
    missing = [t for t in cfg.linear_targets if t not in present]
    if missing:
        raise InputError(cfg.model, None, f"LoRA targets {missing} are not modules of this model",
                         hint=f"modules of a decoder layer: {', '.join(sorted(p for p in present if p and not p.isdigit()))}")
    if not cfg.linear_targets:
        raise InputError(cfg.model, None, "lora_targets needs at least one linear module (e.g. q_proj) for peft")
    with _peft_wrapping():
        pm = get_peft_model(model, peft_config(cfg, new_token_ids))
    enable_moe_adapters(pm)
    return pm


def analytic_trainable(config, cfg: RunConfig, moe: bool, new_rows: int, vocab_rows: int,
                       expert_shards: int = 1) -> dict[str, int]:
    """Trainable parameters per module type from the model's dimensions alone (on one rank of
    `expert_shards` that split the experts, `train/sharding.py`)."""
    h = config.hidden_size
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv, inter = config.num_attention_heads * hd, config.num_key_value_heads * hd, config.intermediate_size
    dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    r, n_layers = cfg.lora_r, config.num_hidden_layers
    out: dict[str, int] = {}
    for t in cfg.linear_targets:
        kind = "attention" if t in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        out[kind] = out.get(kind, 0) + n_layers * r * sum(dims[t])
    if moe and cfg.expert_lora:
        e = config.num_local_experts // expert_shards
        out["experts"] = n_layers * e * 3 * r * (h + inter)  # w1, w2, w3: r x (in + out) each
    if moe and cfg.router_lora:
        out["router"] = n_layers * r * (h + config.num_local_experts)
    rows = {"train": vocab_rows, "new": new_rows, "frozen": 0}[cfg.embeddings]
    if rows:
        out["embed_tokens"] = out["lm_head"] = rows * h
    return dict(sorted(out.items()))


def verify_setup(model, cfg: RunConfig, new_rows: int = 0, expert_shards: int = 1) -> dict:
    """Setup summary + the checks that refuse a run: every expert matrix 4-bit, every target adapted and
    trainable, trainable parameters per module type equal to the analytic count (of this rank's experts)."""
    summary = setup_summary(model)
    problems: list[str] = []
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    moe = is_moe(base)
    float_experts = sum(p.numel() for n, p in base.named_parameters() if module_type(n) == "experts"
                        and not isinstance(p, bnb.nn.Params4bit) and n.rsplit(".", 1)[-1] not in MOE_ADAPTER_NAMES)
    if float_experts:
        problems.append(f"{float_experts:,} expert weights are not 4-bit")
    for name, mod in base.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if type(mod).__name__.endswith("Experts") and not isinstance(mod, NF4LoraExperts):
            problems.append(f"{name} is a 16-bit {type(mod).__name__}")
        if isinstance(mod, NF4LoraExperts) and cfg.expert_lora and not (
                mod.r and all(getattr(mod, n).requires_grad for n in EXPERT_ADAPTER_NAMES)):
            problems.append(f"{name} has no trainable expert adapter")
        if moe and cfg.router_lora and leaf == "gate" and ".mlp" in name and not (
                isinstance(mod, LoraRouter) and mod.adapter_A.requires_grad and mod.adapter_B.requires_grad):
            problems.append(f"{name} (router) has no trainable adapter")
        if leaf in cfg.linear_targets and ".layers." in f".{name}" and not (
                isinstance(mod, LoraLayer) and all(p.requires_grad for p in mod.lora_A.parameters())):
            problems.append(f"{name} has no trainable LoRA adapter")
    vocab_rows = base.get_input_embeddings().weight.shape[0]
    expected = analytic_trainable(base.config, cfg, moe, new_rows, vocab_rows, expert_shards)
    if expected != summary["trainable_params"]:
        problems.append(f"trainable parameters {summary['trainable_params']} differ from the analytic count {expected}")
    summary["analytic_trainable_params"] = expected
    summary["moe"] = moe
    summary["problems"] = problems
    return summary


def format_summary(summary: dict) -> str:
    gib = lambda b: f"{b / 2**20:,.2f} MiB"  # noqa: E731
    lines = ["module type      weights by dtype                               trainable (analytic)"]
    kinds = sorted(set(summary["weight_bytes"]) | set(summary["trainable_params"]))
    for k in kinds:
        w = ", ".join(f"{d} {gib(b)}" for d, b in summary["weight_bytes"].get(k, {}).items()) or "-"
        t = summary["trainable_params"].get(k, 0)
        a = summary["analytic_trainable_params"].get(k, 0)
        lines.append(f"{k:<16} {w:<46} {t:>12,} ({a:,})")
    lines.append(f"trainable total: {summary['trainable_total']:,}")
    return "\n".join(lines)


def save_adapter(model: PeftModel, out_dir: Path, cfg: RunConfig, vocab_rows: int,
                 moe_state: dict[str, torch.Tensor] | None = None) -> None:
    """Write `out_dir/adapter` in the format described in the module docstring. `moe_state`: the expert and
    router factors when the model holds only some experts (`train.sharding.full_moe_adapter_state`)."""
    adir = out_dir / ADAPTER_DIR
    model.save_pretrained(adir)
    save_file(moe_adapter_state(model) if moe_state is None else moe_state, adir / MOE_FILE)
    base = model.get_base_model()
    if cfg.vocab == "ext" or cfg.embeddings != "frozen":
        save_file({"embed_tokens": _effective_rows(model, "embed_tokens"), "lm_head": _effective_rows(model, "lm_head")},
                  adir / EMB_FILE)
    meta = {"format": ADAPTER_FORMAT, "base_model": str(Path(cfg.model).resolve()), "vocab": cfg.vocab, "vocab_rows": vocab_rows,
            "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "expert_lora": cfg.expert_lora and is_moe(base),
            "router_lora": cfg.router_lora and is_moe(base), "quant_blocksize": cfg.quant_blocksize,
            "embeddings": cfg.embeddings}
    (adir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _effective_rows(model: PeftModel, which: str) -> torch.Tensor:
    """The weight the model really uses for `embed_tokens`/`lm_head` (peft's trained copy or token rows merged in)."""
    base = model.get_base_model()
    mod = base.get_input_embeddings() if which == "embed_tokens" else base.get_output_embeddings()
    w = mod.weight.detach().float().clone()
    if hasattr(mod, "modules_to_save"):  # peft ModulesToSaveWrapper
        w = mod.modules_to_save["default"].weight.detach().float().clone()
    elif hasattr(mod, "token_adapter"):  # peft TrainableTokensWrapper
        ta = mod.token_adapter
        w = ta.get_base_layer().weight.detach().float().clone()
        idx = torch.tensor(ta.token_indices["default"], device=w.device)
        w[idx] = ta.trainable_tokens_delta["default"].detach().float()
    return w.cpu().contiguous()


def _run_meta(run_dir: Path) -> dict | None:
    f = run_dir / ADAPTER_DIR / META_FILE
    return json.loads(f.read_text(encoding="utf-8")) if f.exists() else None


def run_meta(run_dir: Path) -> dict:
    """The run folder's `zh_adapt.json`, refused unless it is a finished run in this version's adapter format."""
    meta = _run_meta(run_dir)
    if meta is None:
        raise InputError(run_dir, None, f"not a `train run` output folder (no {ADAPTER_DIR}/{META_FILE})")
    if meta.get("format") != ADAPTER_FORMAT:
        raise InputError(run_dir / ADAPTER_DIR / META_FILE, None,
                         f"adapter format {meta.get('format')}, this version reads format {ADAPTER_FORMAT} only "
                         "(format 1 shared one LoRA between each expert's w1 and w3)",
                         hint="train the run again with this version")
    return meta


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", progress: bool = False):
    """A `train run` folder as a model: NF4 base + adapters. Returns (peft model, tokenizer)."""
    run_dir = Path(run_dir)
    meta = run_meta(run_dir)
    device = torch.device(device)
    dtype = compute_dtype(device)
    model = load_quantized(meta["base_model"], device, dtype, lora_r=meta["lora_r"], lora_alpha=meta["lora_alpha"],
                           expert_lora=meta["expert_lora"], router_lora=meta["router_lora"],
                           blocksize=meta["quant_blocksize"], progress=progress,
                           frozen_embeddings=embeddings_frozen(meta.get("embeddings", "train"), meta.get("vocab", "orig")))
    emb = run_dir / ADAPTER_DIR / EMB_FILE
    if model.get_input_embeddings().weight.shape[0] != meta["vocab_rows"]:
        model.resize_token_embeddings(meta["vocab_rows"], mean_resizing=False)
    if emb.exists():
        rows = load_file(emb)
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(rows["embed_tokens"])
            model.get_output_embeddings().weight.copy_(rows["lm_head"])
    with _peft_wrapping():
        pm = PeftModel.from_pretrained(model, run_dir / ADAPTER_DIR, is_trainable=False)
    load_moe_adapter_state(pm, load_file(run_dir / ADAPTER_DIR / MOE_FILE))
    tokenizer = AutoTokenizer.from_pretrained(run_dir / TOKENIZER_DIR)
    return pm.eval(), tokenizer


def load_for_inference(path: str | Path, device: str = "cpu"):
    """(model, tokenizer) from a `train run` folder (NF4 base + adapters) or a plain Hugging Face model folder."""
    path = Path(path)
    if _run_meta(path) is not None:
        return load_run(path, device)
    if not (path / "config.json").exists():
        raise InputError(path, None, "neither a `train run` folder nor a Hugging Face model folder")
    dev = torch.device(device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=compute_dtype(dev)).to(dev).eval()
    return model, AutoTokenizer.from_pretrained(path)
