"""`train quickstart` end to end on the built-in sample, reduced size (tiny model, a few thousand characters)."""

from __future__ import annotations

import importlib
import json
import shlex
from dataclasses import asdict
from pathlib import Path

import polars as pl
import pytest

from train.cli import main
from train.config import resolve, to_toml
from train.evaluate import options_from_args
from train.quickstart import ANSWER_TOKENS, ENGLISH_HELDOUT
from train.report import number
from zhdata.command import build_parser


def check_commands(out: Path) -> None:
    """commands.sh holds every stage as a command that parses, and the commands say what the stage functions did."""
    commands = [shlex.split(line) for line in (out / "commands.sh").read_text(encoding="utf-8").splitlines()
                if line and not line.startswith(("#", "set "))]
    assert [c[:2] for c in commands] == [["zhdata", "clean"], ["zhdata", "dedupe"], ["tokenizer", "convert"],
                                         ["tokenizer", "extend"], ["zhdata", "pack"], ["zhdata", "pack"],
                                         ["train", "run"], ["train", "run"], ["train", "eval"], ["train", "eval"],
                                         ["train", "eval"], ["train", "compare"], ["train", "generate"],
                                         ["train", "generate"]]
    assert "--sample" in commands[0]
    for argv in commands:
        cli = importlib.import_module(f"{argv[0]}.cli")
        args = build_parser(argv[0], cli.DESCRIPTION, cli.COMMANDS, load=argv[1]).parse_args(argv[1:])
        if argv[:2] == ["train", "run"]:  # the command resolves to the settings the run recorded
            cfg = resolve(args)
            assert to_toml(cfg) == (Path(cfg.output_dir) / "run.toml").read_text(encoding="utf-8")
        if argv[:2] == ["train", "eval"]:  # ... and to the options the evaluation recorded
            params = json.loads((Path(args.out) / "manifest.json").read_text(encoding="utf-8"))["params"]
            opts = {k: v if k != "data" else {n: [str(p) for p in ps] for n, ps in v.items()}
                    for k, v in asdict(options_from_args(args)).items()}
            assert {k: params[k] for k in opts} == opts and params["task"] == args.task


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    argv = ["quickstart", "-o", str(out), "--size", "tiny", "--train-chars", "3000", "--heldout-chars", "1000",
            "--add", "100", "--block-size", "64", "--micro-batch-size", "8"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report' / 'report.html'}" in printed
    md = (out / "report" / "report.md").read_text(encoding="utf-8")
    verdict = json.loads((out / "report" / "compare.json").read_text(encoding="utf-8"))["verdict"]
    assert verdict in printed and verdict.startswith("Verdict on `model` (MixtralForCausalLM")  # what it is about ...
    assert "DEMONSTRATION model" in verdict and "training characters per run" in verdict
    assert "Chinese bpc" in verdict and "English bpc" in verdict and "95% CI" in verdict  # ... and how sure
    assert f"**{verdict.split(' — ')[0]}**" in md
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in md.splitlines() if r.startswith("| ")}
    base = json.loads((out / "runs" / "base" / "eval" / "bpc.json").read_text(encoding="utf-8"))["sets"]
    assert rows["en (English)"][1] == number(base["en"]["bpc"])  # English retention, with the base model's bpc
    assert "data:image/png;base64," in (out / "report" / "report.html").read_text(encoding="utf-8")
    bpc = {v: json.loads((out / "runs" / v / "eval" / "bpc.json").read_text(encoding="utf-8")) for v in ("orig", "ext")}
    for lang in ("zh", "en"):  # both runs scored on the same held-out documents, one result per document
        assert bpc["orig"]["sets"][lang]["documents"]["key"] == bpc["ext"]["sets"][lang]["documents"]["key"]
    assert bpc["orig"]["sets"]["en"]["docs"] == len(ENGLISH_HELDOUT.read_text(encoding="utf-8").splitlines())
    assert bpc["ext"]["vocab_size"] == 32000 + 100
    assert bpc["ext"]["sets"]["zh"]["tokens_per_char"] < bpc["orig"]["sets"]["zh"]["tokens_per_char"]
    train_ids = set(pl.read_parquet(out / "corpus" / "train.parquet")["id"])
    held_ids = {json.loads(line)["id"] for line in (out / "heldout" / "zh.jsonl").read_text(encoding="utf-8").splitlines()}
    assert held_ids and not train_ids & held_ids  # held-out text is never trained on
    config = json.loads((out / "model" / "config.json").read_text(encoding="utf-8"))
    assert "DEMONSTRATION MODEL" in config["zh_adapt_demo"]
    check_commands(out)
    for v in ("orig", "ext"):  # the run ends with a few answers of each model, one per prompt
        answers = [json.loads(line) for line in (out / "answers" / f"{v}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [a["id"] for a in answers] == ["capital", "poem", "english"] and all(
            isinstance(a["answer"], str) and 0 <= a["answer_tokens"] <= ANSWER_TOKENS and a["finish"] in ("eos", "length")
            for a in answers)
    man = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert man["quickstart"]["demonstration_model"] is True
    assert main(argv) == 2  # a second run into the same folder is refused without --overwrite
    # The adapter run folder (NF4 base + adapters) and its merged fp32 model give the same bpc.
    merged, ev = tmp_path / "merged", tmp_path / "merged-eval"
    assert main(["merge", str(out / "runs" / "ext"), "-o", str(merged), "--dtype", "fp32", "--quiet"]) == 0
    assert main(["eval", str(merged), "--task", "bpc", "--data", f"zh={out / 'heldout' / 'zh.jsonl'}", "-o", str(ev)]) == 0
    merged_bpc = json.loads((ev / "bpc.json").read_text(encoding="utf-8"))["sets"]["zh"]
    assert merged_bpc["tokens"] == bpc["ext"]["sets"]["zh"]["tokens"]
    assert merged_bpc["bpc"] == pytest.approx(bpc["ext"]["sets"]["zh"]["bpc"], rel=1e-4)
