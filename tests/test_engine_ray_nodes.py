"""`--engine ray` on a Ray cluster of two nodes: two raylets on 127.0.0.1 with one CPU each, started here
(tests/ray_two_nodes.py). clean, dedupe and pack with `s3://` in and out (moto on 127.0.0.1) write the local engine's
files byte for byte, and Ray's state API shows their tasks ran on both nodes; a run with local paths names
them in the one-line multi-node warning.

The cluster is held by a child process and every driver is a `zhdata` subprocess joining it with `--ray-address`:
this process may already belong to the session's one-node cluster (conftest.py), and a process joins one cluster.
The cluster is started without the object store's endpoint or credentials: the drivers hand them to their tasks.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from test_dedupe import _texts  # noqa: E402
from test_pack_pt import tok_dir  # noqa: E402,F401  (a fixture: the Mixtral tokenizer folder)
from test_uris import remote_files, s3, upload  # noqa: E402,F401  (s3: a moto server on 127.0.0.1)
from zhdata.cli import main  # noqa: E402

CLEAN = ["--no-progress", "--min-chars", "20"]
PACK = ["--mode", "pt", "--block-size", "64", "--val-fraction", "0.2", "-q"]
FILES = 8


def corpus(folder: Path) -> Path:
    """FILES JSONL files of 10 distinct texts each; every second file also holds an exact copy and a near copy (three
    characters changed) of a text of the file before it: 4 exact and 4 near duplicates across files."""
    texts = _texts(5, FILES * 10, 300)
    folder.mkdir(parents=True)
    for k in range(FILES):
        docs = texts[10 * k:10 * k + 10]
        if k % 2:
            prev = texts[10 * k - 10]
            docs += [prev, prev[:100] + "某某某" + prev[103:]]
        lines = [json.dumps({"id": f"f{k}-{i}", "text": t}, ensure_ascii=False) for i, t in enumerate(docs)]
        (folder / f"part{k:02d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


class TwoNodes:
    def __init__(self, proc: subprocess.Popen, info: dict, auth: dict[str, str]):
        self.proc, self.address, self.nodes, self.auth = proc, info["address"], set(info["nodes"]), auth

    def tasks(self) -> dict[str, list]:
        """{job id: [[function, node id, state], ...]} of every job so far (Ray's state API, asked by the holder)."""
        self.proc.stdin.write("tasks\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def run(self, argv: list[str]) -> tuple[subprocess.CompletedProcess, list]:
        """`zhdata ARGV --engine ray --ray-address` this cluster in a subprocess; its result and its job's tasks."""
        before = set(self.tasks())
        env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **self.auth}
        r = subprocess.run([sys.executable, "-m", "zhdata.cli", *argv, "--engine", "ray", "--ray-address", self.address],
                           capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        deadline = time.monotonic() + 30  # task events reach the state API a little after the tasks finish
        while True:
            new = {j: t for j, t in self.tasks().items() if j not in before}
            assert len(new) <= 1, new
            tasks = next(iter(new.values()), [])
            if tasks and all(s == "FINISHED" for _, _, s in tasks) or time.monotonic() > deadline:
                assert tasks and all(s == "FINISHED" for _, _, s in tasks), tasks
                return r, tasks
            time.sleep(0.5)


@pytest.fixture(scope="module")
def store(s3):
    """test_uris's moto server, left as test_uris's own fixture expects to find it: moto keeps the buckets of every
    server in this process in one store (emptied), and fsspec keeps the S3 filesystems zhdata opened, with this
    server's endpoint (dropped)."""
    yield s3
    s3.rm("bucket", recursive=True)
    s3.invalidate_cache()
    assert not s3.ls("")
    type(s3).clear_instance_cache()


@pytest.fixture(scope="module")
def two_nodes(store):
    """The cluster, with token authentication (as the README starts one), started after the moto server but with none
    of its settings in the environment."""
    tmp = tempfile.mkdtemp(prefix="zr-", dir="/tmp")  # short: Ray's socket paths lie under it
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RAY_ADDRESS"}
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "ray_two_nodes.py")],
                            env={**env, **auth, "RAY_TMPDIR": tmp}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, "the two-node cluster did not start"
        cluster = TwoNodes(proc, json.loads(line), auth)
        assert len(cluster.nodes) == 2 and cluster.address.startswith("127.0.0.1:")
        yield cluster
    finally:
        proc.stdin.close()  # the holder shuts the cluster down
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _same_files(store, want: str, got: str, suffix: str) -> dict:
    a, b = remote_files(store, want), remote_files(store, got)
    assert sorted(a) == sorted(b) and any(k.endswith(suffix) for k in a)
    for k in a:
        if k.endswith(suffix):
            assert a[k] == b[k], k  # byte for byte
    ma, mb = json.loads(a["manifest.json"]), json.loads(b["manifest.json"])
    assert ma["counts"] == mb["counts"] and mb["engine"]["engine"] == "ray"
    return mb


