"""`zhdata pack` stage: stream inputs through a mode's encoder into split files, resumably, then cut blocks.

Into a local folder, the pack is appended in place and `progress.json` there records the pieces appended. Into an
object store (`s3://...`, any URI of `zhdata.fs`), where nothing can be appended to: each piece's split files are
written by its task to the store, `OUT/.pack-work/piece-NNNNNN/`, with `piece-NNNNNN.json` (its counts) last as
the mark that it is finished, beside the plan (`OUT/.pack-work/plan.json`); the driver appends the pieces in input
order into a local temporary folder (`TMPDIR`: as much disk as the packed output, SFT twice that while it is
finished), finishes the blocks there, uploads the files and the manifest last, then removes `.pack-work`. A rerun
from any machine skips the pieces finished on the store.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .. import fs
from ..engine import Engine, LocalEngine, warn_if_unshared
from ..errors import ErrorPolicy, InputError
from ..manifest import MANIFEST, Counts, Manifest
from ..readers import ReadOptions, expand_inputs, iter_records, plan_pieces
from ..shards import check_output_folder, run_difference, run_inputs
from .bfd import best_fit_decreasing
from .pretrain import PretrainEncoder
from .sft import SftEncoder
from .store import INDEX_DTYPE, SPLITS, SplitWriter, open_array, split_file, token_dtype, write_blocks
from .tokfolder import TokenizerFolder, load_tokenizer_folder

PROGRESS = "progress.json"
WORK = ".pack-work"  # each piece's split files, written by the task that packs it, until appended (remote: until uploaded)
PLAN = "plan.json"  # in WORK on an object store: the parameters of the run the pieces there belong to
LAYOUT_VERSION = 1


@dataclass
class PackOptions:
    mode: str  # "pt" | "sft"
    block_size: int = 1024
    val_fraction: float = 0.01
    bos: bool | None = None  # pt: None = as the tokenizer's add_bos_token says
    packing: str = "bfd"  # sft: "none" | "bfd"
    overlong: str = "truncate"  # sft: "truncate" | "drop"
    max_context: int | None = None
    batch_docs: int = 2048
    batch_chars: int = 4_000_000
    on_error: str = "stop"
    overwrite: bool = False
    progress: bool = True
    read: ReadOptions = ReadOptions()


def _check_options(tok: TokenizerFolder, o: PackOptions) -> None:
    for name, value, allowed in (("mode", o.mode, ("pt", "sft")), ("packing", o.packing, ("none", "bfd")),
                                 ("overlong", o.overlong, ("truncate", "drop"))):
        if value not in allowed:
            raise ValueError(f"--{name} must be one of {', '.join(allowed)}, not {value!r}")
    if o.block_size < 2:
        raise InputError(tok.path, None, f"block size {o.block_size} is too small")
    limit, what = (o.max_context, "--max-context") if o.max_context else (tok.max_length, "the tokenizer's model_max_length")
    if limit and o.block_size > limit:
        raise InputError(tok.path, None, f"block size {o.block_size} is larger than the model's context of {limit} tokens ({what})",
                         "lower --block-size, or raise --max-context if the model really takes longer sequences")
    if not 0 <= o.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), not {o.val_fraction}")


def _params(tok: TokenizerFolder, o: PackOptions, identity: list[list[str]]) -> dict[str, Any]:
    """What identifies a pack: inputs by content (`run_inputs`), the tokenizer, and the settings that shape the output."""
    p = {"mode": o.mode, "block_size": o.block_size, "val_fraction": o.val_fraction, "tokenizer": tok.fingerprint,
         "inputs": identity, **o.read.params()}
    if o.mode == "pt":
        p["bos"] = o.bos
    else:
        p.update(packing=o.packing, overlong=o.overlong)
    return p


def _prepare_out(out: Path, params: dict, overwrite: bool) -> dict | None:
    """Saved progress to resume from (None: start afresh); refuses to mix runs with different settings."""
    out.mkdir(parents=True, exist_ok=True)
    ours = [p for p in out.iterdir() if p.suffix == ".bin" or p.name in (PROGRESS, MANIFEST)]
    if overwrite:
        for p in ours:
            p.unlink()
        return None
    if (out / MANIFEST).exists():
        raise InputError(out, None, "already holds a finished pack", "use --overwrite to pack again, or another output folder")
    prog = out / PROGRESS
    if not prog.exists():
        if ours:
            raise InputError(out, None, "holds packed files but no progress.json", "use --overwrite or another output folder")
        return None
    state = json.loads(prog.read_text(encoding="utf-8"))
    if state["params"] != params:
        raise InputError(out, None, f"holds an unfinished pack of other inputs or settings: {run_difference(state['params'], params)}",
                         "use --overwrite to start again, or rerun with the same inputs and settings to resume")
    return state


def _prepare_store(out: str, params: dict, overwrite: bool) -> None:
    """`_prepare_out` for an object store: the run's plan beside its finished pieces in `OUT/.pack-work`."""
    plan, ours = fs.join(out, WORK, PLAN), [n for n in fs.listdir(out) if n.endswith(".bin") or n == MANIFEST]
    if overwrite:
        for n in ours:
            fs.remove(fs.join(out, n))
        fs.rmtree(fs.join(out, WORK))
    elif MANIFEST in ours:
        raise InputError(out, None, "already holds a finished pack", "use --overwrite to pack again, or another output folder")
    elif fs.exists(plan):
        old = json.loads(fs.read_text(plan))
        if old != params:
            raise InputError(out, None, f"holds an unfinished pack of other inputs or settings: {run_difference(old, params)}",
                             "use --overwrite to start again, or rerun with the same inputs and settings to resume")
    elif ours:
        raise InputError(out, None, "holds packed files but no plan of the run that wrote them",
                         "use --overwrite or another output folder")
    fs.write_text(plan, json.dumps(params, ensure_ascii=False))


