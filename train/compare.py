"""`train compare RUN_ORIG RUN_EXT -o REPORT_DIR`: the original and the extended vocabulary side by side.

Is the extended vocabulary better for Chinese, does it cost English, by how much, how sure, on which model?
Reads only files, so every number can be re-derived from the run folders:
  RUN/manifest.json   (`train run`): train.tokens, train.chars, train.train_s, tokenizer, params.model, params.seed
  RUN/log.jsonl       (`train run`), one JSON object per logged step; fields used:
                      step, lm_loss (nats/token), tokens (cumulative), and either chars (cumulative) or
                      tokens_per_s + chars_per_s (their ratio is the step's tokens per character);
                      elapsed (cumulative seconds) when present, else summed from tokens / tokens_per_s;
                      any eval_bpc* / bpc_* field is plotted as measured bpc. Unreadable lines are skipped.
  EVAL/bpc.json, EVAL/mc.json, EVAL/ctx_ppl.json (`train eval -o EVAL`; EVAL defaults to RUN/eval;
                      ctx_ppl.json also from RUN/eval-ctx), EVAL/lm_eval.json
  RUN/experts/experts.json (`train experts RUN -o RUN/experts`), when present
  BASE/bpc.json (--base: `train eval` of the base model before training), when given
  the base model's config.json and *.safetensors headers (name, parameter count, demonstration or not).
Uncertainty: each bpc (accuracy) difference comes with a 95% paired bootstrap interval over the held-out
documents (questions); a difference is called only when its interval excludes 0. With several seeds per
vocabulary (--orig R1 R2 --ext R3 R4, paired in order), per-document results are averaged over seeds,
the spread over seeds is shown, and a call also needs every seed pair to agree in sign.
The bpc curve over training is lm_loss x (tokens/char) / ln 2 against characters seen, which does not
depend on the vocabulary; per-token loss would not compare.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

from zhdata.errors import ErrorPolicy, InputError
from zhdata.lock import locked_output, output_lock
from zhdata.manifest import Manifest, read_manifest
from zhdata.readers import iter_records

from .modelfiles import safetensors_parameters
from .report import Report, number

LN2 = math.log(2.0)
LANGS = {"zh": "Chinese", "en": "English"}


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
        point["load_per_core"] = r.get("load_per_core")
        curve.append(point)
    return curve


def _load_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(path, e.lineno, f"malformed JSON: {e.msg}") from None


def describe_model(model_dir: str | Path | None) -> dict[str, Any]:
    """Name, architecture, parameter count and demonstration flag of a base model folder."""
    info: dict[str, Any] = {"path": str(model_dir) if model_dir else None, "name": Path(str(model_dir)).name if model_dir else None,
                            "architecture": None, "parameters": None, "demonstration": None}
    if not model_dir or not (Path(model_dir) / "config.json").is_file():
        return info
    cfg = _load_json(Path(model_dir) / "config.json") or {}
    info.update(architecture=(cfg.get("architectures") or [cfg.get("model_type")])[0],
                parameters=safetensors_parameters(Path(model_dir)), demonstration=bool(cfg.get("zh_adapt_demo")),
                layers=cfg.get("num_hidden_layers"), experts=cfg.get("num_local_experts"))
    return info


def read_run(run_dir: str | Path, eval_dir: str | Path | None, label: str) -> dict[str, Any]:
    """Everything the report needs about one run, with the files it came from."""
    run_dir = Path(run_dir)
    try:
        man = read_manifest(run_dir)
    except FileNotFoundError:
        raise InputError(run_dir, None, "no manifest.json: not a `train run` output folder") from None
    train, params = man.get("train") or {}, man.get("params") or {}
    eval_dir = Path(eval_dir) if eval_dir else run_dir / "eval"
    ctx = next((p for p in (eval_dir / "ctx_ppl.json", run_dir / "eval-ctx" / "ctx_ppl.json") if p.is_file()), eval_dir / "ctx_ppl.json")
    paths = {"bpc": eval_dir / "bpc.json", "mc": eval_dir / "mc.json", "ctx": ctx,
             "experts": run_dir / "experts" / "experts.json", "lm_eval": eval_dir / "lm_eval.json"}
    loaded = {k: _load_json(p) for k, p in paths.items()}
    bpc, mc = loaded["bpc"] or {}, loaded["mc"] or {}
    files = [run_dir / "manifest.json", run_dir / "log.jsonl", *paths.values()]
    tokens, chars, secs = train.get("tokens"), train.get("chars"), train.get("train_s")
    curve = training_curve(run_dir / "log.jsonl")
    loads = [p["load_per_core"] for p in curve if p.get("load_per_core") is not None]
    return {
        "label": label, "path": str(run_dir), "eval_dir": str(eval_dir), "seed": params.get("seed"),
        "model": describe_model(params.get("model")),
        "tokenizer_fingerprint": (man.get("tokenizer") or {}).get("fingerprint"),
        "vocab_size": bpc.get("vocab_size"),
        "steps": train.get("steps"), "tokens": tokens, "chars": chars, "train_s": secs,
        "train_tokens_per_char": tokens / chars if tokens and chars else None,
        "chars_per_s": chars / secs if chars and secs else None,
        "tokens_per_s": tokens / secs if tokens and secs else None,
        "curve": curve, "host": train.get("host"), "device": man.get("device"),
        "load_per_core": sum(loads) / len(loads) if loads else None,
        "bpc": bpc.get("sets", {}),
        "mc": {b: {s: r["categories"]["overall"]["acc"] for s, r in v["shots"].items()}
               for b, v in mc.get("benchmarks", {}).items()},
        "mc_items": {b: {s: {name: sub.get("right") for name, sub in r["subjects"].items()} for s, r in v["shots"].items()}
                     for b, v in mc.get("benchmarks", {}).items()},
        "ctx": (loaded["ctx"] or {}).get("sets", {}),
        "experts": loaded["experts"], "lm_eval": loaded["lm_eval"],
        "files": [str(f) for f in files if f.is_file()],
    }


# ---------------------------------------------------------------- one vocabulary = one or more seeds

def _mean(xs: Sequence[float | None]) -> float | None:
    """Mean over seeds (None when a seed lacks the value); counts that agree stay integers."""
    if not xs or any(x is None for x in xs):
        return None
    m = sum(xs) / len(xs)
    return int(m) if all(isinstance(x, int) for x in xs) and m == int(m) else m


def side(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of one vocabulary (one per seed) as one: numbers averaged over seeds, per-seed values kept."""
    first = runs[0]
    sets = [n for n in first["bpc"] if all(n in r["bpc"] for r in runs)]
    out = {"label": first["label"], "runs": runs, "seeds": [r["seed"] for r in runs], "model": first["model"],
           "vocab_size": first["vocab_size"], "tokenizer_fingerprint": first["tokenizer_fingerprint"]}
    for key in ("steps", "tokens", "chars", "train_s", "train_tokens_per_char", "chars_per_s", "tokens_per_s"):
        out[key] = _mean([r[key] for r in runs])
    out["bpc"] = {}
    for n in sets:
        entry = {k: _mean([r["bpc"][n].get(k) for r in runs]) for k in ("bpc", "bits_per_byte", "tokens_per_char")}
        entry["docs"], entry["chars"] = first["bpc"][n].get("docs"), first["bpc"][n].get("chars")
        entry["per_seed"] = [r["bpc"][n]["bpc"] for r in runs]
        entry["documents"] = _average_documents([r["bpc"][n].get("documents") for r in runs])
        out["bpc"][n] = entry
    out["mc"] = {b: {s: _mean([r["mc"].get(b, {}).get(s) for r in runs]) for s in shots} for b, shots in first["mc"].items()}
    out["mc_per_seed"] = {b: {s: [r["mc"].get(b, {}).get(s) for r in runs] for s in shots} for b, shots in first["mc"].items()}
    out["mc_items"] = first["mc_items"] if len(runs) == 1 else {
        b: {s: {subj: _mean_lists([r["mc_items"].get(b, {}).get(s, {}).get(subj) for r in runs]) for subj in subs}
            for s, subs in shots.items()} for b, shots in first["mc_items"].items()}
    return out


