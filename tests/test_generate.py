"""`train generate` against a hand-written argmax loop, batched vs one at a time, stop strings and limits, and a
`train run` folder against its merged model (tiny models built here)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from tiny_lm import tiny_model, tokenizer_folder, write_jsonl
from train.cli import main
from train.generate import GenSettings, Prompt, eos_ids, generate_answers, generate_batch, parse_prompt, prompt_ids
from train.model import load_for_inference
from zhdata.pack.packer import PackOptions, pack

PROMPTS = ["请介绍一下中国的长城。", "What is the capital of France?", "写一首关于春天的短诗，要有花和鸟。", "你好", "1+1=?"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen")
    tok = tokenizer_folder(root / "tok")
    return {"root": root, "tok": tok, "model": tiny_model(root / "model", tok)}


@pytest.fixture(scope="module")
def loaded(world):
    return load_for_inference(world["model"])


def _argmax_loop(model, ids: list[int], n: int, eos: list[int]) -> list[int]:
    """Greedy decoding by hand: the whole sequence through the model at every step, no cache."""
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(nxt)
            if nxt in eos:
                break
    return out


def test_greedy_equals_a_hand_written_argmax_loop(loaded):
    model, tok = loaded
    s = GenSettings(max_new_tokens=12, batch_size=1)
    for i, text in enumerate(PROMPTS[:3]):
        ids = prompt_ids(tok, parse_prompt({"prompt": text}, f"p{i}"))
        assert ids[0] == tok.bos_token_id and "[INST]" in tok.decode(ids)  # rendered by the chat template
        (row,) = generate_batch(model, tok, [ids], s)
        want = _argmax_loop(model, ids, 12, eos_ids(model, tok))
        assert row["ids"] == want
        assert row["text"] == tok.decode(want, skip_special_tokens=True)
        assert row["finish"] == ("eos" if want[-1] in eos_ids(model, tok) else "length")


def test_batched_with_left_padding_equals_one_at_a_time_and_is_deterministic(loaded):
    model, tok = loaded
    prompts = [{"id": f"q{i}", "prompt": t} for i, t in enumerate(PROMPTS)] + [{"id": "raw", "text": "长城是"}]
    one = generate_answers(model, prompts, GenSettings(max_new_tokens=10, batch_size=1), tokenizer=tok)
    many = generate_answers(model, prompts, GenSettings(max_new_tokens=10, batch_size=4), tokenizer=tok)
    again = generate_answers(model, prompts, GenSettings(max_new_tokens=10, batch_size=4), tokenizer=tok)
    assert len({a["prompt_tokens"] for a in one}) > 3  # really different lengths, so the batch is padded
    assert [a["id"] for a in many] == [p["id"] for p in prompts]  # prompt order kept through the length sort
    for a, b, c in zip(one, many, again):
        assert (a["answer"], a["answer_tokens"], a["finish"]) == (b["answer"], b["answer_tokens"], b["finish"])
        assert b["answer"] == c["answer"]
    assert {a["batch_size"] for a in many} == {4, 2}


def test_stop_strings_and_max_new_tokens_are_honoured(loaded):
    model, tok = loaded
    p = Prompt("x", messages=[{"role": "user", "content": PROMPTS[0]}])
    (full,) = generate_answers(model, [p], GenSettings(max_new_tokens=16), tokenizer=tok)
    assert full["answer_tokens"] == 16 and full["finish"] == "length"
    # a stop string taken from the middle of the free answer: the answer must end right before it
    text = full["answer"]
    stop = next(text[k:k + 2] for k in range(3, len(text) - 2) if text[k:k + 2].strip())
    (cut,) = generate_answers(model, [p], GenSettings(max_new_tokens=16, stop=[stop]), tokenizer=tok)
    assert cut["finish"] == "stop" and cut["answer"] == text[: text.find(stop)]
    assert cut["answer_tokens"] < 16
    for n in (1, 5):
        (short,) = generate_answers(model, [p], GenSettings(max_new_tokens=n), tokenizer=tok)
        assert short["answer_tokens"] == n and text.startswith(short["answer"].rstrip("\ufffd"))


def test_sampling_is_seeded(loaded):
    model, tok = loaded
    s = GenSettings(max_new_tokens=8, temperature=5.0, top_p=0.95, seed=3)
    a = generate_answers(model, PROMPTS, s, tokenizer=tok)
    b = generate_answers(model, PROMPTS, s, tokenizer=tok)
    c = generate_answers(model, PROMPTS, GenSettings(max_new_tokens=8, temperature=5.0, top_p=0.95, seed=4), tokenizer=tok)
    assert [x["answer"] for x in a] == [x["answer"] for x in b]
    assert [x["answer"] for x in a] != [x["answer"] for x in c]


def test_cli_reads_instruct_parquet_and_writes_answers_and_manifest(world, tmp_path):
    prompts = tmp_path / "conv.parquet"
    pl.DataFrame({"id": ["a", "b", "c"], "source": ["t"] * 3, "system": ["你是助手。", None, None],
                  "messages": [[{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}],
                               [{"role": "user", "content": "一"}, {"role": "assistant", "content": "二"},
                                {"role": "user", "content": "三"}],
                               [{"role": "assistant", "content": "没有问题"}]]}).write_parquet(prompts)
    out = tmp_path / "answers" / "tiny.jsonl"
    argv = ["generate", str(world["model"]), "--prompts", str(prompts), "-o", str(out), "--max-new-tokens", "6", "--quiet"]
    assert main(argv) == 2  # record c has no user turn: stop with its place named
    assert main(argv + ["--on-error", "skip"]) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"] and {r["model"] for r in rows} == {"model"}
    assert rows[0]["messages"][0] == {"role": "system", "content": "你是助手。"} and rows[0]["reference"] == "你好！"
    assert rows[1]["messages"][-1]["content"] == "三" and "reference" not in rows[1]
    assert all(r["answer_tokens"] == 6 and r["seconds"] > 0 and r["prompt_tokens"] > 5 for r in rows)
    man = json.loads((out.parent / "tiny.manifest.json").read_text(encoding="utf-8"))
    assert man["counts"]["records_in"] == 3 and man["counts"]["dropped"] == {"no_user_turn": 1}
    assert man["generation"]["greedy"] and man["generation"]["max_new_tokens"] == 6
    assert man["output"]["answer_tokens"] == 12 and man["inputs"][0]["sha256"]


def test_run_folder_and_its_merged_model_give_the_same_answers(world, tmp_path):
    sft = tmp_path / "sft.parquet"
    pl.DataFrame({"id": [f"c{i}" for i in range(16)], "source": ["t"] * 16, "system": [None] * 16,
                  "messages": [[{"role": "user", "content": PROMPTS[i % 5]}, {"role": "assistant", "content": "长城很长。" * 2}]
                               for i in range(16)]}).write_parquet(sft)
    pack([sft], world["tok"], tmp_path / "packed", PackOptions(mode="sft", block_size=64, val_fraction=0.1, packing="bfd",
                                                                progress=False))
    run = tmp_path / "run"
    assert main(["run", "--model", str(world["model"]), "--data", str(tmp_path / "packed"), "--stage", "sft",
                 "--output-dir", str(run), "--tokenizer", str(world["tok"]), "--max-steps", "3", "--lr", "2e-2",
                 "--lora-r", "4", "--lora-alpha", "8", "--micro-batch-size", "4", "--save-every", "0", "--quiet"]) == 0
    merged = tmp_path / "merged"
    assert main(["merge", str(run), "-o", str(merged), "--dtype", "fp32", "--quiet"]) == 0
    pfile = write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": t} for i, t in enumerate(PROMPTS[:3])])
    answers = {}
    for name, src in (("run", run), ("merged", merged), ("base", world["model"])):
        out = tmp_path / f"{name}.jsonl"
        assert main(["generate", str(src), "--prompts", str(pfile), "-o", str(out), "--max-new-tokens", "8",
                     "--batch-size", "2", "--device", "cpu", "--quiet"]) == 0
        answers[name] = [json.loads(x)["answer"] for x in out.read_text(encoding="utf-8").splitlines()]
    assert answers["run"] == answers["merged"]
    assert answers["run"] != answers["base"]  # the adapter changed the answers: the run folder's adapter is used


def test_a_rerun_answers_only_the_prompts_not_yet_answered_and_refuses_other_settings(world, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": f"q{i}", "prompt": t} for i, t in enumerate(PROMPTS[:4])]
    write_jsonl(prompts, rows[:2])
    out = tmp_path / "answers.jsonl"
    argv = ["generate", str(world["model"]), "--prompts", str(prompts), "-o", str(out), "--max-new-tokens", "5", "--quiet"]
    assert main(argv) == 0
    first = out.read_text(encoding="utf-8").splitlines()
    write_jsonl(prompts, rows)  # two prompts more
    assert main([*argv, "--batch-size", "3"]) == 0  # the batch size changes no greedy answer: not a setting here
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[:2] == first  # the earlier answers kept as they were (times included), not generated again
    assert [json.loads(x)["id"] for x in lines] == ["q0", "q1", "q2", "q3"]
    man = json.loads((tmp_path / "answers.manifest.json").read_text(encoding="utf-8"))
    assert man["output"]["from_earlier_run"] == 2 and man["output"]["answers"] == 4
    fresh = tmp_path / "fresh.jsonl"
    assert main(["generate", str(world["model"]), "--prompts", str(prompts), "-o", str(fresh), "--max-new-tokens", "5",
                 "--quiet"]) == 0
    assert [json.loads(x)["answer"] for x in lines] == [json.loads(x)["answer"] for x in fresh.read_text().splitlines()]

    # killed while answering: the .tmp holds one whole answer and a torn line; the rerun answers the other three
    out.unlink()
    (tmp_path / "answers.jsonl.tmp").write_text(first[0] + "\n" + first[1][:25], encoding="utf-8")
    assert main(argv) == 0
    assert [json.loads(x)["id"] for x in out.read_text(encoding="utf-8").splitlines()] == ["q0", "q1", "q2", "q3"]
    assert json.loads((tmp_path / "answers.manifest.json").read_text())["output"]["from_earlier_run"] == 1

    capsys.readouterr()
    assert main([*argv, "--temperature", "0.7"]) == 2
    err = capsys.readouterr().err
    assert "holds answers made with other settings (temperature 0.0 → 0.7)" in err and "--overwrite" in err
    assert main([*argv, "--temperature", "0.7", "--overwrite"]) == 0
    assert json.loads((tmp_path / "answers.manifest.json").read_text())["output"]["from_earlier_run"] == 0