def _save_progress(out: Path, state: dict) -> None:
    tmp = out / (PROGRESS + ".tmp")
    tmp.write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out / PROGRESS)


def _batches(piece, policy: ErrorPolicy, o: PackOptions):
    batch, chars = [], 0
    for where, rec in iter_records(piece, policy=policy, read=o.read):
        batch.append((where, rec))
        text = rec.get("text") if isinstance(rec, dict) else None
        chars += len(text) if isinstance(text, str) else 256
        if len(batch) >= o.batch_docs or chars >= o.batch_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _gather(arr: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arr[s:s+n] for each (s, n)."""
    total = int(lengths.sum())
    offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return arr[offsets + np.arange(total)]


def _finish_split(out: Path, split: str, o: PackOptions, dtype: np.dtype) -> dict[str, Any]:
    """Write the block index (SFT: order examples into blocks first) and return the split's figures."""
    B = o.block_size
    if o.mode == "sft":
        stage = {k: split_file(out, split, "stage." + k) for k in ("tokens", "docs", "labels")}
        if o.packing == "none":  # already one example per block: link the staged files (stage removed at the end)
            for k, p in stage.items():
                split_file(out, split, k).unlink(missing_ok=True)
                os.link(p, split_file(out, split, k))
        else:
            _pack_bfd(out, split, stage, dtype, B)
    tokens = split_file(out, split, "tokens").stat().st_size // dtype.itemsize
    docs = open_array(split_file(out, split, "docs"), INDEX_DTYPE)
    if o.mode == "pt":
        bounds = np.append(np.arange(0, tokens, B, dtype=INDEX_DTYPE), tokens)
    elif o.packing == "none":
        bounds = np.append(np.asarray(docs), tokens)
    else:
        bounds = np.fromfile(split_file(out, split, "blocks"), dtype=INDEX_DTYPE)
    if o.mode == "pt" or o.packing == "none":
        write_blocks(out, split, bounds)
    blocks = len(bounds) - 1
    slots = blocks * B
    info = {"documents": int(len(docs)), "tokens": int(tokens), "blocks": blocks, "padding_tokens": int(slots - tokens),
            "efficiency": round(tokens / slots, 4) if slots else None}
    if o.mode == "sft":
        info["loss_tokens"] = int(np.asarray(open_array(split_file(out, split, "labels"), np.uint8), dtype=np.int64).sum())
    return info


def _pack_bfd(out: Path, split: str, stage: dict[str, Path], dtype: np.dtype, B: int, chunk: int = 1 << 22) -> None:
    """Reorder staged examples into best-fit-decreasing blocks, chunk by chunk (memory: the index, not the tokens)."""
    tokens, labels = open_array(stage["tokens"], dtype), open_array(stage["labels"], np.uint8)
    starts = np.fromfile(stage["docs"], dtype=INDEX_DTYPE)
    lengths = np.diff(np.append(starts, len(tokens)))
    bins = best_fit_decreasing(lengths, B)
    order = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=len(lengths))
    new_len = lengths[order]
    (np.cumsum(new_len) - new_len).astype(INDEX_DTYPE).tofile(split_file(out, split, "docs"))  # no start when empty
    block_tokens = np.fromiter((int(lengths[b].sum()) for b in bins), dtype=np.int64, count=len(bins))
    np.concatenate(([0], np.cumsum(block_tokens))).astype(INDEX_DTYPE).tofile(split_file(out, split, "blocks"))
    cum = np.cumsum(new_len)
    with open(split_file(out, split, "tokens"), "wb") as ft, open(split_file(out, split, "labels"), "wb") as fl:
        i = 0
        while i < len(order):
            j = max(int(np.searchsorted(cum, (cum[i - 1] if i else 0) + chunk, side="right")), i + 1)
            idx = order[i:j]
            ft.write(_gather(tokens, starts[idx], lengths[idx]).astype(dtype).tobytes())
            fl.write(_gather(labels, starts[idx], lengths[idx]).tobytes())
            i = j
    del tokens, labels


