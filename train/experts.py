"""`train experts MODEL --data zh=PATH --data en=PATH`: expert importance and routing statistics of a Mixtral MoE.

Importance: disable one expert in one layer (its router logit set to -inf, so its tokens go to the next
best experts, weights renormalised over the chosen top-k as Mixtral does) and measure the change in
mean token loss on the text; one cell per (layer, expert) of a heatmap.
Routing: share of the top-k routing slots each expert receives per layer (rows sum to 1), and the mean
entropy of the router's softmax (bits; log2(experts) is uniform), for each named text set.
Analysis in train/routing.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from zhdata.errors import ErrorPolicy
from zhdata.lock import locked_output
from zhdata.manifest import Manifest, cli_params
from zhdata.readers import add_read_options, read_options

from .evaldata import parse_sets, read_texts
from .plots import heatmap


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
    from .routing import RouterProbe, encode_docs, expert_importance, routing_stats
    from .scoring import load_model, model_window

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
    p = sub.add_parser("experts",
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
