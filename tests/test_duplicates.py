"""The one stable hash and the one duplicate rule: golden outputs recorded from the code before the twins
were merged (pack's split, dedupe's clusters, instruct's masks), and the rule itself on a hand-made chain."""

from __future__ import annotations

import random

import numpy as np
import polars as pl

from train.evaluate import doc_key
from zhdata.dedupe import DedupeOptions, run_dedupe
from zhdata.hashing import hash64
from zhdata.instruct.dedup import DuplicateFinder
from zhdata.lsh import LSHIndex, duplicate_clusters, equal_key_pairs
from zhdata.manifest import Manifest
from zhdata.normalize import dedupe_key
from zhdata.pack.split import split_of

POOL = list("天地玄黄宇宙洪荒日月盈昃辰宿列张寒来暑往秋收冬藏闰余成岁律吕调阳云腾致雨露结为霜金生丽水玉出昆冈")
STRINGS = ["", "a", "doc-1", "天地玄黄，宇宙洪荒。", "part-00001-0000.parquet:17", "🙂 emoji + 中文 mixed\n"]
# recorded from zhdata/pack/split.py before the merge (big-endian blake2b-64; dedupe and instruct used the
# little-endian order, but only ever compared their hashes for equality)
HASH = [16476032584258269876, 4681665781835383343, 6265767295393789249, 1807536318454913139, 2227139279169346992,
        5678914945710500588]
VAL = [4, 13, 21, 22, 31, 55, 60, 68, 84, 91, 96, 97, 98, 116, 125, 127, 130, 138, 145, 151, 157, 166, 167, 177, 208, 210,
       225, 241, 244, 253, 260, 277, 279, 282]
CLUSTERS = {"s0-0": ["s0-0", "s0-11", "s0-16", "s1-8", "s2-6", "s2-7", "s2-13"], "s0-2": ["s0-2", "s1-15"],
            "s0-3": ["s0-3", "s0-13", "s2-12"], "s0-4": ["s0-4", "s0-6", "s1-0", "s2-15"],
            "s0-5": ["s0-5", "s0-19", "s1-1", "s1-5", "s1-7", "s2-17"], "s0-7": ["s0-7", "s1-13", "s1-17"],
            "s0-8": ["s0-8", "s2-0"], "s0-9": ["s0-9", "s1-3", "s1-16", "s2-3"], "s0-12": ["s0-12", "s1-12"],
            "s0-15": ["s0-15", "s1-18", "s2-19"], "s0-18": ["s0-18", "s1-2", "s2-11", "s2-18"], "s1-4": ["s1-4", "s2-8"]}
INSTRUCT_EXACT = [14, 19, 24, 26, 27, 29, 30, 34, 35, 37, 38, 39]
INSTRUCT_NEAR = [1, 3, 4, 6, 8, 10, 11, 13, 17, 18, 20, 21, 22, 23, 25, 28, 31, 32, 33, 36]
INSTRUCT_ROOTS = [0, 0, 2, 2, 0, 5, 0, 7, 7, 9, 2, 5, 12, 9, 12, 15, 16, 12, 2, 9, 9, 2, 16, 12, 0, 7, 2, 12, 16, 0, 15, 16,
                  9, 15, 2, 16, 7, 9, 0, 5]


def _corpus() -> list[list[str]]:
    """60 documents in 3 shards: copies, copies with other spacing, one-character edits and unique texts."""
    rng = random.Random(15)
    base = ["".join(rng.choice(POOL) for _ in range(200)) for _ in range(12)]
    texts = []
    for _ in range(60):
        t = base[rng.randrange(12)]
        kind = rng.randrange(4)
        if kind == 1:
            t = t[:100] + "某" + t[101:]
        elif kind == 2:
            t = " ".join(t[k:k + 25] for k in range(0, 200, 25)) + "。"
        elif kind == 3:
            t = "".join(rng.choice(POOL) for _ in range(200))
        texts.append(t)
    return [texts[k * 20:(k + 1) * 20] for k in range(3)]


def _conversations() -> list[tuple[None, list[tuple[str, str]]]]:
    rng = random.Random(16)
    base = ["".join(rng.choice(POOL) for _ in range(30)) for _ in range(8)]
    out = []
    for _ in range(40):
        q = base[rng.randrange(8)]
        if rng.randrange(3) == 1:
            q = q[:15] + "某" + q[16:]
        out.append((None, [("user", q), ("assistant", "答" + str(rng.randrange(3)))]))
    return out