def test_clean_dedupe_and_pack_on_two_nodes_equal_the_local_engine_and_use_both_nodes(store, two_nodes, tok_dir, tmp_path):
    src = upload(store, corpus(tmp_path / "corpus"), "bucket/nodes-in")
    pack = ["--tokenizer", str(tok_dir), *PACK]

    def steps(out):  # clean, dedupe and pack, each reading the last one's output
        return [["clean", src, "-o", f"s3://bucket/{out}-clean", *CLEAN],
                ["dedupe", f"s3://bucket/{out}-clean", "-o", f"s3://bucket/{out}-dedup", "--no-progress"],
                ["pack", f"s3://bucket/{out}-dedup", "-o", f"s3://bucket/{out}-pt", *pack]]

    for argv in steps("local"):
        assert main([*argv, "--workers", "1"]) == 0
    ran_on: dict[str, list] = {}
    for argv, (step, suffix) in zip(steps("ray"), (("clean", ".parquet"), ("dedup", ".parquet"), ("pt", ".bin"))):
        r, tasks = two_nodes.run(argv)
        m = _same_files(store, f"bucket/local-{step}", f"bucket/ray-{step}", suffix)
        ran_on[argv[0]] = [node for _, node, _ in tasks]
        if argv[0] == "clean":
            assert sorted(f for f, _, _ in tasks).count("_run") == FILES  # a piece per file, a task per piece
            assert m["counts"]["records_out"] == FILES * 10 + 8
        if argv[0] == "dedupe":
            assert {f for f, _, _ in tasks} >= {"key_rows", "candidate_links", "partial_components"}
            assert m["counts"]["dropped"] == {"exact_duplicate": 4, "near_duplicate": 4}
        # the object store is seen by every node; pack's tokenizer folder is a local path: named, and only it
        warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
        assert warnings == ([] if argv[0] != "pack" else [
            f"warning: the Ray cluster has 2 nodes and tasks on each read or write {tok_dir}: local paths must be on "
            "a filesystem every node mounts at the same path; else use an object store (s3://...)"]), r.stderr
    # Ray places the tasks: a short command may run on one node alone, its queue drained before the other node's
    # first worker for the job is up (seen in about 1 of 6 runs of clean); the three commands together use both
    assert {n for nodes in ran_on.values() for n in nodes} == two_nodes.nodes, ran_on


def test_local_paths_on_two_nodes_are_named_in_one_warning(two_nodes, tmp_path):
    src = corpus(tmp_path / "corpus")
    assert main(["clean", str(src), "-o", str(tmp_path / "local"), "--workers", "1", *CLEAN]) == 0
    r, tasks = two_nodes.run(["clean", str(src), "-o", str(tmp_path / "ray"), *CLEAN])
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert warnings == [f"warning: the Ray cluster has 2 nodes and tasks on each read or write {src}, {tmp_path / 'ray'}: "
                        "local paths must be on a filesystem every node mounts at the same path; else use an object "
                        "store (s3://...)"], r.stderr
    # one machine: both nodes see these paths, so the run works and writes what the local engine writes
    shards = sorted(p.name for p in (tmp_path / "local").glob("*.parquet"))
    assert len(shards) == FILES and all(
        (tmp_path / "local" / n).read_bytes() == (tmp_path / "ray" / n).read_bytes() for n in shards)


def test_a_driver_without_the_clusters_token_is_told_what_it_lacks(two_nodes, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env.update(HOME=str(tmp_path), RAY_gcs_server_port_wait_time_s="1")  # no token on disk; one try, not Ray's 20
    r = subprocess.run([sys.executable, "-m", "zhdata.cli", "clean", "--sample", "-o", str(tmp_path / "out"), "--engine", "ray",
                        "--ray-address", two_nodes.address, "--no-progress"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.splitlines()[-1] == (
        f"zhdata clean: error: --ray-address: cannot reach a Ray cluster at {two_nodes.address}: Failed to connect to Ray "
        f"cluster at {two_nodes.address} (start one with `ray start --head`, or leave --ray-address out for a local Ray; "
        "a cluster with token authentication also needs RAY_AUTH_MODE=token here, and its token (~/.ray/auth_token or "
        "RAY_AUTH_TOKEN))"), r.stderr
