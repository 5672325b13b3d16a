import polars as pl

from zhdata.filters import Filters
from zhdata.ngrams import duplicated_ngram_fraction

GOOD = "这是一段正常的中文文本，内容比较充实，没有什么问题。\n第二行也是正常的句子，长度合适。"


def _reasons(f, texts):
    r, alone = f.reasons(pl.Series(texts))
    return r.to_list(), alone


def test_each_filter_drops_its_case():
    f = Filters(blocklist=("赌博",))
    r, alone = _reasons(f, [GOOD, "短文", "English text " * 5, "一\n二\n三\n四\n五\n六\n七\n八\n九\n十\n百\n千\n万\n亿\n兆\n京\n垓\n秭\n穰\n沟\n涧",
                            "哈" * 40, "赌博网站赌博赌博，欢迎来玩，这里有最好的服务和体验，赌博"])
    assert r == [None, "too_short", "low_chinese_ratio", "short_lines", "repetitive", "blocklisted"]
    assert alone["too_short"] == 1 and alone["blocklisted"] == 1


def test_first_failing_filter_wins_and_filters_switch_off():
    r, alone = _reasons(Filters(), ["哈"])  # too short, and repetitive-free
    assert r == ["too_short"]
    r, _ = _reasons(Filters(min_chars=None, min_avg_line_chars=None), ["哈"])
    assert r == [None]
    r, alone = _reasons(Filters(max_chars=10), [GOOD])
    assert r == ["too_long"] and alone["too_long"] == 1


def test_duplicated_ngram_fraction_exact_values():
    frac = duplicated_ngram_fraction(["abcabc", "abcdef", "", "aaaa", "xyabcyz"], 3)
    # "abcabc": abc occurs twice, covering all 6 chars; "aaaa": aaa twice covers 4
    assert list(frac) == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert duplicated_ngram_fraction(["甲乙丙丁甲乙丙戊"], 3)[0] == 6 / 8


def test_codepoint_measures_match_regex_definitions():
    from zhdata.filters import codepoint_measures
    texts = ["中文 text\n\n  \n第二行𠀀", "", "   ", "a\nb\nc", "龘\u3000ｘ"]
    m = codepoint_measures(texts)
    s = pl.Series(texts)
    assert m["chars"].tolist() == s.str.len_chars().to_list()
    assert m["han"].tolist() == s.str.count_matches(r"\p{Han}").to_list()
    assert m["nonspace"].tolist() == s.str.replace_all(r"\s", "").str.len_chars().to_list()
    assert m["lines"].tolist() == s.str.count_matches(r"(?m)^.*\S.*$").to_list()


def test_codepoint_measures_on_many_texts_match_polars():
    import numpy as np
    from zhdata.filters import codepoint_measures
    rng = np.random.default_rng(3)
    alphabet = list("中文字 \n\t\u3000ab") + [""]
    texts = ["".join(rng.choice(alphabet, int(rng.integers(0, 30)))) for _ in range(400)]
    m = codepoint_measures(texts)
    s = pl.Series(texts)
    assert m["han"].tolist() == s.str.count_matches(r"\p{Han}").to_list()
    assert m["nonspace"].tolist() == s.str.replace_all(r"\s", "").str.len_chars().to_list()
    assert m["lines"].tolist() == s.str.count_matches(r"(?m)^.*\S.*$").to_list()