def test_hash64_and_pack_split_are_unchanged():
    assert [hash64(s) for s in STRINGS] == HASH
    # train eval's per-document keys (bpc.json, paired by train compare) were blake2b hex digests before they
    # became hash64 in hex: the same strings
    assert [doc_key(s) for s in STRINGS] == ["e4a6a0577479b2b4", "40f89e395b66422f", "56f47a285f34f541",
                                             "1915a8b4741f5873", "1ee8635fe0355db0", "4ecf8f0e10bb2aec"]
    assert [i for i in range(300) if split_of(f"doc-{i}", 0.1) == "val"] == VAL
    assert split_of("doc-4", 0) == "train"


def test_dedupe_keeps_the_same_documents_and_labels_by_the_rule(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    shards = _corpus()
    for k, part in enumerate(shards):
        pl.DataFrame({"id": [f"s{k}-{i}" for i in range(len(part))], "text": part, "source": "t"}).write_parquet(
            d / f"part-{k:05d}-0000.parquet")
    Manifest("zhdata clean", {}).write(d)
    m = run_dedupe(d, tmp_path / "out", DedupeOptions(), progress=False)
    cl = pl.read_parquet(tmp_path / "out" / "clusters.parquet")
    got: dict[str, list[str]] = {}
    for r in cl.iter_rows(named=True):
        got.setdefault(r["cluster"], []).append(r["id"])
        assert r["kept"] == (r["id"] == r["cluster"])
    assert {c: sorted(v) for c, v in got.items()} == {c: sorted(v) for c, v in CLUSTERS.items()}
    # the rule: exact_duplicate when an earlier document has the same dedupe key, near_duplicate otherwise
    ids = [f"s{k}-{i}" for k, part in enumerate(shards) for i in range(len(part))]
    keys = dedupe_key(pl.Series([t for part in shards for t in part])).to_list()
    seen, expected = set(), {}
    for i, key in zip(ids, keys):
        expected[i] = "exact_duplicate" if key in seen else "near_duplicate"
        seen.add(key)
    dropped = {r["id"]: r["reason"] for r in cl.iter_rows(named=True) if not r["kept"]}
    assert dropped == {i: expected[i] for i in dropped}
    assert m.counts.dropped == {"exact_duplicate": sum(v == "exact_duplicate" for v in dropped.values()),
                                "near_duplicate": sum(v == "near_duplicate" for v in dropped.values())}
    assert set(m.counts.dropped.values()) != {0}


def test_instruct_duplicates_are_unchanged(tmp_path):
    convs = _conversations()
    f = DuplicateFinder(tmp_path / "w")
    f.add([c[0] for c in convs], [c[1] for c in convs])
    exact, near, roots = f.decide()
    assert exact.nonzero()[0].tolist() == INSTRUCT_EXACT
    assert near.nonzero()[0].tolist() == INSTRUCT_NEAR
    assert roots.tolist() == INSTRUCT_ROOTS


def test_equal_key_pairs_link_to_the_first_of_each_run():
    first, other = equal_key_pairs(np.array([5, 3, 5, 9, 3, 5], dtype=np.uint64))
    assert sorted(zip(other.tolist(), first.tolist())) == [(2, 0), (4, 1), (5, 0)]
    assert [len(x) for x in equal_key_pairs(np.array([], dtype=np.uint64))] == [0, 0]


def test_duplicate_rule_on_a_chain(tmp_path):
    """0 and 1 are near duplicates; 2 is an exact copy of 1; 3 is an exact copy of 0 with no band link; 4 stands
    alone. One cluster {0..3} kept at 0; 2 and 3 are exact duplicates (an earlier document has their key), 1 near."""
    index = LSHIndex(tmp_path / "bands", bands=1, rows=1)
    index.add_keys(np.array([[1], [1], [1], [7], [8]], dtype=np.uint64))
    roots, exact = duplicate_clusters(5, np.array([10, 20, 20, 10, 30], dtype=np.uint64), index)
    index.close()
    assert roots.tolist() == [0, 0, 0, 0, 4] and exact.tolist() == [False, False, True, True, False]
    # a verifier that rejects the band link leaves only the exact links
    index = LSHIndex(tmp_path / "bands2", bands=1, rows=1)
    index.add_keys(np.array([[1], [1], [1], [7], [8]], dtype=np.uint64))
    roots, _ = duplicate_clusters(5, np.array([10, 20, 20, 10, 30], dtype=np.uint64), index,
                                  lambda u, v: np.zeros(len(u), dtype=bool))
    index.close()
    assert roots.tolist() == [0, 1, 1, 0, 4]
    # exact keys only / near links only
    assert duplicate_clusters(3, np.array([4, 4, 5], dtype=np.uint64))[0].tolist() == [0, 0, 2]
    index = LSHIndex(tmp_path / "bands3", bands=1, rows=1)
    index.add_keys(np.array([[2], [3], [2]], dtype=np.uint64))
    roots, exact = duplicate_clusters(3, None, index)
    index.close()
    assert roots.tolist() == [0, 1, 0] and not exact.any()
