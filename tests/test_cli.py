"""The command runner: help texts load no heavy library, every declared sub-command is what its module registers,
and plotting leaves matplotlib's backend alone."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ("zhdata", "tokenizer", "train")
HEAVY = ("polars", "torch", "transformers", "peft", "bitsandbytes", "matplotlib")
# sub-commands whose modules still import a heavy library at the top; strict, so an entry goes when the module
# becomes light
NOT_YET_LIGHT: set[str] = set()


def _commands() -> list[tuple[str, str]]:
    return [(prog, c.name) for prog in PROGRAMS for c in import_module(f"{prog}.cli").COMMANDS]


def _help_imports(prog: str, *words: str) -> tuple[str, list[str]]:
    """(help text, heavy modules loaded) of `prog WORDS --help` in a fresh interpreter."""
    code = f"""
import contextlib, io, json, sys
from {prog}.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    try:
        main({list(words)!r} + ["--help"])
    except SystemExit as e:
        assert e.code == 0, e.code
print(json.dumps([buf.getvalue(), sorted(m for m in {HEAVY!r} if m in sys.modules)]))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    text, heavy = json.loads(r.stdout.splitlines()[-1])
    return text, heavy


@pytest.mark.parametrize("prog", PROGRAMS)
def test_program_help_lists_every_command_without_importing_them(prog):
    text, heavy = _help_imports(prog)
    assert heavy == []
    for c in import_module(f"{prog}.cli").COMMANDS:
        assert c.name in text and c.help.split()[0] in text


@pytest.mark.parametrize("prog,name", [
    pytest.param(p, n, marks=pytest.mark.xfail(strict=True, reason="module imports torch at the top"))
    if f"{p} {n}" in NOT_YET_LIGHT else (p, n) for p, n in _commands()])
def test_subcommand_help_imports_no_heavy_library(prog, name):
    text, heavy = _help_imports(prog, name)
    assert text.startswith(f"usage: {prog} {name}")
    assert heavy == [], f"`{prog} {name} --help` imports {heavy}"


@pytest.mark.parametrize("prog,name", _commands())
def test_declared_command_is_its_modules(prog, name):
    """The declaration names the sub-command its module registers, and the module has the runner's `run(args)`."""
    c = next(c for c in import_module(f"{prog}.cli").COMMANDS if c.name == name)
    module = import_module(c.module)
    sub = argparse.ArgumentParser().add_subparsers()
    module.add_parser(sub)
    assert list(sub.choices) == [name]
    assert callable(module.run)


def test_runner_runs_only_the_chosen_module_and_reports_input_errors(tmp_path, capsys):
    from zhdata.cli import main

    assert main(["dedupe", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zhdata dedupe: error: ") and "missing" in err[0]


def test_plots_leave_the_backend_alone(tmp_path):
    """Plotting draws PNGs through the Agg canvas; the process keeps the backend it chose."""
    code = f"""
import matplotlib
matplotlib.use("svg")
from pathlib import Path
from tokenizer.report import chart
from train.plots import heatmap, lines
lines({{"a": ([1, 2, 4], [3.0, 2.0, 1.5])}}, {str(tmp_path / "l.png")!r}, "t", "x", "y", logx=True)
heatmap([[0.1, -0.2], [0.3, 0.0]], {str(tmp_path / "h.png")!r}, "t", "c", center_zero=True)
chart({{"corpora": {{"zh": {{"a": {{"chars_per_token": 1.5}}, "b": {{"chars_per_token": 2.0}}}}}}, "tokenizers": {{"a": {{}}, "b": {{}}}}}},
      Path({str(tmp_path / "c.png")!r}))
print(matplotlib.get_backend())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "svg"
    for name in ("l.png", "h.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
