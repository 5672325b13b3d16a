"""`--engine ray` gives what `--engine local` gives: same shards byte for byte, same manifest counts; a worker killed
mid-stage is retried by Ray to the same output; a run killed part-way resumes from its finished shards."""

import json
import os
import subprocess
import sys

import pytest

from zhdata.cli import main

GOOD = "这是一段正常的中文文本，内容比较充实，没有什么问题。\n第二行也是正常的句子，长度合适。"


def _corpus(tmp_path, n=300):
    lines = []
    for i in range(n):
        text = f"第{i}篇。" + GOOD if i % 7 else "短"  # every 7th too short: dropped and counted
        lines.append(json.dumps({"id": f"doc{i}", "text": text if i % 11 else text.replace("这", "這")}, ensure_ascii=False))
    lines.insert(50, "{not json")  # a bad record, skipped and counted
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(0, len(lines), 25):  # a file per 25 lines: a shard each
        (folder / f"part{k:04d}.jsonl").write_text("\n".join(lines[k:k + 25]) + "\n", encoding="utf-8")
    return folder


def _shards(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}


def _manifest(out):
    """The manifest less what differs between any two runs (time) and engines (which engine)."""
    m = json.loads((out / "manifest.json").read_text())
    return {k: v for k, v in m.items() if k not in ("started", "elapsed_s", "engine")}


CLEAN = ["--on-error", "skip", "--no-progress"]


def test_local_engine_never_imports_ray(tmp_path):
    code = ("import sys; from zhdata.cli import main; "
            f"assert main(['clean', {str(_corpus(tmp_path))!r}, '-o', {str(tmp_path / 'o')!r}, '--workers', '2', '--engine', 'local', *{CLEAN!r}]) == 0; "
            "assert 'ray' not in sys.modules, 'the local engine imported ray'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "o" / "manifest.json").exists()


def test_ray_address_without_ray_engine_is_a_one_line_error(tmp_path, capsys):
    assert main(["clean", "--sample", "-o", str(tmp_path / "o"), "--ray-address", "auto", "--no-progress"]) == 2
    assert "--ray-address needs --engine ray" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    """The test corpus and its clean by the local engine: what every Ray run must reproduce."""
    tmp = tmp_path_factory.mktemp("clean")
    src = _corpus(tmp)
    assert main(["clean", str(src), "-o", str(tmp / "local"), "--workers", "2", *CLEAN]) == 0
    return src, tmp / "local"


def test_clean_on_ray_equals_local_byte_for_byte(ray_cluster, cleaned, tmp_path):
    src, local = cleaned
    assert ray_cluster.startswith("127.0.0.1:")
    assert main(["clean", str(src), "-o", str(tmp_path / "ray"), "--engine", "ray", *CLEAN]) == 0
    shards = _shards(local)
    assert len(shards) == 13 and shards == _shards(tmp_path / "ray")
    assert _manifest(local) == _manifest(tmp_path / "ray")
    c = _manifest(tmp_path / "ray")["counts"]
    assert c["dropped"] == {"malformed_json": 1, "too_short": 43} and c["records_out"] == 300 - 43
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["engine"]["engine"] == "ray"


def test_a_worker_killed_mid_clean_is_retried_by_ray_to_the_same_output(ray_cluster, cleaned, tmp_path, monkeypatch):
    src, local = cleaned
    marker = tmp_path / "killed"
    monkeypatch.setenv("ZHDATA_FAULT_KILL_ONCE", f"5:{marker}")  # the worker running the 6th piece dies (SIGKILL)
    assert main(["clean", str(src), "-o", str(tmp_path / "ray"), "--engine", "ray", *CLEAN]) == 0
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # that worker is really gone; its task ran again elsewhere
    assert _shards(local) == _shards(tmp_path / "ray")
    assert _manifest(local) == _manifest(tmp_path / "ray")
