"""`train compare`: differences with their uncertainty, the verdict and the report, from run folders' files."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from train.cli import main
from train.compare import compare, read_run, side, timing_caveat, training_curve, verdict
from train.stats import paired_bootstrap
from zhdata.manifest import Manifest

N_DOCS = 60


def base_model(root: Path, demo: bool = True) -> Path:
    """A model folder as far as compare reads it: config.json and a safetensors file (its header gives the size)."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["MixtralForCausalLM"], "num_hidden_layers": 2, "num_local_experts": 4}
    if demo:
        cfg["zh_adapt_demo"] = "DEMONSTRATION MODEL"
    (root / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    save_file({"a": np.zeros((1000, 64), np.float32), "b": np.zeros((3, 7), np.float32)}, str(root / "model.safetensors"))
    return root


def planted_docs(bpc: float, seed: int, noise: float = 0.3, n: int = N_DOCS) -> dict[str, list]:
    """Per-document results with a given overall bpc: chars fixed per document, bits = bpc x chars + noise."""
    rng = np.random.default_rng(seed)
    chars = np.random.default_rng(99).integers(100, 1000, n)  # the same documents for every run
    bits = bpc * chars + rng.normal(0, noise, n) * chars
    return {"key": [f"d{i}" for i in range(n)], "chars": chars.tolist(), "tokens": chars.tolist(), "bits": bits.tolist()}


def make_run(root: Path, tokens_per_char: float = 1.5, chars_per_s: float = 100.0, zh: float = 3.0, en: float = 1.2,
             acc: float = 0.3, seed: int = 0, noise: float = 0.3, model: Path | None = None, en_seed: int | None = None,
             load: float | None = 0.5, host: str = "node1") -> Path:
    """A run folder as `train run` + `train eval` leave it: manifest, log.jsonl, eval/bpc.json, eval/mc.json."""
    root.mkdir(parents=True)
    chars = 10_000
    tokens = int(chars * tokens_per_char)
    man = Manifest("train run", {"model": str(model) if model else "", "seed": seed})
    man.extra["tokenizer"] = {"sha256": "ab" * 32}
    man.extra["train"] = {"steps": 4, "tokens": tokens, "chars": chars, "train_s": chars / chars_per_s, "host": host}
    man.write(root)
    lines = []
    for step in range(1, 5):
        lines.append(json.dumps({"step": step, "lm_loss": 4.0 / step, "tokens": tokens * step // 4,
                                 "tokens_per_s": chars_per_s * tokens_per_char, "chars_per_s": chars_per_s,
                                 **({"load_per_core": load + 0.02 * step} if load is not None else {})}))
    lines.insert(2, "{broken")  # a torn line, as after a kill: skipped
    lines.append(json.dumps({"step": 4, "lm_loss": 0.5, "tokens": tokens, "tokens_per_s": chars_per_s * tokens_per_char,
                             "chars_per_s": chars_per_s, "eval_bpc_zh": zh}))  # step 4 logged again after a resume
    (root / "log.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ev = root / "eval"
    ev.mkdir()
    sets = {}
    for name, b, s in (("zh", zh, seed), ("en", en, seed + 1000 if en_seed is None else en_seed)):
        docs = planted_docs(b, s, noise)
        bits, ch = sum(docs["bits"]), sum(docs["chars"])
        sets[name] = {"bpc": bits / ch, "bits_per_byte": bits / ch / 2.5, "tokens_per_char": tokens_per_char,
                      "docs": N_DOCS, "chars": ch, "documents": docs}
    (ev / "bpc.json").write_text(json.dumps({"vocab_size": 32000, "sets": sets}), encoding="utf-8")
    right = [1 if i < round(acc * 40) else 0 for i in range(40)]
    mc = {"benchmarks": {"ceval": {"shots": {"0": {"categories": {"overall": {"acc": acc}},
                                                   "subjects": {"law": {"right": right}}}}}}}
    (ev / "mc.json").write_text(json.dumps(mc), encoding="utf-8")
    return root


def pair(tmp_path: Path, orig: dict, ext: dict, model: Path | None = None) -> tuple[dict, dict]:
    o = side([read_run(make_run(tmp_path / "o", model=model, **orig), None, "orig")])
    e = side([read_run(make_run(tmp_path / "e", model=model, **ext), None, "ext")])
    return o, e


def test_training_curve_from_log(tmp_path):
    run = make_run(tmp_path / "r", tokens_per_char=1.5, chars_per_s=100.0)
    curve = training_curve(run / "log.jsonl")
    assert [p["step"] for p in curve] == [1, 2, 3, 4]  # torn line skipped, repeated step kept once
    assert curve[0]["train_bpc"] == pytest.approx(4.0 * 1.5 / math.log(2))
    assert curve[-1]["train_bpc"] == pytest.approx(0.5 * 1.5 / math.log(2))  # the later line of step 4 wins
    assert curve[-1]["chars"] == pytest.approx(10_000, rel=1e-3)  # characters seen = tokens / (tokens/char)
    assert curve[-1]["elapsed"] == pytest.approx(100.0, rel=1e-3)
    assert curve[-1]["eval_bpc_zh"] == 3.0


def test_bootstrap_interval_covers_planted_difference_and_excludes_zero():
    rng = np.random.default_rng(0)
    chars = rng.integers(50, 2000, 300).astype(float)
    orig = chars * rng.normal(3.0, 0.4, 300)  # per-document bpc varies a lot between documents ...
    ext = orig - 0.1 * chars + rng.normal(0, 0.05, 300) * chars  # ... the planted difference is -0.1 bpc
    iv = paired_bootstrap(orig, ext, chars)
    assert iv["lo"] < -0.1 < iv["hi"] and iv["hi"] < 0
    assert iv["diff"] == pytest.approx((ext.sum() - orig.sum()) / chars.sum())
    # pairing matters: the same documents unpaired (the spread between documents) would hide the difference
    assert iv["hi"] - iv["lo"] < 0.05
    z = rng.normal(0, 0.05, 300) * chars  # no difference: every deviation comes once with each sign
    same = paired_bootstrap(np.r_[orig, orig], np.r_[orig + z, orig - z], np.r_[chars, chars])
    assert same["diff"] == pytest.approx(0, abs=1e-12) and same["lo"] < 0 < same["hi"]
    acc = paired_bootstrap([1, 0] * 50, [1, 1] * 50)  # accuracy: 0.5 -> 1.0 over 100 questions
    assert acc["diff"] == pytest.approx(0.5) and acc["lo"] > 0.3


def test_verdict_calls_a_clear_gain_and_weighs_english(tmp_path):
    o, e = pair(tmp_path / "a", {"tokens_per_char": 1.6, "zh": 3.0, "en": 1.2},
                {"tokens_per_char": 0.9, "chars_per_s": 170.0, "zh": 2.6, "en": 1.2, "seed": 5, "acc": 0.5})
    v = verdict(o, e)
    assert "the extended vocabulary is better for Chinese; no clear difference in English" in v
    assert "44% fewer tokens per Chinese character" in v and "x1.70 characters/s" in v
    assert re.search(r"Chinese bpc 2\.\d\d \(ext\) vs 3\.\d\d \(orig\), Δ −0\.\d+ \(−1\d\.\d%\) \[95% CI −0\.\d+, −0\.\d+\] over 60 documents", v)
    assert "ceval 0-shot accuracy 0.500 (ext) vs 0.300 (orig), Δ +0.200 [95% CI +" in v


def test_verdict_no_clear_difference(tmp_path):
    o, e = pair(tmp_path, {"zh": 3.0, "en": 1.2, "seed": 1}, {"zh": 3.0, "en": 1.2, "seed": 2})
    v = verdict(o, e)
    assert "no clear difference in Chinese between the vocabularies" in v
    assert "better for Chinese" not in v


def test_english_regression_with_chinese_gain_is_reported(tmp_path):
    o, e = pair(tmp_path, {"zh": 3.0, "en": 1.2}, {"zh": 2.5, "en": 1.6, "seed": 7})
    v = verdict(o, e)
    assert "the extended vocabulary is better for Chinese, but the extended vocabulary costs English" in v
    assert re.search(r"English bpc 1\.\d\d \(ext\) vs 1\.\d\d \(orig\), Δ \+0\.\d+ \(\+\d+\.\d%\) \[95% CI \+0\.\d+, \+0\.\d+\].*: extended worse", v)


def test_verdict_names_the_model(tmp_path):
    model = base_model(tmp_path / "demo-mixtral")
    o, e = pair(tmp_path, {"zh": 3.0}, {"zh": 2.5, "seed": 3}, model=model)
    v = verdict(o, e)
    assert v.startswith("Verdict on `demo-mixtral` (MixtralForCausalLM, 64k parameters, 2 layers x 4 experts), "
                        "a randomly initialised DEMONSTRATION model, not Mixtral")
    assert "10,000 training characters per run, 1 seed per vocabulary" in v
    real = base_model(tmp_path / "mixtral-8x7b", demo=False)
    o2, e2 = pair(tmp_path / "real", {"zh": 3.0}, {"zh": 2.5, "seed": 3}, model=real)
    assert "Verdict on `mixtral-8x7b` (MixtralForCausalLM" in verdict(o2, e2) and "DEMONSTRATION" not in verdict(o2, e2)


def test_several_seeds_show_their_spread_and_must_agree(tmp_path):
    runs = {f"{v}{s}": make_run(tmp_path / f"{v}{s}", zh=z, seed=s)
            for v, s, z in (("o", 1, 3.0), ("o", 2, 3.0), ("e", 1, 2.7), ("e", 2, 3.1))}
    out = tmp_path / "rep"
    assert main(["compare", "--orig", str(runs["o1"]), str(runs["o2"]), "--ext", str(runs["e1"]), str(runs["e2"]),
                 "-o", str(out)]) == 0
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    zh = data["differences"]["bpc"]["zh"]
    assert len(zh["seed_diffs"]) == 2 and zh["seed_diffs"][0] < 0 < zh["seed_diffs"][1]
    assert zh["call"] == "unclear"  # the seeds disagree in sign: no call, whatever the documents say
    assert "2 seeds per vocabulary" in data["verdict"] and "Δ per seed −" in data["verdict"]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Spread over seeds" in md
    assert main(["compare", str(runs["o1"]), str(runs["e1"]), str(runs["e2"]), "-o", str(out)]) == 2  # three positionals


def test_cli_writes_readable_self_contained_report(tmp_path):
    model = base_model(tmp_path / "demo")
    o = make_run(tmp_path / "o", 1.6, 2208.10634, zh=3.0, en=1.2, acc=0.30, model=model)
    e = make_run(tmp_path / "e", 0.9, 3500.0, zh=2.6, en=1.25, acc=0.35, seed=9, model=model)
    base = tmp_path / "base-eval"
    base.mkdir()
    (base / "bpc.json").write_text(json.dumps({"sets": {"zh": {"bpc": 14.9}, "en": {"bpc": 14.95}}}), encoding="utf-8")
    ctx = {"sets": {"zh": [{"doc": 0, "context": L, "bpc": 3.0 - L / 1000, "ppl": 9.0} for L in (64, 128)]}}
    for r in (o, e):
        (r / "eval" / "ctx_ppl.json").write_text(json.dumps(ctx), encoding="utf-8")
    (e / "experts").mkdir()
    (e / "experts" / "experts.json").write_text(json.dumps({"experts": 4, "sets": {
        n: {"routing": {"entropy_bits": ent}} for n, ent in (("zh", [1.2, 1.5]), ("en", [1.9, 1.8]))}}), encoding="utf-8")
    out = tmp_path / "report"
    assert main(["compare", str(o), str(e), "--base", str(base), "-o", str(out)]) == 0
    md = (out / "report.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "**Verdict on `demo`" in md
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in md.splitlines() if r.startswith("| ")}
    zh_orig = json.loads((o / "eval" / "bpc.json").read_text(encoding="utf-8"))["sets"]["zh"]["bpc"]
    assert rows["zh (Chinese)"][:3] == ["60", "14.90", f"{zh_orig:.2f}"] and rows["en (English)"][1] == "14.95"
    assert rows["en (English)"][6] in ("extended worse", "no clear difference")
    assert rows["characters / s"] == ["2,208", "3,500"]  # thousands separators, no raw float digits
    assert rows["training characters"] == ["10,000", "10,000"]
    assert "## Context length" in md and (out / "ctx_bpc.png").is_file()
    assert "## Expert routing" in md and "| ext | 0 | 1.20 | 1.90 | −0.700 |" in md and (out / "routing_entropy.png").is_file()
    assert rows["optimizer steps"] == ["4", "4"]
    assert "data:image/png;base64," in page and "2,208" in page and "14.95" in page
    assert not re.search(r"""src=['"](?!data:)""", page)  # nothing loaded from outside the page
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert data["ext"]["mc"]["ceval"]["0"] == 0.35 and data["base_bpc"] == {"zh": 14.9, "en": 14.95}
    man = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert {Path(i["path"]).name for i in man["inputs"]} >= {"manifest.json", "log.jsonl", "bpc.json", "mc.json", "experts.json"}


def test_library_call_and_old_eval_without_documents(tmp_path):
    o, e = make_run(tmp_path / "o", zh=3.0), make_run(tmp_path / "e", zh=2.5, seed=4)
    for r in (o, e):  # a bpc.json written before per-document results existed
        f = r / "eval" / "bpc.json"
        data = json.loads(f.read_text(encoding="utf-8"))
        for s in data["sets"].values():
            del s["documents"]
        f.write_text(json.dumps(data), encoding="utf-8")
    res = compare([o], [e], tmp_path / "rep")
    assert res["differences"]["bpc"]["zh"]["call"] == "unclear"
    assert "no per-document results in bpc.json" in res["verdict"]


def test_cli_refuses_non_run_folder(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["compare", str(tmp_path / "x"), str(tmp_path / "x"), "-o", str(tmp_path / "r")]) == 2
    assert "not a `train run` output folder" in capsys.readouterr().err


def test_throughput_ratio_only_where_the_runs_timings_compare(tmp_path):
    """The runs' logs record the machine load per core at every step and the manifest the host: a throughput
    ratio measured under other load, on another host, or without a recorded load is not reported as a ratio."""
    same = pair(tmp_path / "same", {"load": 0.50}, {"chars_per_s": 170.0, "load": 0.60})
    assert "training throughput x1.70 characters/s" in verdict(*same)
    assert timing_caveat([*same[0]["runs"], *same[1]["runs"]]) is None
    busy = pair(tmp_path / "busy", {"load": 0.20}, {"chars_per_s": 170.0, "load": 1.40})
    v = verdict(*busy)
    assert "x1.70" not in v and "training throughput not comparable (the machine was loaded differently" in v
    # means over the logged steps (step 4's later line, after a resume, has no load): 0.20 + 0.04, 1.40 + 0.04
    assert "load per core 0.24 vs 1.44" in timing_caveat([*busy[0]["runs"], *busy[1]["runs"]])
    hosts = pair(tmp_path / "hosts", {"host": "a"}, {"chars_per_s": 170.0, "host": "b"})
    assert "not comparable (the runs ran on different hosts" in verdict(*hosts)
    old = pair(tmp_path / "old", {"load": None}, {"chars_per_s": 170.0, "load": None})
    assert "not comparable (the machine load is not in every run's log" in verdict(*old)
    compare([Path(old[0]["runs"][0]["path"])], [Path(old[1]["runs"][0]["path"])], tmp_path / "report")
    assert "Note: the throughputs above do not compare: the machine load is not in every run's log" in \
        (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
