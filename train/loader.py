"""Streaming 4-bit loading: a safetensors checkpoint read tensor by tensor into an NF4 model.

`from_pretrained` materialises (and, for Mixtral, fuses) every weight in host memory before anything can be
quantized: about the whole bf16 checkpoint (97 GB for Mixtral-8x7B) per process. Here the model is built
without weights (accelerate's `init_empty_weights`), then each decoder weight is read from its shard with
`safetensors.safe_open` (a single expert's matrix, or one expert's slice of a fused tensor), quantized to NF4
on the target device and dropped before the next is read; shards are closed after each layer, so their
mapped pages go too. Host memory is the quantized model plus one 16-bit matrix at a time.

Checkpoint layouts read: the Hub's Mixtral layout (`block_sparse_moe.experts.E.w1/w2/w3.weight`,
`block_sparse_moe.gate.weight`), transformers 5's fused layout (`mlp.experts.gate_up_proj (E, 2I, H)`, w1 rows
then w3 rows, and `mlp.experts.down_proj (E, H, I)`, `mlp.gate.weight`), and dense Llama/Mistral models;
sharded (`model.safetensors.index.json`) or one `model.safetensors`.
"""

from __future__ import annotations

import ctypes
import json
import weakref
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.mixtral.modeling_mixtral import MixtralExperts, MixtralTopKRouter

from zhdata.errors import InputError

from .quant import LoraRouter, NF4LoraExperts, set_child, to_linear4bit
from .sharding import ExpertPlacement, PlacedExperts

INDEX_FILE, SINGLE_FILE = "model.safetensors.index.json", "model.safetensors"
FLOAT_DTYPES = {"F16", "BF16", "F32"}
# Tensors some checkpoints carry that the model recomputes (old Llama exports saved the rotary frequencies).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the kernel (glibc `malloc_trim`; elsewhere nothing). Between two
    weights the heap holds the last one's freed 16-bit copy and scratch between live NF4 tensors, which `free`
    alone keeps resident; measured in BENCHMARKS.md."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


