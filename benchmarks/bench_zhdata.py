"""Benchmarks of `zhdata clean` and `zhdata dedupe` (issue: zhdata foundation). Five sub-commands:

    python benchmarks/bench_zhdata.py clean   --corpus ../shared/corpus/zh      # MB/s per core vs plain Python
    python benchmarks/bench_zhdata.py minhash --corpus ../shared/corpus/zh      # MB/s per core vs rensa, datasketch
    python benchmarks/bench_zhdata.py quality --corpus ../shared/corpus/zh      # pair precision/recall
    python benchmarks/bench_zhdata.py scaling --corpus ../shared/corpus/zh --sizes 100 500 2000 --work /tmp/bz
    python benchmarks/bench_zhdata.py mainland --corpus ../shared/corpus/zh     # dedupe key in mainland usage

Per-core figures are measured in one process with POLARS_MAX_THREADS=1, so they are per core.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

os.environ.setdefault("POLARS_MAX_THREADS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")  # rensa (benchmark only): one thread
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zhdata.clean import CleanOptions, clean_frame  # noqa: E402
from zhdata.dedupe import DedupeOptions  # noqa: E402
from zhdata.minhash import _CHUNK_CHARS, optimal_bands, signatures  # noqa: E402
from zhdata.lsh import band_keys  # noqa: E402
from zhdata.normalize import Normalizer, dedupe_key, opencc_convert  # noqa: E402
from zhdata.ngrams import codepoints, ngram_hashes, text_chunks  # noqa: E402
from corpus_texts import load_texts  # noqa: E402
from zhdata.readers import expand_inputs, iter_records  # noqa: E402


def mb(texts: list[str]) -> float:
    return sum(len(t.encode()) for t in texts) / 1e6


# --- 1. clean: the same rules, written the plain way (per document, Python re + unicodedata) ----------
_FW = {c: c - 0xFEE0 for c in [*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B)]}
_RE = {k: re.compile(v) for k, v in {
    "ansi": r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]|.\x08|\\f[BIRP1-4]|\\s[+-]?[0-9]|\\\([a-z]{2}",
    "control": r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\ufff9-\ufffb]",
    "comment": r"(?s)<!--.*?-->", "tag": r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s+[^<>]*)?/?>",
    "hspace": r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+", "trail": r"(?m) +$", "lead": r"(?m)^ +",
    "nl": r"\n{3,}", "han": r"[\u3400-\u4dbf\u4e00-\u9fff\U00020000-\U0003134f\uf900-\ufaff]", "line": r"(?m)^.*\S.*$",
}.items()}


def plain_python_clean(text: str, cc) -> str | None:
    import html
    t = unicodedata.normalize("NFC", cc.convert(text))
    t = _RE["ansi"].sub("", t)
    t = _RE["control"].sub("", t.replace("\r\n", "\n").replace("\r", "\n"))
    t = html.unescape(_RE["tag"].sub("", _RE["comment"].sub("", t)))
    t = t.translate(_FW)
    t = _RE["nl"].sub("\n\n", _RE["lead"].sub("", _RE["trail"].sub("", _RE["hspace"].sub(" ", t)))).strip()
    n = len(t)
    if n < 20 or n > 1_000_000:
        return None
    nospace = len(re.sub(r"\s+", "", t)) or 1
    if len(_RE["han"].findall(t)) / nospace < 0.3:
        return None
    if n / max(len(_RE["line"].findall(t)), 1) < 5:
        return None
    grams = Counter(t[i:i + 13] for i in range(n - 12))
    covered = bytearray(n)
    for i in range(n - 12):
        if grams[t[i:i + 13]] > 1:
            covered[i:i + 13] = b"\x01" * 13
    if sum(covered) / n > 0.5:
        return None
    return t


def bench_clean(a: argparse.Namespace) -> dict:
    """MB per CPU second of this process (one thread): wall time on a shared machine says more about the neighbours."""
    import opencc
    from clean_breakdown import breakdown
    load = [os.getloadavg()[0]]
    texts = load_texts(a.corpus, a.limit_mb)
    size = mb(texts)
    opts = CleanOptions()
    df = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts, "source": "b"})
    t = time.process_time()
    for lo in range(0, len(df), 20000):  # batches as a worker sees them
        clean_frame(df.slice(lo, 20000), opts)
    ours = time.process_time() - t
    cc = opencc.OpenCC("t2s.json")
    t = time.process_time()
    kept_plain = sum(plain_python_clean(x, cc) is not None for x in texts)
    plain = time.process_time() - t
    _, reason, _, _ = clean_frame(df, opts)
    out = {"docs": len(texts), "mb": round(size, 1), "zhdata_mb_per_cpu_s": round(size / ours, 1),
           "plain_python_mb_per_cpu_s": round(size / plain, 1), "speedup": round(plain / ours, 2),
           "kept_zhdata": int(reason.is_null().sum()), "kept_plain": kept_plain}
    if a.breakdown:
        out["breakdown"] = breakdown(texts)
    load.append(os.getloadavg()[0])
    out["load_average_start_end"] = load
    return out


# --- 2. MinHash signatures vs rensa and datasketch ------------------------------------------------
# rensa and datasketch are benchmark-only: `pip install --target .bench-site rensa==0.5.0` (datasketch>=2.0 comes
# with the test extra), then PYTHONPATH=.bench-site. RAYON_NUM_THREADS=1 keeps rensa on one thread.
def _hashes(texts: list[str], ngram: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per chunk of texts (as `signatures` reads them): the flat 5-gram hashes and uint64 row offsets, the same
    n-grams `signatures` hashes (a text shorter than one n-gram is one token)."""
    out = []
    for lo, hi in text_chunks(texts, _CHUNK_CHARS):
        cp, off = codepoints(texts[lo:hi])
        h, _, doc = ngram_hashes(cp, off, ngram, 1, whole_short=True)
        if len(doc) and (doc[1:] < doc[:-1]).any():  # whole-text hashes of short texts come last: put them in place
            h = h[np.argsort(doc, kind="stable")]
        rows = np.zeros(hi - lo + 1, dtype=np.uint64)
        np.cumsum(np.bincount(doc, minlength=hi - lo), out=rows[1:])
        out.append((h, rows))
    return out


