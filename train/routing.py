"""Expert importance and routing statistics of a Mixtral MoE (the analysis behind `train experts`).

The hook sits on every `MixtralTopKRouter` (our LoRA router subclasses it; peft wrappers keep the
instance inside), found by type and given its layer by the `layers.N.` in its module name.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

from zhdata.errors import InputError

from .scoring import conditioning_prefix, encode_text, token_nll

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class RouterProbe:
    """Forward hooks on the routers: mask one (layer, expert), and/or count routing and router entropy."""

    def __init__(self, model: Any):
        self.routers: list[tuple[int, torch.nn.Module]] = []
        for name, mod in model.named_modules():
            if isinstance(mod, MixtralTopKRouter):
                m = _LAYER.search(name)
                if m is None:
                    raise ValueError(f"router {name!r} is not below a `layers.N.` module; cannot tell its layer")
                self.routers.append((int(m.group(1)), mod))
        if not self.routers:
            raise InputError(getattr(model, "name_or_path", "model"), None,
                             "no Mixtral router (MixtralTopKRouter) found: `train experts` needs a Mixtral-architecture MoE")
        self.num_layers = max(layer for layer, _ in self.routers) + 1
        self.num_experts = self.routers[0][1].num_experts
        self.disabled: tuple[int, int] | None = None
        self.recording = False
        self.reset_stats()
        self._handles = [mod.register_forward_hook(self._hook(layer)) for layer, mod in self.routers]

    def reset_stats(self) -> None:
        self.counts = torch.zeros(self.num_layers, self.num_experts, dtype=torch.float64)
        self.entropy_bits = torch.zeros(self.num_layers, dtype=torch.float64)
        self.tokens = torch.zeros(self.num_layers, dtype=torch.float64)

    def _hook(self, layer: int):
        def hook(mod: torch.nn.Module, inputs: Any, output: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
            logits, scores, indices = output
            if self.disabled is not None and self.disabled[0] == layer:
                logits = logits.clone()
                logits[:, self.disabled[1]] = float("-inf")
                top, indices = torch.topk(F.softmax(logits.float(), dim=-1), mod.top_k, dim=-1)
                scores = (top / top.sum(dim=-1, keepdim=True)).to(scores.dtype)
                output = (logits, scores, indices)
            if self.recording:
                with torch.no_grad():
                    logp = F.log_softmax(logits.float(), dim=-1)
                    ent = -(logp.exp() * logp).nan_to_num().sum(-1) / math.log(2)
                    self.entropy_bits[layer] += float(ent.sum())
                    self.tokens[layer] += logits.shape[0]
                    self.counts[layer] += torch.bincount(indices.flatten().cpu(), minlength=self.num_experts).double()
            return output
        return hook

    @contextmanager
    def disable(self, layer: int, expert: int) -> Iterator[None]:
        self.disabled = (layer, expert)
        try:
            yield
        finally:
            self.disabled = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def encode_docs(tok: Any, texts: list[str], window: int, max_tokens: int) -> list[list[int]]:
    """Token sequences (BOS + pieces, at most `window` long) until `max_tokens` tokens are gathered."""
    out, total = [], 0
    for text in texts:
        ids = (conditioning_prefix(tok) + encode_text(tok, text))[:window]
        if len(ids) < 2:
            continue
        out.append(ids)
        total += len(ids) - 1
        if total >= max_tokens:
            break
    return out


def mean_loss(model: Any, docs: list[list[int]], window: int) -> float:
    """Mean token NLL (nats) over all predicted tokens of the documents."""
    nll = torch.cat([token_nll(model, ids, window) for ids in docs])
    return float(nll.mean())


def expert_importance(model: Any, probe: RouterProbe, docs: list[list[int]], window: int,
                      desc: str = "experts") -> tuple[float, list[list[float]]]:
    """(loss with every expert, [layer][expert] loss increase when that one expert is disabled)."""
    base = mean_loss(model, docs, window)
    delta = [[0.0] * probe.num_experts for _ in range(probe.num_layers)]
    cells = [(layer, e) for layer in range(probe.num_layers) for e in range(probe.num_experts)]
    for layer, e in tqdm(cells, desc=desc, unit="expert", leave=False):
        with probe.disable(layer, e):
            delta[layer][e] = mean_loss(model, docs, window) - base
    return base, delta


def routing_stats(model: Any, probe: RouterProbe, docs: list[list[int]], window: int) -> dict[str, Any]:
    """Share of routing slots per expert per layer, and mean router entropy per layer (bits)."""
    probe.reset_stats()
    probe.recording = True
    try:
        from .model import run_autocast

        device = next(model.parameters()).device
        with torch.no_grad(), run_autocast(device):
            for ids in docs:
                model(input_ids=torch.tensor([ids[:window]], device=device), use_cache=False)
    finally:
        probe.recording = False
    share = probe.counts / probe.counts.sum(-1, keepdim=True).clamp(min=1)
    return {"tokens": int(probe.tokens[0]), "share": share.tolist(),
            "entropy_bits": (probe.entropy_bits / probe.tokens.clamp(min=1)).tolist(),
            "max_entropy_bits": math.log2(probe.num_experts)}