class LiveBytes:
    """Bytes of the tensors read for quantization that are still alive, and their peak (weakref finalizers
    fire when the last reference to a tensor goes, so the count follows the loader's real read path)."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def add(self, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(t, self._sub, n)

    def _sub(self, n: int) -> None:
        self.live -= n


class Checkpoint:
    """A safetensors checkpoint folder read tensor by tensor, with the keys it handed out recorded."""

    def __init__(self, model_dir: str | Path):
        d = Path(model_dir)
        index = d / INDEX_FILE
        if index.exists():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(index, None, f"not a safetensors index (no readable weight_map: {e})") from None
            self.file_of = {k: d / f for k, f in weight_map.items()}
            absent = sorted({p for p in self.file_of.values() if not p.exists()})
            if absent:
                raise InputError(absent[0], None, f"shard listed in {INDEX_FILE} does not exist")
            self.where = index
        elif (d / SINGLE_FILE).exists():
            self.where = d / SINGLE_FILE
            self.file_of = {k: self.where for k in self._open_file(self.where).keys()}
        else:
            raise InputError(d, None, f"no {SINGLE_FILE} or {INDEX_FILE}",
                             hint="only safetensors checkpoints are read; re-save .bin weights with save_pretrained")
        self.used: set[str] = set()
        self.meter = LiveBytes()
        self._open: dict[Path, object] = {}

    @staticmethod
    def _open_file(path: Path):
        try:
            return safe_open(path, framework="pt")
        except (SafetensorError, OSError) as e:
            raise InputError(path, None, f"not a readable safetensors file ({e})") from None

    def __contains__(self, key: str) -> bool:
        return key in self.file_of

    def find(self, *keys: str) -> str:
        """The first of `keys` the checkpoint has (layout variants of one weight)."""
        keys = tuple(dict.fromkeys(keys))
        for k in keys:
            if k in self.file_of:
                return k
        raise InputError(self.where, keys[0], "missing tensor (config.json's model needs it)"
                         + (f"; also looked for {', '.join(keys[1:])}" if len(keys) > 1 else ""))

    def read(self, key: str, shape: tuple[int, ...], dtype: torch.dtype, index: tuple[slice, ...] | None = None,
             to_quantize: bool = False, keep_16bit: bool = False) -> torch.Tensor:
        """Tensor `key` (or its `index` part) in `dtype`; `shape` is the full tensor's shape the model expects.
        `keep_16bit`: kept as stored where `dtype` would only widen it (16-bit to float32; the values are the same).
        `to_quantize`: a weight read to be quantized (`quantize_nf4` makes the same bits of it as of it in `dtype`):
        kept 16-bit so, and counted in `meter`."""
        path = self.file_of[key]
        if path not in self._open:
            self._open[path] = self._open_file(path)
        f = self._open[path]
        sl = f.get_slice(key)
        stored, got = sl.get_dtype(), tuple(sl.get_shape())
        if stored not in FLOAT_DTYPES:
            raise InputError(path, key, f"dtype {stored}: only float16/bfloat16/float32 weights can be loaded "
                             "(pre-quantized checkpoints are not)")
        if got != tuple(shape):
            raise InputError(path, key, f"shape {list(got)}, but config.json's model expects {list(shape)}")
        if to_quantize:
            release_free_memory()  # the previous weight's 16-bit copy and quantization scratch leave the process
        t = sl[index] if index is not None else f.get_tensor(key)
        if not ((to_quantize or keep_16bit) and dtype == torch.float32 and t.dtype in (torch.bfloat16, torch.float16)):
            t = t.to(dtype)
        self.used.add(key)
        if to_quantize:
            self.meter.add(t)
        return t

    def tensor(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, to_quantize: bool = False,
               keep_16bit: bool = False) -> torch.Tensor:
        """The model parameter `name` (a Mixtral MoE block is `block_sparse_moe` in the Hub's layout)."""
        key = self.find(name, name.replace(".mlp.", ".block_sparse_moe."))
        return self.read(key, shape, dtype, to_quantize=to_quantize, keep_16bit=keep_16bit)

    def expert(self, experts: str, e: int, w: str, mod: MixtralExperts, dtype: torch.dtype) -> torch.Tensor:
        """Expert `e`'s matrix `w` (w1 gate, w2 down, w3 up) of the experts module named `experts`, to be quantized
        for compute in `dtype` (see `read`)."""
        n, h, i = mod.num_experts, mod.hidden_dim, mod.intermediate_dim
        fused = f"{experts}.{'down_proj' if w == 'w2' else 'gate_up_proj'}"
        if fused in self.file_of:  # transformers 5 layout: gate_up_proj rows are w1 then w3 (its conversion mapping)
            rows = {"w1": slice(0, i), "w3": slice(i, 2 * i), "w2": slice(0, h)}[w]
            full = (n, h, i) if w == "w2" else (n, 2 * i, h)
            return self.read(fused, full, dtype, (slice(e, e + 1), rows), to_quantize=True)[0]
        per = f"{experts}.{e}.{w}.weight"
        key = self.find(per, per.replace(".mlp.", ".block_sparse_moe."), fused)
        return self.read(key, (i, h) if w != "w2" else (h, i), dtype, to_quantize=True)

    def release(self) -> None:
        """Close the open shards (their mapped pages leave the process)."""
        self._open.clear()

    def check_all_used(self, ignore: set[str]) -> None:
        unused = sorted(k for k in set(self.file_of) - self.used - ignore if not k.endswith(IGNORED_SUFFIXES))
        if unused:
            raise InputError(self.file_of[unused[0]], unused[0],
                             f"unexpected tensor: config.json's model has no such weight ({len(unused)} such tensors)",
                             hint="is config.json the one of this checkpoint?")


def skeleton(config, dtype: torch.dtype) -> nn.Module:
    """The model of `config` with every parameter on the meta device (buffers such as rotary frequencies real)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _set_param(root: nn.Module, name: str, t: torch.Tensor, requires_grad: bool) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(owner) if owner else root, leaf, nn.Parameter(t, requires_grad=requires_grad))


def materialize_layer(layer: nn.Module, prefix: str, source, device: torch.device, dtype: torch.dtype, *,
                      lora_r: int, lora_alpha: float, lora_dropout: float = 0.0, expert_lora: bool = True,
                      router_lora: bool = True, blocksize: int = 64, placement: ExpertPlacement | None = None) -> None:
    """Fill one meta decoder layer from `source` (`Checkpoint` or any object with its `tensor`/`expert`):
    `nn.Linear` → NF4 `Linear4bit`, `MixtralExperts` → `NF4LoraExperts` (`PlacedExperts`, only this rank's
    experts read, with a `placement`), router → `LoraRouter` (fp32, LoRA when asked), every other parameter
    (norms) fp32; all on `device`."""
    for name, mod in list(layer.named_modules()):
        full = prefix + name
        if isinstance(mod, MixtralExperts):
            args = (mod.num_experts, mod.hidden_dim, mod.intermediate_dim, mod.act_fn,
                    lambda e, w, full=full, mod=mod: source.expert(full, e, w, mod, dtype), device, dtype,
                    lora_r if expert_lora else 0, lora_alpha, lora_dropout, blocksize)
            new = NF4LoraExperts(*args) if placement is None else PlacedExperts(placement, *args)
        elif isinstance(mod, MixtralTopKRouter) and not isinstance(mod, LoraRouter):
            weight = source.tensor(f"{full}.weight", tuple(mod.weight.shape), torch.float32).to(device)
            if not router_lora:
                mod.weight = nn.Parameter(weight, requires_grad=False)
                continue
            new = LoraRouter(mod, lora_r, lora_alpha, lora_dropout, weight=weight)
        elif type(mod) is nn.Linear:
            weight = source.tensor(f"{full}.weight", tuple(mod.weight.shape), dtype, to_quantize=True)
            bias = None if mod.bias is None else source.tensor(f"{full}.bias", tuple(mod.bias.shape), torch.float32)
            new = to_linear4bit(weight, device, dtype, blocksize, bias)
            del weight
        else:
            continue
        set_child(layer, name, new)
    for name, p in list(layer.named_parameters()):
        if p.is_meta:
            _set_param(layer, name, source.tensor(prefix + name, tuple(p.shape), torch.float32).to(device), p.requires_grad)


class WidenedEmbedding(nn.Embedding):
    """An `nn.Embedding` whose (frozen, 16-bit) rows are looked up as stored and returned in float32: the values
    an fp32 copy of the weight would give, at half its memory."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids).float()


class WidenedLinear(nn.Linear):
    """An `nn.Linear` (LM head) with a frozen 16-bit weight used as if it were fp32: widened per forward on CPU
    (the same values as an fp32 weight), as stored under autocast (which casts it to bf16 anyway)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if not torch.is_autocast_enabled(x.device.type):
            w = w.to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(w.dtype))


def materialize(model: nn.Module, source, device: torch.device, dtype: torch.dtype, *, progress: bool = True,
                frozen_embeddings: bool = False, **lora) -> None:
    """`materialize_layer` on every decoder layer in turn (shards released after each), then embeddings, final
    norm and LM head in fp32 (on GPU the forward runs under bf16 autocast, so trained rows keep fp32 master
    weights), tied embeddings re-tied, buffers moved to `device`. `frozen_embeddings` (they are not trained):
    a 16-bit checkpoint's embeddings and LM head stay as stored, widened to fp32 at use (`WidenedEmbedding`,
    `WidenedLinear`: the same outputs as fp32 weights). `lora`: `materialize_layer`'s keywords."""
    layers = model.get_decoder().layers
    prefix = next(n for n, m in model.named_modules() if m is layers) + "."
    for i, layer in enumerate(tqdm(layers, desc="load NF4", unit="layer", disable=not progress)):
        materialize_layer(layer, f"{prefix}{i}.", source, device, dtype, **lora)
        source.release()
    tied = tied_embeddings(model)
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    narrow = set()
    if frozen_embeddings and type(inp) is nn.Embedding and type(out) is nn.Linear:
        inp.__class__, out.__class__ = WidenedEmbedding, WidenedLinear  # no state of their own: the swap keeps all
        narrow = {n for n, m in model.named_modules() if m is inp or m is out}
    for name, p in list(model.named_parameters()):
        if p.is_meta and not (tied and name == output_embedding_name(model)):
            t = source.tensor(name, tuple(p.shape), torch.float32, keep_16bit=True).to(device)  # widened there
            _set_param(model, name, t if name.rpartition(".")[0] in narrow else t.float(), p.requires_grad)
    if tied:
        model.tie_weights()
    source.release()
    for owner in model.modules():
        for bname, b in list(owner.named_buffers(recurse=False)):
            if b.device != device:
                setattr(owner, bname, b.to(device))
    model.is_loaded_in_4bit = True  # peft then wraps our Linear4bit layers with its bnb LoRA layer


