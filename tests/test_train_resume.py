"""`train run --resume auto` continues only the same run: same data (by content), tokenizer and settings outside
an explicit allowlist; a log line torn by a kill does not stop the resume."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields

import pytest
import torch

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

    # the base model is identified by its files, not its path: a changed config.json is another model (named),
    # an unchanged copy elsewhere is the same one
    moved, edited = world["root"] / "mixtral-moved", world["root"] / "mixtral-edited"
    shutil.copytree(world["mixtral"], moved)
    shutil.copytree(world["mixtral"], edited)
    cfg = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**cfg, "rope_theta": 500000.0}))
    assert main([*resume, "--model", str(edited)]) == 2
    assert "base model config.json 'sha256 " in capsys.readouterr().err

    with (out / "log.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"step": 3, "lm_lo')  # killed while writing a log line
    assert main([*resume, "--log-every", "1", "--save-every", "0", "--model", str(moved)]) == 0  # free settings may change
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


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_the_run_resumes(world, monkeypatch, capsys):
    import errno
    import io
    import os

    import train.loop as loop

    class FullDisk(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_open = open
    out = world["root"] / "run-full-disk"
    args = ["run", "--model", str(world["mixtral"]), "--data", str(world["pt-orig"]), "--tokenizer", str(world["base"]),
            "--output-dir", str(out), "--max-steps", "6", "--quiet"]
    for k, v in {**SMALL, "save_every": 2}.items():
        flag = "--" + k.replace("_", "-")
        args += [flag if v else "--no-" + flag[2:]] if isinstance(v, bool) else [flag, str(v)]
    with monkeypatch.context() as mp:  # the disk fills up while the checkpoint of step 4 is written
        mp.setattr(loop, "open", lambda path, *a, **kw: FullDisk() if "step-0000004" in str(path) else real_open(path, *a, **kw),
                   raising=False)
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"train run: error: {out}: cannot write the output here: "
                                               f"{os.strerror(errno.ENOSPC)}"), err
    assert main(["run", "--config", str(out / "run.toml"), "--resume", "auto", "--quiet"]) == 0
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "manifest.json").read_text())["train"]["steps"] == 6


def test_resume_refuses_an_optimizer_state_of_other_parameter_groups(world, capsys):
    """A checkpoint whose optimizer state was saved for other parameter groups (before the weight-decay split of
    2a5fcd4 AdamW had one group of every trainable parameter, and saved no names) ends in a one-line error that
    names the checkpoint and the way out, never a traceback."""
    out = world["root"] / "run-resume-groups"
    args = ["run", "--model", str(world["mixtral"]), "--data", str(world["pt-orig"]), "--tokenizer", str(world["base"]),
            "--output-dir", str(out), "--max-steps", "2", "--quiet"]
    for k, v in SMALL.items():
        flag = "--" + k.replace("_", "-")
        args += [flag if v else "--no-" + flag[2:]] if isinstance(v, bool) else [flag, str(v)]
    assert main([*args, "--stop-after", "1"]) == 0
    (ck,) = (out / "checkpoints").glob("step-*")
    saved = torch.load(ck / "optimizer.pt", weights_only=False)
    names = saved["param_names"]
    assert len(names) == 2 and names[0] and all("lm_head" in n or "embed_tokens" in n for n in names[1])
    resume = ["run", "--config", str(out / "run.toml"), "--resume", "auto", "--quiet"]

    def refused(optimizer_pt: dict) -> str:
        torch.save(optimizer_pt, ck / "optimizer.pt")
        capsys.readouterr()
        assert main(resume) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        (line,) = [ln for ln in err.splitlines() if "error:" in ln]
        assert str(ck / "optimizer.pt") in line and "new --output-dir" in line
        return line

    groups = saved["optimizer"]["param_groups"]
    old = {**saved, "optimizer": {**saved["optimizer"], "param_groups": [
        {**groups[0], "params": [i for g in groups for i in g["params"]]}]}}
    del old["param_names"]
    sizes = [len(names[0]), len(names[1])]
    assert f"parameter groups of [{sum(sizes)}] parameters, this version of train run makes groups of {sizes}" \
           in refused(old)
    swapped = {**saved, "param_names": [names[0][::-1], names[1]]}
    assert "holding other parameters" in refused(swapped)
    torch.save(saved, ck / "optimizer.pt")
    assert main(resume) == 0  # the checkpoint as written resumes
    assert json.loads((out / "manifest.json").read_text())["train"]["steps"] == 2
