"""`zhdata dedupe --engine ray`: the global step of dedupe (which documents form clusters) on Ray Data.

The rule is `zhdata.lsh.duplicate_clusters`, computed on the same links: within each band (and for the exact hash,
as band -1) every document sharing a key with earlier ones is linked to the first document holding that key
(`zhdata.lsh.equal_key_pairs`); near links pass `zhdata.dedupe.JaccardVerifier` unless verification is off; a
cluster is a connected component of the links and its smallest document index is its root. Three stages, none of
which holds every key in one process:

1. keys: one task per shard reads its signature cache (pass 1's `.parts/sig-*.npz`) and emits (band, key, doc)
   rows, with a partition `key mod P`;
2. candidate links: the rows are shuffled by partition (Ray Data `groupby`) so that every holder of a key meets in
   one task, which finds the links of its keys, each tagged with the shard of its first document;
3. verification and partial components: the links are shuffled by that shard; each task verifies its near links
   (it reads the texts of only the documents they name) and runs a union-find over the links that remain,
   emitting each document's root within the task.

A small final pass in the driver unions those partial roots: it holds only documents that have a link (the members
of clusters), 24 bytes each, never the band keys. Its result is sparse: `Clusters`.
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

ROWS_PER_PARTITION = 2_000_000  # (band, key, doc) rows per shuffle partition: ~50 MB per task while it links them


def key_rows(caches: list[str | Path], offsets: np.ndarray, exact: bool, partitions: int) -> dict[str, np.ndarray]:
    """Stage 1 for some shards: (part, band, key, doc) of every document, band -1 holding the exact hash."""
    cols: dict[str, list[np.ndarray]] = {"band": [], "key": [], "doc": []}
    for cache, start in zip(caches, offsets):
        with np.load(io.BytesIO(fs.read_bytes(cache))) as z:
            keys = [z["exact"]] if exact else []
            bands = z["bands"]
            keys += [bands[:, b] for b in range(bands.shape[1])]
            first = -1 if exact else 0
            n = len(z["exact"])
        doc = np.arange(start, start + n, dtype=np.int64)
        for b, k in enumerate(keys, first):
            cols["band"].append(np.full(n, b, dtype=np.int16))
            cols["key"].append(np.ascontiguousarray(k, dtype=np.uint64))
            cols["doc"].append(doc)
    out = {k: np.concatenate(v) if v else np.zeros(0, dtype={"band": np.int16, "key": np.uint64, "doc": np.int64}[k])
           for k, v in cols.items()}
    out["part"] = (out["key"] % np.uint64(partitions)).astype(np.int64)
    return out


def candidate_links(rows: dict[str, np.ndarray], offsets: np.ndarray) -> dict[str, np.ndarray]:
    """Stage 2 on every row of some keys: per band, each later holder of a key linked to its first holder."""
    order = np.lexsort((rows["doc"], rows["band"]))  # by band, documents in corpus order within it
    band, key, doc = rows["band"][order], rows["key"][order], rows["doc"][order]
    us, vs, ex = [], [], []
    for b in np.unique(band):
        lo, hi = np.searchsorted(band, [b, b + 1])
        first, other = equal_key_pairs(key[lo:hi])  # positions; in corpus order, so the first is the smallest doc
        us.append(doc[lo:hi][first])
        vs.append(doc[lo:hi][other])
        ex.append(np.full(len(first), b == -1))
    u = np.concatenate(us) if us else np.zeros(0, np.int64)
    v = np.concatenate(vs) if vs else np.zeros(0, np.int64)
    return {"u": u, "v": v, "exact": np.concatenate(ex) if ex else np.zeros(0, bool),
            "shard": np.searchsorted(offsets, u, side="right") - 1}


def partial_components(links: dict[str, np.ndarray], shards: list[str | Path], offsets: np.ndarray,
                       opts: Any) -> dict[str, np.ndarray]:
    """Stage 3 on the links of some first documents: verify near links, then (document, root here, exact duplicate)."""
    from ..dedupe import JaccardVerifier

    u, v, exact = links["u"], links["v"], links["exact"].astype(bool)
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
    import ray.data

    from ..dedupe import Clusters
    from .ray_engine import init_ray

    init_ray(address, workers)
    n = int(offsets[-1])
    rows = n * ((opts.bands if opts.near else 0) + (1 if opts.exact else 0))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    partitions = max(cpus, math.ceil(rows / ROWS_PER_PARTITION))
    tasks = [{"cache": str(c), "offset": int(o)} for c, o in zip(caches, offsets[:-1])]
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    ds = ds.map_batches(lambda b: key_rows(list(b["cache"]), b["offset"], opts.exact, partitions),
                        batch_size=1, batch_format="numpy")
    ds = ds.groupby("part").map_groups(lambda g: candidate_links(g, offsets), batch_format="numpy")
    ds = ds.groupby("shard").map_groups(lambda g: partial_components(g, shards, offsets, opts), batch_format="numpy")
    parts = list(ds.iter_batches(batch_format="numpy", batch_size=None))
    docs = np.concatenate([p["doc"] for p in parts]) if parts else np.zeros(0, np.int64)
    roots = np.concatenate([p["root"] for p in parts]) if parts else np.zeros(0, np.int64)
    exact = np.concatenate([p["exact"] for p in parts]).astype(bool) if parts else np.zeros(0, bool)
    members = np.unique(docs)
    uf = UnionFind(len(members))
    uf.union(np.searchsorted(members, docs), np.searchsorted(members, roots))
    is_exact = np.zeros(len(members), dtype=bool)
    is_exact[np.searchsorted(members, docs[exact])] = True
    return Clusters(members, members[uf.labels()], is_exact)