def encode_piece(task: tuple) -> dict[str, Any]:
    """The per-piece stage, run by an engine: one input piece through the mode's encoder into its own split files
    in `spill` (a SplitWriter per split, bounded memory), returning the piece's counts. Pure but for that folder,
    which it starts afresh, so a retried task leaves nothing of its first attempt. A remote `spill` is written in a
    local temporary folder first (disk: one piece's tokens), uploaded, and marked finished by `SPILL.json` last."""
    piece, tok_path, fingerprint, o, spill = task
    if not fs.is_remote(spill):
        return _encode_into(piece, tok_path, fingerprint, o, Path(spill))
    with tempfile.TemporaryDirectory(prefix="zhdata-pack-piece-") as tmp:
        res = _encode_into(piece, tok_path, fingerprint, o, Path(tmp) / "piece")
        for f in sorted((Path(tmp) / "piece").iterdir()):
            fs.upload(f, fs.join(spill, f.name))
    fs.write_text(f"{spill}.json", json.dumps(res, ensure_ascii=False, default=str))
    return res


def _encode_into(piece, tok_path: str, fingerprint: str, o: PackOptions, spill: Path) -> dict[str, Any]:
    encoder = _encoder(tok_path, fingerprint, o)
    shutil.rmtree(spill, ignore_errors=True)
    spill.mkdir(parents=True)
    writers = {s: SplitWriter(spill, s, _DTYPE[tok_path, fingerprint], encoder.with_mask) for s in SPLITS}
    policy, counts, stats = ErrorPolicy(o.on_error), Counts(), Counter()
    try:
        for batch in _batches(piece, policy, o):
            for split, (ids, lengths, mask) in encoder.encode(batch, piece.path, policy, counts, stats).items():
                writers[split].append(ids, lengths, mask)
    finally:
        for w in writers.values():
            w.close()
    counts.records_in += sum(policy.skipped.values())  # records the policy skipped are read and dropped
    counts.dropped.update(policy.skipped)
    return {"counts": counts.to_dict(), "stats": dict(stats), "examples": policy.examples, "empty_files": policy.empty_files}


_ENCODERS: dict[tuple, Any] = {}  # per process: the encoder of the last tokenizer and options, built once
_DTYPE: dict[tuple, np.dtype] = {}


