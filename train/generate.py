"""`train generate MODEL --prompts FILE -o answers.jsonl`: batch generation from a `train run` folder or a model folder.

Prompt files (JSONL, JSON, Parquet or text; compressed too), one prompt per record:
- `messages` (the `zhdata instruct` schema: a list of `{role, content}`, optional `system`): the conversation up
  to its last user turn is rendered with the tokenizer's chat template; assistant turns after it are the
  reference answer (kept as `reference`, never shown to the model);
- `prompt` (optional `system`): one user turn, rendered with the chat template;
- `text`, or a line of a .txt file: continued as it is (BOS + text, no chat template).
A record's `id` names its answer (else FILE:LINE), so answers of several models match by id (`train arena`).

Greedy decoding (`--temperature 0`, the default) is deterministic; sampling uses temperature, top-p (and
top-k) with `--seed` (same seed and batch size, same answers). Prompts are batched with left padding and a
KV cache (transformers `generate`); an answer ends at EOS, at a stop string (cut off, not part of the
answer) or after `--max-new-tokens`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from zhdata.errors import ErrorPolicy, InputError
from zhdata.manifest import Counts, Manifest, cli_params
from zhdata.readers import expand_inputs, iter_records

CHUNK_BATCHES = 16  # prompts are read this many batches at a time and sorted by length inside the chunk


@dataclass
class GenSettings:
    """Decoding settings; temperature 0 is greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    batch_size: int = 8
    chat_template: bool = True

    def check(self) -> None:
        for name, ok in (("--max-new-tokens", self.max_new_tokens >= 1), ("--temperature", self.temperature >= 0),
                         ("--top-p", 0 < self.top_p <= 1), ("--top-k", self.top_k >= 0),
                         ("--repetition-penalty", self.repetition_penalty > 0), ("--batch-size", self.batch_size >= 1)):
            if not ok:
                raise InputError(name, None, f"out of range: {getattr(self, name[2:].replace('-', '_'))}")
        if any(not s for s in self.stop):
            raise InputError("--stop", None, "an empty stop string would stop every answer at once")


@dataclass
class Prompt:
    """One prompt: `messages` (chat) or `text` (raw continuation), with where it came from."""

    id: str
    messages: list[dict] | None = None
    text: str | None = None
    reference: str | None = None

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.messages is not None:
            out["messages"] = self.messages
        else:
            out["text"] = self.text
        if self.reference is not None:
            out["reference"] = self.reference
        return out


def parse_prompt(rec: Any, where: str) -> Prompt:
    """A record as a Prompt; raises ValueError (with the reason as its second arg) when it holds none."""
    if isinstance(rec, str):
        return Prompt(where, messages=[{"role": "user", "content": rec}])
    if not isinstance(rec, dict):
        raise ValueError("a prompt record must be a JSON object or a line of text", "not_a_record")
    pid = rec.get("id")
    pid = str(pid) if isinstance(pid, (str, int)) and str(pid) else where
    system = rec.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError("`system` must be a string", "bad_system")
    head = [{"role": "system", "content": system}] if system else []
    if rec.get("messages") is not None:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                 and isinstance(m.get("content"), str) for m in msgs):
            raise ValueError("`messages` must be a list of {role, content} with string values", "bad_messages")
        last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=-1)
        if last_user < 0:
            raise ValueError("the conversation has no user turn to answer", "no_user_turn")
        after = [m["content"] for m in msgs[last_user + 1:] if m["role"] == "assistant"]
        return Prompt(pid, messages=head + [{"role": m["role"], "content": m["content"]} for m in msgs[:last_user + 1]],
                      reference="\n".join(after) if after else None)
    if isinstance(rec.get("prompt"), str):
        return Prompt(pid, messages=head + [{"role": "user", "content": rec["prompt"]}],
                      reference=rec["response"] if isinstance(rec.get("response"), str) else None)
    if isinstance(rec.get("text"), str):
        return Prompt(pid, text=rec["text"])
    raise ValueError("the record has none of the fields `messages`, `prompt` or `text`", "no_prompt_field")