def _mean_lists(lists: list[list[float] | None]) -> list[float] | None:
    if any(x is None for x in lists) or len({len(x) for x in lists}) != 1:
        return None
    return [sum(v) / len(v) for v in zip(*lists)]


def _average_documents(docs: list[dict[str, list[Any]] | None]) -> dict[str, list[Any]] | None:
    """Per-document bits averaged over the seeds' runs (which scored the same documents)."""
    if any(d is None for d in docs) or any(d["key"] != docs[0]["key"] for d in docs):
        return None
    return {"key": docs[0]["key"], "chars": docs[0]["chars"], "bits": _mean_lists([d["bits"] for d in docs])}


# ---------------------------------------------------------------- differences with their uncertainty

def bpc_difference(orig: dict[str, Any], ext: dict[str, Any], name: str) -> dict[str, Any]:
    """ext - orig bpc on one set, with its paired bootstrap interval over documents and the spread over seeds."""
    from .stats import paired_bootstrap, seed_spread

    o, e = orig["bpc"][name], ext["bpc"][name]
    res: dict[str, Any] = {"set": name, "orig": o["bpc"], "ext": e["bpc"], "diff": e["bpc"] - o["bpc"], "interval": None,
                           "why_no_interval": None, "seed_diffs": None}
    do, de = o.get("documents"), e.get("documents")
    if not do or not de:
        res["why_no_interval"] = "no per-document results in bpc.json (rerun `train eval --task bpc`)"
    else:
        pos = {k: i for i, k in enumerate(de["key"])}
        common = [(i, pos[k]) for i, k in enumerate(do["key"]) if k in pos]
        if len(common) < 2:
            res["why_no_interval"] = ("the two runs were scored on different documents" if not common
                                      else "one held-out document only: no interval")
        else:
            res["interval"] = paired_bootstrap([do["bits"][i] for i, _ in common], [de["bits"][j] for _, j in common],
                                               [do["chars"][i] for i, _ in common])
    if len(o["per_seed"]) > 1 and len(o["per_seed"]) == len(e["per_seed"]):
        diffs = [b - a for a, b in zip(o["per_seed"], e["per_seed"])]
        res["seed_diffs"] = diffs
        res["seed_spread"] = {"orig": seed_spread(o["per_seed"]), "ext": seed_spread(e["per_seed"]), "diff": seed_spread(diffs)}
    res["call"] = _call(res, lower_is_better=True)
    return res