def _encoder(tok_path: str, fingerprint: str, o: PackOptions, tok: TokenizerFolder | None = None):
    """The encoder for these options, built once per process (from `tok` if given, else loaded from `tok_path`)."""
    key = (tok_path, fingerprint, o.mode, o.val_fraction, o.bos, o.block_size, o.overlong)
    if key not in _ENCODERS:
        tok = tok or load_tokenizer_folder(tok_path)
        if tok.fingerprint != fingerprint:
            raise InputError(tok_path, None, "the tokenizer changed while packing", "rerun to pack with the new one")
        try:
            encoder = PretrainEncoder(tok, o.val_fraction, o.bos) if o.mode == "pt" else SftEncoder(tok, o.val_fraction, o.block_size, o.overlong)
        except ValueError as e:
            raise InputError(tok.path, None, str(e)) from None
        _ENCODERS.clear()
        _ENCODERS[key] = encoder
        _DTYPE[tok_path, fingerprint] = token_dtype(tok.vocab_size)
    return _ENCODERS[key]


def _stream(pieces: list, tok: TokenizerFolder, engine: Engine, writers: dict[str, SplitWriter], state: dict, out: Path,
            o: PackOptions, policy: ErrorPolicy, counts: Counts, stats: Counter, store: str | None = None) -> None:
    """Encode every unfinished piece on `engine`; append the pieces in input order and, after each, sync and record
    progress. With `store` (the remote `.pack-work`), pieces go there and those already finished there are reused."""
    done = set(state["done"])
    todo = [(k, p) for k, p in enumerate(pieces) if f"{p.path}#{p.part}" not in done]
    if store is None:
        spills = {k: str(out / WORK / f"piece-{k:06d}") for k, _ in todo}
        ready: set[str] = set()
    else:
        spills = {k: fs.join(store, f"piece-{k:06d}") for k, _ in todo}
        ready = {n[: -len(".json")] for n in fs.listdir(store) if n.startswith("piece-") and n.endswith(".json")}
    tasks = [(p, str(tok.path), tok.fingerprint, o, spills[k]) for k, p in todo if fs.name(spills[k]) not in ready]
    bar = tqdm(total=len(pieces), initial=len(pieces) - len(todo), unit="piece", disable=not o.progress, desc=f"pack {o.mode}")
    if len(tasks) < len(todo):
        bar.write(f"resuming: {len(todo) - len(tasks)} of {len(pieces)} pieces already packed in {store}")
    results = engine.map(encode_piece, tasks)
    try:
        for k, piece in todo:
            spill = spills[k]
            if fs.name(spill) in ready:
                res = json.loads(fs.read_text(f"{spill}.json"))
            else:
                res = next(results)
            if store is None:
                for split, w in writers.items():
                    w.append_split(Path(spill), split)
                shutil.rmtree(spill)
            else:  # fetched one piece at a time into the local folder, appended, deleted; kept on the store until the end
                local = out / WORK / fs.name(spill)
                local.mkdir(parents=True, exist_ok=True)
                for name in fs.listdir(spill):
                    fs.download(fs.join(spill, name), local / name)
                for split, w in writers.items():
                    w.append_split(local, split)
                shutil.rmtree(local)
            counts.merge(Counts.from_dict(res["counts"]))
            stats.update(res["stats"])
            policy.examples.extend(res["examples"][: max(0, 20 - len(policy.examples))])
            policy.empty_files.extend(res["empty_files"])
            for w in writers.values():
                w.sync()
            state["done"].append(f"{piece.path}#{piece.part}")
            state.update(sizes={s: w.sizes() for s, w in writers.items()}, counts=counts.to_dict(), stats=dict(stats))
            _save_progress(out, state)
            bar.set_postfix(tokens=f"{sum(w.n_tokens for w in writers.values()):,}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
        for w in writers.values():
            w.close()
    shutil.rmtree(out / WORK, ignore_errors=True)


def _summary(tok: TokenizerFolder, o: PackOptions, dtype: np.dtype, splits: dict, counts: Counts, stats: Counter) -> dict:
    """manifest.extra["pack"]: layout, token and block counts, padding, truncation, tokens per character."""
    total = sum(v["tokens"] for v in splits.values())
    blocks = sum(v["blocks"] for v in splits.values())
    info = {
        "mode": o.mode, "block_size": o.block_size, "layout_version": LAYOUT_VERSION, "dtype": dtype.name,
        "val_fraction": o.val_fraction, "tokens": total, "blocks": blocks, "padding_tokens": blocks * o.block_size - total,
        "efficiency": round(total / (blocks * o.block_size), 4), "chars": stats["chars"], "text_tokens": stats["text_tokens"],
        "tokens_per_char": round(stats["text_tokens"] / stats["chars"], 4) if stats["chars"] else None,
        "truncated": counts.modified.get("truncated", 0), "splits": splits,
    }
    if o.mode == "pt":
        info.update(bos=o.bos, bos_id=tok.token_id("bos_token"), eos_id=tok.token_id("eos_token"))
    else:
        info.update(packing=o.packing, overlong=o.overlong, loss_tokens=stats["loss_tokens"])
    return info


def pack(inputs: list[str | Path], tokenizer: str | Path, out: str | Path, o: PackOptions,
         engine: Engine | None = None) -> Manifest:
    """Pack `inputs` with the tokenizer folder into `out` (resuming an interrupted run); returns the manifest. The
    pieces are tokenised on `engine` (default: this process), appended in input order."""
    tok = load_tokenizer_folder(tokenizer)
    _check_options(tok, o)
    if o.mode == "pt" and o.bos is None:
        o.bos = bool(tok.config.get("add_bos_token", False)) and tok.token_id("bos_token") is not None
    policy = ErrorPolicy(o.on_error)
    out = fs.local(out)
    check_output_folder(out, inputs)
    if engine is not None:
        warn_if_unshared(engine, [*inputs, out, tok.path])  # each task loads the tokenizer folder itself
    files = expand_inputs(inputs, policy=policy)
    pieces = plan_pieces(files, read=o.read)
    described, identity = run_inputs(files)
    params = _params(tok, o, identity)
    fresh = {"params": params, "done": [], "sizes": None, "counts": None, "stats": {}}
    if isinstance(out, Path):
        return _pack(tok, o, inputs, files, pieces, described, params, _prepare_out(out, params, o.overwrite) or fresh, out, policy, engine)
    _prepare_store(out, params, o.overwrite)
    with tempfile.TemporaryDirectory(prefix="zhdata-pack-") as tmp:
        m = _pack(tok, o, inputs, files, pieces, described, params, fresh, Path(tmp), policy, engine, store=fs.join(out, WORK))
        for f in sorted(Path(tmp).glob("*.bin")):
            fs.upload(f, fs.join(out, f.name))
    m.write(out)  # last: a folder with a manifest holds a finished pack
    fs.rmtree(fs.join(out, WORK))
    return m


def _pack(tok: TokenizerFolder, o: PackOptions, inputs: list, files: list, pieces: list, described: list, params: dict, state: dict,
          out: Path, policy: ErrorPolicy, engine: Engine | None, store: str | None = None) -> Manifest:
    """Pack into the local folder `out` from `state` (with `store`: pieces kept on an object store, see the module doc)."""
    encoder = _encoder(str(tok.path), tok.fingerprint, o, tok)  # its errors (no EOS, no BOS) before anything runs
    dtype = token_dtype(tok.vocab_size)
    writers = {s: SplitWriter(out, s, dtype, encoder.with_mask, "stage." if o.mode == "sft" else "") for s in SPLITS}
    if state["sizes"]:
        for s in SPLITS:
            writers[s].truncate(state["sizes"][s])
    counts = Counts.from_dict(state["counts"]) if state["counts"] else Counts()
    stats: Counter = Counter(state["stats"])
    m = Manifest(f"zhdata pack --mode {o.mode}", {**params, "inputs": [str(f) for f in files]})
    m.inputs.extend(described)
    engine = engine or LocalEngine(1)
    _stream(pieces, tok, engine, writers, state, out, o, policy, counts, stats, store)
    if counts.records_out == 0:
        raise InputError(inputs[0], None, f"no {'document' if o.mode == 'pt' else 'conversation'} could be packed "
                         f"(read {counts.records_in}, dropped {dict(counts.dropped)})")
    splits = {s: _finish_split(out, s, o, dtype) for s in SPLITS}
    m.counts = counts
    m.warnings += policy.examples + [f"empty file: {f}" for f in policy.empty_files] + policy.skipped_files
    m.extra["tokenizer"] = tok.describe()
    m.extra["engine"] = engine.describe()
    m.extra["pack"] = _summary(tok, o, dtype, splits, counts, stats)
    m.write(out)
    for p in [out / PROGRESS, *out.glob("*.stage.*.bin")]:  # kept until now so that a crash while finishing can resume
        p.unlink()
    return m
