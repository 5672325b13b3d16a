"""Cleaning steps on conversations: each one does what it says, is counted, and can be switched off."""

from collections import Counter

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from zhdata.instruct.clean import Cleaner, CleanConfig, phrase_pattern, role_order_violation
from zhdata.instruct.formats import Conversation

OFF = dict(normalizer=None, drop_empty_turns=False, role_order=False, refusals=(), garbled=False,
           max_chars=None, min_chinese_ratio=None)


def conv(*turns, system=None):
    roles = ["user", "assistant"]
    return Conversation(system, [(roles[i % 2], t) if isinstance(t, str) else t for i, t in enumerate(turns)])


def run(convs, english=False, tokenizer=None, **cfg):
    dropped, modified = Counter(), Counter()
    kept = Cleaner(CleanConfig(**{**OFF, **cfg}), tokenizer).clean(convs, english, dropped, modified)
    return kept, dropped, modified


def test_role_order_rules():
    u, a, t = ("user", "x"), ("assistant", "x"), ("tool", "x")
    assert role_order_violation([u, a, u, a]) is None
    assert role_order_violation([u, a, t, t, a]) is None  # function call, two observations, answer
    assert role_order_violation([u, u, a]) == 1
    assert role_order_violation([u, t, a]) == 1  # a tool turn needs an assistant call before it
    assert role_order_violation([u, a, t]) == 3  # must end with the assistant
    assert role_order_violation([u, a, u]) == 3


def test_role_order_cuts_to_last_good_exchange_or_drops():
    good = conv("问1", "答1", "问2", "答2")
    trailing = conv("问1", "答1", "问2")
    broken = Conversation(None, [("user", "问1"), ("assistant", "答1"), ("assistant", "又答"), ("user", "问2")])
    lone = conv("只有问题")
    kept, dropped, modified = run([good, trailing, broken, lone], role_order=True)
    assert kept == [good, trailing, broken]
    assert trailing.messages == broken.messages == [("user", "问1"), ("assistant", "答1")]
    assert dropped == {"ends_without_assistant": 1}
    assert modified == {"ends_without_assistant_cut": 1, "role_order_cut": 1}
    kept, dropped, _ = run([conv("只有问题")], role_order=False)
    assert len(kept) == 1 and not dropped  # switched off: left as it is


def test_empty_turns_after_normalisation():
    c = conv("问1", "答1", "问2", " \u3000\n ")
    kept, dropped, modified = run([c, conv("问", "\t")], drop_empty_turns=True, role_order=True)
    assert kept == [c] and c.messages == [("user", "问1"), ("assistant", "答1")]
    assert dropped == {"empty_turn": 1} and modified["empty_turn_cut"] == 1


def test_opencc_and_normalisation_keep_code_indentation():
    code = "```python\ndef f():\n    return 1\n```"
    c = conv("  請問這個程式對嗎？ ", "對的：\n" + code, system="你是資深工程師")
    kept, _, modified = run([c], normalizer=CleanConfig().normalizer)
    assert c.messages[0][1] == "请问这个程式对吗？"  # t2s converts characters, not phrasing (tw2sp would); stripped
    assert "    return 1" in c.messages[1][1] and c.messages[1][1].startswith("对的")
    assert c.system == "你是资深工程师"
    assert modified["normalize_convert_turns"] == 3 and modified["normalize_strip_turns"] == 1


def test_refusal_phrases_spaces_and_case_and_cut():
    pat = phrase_pattern(["作为一个AI语言模型", "As an AI language model"])
    import re
    assert re.search(pat, "抱歉，作为一个 AI 语言模型，我不能")
    assert re.search(pat, "well, as an ai  language model I")
    assert not re.search(pat, "语言模型是一种概率模型")
    multi = conv("你好", "你好！", "帮我订机票", "抱歉，作为一个AI语言模型，我无法订票。")
    single = conv("你是谁", "As an AI language model, I am ...")
    kept, dropped, modified = run([multi, single], refusals=("作为一个AI语言模型", "As an AI language model"))
    assert kept == [multi] and multi.messages == [("user", "你好"), ("assistant", "你好！")]
    assert dropped == {"refusal": 1} and modified == {"refusal_cut": 1}
    prompt_only = conv("请不要说'作为一个AI语言模型'", "好的。")  # phrases in the user's turn do not count
    assert run([prompt_only], refusals=("作为一个AI语言模型",))[0] == [prompt_only]