def accuracy_difference(orig: dict[str, Any], ext: dict[str, Any], bench: str, shots: str) -> dict[str, Any] | None:
    """ext - orig accuracy, with its paired bootstrap interval over questions (and seeds' spread)."""
    from .stats import paired_bootstrap

    a, b = orig["mc"][bench].get(shots), ext["mc"].get(bench, {}).get(shots)
    if a is None or b is None:
        return None
    res: dict[str, Any] = {"bench": bench, "shots": shots, "orig": a, "ext": b, "diff": b - a, "interval": None,
                           "why_no_interval": None, "seed_diffs": None}
    io, ie = orig["mc_items"].get(bench, {}).get(shots, {}), ext["mc_items"].get(bench, {}).get(shots, {})
    subjects = [s for s in io if io[s] is not None and ie.get(s) is not None and len(io[s]) == len(ie[s])]
    if subjects and sum(len(io[s]) for s in subjects) >= 2:
        res["interval"] = paired_bootstrap([x for s in subjects for x in io[s]], [x for s in subjects for x in ie[s]])
    else:
        res["why_no_interval"] = "no per-question results in mc.json (rerun `train eval --task mc`)"
    po, pe = orig["mc_per_seed"][bench][shots], ext["mc_per_seed"].get(bench, {}).get(shots, [])
    if len(po) > 1 and len(po) == len(pe) and None not in po + pe:
        res["seed_diffs"] = [y - x for x, y in zip(po, pe)]
    res["call"] = _call(res, lower_is_better=False)
    return res


def _call(res: dict[str, Any], lower_is_better: bool) -> str:
    """better | worse (the extended vocabulary, clear: interval excludes 0 and seeds agree) | unclear."""
    from .stats import clear

    if not clear(res["interval"]):
        return "unclear"
    sign = 1 if res["diff"] > 0 else -1
    if res["seed_diffs"] and any((d > 0) - (d < 0) != sign for d in res["seed_diffs"]):
        return "unclear"
    return "better" if (sign < 0) == lower_is_better else "worse"


