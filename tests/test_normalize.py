import polars as pl
import pytest

from zhdata.normalize import Normalizer, dedupe_key, normalize_text


def test_t2s_and_tw2sp():
    assert normalize_text("這是一個測試") == "这是一个测试"
    assert normalize_text("伺服器", Normalizer(convert="tw2sp")) == "服务器"
    assert normalize_text("這是", Normalizer(convert="none")) == "這是"


def test_fullwidth_letters_digits_only_punctuation_kept():
    assert normalize_text("ＡＢＣ１２３ａｂ，。！？：；（）") == "ABC123ab，。！？：；（）"


def test_control_zero_width_crlf():
    assert normalize_text("甲\u200b乙\ufeff丙\x07\r\n丁\r戊") == "甲乙丙\n丁\n戊"


def test_html_tags_comments_entities():
    assert normalize_text("<p class='x'>段落</p><!-- c -->&amp;&lt;&#20013;&#x6587;<br/>") == "段落&<中文"
    assert normalize_text("a < b 且 c > d") == "a < b 且 c > d"  # comparison signs are not tags


def test_ansi_and_roff_noise():
    assert normalize_text("\x1b[1;31m红色\x1b[0m N\x08NA\x08AM\x08ME \\fB粗\\fR") == "红色 NAME 粗"


def test_whitespace_runs():
    assert normalize_text("  甲\u3000\u3000乙 \t 丙  \n\n\n\n丁  ") == "甲 乙 丙\n\n丁"


def test_each_step_switchable_and_counted():
    s = pl.Series(["這是ＡＢ", "plain"])
    out, changed = Normalizer(fullwidth=False).apply(s)
    assert out.to_list() == ["这是ＡＢ", "plain"]
    assert changed["convert"] == 1 and "fullwidth" not in changed
    with pytest.raises(ValueError, match="unknown OpenCC mode"):
        Normalizer(convert="x2y")


def test_dedupe_key_ignores_space_punct_case_width():
    a, b = dedupe_key(pl.Series(["你好，World！ ", "你好,world!"])).to_list()
    assert a == b == "你好world"


MAINLAND = "这个软件通过网络连接服务器，程序员用鼠标和打印机调试程序。随着时间推移，信息越来越多，效果显著。"
TAIWAN = "這個軟體通過網路連接伺服器，程式設計師用滑鼠和印表機除錯程式。隨著時間推移，資訊越來越多，效果顯著。"


def test_dedupe_key_is_in_mainland_usage_whatever_the_script_and_phrasing():
    # the Taiwan version as written, and as `zhdata clean` writes it by default (t2s: 软体, 网路, 随著 remain)
    cleaned = normalize_text(TAIWAN)
    assert "软体" in cleaned and "随著" in cleaned
    keys = dedupe_key(pl.Series([MAINLAND, TAIWAN, cleaned])).to_list()
    assert keys[0] == keys[1] == keys[2] == "这个软件通过网络连接服务器程序员用鼠标和打印机调试程序随着时间推移信息越来越多效果显著"
    # mainland words stay: 程序 is not turned into 进程, 显著 keeps its 著; the plain key keeps the Taiwan phrasing
    assert dedupe_key(pl.Series(["程序员调试程序，效果显著"])).to_list() == ["程序员调试程序效果显著"]
    plain = dedupe_key(pl.Series([MAINLAND, cleaned]), mainland=False).to_list()
    assert plain[0] != plain[1] and "软体" in plain[1]


def test_unicode_nfc_composes_but_keeps_compatibility_forms():
    assert normalize_text("Cafe\u0301，ｘ") == "Café，x"  # NFC composes; the full-width step (not NFKC) maps ｘ
    assert normalize_text("Cafe\u0301", Normalizer(unicode=False)) == "Cafe\u0301"