def read_prompts(paths: Iterable[str | Path], counts: Counts, policy: ErrorPolicy) -> Iterator[Prompt]:
    """Prompts of the files in order; unusable records go through `policy` and are counted as dropped."""
    seen: set[str] = set()
    for f in expand_inputs(list(paths)):
        for where, rec in iter_records(f, policy=policy):
            counts.records_in += 1
            try:
                p = parse_prompt(rec, f"{f.name}:{where}")
                if not (p.text if p.text is not None else p.messages[-1]["content"]).strip():
                    raise ValueError("the prompt is empty", "empty_prompt")
                if p.id in seen:
                    raise ValueError(f"prompt id {p.id!r} repeats an earlier one (answers are matched by id)", "duplicate_id")
            except ValueError as e:
                counts.dropped[e.args[1]] += 1
                policy.bad(f, where, e.args[0], e.args[1])
                continue
            seen.add(p.id)
            counts.records_out += 1
            yield p


def prompt_ids(tok: Any, p: Prompt, chat_template: bool = True) -> list[int]:
    """The token ids the model continues: the chat template's rendering (generation prompt included) or BOS + text."""
    if p.text is not None or not chat_template:
        text = p.text if p.text is not None else p.messages[-1]["content"]
        return list(tok(text, add_special_tokens=True)["input_ids"])
    if not tok.chat_template:
        raise InputError(getattr(tok, "name_or_path", "tokenizer"), None, "the tokenizer has no chat template",
                         "pass --no-chat-template to continue the prompt text as it is")
    from jinja2 import TemplateError

    try:
        rendered = tok.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False)
    except TemplateError as e:
        raise ValueError(f"the chat template refuses this conversation: {e}", "template_refused") from None
    return list(tok(rendered, add_special_tokens=False)["input_ids"])


