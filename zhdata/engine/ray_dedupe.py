"""`zhdata dedupe --engine ray`: the global step of dedupe (which documents form clusters) as Ray tasks.

The rule is `zhdata.lsh.duplicate_clusters`, computed on the same links: within each band (and for the exact hash,
as the first band) every document sharing a key with earlier ones is linked to the first document holding that key
(`zhdata.lsh.equal_key_pairs`); near links pass `zhdata.dedupe.JaccardVerifier` unless verification is off; a
cluster is a connected component of the links and its smallest document index is its root. Three stages of Ray
tasks, none of which holds every key, passing their results through Ray's object store (a hash shuffle):

1. keys: one task per shard reads its signature cache (pass 1's `.parts/sig-*.npz`) and returns P pieces, piece p
   holding the (key, document) pairs of every band whose key is p modulo P, band by band, in corpus order;
2. candidate links: one task per partition p receives piece p of every shard (in shard order, so each band's
   documents stay in corpus order) and links, band by band, every later holder of a key to its first holder;
   it returns one piece per shard: the links whose first document lies in that shard;
3. verification and partial components: one task per shard receives its links from every partition, verifies the
   near ones (reading the texts of only the documents they name) and runs a union-find over the links that remain,
   returning each linked document's root within the task.

A small final pass in the driver unions those partial roots: it holds only documents that have a link (the members
of clusters), 24 bytes each, never the band keys. Its result is sparse: `Clusters`.

Memory: a stage-1 task holds one shard's keys (its cache) and their split; a stage-2 task its partition's pairs
(about ROWS_PER_PARTITION of 16 bytes, read in place from the object store) and one band of them at a time; a stage-3
task its shard's links and the n-gram sets of their documents. Ray Data's `groupby` is not used: its shuffle
coalesced up to 1 GB of input blocks into one task (`DataContext.shuffle_input_batch_bytes`), that is every key of a
500 MB corpus in one worker. The shuffle holds shards x partitions objects: fine to millions of documents per
partition and thousands of shards, not tuned past that.
"""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import fs
from ..lsh import UnionFind, equal_key_pairs

ROWS_PER_PARTITION = 1_000_000  # (band, key, document) rows per stage-2 task: 16 MB of pairs, one band at a time linked


def key_rows(cache: str | Path, start: int, exact: bool, partitions: int) -> tuple[dict[str, np.ndarray], ...]:
    """Stage 1 for one shard (its first document is `start`): per partition, its (key, doc) pairs band after band
    (the exact hash first when `exact`), documents in corpus order within a band; `count` holds each band's length."""
    with np.load(io.BytesIO(fs.read_bytes(cache))) as z:
        bands = z["bands"]
        cols = ([z["exact"]] if exact else []) + [bands[:, b] for b in range(bands.shape[1])]
    pieces: list[dict[str, list[np.ndarray]]] = [{"key": [], "doc": []} for _ in range(partitions)]
    counts = np.zeros((partitions, len(cols)), dtype=np.int64)
    for b, col in enumerate(cols):
        key = np.ascontiguousarray(col, dtype=np.uint64)
        part = key % np.uint64(partitions)
        order = np.argsort(part, kind="stable")  # stable: documents stay in order within a partition
        counts[:, b] = np.bincount(part.astype(np.intp), minlength=partitions)
        bounds = np.concatenate([[0], np.cumsum(counts[:, b])])
        for p in range(partitions):
            rows = order[bounds[p]:bounds[p + 1]]
            pieces[p]["key"].append(key[rows])
            pieces[p]["doc"].append(rows + start)
    return tuple({"key": np.concatenate(pc["key"]), "doc": np.concatenate(pc["doc"]).astype(np.int64),
                  "count": counts[p]} for p, pc in enumerate(pieces))


