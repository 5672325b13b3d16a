"""Peak memory per process of dedupe's global step: single process (`--engine local`) against Ray (`--engine ray`).

    python benchmarks/bench_ray_dedupe.py --sizes 100 500 2000 --work /tmp/rayio-bench

For each size: the scaling input of `bench_zhdata.py scaling` (documents of 3-12 real paragraphs), `zhdata clean`,
then `zhdata dedupe` once (local) to leave pass 1's signature caches in OUT/.parts. Then the global step alone, each
in a fresh process: `local` runs `zhdata.dedupe.local_clusters`; `ray` starts a local Ray with --workers CPUs and
runs `zhdata.engine.ray_dedupe.ray_clusters`, reading the peak resident memory (VmHWM) of every Ray worker process
while it runs, and, sampled every 0.2 s, its private pages (anonymous memory and mapped libraries) apart from the
object store's shared pages it has touched (the store is one pool per node, shared by its workers, not a worker's
own). CPU seconds: the step process, and every process of its Ray. Both results must be the same clusters
(checked). Baseline: the process's RSS after its imports. Peaks are VmHWM, never ru_maxrss (which a process
inherits from the one that started it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _status_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak resident) and the resident pages now: private (RssAnon), mapped files (RssFile: libraries) and
    shared memory (RssShmem: for a Ray worker, the pages of the node's object store it has touched)."""
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in f)
                if k in ("VmHWM", "RssAnon", "RssFile", "RssShmem")}


def _inputs(out: Path):
    from zhdata import fs
    from zhdata.dedupe import DedupeOptions, list_shards

    plan = json.loads((out / ".parts" / "plan.json").read_text())
    opts = DedupeOptions(**{k: plan[k] for k in DedupeOptions.__dataclass_fields__})
    shards = list_shards(plan["input"])
    caches = [fs.join(out / ".parts", f"sig-{fs.name(s)[: -len('.parquet')]}.npz") for s in shards]
    return opts, shards, caches


def step(a: argparse.Namespace) -> None:
    """One global step in this process; prints JSON with the figures."""
    out = Path(a.out)
    import polars  # noqa: F401  (imported by both paths: part of the baseline)

    from zhdata.dedupe import local_clusters, shard_offsets

    opts, shards, caches = _inputs(out)
    base = _rss_mb()
    t = time.perf_counter()
    own0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = own0.ru_utime + own0.ru_stime
    res: dict = {"engine": a.step, "baseline_rss_mb": round(base)}
    if a.step == "local":
        with tempfile.TemporaryDirectory() as tmp:
            clusters, offsets = local_clusters(caches, shards, opts, Path(tmp))
    else:
        import ray

        from zhdata.engine import ray_dedupe
        from zhdata.engine.ray_engine import init_ray

        init_ray(None, a.workers)
        peaks: dict[int, dict[str, float]] = {}  # per worker: VmHWM and the peaks of its private and shared pages
        cpu: dict[int, float] = {}  # per process of this run's Ray (workers, raylet, GCS, agents): user + system
        stop = threading.Event()

        def watch() -> None:
            import psutil

            me = psutil.Process()
            while not stop.is_set():
                for p in me.children(recursive=True):  # this run's Ray (started by this process), not another's
                    try:
                        cmd, t, mem = " ".join(p.cmdline()), p.cpu_times(), _status_mb(p.pid)
                    except (psutil.Error, OSError):
                        continue
                    cpu[p.pid] = t.user + t.system
                    if "default_worker.py" in cmd or cmd.startswith("ray::"):
                        mem["private"] = mem["RssAnon"] + mem["RssFile"]
                        peaks[p.pid] = {k: max(v, peaks.get(p.pid, {}).get(k, 0)) for k, v in mem.items()}
                stop.wait(0.2)

        th = threading.Thread(target=watch, daemon=True)
        th.start()
        offsets = shard_offsets(shards)
        clusters = ray_dedupe.ray_clusters(caches, shards, offsets, opts)
        stop.set()
        th.join()
        top = sorted(peaks.values(), key=lambda m: -m["VmHWM"])
        res["worker_peak_rss_mb"] = [round(m["VmHWM"]) for m in top]
        res["worker_peak_private_mb"] = sorted((round(m["private"]) for m in top), reverse=True)
        res["worker_peak_object_store_pages_mb"] = sorted((round(m["RssShmem"]) for m in top), reverse=True)
        res["worker_cpu_s"] = round(sum(cpu[p] for p in peaks if p in cpu), 1)
        res["ray_processes_cpu_s"] = round(sum(cpu.values()), 1)
        res["partitions"] = max(int(ray.cluster_resources().get("CPU", 1)),
                                -(-int(offsets[-1]) * (opts.bands + 1) // ray_dedupe.ROWS_PER_PARTITION))
        ray.shutdown()
    res["wall_s"] = round(time.perf_counter() - t, 1)
    own = resource.getrusage(resource.RUSAGE_SELF)
    res["driver_cpu_s"] = round(own.ru_utime + own.ru_stime - cpu0, 1)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so it held this script's parent's peak
    # (the corpus builder, ~330 MB) and every earlier figure of the step process was at least that
    res["driver_peak_rss_mb"] = round(_status_mb(os.getpid())["VmHWM"])
    res["documents"] = int(offsets[-1])
    res["members"] = int(len(clusters.members))
    np.savez(out.parent / f"clusters-{a.step}.npz", members=clusters.members, roots=clusters.roots, exact=clusters.exact)
    print(json.dumps(res))


def run(a: argparse.Namespace) -> None:
    from bench_zhdata import make_corpus

    work = Path(a.work)
    zh = str(Path(sys.executable).parent / "zhdata")
    results = {}
    for size in a.sizes:
        src = make_corpus(a.corpus, size, work / "in")
        c, d = work / f"clean-{size}", work / f"dedup-{size}"
        if not (c / "manifest.json").exists():
            subprocess.run([zh, "clean", str(src), "-o", str(c), "--workers", str(a.workers), "--no-progress"], check=True,
                           stdout=subprocess.DEVNULL)
        if not (d / "manifest.json").exists():
            subprocess.run([zh, "dedupe", str(c), "-o", str(d), "--workers", str(a.workers), "--no-progress"], check=True,
                           stdout=subprocess.DEVNULL)
        row = {}
        for engine in ("local", "ray"):
            p = subprocess.run([sys.executable, __file__, "--step", engine, "--out", str(d), "--workers", str(a.workers)],
                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if p.returncode:
                raise SystemExit(p.stderr[-3000:])
            row[engine] = json.loads(p.stdout.strip().splitlines()[-1])
        got = [np.load(d.parent / f"clusters-{e}.npz") for e in ("local", "ray")]
        row["same_clusters"] = all(np.array_equal(got[0][k], got[1][k]) for k in ("members", "roots", "exact"))
        results[f"{size}MB"] = row
        print(json.dumps({f"{size}MB": row, "load_average": os.getloadavg()}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus" / "zh"))
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", default="/tmp/rayio-bench")
    p.add_argument("--step", choices=["local", "ray"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.step:
        step(a)
    else:
        run(a)


if __name__ == "__main__":
    main()
