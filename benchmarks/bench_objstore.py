"""Benchmark `zhdata pack` and `zhdata instruct` with inputs and output on an S3-compatible store against the same
commands on local folders: CPU seconds and peak memory of the zhdata process, CPU of the store server, peak local
scratch disk (TMPDIR) of the run, and that the outputs are the same bytes.

    .venv/bin/python benchmarks/bench_objstore.py --corpus ../shared/corpus/zh --instruct ../shared/instruct \
        --work /tmp/bench_objstore

The store is moto's server (`moto_server`, objects in memory) on 127.0.0.1, started afresh for each command: a
stand-in for S3 or MinIO with no network cost, so the figures are zhdata's own overhead (uploads, downloads,
listing, the piece files), not a real store's latency or bandwidth. Every command is a fresh process measured by
wait4 (its CPU and peak RSS), started through `launch.py` so that its peak is its own, not this script's (Linux
carries ru_maxrss over fork and exec); the store's CPU and peak are measured the same way when it is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from launch import figures, launched  # noqa: E402
from tokenizer.convert import convert_sentencepiece  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def du(folder: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(folder):
        for n in names:
            try:
                total += os.stat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total


def run(argv: list[str], env: dict, tmpdir: Path) -> dict:
    """Run a zhdata command as its own process; its wall, CPU (user+sys), peak RSS and the peak size of TMPDIR."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], du(tmpdir))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    fig = tmpdir.parent / f"{tmpdir.name}.wait4.json"
    p = subprocess.Popen(launched([sys.executable, "-m", "zhdata.cli", *argv], fig), env={**env, "TMPDIR": str(tmpdir)},
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = p.stderr.read()
    p.wait()
    wall = time.perf_counter() - t
    done.set()
    sampler.join()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{stderr.decode()[-3000:]}")
    ru = figures(fig)
    return {"wall_s": round(wall, 1), "cpu_s": round(ru["cpu_s"], 1), "peak_rss_mib": ru["peak_rss_kib"] // 1024,
            "peak_tmpdir_mib": round(peak[0] / 2**20, 1)}


class Store:
    """moto's S3 server as its own process, with the environment that points clients at it."""

    def __enter__(self) -> "Store":
        port = free_port()
        self.figures = Path(tempfile.mkdtemp()) / "store.wait4.json"
        self.proc = subprocess.Popen(launched([Path(sys.executable).parent / "moto_server", "-H", "127.0.0.1", "-p", port],
                                              self.figures), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        import s3fs

        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("AWS_")})
        self.fs = s3fs.S3FileSystem(skip_instance_cache=True)
        self.fs.mkdir("bench")
        return self

    def put(self, local: Path, prefix: str) -> str:
        files = [local] if local.is_file() else sorted(f for f in local.rglob("*") if f.is_file())
        for f in files:
            self.fs.put_file(str(f), f"bench/{prefix}/{f.name if local.is_file() else f.relative_to(local).as_posix()}")
        return f"s3://bench/{prefix}"

    def files(self, prefix: str) -> dict[str, bytes]:
        self.fs.invalidate_cache()
        return {p.rsplit("/", 1)[-1]: self.fs.cat(p) for p in self.fs.find(f"bench/{prefix}")}

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()  # the launcher passes it on to the server
        self.proc.wait()
        ru = figures(self.figures)
        shutil.rmtree(self.figures.parent)
        self.cpu_s = round(ru["cpu_s"], 1)
        self.peak_rss_mib = ru["peak_rss_kib"] // 1024


def compare(case: str, local_cmd: list[str], remote_cmd: list[str], local_out: Path, remote_in: tuple[Path, str],
            work: Path, suffix: str) -> dict:
    res = {"case": case, "local": run(local_cmd, dict(os.environ), work / "tmp-local")}
    with Store() as store:
        uri = store.put(*remote_in)
        res["s3"] = run([uri if a == "REMOTE_IN" else a for a in remote_cmd], store.env, work / "tmp-s3")
        got = store.files(case)
    res["store"] = {"cpu_s": store.cpu_s, "peak_rss_mib": store.peak_rss_mib}
    want = {f.name: f.read_bytes() for f in local_out.iterdir() if f.name.endswith(suffix)}
    res["same_bytes"] = bool(want) and all(got.get(k) == v for k, v in want.items())
    res["output_mib"] = round(sum(len(v) for v in want.values()) / 2**20, 1)
    m_local = json.loads((local_out / "manifest.json").read_text())
    m_s3 = json.loads(got["manifest.json"])
    res["same_counts"] = m_local["counts"] == m_s3["counts"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True, help="JSONL text for pack --mode pt")
    ap.add_argument("--instruct", type=Path, required=True, help="instruction data for zhdata instruct")
    ap.add_argument("--spm", type=Path, default=ROOT / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model")
    ap.add_argument("--work", type=Path, required=True)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tok = convert_sentencepiece(args.spm, args.work / "tok")
    pack = ["--tokenizer", str(tok), "--mode", "pt", "--overwrite", "-q"]
    results = [
        compare("instruct", ["instruct", str(args.instruct), "-o", str(args.work / "sft"), "--on-error", "skip"],
                ["instruct", "REMOTE_IN", "-o", "s3://bench/instruct", "--on-error", "skip"],
                args.work / "sft", (args.instruct, "instruct-in"), args.work, ".parquet"),
        compare("pack-pt", ["pack", str(args.corpus), "-o", str(args.work / "pt"), *pack],
                ["pack", "REMOTE_IN", "-o", "s3://bench/pack-pt", *pack],
                args.work / "pt", (args.corpus, "corpus"), args.work, ".bin"),
    ]
    for r in results:
        print(json.dumps(r))
    with open("/proc/loadavg") as f:
        print(json.dumps({"loadavg": f.read().split()[:3]}))


if __name__ == "__main__":
    main()
