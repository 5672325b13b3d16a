"""`train compare`: numbers, curves and verdict derived from two run folders' files."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from train.cli import main
from train.compare import read_run, training_curve, verdict
from zhdata.manifest import Manifest


def make_run(root: Path, tokens_per_char: float, chars_per_s: float, zh_bpc: float, en_bpc: float, acc: float) -> Path:
    """A run folder as `train run` + `train eval` leave it: manifest, log.jsonl, eval/bpc.json, eval/mc.json."""
    root.mkdir(parents=True)
    chars = 10_000
    tokens = int(chars * tokens_per_char)
    man = Manifest("train run", {})
    man.extra["tokenizer"] = {"sha256": "ab" * 32}
    man.extra["train"] = {"steps": 4, "tokens": tokens, "chars": chars, "train_s": chars / chars_per_s}
    man.write(root)
    lines = []
    for step in range(1, 5):
        lines.append(json.dumps({"step": step, "lm_loss": 4.0 / step, "tokens": tokens * step // 4,
                                 "tokens_per_s": chars_per_s * tokens_per_char, "chars_per_s": chars_per_s}))
    lines.insert(2, "{broken")  # a torn line, as after a kill: skipped
    lines.append(json.dumps({"step": 4, "lm_loss": 0.5, "tokens": tokens, "tokens_per_s": chars_per_s * tokens_per_char,
                             "chars_per_s": chars_per_s, "eval_bpc_zh": zh_bpc}))  # step 4 logged again after a resume
    (root / "log.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ev = root / "eval"
    ev.mkdir()
    sets = {n: {"bpc": b, "bits_per_byte": b / 2.5, "tokens_per_char": tokens_per_char, "docs": 3, "chars": 300}
            for n, b in (("zh", zh_bpc), ("en", en_bpc))}
    (ev / "bpc.json").write_text(json.dumps({"vocab_size": 32000, "sets": sets}), encoding="utf-8")
    mc = {"benchmarks": {"ceval": {"shots": {"0": {"categories": {"overall": {"acc": acc}}}}}}}
    (ev / "mc.json").write_text(json.dumps(mc), encoding="utf-8")
    return root


def test_training_curve_from_log(tmp_path):
    run = make_run(tmp_path / "r", tokens_per_char=1.5, chars_per_s=100.0, zh_bpc=3.0, en_bpc=1.2, acc=0.3)
    curve = training_curve(run / "log.jsonl")
    assert [p["step"] for p in curve] == [1, 2, 3, 4]  # torn line skipped, repeated step kept once
    assert curve[0]["train_bpc"] == pytest.approx(4.0 * 1.5 / math.log(2))
    assert curve[-1]["train_bpc"] == pytest.approx(0.5 * 1.5 / math.log(2))  # the later line of step 4 wins
    assert curve[-1]["chars"] == pytest.approx(10_000, rel=1e-3)  # characters seen = tokens / (tokens/char)
    assert curve[-1]["elapsed"] == pytest.approx(100.0, rel=1e-3)
    assert curve[-1]["eval_bpc_zh"] == 3.0


def test_verdict_follows_the_numbers(tmp_path):
    orig = read_run(make_run(tmp_path / "o", 1.6, 100.0, zh_bpc=3.0, en_bpc=1.2, acc=0.30), None, "orig")
    better = read_run(make_run(tmp_path / "b", 0.9, 170.0, zh_bpc=2.8, en_bpc=1.2, acc=0.35), None, "ext")
    worse = read_run(make_run(tmp_path / "w", 0.9, 70.0, zh_bpc=3.4, en_bpc=1.3, acc=0.25), None, "ext")
    assert better["chars_per_s"] == pytest.approx(170.0) and better["train_tokens_per_char"] == pytest.approx(0.9)
    v = verdict(orig, better)
    assert "extended vocabulary is the better choice" in v and "44% fewer tokens per Chinese character" in v
    assert "x1.70 characters/s" in v and "English bpc 1.200 vs 1.200 (same)" in v
    assert "ceval 0-shot accuracy 0.350 vs 0.300" in v
    assert "original vocabulary is the better choice" in verdict(orig, worse)
    fast_but_worse = read_run(make_run(tmp_path / "t", 0.9, 170.0, zh_bpc=3.4, en_bpc=1.2, acc=0.3), None, "ext")
    assert "trade-off: faster but worse Chinese bpc" in verdict(orig, fast_but_worse)


def test_cli_writes_self_contained_report(tmp_path):
    o = make_run(tmp_path / "o", 1.6, 100.0, zh_bpc=3.0, en_bpc=1.2, acc=0.30)
    e = make_run(tmp_path / "e", 0.9, 170.0, zh_bpc=2.8, en_bpc=1.25, acc=0.35)
    out = tmp_path / "report"
    assert main(["compare", str(o), str(e), "-o", str(out)]) == 0
    md = (out / "report.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Verdict: the extended vocabulary is the better choice" in md
    assert "![bpc over training](bpc_curve.png)" in md and (out / "bpc_curve.png").is_file()
    assert "data:image/png;base64," in page
    assert not re.search(r"""src=['"](?!data:)""", page)  # nothing loaded from outside the page
    assert "| ceval | 0 | 0.3 | 0.35 | 0.05 |" in md
    assert "| zh | 1.6 | 0.9 | 3 | 2.8 | -0.2 |" in md
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert data["ext"]["mc"]["ceval"]["0"] == 0.35
    man = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert len(man["inputs"]) == 8  # manifest, log, bpc.json, mc.json of both runs


def test_cli_refuses_non_run_folder(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["compare", str(tmp_path / "x"), str(tmp_path / "x"), "-o", str(tmp_path / "r")]) == 2
    assert "not a `train run` output folder" in capsys.readouterr().err
