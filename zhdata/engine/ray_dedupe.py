"""`zhdata dedupe --engine ray`: the global step of dedupe (which documents form clusters) as Ray tasks.

The rule is `zhdata.lsh.duplicate_clusters`, computed on the same links: within each band (and for the exact hash,
as the first band) every document sharing a key with earlier ones is linked to the first document holding that key
(`zhdata.lsh.equal_key_pairs`); near links pass `zhdata.dedupe.JaccardVerifier` unless verification is off; a
cluster is a connected component of the links and its smallest document index is its root. Three stages of Ray
tasks, none of which holds every key, passing their results through Ray's object store (a hash shuffle):

1. keys: one task per group of consecutive shards reads their signature caches (pass 1's `.parts/sig-*.npz`) one
   at a time and returns P pieces, piece p holding the (key, document) pairs whose key is p modulo P, shard by shard
   and band by band, documents in corpus order;
2. candidate links: one task per partition p receives piece p of every group (in corpus order) and links, band by
   band, every later holder of a key to its first holder; it returns one piece per group: the links whose first
   document lies in that group;
3. verification and partial components: one task per group receives its links from every partition, verifies the
   near ones (reading the texts of only the documents they name) and runs a union-find over the links that remain,
   returning each linked document's root within the task.

A small final pass in the driver unions those partial roots: it holds only documents that have a link (the members
of clusters), 24 bytes each, never the band keys. Its result is sparse: `Clusters`.

Memory: a stage-1 task holds one shard's cache at a time and its group's pairs split by partition (16 bytes a pair);
a stage-2 task its partition's pairs (about ROWS_PER_PARTITION, read in place from the object store) and one band of
them at a time; a stage-3 task its group's links and the n-gram sets of one chunk of their documents at a time. Ray
Data's `groupby` is not used: its shuffle coalesced up to 1 GB of input blocks into one task
(`DataContext.shuffle_input_batch_bytes`), that is every key of a 500 MB corpus in one worker. The shuffle makes
groups x partitions objects, each at most MAX_TASKS: past MAX_TASKS shards a group holds several shards, past
MAX_TASKS x ROWS_PER_PARTITION pairs a partition holds more pairs (BENCHMARKS.md section 9 sizes 1 TB and 10 TB).
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
MAX_TASKS = 512  # shard groups and partitions each: each shuffle stage makes at most 512 x 512 = 262,144 objects


def key_rows(caches: list[str], starts: list[int], exact: bool, partitions: int) -> tuple[dict[str, np.ndarray], ...]:
    """Stage 1 for a group of consecutive shards (their first documents `starts`): per partition, its (key, doc) pairs
    shard after shard and band after band (the exact hash first when `exact`), documents in corpus order within a
    band; `count[i, b]` is the number of pairs of the group's shard i in band b."""
    pieces: list[dict[str, list[np.ndarray]]] = [{"key": [], "doc": []} for _ in range(partitions)]
    counts: list[np.ndarray] = []
    for cache, start in zip(caches, starts):
        with np.load(io.BytesIO(fs.read_bytes(cache))) as z:
            bands = z["bands"]
            cols = ([z["exact"]] if exact else []) + [bands[:, b] for b in range(bands.shape[1])]
        count = np.zeros((partitions, len(cols)), dtype=np.int64)
        for b, col in enumerate(cols):
            key = np.ascontiguousarray(col, dtype=np.uint64)
            part = key % np.uint64(partitions)
            order = np.argsort(part, kind="stable")  # stable: documents stay in order within a partition
            count[:, b] = np.bincount(part.astype(np.intp), minlength=partitions)
            bounds = np.concatenate([[0], np.cumsum(count[:, b])])
            for p in range(partitions):
                rows = order[bounds[p]:bounds[p + 1]]
                pieces[p]["key"].append(key[rows])
                pieces[p]["doc"].append(rows + start)
        counts.append(count)
        del cols, bands
    return tuple({"key": np.concatenate(pc["key"]), "doc": np.concatenate(pc["doc"]).astype(np.int64),
                  "count": np.stack([c[p] for c in counts])} for p, pc in enumerate(pieces))


