"""`zhdata instruct` end to end on small real-shaped fixtures: schema, counts, dedup, splitting, recipes, bad input."""

import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zhdata.cli import main
from zhdata.instruct.cli import DEFAULTS
from zhdata.instruct.recipe import load_recipe
from zhdata.manifest import read_manifest

FIX = Path(__file__).parent / "fixtures" / "instruct"
ROOT = Path(__file__).parent.parent


def instruct(*args) -> int:
    return main(["instruct", *map(str, args)])


def read_out(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
                    encoding="utf-8")
    return path


def test_fixtures_end_to_end_schema_and_counts(tmp_path):
    out = tmp_path / "out"
    assert instruct(FIX, "-o", out) == 0
    t = read_out(out)
    assert t.schema.field("messages").type == pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    assert t.column_names == ["id", "source", "system", "messages", "origin"]
    rows = t.to_pylist()
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles[0] == "user" and roles[-1] == "assistant" and set(roles) <= {"user", "assistant", "tool"}
    m = read_manifest(out)
    src = m["sources"]
    assert {k: v["records_in"] for k, v in src.items()} == {
        "belle_alpaca": 6, "oaast_history": 4, "ruozhiba_gpt4o": 4, "ruozhiba_gpt4t": 4, "sharegpt_zh": 7}
    for v in [*src.values(), m["counts"]]:
        assert v["records_in"] == v["records_out"] + v["dropped_total"]
    assert m["counts"]["records_out"] == len(rows)
    # the same four questions answered by two models: the second file's prompts are near duplicates
    assert src["ruozhiba_gpt4t"]["dropped"] == {"near_dup_prompt": 4} and src["ruozhiba_gpt4t"]["records_out"] == 0
    assert m["instruct"]["near_dup_between_sources"] == {"ruozhiba_gpt4t <- ruozhiba_gpt4o": 4}
    # ShareGPT line 7 (upstream line 781) is a lone question; line 1's second answer is "我是由OpenAI训练的语言模型..."
    assert src["sharegpt_zh"]["dropped"] == {"ends_without_assistant": 1}
    first = next(r for r in rows if r["origin"] == "sharegpt_zh.jsonl:1")
    assert len(first["messages"]) == 2 and src["sharegpt_zh"]["modified"]["refusal_cut"] == 1
    assert src["belle_alpaca"]["dropped"] == {"refusal": 1}  # line 6: 作为一个AI语言模型
    files = {Path(f["path"]).name: f["format"] for f in m["instruct"]["files"]}
    assert files["belle_alpaca.json"] == {"alpaca": 6} and files["sharegpt_zh.jsonl"] == {"sharegpt": 7}
    assert files["oaast_history.json"] == {"alpaca": 4}