def test_garbled_replacement_char_and_mojibake():
    text = "我们今天去北京看长城。"
    mojibake = text.encode("utf-8").decode("cp1252", errors="replace")
    latin1 = text.encode("utf-8").decode("latin-1")
    convs = [conv("问", "答\ufffd案"), conv("问", mojibake), conv("问", latin1), conv("问", "锟斤拷锟斤拷"),
             conv("Café crème brûlée?", "法式焦糖布丁（crème brûlée）。"), conv("问", "答", system="系统\ufffd")]
    kept, dropped, _ = run(convs, garbled=True)
    assert [c.messages[0][1] for c in kept] == ["Café crème brûlée?"]
    assert dropped == {"garbled": 5}


def test_length_limit_in_characters_cuts_at_a_turn():
    c = conv("一" * 10, "二" * 10, "三" * 10, "四" * 10)
    long_first = conv("长" * 50, "答")
    kept, dropped, modified = run([c, long_first], max_chars=35)
    assert kept == [c] and c.messages == [("user", "一" * 10), ("assistant", "二" * 10)]
    assert dropped == {"too_long_chars": 1} and modified == {"too_long_chars_cut": 1}
    with_system = conv("一" * 10, "二" * 10, system="系" * 20)
    assert run([with_system], max_chars=35)[1] == {"too_long_chars": 1}  # the system prompt counts


def test_length_limit_in_tokens(tmp_path):
    vocab = {w: i for i, w in enumerate(["[UNK]", "a", "b", "c", "d", "e"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    c = conv("a b", "c d e", "a", "b c d e a b")
    kept, dropped, modified = run([c, conv("a b c d e a b c", "d")], tokenizer=tok, max_tokens=7)
    assert kept == [c] and len(c.messages) == 2  # 2 + 3 tokens fit, + 1 + 6 does not
    assert dropped == {"too_long_tokens": 1} and modified == {"too_long_tokens_cut": 1}


def test_chinese_ratio_of_responses_prompt_exemption_and_english_sources():
    english = conv("What is the capital of France?", "The capital of France is Paris.")
    translate = conv("把这句话翻译成英文：今天天气很好", "The weather is nice today.")
    code = conv("写一个函数", "```python\ndef add(a, b):\n    return a + b\n```\n这个函数返回两数之和。")
    chinese = conv("你好", "你好，很高兴认识你。")
    kept, dropped, _ = run([english, translate, code, chinese], min_chinese_ratio=0.1)
    assert kept == [translate, code, chinese] and dropped == {"low_chinese": 1}
    kept, dropped, _ = run([english, translate], min_chinese_ratio=0.1, chinese_prompt_exempt=False)
    assert kept == [] and dropped == {"low_chinese": 2}
    kept, dropped, _ = run([english], english=True, min_chinese_ratio=0.1)
    assert kept == [english] and not dropped


@pytest.mark.parametrize("step", ["garbled", "refusals", "max_chars", "min_chinese_ratio"])
def test_every_step_switches_off(step):
    bad = conv("What?", "As an AI language model \ufffd " + "x" * 100)
    on = {"garbled": True, "refusals": ("As an AI language model",), "max_chars": 50, "min_chinese_ratio": 0.5}
    kept, dropped, _ = run([bad], **{step: on[step]})
    assert kept == [] and sum(dropped.values()) == 1
    assert run([conv("What?", "As an AI language model \ufffd " + "x" * 100)])[0] != []
