"""zhdata pack --mode sft: chat-template rendering, assistant-only labels, packing without cross-attention."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from test_pack_pt import BOS, EOS, tok_dir  # noqa: F401  (tok_dir is a fixture)
from zhdata.errors import InputError
from zhdata.pack import PackedDataset, collate_packed
from zhdata.pack.packer import PackOptions, pack


def conversations(n: int = 60) -> list[dict]:
    """Varied conversations: system prompts, multi-turn, Chinese/English/digits/newlines, a trailing user turn."""
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"请解释第{i}个问题：" + "为什么天是蓝的？" * (i % 4 + 1)},
                {"role": "assistant", "content": f"因为瑞利散射。Answer {i}: " + "短波长的光散射更强。\n" * (i % 5 + 1)}]
        if i % 3 == 1:
            msgs += [{"role": "user", "content": "Can you say it in English?"},
                     {"role": "assistant", "content": f"Rayleigh scattering, case {i * 7}."}]
        if i % 10 == 9:
            msgs.append({"role": "user", "content": "谢谢"})  # nothing answers it: removed, counted
        out.append({"id": f"c{i}", "source": "test", "system": "你是一个乐于助人的助手。" if i % 2 else None, "messages": msgs})
    return out


def write_convs(path: Path, convs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(convs), path)
    return path


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def test_labels_are_exactly_the_assistant_answers_and_input_is_the_chat_template(tok_dir, tmp_path):
    from transformers import AutoTokenizer

    convs = conversations()
    m = pack([write_convs(tmp_path / "c.parquet", convs)], tok_dir, tmp_path / "out",
             PackOptions(mode="sft", block_size=1024, val_fraction=0, packing="none", progress=False))
    ds = PackedDataset(tmp_path / "out", "train")
    assert len(ds) == len(convs)  # packing none: one conversation per block, in input order
    hf = AutoTokenizer.from_pretrained(tok_dir)
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    for conv, i in zip(convs, range(len(ds))):
        x = ds[i]
        ids, labels = x["input_ids"].numpy(), x["labels"].numpy()
        msgs = conv["messages"][:-1] if conv["messages"][-1]["role"] == "user" else conv["messages"]
        full = ([{"role": "system", "content": conv["system"]}] if conv["system"] else []) + msgs
        assert ids.tolist() == hf.apply_chat_template(full, tokenize=True, return_dict=False)  # transformers' own rendering
        if conv["system"]:
            assert tok.decode(ids.tolist()).startswith("[INST] " + conv["system"] + "\n\n" + msgs[0]["content"])
        trained = labels != -100
        assert np.array_equal(labels[trained], ids[trained])
        answers = [mm["content"] for mm in msgs if mm["role"] == "assistant"]
        spans = runs(trained)
        assert len(spans) == len(answers)
        for (a, b), answer in zip(spans, answers):
            assert ids[b - 1] == EOS  # each answer closes with EOS, which is trained on
            assert tok.decode(ids[a:b].tolist(), skip_special_tokens=False) == answer + "</s>"
            assert ids[a - 1] != EOS and tok.id_to_token(int(ids[a - 1])) in ("]", "▁")  # the prompt ends right before
        assert ids[0] == BOS and labels[0] == -100 and x["position_ids"].tolist() == list(range(len(ids)))
    assert m.counts.modified["trailing_turns_removed"] == sum(c["messages"][-1]["role"] == "user" for c in convs)
    p = m.extra["pack"]
    assert p["loss_tokens"] == sum(int((ds[i]["labels"] != -100).sum()) for i in range(len(ds)))
    assert p["efficiency"] == round(p["tokens"] / (len(ds) * 1024), 4)


def test_bfd_packs_examples_without_attention_across_them(tok_dir, tmp_path):
    convs = conversations(80)
    inp = write_convs(tmp_path / "c.parquet", convs)
    opts = dict(mode="sft", block_size=256, val_fraction=0.25, progress=False)
    pack([inp], tok_dir, tmp_path / "none", PackOptions(**opts, packing="none"))
    m = pack([inp], tok_dir, tmp_path / "bfd", PackOptions(**opts, packing="bfd"))
    for split in ("train", "val"):
        single = PackedDataset(tmp_path / "none", split)
        packed = PackedDataset(tmp_path / "bfd", split)
        examples = Counter((tuple(x["input_ids"].tolist()), tuple(x["labels"].tolist())) for x in map(single.__getitem__, range(len(single))))
        got: Counter = Counter()
        for i in range(len(packed)):
            x = packed[i]
            ids, lab, pos, seg = (x[k].numpy() for k in ("input_ids", "labels", "position_ids", "segment_ids"))
            assert len(ids) <= 256
            starts = np.flatnonzero(pos == 0)
            assert starts[0] == 0 and np.all(ids[starts] == BOS)  # every example starts at position 0 with BOS
            assert np.array_equal(np.diff(seg) != 0, (pos == 0)[1:])  # the segment changes exactly where positions restart
            assert np.array_equal(np.unique(seg), np.arange(len(starts)))
            for a, b in zip(starts, list(starts[1:]) + [len(ids)]):
                assert np.array_equal(pos[a:b], np.arange(b - a))
                got[(tuple(ids[a:b].tolist()), tuple(lab[a:b].tolist()))] += 1
        assert got == examples  # packing moved whole examples, none lost, none split
        assert len(packed) < len(single)
        info = m.extra["pack"]["splits"][split]
        assert info["efficiency"] == round(info["tokens"] / (len(packed) * 256), 4)
        assert info["padding_tokens"] == len(packed) * 256 - info["tokens"]
    batch = collate_packed([packed[0], packed[1]], pad_id=0)
    n0 = len(packed[0]["input_ids"])
    assert batch["input_ids"].shape[1] == max(n0, len(packed[1]["input_ids"]))
    assert batch["attention_mask"][0].sum() == n0 and (batch["segment_ids"][0, n0:] == -1).all()


def test_overlong_conversations_are_truncated_or_dropped_and_counted(tok_dir, tmp_path):
    long_answer = {"role": "assistant", "content": "很长的回答。" * 200}
    late_answer = [{"role": "user", "content": "很长的问题。" * 200}, {"role": "assistant", "content": "好"}]
    convs = conversations(5) + [
        {"id": "long", "source": "t", "system": None, "messages": [{"role": "user", "content": "说吧"}, long_answer]},
        {"id": "late", "source": "t", "system": None, "messages": late_answer},
    ]
    inp = write_convs(tmp_path / "c.parquet", convs)
    opts = dict(mode="sft", block_size=128, val_fraction=0, packing="none", progress=False)
    m = pack([inp], tok_dir, tmp_path / "t", PackOptions(**opts, overlong="truncate"))
    assert m.counts.modified["truncated"] == 1 and m.extra["pack"]["truncated"] == 1
    assert m.counts.dropped == Counter(no_answer_within_block=1) and m.counts.records_out == 6
    ds = PackedDataset(tmp_path / "t")
    assert max(len(ds[i]["input_ids"]) for i in range(len(ds))) == 128
    m = pack([inp], tok_dir, tmp_path / "d", PackOptions(**opts, overlong="drop"))
    assert m.counts.dropped == Counter(too_long=2) and m.counts.records_out == 5 and m.counts.records_in == 7


def test_bad_conversations_stop_with_file_and_record_or_are_counted(tok_dir, tmp_path):
    convs = conversations(3) + [{"id": "x", "source": "t", "system": None, "messages": [{"role": "user", "content": "在吗"}]}]
    inp = write_convs(tmp_path / "c.parquet", convs)
    with pytest.raises(InputError, match=r"c\.parquet:4: conversation has no assistant turn"):
        pack([inp], tok_dir, tmp_path / "o1", PackOptions(mode="sft", progress=False))
    m = pack([inp], tok_dir, tmp_path / "o2", PackOptions(mode="sft", on_error="skip", progress=False))
    assert m.counts.dropped == Counter(no_assistant_turn=1) and m.counts.records_in == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "ok"}]},
        {"messages": "not a list"},
        {"messages": [{"role": "user", "content": "a </s> b"}, {"role": "assistant", "content": "ok"}]},
    ]) + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:1: the chat template refuses"):
        pack([bad], tok_dir, tmp_path / "o3", PackOptions(mode="sft", progress=False))
    with pytest.raises(InputError, match="no conversation could be packed"):
        pack([bad], tok_dir, tmp_path / "o4", PackOptions(mode="sft", on_error="skip", progress=False))
    state = json.loads((tmp_path / "o4" / "progress.json").read_text())
    assert state["counts"]["dropped"] == {"template_refused": 1, "malformed_conversation": 1, "control_token_in_text": 1}
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    no_tmpl = tmp_path / "notemplate"
    no_tmpl.mkdir()
    (no_tmpl / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
    (no_tmpl / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "chat_template"}))
    with pytest.raises(InputError, match="no chat_template"):
        pack([inp], no_tmpl, tmp_path / "o5", PackOptions(mode="sft", progress=False))
