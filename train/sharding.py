"""Sharding the 4-bit model across the GPUs of a node: expert placement (`train run --shard experts`).

With `--shard none` (DDP) every rank holds the whole NF4 model; for Mixtral-8x7B the experts are 96% of it.
With `--shard experts` rank k of N holds experts [k*E/N, (k+1)*E/N) of every MoE layer (their NF4 weights,
LoRA factors, gradients and AdamW state) and streams only those from the checkpoint; attention, router,
norms and embeddings stay replicated and DDP averages their gradients. In each MoE layer every rank routes
its own tokens, sends each (token, expert) pair to the rank holding the expert (all-to-all), runs its experts
on what it received and sends the results back, where they are weighted and summed as in transformers' eager
path (pairs in expert order, so a token's sum is in the same order as on one process).

Why expert placement and not FSDP2 or pipeline stages: FSDP(2) shards parameters as flat or DTensor chunks and
re-creates them after each all-gather, which drops the `quant_state` of bitsandbytes' `Params4bit`; FSDP-QLoRA
needs a float `quant_storage` and torchtune's FSDP2 recipe torchao's NF4Tensor with all-gather hooks, i.e. other
storage than this project's per-expert bitsandbytes NF4. Placement keeps every expert's `Linear4bit` as it
is (bit-identical to a one-process load), moves activations instead of all weights twice per step, and also
halves the checkpoint bytes each rank reads. Pipeline stages would leave N-1 GPUs idle without micro-batch
scheduling the loop does not have.

What a sharded run does differently, and where: `PlacedExperts` (the exchange) is built by the loader;
`wrap_placed` leaves the held experts out of DDP and scales their gradients as DDP scales the others';
`clip_grad_norm_` takes the norm over all ranks' experts; `full_moe_adapter_state` gathers the adapter for
saving; checkpoints keep one file of held experts per rank.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from zhdata.errors import InputError

from .quant import EXPERT_ADAPTER_NAMES, NF4LoraExperts, _init_lora_pair, moe_adapter_state

SHARD_MODES = ("none", "experts")  # RunConfig.shard's choices
_EXPERT_KEY = re.compile(r"\.experts\.(\d+)\.")
_HELD_BY_RANK = "_zh_held_by_rank"  # attribute set on the parameters only this rank holds


@dataclass(frozen=True)
class ExpertPlacement:
    """Which experts this rank holds, and the process group their tokens travel in (its own, so the
    all-to-alls never interleave with DDP's gradient all-reduces on the default group)."""

    rank: int
    world: int
    group: dist.ProcessGroup | None = None

    @classmethod
    def create(cls, mode: str, rank: int, world: int) -> ExpertPlacement | None:
        """The placement of `--shard mode` (None: every rank holds every expert). Call on every rank."""
        if mode not in SHARD_MODES:
            raise InputError("--shard", None, f"unknown mode {mode!r}", hint=f"one of {', '.join(SHARD_MODES)}")
        if mode == "none" or world == 1:
            return None
        return cls(rank, world, dist.new_group(list(range(world))))

    def held(self, num_experts: int) -> range:
        if num_experts % self.world:
            raise InputError("--shard experts", None, f"{num_experts} experts per layer cannot be split evenly over "
                             f"{self.world} processes", hint="use a number of GPUs that divides the experts, or --shard none")
        n = num_experts // self.world
        return range(self.rank * n, (self.rank + 1) * n)

    def unheld_keys(self, keys: Iterable[str], num_experts: int) -> set[str]:
        """Checkpoint keys of other ranks' experts in the per-expert layout (this rank never reads them)."""
        held = self.held(num_experts)
        return {k for k in keys if (m := _EXPERT_KEY.search(k)) and int(m.group(1)) not in held}

    def comm_device(self, like: torch.device) -> torch.device:
        """NCCL moves tensors on the GPU, gloo those on the CPU."""
        return like if dist.get_backend(self.group) == "nccl" else torch.device("cpu")


class _Exchange(torch.autograd.Function):
    """`all_to_all_single` with its gradient (the reverse exchange); written here because
    torch.distributed.nn's version is deprecated and the functional-collectives one is private."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, recv: list[int], send: list[int], group) -> torch.Tensor:
        ctx.recv, ctx.send, ctx.group = recv, send, group
        return _all_to_all(x, recv, send, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_to_all(grad, ctx.send, ctx.recv, ctx.group), None, None, None


def _all_to_all(x: torch.Tensor, recv: list[int], send: list[int], group) -> torch.Tensor:
    out = x.new_empty((sum(recv), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), recv, send, group=group)
    return out


class PlacedExperts(NF4LoraExperts):
    """This rank's experts of one MoE layer (an `NF4LoraExperts` of E/N experts, parameter names as unsharded),
    fed with the (token, expert) pairs of all ranks that route to them."""

    def __init__(self, placement: ExpertPlacement, num_experts: int, hidden_dim: int, intermediate_dim: int,
                 act_fn: Callable, read: Callable[[int, str], torch.Tensor], device: torch.device,
                 compute_dtype: torch.dtype, r: int = 0, alpha: float = 0.0, dropout: float = 0.0, blocksize: int = 64):
        held = placement.held(num_experts)
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):  # the draws below replace these
            super().__init__(len(held), hidden_dim, intermediate_dim, act_fn, lambda e, w: read(held.start + e, w),
                             device, compute_dtype, r, alpha, dropout, blocksize)
        self.placement = placement
        if r:  # the unsharded module's draws, sliced: a sharded run starts from the very same adapters
            for w, (out_f, in_f) in self.shapes().items():
                a = torch.empty(num_experts, r, in_f, device=device, dtype=torch.float32)
                _init_lora_pair(a, torch.empty(num_experts, out_f, r, device=device, dtype=torch.float32))
                getattr(self, f"{w}_A").data.copy_(a[held.start:held.stop])
        for p in self.parameters():
            setattr(p, _HELD_BY_RANK, True)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        group, n = self.placement.group, self.num_experts
        flat = top_k_index.reshape(-1)
        order = torch.argsort(flat, stable=True)  # pairs by expert, hence by destination rank
        token, expert = order // top_k_index.shape[1], flat[order]
        send_counts = torch.bincount(expert // n, minlength=self.placement.world)
        dev = self.placement.comm_device(hidden_states.device)
        recv_counts = _all_to_all(send_counts.to(dev), [1] * self.placement.world, [1] * self.placement.world, group)
        send, recv = send_counts.tolist(), recv_counts.tolist()
        x = _Exchange.apply(hidden_states[token].to(dev), recv, send, group).to(hidden_states.device)
        local = _all_to_all((expert % n).to(dev), recv, send, group).to(hidden_states.device)
        y = super().forward(x, local[:, None], x.new_ones(len(local), 1))
        if x.requires_grad and not y.requires_grad:  # no pair came here: keep both exchanges in the backward,
            y = y + x.sum() * 0  # or the other ranks would wait for this one's gradient all-to-alls forever
        y = _Exchange.apply(y.to(dev), send, recv, group).to(hidden_states.device)
        out = torch.zeros_like(hidden_states)
        out.index_add_(0, token, (y * top_k_weights.reshape(-1)[order, None]).to(out.dtype))
        return out


def is_held_by_rank(p: torch.Tensor) -> bool:
    """True for the parameters of this rank's experts (not replicated over ranks)."""
    return getattr(p, _HELD_BY_RANK, False)


def wrap_placed(model: nn.Module, placement: ExpertPlacement | None, device: torch.device) -> nn.Module:
    """DDP over the replicated parameters. With expert placement, the held experts are left out of DDP (its
    start-up broadcast from rank 0 would overwrite them) and their gradients are divided by the world size, as
    DDP divides the averaged ones: each rank's loss is scaled by the world size (see the training step), and an
    expert's gradient already sums what all ranks' tokens sent it."""
    if placement is not None:
        names = [n for n, p in model.named_parameters() if is_held_by_rank(p)]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
        for p in model.parameters():
            if is_held_by_rank(p) and p.requires_grad:
                p.register_hook(lambda g, w=placement.world: g / w)
    # Every trainable parameter DDP syncs gets a gradient in every step (the grouped expert path multiplies all
    # experts' LoRA factors, zero rows for an expert without tokens), so DDP need not search for unused ones.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float, placement: ExpertPlacement | None) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` over the whole model: replicated gradients once, every rank's held
    experts added (so all ranks clip by the same factor and stay in step)."""
    if placement is None:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    held = [p.grad for p in params if p.grad is not None and is_held_by_rank(p)]
    shared = [p.grad for p in params if p.grad is not None and not is_held_by_rank(p)]
    dev = (held or shared)[0].device
    sq = torch.nn.utils.get_total_norm(held).to(dev) ** 2 if held else torch.zeros((), device=dev)
    sq = sq.to(placement.comm_device(dev))
    dist.all_reduce(sq, group=placement.group)
    total = (sq.to(dev) + (torch.nn.utils.get_total_norm(shared).to(dev) ** 2 if shared else 0.0)).sqrt()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def full_moe_adapter_state(model: nn.Module, placement: ExpertPlacement | None) -> dict[str, torch.Tensor]:
    """`moe_adapter_state` with every expert of every layer (gathered from all ranks: call on every rank)."""
    state = moe_adapter_state(model)
    if placement is None:
        return state
    dev = placement.comm_device(next(model.parameters()).device)
    for k, v in state.items():
        if k.rsplit(".", 1)[-1] in EXPERT_ADAPTER_NAMES:
            parts = [torch.empty_like(v, device=dev) for _ in range(placement.world)]
            dist.all_gather(parts, v.to(dev), group=placement.group)
            state[k] = torch.cat(parts).cpu()
    return state


def placement_summary(model: nn.Module, summary: dict, placement: ExpertPlacement) -> dict:
    """For the manifest: experts per rank and the expert NF4 bytes each rank holds (call on every rank)."""
    dev = placement.comm_device(next(model.parameters()).device)
    mine = torch.tensor([summary["weight_bytes"].get("experts", {}).get("nf4", 0)], device=dev)
    parts = [torch.empty_like(mine) for _ in range(placement.world)]
    dist.all_gather(parts, mine, group=placement.group)
    experts = getattr(model.config.get_text_config(), "num_local_experts", 0)  # 0: a dense model, nothing placed
    return {"mode": "experts", "experts_per_rank": len(placement.held(experts)),
            "expert_bytes_per_rank": [int(t) for t in parts]}
