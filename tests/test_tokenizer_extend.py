"""`tokenizer extend` on the real Mixtral tokenizer: every guarantee of the extension, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from tokenizer.cli import main
from tokenizer.corpus import has_cjk, iter_texts
from tokenizer.extend import ExtendOptions, build, extend_tokenizer, select
from tokenizer.parity import compare, load_pair
from tokenizer.reach import unreachable
from tokenizer.spm import load_proto, processor
from zhdata.errors import InputError
from zhdata.manifest import file_sha256, read_manifest
from zhdata.pack.tokfolder import load_tokenizer_folder

FIX = Path(__file__).parent / "fixtures" / "tokenizers"
MIXTRAL = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"
TEXT = FIX / "text"
ADD = 1500
EDGE = ["", "  两个空格  和\t制表符\n\n换行", "表情😀👩‍👩‍👧与生僻字𠀀𪚥龘", "中文English混合123,456.7元", "\u3000全角空格"]


@pytest.fixture(scope="module")
def ext(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ext")
    assert main(["extend", "--base", str(MIXTRAL), "--corpus", str(TEXT), "--add", str(ADD), "-o", str(out),
                 "--threads", "1"]) == 0
    return out


def zh_texts() -> list[str]:
    docs = [t for t in iter_texts([TEXT]) if has_cjk(t)]
    return docs + [p for t in docs for p in t.split("\n") if p] + EDGE


def non_cjk_texts() -> list[str]:
    lines = [p for t in iter_texts([TEXT]) for p in t.split("\n") if p and not has_cjk(p)]
    return lines + ["def f(x):\n    return x ** 2  # square", "https://example.com/a?b=1", "2024-01-01 12:00:00, 3.14159",
                    "   spaces   everywhere   ", "Ünïcödé façade naïve"]


def test_exactly_n_new_pieces_and_base_ids_kept(ext):
    base, new = load_proto(MIXTRAL), load_proto(ext)
    assert len(new.pieces) == 32000 + ADD
    for a, b in zip(base.pieces, new.pieces):
        assert (a.piece, a.score, a.type) == (b.piece, b.score, b.type)  # controls, unk, bytes keep their types
    added = new.pieces[32000:]
    assert all(p.type == 1 and has_cjk(p.piece) for p in added)
    assert len({p.piece for p in new.pieces}) == len(new.pieces)
    # new pieces score below every base piece, in decreasing order
    assert max(p.score for p in added) < min(p.score for p in base.pieces)
    assert all(a.score > b.score for a, b in zip(added, added[1:]))
    tsv = (ext / "added_pieces.tsv").read_text(encoding="utf-8").splitlines()
    assert len(tsv) == ADD + 1 and tsv[1].split("\t")[:2] == ["32000", added[0].piece]


def test_every_new_piece_is_reachable(ext):
    new = load_proto(ext)
    assert unreachable(new, list(range(32000, len(new.pieces)))) == []
    sp = processor(new)
    # and the encoder does use them on real text
    used = {i for ids in sp.encode(zh_texts()) for i in ids if i >= 32000}
    assert len(used) > ADD // 2


def test_unreachable_pieces_are_detected_and_replaced():
    base = load_proto(MIXTRAL)
    # "华人" merges first, so 中华|人民 never sit side by side: "中华人民" cannot be produced
    pool = ["华人", "中华", "人民", "中华人民", "民国"]
    proto = build(base, pool[:4])
    assert unreachable(proto, list(range(32000, 32004))) == [32003]
    sel = select(base, pool, 4)
    assert sel.pieces == ["华人", "中华", "人民", "民国"] and sel.dropped_unreachable == ["中华人民"]
    # under a score-0 append the same piece is reachable, but the base's own merges lose priority
    assert unreachable(build(base, pool[:4], "score0"), [32003]) == []


def test_text_without_cjk_encodes_exactly_as_the_base(ext):
    texts = non_cjk_texts()
    assert len(texts) > 100
    base = spm.SentencePieceProcessor(model_file=str(MIXTRAL))
    new_sp, new_hf = load_pair(ext)
    want = base.encode(texts)
    assert new_sp.encode(texts) == want
    assert [e.ids for e in new_hf.encode_batch(texts, add_special_tokens=False)] == want


def test_round_trip_and_parity_on_real_chinese(ext):
    texts = zh_texts()
    tok = AutoTokenizer.from_pretrained(ext)
    assert len(tok) == 32000 + ADD
    sp = spm.SentencePieceProcessor(model_file=str(ext / "tokenizer.model"))
    ids = sp.encode(texts)
    assert [sp.decode(x) for x in ids] == texts
    assert tok(texts, add_special_tokens=False)["input_ids"] == ids
    assert [tok.decode(x) for x in ids] == texts
    assert compare(ext, texts)["mismatched"] == 0
    assert "[INST]" in tok.chat_template


def test_fewer_tokens_than_base_and_score0(ext, tmp_path):
    texts = [t for t in zh_texts() if t]
    s0 = tmp_path / "s0"
    assert main(["extend", "--base", str(MIXTRAL), "--pieces", str(ext), "--add", str(ADD), "--priority", "score0",
                 "-o", str(s0), "--check-corpus", str(TEXT)]) == 0
    assert [p.piece for p in load_proto(s0).pieces] == [p.piece for p in load_proto(ext).pieces]  # the same pieces
    count = lambda model: sum(map(len, spm.SentencePieceProcessor(model_file=str(model)).encode(texts)))  # noqa: E731
    n_base, n_ext, n_s0 = count(MIXTRAL), count(ext / "tokenizer.model"), count(s0 / "tokenizer.model")
    assert n_ext < 0.85 * n_base
    assert n_ext <= n_s0
    assert read_manifest(s0)["checks"]["round_trip_failed"] == 0


def test_manifest_records_checks_and_is_reproducible_from_pieces(ext, tmp_path):
    m = read_manifest(ext)
    assert m["extension"]["added"] == ADD and m["extension"]["base_vocab"] == 32000
    c = m["checks"]
    assert c["unreachable_new"] == 0 and c["non_cjk_changed"] == 0 and c["round_trip_failed"] == 0 and c["parity_mismatched"] == 0
    assert m["tokenizer"]["file_sha256"] == file_sha256(ext / "tokenizer.json")
    assert m["tokenizer"]["fingerprint"] == load_tokenizer_folder(ext).fingerprint
    assert m["counts"]["records_in"] == m["counts"]["records_out"] > 0
    # the base may be a Hugging Face tokenizer folder (here made by `tokenizer convert`) as well as a .model file;
    # the library function (what `train quickstart` calls) writes what the command wrote
    base_dir = tmp_path / "base"
    assert main(["convert", str(MIXTRAL), "-o", str(base_dir)]) == 0
    again = tmp_path / "again"
    m2 = extend_tokenizer(base_dir, again, ADD, pieces=ext / "source_pieces.model",
                          opts=ExtendOptions(check_corpus=(str(TEXT),)))
    assert file_sha256(again / "tokenizer.json") == file_sha256(ext / "tokenizer.json")
    assert m2.extra["checks"]["parity_mismatched"] == 0 and read_manifest(again)["params"]["add"] == ADD


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    en = tmp_path / "en.jsonl"
    en.write_text("".join(json.dumps({"text": t}) + "\n" for t in non_cjk_texts()), encoding="utf-8")
    assert main(["extend", "--base", str(MIXTRAL), "--corpus", str(en), "--add", "10", "-o", str(tmp_path / "a")]) == 2
    assert "almost no Chinese" in capsys.readouterr().err
    assert main(["extend", "--base", str(MIXTRAL), "--corpus", str(TEXT / "zh_pydocs.jsonl"), "--add", "50000",
                 "--zh-vocab-size", "3000", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "new reachable Chinese pieces are available, not 50,000" in err and "lower --add" in err
    assert main(["extend", "--base", str(en), "--corpus", str(TEXT), "--add", "10", "-o", str(tmp_path / "c")]) == 2
    assert "not a SentencePiece model" in capsys.readouterr().err
    with pytest.raises(InputError, match="only 1 new reachable"):
        select(load_proto(MIXTRAL), ["▁the", "中华", "hello"], 2)
