"""The training loop of `train run`: setup, AdamW + cosine schedule, accumulation, checkpoints, exact resume,
JSONL logs, DDP under torchrun.

A recipe of small steps, each callable alone (`train()` runs them in order): `setup_ranks`, `setup_data`,
`find_checkpoint`, `setup_model`, `wrap_for_ranks`, `setup_optimizer`, `load_checkpoint`, `Trainer.step` (one
optimizer step), `run_steps` (logs and `save_checkpoint`), `_val_loss` (evaluate), `write_outputs`.
A short explicit loop instead of transformers' `Trainer`: the router loss must be logged apart from the LM
loss, resume must restore the data position and every RNG, and our own expert modules need no special casing.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import AutoConfig, AutoTokenizer, get_cosine_schedule_with_warmup

from tokenizer.folder import copy_tokenizer_files
from zhdata.errors import InputError
from zhdata.manifest import Manifest, file_sha256
from zhdata.pack import collate_packed

from .config import RunConfig, to_toml
from .data import batch_indices, check_dataset, micro_batches_per_epoch, model_inputs, open_packed
from .modelfiles import model_identity
from .model import (TOKENIZER_DIR, SetupError, attach_adapters, compute_dtype, embeddings_frozen, format_summary, is_moe,
                    load_quantized, pick_device, run_autocast, save_adapter, verify_setup)
from .sharding import ExpertPlacement, clip_grad_norm_, full_moe_adapter_state, placement_summary, wrap_placed

LOG_FILE, CKPT_DIR = "log.jsonl", "checkpoints"


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when started by torchrun / accelerate."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


NO_DECAY = ("embed_tokens", "lm_head")


def make_optimizer(cfg: RunConfig, named: dict[str, torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """AdamW with `cfg.weight_decay` on the adapter matrices only. Embedding and LM-head rows (full or new ones),
    norms and biases get none: decoupled decay would shrink every row of a trained embedding each step, also the
    rows of tokens the batch never saw. Two parameter groups always (decay, no decay), the second may be empty."""
    plain = [p for n, p in named.items() if p.ndim < 2 or any(k in n.split(".") for k in NO_DECAY)]
    plain_ids = {id(p) for p in plain}
    groups = [{"params": [p for p in named.values() if id(p) not in plain_ids], "weight_decay": cfg.weight_decay},
              {"params": plain, "weight_decay": 0.0}]
    if cfg.optimizer == "paged_adamw_8bit":
        if device.type != "cuda":
            raise InputError("optimizer", None, "paged_adamw_8bit needs a CUDA GPU", hint="use --optimizer adamw on CPU")
        import bitsandbytes as bnb
        return bnb.optim.PagedAdamW8bit(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def load_per_core() -> float | None:
    """The machine's 1-minute load average per CPU core (None where the OS has none): logged with every step so
    that `train compare` can tell whether two runs' throughputs were measured under comparable load."""
    return round(os.getloadavg()[0] / (os.cpu_count() or 1), 2) if hasattr(os, "getloadavg") else None


