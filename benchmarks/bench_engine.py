"""`--engine ray` against `--engine local` (issue 12): wall time and peak memory per process of the same command,
same input, same machine, one after the other, and a check that both wrote the same bytes.

    python benchmarks/bench_engine.py --size 100 --workers 2 --work /tmp/bench-engine
    python benchmarks/bench_engine.py --size 100 --workers 2 --pack-tokenizer /tmp/tok/mixtral   # also zhdata pack --mode pt

The input is `bench_zhdata.py scaling`'s resampled corpus (new documents of real paragraphs). Three runs per
command: local (`--workers N` processes); ray joining a cluster this script started first (`ray.init(num_cpus=N)`,
as a user with a running cluster would: `--ray-address`); ray started by the command itself (`--engine ray`
alone: Ray's start-up included). CPU time (user + system during the run, summed over the run's processes, the
cluster's own included) tells what the engine costs on a busy machine. Memory is sampled every 0.1 s over every process of the run (the command, its
workers; for Ray also the Ray processes this script started): the largest single process, the largest worker,
and the largest sum over all processes at one moment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_zhdata import make_corpus  # noqa: E402

ZHDATA = str(Path(sys.executable).parent / "zhdata")


class Sampler:
    """Peak RSS per process and of the sum, over the process trees of `roots`, sampled in a thread."""

    def __init__(self, roots: list[int], every: float = 0.1):
        self.roots, self.every = roots, every
        self.peak: dict[int, tuple[int, str]] = {}
        self.peak_sum = 0
        self.cpu: dict[int, list] = {}  # user + sys seconds per process: [first seen, last seen, name]
        self.new: set[int] = set()  # processes started after the first sample
        self._first = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _procs(self) -> list[psutil.Process]:
        out = []
        for r in self.roots:
            try:
                root = psutil.Process(r)
                out += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in self._procs():
                try:
                    rss, name = p.memory_info().rss, " ".join(p.cmdline())[:200]
                    t = p.cpu_times()
                    if p.pid not in self.cpu:
                        self.cpu[p.pid] = [t.user + t.system, 0.0, name]
                        if not self._first:
                            self.new.add(p.pid)
                    self.cpu[p.pid][1] = t.user + t.system
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                if rss > self.peak.get(p.pid, (0, ""))[0]:
                    self.peak[p.pid] = (rss, name)
            self.peak_sum = max(self.peak_sum, total)
            self._first = False
            self._stop.wait(self.every)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run(cmd: list[str], extra_roots: list[int], baseline: set[int]) -> dict:
    """Run `cmd`; wall time and memory of its processes and of the new processes under `extra_roots`."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    s = Sampler([p.pid, *extra_roots])
    with s:
        out, err = p.communicate()
    wall = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(err[-3000:])
    # a cluster's idle processes are not the run's, but its idle workers are: they run the run's tasks
    peaks = {pid: v for pid, v in s.peak.items() if pid not in baseline or pid == p.pid or _is_worker(v[1])}
    me = os.getpid()  # this script's own thread sampling is not the run's
    used = {pid: last - (0 if pid in s.new or pid == p.pid else first)
            for pid, (first, last, _) in s.cpu.items() if pid != me}
    top = sorted(((round(c, 1), s.cpu[pid][2][:60]) for pid, c in used.items()), reverse=True)[:4]
    cpu = sum(used.values())
    workers = [rss for pid, (rss, name) in peaks.items() if pid != p.pid and (_is_worker(name) or "multiprocessing" in name)]
    mb = lambda b: round(b / 2**20)  # noqa: E731
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "cpu_top": top, "driver_peak_mb": mb(peaks[p.pid][0]),
            "largest_worker_peak_mb": mb(max(workers, default=0)), "largest_process_peak_mb": mb(max(v[0] for v in peaks.values())),
            "all_processes_peak_sum_mb": mb(s.peak_sum)}


def _is_worker(cmdline: str) -> bool:
    """A Ray worker process (idle or running a task), not one of Ray's own (raylet, GCS, agents, dashboard)."""
    return "default_worker" in cmdline or (cmdline.startswith("ray::") and "Agent" not in cmdline)


def digest(folder: Path, pattern: str) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob(pattern)):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def counts(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())["counts"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared" / "corpus" / "zh"))
    p.add_argument("--size", type=int, default=100, help="MB of resampled JSONL input")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", default="/tmp/bench-engine")
    p.add_argument("--pack-tokenizer", help="also time `zhdata pack --mode pt` of the cleaned shards with this folder")
    a = p.parse_args()
    work = Path(a.work)
    src = make_corpus(a.corpus, a.size, work / "in")

    import ray  # after the corpus: the cluster below is what the "ray, cluster" runs join

    ray.init(address="local", num_cpus=a.workers, include_dashboard=False, logging_level="WARNING")
    gcs = ray.get_runtime_context().gcs_address
    me = os.getpid()
    baseline = {q.pid for q in psutil.Process(me).children(recursive=True)}  # idle Ray processes: not the run's
    results: dict = {}
    jobs = [("clean", lambda out, extra: [ZHDATA, "clean", str(src), "-o", str(out), "--workers", str(a.workers),
                                          "--no-progress", *extra], "*.parquet")]
    if a.pack_tokenizer:
        jobs.append(("pack", lambda out, extra: [ZHDATA, "pack", str(work / "clean-local"), "--tokenizer", a.pack_tokenizer,
                                                 "-o", str(out), "--mode", "pt", "-q", "--workers", str(a.workers), *extra],
                     "*.bin"))
    for what, cmd, pattern in jobs:
        row = {}
        for name, extra, roots in (("local", [], []), ("ray, cluster", ["--engine", "ray", "--ray-address", gcs], [me]),
                                   ("ray, started by the command", ["--engine", "ray"], [])):
            out = work / f"{what}-{name.split(',')[0]}{'-own' if 'started' in name else ''}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            row[name] = run(cmd(out, extra), roots, baseline)
            row[name]["output_sha256"] = digest(out, pattern)
            row[name]["counts_in_out"] = [counts(out)["records_in"], counts(out)["records_out"]]
            row[name]["load_average_1_5_min"] = [round(x, 1) for x in os.getloadavg()[:2]]
            print(json.dumps({what: {name: row[name]}}), flush=True)
        local = row["local"]["wall_s"]
        for name in row:
            row[name]["time_vs_local"] = round(row[name]["wall_s"] / local, 2)
        assert len({r["output_sha256"] for r in row.values()}) == 1, f"{what}: the engines wrote different outputs"
        results[what] = row
    ray.shutdown()
    print(json.dumps({"size_mb": a.size, "workers": a.workers, **results}, indent=1))


if __name__ == "__main__":
    main()