def candidate_links(bounds: np.ndarray, exact: bool, fault: Any, index: int,
                    *pieces: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], ...]:
    """Stage 2 for one partition, given its piece of every group in corpus order: per band, each later holder of a
    key linked to its first holder; the links split by the group of their first document (groups start at `bounds`)."""
    from .ray_engine import maybe_die

    nbands = pieces[0]["count"].shape[1] if pieces else 0
    # where each (shard, band) run starts in its piece: counts are shard-major, bands within a shard
    runs = [(p, np.concatenate([[0], np.cumsum(p["count"].ravel())])) for p in pieces]
    us, vs, ex = [], [], []
    for b in range(nbands):
        spans = [(p, e[i * nbands + b], e[i * nbands + b + 1]) for p, e in runs for i in range(len(p["count"]))]
        key = np.concatenate([p["key"][lo:hi] for p, lo, hi in spans])
        doc = np.concatenate([p["doc"][lo:hi] for p, lo, hi in spans])
        first, other = equal_key_pairs(key)  # positions; in corpus order, so the first is the smallest document
        us.append(doc[first])
        vs.append(doc[other])
        ex.append(np.full(len(first), exact and b == 0))
    u = np.concatenate(us) if us else np.zeros(0, np.int64)
    v = np.concatenate(vs) if vs else np.zeros(0, np.int64)
    e = np.concatenate(ex) if ex else np.zeros(0, bool)
    group = np.searchsorted(bounds, u, side="right") - 1
    order = np.argsort(group, kind="stable")
    cuts = np.concatenate([[0], np.cumsum(np.bincount(group, minlength=len(bounds) - 1))])
    out = tuple({"u": u[order[lo:hi]], "v": v[order[lo:hi]], "exact": e[order[lo:hi]]}
                for lo, hi in zip(cuts[:-1], cuts[1:]))
    maybe_die(fault, index)
    return out


def partial_components(shards: list[str | Path], offsets: np.ndarray, opts: Any,
                       *links: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stage 3 for the links of one group's first documents: verify near links, then (document, root here, exact
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


def shard_groups(nshards: int, max_groups: int) -> list[range]:
    """Consecutive shards in at most `max_groups` groups of nearly equal size."""
    edges = np.linspace(0, nshards, min(nshards, max_groups) + 1).round().astype(int)
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:])]


def ray_clusters(caches: list[str | Path], shards: list[str | Path], offsets: np.ndarray, opts: Any,
                 address: str | None = None, workers: int | None = None) -> "Clusters":
    """The clusters of the corpus whose pass-1 caches are `caches` (one per shard, document offsets `offsets`)."""
    import ray

    from ..dedupe import Clusters
    from .ray_engine import cancel_and_drain, fault_from_env, get, init_ray, remote

    init_ray(address, workers)
    n = int(offsets[-1])
    rows = n * ((opts.bands if opts.near else 0) + (1 if opts.exact else 0))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    partitions = min(max(cpus, math.ceil(rows / ROWS_PER_PARTITION)), MAX_TASKS)
    groups = shard_groups(len(shards), MAX_TASKS)
    bounds = np.array([offsets[g.start] for g in groups] + [offsets[-1]], dtype=np.int64)
    keys = [_refs(remote(key_rows, partitions).remote([str(caches[i]) for i in g], [int(offsets[i]) for i in g],
                                                      opts.exact, partitions), partitions) for g in groups]
    fault = fault_from_env("links")
    links = [_refs(remote(candidate_links, len(groups)).remote(bounds, opts.exact, fault, p, *[k[p] for k in keys]),
                   len(groups)) for p in range(partitions)]
    del keys  # each partition's pieces are freed once its task has them
    comps = [remote(partial_components, 1).remote([str(s) for s in shards], offsets, opts, *[x[i] for x in links])
             for i in range(len(groups))]
    del links
    docs, roots, exact = [], [], []
    for i, (g, ref) in enumerate(zip(groups, comps)):
        what = shards[g.start] if len(g) == 1 else f"{shards[g.start]} to {fs.name(shards[g[-1]])}"
        try:
            part = get(ref, f"{what} (dedupe's global step: its links)")
        except BaseException:
            cancel_and_drain(comps[i + 1:])
            raise
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
