"""NF4 quantisation of every large weight (Mixtral experts included) and LoRA on experts and router.

transformers 5 stores Mixtral's experts as fused 3-D parameters that bitsandbytes' 4-bit loading does not
touch, and peft's `target_parameters` LoRA silently loses adapters once those parameters are quantized
(see NOTES.md). So the MoE block gets modules of our own:

- `NF4LoraExperts` replaces `MixtralExperts`: one bitsandbytes `Linear4bit` (NF4, double quantisation) per
  expert and matrix, `w1` (gate, I x H), `w2` (down, H x I) and `w3` (up, I x H) as in the released
  checkpoints, each with its own per-expert rank-r LoRA as in the paper: `w1_A (E, r, H)`, `w1_B (E, I, r)`,
  `w3_A (E, r, H)`, `w3_B (E, I, r)`, `w2_A (E, r, I)`, `w2_B (E, H, r)`. The forward sorts the (token,
  expert) pairs by expert and runs each matrix as one grouped GEMM over all experts (`grouped_linear`), each
  expert's NF4 matrix dequantized once per forward (and once more in the backward, never kept).
- `LoraRouter` replaces `MixtralTopKRouter` (it subclasses it, so transformers still records its logits for
  the load-balancing loss): frozen router weight plus `adapter_A (r, H)`, `adapter_B (E, r)`.

Attention (and a dense model's MLP) `nn.Linear` layers become `Linear4bit`; peft puts LoRA on them.
`train/loader.py` builds these modules while it streams the checkpoint, one tensor at a time.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import bitsandbytes as bnb
import torch
from bitsandbytes.functional import QuantState, dequantize_4bit, get_4bit_type, quantize_4bit, quantize_blockwise
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm
from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

# Names of the LoRA parameters that live in our own modules (peft's own contain "lora_").
EXPERT_MATRICES = ("w1", "w2", "w3")  # gate, down, up: the names of the released Mixtral checkpoints
EXPERT_ADAPTER_NAMES = tuple(f"{w}_{f}" for w in EXPERT_MATRICES for f in "AB")
MOE_ADAPTER_NAMES = (*EXPERT_ADAPTER_NAMES, "adapter_A", "adapter_B")


CHUNK_ELEMENTS = 2**18  # elements per quantize call: bitsandbytes' CPU kernel holds its scratch for all at once


def quantize_nf4(w: torch.Tensor, blocksize: int = 64, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, QuantState]:
    """bitsandbytes' `quantize_4bit(w.to(dtype), blocksize, compress_statistics=True, quant_type="nf4")`, bit for bit,
    with its kernel run on row chunks: the first-level blocks never straddle rows that are a multiple of `blocksize`
    long, and the second level (8-bit absmax around their mean) runs on the joined absmax as bitsandbytes does.
    Its CPU kernel otherwise holds scratch for the whole matrix at once (measured from a bf16 input on one thread:
    ~14 bytes per element, 0.11 GiB for one 8192 x 1024 matrix; 2^18-element chunks: under 4 MiB).
    `dtype`: the dtype the weight dequantizes to (default `w`'s); a 16-bit `w` with `dtype` float32 quantizes to
    the same bits as `w.float()` (the kernel widens each chunk), without a float32 copy of the whole matrix."""
    w = w.contiguous()
    rows = max(1, CHUNK_ELEMENTS // max(1, w.shape[-1])) if w.dim() == 2 and w.shape[-1] % blocksize == 0 else 0
    if not rows or rows >= w.shape[0]:
        packed, state = quantize_4bit(w, blocksize=blocksize, compress_statistics=True, quant_type="nf4")
        state.dtype = dtype or w.dtype
        return packed, state
    packed = torch.empty(w.numel() // 2, 1, dtype=torch.uint8, device=w.device)
    absmax = torch.empty(w.numel() // blocksize, dtype=torch.float32, device=w.device)
    for i in range(0, w.shape[0], rows):  # each chunk's output written in place: no second copy of the whole
        q, a = torch.ops.bitsandbytes.quantize_4bit.default(w[i:i + rows], blocksize, "nf4", torch.uint8)
        start = i * w.shape[1]
        packed[start // 2:start // 2 + q.shape[0]], absmax[start // blocksize:start // blocksize + a.shape[0]] = q, a
    offset = absmax.mean()
    qabsmax, state2 = quantize_blockwise(absmax - offset, blocksize=256)
    return packed, QuantState(absmax=qabsmax, shape=w.shape, dtype=dtype or w.dtype, blocksize=blocksize,
                              code=get_4bit_type("nf4", device=w.device), quant_type="nf4", offset=offset, state2=state2)


def to_linear4bit(weight: torch.Tensor, device: torch.device, compute_dtype: torch.dtype, blocksize: int = 64,
                  bias: torch.Tensor | None = None) -> bnb.nn.Linear4bit:
    """A frozen NF4 (double-quantized) `Linear4bit` holding `weight (out, in)`: the 16-bit tensor is moved to
    `device` and quantized there (`quantize_nf4`, equal to bitsandbytes' `quantize_4bit` of `weight` in
    `compute_dtype`: pass a 16-bit weight as stored where `compute_dtype` only widens it)."""
    out_f, in_f = weight.shape
    lin = bnb.nn.Linear4bit(in_f, out_f, bias=bias is not None, compute_dtype=compute_dtype, compress_statistics=True,
                            quant_type="nf4", device="meta")
    packed, state = quantize_nf4(weight.detach().to(device), blocksize, compute_dtype)
    lin.weight = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=state, quant_type="nf4",
                                   compress_statistics=True, blocksize=blocksize, bnb_quantized=True, module=lin)
    lin.quant_state = state
    if bias is not None:
        lin.bias = nn.Parameter(bias.detach().float(), requires_grad=False)
    # bitsandbytes' CPU inference path repacks the weight in place with bf16 scales (lossy, and dequantize_4bit
    # no longer reads it): keep one NF4 layout so eval logits, training and `train merge` agree.
    lin.support_avx512bf16_for_cpu = False
    return lin.to(device)


def dequantized(lin: nn.Module) -> torch.Tensor:
    """The float weight of a `Linear4bit` (or a plain `nn.Linear`)."""
    w = lin.weight
    if isinstance(w, bnb.nn.Params4bit):
        return dequantize_4bit(w.data, w.quant_state).to(lin.compute_dtype or torch.float32)
    return w.data


def grouped_mm_runs(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether torch's grouped GEMM (`torch.nn.functional.grouped_mm`) takes `x` and `w` (G, out, in): rows of
    whole 16-byte multiples (it refuses others: e.g. LoRA rank 4 in bf16), on CPU (its own implementation) or in
    bf16 on a CUDA GPU of compute capability 8.0 or more (its documented kernels)."""
    if any(d * w.element_size() % 16 for d in w.shape[-2:]):
        return False
    if x.device.type == "cpu":
        return True
    return (x.device.type == "cuda" and x.dtype == w.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(x.device) >= (8, 0))


def grouped_linear(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """`F.linear` of each group of rows of `x` (N, in) with its group's matrix `w[g]` (out, in); `offs` (G,) int32:
    the end of each group's rows, groups in order. One grouped GEMM where the hardware has it, else a loop over
    the groups (bit for bit the same on CPU, tested). Under CUDA autocast it computes in autocast's dtype, as
    `F.linear` does."""
    if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        x, w = x.to(torch.get_autocast_dtype("cuda")), w.to(torch.get_autocast_dtype("cuda"))
    if grouped_mm_runs(x, w):
        return F.grouped_mm(x, w.transpose(-2, -1), offs=offs)
    ends = offs.tolist()
    return torch.cat([F.linear(x[s:t], w[g]) for g, (s, t) in enumerate(zip([0, *ends[:-1]], ends))])


def dequantize_experts(mats: nn.ModuleList, dtype: torch.dtype) -> torch.Tensor:
    """Every expert's NF4 matrix of one kind (a `ModuleList` of `Linear4bit`) as one (E, out, in) tensor in `dtype`."""
    first = mats[0].weight
    out = torch.empty(len(mats), *first.quant_state.shape, dtype=first.quant_state.dtype, device=first.device)
    for e, lin in enumerate(mats):
        if out.is_cuda:
            dequantize_4bit(lin.weight.data, lin.weight.quant_state, out=out[e])
        else:  # bitsandbytes has no CPU kernel that writes into `out`
            out[e] = dequantize_4bit(lin.weight.data, lin.weight.quant_state)
    return out.to(dtype)


class NF4GroupedLinear(torch.autograd.Function):
    """`grouped_linear(x, dequantized NF4 matrices, offs)` for frozen matrices: dequantized in the forward and
    again in the backward (the input gradient), never saved, as bitsandbytes' own 4-bit matmul does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, offs: torch.Tensor, mats: nn.ModuleList) -> torch.Tensor:
        ctx.mats = mats
        ctx.save_for_backward(offs)
        return grouped_linear(x, dequantize_experts(mats, x.dtype), offs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (offs,) = ctx.saved_tensors
        w = dequantize_experts(ctx.mats, grad.dtype)
        return grouped_linear(grad.contiguous(), w.transpose(-2, -1), offs), None, None


def _init_lora_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    """peft's default: A ~ kaiming-uniform(a=sqrt(5)) per matrix, B = 0 (the adapter starts as a no-op)."""
    for m in a.view(-1, *a.shape[-2:]):
        nn.init.kaiming_uniform_(m, a=math.sqrt(5))
    nn.init.zeros_(b)


class LoraFactors(nn.Module):
    """Shared pieces of our LoRA modules: rank, scaling, dropout and adapter dtype (fp32, like peft)."""

    def _setup_lora(self, r: int, alpha: float, dropout: float) -> None:
        self.r, self.lora_alpha = r, alpha
        self.scaling = alpha / r if r else 0.0
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _lora(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = self.lora_dropout(x).to(a.dtype)
        return (F.linear(F.linear(h, a), b) * self.scaling).to(x.dtype)


class NF4LoraExperts(LoraFactors):
    """`MixtralExperts` with NF4 expert weights and optional per-expert LoRA on each of w1, w2 and w3.

    `read(e, w)` gives expert `e`'s matrix `w` ("w1", "w2", "w3") as a 16-bit tensor; each is quantized onto
    `device` before the next is read, so at most one expert matrix is ever held in 16-bit."""

    def __init__(self, num_experts: int, hidden_dim: int, intermediate_dim: int, act_fn: Callable,
                 read: Callable[[int, str], torch.Tensor], device: torch.device, compute_dtype: torch.dtype,
                 r: int = 0, alpha: float = 0.0, dropout: float = 0.0, blocksize: int = 64):
        super().__init__()
        self.num_experts, self.hidden_dim, self.intermediate_dim = num_experts, hidden_dim, intermediate_dim
        self.compute_dtype = compute_dtype
        self.act_fn = act_fn
        for w in EXPERT_MATRICES:
            setattr(self, w, nn.ModuleList(to_linear4bit(read(e, w), device, compute_dtype, blocksize)
                                           for e in range(num_experts)))
        self._setup_lora(r, alpha, dropout)
        if r:
            for w, (out_f, in_f) in self.shapes().items():
                a = nn.Parameter(torch.empty(num_experts, r, in_f, device=device, dtype=torch.float32))
                b = nn.Parameter(torch.empty(num_experts, out_f, r, device=device, dtype=torch.float32))
                _init_lora_pair(a, b)
                setattr(self, f"{w}_A", a)
                setattr(self, f"{w}_B", b)

    def shapes(self) -> dict[str, tuple[int, int]]:
        """(out, in) of each expert matrix."""
        h, i = self.hidden_dim, self.intermediate_dim
        return {"w1": (i, h), "w2": (h, i), "w3": (i, h)}

    def _proj(self, x: torch.Tensor, offs: torch.Tensor, w: str) -> torch.Tensor:
        """Rows of `x` (sorted by expert, `offs` the ends of the experts' runs) through matrix `w` of their expert
        plus its LoRA; dtypes as `Linear4bit` + peft: the NF4 product in the compute dtype, LoRA in fp32."""
        y = NF4GroupedLinear.apply(x.to(self.compute_dtype), offs, getattr(self, w)).to(x.dtype)
        if self.r:
            h = self.lora_dropout(x).to(torch.float32)
            a, b = getattr(self, f"{w}_A"), getattr(self, f"{w}_B")
            y = y + (grouped_linear(grouped_linear(h, a, offs), b, offs) * self.scaling).to(x.dtype)
        return y

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        """transformers' `MixtralExperts` arithmetic (top_k_index < num_experts: our `LoraRouter`'s), grouped:
        no Python loop over tokens or experts, no host synchronisation where torch's grouped GEMM runs."""
        k = top_k_index.shape[-1]
        flat = top_k_index.reshape(-1)
        order = torch.argsort(flat, stable=True)  # (token, slot) pairs by expert; tokens ascending within one
        offs = torch.bincount(flat, minlength=self.num_experts).cumsum(0).to(torch.int32)
        token = order // k
        x = hidden_states[token]
        h = self.act_fn(self._proj(x, offs, "w1")) * self._proj(x, offs, "w3")
        y = self._proj(h, offs, "w2") * top_k_weights.reshape(-1)[order, None]
        return torch.zeros_like(hidden_states).index_add_(0, token, y.to(hidden_states.dtype))


class LoraRouter(MixtralTopKRouter, LoraFactors):
    """Mixtral's top-k router with a frozen weight and a LoRA update of its logits."""

    def __init__(self, router: MixtralTopKRouter, r: int, alpha: float, dropout: float = 0.0,
                 weight: torch.Tensor | None = None):
        """`weight`: the router weight to hold (default: `router`'s own; the loader passes the one it read)."""
        nn.Module.__init__(self)
        self.top_k, self.num_experts, self.hidden_dim = router.top_k, router.num_experts, router.hidden_dim
        weight = router.weight.data if weight is None else weight
        self.weight = nn.Parameter(weight, requires_grad=False)
        self._setup_lora(r, alpha, dropout)
        dev = weight.device
        self.adapter_A = nn.Parameter(torch.empty(r, self.hidden_dim, device=dev, dtype=torch.float32))
        self.adapter_B = nn.Parameter(torch.empty(self.num_experts, r, device=dev, dtype=torch.float32))
        _init_lora_pair(self.adapter_A, self.adapter_B)

    def forward(self, hidden_states: torch.Tensor):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        router_logits = F.linear(hidden_states, self.weight) + self._lora(hidden_states, self.adapter_A, self.adapter_B)
        router_probs = F.softmax(router_logits.float(), dim=-1)
        router_top_value, router_indices = torch.topk(router_probs, self.top_k, dim=-1)
        router_top_value /= router_top_value.sum(dim=-1, keepdim=True)
        return router_logits, router_top_value, router_indices


def set_child(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def enable_moe_adapters(model: nn.Module) -> None:
    """Make our expert/router LoRA factors trainable (peft freezes every parameter it does not own)."""
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] in MOE_ADAPTER_NAMES:
            p.requires_grad_(True)


def moe_adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our expert/router LoRA factors, keyed by their path below the decoder (`layers.N.mlp....`)."""
    out = {}
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] in MOE_ADAPTER_NAMES:
            out[name[name.index("layers."):]] = p.detach().float().cpu().contiguous()
    return out


def load_moe_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = {name[name.index("layers."):]: p for name, p in model.named_parameters()
           if name.rsplit(".", 1)[-1] in MOE_ADAPTER_NAMES}
    if set(own) != set(state):
        missing, extra = sorted(set(own) - set(state))[:3], sorted(set(state) - set(own))[:3]
        raise ValueError(f"expert/router adapter does not fit the model: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for k, p in own.items():
            p.copy_(state[k])


def module_type(name: str) -> str:
    """Coarse module type of a parameter for the setup summary."""
    parts = name.split(".")
    for key, label in (("experts", "experts"), ("gate", "router"), ("embed_tokens", "embed_tokens"),
                       ("lm_head", "lm_head"), ("self_attn", "attention"), ("mlp", "mlp")):
        if key in parts:
            return label
    return "norm" if any("norm" in p for p in parts) else "other"


def setup_summary(model: nn.Module, type_of: Callable[[str], str] = module_type) -> dict:
    """Bytes of weights per module type and dtype (4-bit counts its packed bytes + quantisation constants),
    parameters held 16-bit or wider in layers that should be 4-bit, and trainable parameters per module type."""
    weight_bytes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    trainable: dict[str, int] = defaultdict(int)
    frozen_float_params: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        kind = type_of(name)
        if p.requires_grad:
            trainable[kind] += p.numel()
            continue
        if isinstance(p, bnb.nn.Params4bit):
            qs = p.quant_state
            extra = qs.absmax.numel() * qs.absmax.element_size()
            if qs.nested:
                extra += qs.state2.absmax.numel() * 4 + qs.state2.code.numel() * 4
            weight_bytes[kind]["nf4"] += p.numel() * p.element_size() + extra
        else:
            weight_bytes[kind][str(p.dtype).removeprefix("torch.")] += p.numel() * p.element_size()
            frozen_float_params[kind] += p.numel()
    return {
        "weight_bytes": {k: dict(v) for k, v in sorted(weight_bytes.items())},
        "frozen_float_params": dict(sorted(frozen_float_params.items())),
        "trainable_params": dict(sorted(trainable.items())),
        "trainable_total": sum(trainable.values()),
    }