def _identity(x: int) -> int:
    return x


def _cpu_wall(fn) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def _best(fn, repeat: int) -> tuple[float, float]:
    runs = [_cpu_wall(fn) for _ in range(repeat)]
    return min(runs)


def bench_minhash(a: argparse.Namespace) -> dict:
    """Signatures of the corpus's dedupe keys (character 5-grams, 128 values), one process, one thread, CPU seconds
    (best of --repeat): zhdata against rensa's flat-hash matrix paths fed the same 5-gram hashes (their hashing
    counted) and datasketch's batch API (`MinHash.bulk`, on every --ds-fraction-th document), and zhdata's breakdown."""
    import rensa
    from datasketch import MinHash
    from zhdata import minhash as zm
    texts = dedupe_key(pl.Series(load_texts(a.corpus, a.limit_mb))).to_list()
    size = mb(texts)
    rows: dict[str, dict] = {}

    def row(name: str, cpu: float, wall: float, mbytes: float = size) -> None:
        rows[name] = {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "MB_s_per_core": round(mbytes / cpu, 2)}

    row("zhdata.minhash.signatures", *_best(lambda: signatures(texts, 128, 5), a.repeat))
    for name, fn in (("rensa RMinHash.digest_matrix_from_flat_token_hashes", rensa.RMinHash.digest_matrix_from_flat_token_hashes),
                     ("rensa RMinHash.digest_matrix_from_flat_token_hashes_rho (samples positions)",
                      rensa.RMinHash.digest_matrix_from_flat_token_hashes_rho)):
        row(name + ", with the 5-gram hashing", *_best(lambda: [fn(h, r, 128, 1) for h, r in _hashes(texts)], a.repeat))
        hashed = _hashes(texts)
        row(name + ", call alone", *_best(lambda: [fn(h, r, 128, 1) for h, r in hashed], a.repeat))
    # zhdata's breakdown: the shared hashing, the bin minima, the densification
    row("zhdata: 5-gram hashes (codepoints + ngram_hashes)",
        *_best(lambda: [ngram_hashes(*codepoints(texts[lo:hi]), 5, 1, whole_short=True) for lo, hi in text_chunks(texts, zm._CHUNK_CHARS)], a.repeat))
    out = np.full((len(texts), 128), zm.EMPTY, dtype=np.uint32)
    filled = np.zeros((len(texts), 128), dtype=bool)

    def minima() -> None:
        out.fill(zm.EMPTY), filled.fill(False)
        for lo, hi in text_chunks(texts, zm._CHUNK_CHARS):
            zm._bin_minima(texts[lo:hi], out[lo:hi], filled[lo:hi], 5, 1)
    row("zhdata: hashes + bin minima", *_best(minima, a.repeat))
    tables = zm._probe_order(128, 1)
    binned = out.copy()

    def densify() -> None:
        out[:] = binned
        for lo in range(0, len(texts), zm._DENSIFY_ROWS):
            zm._densify(out[lo:lo + zm._DENSIFY_ROWS], filled[lo:lo + zm._DENSIFY_ROWS], *tables)
    row("zhdata: densification", *_best(densify, a.repeat))
    sub = texts[:: a.ds_fraction]  # datasketch is slow: every N-th document, same corpus
    shingles = [[x[i:i + 5].encode() for i in range(max(len(x) - 4, 1))] for x in sub]
    row("datasketch MinHash.bulk (SHA-1 of each 5-gram, the documented batch API)",
        *_cpu_wall(lambda: MinHash.bulk(shingles, num_perm=128)), mb(sub))
    row("datasketch MinHash.bulk, 5-gram bytes built in the timing",
        *_cpu_wall(lambda: MinHash.bulk(([x[i:i + 5].encode() for i in range(max(len(x) - 4, 1))] for x in sub),
                                        num_perm=128)), mb(sub))

    def fed_hashes() -> None:  # the 5-gram hashes computed in numpy, as rensa gets them; datasketch applies its permutations
        lists = [np.split(h.astype(np.uint32), r[1:-1].astype(np.int64)) for h, r in _hashes(sub)]
        MinHash.bulk((x.tolist() for part in lists for x in part), num_perm=128, hashfunc=_identity)
    row("datasketch MinHash.bulk fed zhdata's 5-gram hashes (low 32 bits)", *_cpu_wall(fed_hashes), mb(sub))

    def per_shingle() -> None:
        for x in sub:
            m = MinHash(num_perm=128)
            for i in range(max(len(x) - 4, 1)):
                m.update(x[i:i + 5].encode("utf-8"))
    row("datasketch MinHash().update() per 5-gram", *_cpu_wall(per_shingle), mb(sub))
    ours = rows["zhdata.minhash.signatures"]["MB_s_per_core"]
    return {"docs": len(texts), "MB": round(size, 1), "datasketch docs": len(sub), "datasketch MB": round(mb(sub), 2),
            "load average": os.getloadavg(), "rows": rows,
            "zhdata / each": {k: round(ours / v["MB_s_per_core"], 2) for k, v in rows.items() if not k.startswith("zhdata")}}


