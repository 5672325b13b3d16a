"""`train compare RUN_ORIG RUN_EXT -o REPORT_DIR`: the original and the extended vocabulary side by side.

Reads only files, so every number can be re-derived from the run folders:
  RUN/manifest.json   (`train run`): train.tokens, train.chars, train.train_s, train.steps, tokenizer.sha256
  RUN/log.jsonl       (`train run`), one JSON object per logged step; fields used:
                      step, lm_loss (nats/token), tokens (cumulative), and either chars (cumulative) or
                      tokens_per_s + chars_per_s (their ratio is the step's tokens per character);
                      elapsed (cumulative seconds) when present, else summed from tokens / tokens_per_s;
                      any eval_bpc* / bpc_* field is plotted as measured bpc. Unreadable lines are skipped.
  EVAL/bpc.json, EVAL/mc.json (`train eval -o EVAL`; EVAL defaults to RUN/eval).
The bpc curve over training is lm_loss x (tokens/char) / ln 2 against characters seen, which does not
depend on the vocabulary; per-token loss would not compare.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from zhdata.errors import ErrorPolicy, InputError
from zhdata.lock import locked_output
from zhdata.manifest import Manifest, cli_params, read_manifest
from zhdata.readers import iter_records

from .plots import lines
from .report import Report

LN2 = math.log(2.0)
TOL = 0.01  # relative bpc difference below which two runs count as equal


def training_curve(log: Path) -> list[dict[str, Any]]:
    """Per logged step: characters seen, elapsed seconds, training bpc, and any measured bpc fields."""
    if not log.is_file():
        return []
    recs: dict[int, dict[str, Any]] = {}
    for _, r in iter_records(log, fmt="jsonl", policy=ErrorPolicy("skip")):
        if isinstance(r, dict) and isinstance(r.get("step"), (int, float)):
            recs[int(r["step"])] = r  # a resumed run may log a step again: the last line wins
    curve, chars, elapsed, tokens = [], 0.0, 0.0, 0.0
    for step in sorted(recs):
        r = recs[step]
        tok_now = float(r.get("tokens", tokens))
        tps, cps = r.get("tokens_per_s"), r.get("chars_per_s")
        if r.get("chars"):
            ratio = tok_now / float(r["chars"]) if tok_now else None
        else:
            ratio = float(tps) / float(cps) if tps and cps else None
        chars = float(r["chars"]) if r.get("chars") else chars + ((tok_now - tokens) / ratio if ratio else 0.0)
        elapsed = float(r["elapsed"]) if "elapsed" in r else elapsed + ((tok_now - tokens) / float(tps) if tps else 0.0)
        tokens = tok_now
        point = {"step": step, "tokens": tokens, "chars": chars, "elapsed": elapsed,
                 "train_bpc": float(r["lm_loss"]) * ratio / LN2 if ratio and "lm_loss" in r else None}
        point.update({k: v for k, v in r.items() if (k.startswith("eval_bpc") or k.startswith("bpc_")) and v is not None})
        curve.append(point)
    return curve


def _load_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(path, e.lineno, f"malformed JSON: {e.msg}") from None


def read_run(run_dir: str | Path, eval_dir: str | Path | None, label: str) -> dict[str, Any]:
    """Everything the report needs about one run, with the files it came from."""
    run_dir = Path(run_dir)
    try:
        man = read_manifest(run_dir)
    except FileNotFoundError:
        raise InputError(run_dir, None, "no manifest.json: not a `train run` output folder") from None
    train = man.get("train") or {}
    eval_dir = Path(eval_dir) if eval_dir else run_dir / "eval"
    bpc, mc = _load_json(eval_dir / "bpc.json"), _load_json(eval_dir / "mc.json")
    files = [run_dir / "manifest.json", run_dir / "log.jsonl", eval_dir / "bpc.json", eval_dir / "mc.json"]
    tokens, chars, secs = train.get("tokens"), train.get("chars"), train.get("train_s")
    return {
        "label": label, "path": str(run_dir), "eval_dir": str(eval_dir),
        "tokenizer_sha256": (man.get("tokenizer") or {}).get("sha256"),
        "vocab_size": bpc.get("vocab_size") if bpc else None,
        "steps": train.get("steps"), "tokens": tokens, "chars": chars, "train_s": secs,
        "train_tokens_per_char": tokens / chars if tokens and chars else None,
        "chars_per_s": chars / secs if chars and secs else None,
        "tokens_per_s": tokens / secs if tokens and secs else None,
        "curve": training_curve(run_dir / "log.jsonl"),
        "bpc": (bpc or {}).get("sets", {}),
        "mc": {b: {s: r["categories"]["overall"]["acc"] for s, r in v["shots"].items()}
               for b, v in (mc or {}).get("benchmarks", {}).items()},
        "files": [str(f) for f in files if f.is_file()],
    }


def _pick(sets: dict[str, Any], lang: str) -> str | None:
    return next((n for n in sets if n == lang), None) or next((n for n in sets if lang in n.lower()), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def verdict(orig: dict[str, Any], ext: dict[str, Any]) -> str:
    """One line from the numbers: the call rests on Chinese bpc (equal within 1 %) and training characters/s;
    tokens per character, English bpc and benchmark accuracy are listed beside it."""
    parts, zh_cmp = [], None
    zh = _pick(orig["bpc"], "zh")
    if zh and zh in ext["bpc"]:
        zo, ze = orig["bpc"][zh]["bpc"], ext["bpc"][zh]["bpc"]
        zh_cmp = "same" if abs(ze - zo) <= TOL * zo else ("better" if ze < zo else "worse")
        parts.append(f"Chinese bpc {ze:.3f} (ext) vs {zo:.3f} (orig): {zh_cmp}")
        tpc = _ratio(ext["bpc"][zh]["tokens_per_char"], orig["bpc"][zh]["tokens_per_char"])
        if tpc:
            parts.append(f"{(1 - tpc) * 100:.0f}% fewer tokens per Chinese character" if tpc < 1
                         else f"{(tpc - 1) * 100:.0f}% more tokens per Chinese character")
    en = _pick(orig["bpc"], "en")
    if en and en in ext["bpc"]:
        eo, ee = orig["bpc"][en]["bpc"], ext["bpc"][en]["bpc"]
        parts.append(f"English bpc {ee:.3f} vs {eo:.3f}" + (" (same)" if abs(ee - eo) <= TOL * eo
                                                           else " (better)" if ee < eo else " (worse)"))
    for b, shots in orig["mc"].items():
        s = max(shots, key=int, default=None)
        if s is not None and s in ext["mc"].get(b, {}):
            parts.append(f"{b} {s}-shot accuracy {ext['mc'][b][s]:.3f} vs {shots[s]:.3f}")
    speed = _ratio(ext["chars_per_s"], orig["chars_per_s"])
    if speed:
        parts.append(f"training throughput x{speed:.2f} characters/s")
    if zh_cmp is None:
        call = "no Chinese bpc to compare (run `train eval --task bpc` into RUN/eval)"
    elif zh_cmp != "worse" and (speed is None or speed >= 1):
        call = "the extended vocabulary is the better choice here"
    elif zh_cmp == "worse" and (speed is None or speed <= 1):
        call = "the original vocabulary is the better choice here"
    else:
        call = "a trade-off: " + ("faster but worse Chinese bpc" if zh_cmp == "worse" else "better Chinese bpc but slower")
        call += " with the extended vocabulary at this budget"
    return "Verdict: " + call + (" — " + "; ".join(parts) if parts else "") + "."


def build_report(orig: dict[str, Any], ext: dict[str, Any], out: Path) -> Report:
    runs = (orig, ext)
    rep = Report("Original vs extended vocabulary")
    rep.text(verdict(orig, ext), "verdict")
    rep.heading("Same corpus, two vocabularies")
    rows = [("run folder", "path"), ("tokenizer sha256", "tokenizer_sha256"), ("vocabulary size", "vocab_size"),
            ("steps", "steps"), ("training tokens", "tokens"), ("training characters", "chars"),
            ("tokens per character (training text)", "train_tokens_per_char"), ("wall time (s)", "train_s"),
            ("characters / s", "chars_per_s"), ("tokens / s", "tokens_per_s")]
    rep.table(["", orig["label"], ext["label"]],
              [[name] + [(r[key][:12] if key == "tokenizer_sha256" and r[key] else r[key]) for r in runs] for name, key in rows])
    if orig["chars"] and ext["chars"] and abs(orig["chars"] - ext["chars"]) > 0.02 * orig["chars"]:
        rep.text(f"Note: the runs saw different amounts of text ({orig['chars']:,} vs {ext['chars']:,} characters); "
                 "compare the curves at equal characters.")
    rep.heading("Bits per character over training")
    series = {r["label"]: ([p["chars"] for p in r["curve"] if p["train_bpc"] is not None],
                           [p["train_bpc"] for p in r["curve"] if p["train_bpc"] is not None]) for r in runs}
    for r in runs:
        for key in sorted({k for p in r["curve"] for k in p if k.startswith(("eval_bpc", "bpc_"))}):
            series[f"{r['label']} {key}"] = ([p["chars"] for p in r["curve"] if key in p], [p[key] for p in r["curve"] if key in p])
    if any(xs for xs, _ in series.values()):
        lines(series, out / "bpc_curve.png", "bits per character over training", "characters seen", "bits per character")
        rep.image(out / "bpc_curve.png", "bpc over training")
        rep.text("Training bpc = lm_loss x tokens/char / ln 2 on the training batches (read from log.jsonl).")
    else:
        rep.text("No training log (log.jsonl) with lm_loss and token/character counts in the run folders.")
    rep.heading("Held-out text")
    names = [n for n in orig["bpc"] if n in ext["bpc"]]
    if names:
        rep.table(["set", "tokens/char orig", "tokens/char ext", "bpc orig", "bpc ext", "Δ bpc", "bits/byte orig", "bits/byte ext"],
                  [[n, orig["bpc"][n]["tokens_per_char"], ext["bpc"][n]["tokens_per_char"], orig["bpc"][n]["bpc"],
                    ext["bpc"][n]["bpc"], ext["bpc"][n]["bpc"] - orig["bpc"][n]["bpc"],
                    orig["bpc"][n]["bits_per_byte"], ext["bpc"][n]["bits_per_byte"]] for n in names])
        rep.text("Bits per character and per byte do not depend on the vocabulary; per-token perplexity would not compare.")
    else:
        rep.text("No common bpc sets: run `train eval RUN --task bpc --data zh=... --data en=... -o RUN/eval` for both runs.")
    rep.heading("Benchmarks")
    bench_rows = [[b, s, orig["mc"][b][s], ext["mc"].get(b, {}).get(s),
                   (ext["mc"][b][s] - orig["mc"][b][s]) if s in ext["mc"].get(b, {}) else None]
                  for b in orig["mc"] for s in orig["mc"][b]]
    if bench_rows:
        rep.table(["benchmark", "shots", "accuracy orig", "accuracy ext", "Δ"], bench_rows)
    else:
        rep.text("No benchmark results (train eval --task mc) in the eval folders.")
    return rep


@locked_output("out")
def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    man = Manifest("train compare", cli_params(args))
    orig = read_run(args.run_orig, args.eval_orig, args.labels[0])
    ext = read_run(args.run_ext, args.eval_ext, args.labels[1])
    man.add_inputs([Path(f) for r in (orig, ext) for f in r["files"]])
    rep = build_report(orig, ext, out)
    (out / "report.md").write_text(rep.markdown(), encoding="utf-8")
    (out / "report.html").write_text(rep.html(), encoding="utf-8")
    (out / "compare.json").write_text(json.dumps({"orig": orig, "ext": ext, "verdict": verdict(orig, ext)},
                                                 ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    man.counts.records_in = man.counts.records_out = 2
    man.extra["verdict"] = verdict(orig, ext)
    man.write(out)
    print(verdict(orig, ext))
    print(f"report: {out / 'report.html'} (and report.md)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="report: original vs extended vocabulary (Markdown + self-contained HTML)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__ + """
example:
  train eval runs/orig --task bpc mc --data zh=heldout/zh.jsonl --data en=heldout/en.jsonl --bench ../shared/eval/ceval -o runs/orig/eval
  train eval runs/ext  --task bpc mc --data zh=heldout/zh.jsonl --data en=heldout/en.jsonl --bench ../shared/eval/ceval -o runs/ext/eval
  train compare runs/orig runs/ext -o report/""")
    p.add_argument("run_orig", help="`train run` folder trained with the original vocabulary")
    p.add_argument("run_ext", help="`train run` folder trained with the extended vocabulary")
    p.add_argument("-o", "--out", required=True, help="folder for report.md, report.html, compare.json, plots, manifest.json")
    p.add_argument("--eval-orig", default=None, help="`train eval` output folder of the original run (default RUN_ORIG/eval)")
    p.add_argument("--eval-ext", default=None, help="`train eval` output folder of the extended run (default RUN_EXT/eval)")
    p.add_argument("--labels", nargs=2, default=["orig", "ext"], metavar=("ORIG", "EXT"), help="names of the two runs in the report")
    p.set_defaults(func=run)
