"""Inputs and outputs as URIs (`zhdata.fs`): `s3://` against a moto S3 server on 127.0.0.1 started here, `file://`.

Credentials and the endpoint come from the environment variables a user would set (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL); nothing leaves the loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest

from zhdata.cli import main
from zhdata.lock import LOCK_FILE

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

DOCS = [
    "北京是中华人民共和国的首都，也是全国的政治、文化、国际交往和科技创新中心。",
    "長江是亞洲第一長河，全長約六千三百公里，流經青海、西藏、四川等省區。",
    "明天下午三点在图书馆二楼开会，请大家准时参加，带上上周的会议记录。",
    "黄河是中国第二长河，发源于青海省巴颜喀拉山脉，注入渤海，全长五千多公里。",
]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 and the environment that points every client at it; yields an s3fs filesystem."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("bucket")
    try:
        yield fs
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def corpus(folder: Path) -> Path:
    """Two JSONL files with exact and near duplicates between them, and a line that is too short."""
    folder.mkdir(parents=True)
    d = DOCS
    a = [{"id": "a0", "text": d[0] + d[1]}, {"id": "a1", "text": d[2] + d[3]}, {"id": "a2", "text": d[1] + d[3]},
         {"id": "short", "text": "太短"}]
    b = [{"id": "b0", "text": d[0] + d[1]}, {"id": "b1", "text": d[2] + d[3][:-2] + "。"}, {"id": "b2", "text": d[2] + d[0]}]
    for name, recs in (("a.jsonl", a), ("b.jsonl", b)):
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return folder


def upload(fs, local: Path, prefix: str) -> str:
    for f in sorted(local.rglob("*")):
        if f.is_file():
            fs.pipe(f"{prefix}/{f.relative_to(local).as_posix()}", f.read_bytes())
    return f"s3://{prefix}"


def remote_files(fs, prefix: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {p[len(prefix) + 1:]: fs.cat(p) for p in fs.find(prefix)}


def local_files(folder: Path) -> dict[str, bytes]:
    return {f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def same_run(manifest_a: bytes, manifest_b: bytes) -> None:
    a, b = json.loads(manifest_a), json.loads(manifest_b)
    assert a["counts"] == b["counts"] and a["sources"] == b["sources"]
    assert [i["sha256"] for i in a["inputs"]] == [i["sha256"] for i in b["inputs"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(argv: list[str], port: int, env: dict[str, str] | None = None):
    """A server process (`argv`, listening on 127.0.0.1:`port`) started and waited for; stopped on exit."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(400):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"{argv[0]} exited with {proc.returncode}")
                time.sleep(0.05)
        else:
            pytest.fail(f"{argv[0]} did not start listening within 20 s")
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def interrupted_pack_resumes(store, src: str, out: str, args: list[str], tmp_path: Path, monkeypatch, capsys,
                             between=None) -> None:
    """`zhdata pack src -o out` (a store's URIs) stopped after three pieces, then run again: only the other seven
    are packed, and the store holds the files a local pack of `tmp_path/sft` writes. `between()` runs in between."""
    import zhdata.pack.packer as packer

    assert main(["pack", str(tmp_path / "sft"), "-o", str(tmp_path / "packed"), *args]) == 0
    encode, calls = packer.encode_piece, []

    def dies_at_the_fourth(task):
        calls.append(task)
        if len(calls) == 4:
            raise RuntimeError("driver killed")
        return encode(task)

    monkeypatch.setattr(packer, "encode_piece", dies_at_the_fourth)
    with pytest.raises(RuntimeError, match="driver killed"):
        main(["pack", src, "-o", out, *args])
    prefix = out.split("://", 1)[1]
    left = remote_files(store, prefix)
    assert sorted(k for k in left if not k.startswith(".pack-work/piece-0")) == [".pack-work/plan.json"]
    assert sorted(k for k in left if k.endswith(".json") and "piece" in k) == [
        f".pack-work/piece-{i:06d}.json" for i in range(3)]  # three pieces finished on the store, nothing else
    capsys.readouterr()
    if between is not None:
        between()
    calls.clear()
    monkeypatch.setattr(packer, "encode_piece", lambda task: calls.append(task) or encode(task))
    assert main(["pack", src, "-o", out, *args]) == 0
    assert len(calls) == 7  # the three finished pieces were not packed again
    assert "resuming: 3 of 10 pieces already packed" in capsys.readouterr().out
    want, got = local_files(tmp_path / "packed"), remote_files(store, prefix)
    assert sorted(want) == sorted(got)  # the bins and the manifest: no lock, no work folder left
    assert all(got[k] == want[k] for k in want if k.endswith(".bin"))
    assert len(want["train.tokens.bin"]) > 100 and len(want["val.tokens.bin"]) > 0
    a, b = json.loads(want["manifest.json"]), json.loads(got["manifest.json"])
    assert a["counts"] == b["counts"] and a["pack"] == b["pack"]