def _save(obj: Any, path: Path) -> None:
    """torch.save through a Python file: a full disk is then OSError(ENOSPC), which the output lock turns into the
    one-line error of every command (given a path, torch raises an opaque RuntimeError from its C++ writer)."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def save_checkpoint(out: Path, model, opt, sched, state: dict, rank: int, world: int, keep: int,
                    sharded: bool = False) -> None:
    """`sharded` (`--shard experts`): every rank writes its own trainable weights and optimizer state."""
    ck = out / CKPT_DIR / f"step-{state['step']:07d}"
    ck.mkdir(parents=True, exist_ok=True)
    _save(_rng_state(), ck / f"rng-{rank}.pt")
    if rank == 0 or sharded:
        part = f"-{rank}" if sharded else ""
        _save({n: p.detach().cpu() for n, p in _trainable(model).items()}, ck / f"trainable{part}.pt")
        _save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
               "param_names": _group_names(model, opt)}, ck / f"optimizer{part}.pt")
    if sharded:
        dist.barrier()  # every rank's part is written before state.json marks the checkpoint whole
    if rank == 0:
        (ck / "state.json").write_text(json.dumps(state) + "\n", encoding="utf-8")
        for old in sorted((out / CKPT_DIR).glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    if world > 1:
        dist.barrier()


# The settings a resumed run may change: they do not touch the training path. Every other setting (max_steps too:
# it sets the length of the cosine schedule), the data, the tokenizer, the base model's files and the world size
# identify a run. The model folder's path may change (a moved copy); its files identify it.
RESUME_FREE = ("output_dir", "resume", "stop_after", "log_every", "save_every", "keep_checkpoints", "max_val_batches",
               "device", "gradient_checkpointing", "model")


def run_identity(cfg: RunConfig, world: int, data_sha256: str | None, tokenizer_sha256: str | None,
                 model_files: dict[str, str] | None = None) -> dict:
    """What a checkpoint resumes only with: the settings outside RESUME_FREE, the packed data by its manifest's
    sha256 (a repack, even into the same folder, is other data), the tokenizer's fingerprint, the base model by
    its files (`train.modelfiles.model_identity`: config, index, each weight file's size and header; one key per
    file, so a refusal names the file that changed) and the world size."""
    return {**{k: v for k, v in asdict(cfg).items() if k not in RESUME_FREE}, "world_size": world,
            "data_manifest_sha256": data_sha256, "tokenizer_sha256": tokenizer_sha256,
            **{f"base model {name}": desc for name, desc in (model_files or {}).items()}}


def _aux_loss(router_logits, config, attention_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Mixtral's load-balancing loss over real tokens only: the model is run without an attention mask (packed
    examples are separated by position ids), so its own `aux_loss` would count right padding as routed tokens."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    mask = attention_mask.to(device) if attention_mask is not None else None
    return load_balancing_loss_func(router_logits, config.num_local_experts, config.num_experts_per_tok, mask)


def _all_reduce(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum over ranks; NCCL reduces only tensors on the GPU, gloo those on the CPU."""
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = t.to(on)
    dist.all_reduce(t)
    return t.cpu()


def find_checkpoint(cfg: RunConfig, identity: dict) -> Path | None:
    """The checkpoint to resume (None: start afresh); refuses a checkpoint of a run with another identity."""
    if not cfg.resume:
        if any((Path(cfg.output_dir) / CKPT_DIR).glob("step-*/state.json")):
            raise InputError(cfg.output_dir, None, "this output folder holds checkpoints of an earlier run",
                             "continue it with --resume auto, or give a new --output-dir")
        return None
    if cfg.resume != "auto":
        ck = Path(cfg.resume)
        if not (ck / "state.json").exists():
            raise InputError(ck, None, "not a checkpoint folder (no state.json)")
        state = _read_state(ck)
        if state is None:
            raise InputError(ck / "state.json", None, "incomplete (the run was stopped while saving this checkpoint)",
                             "resume from an earlier checkpoint, or with --resume auto")
    else:
        done = sorted(p.parent for p in (Path(cfg.output_dir) / CKPT_DIR).glob("step-*/state.json"))
        while done and (state := _read_state(done[-1])) is None:  # killed while saving it: the one before is whole
            print(f"note: skipping the incomplete checkpoint {done.pop()}", file=sys.stderr)
        if not done:
            return None
        ck = done[-1]
    saved = state.get("run", {})
    differ = sorted(k for k in {*identity, *saved} if saved.get(k) != identity.get(k))
    if differ:
        raise InputError(ck, None, "this checkpoint belongs to a run with other settings: "
                         + ", ".join(f"{k} {_short(saved.get(k))} → {_short(identity.get(k))}" for k in differ[:6]),
                         hint="resume with the run's own settings and data (its run.toml), or start in a new --output-dir")
    return ck


def _read_state(ck: Path) -> dict | None:
    """A checkpoint's state.json (written last), or None when a kill tore it."""
    try:
        state = json.loads((ck / "state.json").read_text(encoding="utf-8"))
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def _short(v) -> str:
    return repr(v[:12] + "…" if isinstance(v, str) and len(v) == 64 else v)  # sha256s cut to 12 hex digits


