"""`train eval --task mc` on the C-Eval / CMMLU / MMLU layouts (fixtures in tests/fixtures/eval)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tokenizer.convert import convert_sentencepiece
from train.cli import main
from train.demo_model import make_demo_model
from train.mc import build_prompt, letter_logprobs, load_benchmark, read_categories_py
from train.scoring import load_model
from zhdata.errors import InputError

FIX = Path(__file__).parent / "fixtures"
EVAL = FIX / "eval"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mc")
    tok_dir = convert_sentencepiece(Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model", root / "tok")
    return make_demo_model(tok_dir, root / "model", max_positions=1024)


def test_ceval_layout_and_quirks():
    b = load_benchmark(EVAL / "ceval")
    assert (b.kind, b.lang, b.split) == ("ceval", "zh", "val")  # test has no answers, so auto picks val
    subj = {s.name: s for s in b.subjects}
    assert [len(subj[s].eval) for s in ("computer_network", "high_school_history")] == [3, 2]
    assert subj["computer_network"].title == "计算机网络" and subj["computer_network"].categories == ["STEM"]
    assert len(subj["computer_network"].dev) == 5 and len(subj["high_school_history"].dev) == 2
    q = subj["computer_network"].eval[1]
    assert q.question.startswith("TCP建立连接需要____次握手,断开") and q.answer == "C"  # quoted field with a comma
    prompt = build_prompt(b, subj["computer_network"], q, 2)
    assert prompt.startswith("以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n")
    assert prompt.count("答案：") == 3 and prompt.endswith("\nD. 四\n答案：")
    assert "答案：B\n\n" in prompt and "2. HTTPS" not in prompt  # dev answers shown, explanations not
    with pytest.raises(InputError, match="no answer column"):
        load_benchmark(EVAL / "ceval", split="test")


def test_cmmlu_and_mmlu_layouts():
    b = load_benchmark(EVAL / "cmmlu")
    assert (b.kind, b.lang, b.split) == ("cmmlu", "zh", "test")
    subj = {s.name: s for s in b.subjects}
    assert len(subj["agronomy"].eval) == 4 and len(subj["arts"].eval) == 3
    assert subj["agronomy"].eval[0].question == "玉米原产于"  # the leading index column is not the question
    assert subj["agronomy"].eval[0].choices == ("亚洲", "非洲", "美洲", "欧洲")
    assert subj["arts"].categories == ["Humanities", "China specific"] and subj["agronomy"].categories == ["Other"]
    assert build_prompt(b, subj["arts"], subj["arts"].eval[0], 0).startswith("以下是关于艺术学的单项选择题")
    assert read_categories_py(EVAL / "cmmlu" / "src" / "categories.py")["name_en2zh"]["agronomy"] == "农学"
    m = load_benchmark(EVAL / "mmlu")
    assert (m.kind, m.lang, m.split) == ("mmlu", "en", "test")
    q = m.subjects[0].eval[1]
    assert q.question.startswith("How long does light") and q.answer == "B"
    assert build_prompt(m, m.subjects[0], q, 1).endswith("\nD. 8 days\nAnswer:")


def test_bad_answer_names_file_and_record(tmp_path):
    root = tmp_path / "cmmlu"
    shutil.copytree(EVAL / "cmmlu", root)
    f = root / "data" / "test" / "arts.csv"
    f.write_text(f.read_text(encoding="utf-8").replace(",生,旦,净,丑,B", ",生,旦,净,丑,E"), encoding="utf-8")
    with pytest.raises(InputError, match=r"arts\.csv:row 2: answer 'E'"):
        load_benchmark(root)


def test_letter_logprobs_single_pass_matches_full_scoring(demo):
    model, tok = load_model(demo)
    ctx = "问题？\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案："
    fast = letter_logprobs(model, tok, ctx, ["A", "B", "C", "D"])
    # Same numbers through the general path (a continuation of two pieces forces per-choice scoring).
    slow = letter_logprobs(model, tok, ctx, ["A", "B", "C", "D", "AB"])[:4]
    assert fast == pytest.approx(slow, abs=1e-4)
    assert len(set(fast)) == 4


def test_cli_mc_counts_and_accuracies(demo, tmp_path):
    out = tmp_path / "out"
    assert main(["eval", str(demo), "--task", "mc", "--bench", str(EVAL / "ceval"), "--bench", f"cm={EVAL / 'cmmlu'}",
                 "--shots", "0", "5", "-o", str(out)]) == 0
    res = json.loads((out / "mc.json").read_text(encoding="utf-8"))["benchmarks"]
    assert set(res) == {"ceval", "cm"}
    for name, counts in (("ceval", {"computer_network": 3, "high_school_history": 2}), ("cm", {"agronomy": 4, "arts": 3})):
        for shots in ("0", "5"):
            r = res[name]["shots"][shots]
            assert {s: v["n"] for s, v in r["subjects"].items()} == counts
            for v in r["subjects"].values():
                assert 0 <= v["acc"] <= 1 and v["acc"] == v["correct"] / v["n"]
            overall = r["categories"]["overall"]
            assert overall["n"] == sum(counts.values())
            assert overall["acc"] == sum(v["correct"] for v in r["subjects"].values()) / overall["n"]
    assert res["ceval"]["shots"]["5"]["subjects"]["high_school_history"]["shots_available"] == 2
    assert res["cm"]["shots"]["0"]["categories"]["China specific"]["n"] == 3
    md = (out / "mc.md").read_text(encoding="utf-8")
    assert "## ceval (ceval, split val, 5-shot)" in md and "计算机网络" in md
    man = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert man["sources"]["mc:ceval"]["records_out"] == 5 and man["sources"]["mc:cm"]["records_out"] == 7
    assert len(man["inputs"]) == (1 + 4) + (1 + 4)  # subject mapping / categories.py and every CSV read
