"""`zhdata dedupe`: exact and MinHash-LSH near-duplicate removal over a whole corpus of Parquet shards.

Pass 1 (parallel, resumable per shard): dedupe key, a stable exact hash (blake2b) and LSH band keys
of every document. Then, globally and in bounded memory: exact duplicates and band collisions are
linked in one union-find, band by band from disk. Pass 2 keeps the first document (in corpus order)
of every cluster, writes the shards under the same names, and `clusters.parquet` lists every
document of every cluster with its cluster, whether it was kept and why not.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from . import fs
from .errors import InputError
from .hashing import hash64
from .lock import locked_output
from .lsh import LSHIndex, band_keys, duplicate_clusters
from .manifest import MANIFEST, Counts, Manifest
from .minhash import optimal_bands, signatures
from .ngrams import codepoints, ngram_hashes, text_chunks
from .normalize import dedupe_key
from .engine import Engine, LocalEngine, add_engine_options, engine_from_args, warn_if_unshared
from .shards import ShardState, check_output_folder, run_inputs

if TYPE_CHECKING:  # polars is imported where it is used, so that `--help` does not load it (tests/test_cli.py)
    import polars as pl


@dataclass(frozen=True)
class DedupeOptions:
    exact: bool = True
    near: bool = True
    ngram: int = 5  # character n-grams: Chinese has no spaces, and words need a segmenter (jieba: ~0.5 MB/s)
    num_perm: int = 128
    threshold: float = 0.8
    bands: int = 0  # 0: chosen from threshold and num_perm
    rows: int = 0
    verify: bool = True  # keep only candidate pairs whose exact n-gram Jaccard reaches the threshold
    seed: int = 1
    text_field: str = "text"
    mainland_key: bool = True  # keys in mainland usage: Taiwan/Hong Kong phrasing and variants converted (normalize.py)

    def resolved(self) -> "DedupeOptions":
        if self.bands and self.rows:
            return self
        # verified candidates cost time, not precision: weigh a missed pair 19x a false candidate (16 x 8 at 0.8,
        # recall 0.994 on the planted benchmark in BENCHMARKS.md); unverified, weigh both alike (9 x 13 at 0.8)
        fp = 0.05 if self.verify else 0.5
        b, r = optimal_bands(self.threshold, self.num_perm, fp_weight=fp, fn_weight=1 - fp)
        return DedupeOptions(**{**asdict(self), "bands": b, "rows": r})


def list_shards(in_dir: str | Path) -> list[str | Path]:
    d = fs.local(in_dir)
    if not fs.isdir(d):
        raise InputError(d, None, "not a folder", "dedupe reads the Parquet shards of a `zhdata clean` output folder")
    names = fs.listdir(d)
    shards = [fs.join(d, n) for n in names if n.endswith(".parquet") and n != "clusters.parquet" and not n.startswith(".")]
    if not shards:
        raise InputError(d, None, "no .parquet shards here", "run `zhdata clean ... -o DIR` first and dedupe DIR")
    if MANIFEST not in names:
        raise InputError(d, None, "no manifest.json: the run that wrote these shards did not finish",
                         "re-run it (it resumes where it stopped), then dedupe")
    return shards


def read_texts(path: str | Path, field: str, rows: np.ndarray | None = None) -> list[str]:
    """The texts of a shard, or only those at `rows` (0-based, any order): then only the row groups holding them are
    read, one at a time, and the other texts never become Python strings."""
    import polars as pl

    if rows is None:
        try:
            col = pl.read_parquet(fs.readable(path), columns=[field])[field]
        except pl.exceptions.ColumnNotFoundError:
            raise InputError(path, None, f"no column {field!r}", "choose it with --text-field") from None
        return _checked(col, path, field, 0).to_list()
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = np.asarray(rows, dtype=np.int64)
    out: list[str] = [""] * len(rows)
    src = fs.readable(path)
    with pq.ParquetFile(src) as pf, (nullcontext() if isinstance(src, Path) else src):  # a remote file is closed too
        if field not in pf.schema_arrow.names:
            raise InputError(path, None, f"no column {field!r}", "choose it with --text-field")
        ends = np.cumsum([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        group = np.searchsorted(ends, rows, side="right")
        if len(rows) and (rows.min() < 0 or group.max() >= len(ends)):
            raise IndexError(f"{path}: rows outside its {int(ends[-1]) if len(ends) else 0} rows")
        for g in np.unique(group):
            start = int(ends[g - 1]) if g else 0
            col = _checked(pl.from_arrow(pf.read_row_group(int(g), columns=[field]))[field], path, field, start)
            at = np.flatnonzero(group == g)
            for i, text in zip(at.tolist(), col.gather(rows[at] - start).to_list()):
                out[i] = text
    pa.default_memory_pool().release_unused()  # Arrow's pool otherwise keeps every decoded group's pages
    return out


def _checked(col: "pl.Series", path: str | Path, field: str, start: int) -> "pl.Series":
    """`col` (a shard's texts from row `start` on) if it is text without nulls, else the one-line error."""
    import polars as pl

    if col.dtype != pl.String:
        raise InputError(path, None, f"column {field!r} is {col.dtype}, not text")
    if col.null_count():
        raise InputError(path, start + int(col.is_null().arg_true()[0]) + 1, f"column {field!r} holds nulls")
    return col


def exact_hashes(keys: list[str]) -> np.ndarray:
    """`hash64` of each dedupe key."""
    return np.fromiter((hash64(k) for k in keys), dtype=np.uint64, count=len(keys))


def shard_keys(texts: list[str], opts: DedupeOptions) -> tuple[np.ndarray, np.ndarray]:
    """The pure per-batch step: (exact hash per document, LSH band keys per document)."""
    import polars as pl

    keys = dedupe_key(pl.Series(texts, dtype=pl.String), opts.mainland_key).to_list()
    exact = exact_hashes(keys)
    if not opts.near:
        return exact, np.zeros((len(keys), 0), dtype=np.uint64)
    sigs = signatures(keys, opts.num_perm, opts.ngram, opts.seed)
    return exact, band_keys(sigs, opts.bands, opts.rows, opts.seed)


def _pass1(task: tuple[str, str, DedupeOptions]) -> int:
    shard, cache, opts = task
    exact, bands = shard_keys(read_texts(shard, opts.text_field), opts)
    buf = io.BytesIO()
    np.savez(buf, exact=exact, bands=bands)
    fs.write_bytes(cache, buf.getvalue())
    return len(exact)


class JaccardVerifier:
    """Exact n-gram Jaccard of candidate pairs. The n-gram set of each document asked about is computed once and
    spilled to `spill` on disk, so memory holds an offset per candidate document and one shard's sets at a time."""

    def __init__(self, shards: list[str | Path], offsets: np.ndarray, opts: DedupeOptions, spill: Path):
        self.shards, self.offsets, self.opts = shards, offsets, opts
        self.where: dict[int, tuple[int, int]] = {}
        self.file = open(spill, "w+b")
        self.end = 0

    def _load(self, docs: np.ndarray) -> None:
        import polars as pl

        missing = np.unique(docs[[d not in self.where for d in docs.tolist()]])
        shard_of = np.searchsorted(self.offsets, missing, side="right") - 1
        self.file.seek(self.end)
        for s in np.unique(shard_of):
            rows = missing[shard_of == s]
            texts = read_texts(self.shards[s], self.opts.text_field, rows - self.offsets[s])
            # a chunk at a time: keys and n-gram arrays take ~60 bytes per character, and allocators keep their peak
            for lo, hi in text_chunks(texts):
                keys = dedupe_key(pl.Series(texts[lo:hi], dtype=pl.String), self.opts.mainland_key).to_list()
                cp, offs = codepoints(keys)
                h, _, doc = ngram_hashes(cp, offs, self.opts.ngram, self.opts.seed, whole_short=True)
                order = np.argsort(doc, kind="stable")  # texts shorter than an n-gram come last: group by text
                h, bounds = h[order], np.searchsorted(doc[order], np.arange(hi - lo + 1))
                for i, d in enumerate(rows[lo:hi].tolist()):
                    grams = np.unique(h[bounds[i]:bounds[i + 1]]).astype(np.uint64)
                    self.file.write(grams.tobytes())
                    self.where[d] = (self.end, len(grams))
                    self.end += grams.nbytes
        self.file.flush()

    def _set(self, d: int) -> np.ndarray:
        off, n = self.where[d]
        self.file.seek(off)
        return np.frombuffer(self.file.read(n * 8), dtype=np.uint64)

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        self._load(np.concatenate([u, v]))
        out = np.zeros(len(u), dtype=bool)
        for k, (a, b) in enumerate(zip(u.tolist(), v.tolist())):
            sa, sb = self._set(a), self._set(b)
            inter = len(np.intersect1d(sa, sb, assume_unique=True))
            union = len(sa) + len(sb) - inter
            out[k] = union == 0 or inter / union >= self.opts.threshold
        return out

    def close(self) -> None:
        self.file.close()
        Path(self.file.name).unlink(missing_ok=True)


@dataclass(frozen=True)
class Clusters:
    """The outcome of the duplicate rule, sparse: every document in a cluster of two or more (`members`, ascending
    corpus indices), its cluster's root (smallest member) and whether it is an exact duplicate of an earlier one.
    Every other document is alone and kept."""

    members: np.ndarray
    roots: np.ndarray
    exact: np.ndarray

    @classmethod
    def from_dense(cls, roots: np.ndarray, exact: np.ndarray) -> "Clusters":
        size = np.bincount(roots, minlength=len(roots))
        members = np.nonzero(size[roots] > 1)[0]
        return cls(members, roots[members], exact[members])


def local_clusters(caches: list[str | Path], shards: list[str | Path], opts: DedupeOptions,
                   work: Path) -> tuple[Clusters, np.ndarray]:
    """The global step in this process: band tables spilled to `work`, one band at a time (`zhdata.lsh`); returns the
    clusters and the document offset of every shard."""
    index = LSHIndex(work / "bands", opts.bands, opts.rows, opts.seed) if opts.near else None
    exact_parts, sizes = [], []
    for c in caches:
        with np.load(io.BytesIO(fs.read_bytes(c))) as z:
            exact_parts.append(z["exact"])
            sizes.append(len(z["exact"]))
            if index is not None:
                index.add_keys(z["bands"])
    hashes = np.concatenate(exact_parts) if exact_parts else np.zeros(0, np.uint64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    verify = (JaccardVerifier(shards, offsets, opts, work / "verify-sets.bin")
              if opts.verify and index is not None else None)
    try:
        roots, exact = duplicate_clusters(len(hashes), hashes if opts.exact else None, index, verify)
    finally:
        if index is not None:
            index.close()
        if verify is not None:
            verify.close()
    return Clusters.from_dense(roots, exact), offsets


def shard_offsets(shards: list[str | Path]) -> np.ndarray:
    """Document offset of every shard (and the total at the end), from the Parquet footers alone."""
    import pyarrow.parquet as pq

    sizes = [pq.ParquetFile(fs.readable(s)).metadata.num_rows for s in shards]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def run_dedupe(in_dir: str | Path, out_dir: str | Path, opts: DedupeOptions, workers: int = 1,
               overwrite: bool = False, progress: bool = True, engine: Engine | None = None) -> Manifest:
    """Dedupe the shards of `in_dir` into `out_dir`; pass 1 runs on `engine` (default: `workers` local processes),
    and so does the global step (`--engine ray`: `zhdata.engine.ray_dedupe`, the same rule and result)."""
    engine = engine or LocalEngine(workers)
    opts = opts.resolved()
    shards = list_shards(in_dir)
    out = fs.local(out_dir)
    check_output_folder(out, [in_dir])
    warn_if_unshared(engine, [in_dir, out])
    # the input's manifest and shards by content: re-cleaned or replaced input is never resumed over
    described, identity = run_inputs([fs.join(in_dir, MANIFEST), *shards])
    params = {"input": fs.canonical(in_dir), "inputs": identity, **asdict(opts)}
    manifest = Manifest("zhdata dedupe", params)
    manifest.inputs.extend(described[1:])
    state = ShardState(out)
    state.start(params, overwrite)
    names = [f"sig-{fs.name(s)[: -len('.parquet')]}.npz" for s in shards]
    caches = [fs.join(state.parts, c) for c in names]
    cached = set(fs.listdir(state.parts))
    todo = [(str(s), str(c), opts) for s, c, name in zip(shards, caches, names) if name not in cached]
    for _ in tqdm(engine.map(_pass1, todo), total=len(todo), desc="dedupe: signatures", unit="shard",
                  disable=not progress):
        pass

    if engine.name == "ray":
        from .engine.ray_dedupe import ray_clusters

        offsets = shard_offsets(shards)
        clusters = ray_clusters(caches, shards, offsets, opts, engine.address, engine.workers)
    else:
        # band tables and the verifier's n-gram sets are scratch, rewritten by every run: beside the output when it
        # is local, else in a local temp folder
        with tempfile.TemporaryDirectory(prefix="zhdata-dedupe-") as tmp:
            clusters, offsets = local_clusters(caches, shards, opts, Path(tmp) if fs.is_remote(out) else state.parts)
    table = write_deduped(shards, offsets, clusters, state, manifest, progress)
    with fs.atomic_writer(fs.join(out, "clusters.parquet")) as f:
        table.write_parquet(f)
    manifest.extra["dedupe"] = {"bands": opts.bands, "rows": opts.rows, "documents": int(offsets[-1]),
                                "clusters": int(len(np.unique(clusters.roots))), "documents_in_clusters": int(len(table))}
    manifest.extra["shards"] = [fs.name(s) for s in shards]
    manifest.extra["engine"] = engine.describe()
    manifest.write(out)
    return manifest


def write_deduped(shards: list[str | Path], offsets: np.ndarray, clusters: Clusters, state: ShardState,
                  manifest: Manifest, progress: bool) -> pl.DataFrame:
    """Pass 2: each shard without its dropped documents, under its own name; returns the table of every member of
    every cluster (`clusters.parquet`). Shards go in corpus order, so a cluster's root id is known when needed."""
    import polars as pl

    schema = {"id": pl.String, "cluster": pl.String, "cluster_size": pl.Int64, "kept": pl.Boolean,
              "reason": pl.String, "shard": pl.String}
    root_list, root_size = np.unique(clusters.roots, return_counts=True)
    root_ids: dict[int, str] = {}
    cluster_rows: list[pl.DataFrame] = []
    for k, shard in enumerate(tqdm(shards, desc="dedupe: write", unit="shard", disable=not progress)):
        df = pl.read_parquet(fs.readable(shard))
        lo, hi = np.searchsorted(clusters.members, [offsets[k], offsets[k + 1]])
        docs, r, ex = clusters.members[lo:hi], clusters.roots[lo:hi], clusters.exact[lo:hi]
        rows = docs - offsets[k]
        first = r == docs
        keep = np.ones(len(df), dtype=bool)
        keep[rows] = first
        reason = np.where(first, None, np.where(ex, "exact_duplicate", "near_duplicate"))
        name = fs.name(shard)
        ids = df["id"].cast(pl.String).to_list() if "id" in df.columns else [f"{name}:{i + 1}" for i in range(len(df))]
        for i in np.nonzero(first)[0]:
            root_ids[int(docs[i])] = ids[rows[i]]
        if len(docs):
            cluster_rows.append(pl.DataFrame({
                "id": [ids[i] for i in rows], "cluster": [root_ids[int(x)] for x in r],
                "cluster_size": root_size[np.searchsorted(root_list, r)].astype(np.int64), "kept": first,
                "reason": reason.tolist(), "shard": name,
            }, schema=schema))
        c = Counts(records_in=len(df), records_out=int(keep.sum()))
        c.dropped.update({k2: int(v) for k2, v in zip(*np.unique(reason[~first].astype(str), return_counts=True))})
        state.finish(name[: -len(".parquet")], df.filter(pl.Series(keep)), {"counts": c.to_dict()})
        manifest.counts.merge(c)
    return pl.concat(cluster_rows) if cluster_rows else pl.DataFrame(schema=schema)


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = DedupeOptions()
    p = sub.add_parser(
        "dedupe",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Exact duplicates (blake2b of the text without whitespace and punctuation, NFKC, lower case) and\n"
        "near duplicates (MinHash over character n-grams, LSH bands, connected components) over every shard\n"
        "of IN_DIR at once. Both are judged on a key in Simplified characters and mainland usage: Taiwan and\n"
        "Hong Kong phrasing and variants (软体, 網路, 随著) become mainland ones (软件, 网络, 随着) in the key only;\n"
        "the text written keeps what `zhdata clean --convert` made of it. The first document of each cluster in corpus order is kept.\n"
        "OUT_DIR gets the shards under the same names, clusters.parquet (every member of every cluster:\n"
        "id, cluster, kept, reason) and manifest.json.\n\n"
        "examples:\n  zhdata dedupe out/clean -o out/dedup\n  zhdata dedupe out/clean -o out/dedup --threshold 0.7 --no-verify\n"
        "  zhdata dedupe s3://bucket/clean -o s3://bucket/dedup --engine ray --ray-address auto",
    )
    p.add_argument("input", metavar="IN_DIR", help="folder of Parquet shards (a `zhdata clean` output)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    p.add_argument("--text-field", default="text")
    p.add_argument("--no-exact", action="store_true", help="skip exact duplicates")
    p.add_argument("--no-near", action="store_true", help="skip near duplicates")
    p.add_argument("--threshold", type=float, default=d.threshold, help=f"Jaccard similarity of near duplicates (default {d.threshold})")
    p.add_argument("--ngram", type=int, default=d.ngram, help=f"character n-gram length (default {d.ngram}; 13 is stricter)")
    p.add_argument("--num-perm", type=int, default=d.num_perm, help=f"signature length (default {d.num_perm})")
    p.add_argument("--bands", type=int, default=0, help="LSH bands (default: tuned for --threshold)")
    p.add_argument("--rows", type=int, default=0, help="rows per band (default: tuned for --threshold)")
    p.add_argument("--no-verify", action="store_true",
                   help="link candidate pairs without checking their exact n-gram Jaccard (faster, less precise; "
                   "the default checks them, with n-gram sets spilled to disk, and picks bands for recall)")
    p.add_argument("--no-mainland-key", action="store_true",
                   help="judge on the text's own characters and phrasing (Taiwan and mainland versions of a page then differ)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    add_engine_options(p)
    p.add_argument("--overwrite", action="store_true", help="start again in an output folder that holds another run")
    p.add_argument("--no-progress", action="store_true")


@locked_output("output", remote=True)
def run(a: argparse.Namespace) -> int:
    if not 0 < a.threshold <= 1:
        raise InputError("(command line)", None, f"--threshold {a.threshold} is not in (0, 1]")
    if (a.bands > 0) != (a.rows > 0):
        raise InputError("(command line)", None, "give both --bands and --rows, or neither")
    opts = DedupeOptions(not a.no_exact, not a.no_near, a.ngram, a.num_perm, a.threshold, a.bands, a.rows,
                         not a.no_verify, a.seed, a.text_field, not a.no_mainland_key)
    m = run_dedupe(a.input, a.output, opts, a.workers, a.overwrite, progress=not a.no_progress, engine=engine_from_args(a))
    c, d = m.counts, m.extra["dedupe"]
    print(f"documents {c.records_in:,}  kept {c.records_out:,}  "
          + "  ".join(f"{k} {v:,}" for k, v in sorted(c.dropped.items()))
          + f"\nclusters {d['clusters']:,} (bands {d['bands']} x rows {d['rows']}); wrote {a.output}")
    return 0