# --- 3. near-duplicate quality ------------------------------------------------------------------
def plant(texts: list[str], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Originals plus one variant each: character edits, insertions, truncation or Traditional script."""
    pool = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你能而子那得里自学下过年说"
    out, kinds = [], []
    for x in texts:
        kind = ["edit", "insert", "truncate", "traditional"][int(rng.integers(4))]
        rate = rng.uniform(0.005, 0.06)
        if kind == "edit":
            c = list(x)
            for i in np.nonzero(rng.random(len(c)) < rate)[0]:
                c[i] = pool[int(rng.integers(len(pool)))]
            y = "".join(c)
        elif kind == "insert":
            c = list(x)
            for i in sorted(np.nonzero(rng.random(len(c)) < rate)[0], reverse=True):
                c.insert(int(i), pool[int(rng.integers(len(pool)))])
            y = "".join(c)
        elif kind == "truncate":
            y = x[: int(len(x) * rng.uniform(0.6, 0.98))]
        else:
            y = opencc_convert([x], "s2t")[0]
        out.append(y)
        kinds.append(kind)
    return out, kinds


def exact_pairs(keys: list[str], n: int, min_j: float) -> dict[tuple[int, int], float]:
    """Every pair with exact n-gram Jaccard >= min_j, found through an inverted index of n-grams."""
    cp, off = codepoints(keys)
    h, _, doc = ngram_hashes(cp, off, n, whole_short=True)
    pairs = np.unique(np.stack([h, doc.astype(np.uint64)], 1), axis=0)
    sets = [np.unique(h[doc == i]) for i in range(len(keys))]
    order = np.argsort(pairs[:, 0], kind="stable")
    hs, ds = pairs[order, 0], pairs[order, 1].astype(np.int64)
    bounds = np.nonzero(np.diff(hs))[0] + 1
    shared: Counter = Counter()
    for grp in np.split(ds, bounds):
        if 1 < len(grp) <= 60:  # a pair above 0.5 shares many n-grams, rare ones among them
            for i in range(len(grp)):
                for j in range(i + 1, len(grp)):
                    shared[(int(grp[i]), int(grp[j]))] += 1
    out = {}
    for (i, j), _ in shared.items():
        inter = len(np.intersect1d(sets[i], sets[j], assume_unique=True))
        jac = inter / (len(sets[i]) + len(sets[j]) - inter)
        if jac >= min_j:
            out[(i, j)] = jac
    return out


def lsh_pairs(sigs: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    keys = band_keys(sigs, bands, rows)
    out = set()
    for b in range(bands):
        groups: dict[int, list[int]] = {}
        for i, k in enumerate(keys[:, b].tolist()):
            groups.setdefault(k, []).append(i)
        for g in groups.values():
            for x in range(len(g)):
                for y in range(x + 1, len(g)):
                    out.add((g[x], g[y]))
    return out


def bench_quality(a: argparse.Namespace) -> dict:
    """Pair precision and recall against exact 5-gram Jaccard on planted near-duplicates, every tool on the same
    cleaned keys and the same 5-gram shingles, with each tool's CPU seconds (sketches, LSH, the check of candidates)."""
    import rensa
    from datasketch import MinHash, MinHashLSH
    rng = np.random.default_rng(0)
    docs = [t for t in load_texts(a.corpus) if 200 <= len(t) <= 3000]
    docs = [docs[i] for i in rng.choice(len(docs), a.docs, replace=False)]
    variants, kinds = plant(docs, rng)
    keys = dedupe_key(pl.Series(Normalizer().apply(pl.Series(docs + variants))[0])).to_list()
    truth_all = exact_pairs(keys, 5, 0.5)
    shingles = [[k[i:i + 5] for i in range(max(len(k) - 4, 1))] for k in keys]
    cpu: dict[str, float] = {}

    def timed_cpu(name: str, fn):
        t = time.process_time()
        r = fn()
        cpu[name] = round(time.process_time() - t, 3)
        return r

    sigs = timed_cpu("zhdata signatures", lambda: signatures(keys, 128, 5))
    ds_sigs = timed_cpu("datasketch MinHash.bulk", lambda: MinHash.bulk(([x.encode() for x in s] for s in shingles), num_perm=128))
    rs = timed_cpu("rensa RMinHash.from_token_sets", lambda: rensa.RMinHash.from_token_sets(shingles, 128, 1))
    sets: list[np.ndarray] = []

    def exact_sets() -> None:
        cp, off = codepoints(keys)
        h, _, doc = ngram_hashes(cp, off, 5, 1, whole_short=True)
        order = np.argsort(doc, kind="stable")
        sets.extend(np.unique(x) for x in np.split(h[order], np.cumsum(np.bincount(doc, minlength=len(keys)))[:-1]))
    timed_cpu("zhdata n-gram sets for verification", exact_sets)

    def verified(cand: set, t: float) -> set:
        keep = set()
        for i, j in cand:
            inter = len(np.intersect1d(sets[i], sets[j], assume_unique=True))
            if inter / (len(sets[i]) + len(sets[j]) - inter) >= t:
                keep.add((i, j))
        return keep

    out = {"documents": len(keys), "planted": Counter(kinds), "load average": os.getloadavg()}
    for t in (0.7, 0.8, 0.9):
        truth = {p for p, j in truth_all.items() if j >= t}
        b, r = optimal_bands(t, 128)
        cand = lsh_pairs(sigs, b, r)

        def ds_lsh():
            lsh = MinHashLSH(threshold=t, num_perm=128)
            for i, m in enumerate(ds_sigs):
                lsh.insert(i, m)
            return {(min(i, j), max(i, j)) for i, m in enumerate(ds_sigs) for j in lsh.query(m) if i != j}
        ds_cand = timed_cpu(f"datasketch MinHashLSH at {t}", ds_lsh)

        def rensa_lsh():  # what RMinHashDeduplicator does: LSH candidates kept when the estimate reaches t
            lsh = rensa.RMinHashLSH(t, 128, a.rensa_bands)
            lsh.insert_many(rs)
            return {(min(i, j), max(i, j)) for i, c in enumerate(lsh.query_all(rs)) for j in c
                    if i != j and rs[i].jaccard(rs[j]) >= t}
        rensa_pairs = timed_cpu(f"rensa RMinHashLSH + estimate at {t}", rensa_lsh)
        # the default since issue 14: bands chosen for recall, candidates verified by exact Jaccard
        d = DedupeOptions(threshold=t).resolved()
        ours = timed_cpu(f"zhdata default LSH + exact verification at {t}",
                         lambda: verified(lsh_pairs(sigs, d.bands, d.rows), t))
        row = {"bands_x_rows": f"{b}x{r}", "default_bands_x_rows": f"{d.bands}x{d.rows}", "true_pairs": len(truth),
               "rensa_bands_x_rows": f"{a.rensa_bands}x{128 // a.rensa_bands}"}
        est = {p for p in cand if np.mean(sigs[p[0]] == sigs[p[1]]) >= t}
        for name, pred in (("zhdata_lsh_old_default_unverified", cand), ("zhdata_lsh_plus_estimate", est), ("datasketch_lsh", ds_cand),
                           ("rensa_lsh_plus_estimate", rensa_pairs), ("zhdata_default_verified", ours)):
            tp = len(pred & truth)
            row[name] = {"precision": round(tp / max(len(pred), 1), 3), "recall": round(tp / max(len(truth), 1), 3)}
        out[f"threshold_{t}"] = row
    out["cpu_s"] = cpu
    return out


# --- 4. scaling ---------------------------------------------------------------------------------
def make_corpus(corpus: str, size_mb: int, out: Path, seed: int = 0) -> Path:
    """New documents of 3-12 random real paragraphs, until `size_mb` of JSONL."""
    paras = [p for t in load_texts(corpus) for p in t.split("\n") if len(p) >= 10]
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"resampled-{size_mb}mb.jsonl"
    if f.exists():
        return f
    written, i = 0, 0
    with open(f, "w", encoding="utf-8") as fh:
        while written < size_mb * 1e6:
            text = "\n".join(paras[j] for j in rng.integers(0, len(paras), int(rng.integers(3, 13))))
            line = json.dumps({"id": f"r{i}", "text": text}, ensure_ascii=False) + "\n"
            fh.write(line)
            written += len(line.encode())
            i += 1
    return f


def timed(cmd: list[str]) -> dict:
    """Wall time and peak RSS (largest single process, from GNU time) of a command."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return {"wall_s": round(time.perf_counter() - t, 1), "peak_rss_mb": round(rss / 1024)}


def bench_scaling(a: argparse.Namespace) -> dict:
    work = Path(a.work)
    zh = str(Path(sys.executable).parent / "zhdata")
    out = {}
    for size in a.sizes:
        src = make_corpus(a.corpus, size, work / "in")
        c, d = work / f"clean-{size}", work / f"dedup-{size}"
        subprocess.run(["rm", "-rf", str(c), str(d)], check=True)
        rc = timed([zh, "clean", str(src), "-o", str(c), "--workers", str(a.workers), "--no-progress"])
        rd = timed([zh, "dedupe", str(c), "-o", str(d), "--workers", str(a.workers), "--no-progress"])
        m = json.loads((d / "manifest.json").read_text())["counts"]
        out[f"{size}MB"] = {"clean": rc, "dedupe": rd, "docs": m["records_in"], "kept": m["records_out"],
                            "clean_mb_s": round(size / rc["wall_s"], 1), "dedupe_mb_s": round(size / rd["wall_s"], 1)}
        print(json.dumps({f"{size}MB": out[f"{size}MB"]}), flush=True)
    return out


# --- 5. dedupe key in mainland usage (issue 14) --------------------------------------------------
def bench_mainland(a: argparse.Namespace) -> dict:
    """Simplified documents and their Taiwan versions (OpenCC s2twp: Traditional characters, Taiwan phrasing),
    both cleaned with the default t2s as `zhdata clean` writes them; twin pairs at 5-gram Jaccard >= 0.8 and pairs
    the default dedupe (LSH 16 x 8 + exact verification) clusters, with the plain key and the mainland key; the
    key's cost per MB against the OpenCC conversions."""
    rng = np.random.default_rng(0)
    files = {f.name: f for f in expand_inputs([a.corpus])}
    docs = [r["text"] for n in ("cmrc2018_wiki_contexts_zh_cn.jsonl", "python_docs_zh_cn_po.jsonl", "react_docs_zh_hans_md.jsonl",
                                "prc_laws_regulations_zh_cn.jsonl") for _, r in iter_records(files[n])]
    docs = [t for t in docs if 200 <= len(t) <= 3000]
    docs = [docs[i] for i in rng.choice(len(docs), min(a.docs, len(docs)), replace=False)]
    twins = opencc_convert(docs, "s2twp")
    cleaned = Normalizer().apply(pl.Series(docs + twins))[0]
    n = len(docs)
    out: dict = {"documents": n, "twins": n, "twins changed by s2twp": sum(x != y for x, y in zip(docs, twins))}
    d = DedupeOptions().resolved()
    for name, mainland in (("plain key (NFKC, no punctuation)", False), ("mainland key (default)", True)):
        keys = dedupe_key(cleaned, mainland=mainland).to_list()
        truth = exact_pairs(keys, 5, 0.5)
        twin_j = np.array([truth.get((i, i + n), 0.0) for i in range(n)])
        sigs = signatures(keys, 128, 5)
        found = {p for p in lsh_pairs(sigs, d.bands, d.rows) if truth.get(p, 0.0) >= 0.8}
        out[name] = {"twin pairs with Jaccard >= 0.8": int((twin_j >= 0.8).sum()),
                     "median twin Jaccard (0 where under 0.5)": round(float(np.median(twin_j)), 3),
                     "twin pairs clustered by the default dedupe": sum((i, i + n) in found for i in range(n)),
                     "other pairs clustered": sum(1 for i, j in found if j != i + n)}
    texts = Normalizer().apply(pl.Series(load_texts(a.corpus, a.limit_mb)))[0]
    size = sum(len(t.encode()) for t in texts.to_list()) / 1e6
    vals = texts.to_list()
    keys = dedupe_key(texts).to_list()
    rates = {"MB": round(size, 1)}
    for name, fn in (("dedupe_key, plain", lambda: dedupe_key(texts, mainland=False)),
                     ("dedupe_key, mainland (default)", lambda: dedupe_key(texts)),
                     ("OpenCC t2s alone", lambda: opencc_convert(vals, "t2s")),
                     ("OpenCC tw2sp alone", lambda: opencc_convert(vals, "tw2sp")),
                     ("MinHash signatures of the keys", lambda: signatures(keys, 128, 5))):
        fn()  # warm: the converter is built once per process
        best = min(_cpu(fn) for _ in range(2))
        rates[name] = {"MB/s": round(size / best, 1), "ms per MB": round(1000 * best / size, 1)}
    out["cost per core (cleaned corpus text)"] = rates
    return out


def _cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["clean", "minhash", "quality", "scaling", "mainland"])
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus" / "zh"))
    p.add_argument("--limit-mb", type=float, default=None, help="use only the first N MB of the corpus")
    p.add_argument("--breakdown", action="store_true", help="clean: also each step's CPU time (default and old steps)")
    p.add_argument("--ds-fraction", type=int, default=10, help="time datasketch on 1/N of the documents")
    p.add_argument("--rensa-bands", type=int, default=16, help="quality: rensa's LSH bands (a divisor of 128)")
    p.add_argument("--repeat", type=int, default=3, help="minhash: best of N runs (CPU seconds)")
    p.add_argument("--docs", type=int, default=1500, help="quality: originals (each gets one planted variant)")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2000])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", default="/tmp/bench-zhdata")
    a = p.parse_args()
    res = {"clean": bench_clean, "minhash": bench_minhash, "quality": bench_quality, "scaling": bench_scaling,
           "mainland": bench_mainland}[a.what](a)
    print(json.dumps(res, ensure_ascii=False, indent=1, default=str))


if __name__ == "__main__":
    main()