def candidate_links(offsets: np.ndarray, exact: bool, fault: Any, index: int,
                    *pieces: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], ...]:
    """Stage 2 for one partition, given its piece of every shard in shard order: per band, each later holder of a
    key linked to its first holder; the links split by the shard of their first document."""
    from .ray_engine import maybe_die

    ends = [np.cumsum(p["count"]) for p in pieces]
    us, vs, ex = [], [], []
    for b in range(len(pieces[0]["count"]) if pieces else 0):
        lo = [int(e[b] - p["count"][b]) for p, e in zip(pieces, ends)]
        key = np.concatenate([p["key"][s:int(e[b])] for p, s, e in zip(pieces, lo, ends)])
        doc = np.concatenate([p["doc"][s:int(e[b])] for p, s, e in zip(pieces, lo, ends)])
        first, other = equal_key_pairs(key)  # positions; in corpus order, so the first is the smallest document
        us.append(doc[first])
        vs.append(doc[other])
        ex.append(np.full(len(first), exact and b == 0))
    u = np.concatenate(us) if us else np.zeros(0, np.int64)
    v = np.concatenate(vs) if vs else np.zeros(0, np.int64)
    e = np.concatenate(ex) if ex else np.zeros(0, bool)
    shard = np.searchsorted(offsets, u, side="right") - 1
    order = np.argsort(shard, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(shard, minlength=len(offsets) - 1))])
    out = tuple({"u": u[order[lo:hi]], "v": v[order[lo:hi]], "exact": e[order[lo:hi]]}
                for lo, hi in zip(bounds[:-1], bounds[1:]))
    maybe_die(fault, index)
    return out


def partial_components(shards: list[str | Path], offsets: np.ndarray, opts: Any,
                       *links: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stage 3 for the links of one shard's first documents: verify near links, then (document, root here, exact
    duplicate) of every document they link."""
    from ..dedupe import JaccardVerifier

    u = np.concatenate([x["u"] for x in links])
    v = np.concatenate([x["v"] for x in links])
    exact = np.concatenate([x["exact"] for x in links]).astype(bool)
    keep = np.ones(len(u), dtype=bool)
    near = ~exact
    if opts.verify and near.any():
        with tempfile.TemporaryDirectory(prefix="zhdata-verify-") as tmp:
            verifier = JaccardVerifier(shards, offsets, opts, Path(tmp) / "sets.bin")
            try:
                keep[near] = verifier(u[near], v[near])
            finally:
                verifier.close()
    u, v, exact = u[keep], v[keep], exact[keep]
    nodes = np.unique(np.concatenate([u, v]))
    uf = UnionFind(len(nodes))
    uf.union(np.searchsorted(nodes, u), np.searchsorted(nodes, v))
    return {"doc": nodes, "root": nodes[uf.labels()], "exact": np.isin(nodes, v[exact])}


def ray_clusters(caches: list[str | Path], shards: list[str | Path], offsets: np.ndarray, opts: Any,
                 address: str | None = None, workers: int | None = None) -> "Clusters":
    """The clusters of the corpus whose pass-1 caches are `caches` (one per shard, document offsets `offsets`)."""
    import ray

    from ..dedupe import Clusters
    from .ray_engine import fault_from_env, get, init_ray, remote

    init_ray(address, workers)
    n, nshards = int(offsets[-1]), len(shards)
    rows = n * ((opts.bands if opts.near else 0) + (1 if opts.exact else 0))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    partitions = max(cpus, math.ceil(rows / ROWS_PER_PARTITION))
    keys = [_refs(remote(key_rows, partitions).remote(str(c), int(o), opts.exact, partitions), partitions)
            for c, o in zip(caches, offsets[:-1])]
    fault = fault_from_env("links")
    links = [_refs(remote(candidate_links, nshards).remote(offsets, opts.exact, fault, p, *[k[p] for k in keys]), nshards)
             for p in range(partitions)]
    del keys  # each partition's pieces are freed once its task has them
    comps = [remote(partial_components, 1).remote([str(s) for s in shards], offsets, opts, *[x[s] for x in links])
             for s in range(nshards)]
    del links
    docs, roots, exact = [], [], []
    for shard, ref in zip(shards, comps):
        part = get(ref, f"{shard} (dedupe's global step: its links)")
        docs.append(part["doc"])
        roots.append(part["root"])
        exact.append(np.asarray(part["exact"], dtype=bool))
        del part
    docs_a = np.concatenate(docs) if docs else np.zeros(0, np.int64)
    roots_a = np.concatenate(roots) if roots else np.zeros(0, np.int64)
    exact_a = np.concatenate(exact) if exact else np.zeros(0, bool)
    members = np.unique(docs_a)
    uf = UnionFind(len(members))
    uf.union(np.searchsorted(members, docs_a), np.searchsorted(members, roots_a))
    is_exact = np.zeros(len(members), dtype=bool)
    is_exact[np.searchsorted(members, docs_a[exact_a])] = True
    return Clusters(members, members[uf.labels()], is_exact)


def _refs(out: Any, n: int) -> list:
    """The `n` object refs of a task with `n` returns (Ray hands back a bare ref when n is 1)."""
    return [out] if n == 1 else list(out)
