import json
from pathlib import Path

import polars as pl

from zhdata.cli import main
from zhdata.langid import LangFilter, identify

FX = Path(__file__).parent / "fixtures" / "web"


def _snippets():
    return [tuple(line.split("\t")) for line in (FX / "lang_snippets.txt").read_text(encoding="utf-8").splitlines()]


def test_chinese_japanese_korean_english_including_kanji_only_japanese_and_classical_chinese():
    labels, texts = zip(*_snippets())
    got = identify(pl.Series(texts))
    assert got["lang"].to_list() == list(labels)  # incl. Traditional, Classical poems, 東京都庁舎 新宿区 所在地
    assert got["lang_score"].min() >= 0.9


def test_mixed_pages_score_the_share_of_their_main_language():
    zh, en_zh = (FX / "lang_mixed.txt").read_text(encoding="utf-8").splitlines()
    got = identify(pl.Series([zh, zh + zh + "\n" + en_zh, zh + "\n" + en_zh, en_zh]))
    assert got["lang"].to_list() == ["zh", "zh", "en", "en"]  # two-thirds Chinese, then half and half
    s = got["lang_score"].to_list()
    assert s[0] > 0.9 and 0.5 < s[1] < 0.8 and 0.45 < s[2] < 0.65 and 0.7 < s[3] < 0.95
    assert identify(pl.Series(["", None, "控制\x01字符\x7f也能识别的中文句子。"]))["lang"].to_list() == [None, None, "zh"]


def test_filter_reasons():
    ident = pl.DataFrame({"lang": ["zh", "ja", "zh", None], "lang_score": [0.95, 0.97, 0.4, 0.0]})
    assert LangFilter(("zh",), 0.5).reasons(ident).to_list() == [None, "wrong_language", "low_lang_score", "wrong_language"]
    assert LangFilter().reasons(ident).null_count() == 4


def test_clean_cli_language_filter_counts_reasons(tmp_path):
    body = "\n这一行补足长度，内容也是正常的中文句子。"
    zh_en = (FX / "lang_mixed.txt").read_text(encoding="utf-8").splitlines()[1]
    zh = (FX / "lang_mixed.txt").read_text(encoding="utf-8").splitlines()[0]
    docs = [t + body for _, t in _snippets() if _ == "zh"] + [t for _, t in _snippets() if _ in ("ja", "ko")] + [
        zh_en + body, zh + zh + "\n" + zh_en]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs), encoding="utf-8")
    out = tmp_path / "o"
    assert main(["clean", str(src), "-o", str(out), "--no-progress", "--min-chinese-ratio", "0", "--min-chars", "5",
                 "--lang", "zh", "--min-lang-score", "0.7"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["params"]["lang"] == {"langs": ["zh"], "min_score": 0.7}
    # 4 ja, 2 ko, the English page with a Chinese line; the page a third English
    assert m["counts"]["dropped"] == {"wrong_language": 7, "low_lang_score": 1}
    assert m["counts"]["records_out"] == 4
    assert main(["clean", str(src), "-o", str(tmp_path / "x"), "--min-lang-score", "0.5"]) == 2
