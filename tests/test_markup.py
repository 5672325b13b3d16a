import json
from pathlib import Path

import polars as pl
import pytest

from zhdata.cli import main
from zhdata.markup import Markup, detect, markdown_to_text, roff_to_text, wiki_to_text

FX = Path(__file__).parent / "fixtures" / "web"
PLAIN = "这是一段正常的中文文本，内容比较充实，没有什么问题。\n第二行也是正常的句子，长度合适。"


def _fx(name: str) -> str:
    return (FX / name).read_text(encoding="utf-8")


def _one(fn, text: str) -> str:
    return fn(pl.Series([text]))[0]


def test_detect_one_kind_per_document_and_plain_text_untouched():
    docs = [_fx("ls.1.zh.roff"), _fx("news.html"), _fx("guide.md"), _fx("article.wiki"), PLAIN,
            "价格是 **很低** 的",  # one Markdown signal is not Markdown
            "<b>加粗</b> 一处标签<br>第二行<br>第三行<br><a href='/x'>链接</a>"]  # nor are inline tags an HTML page
    assert detect(pl.Series(docs)).to_list() == ["roff", "html", "markdown", "wiki", None, None, None]
    out, sig, changed = Markup().apply(pl.Series(docs))
    assert out[4:].to_list() == docs[4:]
    assert sig["markup_frac"][4] == 0.0 and all(f > 0.2 for f in sig["markup_frac"][:4])
    assert changed == {"markup_roff": 1, "markup_html": 1, "markup_markdown": 1, "markup_wiki": 1}


def test_roff_requests_comments_and_escapes_become_text():
    out = _one(roff_to_text, _fx("ls.1.zh.roff"))
    assert out.splitlines()[:2] == ["名称", "ls - 列出目录内容"]
    for gone in (".TH", ".SH", ".B ", ".TP", ".PP", ".IP", '.\\"', "\\f", "\\-", "\\(", "原创示例", "添加详细说明"):
        assert gone not in out, gone
    assert "如果没有指定 -cftuvSUX 中的任何一个" in out and "--sort，则按字母顺序" in out
    assert "-a, --all" in out and "信息—包括权限" in out  # \(em is an em dash
    assert "参见" in out and "“info coreutils 'ls invocation'”" in out  # .SH "参见", \(lq \(rq
    assert "• " not in out and "•\n退出状态为 0" in out  # .IP "\(bu" keeps the bullet as its own line
    assert _one(roff_to_text, ".TH X 1\n.SH 名称\n路径 C:\\eWindows 与 a\\\\b\n") == "名称\n路径 C:\\Windows 与 a\\b\n"


def test_html_main_text_leaves_out_navigation_sidebar_footer_and_scripts():
    out, _, _ = Markup().apply(pl.Series([_fx("news.html")]))
    text = out[0]
    assert text.startswith("城市公园改造工程完工")
    assert "经过为期一年半的施工" in text and "一位姓王的居民说" in text
    for boiler in ("登录", "热门排行", "优惠券", "京ICP备", "隐私政策", "gtag", "font-family"):
        assert boiler not in text, boiler


def test_markdown_to_text_keeps_code_and_link_text():
    out = _one(markdown_to_text, _fx("guide.md"))
    assert out.splitlines()[0] == "快速开始"
    assert "在本地环境中安装" in out and "请先阅读安装指南。" in out
    assert "npm install\nnpm run dev" in out and "```" not in out  # code kept, fences gone
    assert "注意：首次安装" in out and "> " not in out
    assert "使用 npm run build 构建生产版本" in out and "项目结构示意图" in out
    assert "请参阅常见问题。" in out and "example.com" not in out
    assert _one(markdown_to_text, "# 标题\n\n价格 2*3*4 元，**重点**。") == "标题\n\n价格 2*3*4 元，重点。"


def test_wiki_to_text_links_templates_refs_files_categories():
    out = _one(wiki_to_text, _fx("article.wiki"))
    assert out.strip().startswith("示例河是中国南方的一条河流")
    assert "流经示例省的三个县，最终注入长江。" in out and "利用示例河进行灌溉" in out
    assert "\n历史\n" in out and "详见湿地保护名录。" in out
    for gone in ("[[", "]]", "{{", "}}", "'''", "Infobox", "cite book", "thumb", "Category", "=="):
        assert gone not in out, gone


def test_switches_keep_each_kind():
    docs = pl.Series([_fx("ls.1.zh.roff"), _fx("guide.md"), _fx("article.wiki"), _fx("news.html")])
    out, sig, changed = Markup(html="keep", roff=False, wiki=False, markdown=False).apply(docs)
    assert out.to_list() == docs.to_list() and changed == {} and sig["markup"].null_count() == 4
    out, sig, changed = Markup(html="keep", roff=False, wiki=False).apply(docs)
    assert out.to_list()[::2] == docs.to_list()[::2] and changed == {"markup_markdown": 1}
    assert sig["markup"].to_list() == [None, "markdown", None, "html"]  # HTML is detected, never taken for Markdown
    with pytest.raises(ValueError, match="unknown --html mode"):
        Markup(html="all")


def _clean(tmp_path, docs, *flags):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(docs)),
                   encoding="utf-8")
    out = tmp_path / ("o" + "".join(flags).replace("-", "_"))
    assert main(["clean", str(src), "-o", str(out), "--no-progress", "--workers", "1", *flags]) == 0
    m = json.loads((out / "manifest.json").read_text())
    df = pl.concat([pl.read_parquet(f) for f in sorted(out.glob("*.parquet"))])
    return dict(zip(df["id"], df["text"])), m


def test_clean_cli_counts_markup_per_kind_and_switches(tmp_path):
    docs = [_fx("ls.1.zh.roff"), _fx("news.html"), _fx("guide.md"), _fx("article.wiki"), PLAIN]
    text, m = _clean(tmp_path, docs)
    mod = m["counts"]["modified"]
    assert {k: mod[k] for k in mod if k.startswith("markup_")} == {"markup_roff": 1, "markup_html": 1, "markup_markdown": 1, "markup_wiki": 1}
    assert m["params"]["markup"] == {"html": "main", "roff": True, "wiki": True, "markdown": True}
    assert ".SH" not in text["0"] and "热门排行" not in text["1"] and "**" not in text["2"] and "[[" not in text["3"]
    text, m = _clean(tmp_path, docs, "--html", "text", "--no-roff", "--no-markdown")
    assert "热门排行" in text["1"] and "<p>" not in text["1"]  # all text, tags stripped
    assert ".SH 名称" in text["0"] and "## 安装依赖" in text["2"]
    text, m = _clean(tmp_path, docs, "--html", "keep", "--min-chinese-ratio", "0")
    assert "<p>经过为期一年半的施工" in text["1"]
