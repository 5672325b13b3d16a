"""`zhdata instruct` stage: read every source, clean, deduplicate globally, write conversation Parquet.

Pass 1 streams each input piece in batches (parse -> clean -> stage shard on disk, hashes and prompt
signatures to the duplicate finder). The duplicate decision is global. Pass 2 rewrites the stage
shards without duplicates (splitting turns if asked) into `part-NNNNN.parquet`, in input order.
Counts are per conversation read: records_in = records_out + dropped; with `--split-turns`,
`examples_out` says how many training examples the kept conversations became.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from .. import fs
from ..engine import Engine, LocalEngine, warn_if_unshared
from ..errors import ErrorPolicy, InputError
from ..manifest import MANIFEST, Counts, Manifest
from ..readers import ReadOptions, iter_records, plan_pieces
from ..shards import check_output_folder
from .clean import Cleaner, CleanConfig
from .dedup import DuplicateFinder
from .formats import ColumnMap, Conversation, RecordError, detect_record_format, parse_record

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
BASE_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("system", pa.string()),
                         ("messages", pa.list_(MESSAGE)), ("origin", pa.string())])


@dataclass
class Source:
    """One named source: its files, format (None: detect per file), column mapping, language."""

    name: str
    files: list[str | Path]  # local paths or URIs (`zhdata.fs`)
    format: str | None = None
    columns: ColumnMap = field(default_factory=ColumnMap)
    english: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # recipe facts (upstream count, licence, url)


@dataclass
class InstructOptions:
    clean: CleanConfig = field(default_factory=CleanConfig)
    exact_dup: bool = True
    near_dup: bool = True
    near_threshold: float = 0.7
    num_perm: int = 128
    ngram: int = 3
    split_turns: bool = False
    preference: str = "error"
    on_error: str = "stop"
    keep: tuple[str, ...] = ()  # input fields kept as metadata columns
    batch_size: int = 10_000
    read: ReadOptions = ReadOptions()


def schema(keep: tuple[str, ...]) -> pa.Schema:
    return pa.schema(list(BASE_SCHEMA) + [pa.field(k, pa.string()) for k in keep])


@contextmanager
def _work_dir(out_dir: str | Path) -> Iterator[Path]:
    """Scratch of a run (stage shards, duplicate finder), rebuilt by every run: `OUT/.instruct-work` beside a local
    output, a local temporary folder (TMPDIR) when the output is on an object store."""
    if isinstance(out_dir, Path):
        work = out_dir / ".instruct-work"
        shutil.rmtree(work, ignore_errors=True)
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="zhdata-instruct-") as tmp:
        yield Path(tmp)


def run_instruct(sources: list[Source], out_dir: str | Path, cfg: InstructOptions, manifest: Manifest, tokenizer=None,
                 engine: Engine | None = None) -> Manifest:
    """Read, clean (a file per task on `engine`; default this process), deduplicate and write `sources` into
    `out_dir` (a local folder or a URI of `zhdata.fs`; the inputs too)."""
    out_dir = fs.local(out_dir)
    check_output_folder(out_dir, [f for s in sources for f in s.files])
    if engine is not None:  # tasks read the input files; the driver writes the output
        warn_if_unshared(engine, [f for s in sources for f in s.files])
    fs.makedirs(out_dir)
    # the old output goes as a whole: a failed rerun must not leave a manifest describing deleted parts
    for name in fs.listdir(out_dir):
        if name == MANIFEST or (name.startswith("part-") and name.endswith(".parquet")):
            fs.remove(fs.join(out_dir, name))
    with _work_dir(out_dir) as work:
        _run(sources, out_dir, work, cfg, manifest, tokenizer, engine)
    manifest.write(out_dir)
    return manifest


def _run(sources: list[Source], out_dir: str | Path, work: Path, cfg: InstructOptions, manifest: Manifest, tokenizer,
         engine: Engine | None) -> None:
    """The run, its scratch in `work`: pass 1 (read, clean, stage), the duplicate decision, pass 2 (write)."""
    finder = DuplicateFinder(work / "dedup", cfg.exact_dup, cfg.near_dup, cfg.near_threshold, cfg.num_perm, cfg.ngram)
    policy = ErrorPolicy(cfg.on_error)
    cleaner = Cleaner(cfg.clean, tokenizer)
    manifest.add_inputs([f for s in sources for f in s.files])
    shard_sources: list[int] = []  # source index of every stage shard
    row_sources: list[np.ndarray] = []
    files_info: list[dict] = []
    tasks = [(path, src, cfg, cleaner) for src in sources for path in src.files]
    results = (engine or LocalEngine(1)).map(clean_file, tasks)
    serial = {src.name: 0 for src in sources}  # ids number a source's conversations across its files
    with tqdm(desc="instruct: read+clean", unit=" rec", mininterval=1.0) as bar:
        for (path, src, _, _), res in zip(tasks, results):
            si = sources.index(src)
            counts = manifest.source(src.name)
            counts.records_in += res["read"]
            counts.dropped.update(res["dropped"])
            counts.modified.update(res["modified"])
            bar.update(res["read"])
            for kept in res["batches"]:
                serial[src.name] = _write_stage(work, len(shard_sources), src.name, kept, serial[src.name])
                finder.add(kept.column("system").to_pylist(),
                           [[(m["role"], m["content"]) for m in ms] for ms in kept.column("messages").to_pylist()])
                shard_sources.append(si)
                row_sources.append(np.full(kept.num_rows, si, dtype=np.int32))
            policy.examples.extend(res["examples"][: max(0, 20 - len(policy.examples))])
            policy.empty_files.extend(res["empty_files"])
            files_info.append({"path": str(path), "source": src.name, "format": res["format"], "records": res["read"]})
    t_read = time.time()
    exact, near, roots = finder.decide()
    t_dedup = time.time()
    src_of = np.concatenate(row_sources) if row_sources else np.zeros(0, np.int32)
    between = _count_dups(manifest, sources, src_of, exact, near, roots)
    examples = _write_output(work, out_dir, sources, shard_sources, ~(exact | near), cfg, manifest)
    timings = {"read_clean_s": round(t_read - manifest.started, 2), "dedup_decide_s": round(t_dedup - t_read, 2),
               "write_s": round(time.time() - t_dedup, 2)}
    manifest.counts = _total(manifest)
    manifest.extra["instruct"] = {
        "files": files_info,
        "dedup": finder.params(),
        "near_dup_between_sources": between,
        "split_turns": cfg.split_turns,
        "timings": timings,
        "examples_out": examples,
        "sources": {s.name: {**s.info, "english": s.english, "format": s.format or "auto",
                             "examples_out": examples.get(s.name, 0)} for s in sources},
        "skipped_examples": policy.examples,
        "empty_files": policy.empty_files,
    }


def clean_file(task: tuple[str | Path, Source, InstructOptions, Cleaner]) -> dict[str, Any]:
    """The per-file stage, run by an engine: parse and clean one file in batches; the kept conversations of each
    batch as a stage table (ids are given by the caller, in input order), records read, dropped and modified by
    reason. Arrow tables, not Python objects: a file's kept conversations take about their text's bytes, not ~15x."""
    path, src, cfg, cleaner = task
    policy, fmt_seen = ErrorPolicy(cfg.on_error), Counter()
    read, dropped, modified, batches = 0, Counter(), Counter(), []
    for batch, n_read, skipped in _batches(path, src, cfg, policy, fmt_seen):
        read += n_read
        dropped.update(skipped)
        kept = cleaner.clean(batch, src.english, dropped, modified)
        if kept:
            batches.append(_stage_table(src.name, kept, cfg.keep))
    return {"batches": batches, "read": read, "dropped": dropped, "modified": modified, "format": dict(fmt_seen),
            "examples": policy.examples, "empty_files": policy.empty_files}


def _batches(path: str | Path, src: Source, cfg: InstructOptions, policy: ErrorPolicy,
             fmt_seen: Counter) -> Iterator[tuple[list[Conversation], int, Counter]]:
    """Parsed conversations of one file in batches, with the number of records read and skipped per reason."""
    fmt = src.format
    batch: list[Conversation] = []
    mark = policy.skipped.copy()
    for piece in plan_pieces([path], read=cfg.read):
        for where, rec in iter_records(piece, policy=policy, read=cfg.read):
            try:
                rec_fmt = fmt or detect_record_format(rec, src.columns)
                conv = parse_record(rec, rec_fmt, src.columns, cfg.preference)
            except RecordError as e:
                if e.reason == "preference":  # a whole file of pairs: stop even under --on-error skip
                    raise InputError(path, where, str(e), "use --preference chosen to train on the chosen "
                                     "responses, or a preference trainer for chosen/rejected pairs") from None
                policy.bad(path, where, str(e), e.reason)
                continue
            fmt = fmt or rec_fmt  # the first readable record fixes the file's format
            fmt_seen[rec_fmt] += 1
            conv.meta = {"origin": f"{fs.name(path)}:{where}", **{k: _meta(rec.get(k)) for k in cfg.keep}}
            batch.append(conv)
            if len(batch) >= cfg.batch_size:
                skipped = policy.skipped - mark
                yield batch, len(batch) + sum(skipped.values()), skipped
                batch, mark = [], policy.skipped.copy()
    skipped = policy.skipped - mark  # records that failed in the reader (malformed JSON) are counted here too
    yield batch, len(batch) + sum(skipped.values()), skipped


def _meta(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _stage_table(source: str, convs: list[Conversation], keep: tuple[str, ...]) -> pa.Table:
    """Kept conversations as a stage shard's table, ids still empty (`_write_stage` numbers them)."""
    rows = [{"id": "", "source": source, "system": v.system,
             "messages": [{"role": r, "content": c} for r, c in v.messages], **v.meta} for v in convs]
    return pa.Table.from_pylist(rows, schema=schema(keep))


