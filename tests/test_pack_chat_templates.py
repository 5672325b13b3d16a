"""SFT packing with the chat templates found in real tokenizer configs: the packed ids are what transformers'
`apply_chat_template` gives for the same conversation, and the labels are exactly the assistant answers.

The templates are written here in the styles of their families (not copied): Mixtral-Instruct's current
style reads `messages[0]` without a guard, so an empty conversation cannot be rendered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from tokenizer.convert import CHAT_TEMPLATE, write_hf_folder
from tokenizer.spm import load_proto
from zhdata.pack import PackedDataset
from zhdata.pack.chat import ChatRenderer
from zhdata.pack.packer import PackOptions, pack
from zhdata.pack.tokfolder import load_tokenizer_folder

MIXTRAL = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"

MIXTRAL_INSTRUCT = (  # unguarded messages[0]; system folded into the first user turn
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{- raise_exception('roles must alternate') }}{%- endif %}"
    "{%- if message['role'] == 'user' %}{%- if loop.first and system_message is defined %}"
    "{{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "{%- else %}{{- ' [INST] ' + message['content'] + ' [/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}"
    "{%- else %}{{- raise_exception('only user and assistant roles') }}{%- endif %}{%- endfor %}")
CHATML = (  # Qwen style: a default system turn when the conversation has none (unguarded messages[0])
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA2 = (  # a <<SYS>> block inside the first [INST], BOS before every user turn, stripped contents
    "{%- if messages[0]['role'] == 'system' %}{%- set loop_messages = messages[1:] %}{%- set system_message = messages[0]['content'] %}"
    "{%- else %}{%- set loop_messages = messages %}{%- set system_message = false %}{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{- raise_exception('roles must alternate') }}{%- endif %}"
    "{%- if loop.index0 == 0 and system_message != false %}"
    "{%- set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{%- else %}{%- set content = message['content'] %}{%- endif %}"
    "{%- if message['role'] == 'user' %}{{- bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + content.strip() + ' ' + eos_token }}{%- endif %}{%- endfor %}")
# the text each template puts after an answer's content, trained on with it
STYLES = {"mixtral-instruct": (MIXTRAL_INSTRUCT, "</s>"), "chatml": (CHATML, "<|im_end|>\n"),
          "llama2": (LLAMA2, " </s>"), "ours": (CHAT_TEMPLATE, "</s>")}

CONVS = [
    {"id": "a", "source": "t", "system": None, "messages": [
        {"role": "user", "content": "天为什么是蓝的？"}, {"role": "assistant", "content": "因为瑞利散射：短波长的光散射更强。"}]},
    {"id": "b", "source": "t", "system": "你是一个乐于助人的助手。", "messages": [
        {"role": "user", "content": "把“你好”翻译成英文。"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "再翻译成法语。"}, {"role": "assistant", "content": "Bonjour.\n第二行。"}]},
    {"id": "c", "source": "t", "system": None, "messages": [
        {"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "2"},
        {"role": "user", "content": "And 2+2?"}, {"role": "assistant", "content": "4, of course."},
        {"role": "user", "content": "谢谢"}]},  # a trailing question nothing answers: removed before packing
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return write_hf_folder(load_proto(MIXTRAL), tmp_path_factory.mktemp("tok") / "mixtral")


def _folder(base: Path, dst: Path, template: str) -> Path:
    shutil.copytree(base, dst)
    cfg = json.loads((dst / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["chat_template"] = template
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    return dst


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


@pytest.mark.parametrize("style", sorted(STYLES))
def test_pack_renders_as_transformers_and_labels_only_the_answers(base, tmp_path, style):
    from transformers import AutoTokenizer

    template, close = STYLES[style]
    tok_dir = _folder(base, tmp_path / style, template)
    src = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(CONVS), src)
    m = pack([src], tok_dir, tmp_path / "out", PackOptions(mode="sft", block_size=512, val_fraction=0, packing="none",
                                                            progress=False))
    assert m.counts.records_out == len(CONVS) and not m.counts.dropped
    ds = PackedDataset(tmp_path / "out", "train")
    hf = AutoTokenizer.from_pretrained(tok_dir)
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    renderer = ChatRenderer(load_tokenizer_folder(tok_dir))
    for i, conv in enumerate(CONVS):
        msgs = conv["messages"][:-1] if conv["messages"][-1]["role"] == "user" else conv["messages"]
        full = ([{"role": "system", "content": conv["system"]}] if conv["system"] else []) + msgs
        assert renderer.render(conv["system"], msgs).text == hf.apply_chat_template(full, tokenize=False)
        x = ds[i]
        ids, labels = x["input_ids"].numpy(), x["labels"].numpy()
        assert ids.tolist() == hf.apply_chat_template(full, tokenize=True, return_dict=False)
        trained = labels != -100
        assert np.array_equal(labels[trained], ids[trained])
        answers = [mm["content"] for mm in msgs if mm["role"] == "assistant"]
        spans = _runs(trained)
        assert len(spans) == len(answers)
        for (a, b), answer in zip(spans, answers):  # each run of labels is one answer with its closing text, no more
            assert tok.decode(ids[a:b].tolist(), skip_special_tokens=False).strip() == (answer + close).strip()