def _group_names(model, opt) -> list[list[str]]:
    """Names of the parameters of each optimizer group, in order: what a saved optimizer state is indexed by."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in opt.param_groups]


def _check_groups(path: Path, saved: dict, groups: list[list[str]]) -> None:
    """A saved optimizer state fits only the same parameter groups (torch would raise a bare ValueError, or, with
    equal group sizes, silently give one parameter's moments to another). Checkpoints without `param_names`
    (written before they were saved) are checked by group sizes."""
    sizes, now = [len(g["params"]) for g in saved["optimizer"]["param_groups"]], [len(g) for g in groups]
    if sizes != now or saved.get("param_names", groups) != groups:
        raise InputError(path, None, f"the optimizer state is for parameter groups of {sizes} parameters"
                         + (" holding other parameters" if sizes == now else "")
                         + f", this version of train run makes groups of {now} (another weight-decay split)",
                         hint="this checkpoint cannot be continued: train afresh in a new --output-dir, or resume "
                              "with the version that wrote it")


def load_checkpoint(ck: Path, model, opt, sched, rank: int, sharded: bool = False) -> dict:
    """Restore trainable weights, optimizer, schedule and this rank's RNG from `ck` (checked by find_checkpoint);
    `sharded`: this rank's own part (see `save_checkpoint`)."""
    state = json.loads((ck / "state.json").read_text(encoding="utf-8"))
    params = _trainable(model)
    part = f"-{rank}" if sharded else ""
    saved = torch.load(ck / f"trainable{part}.pt", map_location="cpu")
    if set(saved) != set(params):
        raise InputError(ck, f"trainable{part}.pt", "checkpoint does not match this run's adapters",
                         hint="resume with the same model, vocab and LoRA settings")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])
    o = torch.load(ck / f"optimizer{part}.pt", map_location="cpu", weights_only=False)
    _check_groups(ck / f"optimizer{part}.pt", o, _group_names(model, opt))
    opt.load_state_dict(o["optimizer"])
    sched.load_state_dict(o["scheduler"])
    rng = ck / f"rng-{rank}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=False))
    return state


def _keep_log_until(log: Path, step: int) -> None:
    """On resume: drop log lines of steps after the checkpoint (they will be trained again), and a line torn by a kill."""
    if log.exists():
        lines = [ln for ln in log.read_text(encoding="utf-8").splitlines() if _log_step(ln) <= step]
        log.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")


def _log_step(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except (ValueError, AttributeError):  # torn or empty: never kept
        return math.inf


def _n_tokens(batch: dict) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def _n_chars(tokenizer, batch: dict) -> int:
    """Characters of text in the batch: the fair speed unit when tokenizers differ."""
    return sum(len(t) for t in tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True))


@dataclass(frozen=True)
class Ranks:
    """Where this process trains: its rank among `world` processes, its device and compute dtype, and which
    experts it holds (`--shard experts`; None: all)."""
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype
    placement: ExpertPlacement | None = None


def setup_ranks(cfg: RunConfig) -> Ranks:
    """Join the process group (under torchrun), pick this rank's device and the compute dtype."""
    rank, world, local_rank = init_distributed()
    device = pick_device(cfg.device, local_rank)
    return Ranks(rank, world, device, compute_dtype(device, cfg.precision), ExpertPlacement.create(cfg.shard, rank, world))


@dataclass
class RunData:
    """The packed training split and the run's tokenizer, checked against each other."""
    ds: object  # zhdata.pack.PackedDataset
    tokenizer: object
    tok_dir: Path
    tok_sha: str
    manifest: Path  # the packed data's manifest.json

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def collate(self, idx: list[int]) -> dict:
        return collate_packed([self.ds[i] for i in idx], pad_id=self.pad_id)

    def manifest_sha256(self) -> str | None:
        return file_sha256(self.manifest) if self.manifest.exists() else None


def setup_data(cfg: RunConfig) -> RunData:
    """Open the train split, check it was packed for this stage with a tokenizer that encodes as the run's,
    and (`--vocab orig`) that the model has a row for every token."""
    tok_dir = Path(cfg.tokenizer or cfg.model)
    ds = open_packed(cfg.data, "train")
    tok_sha = check_dataset(ds, cfg.data, tok_dir, cfg.stage)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    if cfg.vocab == "orig":
        rows = AutoConfig.from_pretrained(cfg.model).get_text_config().vocab_size
        if len(tokenizer) > rows:
            raise InputError(tok_dir, None, f"the tokenizer has {len(tokenizer):,} tokens but the model only {rows:,} rows",
                             hint="an extended tokenizer needs --vocab ext --tokenizer DIR")
    return RunData(ds, tokenizer, tok_dir, tok_sha, Path(cfg.data) / "manifest.json")


