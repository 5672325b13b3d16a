"""`gs://` inputs and outputs (`zhdata.fs` through gcsfs) against a Google Cloud Storage emulator (gcp-storage-emulator)
started here on 127.0.0.1: the same files as local runs, resume state on the store, `--engine ray` with the endpoint
handed on to the workers, one-line errors for an endpoint that does not answer and a bucket that does not exist.

The endpoint comes from the variable a user sets for an emulator, STORAGE_EMULATOR_HOST; with no credentials anywhere
gcsfs goes on anonymously, which the emulator accepts (tests/conftest.py keeps google-auth off the metadata server).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from zhdata.cli import main
from zhdata.lock import LOCK_FILE

pytest.importorskip("gcp_storage_emulator")
gcsfs = pytest.importorskip("gcsfs")

from test_pack_pt import tok_dir  # noqa: E402,F401  (a fixture: the Mixtral tokenizer folder)
from test_uris import (CLEAN, INSTRUCT, INSTRUCT_FIX, corpus, free_port, interrupted_pack_resumes,  # noqa: E402
                       local_files, remote_files, same_run, serving)


@pytest.fixture(scope="module")
def emulator():
    """The emulator in its own process on a free loopback port, in memory, with the bucket `bucket`; yields its URL."""
    port = free_port()
    with serving([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port),
                  "--in-memory", "--default-bucket", "bucket"], port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def gcs(emulator, monkeypatch):
    """The environment that points gcsfs at the emulator, for this process and the ones it starts; a gcsfs filesystem."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return gcsfs.GCSFileSystem(skip_instance_cache=True)


def put(fs, local, prefix: str) -> str:
    for f in sorted(local.rglob("*")):
        if f.is_file():
            fs.pipe(f"{prefix}/{f.relative_to(local).as_posix()}", f.read_bytes())
    return f"gs://{prefix}"


