"""`train run --shard experts`: 2 gloo processes on 127.0.0.1, each holding half the experts of every MoE layer,
train as one process does on the same global batch."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from test_train_run import MIXTRAL_SPM, TEXTS, _mixtral
from tokenizer.convert import write_hf_folder
from tokenizer.spm import load_proto
from train.cli import main
from train.sharding import ExpertPlacement
from zhdata.errors import InputError
from zhdata.manifest import read_manifest
from zhdata.pack.packer import PackOptions, pack

FLAGS = ["--max-steps", "3", "--quiet", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0", "--lr", "1e-2",
         "--weight-decay", "0", "--warmup-ratio", "0.1", "--max-grad-norm", "0.05", "--save-every", "0",
         "--max-val-batches", "100", "--router-aux-loss-coef", "0", "--embeddings", "frozen"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shard")
    tok = write_hf_folder(load_proto(MIXTRAL_SPM), root / "tok")
    src = root / "pt.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": TEXTS[i % 4] * 3, "source": "t"}, ensure_ascii=False) + "\n"
                           for i in range(24)), encoding="utf-8")
    pack([src], tok, root / "pt", PackOptions(mode="pt", block_size=32, val_fraction=0.1, progress=False))
    return {"root": root, "tok": tok, "data": root / "pt", "model": _mixtral(root / "mixtral")}


def _argv(setup, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", str(setup["model"]), "--data", str(setup["data"]), "--tokenizer", str(setup["tok"]),
            "--output-dir", str(out), *FLAGS, *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, argvs: list[list[str]]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    for argv in argvs:
        assert main(argv) == 0
    torch.distributed.destroy_process_group()


def _log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]


def test_two_ranks_holding_half_the_experts_each_train_as_one_process(setup):
    single = setup["root"] / "single"
    assert main(_argv(setup, single, "--micro-batch-size", "2")) == 0
    # 2 ranks x 1 sequence: stopped after 2 steps and resumed, so the per-rank checkpoint files are used too
    sharded = setup["root"] / "sharded"
    argv = _argv(setup, sharded, "--micro-batch-size", "1", "--shard", "experts")
    # and with the load-balancing loss on (per rank, so no one-process equivalent): as DDP's 2 ranks
    aux = {m: _argv(setup, setup["root"] / f"aux-{m}", "--micro-batch-size", "1", "--shard", m,
                    "--router-aux-loss-coef", "0.5", "--max-steps", "1", "--max-val-batches", "0") for m in ("none", "experts")}
    mp.start_processes(_worker, args=(_free_port(), [argv + ["--stop-after", "2"], argv + ["--resume", "auto"],
                                                     aux["none"], aux["experts"]]),
                       nprocs=2, start_method="spawn", join=True)
    for ra, rb in zip(_log(setup["root"] / "aux-none"), _log(setup["root"] / "aux-experts"), strict=True):
        assert rb["aux_loss"] == pytest.approx(ra["aux_loss"], rel=1e-5) and ra["aux_loss"] > 0
        assert rb["lm_loss"] == pytest.approx(ra["lm_loss"], rel=1e-5)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-4)

    # same losses and gradient norms (clipped at 0.05, so the norm over both ranks' experts matters), same adapters
    a, b = _log(single), _log(sharded)
    assert [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        assert rb["lm_loss"] == pytest.approx(ra["lm_loss"], rel=1e-5)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-4)
        assert rb["grad_norm"] > 0.05
    ms, mb = read_manifest(single), read_manifest(sharded)  # the whole val split: 1 or 2 sequences per batch alike
    assert mb["train"]["val_lm_loss"] == pytest.approx(ms["train"]["val_lm_loss"], rel=1e-5)
    for f in ("adapter_model.safetensors", "moe_adapter.safetensors"):
        x, y = load_file(single / "adapter" / f), load_file(sharded / "adapter" / f)
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].shape == y[k].shape, k
            assert torch.allclose(x[k], y[k], atol=1e-5, rtol=1e-4), (f, k)
    # each rank holds exactly half the experts' NF4 bytes and LoRA factors; the rest is replicated
    one = ms["setup"]["weight_bytes"]["experts"]["nf4"]
    assert mb["sharding"] == {"mode": "experts", "experts_per_rank": 2, "expert_bytes_per_rank": [one // 2, one // 2]}
    assert mb["setup"]["trainable_params"]["experts"] * 2 == ms["setup"]["trainable_params"]["experts"]
    assert mb["setup"]["trainable_params"]["attention"] == ms["setup"]["trainable_params"]["attention"]


def test_expert_placement_splits_evenly_or_refuses():
    with pytest.raises(InputError, match="3 experts per layer cannot be split evenly over 2 processes"):
        ExpertPlacement(0, 2).held(3)
    assert ExpertPlacement(1, 4).held(8) == range(2, 4)
    keys = [f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight" for e in range(4)] + ["model.norm.weight"]
    assert ExpertPlacement(1, 2).unheld_keys(keys, 4) == set(keys[:2])


def _layer_worker(rank: int, port: int, route_to: int) -> None:
    """One MoE layer's experts placed over 2 ranks against the whole layer on each rank; every pair routed to
    experts of rank `route_to`'s half, so the other rank receives nothing and must still take part."""
    from datetime import timedelta

    import torch.distributed as dist
    from torch.nn import functional as F

    from train.quant import NF4LoraExperts
    from train.sharding import PlacedExperts

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))  # a hang fails
    shapes = {"w1": (32, 16), "w2": (16, 32), "w3": (32, 16)}
    read = lambda e, w: torch.randn(shapes[w], generator=torch.Generator().manual_seed(10 * e + int(w[1]))) * 0.1  # noqa: E731
    args = (4, 16, 32, F.silu, read, torch.device("cpu"), torch.float32, 2, 4.0)
    torch.manual_seed(0)
    whole = NF4LoraExperts(*args)
    torch.manual_seed(0)
    placed = PlacedExperts(ExpertPlacement.create("experts", rank, 2), *args)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in shapes:
            b = torch.randn(getattr(whole, f"{w}_B").shape, generator=g)
            getattr(whole, f"{w}_B").copy_(b)
            getattr(placed, f"{w}_B").copy_(b[2 * rank:2 * rank + 2])
            assert torch.equal(getattr(placed, f"{w}_A"), getattr(whole, f"{w}_A")[2 * rank:2 * rank + 2])
    g = torch.Generator().manual_seed(2 + rank)  # each rank its own tokens
    h = torch.randn(6, 16, generator=g, requires_grad=True)
    idx = torch.stack([torch.randperm(2, generator=g) + 2 * route_to for _ in range(6)])
    wts = torch.rand(6, 2, generator=g).requires_grad_()
    out_whole, out_placed = whole(h, idx, wts), placed(h, idx, wts)
    assert torch.allclose(out_placed, out_whole, atol=1e-6)
    (gw_h, gw_w) = torch.autograd.grad((out_whole ** 2).sum(), (h, wts), retain_graph=True)
    (out_placed ** 2).sum().backward()
    assert torch.allclose(h.grad, gw_h, atol=1e-5) and torch.allclose(wts.grad, gw_w, atol=1e-5)
    # a held expert's gradient sums what both ranks' tokens sent it
    whole.zero_grad()
    (out_whole ** 2).sum().backward()
    for w in shapes:
        full = getattr(whole, f"{w}_B").grad.clone()
        dist.all_reduce(full)
        mine = getattr(placed, f"{w}_B").grad  # None: no token came to this rank
        mine = torch.zeros_like(full[:2]) if mine is None else mine
        assert torch.allclose(mine, full[2 * rank:2 * rank + 2], atol=1e-5), w
    dist.destroy_process_group()


def test_placed_experts_equal_the_whole_layer_even_when_a_rank_receives_nothing():
    mp.start_processes(_layer_worker, args=(_free_port(), 0), nprocs=2, start_method="spawn", join=True)
