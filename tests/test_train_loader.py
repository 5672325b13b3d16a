"""The streaming NF4 loader and the streaming merge on tiny checkpoints written here in each layout: the Hub's
per-expert Mixtral layout sharded (one layer's experts split across two shards), transformers 5's fused
layout, and dense Llama."""

from __future__ import annotations

import json
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

from train.config import RunConfig
from train.loader import Checkpoint, load_nf4
from train.merge import merge
from train.model import META_FILE, attach_adapters, load_quantized, save_adapter
from train.quant import NF4LoraExperts
from zhdata.errors import InputError

H, I, E, LAYERS = 64, 128, 4, 2
MIX = MixtralConfig(vocab_size=256, hidden_size=H, intermediate_size=I, num_hidden_layers=LAYERS,
                    num_attention_heads=4, num_key_value_heads=2, num_local_experts=E, num_experts_per_tok=2,
                    max_position_embeddings=128, tie_word_embeddings=False)
LORA = dict(lora_r=4, lora_alpha=8)


def per_expert_state(fused: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' in-memory (fused) Mixtral state dict in the Hub's per-expert layout."""
    out = {}
    for k, v in fused.items():
        if k.endswith("experts.gate_up_proj"):
            base = k.removesuffix("gate_up_proj").replace(".mlp.", ".block_sparse_moe.")
            for e in range(v.shape[0]):
                out[f"{base}{e}.w1.weight"], out[f"{base}{e}.w3.weight"] = v[e, :I].clone(), v[e, I:].clone()
        elif k.endswith("experts.down_proj"):
            base = k.removesuffix("down_proj").replace(".mlp.", ".block_sparse_moe.")
            for e in range(v.shape[0]):
                out[f"{base}{e}.w2.weight"] = v[e].clone()
        else:
            out[k.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = v
    return out


def write_sharded(state: dict[str, torch.Tensor], folder: Path, config, shards: list[list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    weight_map = {}
    for n, keys in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: state[k].contiguous() for k in keys}, folder / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
    assert set(weight_map) == set(state)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def mixtral_checkpoints(root: Path, dtype=torch.bfloat16) -> tuple[MixtralForCausalLM, Path, Path]:
    """(model, per-expert sharded folder, fused single-file folder)."""
    torch.manual_seed(0)
    model = MixtralForCausalLM(MIX).to(dtype)
    fused = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hub = per_expert_state(fused)
    layer0_experts = sorted(k for k in hub if ".0.block_sparse_moe.experts." in k)
    split = [k for k in layer0_experts if int(k.split(".experts.")[1].split(".")[0]) < E // 2]
    rest = sorted(set(hub) - set(layer0_experts))
    shards = [split + rest[: len(rest) // 2], sorted(set(layer0_experts) - set(split)), rest[len(rest) // 2:]]
    per = write_sharded(hub, root / "per-expert", MIX, shards)
    fused_dir = root / "fused"
    fused_dir.mkdir()
    MIX.save_pretrained(fused_dir)
    save_file(fused, fused_dir / "model.safetensors", metadata={"format": "pt"})
    return model, per, fused_dir


def load(path: Path, **kw):
    return load_nf4(path, torch.device("cpu"), torch.float32, progress=False, **{**LORA, **kw})


def packed(model) -> dict[str, torch.Tensor]:
    """Every 4-bit weight's packed bytes and block scales, by parameter name."""
    out = {}
    for n, p in model.named_parameters():
        if isinstance(p, bnb.nn.Params4bit):
            out[n] = p.data.clone()
            out[n + ".absmax"] = p.quant_state.state2.absmax.clone()
            out[n + ".absmax_q"] = p.quant_state.absmax.clone()
    return out


def test_per_expert_sharded_and_fused_load_to_identical_nf4_equal_to_bitsandbytes(tmp_path):
    model, per, fused = mixtral_checkpoints(tmp_path)
    # the per-expert folder is the layout transformers itself writes, and it converts it back to the same model
    model.save_pretrained(tmp_path / "hf")
    hf_keys = set(json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())["weight_map"]) \
        if (tmp_path / "hf" / "model.safetensors.index.json").exists() else None
    if hf_keys is None:
        from safetensors import safe_open
        with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
            hf_keys = set(f.keys())
    assert hf_keys == set(Checkpoint(per).file_of)
    ref = AutoModelForCausalLM.from_pretrained(per, dtype=torch.bfloat16)
    assert torch.equal(ref.model.layers[0].mlp.experts.gate_up_proj, model.model.layers[0].mlp.experts.gate_up_proj)

    a, b = load(per), load(fused)
    qa, qb = packed(a), packed(b)
    assert qa.keys() == qb.keys() and len(qa) == 3 * LAYERS * (3 * E + 4)
    for k in qa:
        assert torch.equal(qa[k], qb[k]), k
    for layer in range(LAYERS):  # bit for bit what bitsandbytes' own quantize_4bit makes of each weight
        ex = a.model.layers[layer].mlp.experts
        assert isinstance(ex, NF4LoraExperts)
        gate_up = model.model.layers[layer].mlp.experts.gate_up_proj.float()
        want = {"w1": gate_up[:, :I], "w3": gate_up[:, I:], "w2": model.model.layers[layer].mlp.experts.down_proj.float()}
        for w, full in want.items():
            for e in range(E):
                q, st = bnb.functional.quantize_4bit(full[e].contiguous(), blocksize=64, compress_statistics=True,
                                                     quant_type="nf4")
                got = getattr(ex, w)[e].weight
                assert torch.equal(got.data, q) and torch.equal(got.quant_state.absmax, st.absmax), (layer, w, e)
                assert got.quant_state.dtype == torch.float32  # read as stored (bf16), dequantized in the compute dtype
        q, _ = bnb.functional.quantize_4bit(model.model.layers[layer].self_attn.q_proj.weight.float(), blocksize=64,
                                            compress_statistics=True, quant_type="nf4")
        assert torch.equal(a.model.layers[layer].self_attn.q_proj.weight.data, q)
        assert torch.equal(a.model.layers[layer].mlp.gate.weight, model.model.layers[layer].mlp.gate.weight.float())
    assert torch.equal(a.lm_head.weight, model.lm_head.weight.float()) and a.lm_head.weight.dtype == torch.float32
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        la, lb, lr = a(input_ids=ids).logits, b(input_ids=ids).logits, ref.float()(input_ids=ids).logits
    assert torch.equal(la, lb)
    assert 0 < (la - lr).abs().max() < 0.5 * lr.abs().max()  # NF4 of the same model: close, not equal


