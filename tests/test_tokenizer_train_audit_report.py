"""`tokenizer train`, `audit` and `report` on tiny real text and the real Mixtral tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from transformers import MixtralConfig

from tokenizer.audit import audit
from tokenizer.cli import main
from tokenizer.convert import write_hf_folder
from tokenizer.corpus import iter_texts
from tokenizer.extend import build
from tokenizer.parity import compare
from tokenizer.spm import BYTE, CONTROL, load_proto, save_proto
from zhdata.manifest import read_manifest

FIX = Path(__file__).parent / "fixtures" / "tokenizers"
MIXTRAL = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"
TEXT = FIX / "text"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zh")
    assert main(["train", "--corpus", str(TEXT / "zh_novels.jsonl"), str(TEXT / "zh_laws.jsonl"),
                 "--vocab-size", "4000", "-o", str(out), "--threads", "1"]) == 0
    return out


def test_train_uses_mixtral_conventions(trained):
    proto = load_proto(trained)
    assert len(proto.pieces) == 4000
    ts, ns = proto.trainer_spec, proto.normalizer_spec
    assert ts.model_type == pb.TrainerSpec.BPE and ts.byte_fallback and ts.split_digits
    assert ns.name == "identity" and ns.add_dummy_prefix and not ns.remove_extra_whitespaces
    assert [p.type for p in proto.pieces[:3]] == [2, CONTROL, CONTROL]
    assert sum(p.type == BYTE for p in proto.pieces) == 256
    sp = spm.SentencePieceProcessor(model_file=str(trained / "tokenizer.model"))
    assert sp.encode("2024年", out_type=str)[-5:] == ["2", "0", "2", "4", "年"]  # digits split, as Mixtral
    texts = list(iter_texts([TEXT]))
    assert compare(trained, texts)["mismatched"] == 0
    m = read_manifest(trained)
    assert m["corpus"]["han_chars"] > 50_000 and m["counts"]["records_in"] == m["counts"]["records_out"] == 19
    assert len(m["inputs"]) == 2


def test_train_rejects_text_without_chinese(tmp_path, capsys):
    assert main(["train", "--corpus", str(TEXT / "en_c4.jsonl"), "--vocab-size", "500", "-o", str(tmp_path / "x")]) == 2
    assert "almost no Chinese" in capsys.readouterr().err
    assert main(["train", "--corpus", str(TEXT / "zh_laws.jsonl"), "--text-field", "body", "--vocab-size", "500",
                 "-o", str(tmp_path / "y")]) == 2
    assert "no field 'body'" in capsys.readouterr().err
    assert main(["train", "--corpus", str(TEXT / "zh_laws.jsonl"), "--vocab-size", "1000", "-o", str(tmp_path / "z")]) == 2
    assert "raise --vocab-size or lower --character-coverage" in capsys.readouterr().err


def test_audit_finds_each_problem(tmp_path):
    base = load_proto(MIXTRAL)
    assert audit(MIXTRAL)["problems"] == []
    # what Chinese-LLaMA-style merging produces: a <pad> appended as a normal piece, an unreachable piece, a duplicate
    bad = build(base, ["华人", "中华", "人民", "中华人民", "<pad>"], "score0")
    folder = write_hf_folder(bad, tmp_path / "bad")
    (folder / "config.json").write_text(json.dumps({"vocab_size": 32000}))
    res = audit(folder, list(iter_texts([TEXT])), model=folder)
    text = "\n".join(res["problems"])
    assert "中华人民" not in res["unreachable_examples"]  # score 0: ties go leftmost, so it is produced ...
    assert "<pad>" in res["special_typed_normal"] and "special tokens typed as normal" in text
    assert "embedding has 32,000 rows but the tokenizer has 32,005 pieces" in text
    assert res["parity"]["mismatched"] > 0  # ... but Hugging Face cannot reproduce tied scores
    assert main(["audit", str(folder), "--corpus", str(TEXT), "-o", str(tmp_path / "a")]) == 1
    assert json.loads((tmp_path / "a" / "audit.json").read_text())["problems"]
    # with base merges first, 中华人民 behind 华人 can never be produced: audit must say so
    hidden = save_proto(build(base, ["华人", "中华人民"], "after-base"), tmp_path / "hidden.model")
    res = audit(hidden)
    assert "中华人民" in res["unreachable_examples"] and any("never produces" in p for p in res["problems"])
    assert res["parity"] is None  # a lone .model is not paired with the files of the folder it sits in
    nobyte = load_proto(MIXTRAL)
    nobyte.pieces[256].type, nobyte.pieces[256].piece = 1, "▁tX"  # the byte piece <0xFD> is gone
    assert "byte fallback is on but 1 byte pieces are missing" in audit(save_proto(nobyte, tmp_path / "nb.model"))["problems"][-1]
    good = write_hf_folder(base, tmp_path / "good")
    (good / "config.json").write_text(MixtralConfig(vocab_size=32000).to_json_string())
    assert main(["audit", str(good), "--model", str(good)]) == 0


def test_report_compares_tokenizers(tmp_path):
    base = load_proto(MIXTRAL)
    ext = write_hf_folder(build(base, ["国家", "人民", "应当", "法律", "规定"]), tmp_path / "ext")
    out = tmp_path / "r"
    assert main(["report", "--tokenizer", f"base={MIXTRAL}", "--tokenizer", f"ext={ext}",
                 "--corpus", f"zh={TEXT / 'zh_laws.jsonl'}", "--corpus", f"en={TEXT / 'en_c4.jsonl'}", "-o", str(out),
                 "--max-chars", "50000"]) == 0
    res = json.loads((out / "report.json").read_text())
    zh, en = res["corpora"]["zh"], res["corpora"]["en"]
    sp = spm.SentencePieceProcessor(model_file=str(MIXTRAL))
    texts = list(iter_texts([TEXT / "zh_laws.jsonl"], limit_chars=50_000))
    assert zh["base"]["tokens"] == sum(map(len, sp.encode(texts))) and zh["base"]["chars"] == sum(map(len, texts))
    assert zh["ext"]["tokens"] < zh["base"]["tokens"] and zh["ext"]["ratio_vs_reference"] > 1
    assert zh["ext"]["added_used"] == 5 and zh["base"]["added_utilisation"] is None
    assert en["ext"]["tokens"] == en["base"]["tokens"]
    assert 0 < zh["base"]["byte_fallback_share"] < 1 and en["base"]["bytes_per_token"] > zh["base"]["chars_per_token"]
    assert zh["base"]["plan"]["tokens"] == pytest.approx(20e9 / zh["base"]["bytes_per_token"])
    md = (out / "report.md").read_text()
    assert "## zh" in md and "| ext |" in md
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert read_manifest(out)["counts"]["records_in"] > 0


def test_train_skips_and_counts_bad_records_with_on_error_skip(tmp_path):
    import json as _json

    from tokenizer.cli import main as tok_main
    src = tmp_path / "zh.jsonl"
    lines = [_json.dumps({"text": "中文训练文本第%d行，内容足够长以便训练分词模型。" % i}, ensure_ascii=False) for i in range(400)]
    lines[10] = _json.dumps({"body": "没有文本字段"}, ensure_ascii=False)
    lines[20] = _json.dumps({"text": 42})
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert tok_main(["train", "--corpus", str(src), "--vocab-size", "300", "-o", str(tmp_path / "stop")]) == 2
    assert tok_main(["train", "--corpus", str(src), "--vocab-size", "300", "-o", str(tmp_path / "t"), "--on-error", "skip"]) == 0
    c = _json.loads((tmp_path / "t" / "manifest.json").read_text())["counts"]
    assert c["records_in"] == 400 and c["dropped"] == {"missing_text_field": 1, "non_string_text": 1}