def tied_embeddings(model: nn.Module) -> bool:
    return bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))


def output_embedding_name(model: nn.Module) -> str:
    out = model.get_output_embeddings()
    return next(n for n, m in model.named_modules() if m is out) + ".weight"


def load_nf4(model_dir: str | Path, device: torch.device, dtype: torch.dtype, *, progress: bool = True,
             checkpoint: Checkpoint | None = None, frozen_embeddings: bool = False, **lora) -> nn.Module:
    """The model of `model_dir/config.json`, streamed from its safetensors into NF4 (see the module docstring).
    `checkpoint`: pass one to read its `meter` afterwards. `frozen_embeddings`: see `materialize`. `lora`:
    `materialize_layer`'s keywords (with `placement`, only this rank's experts are read)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise InputError(model_dir, None, "not a Hugging Face model folder (no config.json)")
    ckpt = checkpoint or Checkpoint(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    model = skeleton(config, dtype)
    materialize(model, ckpt, device, dtype, progress=progress, frozen_embeddings=frozen_embeddings, **lora)
    unread = {output_embedding_name(model)} if tied_embeddings(model) else set()
    if lora.get("placement") is not None and getattr(config, "num_local_experts", 0):
        unread |= lora["placement"].unheld_keys(ckpt.file_of, config.num_local_experts)
    ckpt.check_all_used(unread)
    release_free_memory()
    return model