def pad_id(tok: Any) -> int:
    """The id used for left padding (masked out, never seen by the model)."""
    for tid in (tok.pad_token_id, tok.unk_token_id, tok.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _finisher(tok: Any, stop: list[str], eos: list[int]):
    """A stopping criterion that records, per row, the step at which it ended and why (eos or stop string)."""
    import torch
    from transformers import StoppingCriteria
    from transformers.generation.stopping_criteria import StopStringCriteria

    class Finish(StoppingCriteria):
        def __init__(self, start: int, rows: int):
            self.start, self.ended = start, [None] * rows
            self.stops = StopStringCriteria(tok, stop) if stop else None
            self.eos = torch.tensor(eos, dtype=torch.long)

        def __call__(self, input_ids, scores, **kwargs):
            last = input_ids[:, -1]
            done = torch.isin(last, self.eos.to(last.device)) if len(self.eos) else torch.zeros_like(last, dtype=torch.bool)
            by_stop = self.stops(input_ids, scores) if self.stops is not None else torch.zeros_like(done)
            n = input_ids.shape[1] - self.start
            for r in range(len(self.ended)):
                if self.ended[r] is None and (done[r] or by_stop[r]):
                    self.ended[r] = (n, "eos" if done[r] else "stop")
            return done | by_stop

    return Finish


def eos_ids(model: Any, tok: Any) -> list[int]:
    """Token ids that end an answer: the model's generation config's EOS ids and the tokenizer's EOS."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tok.eos_token_id is not None:
        ids.append(int(tok.eos_token_id))
    return sorted(set(ids))


def generate_batch(model: Any, tok: Any, batch: list[list[int]], s: GenSettings, generator_seed: int | None = None,
                   streamer: Any = None) -> list[dict]:
    """Continue each token list (left-padded into one batch, KV cache); per row: new ids, text, finish reason.
    A transformers streamer (one row only) receives the tokens as they are generated."""
    import torch
    from transformers import GenerationConfig, StoppingCriteriaList

    device = next(model.parameters()).device
    width = max(len(b) for b in batch)
    pid = pad_id(tok)
    ids = torch.tensor([[pid] * (width - len(b)) + b for b in batch], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch], dtype=torch.long, device=device)
    eos = eos_ids(model, tok)
    sample = s.temperature > 0
    cfg = GenerationConfig(max_new_tokens=s.max_new_tokens, do_sample=sample, temperature=s.temperature if sample else None,
                           top_p=s.top_p if sample else None, top_k=s.top_k if sample else None,
                           repetition_penalty=s.repetition_penalty, num_beams=1, pad_token_id=pid,
                           eos_token_id=eos or None, bos_token_id=tok.bos_token_id, use_cache=True)
    finish = _finisher(tok, s.stop, eos)(width, len(batch))
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg,
                             stopping_criteria=StoppingCriteriaList([finish]), streamer=streamer)
    rows = []
    for r in range(len(batch)):
        n, reason = finish.ended[r] or (min(out.shape[1] - width, s.max_new_tokens), "length")
        new = out[r, width: width + n].tolist()
        text = tok.decode(new, skip_special_tokens=True)
        if reason == "stop":
            text = text[: min(text.find(x) for x in s.stop if x in text)] if any(x in text for x in s.stop) else text
        elif s.stop and any(x in text for x in s.stop):  # a stop string inside the final EOS/length step
            text, reason = text[: min(text.find(x) for x in s.stop if x in text)], "stop"
        rows.append({"ids": new, "text": text, "finish": reason})
    return rows


def generate_answers(model_or_path: Any, prompts: Iterable[Prompt | str | dict], settings: GenSettings | None = None,
                     tokenizer: Any = None, device: str = "auto", progress: bool = False,
                     on_error: str = "stop") -> list[dict]:
    """Answers to `prompts` (Prompt objects, strings as user turns, or records as in a prompt file).

    `model_or_path` is a `train run` folder, a model folder, or an already loaded model (then pass `tokenizer`).
    Each answer: id, prompt (messages or text), answer, finish (eos/stop/length), prompt/answer tokens, seconds."""
    s = settings or GenSettings()
    model, tok = _load(model_or_path, tokenizer, device)
    plist = [p if isinstance(p, Prompt) else parse_prompt(p, f"prompt:{i + 1}") for i, p in enumerate(prompts)]
    return list(_answer_stream(model, tok, plist, s, Counts(), ErrorPolicy(on_error), progress))


def _load(model_or_path: Any, tokenizer: Any, device: str):
    if tokenizer is not None:
        return model_or_path, tokenizer
    from .model import load_for_inference, pick_device

    return load_for_inference(model_or_path, str(pick_device(device)))


def _answer_stream(model: Any, tok: Any, prompts: Iterable[Prompt], s: GenSettings, counts: Counts, policy: ErrorPolicy,
                   progress: bool, total: int | None = None) -> Iterator[dict]:
    """Answers in prompt order; prompts are sorted by length within chunks so that batches pad little."""
    from tqdm import tqdm

    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    bar = tqdm(total=total, desc="generate", unit="answer", disable=not progress)
    chunk: list[tuple[Prompt, list[int]]] = []
    step = 0

    def flush() -> Iterator[dict]:
        nonlocal step
        order = sorted(range(len(chunk)), key=lambda i: -len(chunk[i][1]))
        done: dict[int, dict] = {}
        for b in range(0, len(order), s.batch_size):
            idx = order[b: b + s.batch_size]
            t0 = time.perf_counter()
            rows = generate_batch(model, tok, [chunk[i][1] for i in idx], s, s.seed + step if s.temperature > 0 else None)
            dt = time.perf_counter() - t0
            step += 1
            for i, row in zip(idx, rows):
                p, ids = chunk[i]
                done[i] = {**p.public(), "answer": row["text"], "finish": row["finish"], "prompt_tokens": len(ids),
                           "answer_tokens": len(row["ids"]), "seconds": round(dt, 4), "batch_size": len(idx)}
            bar.update(len(idx))
        for i in range(len(chunk)):
            yield done[i]
        chunk.clear()

    for p in prompts:
        try:
            ids = prompt_ids(tok, p, s.chat_template)
            if limit and len(ids) + s.max_new_tokens > limit:
                raise ValueError(f"prompt of {len(ids)} tokens + {s.max_new_tokens} new tokens exceeds the model's "
                                 f"{limit} positions", "prompt_too_long")
        except ValueError as e:
            counts.records_out -= 1
            counts.dropped[e.args[1]] += 1
            policy.bad(f"prompt {p.id}", None, e.args[0], e.args[1])
            continue
        chunk.append((p, ids))
        if len(chunk) >= CHUNK_BATCHES * s.batch_size:
            yield from flush()
    if chunk:
        yield from flush()
    bar.close()


def model_name(path: str | Path) -> str:
    """A model's display name: its folder's name."""
    return Path(path).resolve().name


def manifest_path(out: Path) -> Path:
    """`answers.jsonl` -> `answers.manifest.json`: several answer files may share a folder."""
    return out.with_name(out.name.split(".")[0] + ".manifest.json")


def settings_path(out: Path) -> Path:
    """`answers.jsonl` -> `answers.settings.json`: what the answers in `out` were made with (written before the
    first answer, so that an interrupted run is resumed only with the same settings)."""
    return out.with_name(out.name.split(".")[0] + ".settings.json")


def earlier_answers(out: Path, identity: dict[str, Any], overwrite: bool) -> dict[str, str]:
    """Answer lines already in `out` or its `.tmp` (an interrupted run) by prompt id, when they were made with
    `identity` (model, name and decoding settings); refuses other settings unless `overwrite`. A line torn by a
    kill is left out (its prompt is answered again)."""
    sfile = settings_path(out)
    tmp = out.with_name(out.name + ".tmp")
    if overwrite or not sfile.is_file():
        return {}
    try:
        saved = json.loads(sfile.read_text(encoding="utf-8"))
    except ValueError:
        saved = None
    if saved != identity:
        old = saved if isinstance(saved, dict) else {}
        what = ", ".join(f"{k} {old.get(k)!r} → {identity.get(k)!r}" for k in identity if old.get(k) != identity.get(k))
        raise InputError(out, None, f"holds answers made with other settings ({what or 'unreadable settings file'})",
                         "give another -o, or --overwrite to answer every prompt again")
    lines: dict[str, str] = {}
    for path in (out, tmp):
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "id" in rec and "answer" in rec:
                    lines[str(rec["id"])] = line
    return lines


def settings_from_args(args: argparse.Namespace) -> GenSettings:
    return GenSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                       repetition_penalty=args.repetition_penalty, seed=args.seed,
                       stop=[x.replace("\\n", "\n").replace("\\t", "\t") for x in args.stop],
                       batch_size=getattr(args, "batch_size", 1), chat_template=not args.no_chat_template)


def add_decoding_arguments(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """The decoding flags shared by `train generate` and `train chat`."""
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"at most this many new tokens per answer (default {max_new_tokens})")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) = greedy decoding; > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (sampling only; default 1.0 = off)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off, default)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="transformers' repetition penalty (1.0 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (batch i uses seed + i)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end an answer at this text (not part of the answer); repeatable; \\n and \\t are newline and tab")
    p.add_argument("--no-chat-template", action="store_true",
                   help="continue the prompt text as it is instead of rendering it with the chat template")


def run(args: argparse.Namespace) -> int:
    s = settings_from_args(args)
    s.check()
    out = Path(args.output)
    if out.suffix != ".jsonl":
        raise InputError(out, None, "the answers file must end in .jsonl")
    man = Manifest("train generate", cli_params(args))
    files = expand_inputs(args.prompts)
    man.add_inputs(files)
    counts, policy = man.source("prompts"), ErrorPolicy(args.on_error)
    prompts = list(read_prompts(files, counts, policy))
    if not prompts:
        raise InputError(files[0], None, "no usable prompt in the prompt files")
    name = args.name or model_name(args.model)
    # the batch size changes no greedy answer (batched with left padding = one at a time); everything else may
    identity = {"model": str(Path(args.model).resolve()), "name": name,
                **{k: v for k, v in asdict(s).items() if k != "batch_size"}}
    earlier = earlier_answers(out, identity, args.overwrite)
    todo = [p for p in prompts if p.id not in earlier]
    model, tok = _load(args.model, None, args.device)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings_path(out).write_text(json.dumps(identity, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp = out.with_name(out.name + ".tmp")
    t0, new_tokens = time.perf_counter(), 0
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in earlier.values())
        f.flush()
        for a in _answer_stream(model, tok, todo, s, counts, policy, not args.quiet, len(todo)):
            line = json.dumps({"model": name, **a}, ensure_ascii=False)
            f.write(line + "\n")
            f.flush()  # what is answered survives a kill
            earlier[a["id"]] = line
            new_tokens += a["answer_tokens"]
    order = [p.id for p in prompts if p.id in earlier] + [i for i in earlier if i not in {p.id for p in prompts}]
    with tmp.open("w", encoding="utf-8") as f:  # prompt order; answers of prompts no longer asked kept at the end
        f.writelines(earlier[i] + "\n" for i in order)
    tmp.replace(out)
    elapsed = time.perf_counter() - t0
    totals: dict[str, Any] = {"answers": 0, "prompt_tokens": 0, "answer_tokens": 0, "finish": {},
                              "from_earlier_run": len(prompts) - len(todo)}
    for a in (json.loads(earlier[i]) for i in order):
        totals["answers"] += 1
        totals["prompt_tokens"] += a["prompt_tokens"]
        totals["answer_tokens"] += a["answer_tokens"]
        totals["finish"][a["finish"]] = totals["finish"].get(a["finish"], 0) + 1
    totals["seconds"] = round(elapsed, 3)
    totals["answer_tokens_per_s"] = round(new_tokens / elapsed, 2) if elapsed else None  # this run's answers only
    man.counts.merge(counts)
    from .scoring import tokenizer_fingerprint

    man.extra["model"] = {"path": str(args.model), "name": name, "tokenizer_fingerprint": tokenizer_fingerprint(tok),
                          "vocab_size": len(tok), "device": str(next(model.parameters()).device)}
    man.extra["generation"] = {**asdict(s), "greedy": s.temperature == 0}
    man.extra["output"] = {"path": str(out), **totals}
    if policy.examples:
        man.warnings.extend(policy.examples)
    man.write(out.parent, name=manifest_path(out).name)
    reused = f" ({totals['from_earlier_run']} from the earlier run)" if totals["from_earlier_run"] else ""
    print(f"train generate: {totals['answers']} answers{reused}, {new_tokens} new tokens in {elapsed:.1f}s "
          f"({totals['answer_tokens_per_s']} tokens/s) -> {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__ + """
examples:
  train generate runs/ext --prompts prompts.jsonl -o answers/ext.jsonl --max-new-tokens 256
  train generate models/ext-merged --prompts sft/part-00000.parquet -o answers/ext.jsonl --name ext
  train generate runs/orig --prompts prompts.jsonl -o answers/orig-sampled.jsonl --temperature 0.7 --top-p 0.9 --seed 1
  train generate runs/ext --prompts docs.jsonl -o cont.jsonl --stop "\\n\\n" --max-new-tokens 64
Output: one JSON line per prompt, in prompt order: model, id, messages (or text), reference (when the
conversation had an answer), answer, finish (eos | stop | length), prompt_tokens, answer_tokens, seconds (wall
time of its batch), batch_size; `<name>.manifest.json` beside it holds inputs, settings and totals.""")
    p.add_argument("model", help="`train run` output folder (4-bit base + adapter) or Hugging Face model folder")
    p.add_argument("--prompts", nargs="+", required=True, help="prompt files or folders (JSONL/JSON/Parquet/txt)")
    p.add_argument("-o", "--output", required=True, help="answers file (.jsonl)")
    p.add_argument("--name", default=None, help="model name in the answers (default: the model folder's name)")
    add_decoding_arguments(p, max_new_tokens=256)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward batch (left padded; default 8)")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--on-error", choices=("stop", "skip"), default="stop", help="bad prompt records: stop, or count and skip")
    p.add_argument("--overwrite", action="store_true",
                   help="answer every prompt again (by default a rerun into the same -o with the same model and "
                   "settings answers only the prompt ids not yet answered, and other settings are refused)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
