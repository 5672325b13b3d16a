"""One reader of documents for every command: the same records give the same texts and the same reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenizer.convert import convert_sentencepiece
from tokenizer.corpus import iter_texts
from tokenizer.train_spm import write_training_text
from train.evaldata import read_texts
from zhdata.clean import CleanOptions, read_piece
from zhdata.documents import iter_documents
from zhdata.errors import ErrorPolicy, InputError
from zhdata.manifest import Counts, Manifest
from zhdata.pack.packer import PackOptions, pack
from zhdata.readers import plan_pieces

MIXTRAL = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"

GOOD = ["好文本", "中文 text"]
RECORDS = [{"text": GOOD[0]}, [1, 2], {"body": "x"}, {"text": 3}, {"text": None}, {"text": ""}, {"text": " \n "},
           {"text": GOOD[1]}]
REASONS = {"not_an_object": 1, "missing_text_field": 1, "non_string_text": 1, "empty_text": 3}


@pytest.fixture()
def corpus(tmp_path) -> Path:
    p = tmp_path / "mixed.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
    return p


def test_documents_one_rule_and_one_set_of_reasons(corpus):
    pol = ErrorPolicy("skip")
    docs = list(iter_documents(corpus, policy=pol))
    assert [(w, t) for w, t, _ in docs] == [(1, GOOD[0]), (8, GOOD[1])]
    assert pol.skipped == REASONS
    # stop mode: a bad record is a FILE:LINE error; an empty text is not (it is dropped and counted)
    with pytest.raises(InputError, match=r"mixed\.jsonl:2: record is a JSON list"):
        list(iter_documents(corpus))
    empties = corpus.with_name("empty_texts.jsonl")
    empties.write_text('{"text": ""}\n{"text": null}\n{"text": "有"}\n', encoding="utf-8")
    pol = ErrorPolicy("stop")
    assert [t for _, t, _ in iter_documents(empties, policy=pol)] == ["有"] and pol.skipped == {"empty_text": 2}


def test_clean_tokenizer_and_eval_read_the_same_documents(corpus, tmp_path):
    """clean, tokenizer corpora, tokenizer train and train eval: same texts, same reasons (was missing_field vs
    missing_text_field, and three different empty-text rules)."""
    pol = ErrorPolicy("skip")
    df = read_piece(plan_pieces([corpus])[0], CleanOptions(on_error="skip"), pol)
    assert df["text"].to_list() == GOOD and df["id"].to_list() == ["mixed.jsonl:1", "mixed.jsonl:8"]
    assert pol.skipped == REASONS

    pol = ErrorPolicy("skip")
    assert list(iter_texts([corpus], policy=pol)) == GOOD and pol.skipped == REASONS

    counts = Counts()
    assert read_texts([corpus], counts, policy=ErrorPolicy("skip")) == GOOD
    assert counts.dropped == REASONS and counts.records_in == len(RECORDS) and counts.records_out == 2

    m = Manifest("test", {})
    big = tmp_path / "big.jsonl"  # enough Han characters for the corpus check, plus the mixed records
    big.write_text(corpus.read_text(encoding="utf-8") + json.dumps({"text": "汉字" * 100}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    stats = write_training_text([big], tmp_path / "train.txt", policy=ErrorPolicy("skip"), manifest=m)
    assert stats["records"] == len(RECORDS) + 1
    assert m.counts.dropped == REASONS and m.counts.records_in == len(RECORDS) + 1 and m.counts.records_out == 3


def test_pack_pt_reads_documents_by_the_same_rule(corpus, tmp_path):
    tok = convert_sentencepiece(MIXTRAL, tmp_path / "tok")
    m = pack([corpus], tok, tmp_path / "packed", PackOptions(mode="pt", block_size=64, val_fraction=0.0,
                                                               on_error="skip", progress=False))
    assert m.counts.dropped == REASONS  # was "no_text" for all three bad records
    assert m.counts.records_in == len(RECORDS) and m.counts.records_out == 2
