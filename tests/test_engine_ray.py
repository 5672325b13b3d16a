"""`--engine ray` gives what `--engine local` gives: same shards byte for byte, same manifest counts; a worker killed
mid-stage is retried by Ray to the same output; a run killed part-way resumes from its finished shards."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_pack_pt import tok_dir  # noqa: F401  (a fixture: the Mixtral tokenizer folder)
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


def test_a_task_whose_worker_always_dies_ends_in_a_one_line_error_naming_its_piece(ray_cluster, tmp_path, monkeypatch,
                                                                                 capsys):
    from zhdata.engine.ray_engine import MAX_RETRIES

    src = _corpus(tmp_path)
    monkeypatch.setenv("ZHDATA_FAULT_KILL_ONCE", "3:always")  # the 4th piece's worker dies on every run of it
    t = time.monotonic()
    assert main(["clean", str(src), "-o", str(tmp_path / "ray"), "--engine", "ray", *CLEAN]) == 2
    assert time.monotonic() - t < 120  # a bounded number of runs, not Ray Data's retry forever
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"zhdata clean: error: {src / 'part0075.jsonl'}"), err  # files sort by name: the 4th piece
    assert f"failed {MAX_RETRIES + 1} times" in err and "WorkerCrashedError" in err
    assert not (tmp_path / "ray" / "manifest.json").exists()


def test_tasks_failing_together_leave_one_error_not_rays_unhandled_error_tracebacks(tmp_path):
    """Every worker failing the same way (an object store none of them reaches): the driver stops at the first error;
    the others, failed meanwhile and never fetched, are not printed by Ray as "Unhandled error" tracebacks after it.
    A driver of its own local Ray (2 CPUs), as `--engine ray` without an address starts one."""
    pytest.importorskip("ray")
    driver = ("import sys, time\n"
              "from zhdata.engine.ray_engine import RayEngine\n"
              "def fails(i):\n"
              "    time.sleep(0.3)\n"
              "    raise ConnectionError(f'piece {i}: the store does not answer')\n"
              "try:\n"
              "    list(RayEngine(None, 2).map(fails, range(6)))\n"
              "except Exception as e:\n"
              "    print('stopped by', type(e).__name__)\n")
    r = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0 and "stopped by RayTaskError" in r.stdout, r.stderr[-3000:]
    assert "Unhandled error" not in r.stderr and "piece" not in r.stderr, r.stderr[-3000:]


def _bins(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}


def _pack(inputs, tok, out, mode, *extra):
    return main(["pack", str(inputs), "--tokenizer", str(tok), "-o", str(out), "--mode", mode, "--block-size", "64",
                 "--val-fraction", "0.2", "-q", *extra])


def test_pack_pt_on_ray_equals_local_even_with_a_worker_killed(ray_cluster, cleaned, tok_dir, tmp_path, monkeypatch):
    _, shards = cleaned  # 13 Parquet shards: a piece each
    assert _pack(shards, tok_dir, tmp_path / "local", "pt") == 0
    monkeypatch.setenv("ZHDATA_FAULT_KILL_ONCE", f"2:{tmp_path / 'killed'}")
    assert _pack(shards, tok_dir, tmp_path / "ray", "pt", "--engine", "ray") == 0
    assert (tmp_path / "killed").exists()
    local = _bins(tmp_path / "local")
    assert set(local) == {f"{s}.{k}.bin" for s in ("train", "val") for k in ("tokens", "docs", "blocks")}
    assert len(local["train.tokens.bin"]) > 10_000 and len(local["val.tokens.bin"]) > 1_000
    assert local == _bins(tmp_path / "ray")
    assert _manifest(tmp_path / "local") == _manifest(tmp_path / "ray")
    assert not (tmp_path / "ray" / ".pack-work").exists()


FIX = Path(__file__).parent / "fixtures" / "instruct"


def test_instruct_and_pack_sft_on_ray_equal_local(ray_cluster, tok_dir, tmp_path):
    common = ["--on-error", "skip", "--batch-size", "2"]  # several batches per file: stage shards and output parts
    assert main(["instruct", str(FIX), "-o", str(tmp_path / "i-local"), *common]) == 0
    assert main(["instruct", str(FIX), "-o", str(tmp_path / "i-ray"), *common, "--engine", "ray"]) == 0
    local = _shards(tmp_path / "i-local")
    assert len(local) == 10 and local == _shards(tmp_path / "i-ray")
    m = _manifest(tmp_path / "i-local")  # 25 read from 5 files, refusals, near duplicates across files, ...
    assert m["counts"]["records_out"] == 17 and m["counts"]["dropped"] == {
        "ends_without_assistant": 1, "near_dup_prompt": 6, "refusal": 1}
    assert {k: v for k, v in m.items() if k != "instruct"} == {k: v for k, v in _manifest(tmp_path / "i-ray").items() if k != "instruct"}
    timings = ("timings",)  # the only part of the instruct report that differs between two runs
    strip = lambda d: {k: v for k, v in d["instruct"].items() if k not in timings}  # noqa: E731
    assert strip(m) == strip(_manifest(tmp_path / "i-ray"))

    assert _pack(tmp_path / "i-local", tok_dir, tmp_path / "p-local", "sft", "--block-size", "512") == 0
    assert _pack(tmp_path / "i-local", tok_dir, tmp_path / "p-ray", "sft", "--block-size", "512", "--engine", "ray") == 0
    local = _bins(tmp_path / "p-local")
    assert "train.labels.bin" in local and local == _bins(tmp_path / "p-ray")
    assert _manifest(tmp_path / "p-local") == _manifest(tmp_path / "p-ray")


def test_a_killed_ray_driver_resumes_from_its_finished_shards(ray_cluster, tmp_path):
    src = _corpus(tmp_path, n=1000)  # 40 files: 40 pieces
    assert main(["clean", str(src), "-o", str(tmp_path / "local"), "--workers", "2", *CLEAN]) == 0
    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "zhdata.cli", "clean", str(src), "-o", str(out), "--engine", "ray",
           "--ray-address", ray_cluster, *CLEAN]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not list((out / ".parts").glob("part-*.json")) and driver.poll() is None:
        time.sleep(0.01)
    driver.kill()  # SIGKILL: no cleanup, its lock left behind
    driver.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert not (out / "manifest.json").exists() and 0 < len(finished) < 40
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming:" in r.stdout + r.stderr and "stale lock" in r.stderr
    assert _shards(tmp_path / "local") == _shards(out)
    assert _manifest(tmp_path / "local") == _manifest(out)
    kept = {n for n, t in finished.items() if (out / n).stat().st_mtime_ns == t}
    assert kept, "the rerun rewrote every shard the killed run had finished"


def test_pack_on_local_worker_processes_equals_one_process(cleaned, tok_dir, tmp_path):
    _, shards = cleaned
    assert _pack(shards, tok_dir, tmp_path / "p1", "pt") == 0
    assert _pack(shards, tok_dir, tmp_path / "p2", "pt", "--workers", "2") == 0
    assert _bins(tmp_path / "p1") == _bins(tmp_path / "p2")
    assert _manifest(tmp_path / "p1") == _manifest(tmp_path / "p2")


def test_local_paths_on_a_cluster_of_several_nodes_are_named_in_a_warning(ray_cluster, capsys):
    from zhdata.engine import LocalEngine, warn_if_unshared
    from zhdata.engine.ray_engine import RayEngine

    ray_engine = RayEngine(ray_cluster)
    assert ray_engine.nodes() == 1  # the test cluster: one node, every local path is seen by every task
    warn_if_unshared(ray_engine, ["/data/in", "s3://b/out"])
    warn_if_unshared(LocalEngine(2), ["/data/in"])
    assert capsys.readouterr().err == ""

    class TwoNodes(RayEngine):  # what ray.nodes() reports on a real cluster of two machines
        def nodes(self) -> int:
            return 2

    warn_if_unshared(TwoNodes(ray_cluster), ["/data/in", "s3://b/in", "/data/b", "/data/c", "/data/d"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 nodes" in err and "/data/in, /data/b, /data/c and 1 more" in err
    assert "s3://b/in" not in err and "object store" in err
    warn_if_unshared(TwoNodes(ray_cluster), ["s3://b/in", "gs://b/out"])  # all on object stores: nothing to say
    assert capsys.readouterr().err == ""
