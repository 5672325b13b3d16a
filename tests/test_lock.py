"""One writer per output folder: a second writer is refused, a dead writer's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tokenizer.cli import main as tokenizer_main
from train.cli import main as train_main
from zhdata.cli import main as zhdata_main
from zhdata.lock import LOCK_FILE, output_lock

from test_pack_pt import real_texts, tok_dir, write_shards  # noqa: F401 (tok_dir is a fixture)

HOLDER = "import sys; from zhdata.lock import output_lock\nwith output_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()"


def hold(folder: Path) -> subprocess.Popen:
    """Another process holding the lock of `folder` until its stdin closes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def pack_argv(inp: Path, tok: Path, out: Path) -> list[str]:
    return ["pack", str(inp), "--tokenizer", str(tok), "-o", str(out), "--mode", "pt", "-q", "--block-size", "128"]


def test_second_pack_into_a_folder_being_written_is_refused_and_output_equals_one_run(tok_dir, tmp_path, capsys):
    inp = write_shards(tmp_path / "in", real_texts(4), 2)
    assert zhdata_main(pack_argv(inp, tok_dir, tmp_path / "single")) == 0
    out = tmp_path / "out"
    holder = hold(out)
    try:
        assert zhdata_main(pack_argv(inp, tok_dir, out)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(out) in err and f"pid {holder.pid} on {socket.gethostname()}" in err
        assert not any(p.suffix == ".bin" for p in out.iterdir())  # refused before writing anything
    finally:
        holder.communicate("")
    assert not (out / LOCK_FILE).exists()  # released when the holder ended
    assert zhdata_main(pack_argv(inp, tok_dir, out)) == 0
    for f in sorted((tmp_path / "single").glob("*.bin")):
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path / "single", out))
    assert a["counts"] == b["counts"] and a["pack"] == b["pack"]


def test_lock_of_a_killed_writer_is_taken_over_with_a_notice(tok_dir, tmp_path, capsys):
    inp = write_shards(tmp_path / "in", real_texts(2), 1)
    out = tmp_path / "out"
    holder = hold(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid  # left behind by the killed run
    assert zhdata_main(pack_argv(inp, tok_dir, out)) == 0
    assert f"taking over the stale lock of {out} (pid {holder.pid}" in capsys.readouterr().err
    assert (out / "manifest.json").exists() and not (out / LOCK_FILE).exists()


@pytest.fixture(scope="module")
def held_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("held") / "out"
    holder = hold(folder)
    yield folder
    holder.communicate("")


@pytest.mark.parametrize("argv", [
    ["zhdata", "clean", "IN", "-o", "OUT"], ["zhdata", "dedupe", "IN", "-o", "OUT"],
    ["zhdata", "instruct", "IN", "-o", "OUT"],
    ["tokenizer", "convert", "IN", "-o", "OUT"], ["tokenizer", "extend", "--base", "IN", "--corpus", "IN", "--add", "10", "-o", "OUT"],
    ["tokenizer", "train", "--corpus", "IN", "--vocab-size", "100", "-o", "OUT"],
    ["tokenizer", "report", "--tokenizer", "IN", "--corpus", "c=IN", "-o", "OUT"],
    ["tokenizer", "init-embeddings", "--model", "IN", "--base", "IN", "--tokenizer", "IN", "-o", "OUT"],
    ["tokenizer", "audit", "IN", "-o", "OUT"],
    ["train", "run", "--model", "IN", "--data", "IN", "--output-dir", "OUT"], ["train", "merge", "IN", "-o", "OUT"],
    ["train", "eval", "IN", "--task", "bpc", "-o", "OUT"], ["train", "experts", "IN", "--data", "IN", "-o", "OUT"],
    ["train", "compare", "IN", "IN", "-o", "OUT"], ["train", "quickstart", "-o", "OUT"],
])
def test_every_command_that_writes_a_folder_refuses_a_second_writer(argv, held_folder, tmp_path, capsys):
    mains = {"zhdata": zhdata_main, "tokenizer": tokenizer_main, "train": train_main}
    args = [{"IN": str(tmp_path / "in"), "OUT": str(held_folder)}.get(a, a) for a in argv[1:]]
    assert mains[argv[0]](args) == 2
    assert f"{held_folder}: is being written by another run" in capsys.readouterr().err
    assert sorted(p.name for p in held_folder.iterdir()) == [LOCK_FILE]


def test_lock_nests_in_one_process_and_a_refused_run_leaves_no_folder_behind(tmp_path):
    with output_lock(tmp_path / "o"):
        with output_lock(tmp_path / "o"):  # quickstart runs commands in-process
            pass
        assert (tmp_path / "o" / LOCK_FILE).exists()
    assert not (tmp_path / "o").exists()  # nothing was written: the folder it created is gone again