def setup_model(cfg: RunConfig, ranks: Ranks, tok_dir: Path, manifest: Manifest, progress: bool = True):
    """The NF4 base streamed onto the device, resized for `--vocab ext`, with its adapters attached and the setup
    checked (printed on rank 0; a failed check refuses the run). Returns (peft model in train mode, summary);
    resize details and warnings go into `manifest`."""
    model = load_quantized(cfg.model, ranks.device, ranks.dtype, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                           lora_dropout=cfg.lora_dropout, expert_lora=cfg.expert_lora, router_lora=cfg.router_lora,
                           blocksize=cfg.quant_blocksize, progress=progress and ranks.rank == 0, placement=ranks.placement,
                           frozen_embeddings=embeddings_frozen(cfg.embeddings, cfg.vocab))
    new_ids: list[int] = []
    if cfg.vocab == "ext":
        from tokenizer.embeddings import resize_and_init

        resized = resize_and_init(model, cfg.base_tokenizer or cfg.model, tok_dir, init=cfg.embed_init)
        new_ids = list(range(resized["base_vocab"], resized["new_vocab"]))
        manifest.extra["resize"] = resized
        for p in model.parameters():  # new rows are created in the default dtype/device
            if p.device != ranks.device:
                p.data = p.data.to(ranks.device)
    moe = is_moe(model)
    if not moe and (cfg.expert_lora or cfg.router_lora):
        manifest.warnings.append("dense model (no MoE layers): the 'experts'/'router' LoRA targets do not apply")
    model.config.output_router_logits = moe and cfg.router_aux_loss_coef > 0  # train_step adds coef x aux itself
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pm = attach_adapters(model, cfg, new_ids)
    summary = verify_setup(pm, cfg, len(new_ids), ranks.placement.world if ranks.placement else 1)
    if ranks.rank == 0:
        print(format_summary(summary), flush=True)
    if summary["problems"]:
        raise SetupError("refusing to train: " + "; ".join(summary["problems"]))
    return pm.train(), summary


def wrap_for_ranks(model, ranks: Ranks) -> torch.nn.Module:
    """What the forward and backward run through: `model` itself in one process, DDP (gradients averaged) under
    torchrun, over the whole model or, with `--shard experts`, over all but this rank's experts
    (`train/sharding.py`). Parameters keep their names and identity, so the optimizer and checkpoints work on
    `model`."""
    if ranks.world == 1:
        return model
    return wrap_placed(model, ranks.placement, ranks.device)


def total_steps(cfg: RunConfig, n_sequences: int, world: int) -> int:
    """Optimizer steps of the whole run: `max_steps`, or `epochs` over the data."""
    per_epoch = micro_batches_per_epoch(n_sequences, cfg.micro_batch_size, world)
    return cfg.max_steps if cfg.max_steps > 0 else max(1, int(cfg.epochs * per_epoch) // cfg.grad_accum)


def setup_optimizer(cfg: RunConfig, model, device: torch.device, total: int):
    """(optimizer, cosine schedule with warmup over `total` steps) for the trainable parameters of `model`."""
    opt = make_optimizer(cfg, _trainable(model), device)
    return opt, get_cosine_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * total), total)


@dataclass
class Trainer:
    """What one optimizer step needs (built by the setup steps). `net` is `model` or its wrapper for ranks."""
    cfg: RunConfig
    ranks: Ranks
    model: object  # PeftModel
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: object
    tokenizer: object

    @property
    def coef(self) -> float:
        """The router aux-loss coefficient; 0 when the model does not output router logits (dense, or coef 0)."""
        return self.cfg.router_aux_loss_coef if self.model.config.output_router_logits else 0.0

    def step(self, micro_batches: list[dict]) -> dict:
        """Forward and backward over `micro_batches` (one optimizer step: `grad_accum` of them), gradient
        clipping, optimizer and schedule step. The loss is LM loss per predicted token of the whole step (all
        micro-batches, all ranks, as one big batch) + `coef` x the mean aux loss. Returns lm_loss, aux_loss,
        lr (the one applied), grad_norm (before clipping), tokens and chars of the step (all ranks)."""
        cfg, world, device = self.cfg, self.ranks.world, self.ranks.device
        counts = torch.tensor([sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches),
                               sum(_n_tokens(b) for b in micro_batches),
                               sum(_n_chars(self.tokenizer, b) for b in micro_batches)], dtype=torch.float64)
        if world > 1:
            counts = _all_reduce(counts, device)
        n_items = max(1, int(counts[0]))
        loss_fn, coef = self.model.get_base_model().loss_function, self.coef
        sums = torch.zeros(2, dtype=torch.float64)  # this rank's share of the LM loss; its mean aux loss
        for micro, batch in enumerate(micro_batches):
            inputs = model_inputs(batch, device)
            labels = inputs.pop("labels")
            sync = nullcontext() if world == 1 or micro == len(micro_batches) - 1 else self.net.no_sync()
            with sync:
                with run_autocast(device, self.ranks.dtype):
                    o = self.net(**inputs)
                lm = loss_fn(o.logits, labels, vocab_size=o.logits.shape[-1], num_items_in_batch=n_items)
                aux = (_aux_loss(o.router_logits, self.model.config, batch.get("attention_mask"), device)
                       / len(micro_batches) if coef > 0 else torch.zeros((), device=device))
                # DDP averages gradients over ranks: scale the LM share back up to the global token mean.
                (lm * world + coef * aux).backward()
            sums += torch.tensor([lm.item(), float(aux.detach())], dtype=torch.float64)
        if world > 1:
            sums = _all_reduce(sums, device)
            sums[1] /= world
        params = list(_trainable(self.model).values())
        norm = clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"), self.ranks.placement)
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return {"lm_loss": float(sums[0]), "aux_loss": float(sums[1]), "lr": lr, "grad_norm": float(norm),
                "tokens": int(counts[1]), "chars": int(counts[2])}