def test_split_turns_one_example_per_assistant_turn(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert instruct(FIX / "sharegpt_zh.jsonl", "-o", whole) == 0
    assert instruct(FIX / "sharegpt_zh.jsonl", "--split-turns", "-o", split) == 0
    convs = read_out(whole).to_pylist()
    examples = read_out(split).to_pylist()
    expected = []
    for c in convs:
        k = 0
        for j, msg in enumerate(c["messages"]):
            if msg["role"] == "assistant":
                k += 1
                expected.append((f"{c['id']}-t{k}", c["messages"][: j + 1]))
    assert [(e["id"], e["messages"]) for e in examples] == expected
    assert len(examples) > len(convs)
    m = read_manifest(split)
    assert m["instruct"]["examples_out"] == {"sharegpt_zh": len(examples)}
    assert m["counts"]["records_out"] == len(convs)  # counts stay per conversation, so they add up


def test_exact_duplicates_across_files_and_deterministic_output(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(FIX / "belle_alpaca.json", data / "a.json")
    shutil.copy(FIX / "belle_alpaca.json", data / "b.json")
    assert instruct(data, "--no-near-dup", "-o", tmp_path / "o1") == 0
    assert instruct(data, "--no-near-dup", "-o", tmp_path / "o2") == 0
    m = read_manifest(tmp_path / "o1")
    kept_a = m["sources"]["a"]["records_out"]
    assert kept_a == 5 and m["sources"]["b"]["dropped"] == {"exact_dup": kept_a, "refusal": 1}
    assert read_out(tmp_path / "o1").equals(read_out(tmp_path / "o2"))
    assert instruct(data, "--no-near-dup", "--no-exact-dup", "-o", tmp_path / "o3") == 0
    assert read_manifest(tmp_path / "o3")["sources"]["b"]["records_out"] == 5


def test_compressed_input_and_json_lines_named_json(tmp_path):
    gz = tmp_path / "sharegpt_zh.jsonl.gz"
    gz.write_bytes(gzip.compress((FIX / "sharegpt_zh.jsonl").read_bytes()))
    assert instruct(gz, "-o", tmp_path / "gz") == 0
    assert instruct(FIX / "sharegpt_zh.jsonl", "-o", tmp_path / "plain") == 0
    assert read_out(tmp_path / "gz").column("messages").equals(read_out(tmp_path / "plain").column("messages"))
    assert instruct(FIX / "belle_alpaca.json", "-o", tmp_path / "belle") == 0  # JSON Lines despite .json, as upstream
    assert read_manifest(tmp_path / "belle")["counts"]["records_in"] == 6


def test_short_prompt_near_duplicates(tmp_path):
    recs = [{"instruction": q, "input": "", "output": f"回答{i}"} for i, q in enumerate(
        ["鸡柳是鸡身上哪个部位啊？", "鸡柳是鸡身上哪个部位？", "帮我写一首关于春天的诗", "帮我写一首关于秋天的诗",
         "鸡柳是鸡身上哪个部位啊?"])]
    f = tmp_path / "qa.json"
    f.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    assert instruct(f, "-o", tmp_path / "out") == 0
    kept = [r["messages"][0]["content"] for r in read_out(tmp_path / "out").to_pylist()]
    assert kept == ["鸡柳是鸡身上哪个部位啊？", "帮我写一首关于春天的诗", "帮我写一首关于秋天的诗"]
    assert read_manifest(tmp_path / "out")["counts"]["dropped"] == {"near_dup_prompt": 2}


def test_openai_messages_with_kept_metadata(tmp_path):
    f = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"},
                      {"role": "assistant", "content": "你好！"}], "category": "greeting", "score": 5},
        {"messages": [{"role": "user", "content": "1+1等于几？"}, {"role": "assistant", "content": "等于2。"}]}])
    assert instruct(f, "--keep", "category", "--keep", "score", "-o", tmp_path / "out") == 0
    rows = read_out(tmp_path / "out").to_pylist()
    assert rows[0]["system"] == "你是助手" and rows[0]["category"] == "greeting" and rows[0]["score"] == "5"
    assert rows[1]["system"] is None and rows[1]["category"] is None
    assert rows[0]["id"] == "chat-1" and rows[1]["origin"] == "chat.jsonl:2"


