"""Parsing Alpaca, ShareGPT, OpenAI messages and preference records into one conversation shape."""

import json

import pytest

from zhdata.instruct.formats import (ColumnMap, RecordError, detect_record_format, parse_columns, parse_record)


def parse(rec, cols=ColumnMap(), preference="error"):
    return parse_record(rec, detect_record_format(rec, cols), cols, preference)


def test_alpaca_joins_input_and_keeps_history_and_system():
    rec = {"instruction": "把这句话翻译成英文", "input": "今天天气很好", "output": "The weather is nice today.",
           "system": "你是翻译助手", "history": [["你好", "你好！有什么可以帮你？"]]}
    conv = parse(rec)
    assert detect_record_format(rec, ColumnMap()) == "alpaca"
    assert conv.system == "你是翻译助手"
    assert conv.messages == [("user", "你好"), ("assistant", "你好！有什么可以帮你？"),
                             ("user", "把这句话翻译成英文\n今天天气很好"), ("assistant", "The weather is nice today.")]


def test_alpaca_empty_or_null_input_is_not_appended():
    for query in ("", None):
        conv = parse({"instruction": "讲个笑话", "input": query, "output": "好的。"})
        assert conv.messages[0] == ("user", "讲个笑话") and conv.system is None


def test_sharegpt_roles_system_function_call_and_observation():
    rec = {"conversations": [
        {"from": "system", "value": "你是助手"},
        {"from": "human", "value": "北京天气？"},
        {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "北京"}}'},
        {"from": "observation", "value": '{"temp": 20}'},
        {"from": "gpt", "value": "北京现在20度。"}]}
    conv = parse(rec)
    assert detect_record_format(rec, ColumnMap()) == "sharegpt"
    assert conv.system == "你是助手"
    assert [r for r, _ in conv.messages] == ["user", "assistant", "tool", "assistant"]


def test_shareai_exchange_pairs():
    rec = {"conversation": [{"human": "你好", "assistant": "你好！"}, {"human": "再见", "assistant": "再见！"}],
           "category": "chat"}
    assert detect_record_format(rec, ColumnMap()) == "sharegpt"
    assert parse(rec).messages == [("user", "你好"), ("assistant", "你好！"), ("user", "再见"), ("assistant", "再见！")]
    with pytest.raises(RecordError, match="is null"):
        parse({"conversation": [{"human": "你好", "assistant": None}]})


def test_openai_messages_content_parts_and_tool_calls():
    rec = {"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "你好，"}, {"type": "text", "text": "世界"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "function": {"name": "f"}}]},
        {"role": "tool", "content": "ok"},
        {"role": "assistant", "content": "完成"}]}
    conv = parse(rec)
    assert detect_record_format(rec, ColumnMap()) == "openai"
    assert conv.system == "be brief"
    assert conv.messages[0] == ("user", "你好，世界")
    assert json.loads(conv.messages[1][1]) == [{"function": {"name": "f"}, "id": "1"}]
    assert conv.messages[2:] == [("tool", "ok"), ("assistant", "完成")]
    rec["messages"][2]["content"] = ""  # many datasets write "" rather than null for a tool-call-only turn
    assert json.loads(parse(rec).messages[1][1]) == [{"function": {"name": "f"}, "id": "1"}]


def test_column_mapping_string_and_llamafactory_entry(tmp_path):
    cols, fmt = parse_columns("prompt=question,response=answer,query=context")
    conv = parse({"question": "问", "context": "上下文", "answer": "答"}, cols)
    assert conv.messages == [("user", "问\n上下文"), ("assistant", "答")] and fmt is None

    entry = {"file_name": "x.json", "formatting": "sharegpt", "columns": {"messages": "dialog"},
             "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "USER", "assistant_tag": "BOT"}}
    (tmp_path / "map.json").write_text(json.dumps(entry), encoding="utf-8")
    cols, fmt = parse_columns(str(tmp_path / "map.json"))
    conv = parse({"dialog": [{"speaker": "USER", "text": "嗨"}, {"speaker": "BOT", "text": "你好"}]}, cols)
    assert fmt == "sharegpt" and conv.messages == [("user", "嗨"), ("assistant", "你好")]
    with pytest.raises(ValueError, match="unknown column-mapping keys"):
        parse_columns("answer_field=x")


def test_preference_rejected_by_default_and_converted_by_flag():
    alpaca = {"instruction": "写一句诗", "input": "", "chosen": "床前明月光", "rejected": "不会"}
    with pytest.raises(RecordError, match="preference data") as e:
        parse(alpaca)
    assert e.value.reason == "preference"
    assert parse(alpaca, preference="chosen").messages == [("user", "写一句诗"), ("assistant", "床前明月光")]

    sharegpt = {"conversations": [{"from": "human", "value": "1+1?"}],
                "chosen": {"from": "gpt", "value": "2"}, "rejected": {"from": "gpt", "value": "3"}}
    assert parse(sharegpt, preference="chosen").messages == [("user", "1+1?"), ("assistant", "2")]

    trl = {"prompt": "你是谁？", "chosen": [{"role": "assistant", "content": "我是助手"}],
           "rejected": [{"role": "assistant", "content": "不知道"}]}
    assert parse(trl, preference="chosen").messages == [("user", "你是谁？"), ("assistant", "我是助手")]


@pytest.mark.parametrize("rec, reason, words", [
    ({"conversations": [{"from": "robot", "value": "x"}]}, "unknown_role", "unknown role 'robot'"),
    ({"conversations": [{"from": ["human"], "value": "x"}]}, "unknown_role", "unknown role ['human']"),
    ({"messages": "hello"}, "bad_type", "not a list of turns"),
    ({"messages": [{"role": "user", "content": None}]}, "null_field", "is null"),
    ({"conversations": [{"from": "gpt", "value": "我先说"}, {"from": "human", "value": "好"}]},
     "starts_with_assistant", "starts with the assistant"),
    ({"instruction": "没有回答", "input": ""}, "missing_output", "no 'output'"),
    ({"instruction": "x", "output": None}, "null_field", "'output' is null"),
    ({"instruction": "x", "output": "y", "history": [["only one"]]}, "bad_type", "pair"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, "system_in_middle", "system turn"),
    ({"text": "plain"}, "unknown_format", "cannot tell the format"),
    (["not", "an", "object"], "not_an_object", "not a JSON object"),
])
def test_bad_records_name_the_problem(rec, reason, words):
    with pytest.raises(RecordError) as e:
        parse(rec)
    assert e.value.reason == reason and words in str(e.value)
