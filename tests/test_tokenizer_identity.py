"""A tokenizer's identity is what it does (`tokenizer_fingerprint`), not the bytes of its tokenizer.json: a
Hub-style folder and the `tokenizer convert` output of the same SentencePiece model are one tokenizer,
and packed data made with one trains with the other; a tokenizer that encodes differently is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import MixtralConfig, MixtralForCausalLM

from tokenizer.convert import write_hf_folder
from tokenizer.spm import load_proto
from train.cli import main as train_main
from train.data import check_dataset, open_packed
from zhdata.errors import InputError
from zhdata.manifest import file_sha256, read_manifest
from zhdata.pack.packer import PackOptions, pack
from zhdata.pack.tokfolder import load_tokenizer_folder, tokenizer_fingerprint

MIXTRAL = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"
# the chat template of current Mixtral-Instruct tokenizer configs: reads messages[0] without a guard
HUB_TEMPLATE = ("{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
                "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
                "{{- bos_token }}{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
                "{{- ' [INST] ' + message['content'] + ' [/INST]' }}{%- elif message['role'] == 'assistant' %}"
                "{{- ' ' + message['content'] + eos_token}}{%- endif %}{%- endfor %}")


def _reverse_keys(x):
    if isinstance(x, dict):
        return {k: _reverse_keys(x[k]) for k in reversed(list(x))}
    if isinstance(x, list):
        return [_reverse_keys(v) for v in x]
    return x


def hub_style(src: Path, dst: Path) -> Path:
    """The tokenizer of `src` written as Hub folders hold it: other JSON layout and key order, merges as
    "a b" strings, a default left out, vocab listed in another order, another tokenizer_config.json."""
    dst.mkdir(parents=True, exist_ok=True)
    d = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    model = d["model"]
    model["merges"] = [" ".join(m) for m in model["merges"]]
    del model["ignore_merges"]
    model["vocab"] = dict(reversed(list(model["vocab"].items())))
    d["added_tokens"] = list(reversed(d["added_tokens"]))
    d["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    (dst / "tokenizer.json").write_text(json.dumps(_reverse_keys(d), ensure_ascii=True), encoding="utf-8")
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
           "pad_token": None, "legacy": True, "clean_up_tokenization_spaces": False, "model_max_length": 1000000000000000019884624838656,
           "tokenizer_class": "LlamaTokenizer", "chat_template": HUB_TEMPLATE, "spaces_between_special_tokens": False,
           "added_tokens_decoder": {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                             "single_word": False, "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])}}
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg, indent=4), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def conv(tmp_path_factory) -> Path:
    return write_hf_folder(load_proto(MIXTRAL), tmp_path_factory.mktemp("conv"))


def _edited(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    d = json.loads((dst / "tokenizer.json").read_text(encoding="utf-8"))
    edit(d)
    (dst / "tokenizer.json").write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")
    return dst


def test_same_tokenizer_written_two_ways_has_one_fingerprint(conv, tmp_path):
    hub = hub_style(conv, tmp_path / "hub")
    a, b = load_tokenizer_folder(conv), load_tokenizer_folder(hub)
    assert a.file_sha256 != b.file_sha256  # the bytes differ ...
    assert a.fingerprint == b.fingerprint  # ... the tokenizer does not
    text = "我们在中国学习语言模型。 The quick  brown fox\n\tjumps! 🦊"
    assert a.tokenizer.encode(text).ids == b.tokenizer.encode(text).ids
    # a changed chat template or display options are not part of the identity either
    cfg = json.loads((hub / "tokenizer_config.json").read_text())
    cfg.update(chat_template="{{ messages }}", clean_up_tokenization_spaces=True, pad_token="</s>")
    (hub / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert load_tokenizer_folder(hub).fingerprint == a.fingerprint
    # the fingerprint of an in-memory tokenizer is the same function
    assert tokenizer_fingerprint(Tokenizer.from_file(str(conv / "tokenizer.json")), a.config) == a.fingerprint


def _swap_merges(d):
    m = d["model"]["merges"]
    m[100], m[101] = m[101], m[100]


def _swap_piece_ids(d):
    vocab = d["model"]["vocab"]
    a, b = (next(p for p, i in vocab.items() if i == n) for n in (500, 501))
    vocab[a], vocab[b] = 501, 500


def _drop_dummy_prefix(d):
    d["normalizer"] = d["normalizer"]["normalizers"][1]


def _no_bos(d):
    d["post_processor"] = None


def _special_not_special(d):
    d["added_tokens"][2]["special"] = False


@pytest.mark.parametrize("edit", [_swap_merges, _swap_piece_ids, _drop_dummy_prefix, _no_bos, _special_not_special])
def test_any_change_in_encoding_changes_the_fingerprint(conv, tmp_path, edit):
    assert load_tokenizer_folder(_edited(conv, tmp_path / "x", edit)).fingerprint != load_tokenizer_folder(conv).fingerprint


def test_special_token_roles_of_the_config_are_part_of_the_identity(conv, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(conv, other)
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "<unk>"  # packing appends this after every document
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert load_tokenizer_folder(other).fingerprint != load_tokenizer_folder(conv).fingerprint


def _tiny_mixtral(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=32000, hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, num_local_experts=2, num_experts_per_tok=1, max_position_embeddings=64,
                        tie_word_embeddings=False)
    MixtralForCausalLM(cfg).save_pretrained(path)
    return path


def test_data_packed_with_the_converted_tokenizer_trains_with_a_hub_model_folder(conv, tmp_path, capsys):
    src = tmp_path / "pt.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": "我们在中国学习语言模型。The quick brown fox." * 2}) + "\n"
                           for i in range(24)), encoding="utf-8")
    packed = tmp_path / "packed"
    pack([src], conv, packed, PackOptions(mode="pt", block_size=16, val_fraction=0.0, progress=False))
    m = read_manifest(packed)["tokenizer"]
    assert m["fingerprint"] == load_tokenizer_folder(conv).fingerprint and m["file_sha256"] == file_sha256(conv / "tokenizer.json")
    model = hub_style(conv, _tiny_mixtral(tmp_path / "model"))  # the README's pipeline: the model folder's own tokenizer
    ds = open_packed(packed)
    assert check_dataset(ds, packed, model, "pt") == m["fingerprint"]
    out = tmp_path / "run"
    assert train_main(["run", "--model", str(model), "--data", str(packed), "--output-dir", str(out), "--max-steps", "1",
                       "--micro-batch-size", "2", "--lora-r", "2", "--save-every", "0", "--quiet"]) == 0, capsys.readouterr().err
    assert read_manifest(out)["tokenizer"]["fingerprint"] == m["fingerprint"]
    # a tokenizer that encodes differently is still refused, naming both
    other = _edited(conv, tmp_path / "other", _swap_merges)
    with pytest.raises(InputError, match="packed with tokenizer .* encode text differently"):
        check_dataset(ds, packed, other, "pt")


def test_a_missing_or_wrong_tokenizer_folder_is_named_as_such(conv, tmp_path):
    src = tmp_path / "pt.jsonl"
    src.write_text("".join(json.dumps({"text": "你好，世界。" * 4}) + "\n" for _ in range(8)), encoding="utf-8")
    pack([src], conv, tmp_path / "packed", PackOptions(mode="pt", block_size=8, val_fraction=0.0, progress=False))
    ds = open_packed(tmp_path / "packed")
    with pytest.raises(InputError, match=r"nowhere: tokenizer folder does not exist"):
        check_dataset(ds, tmp_path / "packed", tmp_path / "nowhere", "pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: not a tokenizer folder \(no tokenizer.json in it\)"):
        check_dataset(ds, tmp_path / "packed", tmp_path / "empty", "pt")