BAD = [
    {"conversations": [{"from": "human", "value": "好问题"}, {"from": "gpt", "value": "好回答"}]},
    '{"conversations": [{"from": "human", "value": "broken"',
    {"conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]},
    {"conversations": [{"from": "gpt", "value": "我先说"}, {"from": "human", "value": "好"}]},
    {"conversations": "not a list"},
]


def test_bad_input_stops_with_file_and_line(tmp_path, capsys):
    f = write_jsonl(tmp_path / "bad.jsonl", BAD)
    assert instruct(f, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "malformed JSON" in err and "--on-error skip" in err
    write_jsonl(f, [BAD[0], BAD[2]])
    assert instruct(f, "-o", tmp_path / "out") == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


def test_bad_input_skip_counts_every_reason(tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", BAD)
    assert instruct(f, "--on-error", "skip", "-o", tmp_path / "out") == 0
    m = read_manifest(tmp_path / "out")
    assert m["counts"]["records_in"] == 5 and m["counts"]["records_out"] == 1
    assert m["counts"]["dropped"] == {"malformed_json": 1, "unknown_role": 1, "starts_with_assistant": 1, "bad_type": 1}
    assert any("bad.jsonl:3" in e and "robot" in e for e in m["instruct"]["skipped_examples"])


def test_preference_data_needs_a_flag(tmp_path, capsys):
    f = write_jsonl(tmp_path / "dpo.jsonl", [{"instruction": "写一句诗", "input": "", "chosen": "床前明月光", "rejected": "不会"}])
    assert instruct(f, "--on-error", "skip", "-o", tmp_path / "out") == 2
    assert "--preference chosen" in capsys.readouterr().err
    assert instruct(f, "--preference", "chosen", "-o", tmp_path / "out") == 0
    assert read_out(tmp_path / "out").to_pylist()[0]["messages"][1]["content"] == "床前明月光"


def test_recipe_runs_sources_prints_table_and_cli_overrides(tmp_path, capsys):
    data = tmp_path / "dl"
    data.mkdir()
    shutil.copy(FIX / "ruozhiba_gpt4o.json", data / "ruozhiba_gpt4o.json")
    shutil.copy(FIX / "sharegpt_zh.jsonl", data / "sharegpt_part1.jsonl")
    recipe = tmp_path / "r.toml"
    recipe.write_text("""
[recipe]
name = "mini"
reference_examples = 12
[options]
split_turns = true
near_dup = false
[[sources]]
name = "qa"
files = ["ruozhiba*.json"]
format = "alpaca"
upstream_records = 2449
[[sources]]
name = "chat"
files = ["sharegpt_*.jsonl"]
upstream_records = 70000
upstream_approx = true
[[sources]]
name = "extra"
files = ["own/*.json"]
optional = true
""", encoding="utf-8")
    assert instruct("--recipe", recipe, "--data-dir", data, "-o", tmp_path / "out") == 0
    table = capsys.readouterr().out
    m = read_manifest(tmp_path / "out")
    assert list(m["sources"]) == ["chat", "qa"] and m["params"]["split_turns"] is True
    chat_examples = m["instruct"]["examples_out"]["chat"]
    assert chat_examples > m["sources"]["chat"]["records_out"]
    assert "~70000" in table and f"{chat_examples:>9}" in table and "reference" in table
    assert any("optional source 'extra'" in w for w in m["warnings"])
    assert instruct("--recipe", recipe, "--data-dir", data, "--no-split-turns", "-o", tmp_path / "o2") == 0
    m2 = read_manifest(tmp_path / "o2")
    assert m2["instruct"]["examples_out"]["chat"] == m2["sources"]["chat"]["records_out"]
    (data / "ruozhiba_gpt4o.json").unlink()
    assert instruct("--recipe", recipe, "--data-dir", data, "-o", tmp_path / "o3") == 2
    assert "source 'qa'" in capsys.readouterr().err


@pytest.mark.parametrize("name, sources", [
    ("aurora-sft.toml", {"alpaca_data_zh_51k": 51179, "alpaca_gpt4_data_zh": 48818, "sharegpt_zh": 70000}),
    ("chinese-mixtral-sft-data.toml", {"alpaca_data_zh_51k": 51179, "ruozhiba_qa2449_gpt4o": 2449, "own_instructions": None}),
])
def test_shipped_recipes_are_valid(name, sources):
    r = load_recipe(ROOT / "manifests" / name, set(DEFAULTS))
    assert {s["name"]: s.get("upstream_records") for s in r.sources} == sources
    assert all(s.get("licence") for s in r.sources)
    if name == "aurora-sft.toml":
        assert r.info["reference_examples"] == 176678 and r.options["split_turns"] is True


def test_format_override_and_column_mapping_file(tmp_path, capsys):
    assert instruct(FIX / "ruozhiba_gpt4o.json", "--format", "sharegpt", "-o", tmp_path / "o1") == 2
    assert "ruozhiba_gpt4o.json:1" in capsys.readouterr().err  # record 1 has no 'conversations'
    f = write_jsonl(tmp_path / "renamed.jsonl", [
        {"dialog": [{"speaker": "USER", "text": "今天星期几？"}, {"speaker": "BOT", "text": "今天星期二。"}], "sys": "简洁"}])
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"formatting": "sharegpt", "columns": {"messages": "dialog", "system": "sys"},
                                   "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "USER",
                                            "assistant_tag": "BOT"}}), encoding="utf-8")
    assert instruct(f, "--columns", mapping, "-o", tmp_path / "o2") == 0
    row = read_out(tmp_path / "o2").to_pylist()[0]
    assert row["system"] == "简洁" and [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert read_manifest(tmp_path / "o2")["instruct"]["files"][0]["format"] == {"sharegpt": 1}


def test_own_output_reads_back_unchanged(tmp_path):
    """Parquet input in the output schema (OpenAI-style messages + system column) is a fixed point."""
    assert instruct(FIX, "-o", tmp_path / "once") == 0
    assert instruct(tmp_path / "once", "--source", "again", "-o", tmp_path / "twice") == 0
    once, twice = read_out(tmp_path / "once"), read_out(tmp_path / "twice")
    assert twice.column("messages").equals(once.column("messages"))
    assert twice.column("system").equals(once.column("system"))
    assert read_manifest(tmp_path / "twice")["counts"]["dropped_total"] == 0