def test_loader_holds_one_16bit_matrix_at_a_time(tmp_path):
    _, per, _ = mixtral_checkpoints(tmp_path, dtype=torch.float32)
    ckpt = Checkpoint(per)
    load_nf4(per, torch.device("cpu"), torch.float32, progress=False, checkpoint=ckpt, **LORA)
    matrix = I * H * 4
    assert ckpt.meter.peak == matrix and ckpt.meter.live == 0
    assert ckpt.used == set(ckpt.file_of)
    # the meter does see a loader that keeps a layer's experts in 16-bit: the whole set would count
    greedy = Checkpoint(per)
    mod = MixtralForCausalLM(MIX).model.layers[0].mlp.experts
    held = [greedy.expert("model.layers.0.mlp.experts", e, w, mod, torch.float32) for e in range(E) for w in ("w1", "w2", "w3")]
    assert greedy.meter.peak == 3 * E * matrix == sum(t.numel() * 4 for t in held)
    # a bf16 checkpoint loaded for fp32 compute: each matrix is held as stored (2 bytes), never widened to fp32
    _, per16, fused16 = mixtral_checkpoints(tmp_path / "bf16")
    for folder in (per16, fused16):
        ckpt = Checkpoint(folder)
        load_nf4(folder, torch.device("cpu"), torch.float32, progress=False, checkpoint=ckpt, **LORA)
        assert ckpt.meter.peak == I * H * 2 and ckpt.meter.live == 0