CLEAN = ["--workers", "2", "--no-progress", "--min-chars", "20", "--piece-mb", "1"]


def test_clean_and_dedupe_read_and_write_s3_like_local(s3, tmp_path, capsys):
    src = corpus(tmp_path / "corpus")
    assert main(["clean", str(src), "-o", str(tmp_path / "clean"), *CLEAN]) == 0
    assert main(["dedupe", str(tmp_path / "clean"), "-o", str(tmp_path / "dedup"), "--workers", "2", "--no-progress"]) == 0
    uri = upload(s3, src, "bucket/corpus")
    assert main(["clean", uri, "-o", "s3://bucket/clean", *CLEAN]) == 0
    assert main(["dedupe", "s3://bucket/clean", "-o", "s3://bucket/dedup", "--workers", "2", "--no-progress"]) == 0
    for step in ("clean", "dedup"):
        want, got = local_files(tmp_path / step), remote_files(s3, f"bucket/{step}")
        assert LOCK_FILE not in got  # released
        shards = sorted(k for k in want if k.endswith(".parquet"))
        assert shards and shards == sorted(k for k in got if k.endswith(".parquet"))
        for k in shards:
            assert got[k] == want[k], k  # byte for byte
        same_run(got["manifest.json"], want["manifest.json"])
    m = json.loads(remote_files(s3, "bucket/clean")["manifest.json"])
    assert [i["path"] for i in m["inputs"]] == ["s3://bucket/corpus/a.jsonl", "s3://bucket/corpus/b.jsonl"]
    dedup = json.loads(remote_files(s3, "bucket/dedup")["manifest.json"])
    assert dedup["counts"]["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}  # the planted ones, found over S3
    # a rerun resumes from the finished shards on S3: nothing is recomputed, the output is unchanged
    before = remote_files(s3, "bucket/clean")
    capsys.readouterr()
    assert main(["clean", uri, "-o", "s3://bucket/clean", *CLEAN]) == 0
    after = remote_files(s3, "bucket/clean")
    assert {k: v for k, v in after.items() if k.endswith(".parquet")} == {k: v for k, v in before.items() if k.endswith(".parquet")}


def test_s3_output_being_written_by_a_live_run_is_refused(s3, tmp_path, capsys):
    src = corpus(tmp_path / "corpus")
    holder = {"pid": 1, "host": "another-host", "started": "2026-01-01T00:00:00Z"}
    s3.pipe(f"bucket/busy/{LOCK_FILE}", json.dumps(holder).encode())
    assert main(["clean", str(src), "-o", "s3://bucket/busy", *CLEAN]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "s3://bucket/busy" in err and "pid 1 on another-host" in err
    assert remote_files(s3, "bucket/busy") == {LOCK_FILE: json.dumps(holder).encode()}  # nothing written
    # a lock of a dead process on this host is stale: taken over with a notice
    dead = {"pid": 2 ** 22 + 12345, "host": socket.gethostname(), "started": "2026-01-01T00:00:00Z"}
    s3.pipe(f"bucket/stale/{LOCK_FILE}", json.dumps(dead).encode())
    assert main(["clean", str(src), "-o", "s3://bucket/stale", *CLEAN]) == 0
    assert "taking over the stale lock of s3://bucket/stale" in capsys.readouterr().err
    assert LOCK_FILE not in remote_files(s3, "bucket/stale")


def test_file_uris_are_local_paths(tmp_path):
    src = corpus(tmp_path / "corpus")
    assert main(["clean", str(src), "-o", str(tmp_path / "a"), *CLEAN]) == 0
    assert main(["clean", f"file://{src}", "-o", f"file://{tmp_path / 'b'}", *CLEAN]) == 0
    a, b = local_files(tmp_path / "a"), local_files(tmp_path / "b")
    assert [k for k in a if k.endswith(".parquet")] == [k for k in b if k.endswith(".parquet")]
    for k in a:
        if k.endswith(".parquet"):
            assert pl.read_parquet(tmp_path / "a" / k).equals(pl.read_parquet(tmp_path / "b" / k))
    same_run(a["manifest.json"], b["manifest.json"])


@pytest.mark.parametrize("argv", [
    ["quality", "train", "--positive", "IN", "--negative", "IN", "-o", "s3://bucket/quality"],
])
def test_commands_writing_local_folders_refuse_an_object_store_output(argv, tmp_path, capsys, monkeypatch):
    """A command that writes a local folder only: an s3:// output is refused in one line, before anything is written
    (pack did take the remote lock and then create a local folder named `s3:`, before it wrote through zhdata.fs)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": DOCS[0]}, ensure_ascii=False) + "\n", encoding="utf-8")
    argv = [str(tmp_path / "in.jsonl") if a == "IN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "writes to a local folder only" in err and argv[-1] in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "s3:").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


from test_pack_pt import tok_dir  # noqa: E402,F401  (a fixture: the Mixtral tokenizer folder)

INSTRUCT_FIX = Path(__file__).parent / "fixtures" / "instruct"
INSTRUCT = ["--on-error", "skip", "--batch-size", "2"]  # several batches per file: stage shards and output parts


def test_instruct_and_pack_read_and_write_s3_like_local(s3, tok_dir, tmp_path):
    """instruct, then pack sft and pt, with s3:// inputs and outputs: the same files, byte for byte, as local runs."""
    assert main(["instruct", str(INSTRUCT_FIX), "-o", str(tmp_path / "sft"), *INSTRUCT]) == 0
    src = upload(s3, INSTRUCT_FIX, "bucket/instruct-in")
    assert main(["instruct", src, "-o", "s3://bucket/sft", *INSTRUCT]) == 0
    want, got = local_files(tmp_path / "sft"), remote_files(s3, "bucket/sft")
    parts = sorted(k for k in want if k.endswith(".parquet"))
    assert len(parts) == 10 and parts == sorted(k for k in got if k.endswith(".parquet"))
    assert all(got[k] == want[k] for k in parts)
    same_run(got["manifest.json"], want["manifest.json"])
    assert LOCK_FILE not in got and not any(k.startswith(".") for k in got)

    texts = corpus(tmp_path / "corpus")
    assert main(["clean", str(texts), "-o", str(tmp_path / "clean"), *CLEAN]) == 0
    clean = upload(s3, tmp_path / "clean", "bucket/clean-in")
    for mode, local_in, remote_in in (("sft", tmp_path / "sft", "s3://bucket/sft"), ("pt", tmp_path / "clean", clean)):
        args = ["--tokenizer", str(tok_dir), "--mode", mode, "--block-size", "64", "--val-fraction", "0.3", "-q"]
        assert main(["pack", str(local_in), "-o", str(tmp_path / f"p-{mode}"), *args]) == 0
        assert main(["pack", remote_in, "-o", f"s3://bucket/p-{mode}", *args]) == 0
        want, got = local_files(tmp_path / f"p-{mode}"), remote_files(s3, f"bucket/p-{mode}")
        assert sorted(want) == sorted(got)  # the bins and the manifest: no lock, no work folder left
        assert all(got[k] == want[k] for k in want if k.endswith(".bin")), mode
        assert len(want["train.tokens.bin"]) > 100 and len(want["val.tokens.bin"]) > 0
        a, b = json.loads(want["manifest.json"]), json.loads(got["manifest.json"])
        assert a["counts"] == b["counts"] and a["pack"] == b["pack"]


def test_an_interrupted_pack_to_s3_resumes_from_the_pieces_on_the_store(s3, tok_dir, tmp_path, monkeypatch, capsys):
    assert main(["instruct", str(INSTRUCT_FIX), "-o", str(tmp_path / "sft"), *INSTRUCT]) == 0  # 10 parts: 10 pieces
    src = upload(s3, tmp_path / "sft", "bucket/resume-in")
    args = ["--tokenizer", str(tok_dir), "--mode", "sft", "--block-size", "64", "--val-fraction", "0.3", "-q"]

    def other_settings_are_refused():
        other = [*args[:5], "128", *args[6:]]  # --block-size 128: another run, refused
        assert main(["pack", src, "-o", "s3://bucket/packed", *other]) == 2
        assert "holds an unfinished pack of other inputs or settings: options differ: block_size 64" in capsys.readouterr().err

    interrupted_pack_resumes(s3, src, "s3://bucket/packed", args, tmp_path, monkeypatch, capsys, other_settings_are_refused)


def test_training_data_on_an_object_store_is_refused_with_how_to_copy_it_down():
    from train.data import open_packed
    from zhdata.errors import InputError

    with pytest.raises(InputError, match=r"s3://bucket/packed/pt: training memory-maps a local folder.*aws s3 cp --recursive"):
        open_packed("s3://bucket/packed/pt")


def test_clean_dedupe_and_pack_on_ray_read_and_write_s3_like_the_local_engine(s3, ray_cluster, tok_dir, tmp_path):
    """A driver joins the cluster (started before the S3 endpoint existed, so its workers have none of it in their
    environment) and hands its tasks the credentials and endpoint: the workers read and write S3 themselves."""
    src = upload(s3, corpus(tmp_path / "corpus"), "bucket/ray-in")
    assert main(["clean", src, "-o", "s3://bucket/ray-local", *CLEAN]) == 0
    assert main(["dedupe", "s3://bucket/ray-local", "-o", "s3://bucket/ray-local-dedup", "--workers", "2", "--no-progress"]) == 0
    pack = ["--tokenizer", str(tok_dir), "--mode", "pt", "--block-size", "64", "--val-fraction", "0.3", "-q"]
    assert main(["pack", "s3://bucket/ray-local", "-o", "s3://bucket/ray-local-pt", *pack]) == 0
    driver = [sys.executable, "-m", "zhdata.cli"]
    ray = ["--engine", "ray", "--ray-address", ray_cluster]
    for argv in (["clean", src, "-o", "s3://bucket/ray-clean", *CLEAN, *ray],
                 ["dedupe", "s3://bucket/ray-clean", "-o", "s3://bucket/ray-dedup", "--no-progress", *ray],
                 ["pack", "s3://bucket/ray-clean", "-o", "s3://bucket/ray-pt", *pack, *ray]):
        r = subprocess.run([*driver, *argv], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    for local, on_ray, suffix in (("ray-local", "ray-clean", ".parquet"), ("ray-local-dedup", "ray-dedup", ".parquet"),
                                  ("ray-local-pt", "ray-pt", ".bin")):
        want, got = remote_files(s3, f"bucket/{local}"), remote_files(s3, f"bucket/{on_ray}")
        assert sorted(want) == sorted(got) and any(k.endswith(suffix) for k in got)
        assert all(got[k] == want[k] for k in want if k.endswith(suffix)), on_ray
        a, b = json.loads(want["manifest.json"]), json.loads(got["manifest.json"])
        assert a["counts"] == b["counts"] and b["engine"]["engine"] == "ray"
    dedup = json.loads(remote_files(s3, "bucket/ray-dedup")["manifest.json"])
    assert dedup["counts"]["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}  # the planted ones, on Ray over S3


def test_an_unreachable_store_or_a_missing_bucket_is_a_one_line_error(s3, tmp_path):
    """No credentials, an endpoint that does not answer, a bucket that does not exist: one line naming the location,
    exit 2, never a traceback. Run as the user runs it (a fresh process: s3fs caches clients and their credentials);
    botocore is kept off the network (no instance metadata, no credential files): only the loopback is asked."""
    src = corpus(tmp_path / "corpus")
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base.update(AWS_EC2_METADATA_DISABLED="true", AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
                AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_DEFAULT_REGION="us-east-1")
    moto = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")}
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port nobody listens on
    port = closed.getsockname()[1]
    closed.close()
    for env, argv, want in (
        ({"AWS_ENDPOINT_URL": moto["AWS_ENDPOINT_URL"]}, ["s3://bucket/x", "-o", str(tmp_path / "o")],
         "s3://bucket/x: cannot reach the object store: no credentials found"),
        ({**moto, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1"}, ["s3://bucket/x", "-o", str(tmp_path / "o")],
         "s3://bucket/x: cannot reach the object store: its endpoint does not answer"),
        (moto, [str(src), "-o", "s3://no-such-bucket/out"], "s3://no-such-bucket/out: cannot write here"),
    ):
        r = subprocess.run([sys.executable, "-m", "zhdata.cli", "clean", *argv, "--no-progress"], env={**base, **env},
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1 and want in r.stderr, r.stderr


def test_a_store_that_refuses_the_credentials_is_a_one_line_error(tmp_path):
    """A store that checks keys (moto with authentication on) answers 403 to unknown ones: s3fs raises
    PermissionError, and the user gets one line naming the location, exit 2. A local PermissionError is not the
    store's: it is not turned into that message."""
    from zhdata import fs

    port = free_port()
    with serving([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port,
                 env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_EC2_METADATA_DISABLED="true", AWS_ACCESS_KEY_ID="unknown", AWS_SECRET_ACCESS_KEY="unknown",
                   AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
        r = subprocess.run([sys.executable, "-m", "zhdata.cli", "clean", "s3://bucket/in", "-o", str(tmp_path / "o"),
                            "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "s3://bucket/in: the object store refused access" in r.stderr, r.stderr
        # raised in a worker process or a Ray task: its frames stay there, its traceback comes back as text
        import pickle
        from multiprocessing.pool import ExceptionWithTraceback

        from ray.exceptions import RayTaskError

        store = s3fs.S3FileSystem(key="unknown", secret="unknown", skip_instance_cache=True,
                                  client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"], "region_name": "us-east-1"})
        with pytest.raises(PermissionError) as refused:
            store.cat("bucket/in")
        from_pool = pickle.loads(pickle.dumps(ExceptionWithTraceback(refused.value, refused.value.__traceback__)))
        from_ray = RayTaskError("_run", "".join(traceback.format_exception(refused.value)), refused.value).as_instanceof_cause()
        for e in (from_pool, from_ray):
            assert e.__traceback__ is None or not any("s3fs" in f.f_code.co_filename for f, _ in traceback.walk_tb(e.__traceback__))
            err = fs.unreachable(e, "s3://bucket/in")
            assert err is not None and "refused access" in str(err), type(e)
    try:
        raise PermissionError(13, "Permission denied", str(tmp_path / "o"))
    except PermissionError as e:
        assert fs.unreachable(e, "s3://bucket/in") is None
