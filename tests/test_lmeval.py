"""`train eval --task lm-eval` on tiny local tasks: the same numbers as lm-evaluation-harness loading the model itself,
and the harness' bits per byte equal to our own bpc task's on the same texts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tiny_lm import tiny_model, tokenizer_folder, write_jsonl
from train.cli import main

lm_eval = pytest.importorskip("lm_eval")

QUESTIONS = [("中国的首都是哪里？\nA. 上海\nB. 北京\nC. 广州\nD. 深圳", 1), ("1+1=?\nA. 1\nB. 3\nC. 2\nD. 4", 2),
             ("水的化学式是什么？\nA. H2O\nB. CO2\nC. O2\nD. NaCl", 0), ("长城在哪个国家？\nA. 日本\nB. 韩国\nC. 越南\nD. 中国", 3),
             ("一年有几个季节？\nA. 两个\nB. 三个\nC. 四个\nD. 五个", 2)]
TEXTS = ["我们在中国学习语言模型。", "The quick brown fox jumps over the lazy dog.", "小猫在花园里追蝴蝶，天气很好。"]


def _tasks(root: Path) -> Path:
    """Three task YAMLs over local JSONL files: multiple choice, rolling log-likelihood, and generation."""
    folder = root / "tasks"
    folder.mkdir()
    mc = write_jsonl(root / "mc.jsonl", [{"question": q, "answer": a} for q, a in QUESTIONS])
    txt = write_jsonl(root / "texts.jsonl", [{"text": t} for t in TEXTS])
    head = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n"
    (folder / "tiny_mc.yaml").write_text(f"task: tiny_zh_mc\n{head.format(mc)}output_type: multiple_choice\n"
                                         "doc_to_text: \"{{question}}\\n答案：\"\ndoc_to_choice: [\"A\", \"B\", \"C\", \"D\"]\n"
                                         "doc_to_target: \"{{answer}}\"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n",
                                         encoding="utf-8")
    (folder / "tiny_ppl.yaml").write_text(f"task: tiny_zh_ppl\n{head.format(txt)}output_type: loglikelihood_rolling\n"
                                          "doc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\nmetric_list:\n"
                                          "  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
                                          encoding="utf-8")
    (folder / "tiny_gen.yaml").write_text(f"task: tiny_zh_gen\n{head.format(mc)}output_type: generate_until\n"
                                          "doc_to_text: \"{{question}}\\n答案：\"\ndoc_to_target: \"{{['A','B','C','D'][answer]}}\"\n"
                                          "generation_kwargs:\n  until: [\"\\n\"]\n  do_sample: false\n  max_gen_toks: 4\n"
                                          "metric_list:\n  - metric: exact_match\n", encoding="utf-8")
    return folder


def test_lm_eval_task_equals_the_harness_own_run(tmp_path):
    model = tiny_model(tmp_path / "model", tokenizer_folder(tmp_path / "tok"))
    folder = _tasks(tmp_path)
    tasks = ["tiny_zh_mc", "tiny_zh_ppl", "tiny_zh_gen"]
    out = tmp_path / "eval"
    assert main(["eval", str(model), "--task", "lm-eval", "bpc", "--lm-eval-tasks", *tasks, "--lm-eval-include", str(folder),
                 "--lm-eval-batch-size", "2", "--data", f"t={tmp_path / 'texts.jsonl'}", "-o", str(out)]) == 0
    ours = json.loads((out / "lm_eval.json").read_text(encoding="utf-8"))
    assert "| tiny_zh_ppl | bits_per_byte |" in (out / "lm_eval.md").read_text(encoding="utf-8")
    assert json.loads((out / "manifest.json").read_text())["lm-eval"]["tiny_zh_mc"]["acc,none"] == ours["results"]["tiny_zh_mc"]["acc,none"]

    from lm_eval.tasks import TaskManager

    theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32", tasks=tasks, batch_size=1, device="cpu",
                                     task_manager=TaskManager(include_path=str(folder)), log_samples=False)
    for task in tasks:
        metrics = {k: v for k, v in theirs["results"][task].items() if isinstance(v, float)}
        assert metrics, task
        for k, v in metrics.items():
            assert ours["results"][task][k] == pytest.approx(v, rel=1e-5, abs=1e-9), (task, k)
    assert ours["results"]["tiny_zh_mc"]["acc_stderr,none"] > 0 and ours["n-samples"]["tiny_zh_mc"]["effective"] == 5
    # Our bpc task and the harness' rolling log-likelihood score the same tokens of the same texts when the harness,
    # like our bpc, uses BOS only as the condition (by default HFLM also scores the BOS the tokenizer adds).
    plain = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32,add_bos_token=False",
                                    tasks=["tiny_zh_ppl"], batch_size=1, device="cpu",
                                    task_manager=TaskManager(include_path=str(folder)), log_samples=False)
    bpc = json.loads((out / "bpc.json").read_text(encoding="utf-8"))["sets"]["t"]
    assert plain["results"]["tiny_zh_ppl"]["bits_per_byte,none"] == pytest.approx(bpc["bits_per_byte"], rel=1e-5)


def test_lm_eval_refuses_unknown_tasks_in_one_line(tmp_path, capsys):
    model = tiny_model(tmp_path / "model", tokenizer_folder(tmp_path / "tok"))
    folder = _tasks(tmp_path)
    assert main(["eval", str(model), "--task", "lm-eval", "--lm-eval-tasks", "no_such_task", "--lm-eval-include", str(folder),
                 "-o", str(tmp_path / "e")]) == 2
    assert "unknown lm-eval task(s) no_such_task" in capsys.readouterr().err


def test_builtin_ceval_scoring_agrees_with_the_harness_question_by_question(tmp_path):
    """`train eval --task mc` against the harness on the same C-Eval questions (the fixture's computer_network), with
    the harness task written in C-Eval's format (its ceval-valid YAML, local data); the only change is
    `target_delimiter: ""`: our prompt puts the letter right after 答案： where the harness' ceval-valid puts a space."""
    from lm_eval.tasks import TaskManager

    from train.mc import build_prompt, load_benchmark

    ceval = Path(__file__).parent / "fixtures" / "eval" / "ceval"
    model = tiny_model(tmp_path / "model", tokenizer_folder(tmp_path / "tok"))
    out = tmp_path / "mc"
    assert main(["eval", str(model), "--task", "mc", "--bench", str(ceval), "--subjects", "computer_network",
                 "--shots", "0", "2", "-o", str(out)]) == 0
    ours = json.loads((out / "mc.json").read_text(encoding="utf-8"))["benchmarks"]["ceval"]["shots"]
    folder = tmp_path / "tasks"
    folder.mkdir()
    with (ceval / "dev" / "computer_network_dev.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    dev = tmp_path / "dev.csv"  # the datasets csv loader wants the same columns in every split: no `explanation`
    with dev.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, ["id", "question", "A", "B", "C", "D", "answer"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (folder / "cn.yaml").write_text(
        "task: ceval_local_computer_network\ndataset_path: csv\ndataset_kwargs:\n  data_files:\n"
        f"    validation: {ceval / 'val' / 'computer_network_val.csv'}\n    dev: {dev}\n"
        "validation_split: validation\nfewshot_split: dev\nfewshot_config:\n  sampler: first_n\n"
        "description: \"以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\\n\\n\"\n"
        "output_type: multiple_choice\n"
        "doc_to_text: \"{{question.strip()}}\\nA. {{A}}\\nB. {{B}}\\nC. {{C}}\\nD. {{D}}\\n答案：\"\n"
        "doc_to_choice: [\"A\", \"B\", \"C\", \"D\"]\ndoc_to_target: \"{{['A', 'B', 'C', 'D'].index(answer)}}\"\n"
        "target_delimiter: \"\"\nfewshot_delimiter: \"\\n\\n\"\nmetric_list:\n  - metric: acc\n", encoding="utf-8")
    for shots in (0, 2):
        theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32", device="cpu",
                                         tasks=["ceval_local_computer_network"], num_fewshot=shots, batch_size=1,
                                         task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                                         log_samples=True)
        samples = sorted(theirs["samples"]["ceval_local_computer_network"], key=lambda s: s["doc_id"])
        assert [int(s["acc"]) for s in samples] == ours[str(shots)]["subjects"]["computer_network"]["right"]
        assert theirs["results"]["ceval_local_computer_network"]["acc,none"] == pytest.approx(
            ours[str(shots)]["categories"]["overall"]["acc"])
        # the same prompt text, character for character
        bench = load_benchmark(ceval, subjects=["computer_network"])
        subj = bench.subjects[0]
        for s, q in zip(samples, subj.eval):
            assert s["arguments"][0][0] == build_prompt(bench, subj, q, shots)