def _pick(sets: dict[str, Any], lang: str) -> str | None:
    return next((n for n in sets if n == lang), None) or next((n for n in sets if lang in n.lower()), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _signed(x: float) -> str:
    return ("+" if x > 0 else "−" if x < 0 else "") + number(abs(x))


def describe_difference(d: dict[str, Any], what: str) -> str:
    """'Chinese bpc 10.30 (ext) vs 10.99 (orig), Δ −0.69 [95% CI −0.75, −0.62] over 12 documents'."""
    rel = f" ({d['diff'] / d['orig'] * 100:+.1f}%)".replace("-", "−") if "set" in d and d["orig"] else ""
    s = f"{what} {number(d['ext'])} (ext) vs {number(d['orig'])} (orig), Δ {_signed(d['diff'])}{rel}"
    iv = d["interval"]
    if iv:
        unit = "documents" if "set" in d else "questions"
        s += f" [{round(iv['level'] * 100)}% CI {_signed(iv['lo'])}, {_signed(iv['hi'])}] over {iv['items']:,} {unit}"
    else:
        s += f" ({d['why_no_interval']})"
    if d["seed_diffs"]:
        s += f", Δ per seed {', '.join(_signed(x) for x in d['seed_diffs'])}"
    return s


def model_phrase(orig: dict[str, Any], ext: dict[str, Any]) -> str:
    """What the comparison is about, for the verdict line: model, size, demonstration or not, training text."""
    m = orig["model"]
    name = f"`{m['name']}`" if m["name"] else "an unnamed base model (the run manifest names none)"
    bits = [m["architecture"]] if m["architecture"] else []
    if m["parameters"]:
        bits.append(f"{_count(m['parameters'])} parameters")
    if m.get("layers"):
        bits.append(f"{m['layers']} layer{'s' if m['layers'] != 1 else ''}" + (f" x {m['experts']} experts" if m.get("experts") else ""))
    kind = ("a randomly initialised DEMONSTRATION model, not Mixtral: it shows the pipeline, not Mixtral's quality"
            if m["demonstration"] else None)
    seeds = len(orig["runs"])
    chars = [c for c in (orig["chars"], ext["chars"]) if c]
    train = (f"{number(round(min(chars)))}" + (f"–{number(round(max(chars)))}" if max(chars) > 1.02 * min(chars) else "")
             + " training characters per run") if chars else "training characters unknown"
    return (name + (f" ({', '.join(bits)})" if bits else "") + (f", {kind}" if kind else "")
            + f"; {train}, {seeds} seed{'s' if seeds > 1 else ''} per vocabulary")


def _count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def comparison(orig: dict[str, Any], ext: dict[str, Any]) -> dict[str, Any]:
    """Every difference of the two vocabularies, with its uncertainty: bpc per set, accuracy per benchmark and shots."""
    return {"bpc": {n: bpc_difference(orig, ext, n) for n in orig["bpc"] if n in ext["bpc"]},
            "mc": [d for b, shots in orig["mc"].items() for s in shots if (d := accuracy_difference(orig, ext, b, s))]}


LOAD_SPREAD = 0.25  # mean load per core of two runs further apart than this: their throughputs do not compare


def timing_caveat(runs: Sequence[dict[str, Any]]) -> str | None:
    """Why the runs' training throughputs do not compare, from their own manifests and logs (other hosts or
    devices, or mean machine load per core further apart than LOAD_SPREAD), or None when they do."""
    hosts = sorted({r["host"] for r in runs if r.get("host")})
    devices = sorted({r["device"] for r in runs if r.get("device")})
    loads = [r.get("load_per_core") for r in runs]
    if len(hosts) > 1:
        return f"the runs ran on different hosts ({', '.join(hosts)})"
    if len(devices) > 1:
        return f"the runs ran on different devices ({', '.join(devices)})"
    if any(x is None for x in loads):
        return "the machine load is not in every run's log (runs of an older version), so it is unknown whether they compare"
    if max(loads) - min(loads) > LOAD_SPREAD:
        return (f"the machine was loaded differently during the runs (load per core {' vs '.join(f'{x:.2f}' for x in loads)}, "
                "from their logs): the ratio measures the machine as much as the vocabularies")
    return None


def verdict(orig: dict[str, Any], ext: dict[str, Any], diffs: dict[str, Any] | None = None) -> str:
    """One line: the model it is about, the call on Chinese and English bpc (called only where the 95% interval
    excludes 0), tokens per character, benchmark accuracy and training throughput beside it."""
    head, parts = verdict_parts(orig, ext, diffs)
    return f"{head} — " + "; ".join(parts) + "."


def verdict_parts(orig: dict[str, Any], ext: dict[str, Any], diffs: dict[str, Any] | None = None) -> tuple[str, list[str]]:
    """(the call with the model it is about, the numbers behind it)."""
    diffs = diffs or comparison(orig, ext)
    parts = []
    zh, en = _pick(diffs["bpc"], "zh"), _pick(diffs["bpc"], "en")
    zc = diffs["bpc"][zh]["call"] if zh else None
    ec = diffs["bpc"][en]["call"] if en else None
    for name, lang in ((zh, "Chinese"), (en, "English")):
        if name:
            d = diffs["bpc"][name]
            parts.append(describe_difference(d, f"{lang} bpc") + f": {_word(d['call'])}")
    if zh:
        tpc = _ratio(ext["bpc"][zh]["tokens_per_char"], orig["bpc"][zh]["tokens_per_char"])
        if tpc:
            parts.append(f"{(1 - tpc) * 100:.0f}% fewer tokens per Chinese character" if tpc < 1
                         else f"{(tpc - 1) * 100:.0f}% more tokens per Chinese character")
    for d in diffs["mc"]:
        if d["shots"] == max((x["shots"] for x in diffs["mc"] if x["bench"] == d["bench"]), key=int):
            parts.append(describe_difference(d, f"{d['bench']} {d['shots']}-shot accuracy") + f": {_word(d['call'])}")
    speed = _ratio(ext["chars_per_s"], orig["chars_per_s"])
    if speed:
        caveat = timing_caveat([*orig["runs"], *ext["runs"]])
        parts.append(f"training throughput x{speed:.2f} characters/s" if caveat is None
                     else f"training throughput not comparable ({caveat.split(' (')[0]})")
    if zc is None:
        call = "no Chinese bpc to compare (run `train eval --task bpc --data zh=...` into RUN/eval)"
    elif zc == "unclear":
        call = "no clear difference in Chinese between the vocabularies"
    else:
        call = f"the {'extended' if zc == 'better' else 'original'} vocabulary is better for Chinese"
    if zc is not None:
        if ec is None:
            call += "; English retention not measured (no English held-out set: add `--data en=...` to `train eval`)"
        elif ec == "worse":
            call += (", but the extended vocabulary costs English" if zc == "better"
                     else "; the extended vocabulary is also worse in English")
        elif ec == "better":
            call += "; the extended vocabulary is better in English too" if zc != "worse" else ", though better in English"
        else:
            call += "; no clear difference in English"
    return f"Verdict on {model_phrase(orig, ext)}: {call}", parts


def _word(call: str) -> str:
    return {"better": "extended better", "worse": "extended worse", "unclear": "no clear difference"}[call]


# ---------------------------------------------------------------- the report

def _cell_diff(d: dict[str, Any]) -> str:
    iv = d["interval"]
    return f"{_signed(iv['lo'])}\u00a0…\u00a0{_signed(iv['hi'])}" if iv else "–"  # one line: no break inside


def build_report(orig: dict[str, Any], ext: dict[str, Any], out: Path, base: dict[str, Any] | None = None,
                 diffs: dict[str, Any] | None = None) -> Report:
    from .plots import lines

    diffs = diffs or comparison(orig, ext)
    sides = (orig, ext)
    rep = Report("Original vs extended vocabulary")
    rep.verdict(*verdict_parts(orig, ext, diffs))

    rep.heading("Held-out text: Chinese and English")
    names = list(diffs["bpc"])
    if names:
        rep.table(["set", "docs", "bpc base (before training)", f"bpc {orig['label']}", f"bpc {ext['label']}",
                   "Δ bpc (ext − orig)", "95% interval", "call", f"tokens/char {orig['label']}", f"tokens/char {ext['label']}"],
                  [[f"{n} ({LANGS[n]})" if n in LANGS else n, orig["bpc"][n]["docs"],
                    (base or {}).get(n, {}).get("bpc"), d["orig"], d["ext"], d["diff"], _cell_diff(d), _word(d["call"]),
                    orig["bpc"][n]["tokens_per_char"], ext["bpc"][n]["tokens_per_char"]] for n, d in diffs["bpc"].items()])
        rep.text("Bits per character do not depend on the vocabulary (per-token perplexity would not compare). "
                 "Interval: paired bootstrap over the held-out documents (2,000 resamples); a difference is called only "
                 "when its interval excludes 0. Lower bpc is better." + ("" if base else
                 " No base-model column: pass --base with a `train eval --task bpc` folder of the model before training."))
        if len(orig["runs"]) > 1:
            rep.heading("Spread over seeds")
            rep.table(["set", "seeds", f"bpc {orig['label']} per seed", f"bpc {ext['label']} per seed", "Δ per seed",
                       "sd of Δ over seeds"],
                      [[n, len(orig["runs"]), ", ".join(number(x) for x in orig["bpc"][n]["per_seed"]),
                        ", ".join(number(x) for x in ext["bpc"][n]["per_seed"]),
                        ", ".join(_signed(x) for x in d["seed_diffs"] or []),
                        ((d.get("seed_spread") or {}).get("diff") or {}).get("sd")] for n, d in diffs["bpc"].items()])
    else:
        rep.text("No common bpc sets: run `train eval RUN --task bpc --data zh=... --data en=... -o RUN/eval` for both runs.")

    rep.heading("Benchmarks")
    if diffs["mc"]:
        rep.table(["benchmark", "shots", f"accuracy {orig['label']}", f"accuracy {ext['label']}", "Δ", "95% interval", "call"],
                  [[d["bench"], d["shots"], d["orig"], d["ext"], d["diff"], _cell_diff(d), _word(d["call"])] for d in diffs["mc"]])
        rep.text("Interval: paired bootstrap over the questions.")
    else:
        rep.text("No benchmark results (train eval --task mc) in the eval folders.")
    _lm_eval_section(rep, orig, ext)

    rep.heading("What was compared")
    m = orig["model"]
    rep.table(["", orig["label"], ext["label"]], [
        ["base model", m["path"], ext["model"]["path"]],
        ["architecture", m["architecture"], ext["model"]["architecture"]],
        ["parameters (base model)", m["parameters"], ext["model"]["parameters"]],
        ["demonstration model", _yes(m["demonstration"]), _yes(ext["model"]["demonstration"])],
        ["run folders", ", ".join(r["path"] for r in orig["runs"]), ", ".join(r["path"] for r in ext["runs"])],
        ["seeds", ", ".join(str(s) for s in orig["seeds"]), ", ".join(str(s) for s in ext["seeds"])],
        ["tokenizer fingerprint", (orig["tokenizer_fingerprint"] or "")[:12] or None, (ext["tokenizer_fingerprint"] or "")[:12] or None],
        ["vocabulary size", orig["vocab_size"], ext["vocab_size"]],
        ["optimizer steps", orig["steps"], ext["steps"]],
        ["training tokens", orig["tokens"], ext["tokens"]],
        ["training characters", orig["chars"], ext["chars"]],
        ["tokens per character (training text)", orig["train_tokens_per_char"], ext["train_tokens_per_char"]],
        ["training time (s)", orig["train_s"], ext["train_s"]],
        ["characters / s", orig["chars_per_s"], ext["chars_per_s"]],
        ["tokens / s", orig["tokens_per_s"], ext["tokens_per_s"]]])
    if caveat := timing_caveat([*orig["runs"], *ext["runs"]]):
        rep.text(f"Note: the throughputs above do not compare: {caveat}.")
    if orig["chars"] and ext["chars"] and abs(orig["chars"] - ext["chars"]) > 0.02 * orig["chars"]:
        rep.text(f"Note: the runs saw different amounts of text ({number(orig['chars'])} vs {number(ext['chars'])} "
                 "characters); compare the curves at equal characters.")

    rep.heading("Bits per character over training")
    series = {}
    for s in sides:
        for r in s["runs"]:
            name = s["label"] + (f" seed {r['seed']}" if len(s["runs"]) > 1 else "")
            pts = [(p["chars"], p["train_bpc"]) for p in r["curve"] if p["train_bpc"] is not None]
            if pts:
                series[name] = tuple(zip(*pts))
            for key in sorted({k for p in r["curve"] for k in p if k.startswith(("eval_bpc", "bpc_"))}):
                series[f"{name} {key}"] = ([p["chars"] for p in r["curve"] if key in p], [p[key] for p in r["curve"] if key in p])
    if series:
        lines(series, out / "bpc_curve.png", "bits per character over training", "characters seen", "bits per character")
        rep.image(out / "bpc_curve.png", "bpc over training")
        rep.text("Training bpc = lm_loss x tokens/char / ln 2 on the training batches (read from log.jsonl).")
    else:
        rep.text("No training log (log.jsonl) with lm_loss and token/character counts in the run folders.")
    _ctx_section(rep, orig, ext, out)
    _experts_section(rep, orig, ext, out)
    return rep


def _yes(flag: bool | None) -> str | None:
    return None if flag is None else ("yes: not Mixtral, numbers show the pipeline only" if flag else "no")


def _ctx_section(rep: Report, orig: dict[str, Any], ext: dict[str, Any], out: Path) -> None:
    """bpc against context length (`train eval --task ctx-ppl`), mean over each set's documents, both runs."""
    from .plots import lines

    ro, re_ = orig["runs"][0]["ctx"], ext["runs"][0]["ctx"]
    names = [n for n in ro if n in re_]
    if not names:
        return
    rep.heading("Context length")

    def mean_by_length(rows: list[dict[str, Any]]) -> dict[int, float]:
        by: dict[int, list[float]] = {}
        for r in rows:
            by.setdefault(int(r["context"]), []).append(r["bpc"])
        return {L: sum(v) / len(v) for L, v in sorted(by.items())}

    table, series = [], {}
    for n in names:
        mo, me = mean_by_length(ro[n]), mean_by_length(re_[n])
        for label, m in ((orig["label"], mo), (ext["label"], me)):
            series[f"{n} {label}"] = (list(m), list(m.values()))
        table += [[n, L, mo[L], me[L], me[L] - mo[L]] for L in mo if L in me]
    lines(series, out / "ctx_bpc.png", "bits per character against context length", "context length (tokens)",
          "bits per character", logx=True)
    rep.image(out / "ctx_bpc.png", "bpc against context length")
    rep.table(["set", "context (tokens)", f"bpc {orig['label']}", f"bpc {ext['label']}", "Δ"], table)
    rep.text("Sliding windows of each length over the same documents (stride half the length); bpc, not per-token "
             "perplexity, so the vocabularies compare. A context length counts in tokens, and the extended vocabulary "
             "fits more characters into the same number of tokens.")


def _experts_section(rep: Report, orig: dict[str, Any], ext: dict[str, Any], out: Path) -> None:
    """Router entropy per layer, Chinese vs English, from `train experts RUN -o RUN/experts`."""
    from .plots import lines

    ex = {s["label"]: s["runs"][0]["experts"] for s in (orig, ext) if s["runs"][0]["experts"]}
    if not ex:
        return
    rep.heading("Expert routing")
    series, table = {}, []
    for label, res in ex.items():
        sets = res.get("sets", {})
        zh, en = _pick(sets, "zh"), _pick(sets, "en")
        for n in (zh, en):
            if n:
                ent = sets[n]["routing"]["entropy_bits"]
                series[f"{label} {n}"] = (list(range(len(ent))), ent)
        if zh and en:
            ez, ee = sets[zh]["routing"]["entropy_bits"], sets[en]["routing"]["entropy_bits"]
            table += [[label, layer, a, b, a - b] for layer, (a, b) in enumerate(zip(ez, ee))]
    lines(series, out / "routing_entropy.png", "router entropy per layer", "layer", "mean router entropy (bits)")
    rep.image(out / "routing_entropy.png", "router entropy per layer")
    if table:
        rep.table(["run", "layer", "entropy Chinese (bits)", "entropy English (bits)", "Δ (zh − en)"], table)
    k = {res.get("experts") for res in ex.values()}
    k = k.pop() if len(k) == 1 else None
    uniform = f" (uniform over {k} experts = {number(math.log2(k))} bits)" if k else ""
    rep.text(f"Mean entropy of the router's softmax per token{uniform}: lower means the layer sends that language to "
             "fewer experts. From `train experts RUN -o RUN/experts`.")


def _lm_eval_section(rep: Report, orig: dict[str, Any], ext: dict[str, Any]) -> None:
    """lm-evaluation-harness results (`train eval --task lm-eval`, lm_eval.json), when both runs have them."""
    ro, re_ = orig["runs"][0]["lm_eval"], ext["runs"][0]["lm_eval"]
    if not ro or not re_:
        return
    rows = []
    for task, metrics in sorted((ro.get("results") or {}).items()):
        other = (re_.get("results") or {}).get(task, {})
        for metric, v in sorted(metrics.items()):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and "stderr" not in metric and metric in other:
                rows.append([task, metric, v, other[metric], other[metric] - v])
    if rows:
        rep.heading("lm-evaluation-harness")
        rep.table(["task", "metric", orig["label"], ext["label"], "Δ"], rows)


# ---------------------------------------------------------------- the stage and its command

def compare(orig_runs: Sequence[str | Path], ext_runs: Sequence[str | Path], out: str | Path,
            labels: tuple[str, str] = ("orig", "ext"), base_eval: str | Path | None = None,
            eval_orig: str | Path | None = None, eval_ext: str | Path | None = None,
            params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write report.md, report.html, compare.json and manifest.json into `out`; returns compare.json's content.

    `orig_runs`, `ext_runs`: `train run` folders (one per seed, paired in order); `eval_orig`/`eval_ext`: their
    `train eval` folder when there is one run per vocabulary and it is not RUN/eval; `base_eval`: a `train eval`
    folder of the base model before training (its bpc.json gives the 'before' column).
    """
    if not orig_runs or not ext_runs:
        raise InputError("train compare", None, "needs at least one run folder for each vocabulary")
    if (eval_orig and len(orig_runs) > 1) or (eval_ext and len(ext_runs) > 1):
        raise InputError("--eval-orig/--eval-ext", None, "only with one run per vocabulary (else each RUN/eval is read)")
    out = Path(out)
    with output_lock(out):
        man = Manifest("train compare", params if params is not None else {
            "orig": [str(r) for r in orig_runs], "ext": [str(r) for r in ext_runs], "out": str(out), "labels": list(labels),
            "base": str(base_eval) if base_eval else None})
        orig = side([read_run(r, eval_orig, labels[0]) for r in orig_runs])
        ext = side([read_run(r, eval_ext, labels[1]) for r in ext_runs])
        base = None
        if base_eval:
            base_file = Path(base_eval) / "bpc.json"
            if not base_file.is_file():
                raise InputError(base_eval, None, "no bpc.json: --base takes a `train eval --task bpc` folder of the base model")
            base = (_load_json(base_file) or {}).get("sets", {})
            man.add_inputs([base_file])
        man.add_inputs([Path(f) for s in (orig, ext) for r in s["runs"] for f in r["files"]])
        diffs = comparison(orig, ext)
        rep = build_report(orig, ext, out, base, diffs)
        line = verdict(orig, ext, diffs)
        (out / "report.md").write_text(rep.markdown(), encoding="utf-8")
        (out / "report.html").write_text(rep.html(), encoding="utf-8")
        result = {"verdict": line, "model": orig["model"], "differences": diffs,
                  "base_bpc": {n: s.get("bpc") for n, s in (base or {}).items()},
                  "orig": _without_documents(orig), "ext": _without_documents(ext)}
        (out / "compare.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        man.counts.records_in = man.counts.records_out = len(orig_runs) + len(ext_runs)
        man.extra["verdict"] = line
        man.write(out)
    return result


def _without_documents(s: dict[str, Any]) -> dict[str, Any]:
    """A side for compare.json: per-document lists stay in the eval folders' bpc.json."""
    slim = {k: v for k, v in s.items() if k not in ("runs", "mc_items")}
    slim["bpc"] = {n: {k: v for k, v in e.items() if k != "documents"} for n, e in s["bpc"].items()}
    slim["runs"] = [{k: v for k, v in r.items() if k not in ("bpc", "mc_items", "ctx", "experts", "lm_eval", "curve")}
                    for r in s["runs"]]
    return slim


@locked_output("out")
def run(args: argparse.Namespace) -> int:
    from zhdata.manifest import cli_params

    if args.runs and (args.orig or args.ext):
        raise InputError("train compare", None, "give either RUN_ORIG RUN_EXT or --orig ... --ext ..., not both")
    if args.runs and len(args.runs) != 2:
        raise InputError("train compare", None, f"expected two run folders (RUN_ORIG RUN_EXT), got {len(args.runs)}",
                         "for several seeds use --orig R1 R2 --ext R3 R4")
    orig_runs, ext_runs = ([args.runs[0]], [args.runs[1]]) if args.runs else (args.orig, args.ext)
    res = compare(orig_runs, ext_runs, args.out, tuple(args.labels), args.base, args.eval_orig, args.eval_ext,
                  params=cli_params(args))
    print(res["verdict"])
    print(f"report: {Path(args.out) / 'report.html'} (and report.md)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__ + """
examples:
  train eval runs/orig --task bpc mc --data zh=heldout/zh.jsonl --data en=heldout/en.jsonl --bench ../shared/eval/ceval -o runs/orig/eval
  train eval runs/ext  --task bpc mc --data zh=heldout/zh.jsonl --data en=heldout/en.jsonl --bench ../shared/eval/ceval -o runs/ext/eval
  train eval base-model/ --task bpc --data zh=heldout/zh.jsonl --data en=heldout/en.jsonl -o base-eval
  train compare runs/orig runs/ext --base base-eval -o report/
  train compare --orig runs/orig-s1 runs/orig-s2 --ext runs/ext-s1 runs/ext-s2 -o report/   # two seeds each""")
    p.add_argument("runs", nargs="*", metavar="RUN", help="RUN_ORIG RUN_EXT: `train run` folders of the original and "
                                                          "the extended vocabulary")
    p.add_argument("--orig", nargs="+", default=[], metavar="RUN", help="runs of the original vocabulary, one per seed")
    p.add_argument("--ext", nargs="+", default=[], metavar="RUN", help="runs of the extended vocabulary, one per seed "
                                                                       "(paired with --orig in order)")
    p.add_argument("-o", "--out", required=True, help="folder for report.md, report.html, compare.json, plots, manifest.json")
    p.add_argument("--base", default=None, metavar="EVAL", help="`train eval --task bpc` folder of the base model before "
                                                                "training: the 'before' column (English retention)")
    p.add_argument("--eval-orig", default=None, help="`train eval` output folder of the original run (default RUN_ORIG/eval)")
    p.add_argument("--eval-ext", default=None, help="`train eval` output folder of the extended run (default RUN_EXT/eval)")
    p.add_argument("--labels", nargs=2, default=["orig", "ext"], metavar=("ORIG", "EXT"), help="names of the two runs in the report")