def test_dense_llama_and_tied_embeddings(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    llama = LlamaForCausalLM(cfg)
    llama.save_pretrained(tmp_path / "llama")
    m = load(tmp_path / "llama")
    assert m.lm_head.weight is m.model.embed_tokens.weight
    assert torch.equal(m.model.embed_tokens.weight, llama.model.embed_tokens.weight)
    for name in ("self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"):
        q, _ = bnb.functional.quantize_4bit(llama.model.layers[1].get_submodule(name).weight.detach(), blocksize=64,
                                            compress_statistics=True, quant_type="nf4")
        assert torch.equal(m.model.layers[1].get_submodule(name).weight.data, q), name
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = m(input_ids=ids).logits, llama(input_ids=ids).logits
    assert (got - want).abs().max() < 0.5 * want.abs().max()


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("damage,message", [
    ("missing", "model.layers.1.mlp.experts.3.w2.weight: missing tensor"),
    ("unexpected", "model.layers.9.extra.weight: unexpected tensor"),
    ("int8", "model.layers.0.self_attn.q_proj.weight: dtype I8"),
    ("shape", "model.layers.0.self_attn.k_proj.weight: shape [64, 64], but config.json's model expects [32, 64]"),
])
def test_bad_checkpoints_fail_with_one_line_naming_file_and_key(tmp_path, damage, message):
    _, per, _ = mixtral_checkpoints(tmp_path)
    state = _state(per)
    if damage == "missing":
        del state["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    elif damage == "unexpected":
        state["model.layers.9.extra.weight"] = torch.zeros(2)
    elif damage == "int8":
        state["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(64, 64, dtype=torch.int8)
    else:
        state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(64, 64)
    bad = tmp_path / "bad"
    bad.mkdir()
    MIX.save_pretrained(bad)
    save_file(state, bad / "model.safetensors")
    with pytest.raises(InputError) as err:
        load(bad)
    text = str(err.value)
    assert "\n" not in text and str(bad / "model.safetensors") in text and message in text, text
    (bad / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no model.safetensors or model.safetensors.index.json"):
        load(bad)


def _adapted_run(base: Path, out: Path):
    """A run folder as `train run` writes it, with every adapter (and the trained embedding copies) random, so
    every delta the merge adds is non-zero."""
    cfg = RunConfig(model=str(base), data="-", output_dir=str(out), lora_r=4, lora_alpha=8, lora_dropout=0.0)
    pm = attach_adapters(load_quantized(base, torch.device("cpu"), torch.float32, progress=False, **LORA), cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad and (n.endswith("_B") or ".lora_B." in n or "modules_to_save" in n):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    save_adapter(pm, out, cfg, 256)
    return pm.eval()


def _keys_by_file(folder: Path) -> dict[str, set[str]]:
    from safetensors import safe_open
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            out[f.name] = set(h.keys())
    return out


def test_streaming_merge_keeps_the_layout_and_matches_the_run(tmp_path):
    _, per, fused = mixtral_checkpoints(tmp_path)
    run = tmp_path / "run"
    pm = _adapted_run(per, run)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = pm(input_ids=ids).logits
    logits = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / f"merged-{dtype}"
        m = merge(run, out, dtype, progress=False)
        assert _keys_by_file(out) == _keys_by_file(per)  # per-expert stays per-expert, in the same shards
        assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"] == \
            json.loads((per / "model.safetensors.index.json").read_text())["weight_map"]
        assert m["model"]["shards"] == 3 and m["model"]["vocab_size"] == 256
        merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        with torch.no_grad():
            logits[dtype] = merged(input_ids=ids).logits
    rel = lambda a: float((a - want).abs().max() / want.abs().max())  # noqa: E731
    print(f"merge vs run, relative logit difference: fp32 {rel(logits['fp32']):.1e}, bf16 {rel(logits['bf16']):.1e}")
    assert rel(logits["fp32"]) < 1e-5, rel(logits["fp32"])
    assert rel(logits["bf16"]) < 3e-2, rel(logits["bf16"])  # README: bf16 rounding of the merged weights
    base_logits = AutoModelForCausalLM.from_pretrained(per, dtype=torch.float32)(input_ids=ids).logits.detach()
    assert float((base_logits - want).abs().max()) > 0.05  # the adapters (and embeddings) really changed the model

    # the same adapters on the same weights stored fused: fused output, same model
    run_fused = tmp_path / "run-fused"
    import shutil
    shutil.copytree(run, run_fused)
    meta_file = run_fused / "adapter" / META_FILE
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "base_model": str(fused)}))
    out = tmp_path / "merged-fused"
    merge(run_fused, out, "fp32", progress=False)
    assert _keys_by_file(out) == _keys_by_file(fused)
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(input_ids=ids).logits
    assert rel(got) < 1e-5

    # a run folder of the old adapter format (one LoRA shared by w1 and w3) is refused
    meta_file.write_text(json.dumps({**meta, "format": 1}))
    with pytest.raises(InputError, match="adapter format 1"):
        merge(run_fused, tmp_path / "old", "fp32", progress=False)


def test_eval_runs_in_the_training_precision():
    import warnings
    from contextlib import nullcontext

    from train.model import run_autocast
    assert isinstance(run_autocast(torch.device("cpu")), nullcontext)
    with warnings.catch_warnings():  # no CUDA here: torch warns that the context would be disabled
        warnings.simplefilter("ignore")
        ctx = run_autocast(torch.device("cuda", 0))
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_nf4_equals_bitsandbytes_quantize_4bit(monkeypatch, dtype):
    import train.quant as quant
    monkeypatch.setattr(quant, "CHUNK_ELEMENTS", 7 * 192)  # 7 rows per chunk: 43 rows make 6 full chunks and one short
    w = (torch.randn(43, 192, generator=torch.Generator().manual_seed(5)) * 0.02).to(dtype)
    packed, state = quant.quantize_nf4(w, 64)
    want, ref = bnb.functional.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    assert torch.equal(packed, want) and torch.equal(state.absmax, ref.absmax) and torch.equal(state.offset, ref.offset)
    assert torch.equal(state.state2.absmax, ref.state2.absmax) and torch.equal(state.code, ref.code)
    assert torch.equal(bnb.functional.dequantize_4bit(packed, state), bnb.functional.dequantize_4bit(want, ref))


def seeded_load(path: Path, **kw):
    torch.manual_seed(0)  # the expert and router LoRA factors are drawn while loading
    return load(path, **kw)


def test_frozen_embeddings_stay_16bit_with_the_same_outputs_and_setup(tmp_path):
    from train.model import verify_setup
    _, per, _ = mixtral_checkpoints(tmp_path)
    a, b = seeded_load(per), seeded_load(per, frozen_embeddings=True)
    assert a.model.embed_tokens.weight.dtype == a.lm_head.weight.dtype == torch.float32
    assert b.model.embed_tokens.weight.dtype == b.lm_head.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the GPU path: the head's weight as stored under autocast
            la, lb = a(input_ids=ids).logits, b(input_ids=ids).logits
        assert la.dtype == torch.bfloat16 and torch.equal(la, lb)
    cfg = RunConfig(model=str(per), data="-", output_dir="-", embeddings="frozen", lora_dropout=0.0, **LORA)
    grads = []
    for m in (a, b):
        torch.manual_seed(0)
        pm = attach_adapters(m, cfg)
        summary = verify_setup(pm, cfg)
        assert not summary["problems"] and summary["trainable_params"] == summary["analytic_trainable_params"]
        pm(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in pm.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
