"""Benchmark `zhdata instruct`: rows per second on one core and peak memory, on a resampled set built from
real instruction files, plus a run over the real files themselves whose manifest must add up.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_instruct.py --instruct ../shared/instruct \
        --rows 1000000 --work /tmp/bench_instruct [--json results.json]

The resampled set draws records with replacement and applies light random edits (1-3 substituted
characters in the prompt and the response, a number appended to the response) so that it is not all
exact duplicates; near-duplicate prompts remain, as they do in merged community sets. The command runs in
a child process with every thread pool at 1, started through `launch.py` so that its peak is its own, not this
script's (Linux carries ru_maxrss over fork and exec). Peak memory is that child's maximum resident set, and apart:
its heap (RssAnon) and its mapped file pages (RssFile: the MinHash signature file read while verifying
candidate pairs; clean page cache the kernel can reclaim).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from launch import command_pid, figures, launched  # noqa: E402
from zhdata.manifest import read_manifest  # noqa: E402
from zhdata.readers import expand_inputs, iter_records  # noqa: E402

ONE_CORE = {"OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1", "RAYON_NUM_THREADS": "1", "RAYON_RS_NUM_CPUS": "1",
            "TQDM_DISABLE": "1"}
POOL = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经"


def load(instruct: Path) -> list[dict]:
    return [rec for f in expand_inputs([instruct]) for _, rec in iter_records(f)]


def edit(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        if chars:
            chars[rng.randrange(len(chars))] = rng.choice(POOL)
    return "".join(chars)


def mutate(rec: dict, rng: random.Random) -> dict:
    rec = json.loads(json.dumps(rec))
    if "conversations" in rec:
        turns = rec["conversations"]
        if turns:
            turns[0]["value"] = edit(turns[0]["value"], rng)
            turns[-1]["value"] = edit(turns[-1]["value"], rng) + f" {rng.randrange(10**6)}"
    else:
        rec["instruction"] = edit(rec["instruction"], rng)
        rec["output"] = edit(rec["output"], rng) + f" {rng.randrange(10**6)}"
    return rec


def build(instruct: Path, rows: int, out: Path, shard_rows: int, seed: int) -> dict:
    """`rows` resampled, edited records as JSONL shards, one file per format (the pipeline detects them)."""
    out.mkdir(parents=True, exist_ok=True)
    pool = load(instruct)
    rng = random.Random(seed)
    files, n = [], 0
    while n < rows:
        k = min(shard_rows, rows - n)
        batch = [mutate(rng.choice(pool), rng) for _ in range(k)]
        for kind, recs in (("sharegpt", [r for r in batch if "conversations" in r]),
                           ("alpaca", [r for r in batch if "conversations" not in r])):
            p = out / f"{kind}-{len(files):04d}.jsonl"
            p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
            files.append(p)
        n += k
    return {"rows": rows, "files": len(files), "bytes": sum(f.stat().st_size for f in files), "pool": len(pool)}


def _watch(launcher: int, peak: dict, stop: threading.Event) -> None:
    """Peak heap (RssAnon) and mapped-file pages (RssFile) of the command a launcher runs, sampled every 0.2 s."""
    while (pid := command_pid(launcher)) is None:
        if stop.wait(0.01):
            return
    while not stop.is_set():
        try:
            status = dict(ln.split(":", 1) for ln in open(f"/proc/{pid}/status") if ":" in ln)
        except (FileNotFoundError, ProcessLookupError):
            return
        for k in ("RssAnon", "RssFile"):
            peak[k] = max(peak.get(k, 0), int(status[k].split()[0]) // 1024)
        stop.wait(0.2)


def run_instruct(args: list[str]) -> dict:
    """Run `zhdata instruct` in a child process; wall time, output table, wait4 figures, peak heap and file-page MiB."""
    fd, fig = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    t = time.perf_counter()
    proc = subprocess.Popen(launched([sys.executable, "-m", "zhdata.cli", "instruct", *args], fig), cwd=ROOT,
                            env={**os.environ, **ONE_CORE}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(proc.pid, peak, stop), daemon=True)
    watcher.start()
    out, err = proc.communicate()
    stop.set()
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"zhdata instruct failed ({proc.returncode}):\n{err[-3000:]}")
    wait4 = figures(fig)
    os.unlink(fig)
    return {"wall_s": round(wall, 1), "table": out, "peak": peak, "wait4": wait4}


def measured(args: list[str], out_dir: Path) -> dict:
    """Run, check that the manifest adds up, and report speed and memory (the child's own CPU and ru_maxrss)."""
    r = run_instruct(args)
    m = read_manifest(out_dir)
    c = m["counts"]
    assert c["records_in"] == c["records_out"] + c["dropped_total"], "manifest does not add up"
    for name, s in m["sources"].items():
        assert s["records_in"] == s["records_out"] + s["dropped_total"], f"source {name} does not add up"
    cpu = r["wait4"]["cpu_s"]
    d = m["instruct"]["dedup"]
    kept_stage = c["records_in"] - sum(v for k, v in c["dropped"].items() if k not in ("exact_dup", "near_dup_prompt"))
    return {
        "records_in": c["records_in"], "records_out": c["records_out"], "dropped": c["dropped"],
        "examples_out": sum(m["instruct"]["examples_out"].values()),
        "wall_s": r["wall_s"], "cpu_s": round(cpu, 1), "rows_per_s": round(c["records_in"] / r["wall_s"]),
        "rows_per_cpu_s": round(c["records_in"] / cpu), "peak_rss_mib": round(r["wait4"]["peak_rss_kib"] / 1024),
        "peak_heap_mib": r["peak"].get("RssAnon"), "peak_file_pages_mib": r["peak"].get("RssFile"),
        "timings": m["instruct"]["timings"],
        "band_table_mib": round(kept_stage * d["bands"] * 8 / 2**20, 1),
        "signature_file_mib": round(kept_stage * d["num_perm"] * 4 / 2**20, 1),
        "table": r["table"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instruct", type=Path, default=ROOT.parent / "shared" / "instruct")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shard-rows", type=int, default=100_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_instruct"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    results = {}
    if not a.skip_real:
        out = a.work / "real-out"
        results["real"] = measured([str(a.instruct), "-o", str(out)], out)
        print(results["real"]["table"])
    if a.rows:
        data = a.work / f"resampled-{a.rows}"
        t = time.perf_counter()
        results["build"] = {**build(a.instruct, a.rows, data, a.shard_rows, a.seed), "build_s": round(time.perf_counter() - t, 1)}
        out = a.work / f"resampled-{a.rows}-out"
        results["resampled"] = measured([str(data), "--source", "resampled", "-o", str(out)], out)
    for v in results.values():
        v.pop("table", None)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