def start_output(cfg: RunConfig, state: dict, rank: int) -> Path:
    """Rank 0: create the output folder, write run.toml, cut log.jsonl back to the resumed step. Returns the log."""
    out = Path(cfg.output_dir)
    log = out / LOG_FILE
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.toml").write_text(to_toml(cfg), encoding="utf-8")
        _keep_log_until(log, state["step"])
    return log


def run_steps(tr: Trainer, data: RunData, state: dict, total: int, log: Path, progress: bool = True) -> dict:
    """Train from `state["step"]` to `total` (or `stop_after` steps of this invocation): log every `log_every`
    steps, checkpoint every `save_every` and at the last step. Updates `state`; returns the last step's record."""
    cfg, rank = tr.cfg, tr.ranks.rank
    batches = batch_indices(len(data.ds), cfg.micro_batch_size, tr.ranks.world, rank, cfg.seed,
                            start=state["step"] * cfg.grad_accum)
    last_step = total if cfg.stop_after <= 0 else min(total, state["step"] + cfg.stop_after)
    bar = tqdm(total=total, initial=state["step"], desc=f"train {cfg.stage}/{cfg.vocab}", unit="step",
               disable=not progress or rank != 0)
    record: dict = {}
    while state["step"] < last_step:
        t0 = time.perf_counter()
        s = tr.step([data.collate(next(batches)) for _ in range(cfg.grad_accum)])
        dt = time.perf_counter() - t0
        state["step"] += 1
        state["tokens"] += s["tokens"]
        state["chars"] += s["chars"]
        state["train_s"] += dt
        record = {"step": state["step"], "lm_loss": s["lm_loss"], "aux_loss": s["aux_loss"], "lr": s["lr"],
                  "grad_norm": s["grad_norm"], "tokens": state["tokens"], "chars": state["chars"],
                  "elapsed": round(state["train_s"], 3), "tokens_per_s": s["tokens"] / dt, "chars_per_s": s["chars"] / dt,
                  "load_per_core": load_per_core()}
        if rank == 0 and (state["step"] % cfg.log_every == 0 or state["step"] == last_step):
            with log.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        bar.set_postfix(loss=f"{record['lm_loss']:.3f}", aux=f"{record['aux_loss']:.3f}", lr=f"{s['lr']:.2e}",
                        tok_s=f"{record['tokens_per_s']:.0f}")
        bar.update(1)
        if state["step"] == last_step or (cfg.save_every > 0 and state["step"] % cfg.save_every == 0):
            save_checkpoint(Path(cfg.output_dir), tr.model, tr.opt, tr.sched, state, rank, tr.ranks.world, cfg.keep_checkpoints,
                            tr.ranks.placement is not None)
    bar.close()
    return record