def test_clean_and_dedupe_read_and_write_gs_like_local_and_resume_there(gcs, tmp_path, capsys):
    src = corpus(tmp_path / "corpus")
    assert main(["clean", str(src), "-o", str(tmp_path / "clean"), *CLEAN]) == 0
    assert main(["dedupe", str(tmp_path / "clean"), "-o", str(tmp_path / "dedup"), "--workers", "2", "--no-progress"]) == 0
    uri = put(gcs, src, "bucket/corpus")
    assert main(["clean", uri, "-o", "gs://bucket/clean", *CLEAN]) == 0
    assert main(["dedupe", "gs://bucket/clean", "-o", "gs://bucket/dedup", "--workers", "2", "--no-progress"]) == 0
    for step in ("clean", "dedup"):
        want, got = local_files(tmp_path / step), remote_files(gcs, f"bucket/{step}")
        assert LOCK_FILE not in got and not any(k.endswith(".tmp") for k in got)  # released; every move finished
        shards = sorted(k for k in want if k.endswith(".parquet"))
        assert shards and shards == sorted(k for k in got if k.endswith(".parquet"))
        for k in shards:
            assert got[k] == want[k], k  # byte for byte
        same_run(got["manifest.json"], want["manifest.json"])
    m = json.loads(remote_files(gcs, "bucket/clean")["manifest.json"])
    assert [i["path"] for i in m["inputs"]] == ["gs://bucket/corpus/a.jsonl", "gs://bucket/corpus/b.jsonl"]
    dedup = json.loads(remote_files(gcs, "bucket/dedup")["manifest.json"])
    assert dedup["counts"]["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}  # the planted ones, found over gs://

    # a run stopped after its first shard: its state (.parts/ and the shard) is on the store, and the rerun does the rest
    done = remote_files(gcs, "bucket/clean")
    first, second = sorted(k for k in done if k.endswith(".parquet"))
    assert f".parts/{first[:-len('.parquet')]}.json" in done and ".parts/plan.json" in done
    gcs.rm_file(f"bucket/clean/{second}")
    gcs.rm_file("bucket/clean/manifest.json")
    capsys.readouterr()
    assert main(["clean", uri, "-o", "gs://bucket/clean", *CLEAN]) == 0
    assert "resuming: 1 of 2 shards already done" in capsys.readouterr().out
    again = remote_files(gcs, "bucket/clean")
    assert {k: v for k, v in again.items() if k.endswith(".parquet")} == {k: v for k, v in done.items() if k.endswith(".parquet")}
    same_run(again["manifest.json"], done["manifest.json"])


def test_instruct_and_pack_read_and_write_gs_like_local_and_an_interrupted_pack_resumes_there(
        gcs, tok_dir, tmp_path, monkeypatch, capsys):
    """instruct into gs://, then pack from there into gs://, stopped after three pieces and run again: the files a
    local run writes, byte for byte; the rerun packs only the pieces not finished on the store."""
    assert main(["instruct", str(INSTRUCT_FIX), "-o", str(tmp_path / "sft"), *INSTRUCT]) == 0
    src = put(gcs, INSTRUCT_FIX, "bucket/instruct-in")
    assert main(["instruct", src, "-o", "gs://bucket/sft", *INSTRUCT]) == 0
    want, got = local_files(tmp_path / "sft"), remote_files(gcs, "bucket/sft")
    parts = sorted(k for k in want if k.endswith(".parquet"))
    assert len(parts) == 10 and parts == sorted(k for k in got if k.endswith(".parquet"))  # 10 parts: 10 pieces
    assert all(got[k] == want[k] for k in parts)
    same_run(got["manifest.json"], want["manifest.json"])
    assert LOCK_FILE not in got and not any(k.startswith(".") for k in got)

    args = ["--tokenizer", str(tok_dir), "--mode", "sft", "--block-size", "64", "--val-fraction", "0.3", "-q"]
    interrupted_pack_resumes(gcs, "gs://bucket/sft", "gs://bucket/packed", args, tmp_path, monkeypatch, capsys)


def test_clean_on_ray_reaches_gs_through_the_endpoint_handed_to_its_workers(ray_cluster, gcs, tmp_path):
    """The cluster's workers were started without STORAGE_EMULATOR_HOST; a driver joining it hands its tasks the
    endpoint, and the workers read and write gs:// themselves, to the local engine's bytes."""
    import ray

    assert ray.get(ray.remote(lambda: os.environ.get("STORAGE_EMULATOR_HOST")).remote()) is None
    src = put(gcs, corpus(tmp_path / "corpus"), "bucket/ray-in")
    assert main(["clean", src, "-o", "gs://bucket/ray-local", *CLEAN]) == 0
    r = subprocess.run([sys.executable, "-m", "zhdata.cli", "clean", src, "-o", "gs://bucket/ray-clean", *CLEAN,
                        "--engine", "ray", "--ray-address", ray_cluster], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    want, got = remote_files(gcs, "bucket/ray-local"), remote_files(gcs, "bucket/ray-clean")
    assert sorted(want) == sorted(got) and any(k.endswith(".parquet") for k in got)
    assert all(got[k] == want[k] for k in want if k.endswith(".parquet"))
    a, b = json.loads(want["manifest.json"]), json.loads(got["manifest.json"])
    assert a["counts"] == b["counts"] and b["engine"]["engine"] == "ray"


def test_the_endpoint_and_project_are_handed_to_ray_workers_never_a_credentials_file(monkeypatch):
    pytest.importorskip("ray")
    from zhdata.engine.ray_engine import storage_env

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    for k in list(os.environ):
        if k.startswith(("AWS_", "FSSPEC_", "GOOGLE_", "GCSFS_", "STORAGE_EMULATOR")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://10.0.0.5:9023")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "corpus-project")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/home/me/key.json")
    assert storage_env() == {"STORAGE_EMULATOR_HOST": "http://10.0.0.5:9023", "GOOGLE_CLOUD_PROJECT": "corpus-project"}


# `zhdata` as a user runs it, less gcsfs's waits between its 6 tries of a refused connection (about 30 s in all)
FAST_RETRIES = ("import asyncio, sys, types, gcsfs.retry; "
                "gcsfs.retry.asyncio = types.SimpleNamespace(sleep=lambda s: asyncio.sleep(0)); "
                "from zhdata.cli import main; sys.exit(main())")


def test_an_unreachable_endpoint_or_a_missing_bucket_is_a_one_line_error(gcs, tmp_path):
    """An endpoint that does not answer and a bucket that does not exist: one line naming the location, exit 2. Run in
    a fresh process as the user runs it, where nothing configured logging: nothing else reaches stderr, neither
    gcsfs's warnings nor the traceback it logs before raising."""
    src = corpus(tmp_path / "corpus")
    emulator = os.environ["STORAGE_EMULATOR_HOST"]
    for endpoint, argv, want in (
        (f"http://127.0.0.1:{free_port()}", ["gs://bucket/x", "-o", str(tmp_path / "o")],  # nobody listens there
         "gs://bucket/x: cannot reach the object store: its endpoint does not answer (ClientConnectorError)"),
        (emulator, [str(src), "-o", "gs://no-such-bucket/out"], "gs://no-such-bucket/out: cannot write here"),
        (emulator, ["gs://no-such-bucket/in", "-o", str(tmp_path / "o")], "gs://no-such-bucket/in: no such file or folder"),
    ):
        r = subprocess.run([sys.executable, "-c", FAST_RETRIES, "clean", *argv, "--no-progress"], capture_output=True,
                           text=True, timeout=120, env={**os.environ, "STORAGE_EMULATOR_HOST": endpoint})
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert len(r.stderr.strip().splitlines()) == 1 and want in r.stderr, r.stderr
        assert not (tmp_path / "o").exists()


def test_a_file_replaced_on_gs_appears_whole_without_a_temporary_key_and_at_once(gcs):
    """`zhdata.fs.write_bytes` (shards, state files) writes a temporary key, then copies it into place and deletes it;
    gcsfs's own move would first try GCS's moveTo, which the emulator lacks, for about 30 s."""
    from zhdata import fs

    start = time.monotonic()
    fs.write_bytes("gs://bucket/replace/state.json", b"first")
    fs.write_bytes("gs://bucket/replace/state.json", b"second")
    assert time.monotonic() - start < 10
    assert remote_files(gcs, "bucket/replace") == {"state.json": b"second"}


def test_a_store_refusing_anonymous_access_is_named_in_one_line():
    """Without credentials gcsfs goes on anonymously; GCS then answers 401, which is the user's setup, not a bug."""
    from gcsfs.retry import HttpError

    from zhdata import fs

    try:
        try:
            raise HttpError({"code": 401, "message": "Anonymous caller does not have storage.objects.list access"})
        except HttpError as e:
            raise RuntimeError("a Ray task failed") from e
    except RuntimeError as e:
        err = fs.unreachable(e, "gs://bucket/corpus")
    assert err is not None and "gs://bucket/corpus: cannot reach the object store: no credentials accepted (HTTP 401)" in str(err)
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(err) and "AWS_" not in str(err)
    assert fs.unreachable(HttpError({"code": 404, "message": "No such object"}), "gs://bucket/corpus") is None
