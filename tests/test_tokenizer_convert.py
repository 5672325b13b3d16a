"""`tokenizer convert`: the real Mixtral model as a Hugging Face folder with SentencePiece's ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from tokenizer.cli import main
from tokenizer.convert import convert_sentencepiece
from tokenizer.corpus import iter_texts
from tokenizer.parity import compare
from zhdata.manifest import file_sha256, read_manifest
from zhdata.pack.tokfolder import load_tokenizer_folder

FIX = Path(__file__).parent / "fixtures" / "tokenizers"
MIXTRAL = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"
TEXT = FIX / "text"
# Whitespace runs, leading/trailing spaces, tabs/newlines (byte pieces), emoji and rare characters
# outside the vocabulary (byte fallback), fullwidth space, zero-width space, combining marks.
EDGE = [
    "", " ", "  ", "Hello  world   x", "  leading", "trailing  ", "a\n\n\tb\r\n", "中文😀𠀀 ¡ \u200b",
    "emoji 👩‍👩‍👧 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "e\u0301 caf\u00e9", "\u3000全角空格\u3000", "龘靐齉 ꙮ", "x = f(1234567) # 3.14",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return convert_sentencepiece(MIXTRAL, tmp_path_factory.mktemp("mixtral"))


def texts() -> list[str]:
    out = list(iter_texts([TEXT]))
    # paragraphs as well as whole documents, so that short inputs are exercised too
    return out + [p for t in out for p in t.split("\n") if p] + EDGE


def test_autotokenizer_loads_with_sentencepiece_ids(folder):
    sp = spm.SentencePieceProcessor(model_file=str(MIXTRAL))
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == sp.get_piece_size() == 32000
    corpus = texts()
    got = tok(corpus, add_special_tokens=False)["input_ids"]
    want = sp.encode(corpus)
    assert sum(map(len, want)) > 100_000
    assert [i for i, (a, b) in enumerate(zip(got, want)) if a != b] == []
    assert compare(folder, corpus)["mismatched"] == 0
    # BOS is added by default, as SentencePiece-based Mixtral training does; no EOS
    assert tok("你好")["input_ids"] == [sp.bos_id()] + sp.encode("你好")


def test_round_trip_and_byte_fallback(folder):
    tok = AutoTokenizer.from_pretrained(folder)
    for t in texts():
        assert tok.decode(tok.encode(t, add_special_tokens=False)) == t
    ids = tok.encode("𠀀", add_special_tokens=False)  # not in the vocabulary: four byte pieces
    assert tok.convert_ids_to_tokens(ids)[-4:] == ["<0xF0>", "<0xA0>", "<0x80>", "<0x80>"]


def test_tokenizer_json_is_deterministic(folder, tmp_path):
    again = convert_sentencepiece(MIXTRAL, tmp_path / "again")
    assert file_sha256(again / "tokenizer.json") == file_sha256(folder / "tokenizer.json")
    assert (again / "tokenizer.model").read_bytes() == MIXTRAL.read_bytes()


def test_special_tokens(folder):
    tok = AutoTokenizer.from_pretrained(folder)
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert json.loads((folder / "special_tokens_map.json").read_text()) == {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    assert tok.convert_ids_to_tokens([3, 258]) == ["<0x00>", "<0xFF>"]


def test_chat_template_is_mixtral_format(folder):
    tok = AutoTokenizer.from_pretrained(folder)
    msgs = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<s>[INST] 你是助手。\n\n你好 [/INST] 你好！</s>[INST] 1+1? [/INST] 2</s>"
    assert tok.apply_chat_template(msgs[1:2], tokenize=False) == "<s>[INST] 你好 [/INST]"
    ids = tok.apply_chat_template(msgs[1:3], tokenize=True, return_dict=False)
    sp = spm.SentencePieceProcessor(model_file=str(MIXTRAL))
    # as mistral-common encodes v1 turns: BOS, "[INST] user [/INST]" and the answer each with a dummy prefix, EOS
    assert ids == [1] + sp.encode("[INST] 你好 [/INST]") + sp.encode("你好！") + [2]
    with pytest.raises(Exception, match="alternate"):
        tok.apply_chat_template([{"role": "assistant", "content": "x"}], tokenize=False)
    with pytest.raises(Exception, match="role tool"):
        tok.apply_chat_template([{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}], tokenize=False)


def test_cli_writes_manifest_and_checks_parity(tmp_path):
    out = tmp_path / "tok"
    assert main(["convert", str(MIXTRAL), "-o", str(out), "--check", str(TEXT)]) == 0
    m = read_manifest(out)
    assert m["tokenizer"]["file_sha256"] == file_sha256(out / "tokenizer.json")
    assert m["tokenizer"]["fingerprint"] == load_tokenizer_folder(out).fingerprint
    assert m["tokenizer"]["vocab_size"] == 32000 and m["parity"]["mismatched"] == 0 and m["parity"]["texts"] > 0
    assert m["inputs"][0]["sha256"] == file_sha256(MIXTRAL)


def test_bad_base_is_a_clear_error(tmp_path, capsys):
    bogus = tmp_path / "tokenizer.model"
    bogus.write_text("this is not a model\n")
    assert main(["convert", str(bogus), "-o", str(tmp_path / "o")]) == 2
    assert "not a SentencePiece model" in capsys.readouterr().err
    hf_only = tmp_path / "hf"
    hf_only.mkdir()
    (hf_only / "tokenizer.json").write_text("{}")
    assert main(["convert", str(hf_only), "-o", str(tmp_path / "o2")]) == 2
    assert "no tokenizer.model" in capsys.readouterr().err
