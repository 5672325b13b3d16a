"""`train experts MODEL --data zh=PATH --data en=PATH`: expert importance and routing statistics of a Mixtral MoE.

Importance: disable one expert in one layer (its router logit set to -inf, so its tokens go to the next
best experts, weights renormalised over the chosen top-k as Mixtral does) and measure the change in
mean token loss on the text; one cell per (layer, expert) of a heatmap.
Routing: share of the top-k routing slots each expert receives per layer (rows sum to 1), and the mean
entropy of the router's softmax (bits; log2(experts) is uniform), for each named text set.

The hook sits on every `MixtralTopKRouter` (our LoRA router subclasses it; peft wrappers keep the
instance inside), found by type and given its layer by the `layers.N.` in its module name.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

from zhdata.errors import ErrorPolicy, InputError
from zhdata.lock import locked_output
from zhdata.manifest import Manifest, cli_params
from zhdata.readers import add_read_options, read_options

from .evaldata import parse_sets, read_texts
from .plots import heatmap
from .scoring import conditioning_prefix, encode_text, load_model, model_window, token_nll

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


def _markdown(res: dict[str, Any]) -> str:
    out = [f"# Experts: `{res['model']}`", "",
           f"Layers: {res['layers']}, experts per layer: {res['experts']}. Importance = increase of the mean token loss (nats) "
           "when one expert of one layer is disabled; share = fraction of the layer's top-k routing slots.", ""]
    for name, s in res["sets"].items():
        out += [f"## {name} ({s['routing']['tokens']} tokens)", ""]
        if "importance" in s:
            flat = [(d, layer, e) for layer, row in enumerate(s["importance"]) for e, d in enumerate(row)]
            top = sorted(flat, reverse=True)[:5]
            out += [f"Loss with every expert: {s['base_loss']:.4f}. Most important: "
                    + ", ".join(f"layer {layer} expert {e} ({d:+.4f})" for d, layer, e in top), "",
                    f"![importance {name}](importance_{name}.png)", ""]
        out += [f"![routing {name}](routing_{name}.png)", "", "| layer | router entropy (bits) | busiest expert | its share |",
                "|---:|---:|---:|---:|"]
        for layer, (ent, row) in enumerate(zip(s["routing"]["entropy_bits"], s["routing"]["share"])):
            e = max(range(len(row)), key=row.__getitem__)
            out.append(f"| {layer} | {ent:.3f} | {e} | {row[e]:.3f} |")
        out.append("")
    return "\n".join(out)


@locked_output("out")
def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    man = Manifest("train experts", cli_params(args))
    model, tok = load_model(args.model, args.device)
    probe = RouterProbe(model)
    window = model_window(model, args.window)
    policy = ErrorPolicy(args.on_error)
    res: dict[str, Any] = {"model": str(args.model), "layers": probe.num_layers, "experts": probe.num_experts,
                           "window": window, "sets": {}}
    for name, files in parse_sets(args.data).items():
        man.add_inputs(files)
        counts = man.source(name)
        texts = read_texts(files, counts, args.text_field, policy=policy, max_chars=args.max_tokens * 8, read=read_options(args))
        docs = encode_docs(tok, texts, window, args.max_tokens)
        entry: dict[str, Any] = {"docs": len(docs), "routing": routing_stats(model, probe, docs, window)}
        heatmap(entry["routing"]["share"], out / f"routing_{name}.png", f"routing share per expert ({name})", "share of routing slots")
        if not args.skip_importance:
            entry["base_loss"], entry["importance"] = expert_importance(model, probe, docs, window, desc=f"importance {name}")
            heatmap(entry["importance"], out / f"importance_{name}.png", f"loss increase when an expert is disabled ({name})",
                    "Δ loss (nats/token)", cmap="RdBu_r", center_zero=True)
        res["sets"][name] = entry
        man.counts.merge(counts)
        print(f"{name}: {entry['routing']['tokens']} tokens; router entropy per layer (bits): "
              + " ".join(f"{x:.2f}" for x in entry["routing"]["entropy_bits"]))
    probe.remove()
    (out / "experts.json").write_text(json.dumps(res, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / "experts.md").write_text(_markdown(res), encoding="utf-8")
    man.extra["experts"] = {"layers": probe.num_layers, "experts": probe.num_experts,
                            "tokens": {n: s["routing"]["tokens"] for n, s in res["sets"].items()}}
    man.write(out)
    print(f"results in {out}/")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experts", help="expert importance (disable one expert at a time) and routing statistics",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__ + """
examples:
  train experts runs/ext --data zh=heldout/zh.jsonl --data en=heldout/en.jsonl -o runs/ext/experts
  train experts merged/ --data zh=heldout/zh.jsonl --max-tokens 2000 --skip-importance -o experts-routing
Cost: importance runs (layers x experts + 1) passes over --max-tokens tokens per set.""")
    p.add_argument("model", help="`train run` output folder or Hugging Face model folder (Mixtral architecture)")
    p.add_argument("--data", action="append", required=True, metavar="NAME=PATH",
                   help="text set (JSONL/JSON/Parquet/txt file or folder); repeat, e.g. zh=... en=...")
    p.add_argument("-o", "--out", required=True, help="folder for experts.json, experts.md, heatmap PNGs, manifest.json")
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens per set to analyse (default 4096)")
    p.add_argument("--window", type=int, default=None, help="longest sequence per document (default min(2048, model limit))")
    p.add_argument("--skip-importance", action="store_true", help="routing statistics only (one pass per set)")
    p.add_argument("--text-field", default="text", help="field holding the text in JSON/Parquet records")
    add_read_options(p)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--on-error", choices=("stop", "skip"), default="stop", help="bad input records: stop or count and skip")
    p.set_defaults(func=run)
