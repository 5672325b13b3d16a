"""`train run --resume auto` continues only the same run: same data (by content), tokenizer and settings outside
an explicit allowlist; a log line torn by a kill does not stop the resume."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields

import pytest

from test_train_run import SMALL, _log, world  # noqa: F401 (world is a fixture)
from train.cli import main
from train.config import RunConfig
from train.loop import RESUME_FREE, run_identity
from zhdata.pack.packer import PackOptions, pack


def test_every_setting_outside_the_allowlist_identifies_the_run():
    base = RunConfig(model="m", data="d", output_dir="o")
    ident = run_identity(base, 1, "a" * 64, "b" * 64)
    assert {"max_steps", "optimizer", "quant_blocksize", "precision", "max_grad_norm", "embed_init"} <= ident.keys()
    for f in fields(RunConfig):
        if f.name not in RESUME_FREE:
            other = RunConfig(**{**base.__dict__, f.name: ["x"] if f.name == "lora_targets" else 7 if f.type in ("int", "float") else "other"})
            assert run_identity(other, 1, "a" * 64, "b" * 64) != ident, f.name
    assert run_identity(base, 2, "a" * 64, "b" * 64) != ident
    assert run_identity(base, 1, "c" * 64, "b" * 64) != ident and run_identity(base, 1, "a" * 64, "c" * 64) != ident


def test_resume_refuses_repacked_data_and_other_settings_and_survives_a_torn_log_line(world, capsys):
    data = world["root"] / "pt-copy"
    shutil.copytree(world["pt-orig"], data)
    out = world["root"] / "run-resume-identity"
    args = ["run", "--model", str(world["mixtral"]), "--data", str(data), "--tokenizer", str(world["base"]),
            "--output-dir", str(out), "--max-steps", "4", "--quiet"]
    for k, v in SMALL.items():
        flag = "--" + k.replace("_", "-")
        args += [flag if v else "--no-" + flag[2:]] if isinstance(v, bool) else [flag, str(v)]
    assert main([*args, "--stop-after", "2"]) == 0
    resume = ["run", "--config", str(out / "run.toml"), "--resume", "auto", "--stop-after", "0", "--quiet"]

    assert main([*resume, "--max-grad-norm", "0.5"]) == 2  # outside the old identity
    assert "other settings: max_grad_norm 1.0 → 0.5" in capsys.readouterr().err
    saved = {p.name: p.read_bytes() for p in data.iterdir()}
    src = world["root"] / "pt.jsonl"
    pack([src], world["base"], data, PackOptions(mode="pt", block_size=32, val_fraction=0.2, overwrite=True, progress=False))
    assert main(resume) == 2
    assert "data_manifest_sha256" in capsys.readouterr().err
    for name, content in saved.items():  # the data the run was started on
        (data / name).write_bytes(content)

    with (out / "log.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"step": 3, "lm_lo')  # killed while writing a log line
    assert main([*resume, "--log-every", "1", "--save-every", "0"]) == 0  # free settings may change
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4]
    assert json.loads((out / "manifest.json").read_text())["train"]["steps"] == 4


def test_resume_auto_skips_a_checkpoint_torn_by_a_kill(tmp_path, capsys):
    from train.loop import CKPT_DIR, find_checkpoint
    from zhdata.errors import InputError

    cfg = RunConfig(model="m", data="d", output_dir=str(tmp_path), resume="auto")
    ident = run_identity(cfg, 1, "a" * 64, "b" * 64)
    ck = tmp_path / CKPT_DIR
    for step, text in ((2, json.dumps({"step": 2, "run": ident})), (4, '{"step": 4, "ru')):
        (ck / f"step-{step:07d}").mkdir(parents=True)
        (ck / f"step-{step:07d}" / "state.json").write_text(text)
    assert find_checkpoint(cfg, ident) == ck / "step-0000002"
    assert "skipping the incomplete checkpoint" in capsys.readouterr().err
    with pytest.raises(InputError, match="incomplete"):
        find_checkpoint(RunConfig(**{**cfg.__dict__, "resume": str(ck / "step-0000004")}), ident)
    other = RunConfig(**{**cfg.__dict__, "lr": 0.5})
    with pytest.raises(InputError, match="other settings: lr 0.0001 → 0.5"):
        find_checkpoint(other, run_identity(other, 1, "a" * 64, "b" * 64))