def train(cfg: RunConfig, progress: bool = True) -> dict:
    """Run `cfg` (rank 0 writes the output folder); returns the manifest as a dict. The recipe: ranks, data,
    (checkpoint to resume), model, wrap for ranks, optimizer, steps, validation, outputs."""
    ranks = setup_ranks(cfg)
    seed_everything(cfg.seed)
    manifest = Manifest("train run", asdict(cfg))
    data = setup_data(cfg)
    identity = run_identity(cfg, ranks.world, data.manifest_sha256(), data.tok_sha, model_identity(cfg.model))
    ck = find_checkpoint(cfg, identity)  # before the (long) model load: a stale folder is refused at once
    model, summary = setup_model(cfg, ranks, data.tok_dir, manifest, progress)
    net = wrap_for_ranks(model, ranks)
    total = total_steps(cfg, len(data.ds), ranks.world)
    opt, sched = setup_optimizer(cfg, model, ranks.device, total)
    state = {"step": 0, "tokens": 0, "chars": 0, "train_s": 0.0, "run": identity}
    if ck is not None:
        state = load_checkpoint(ck, model, opt, sched, ranks.rank, ranks.placement is not None)
    tr = Trainer(cfg, ranks, model, net, opt, sched, data.tokenizer)
    log = start_output(cfg, state, ranks.rank)
    record = run_steps(tr, data, state, total, log, progress)

    finished = state["step"] >= total
    placed = ranks.placement is not None  # then every rank takes part in each forward
    val = (_val_loss(cfg, model, data.pad_id, ranks.device, run_autocast(ranks.device, ranks.dtype))
           if finished and (ranks.rank == 0 or placed) else None)
    result = {"steps": state["step"], "total_steps": total, "finished": finished, "tokens": state["tokens"],
              "chars": state["chars"], "train_s": round(state["train_s"], 3), "last": record, "val_lm_loss": val,
              "host": socket.gethostname()}
    manifest.extra.update({"tokenizer": {"fingerprint": data.tok_sha, "path": str(data.tok_dir.resolve())},
                           "data": {"path": str(Path(cfg.data).resolve()), "sequences": len(data.ds),
                                    "manifest_sha256": identity["data_manifest_sha256"]},
                           "setup": summary, "train": result, "world_size": ranks.world, "device": str(ranks.device),
                           "compute_dtype": str(ranks.dtype).removeprefix("torch.")})
    moe_state = None
    if placed:
        manifest.extra["sharding"] = placement_summary(model, summary, ranks.placement)
        moe_state = full_moe_adapter_state(model, ranks.placement) if finished else None
    if ranks.rank == 0:
        write_outputs(cfg, model, data, manifest, state["step"] * cfg.grad_accum * cfg.micro_batch_size * ranks.world,
                      finished, moe_state)
    if ranks.world > 1:
        dist.barrier()
    return manifest.to_dict()


def write_outputs(cfg: RunConfig, model, data: RunData, manifest: Manifest, sequences: int, finished: bool,
                  moe_state: dict | None = None) -> None:
    """Rank 0: the run's tokenizer, the adapter (finished runs only; `moe_state`: the experts gathered from all
    ranks under `--shard experts`) and manifest.json."""
    out = Path(cfg.output_dir)
    copy_tokenizer_files(data.tok_dir, out / TOKENIZER_DIR)
    if finished:
        save_adapter(model, out, cfg, model.get_base_model().get_input_embeddings().weight.shape[0], moe_state)
    manifest.add_inputs([p for p in (data.manifest, data.tok_dir / "tokenizer.json", Path(cfg.model) / "config.json")
                         if p.exists()])
    manifest.counts.records_in = manifest.counts.records_out = sequences
    manifest.write(out)


@torch.no_grad()
def _val_loss(cfg: RunConfig, model, pad_id: int, device, autocast) -> float | None:
    """LM loss per predicted token over the first `max_val_batches` micro-batches of the val split, if there is
    one: every token weighs the same, however the tokens fall into batches."""
    if cfg.max_val_batches <= 0:
        return None
    try:
        ds = open_packed(cfg.data, "val")
    except InputError:  # no val split
        return None
    if len(ds) == 0:
        return None
    model.eval()
    nll, items = 0.0, 0
    for start in range(0, min(len(ds), cfg.max_val_batches * cfg.micro_batch_size), cfg.micro_batch_size):
        batch = collate_packed([ds[i] for i in range(start, min(len(ds), start + cfg.micro_batch_size))], pad_id=pad_id)
        n = int((batch["labels"][:, 1:] != -100).sum())
        if n == 0:
            continue
        with autocast:
            o = model(**model_inputs(batch, device), output_router_logits=False)
        nll += float(o.loss) * n  # o.loss is the mean over the batch's n predicted tokens
        items += n
    model.train()
    return nll / items if items else None