def _write_stage(work: Path, shard: int, source: str, table: pa.Table, serial: int) -> int:
    """Write a stage shard, its rows numbered `source-N` from serial + 1 on; the last number given."""
    ids = pa.array([f"{source}-{serial + i + 1}" for i in range(table.num_rows)], type=pa.string())
    pq.write_table(table.set_column(0, "id", ids), work / f"stage-{shard:05d}.parquet")
    return serial + table.num_rows


def _count_dups(manifest: Manifest, sources: list[Source], src_of: np.ndarray, exact: np.ndarray,
                near: np.ndarray, roots: np.ndarray) -> dict[str, int]:
    """Duplicates counted per source; returns near duplicates whose kept original is in another source."""
    between: Counter = Counter()
    for si, src in enumerate(sources):
        mine = src_of == si
        c = manifest.source(src.name)
        if n := int((exact & mine).sum()):
            c.dropped["exact_dup"] += n
        if n := int((near & mine).sum()):
            c.dropped["near_dup_prompt"] += n
            for other, k in zip(*np.unique(src_of[roots[near & mine]], return_counts=True)):
                if other != si:
                    between[f"{src.name} <- {sources[other].name}"] += int(k)
    return dict(sorted(between.items()))


def _write_output(work: Path, out_dir: str | Path, sources: list[Source], shard_sources: list[int], keep_mask: np.ndarray,
                  cfg: InstructOptions, manifest: Manifest) -> dict[str, int]:
    examples: Counter = Counter()
    offset, part = 0, 0
    for shard, si in enumerate(tqdm(shard_sources, desc="instruct: write", unit=" shard", mininterval=1.0)):
        table = pq.read_table(work / f"stage-{shard:05d}.parquet")
        mask = keep_mask[offset:offset + table.num_rows]
        offset += table.num_rows
        table = table.filter(pa.array(mask, type=pa.bool_()))
        manifest.source(sources[si].name).records_out += table.num_rows
        if cfg.split_turns:
            table = split_turns(table)
        examples[sources[si].name] += table.num_rows
        if table.num_rows:
            with fs.atomic_writer(fs.join(out_dir, f"part-{part:05d}.parquet")) as f:
                pq.write_table(table, f)
            part += 1
    return dict(examples)


def split_turns(table: pa.Table) -> pa.Table:
    """Each assistant turn its own example, with the turns before it as history (ids get `-t<k>`)."""
    rows = []
    for row in table.to_pylist():
        k = 0
        for j, m in enumerate(row["messages"]):
            if m["role"] == "assistant":
                k += 1
                rows.append({**row, "id": f"{row['id']}-t{k}", "messages": row["messages"][: j + 1]})
    return pa.Table.from_pylist(rows, schema=table.schema)


def _total(manifest: Manifest) -> Counts:
    total = Counts()
    for c in manifest.sources.values():
        total.merge(c)
    return total
