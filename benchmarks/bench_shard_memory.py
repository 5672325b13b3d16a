"""Host memory per rank of `train run` under torchrun: 1 process, 2 ranks with `--shard none` (DDP, every rank
holds the whole 4-bit model) and 2 ranks with `--shard experts` (each rank holds and streams half the experts).

    python benchmarks/bench_shard_memory.py write WORK      # checkpoint (bf16, Hub layout, 3 shards), tokenizer, data
    python benchmarks/bench_shard_memory.py measure WORK    # the three runs, one after another

Every rank streams the checkpoint on its own (`train/loader.py`: one 16-bit matrix at a time). On CPU the
quantized model lives in host memory, so a rank's RSS is its model share plus the loader's transient plus
activations; on GPUs the model goes to GPU memory and the host keeps the transient. Each rank reports its own
peak RSS (its VmHWM; not `ru_maxrss`, which Linux carries over fork and exec, so a rank's would be at least
torchrun's peak) and its peak anonymous memory (RssAnon sampled every 5 ms; without the page cache of the mapped
shards, which the ranks share), plus its expert bytes from the run's setup check.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench_train_memory import GiB, REPO, anon_peak, proc_status, write

# Half the width of bench_train_memory's model, so three CPU runs (four processes) end in minutes.
DIMS = dict(vocab_size=32000, hidden_size=512, intermediate_size=4096, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=4096,
            tie_word_embeddings=False)
RUN_FLAGS = ["--max-steps", "2", "--micro-batch-size", "1", "--lora-r", "16", "--lora-alpha", "32", "--embeddings", "frozen",
             "--max-val-batches", "0", "--save-every", "0", "--quiet", "--device", "cpu"]
RUNS = (("1 process", 1, "none"), ("2 ranks, --shard none (DDP)", 2, "none"), ("2 ranks, --shard experts", 2, "experts"))


def rank(work: Path, shard: str, tag: str) -> None:
    """One rank of a run (started by torchrun): train, then write this rank's memory figures."""
    import torch

    import train.loop  # noqa: F401 (the run's imports, before the baseline)
    from train.cli import main

    torch.set_num_threads(1)
    with anon_peak() as m:
        assert main(["run", "--model", str(work / "model"), "--data", str(work / "packed"), "--tokenizer",
                     str(work / "tok"), "--output-dir", str(work / f"run-{tag}"), "--shard", shard, *RUN_FLAGS]) == 0
    r = int(os.environ.get("RANK", "0"))
    out = {"rank": r, "peak_rss_gib": round(proc_status("VmHWM") / GiB, 3),
           "peak_anon_gib": round(m["peak"] / GiB, 3), "anon_after_imports_gib": round(m["base"] / GiB, 3)}
    (work / f"rss-{tag}-{r}.json").write_text(json.dumps(out))


def measure(work: Path) -> None:
    size = json.loads((work / "model" / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    res: dict = {"checkpoint_bf16_gib": round(size / GiB, 3)}
    for label, world, shard in RUNS:
        tag = f"{shard}-{world}"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        t = time.time()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
                        "--master-addr", "127.0.0.1", "--master-port", str(port), __file__, "rank", str(work), shard, tag],
                       check=True, env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'benchmarks'}", "OMP_NUM_THREADS": "1"})
        ranks = [json.loads((work / f"rss-{tag}-{r}.json").read_text()) for r in range(world)]
        setup = json.loads((work / f"run-{tag}" / "manifest.json").read_text())
        res[label] = {"wall_s": round(time.time() - t, 1), "ranks": ranks,
                      "expert_nf4_gib_per_rank": [round(b / GiB, 3) for b in _expert_bytes(setup)]}
        print(label, res[label], flush=True)
    print(json.dumps(res))


def _expert_bytes(manifest: dict) -> list[int]:
    """Expert NF4 bytes held by each rank (the setup check of rank 0, or every rank's under --shard experts)."""
    per_rank = manifest.get("sharding", {}).get("expert_bytes_per_rank")
    return per_rank or [manifest["setup"]["weight_bytes"]["experts"]["nf4"]] * manifest["world_size"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("write", "measure", "rank"))
    ap.add_argument("args", nargs="+", help="WORK folder (rank: WORK SHARD TAG)")
    a = ap.parse_args()
    if a.what == "write":
        write(Path(a.args[0]), DIMS)
    elif a.what == "measure":
        measure(Path(a.args[0]))
    else:
        rank(Path(a.args[0]), a.args[1], a.args[2])


if __name__ == "__main__":
    main()
