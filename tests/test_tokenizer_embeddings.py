"""`resize_and_init` / `tokenizer init-embeddings` on a tiny Mixtral with the real Mixtral tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2 as pb
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, MixtralConfig, MixtralForCausalLM

from tokenizer.cli import main
from tokenizer.convert import write_hf_folder
from tokenizer.embeddings import resize_and_init
from tokenizer.spm import load_proto
from zhdata.errors import InputError
from zhdata.manifest import read_manifest

MIXTRAL = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"
NEW = ["国家", "▁中国", "人民共和国", "的人", "\ufe0fx"]  # the last starts with a variation selector (byte pieces)


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> tuple[Path, Path]:
    """The base folder and a hand-made extension of it (five appended pieces with scores below every base piece)."""
    root = tmp_path_factory.mktemp("toks")
    base = write_hf_folder(load_proto(MIXTRAL), root / "base")
    proto = load_proto(MIXTRAL)
    low = min(p.score for p in proto.pieces)
    for k, piece in enumerate(NEW):
        proto.pieces.append(pb.ModelProto.SentencePiece(piece=piece, score=low - 1 - k, type=1))
    return base, write_hf_folder(proto, root / "ext")


def tiny(tie: bool = False, vocab: int = 32000) -> MixtralForCausalLM:
    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=vocab, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
                        tie_word_embeddings=tie)
    return MixtralForCausalLM(cfg)


def test_mean_init_uses_base_ids_without_bos_or_dummy_prefix(toks):
    base, ext = toks
    model = tiny()
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    s = resize_and_init(model, base, ext, init="mean", multiple_of=64)
    assert s == {"method": "mean", "old_rows": 32000, "base_vocab": 32000, "new_vocab": 32005, "new_rows": 32064,
                 "multiple_of": 64, "tied": False, "rows_initialised": 5, "padding_rows": 59, "rows_without_text": 0}
    w_in, w_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert w_in.shape == w_out.shape == (32064, 64) and model.config.vocab_size == 32064
    assert torch.equal(w_in[:32000], old_in) and torch.equal(w_out[:32000], old_out)
    sp = spm.SentencePieceProcessor(model_file=str(MIXTRAL))
    guo, jia = sp.piece_to_id("国"), sp.piece_to_id("家")
    assert torch.allclose(w_in[32000], (old_in[guo] + old_in[jia]) / 2)  # "国家": no BOS, no "▁"
    assert torch.allclose(w_out[32000], (old_out[guo] + old_out[jia]) / 2)
    ids = sp.encode("中国")  # "▁中国" really starts with "▁": its base ids are those of " 中国"
    assert torch.allclose(w_in[32001], old_in[ids].mean(0))
    assert 1 not in ids
    assert torch.allclose(w_in[32005:], old_in.mean(0).expand(59, -1))  # padding rows
    # the model still runs with the new ids
    assert model(torch.tensor([[1, 32000, 32004]])).logits.shape == (1, 3, 32064)


def test_tied_embeddings_and_other_methods(toks):
    base, ext = toks
    model = tiny(tie=True)
    s = resize_and_init(model, base, ext, init="mean", multiple_of=8)
    assert s["tied"] and s["new_rows"] == 32008
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for method in ("mean-resizing", "random"):
        m = tiny()
        old = m.get_input_embeddings().weight.detach().clone()
        s = resize_and_init(m, base, ext, init=method)
        w = m.get_input_embeddings().weight
        assert s["method"] == method and w.shape[0] == 32064 and torch.equal(w[:32000], old)
        assert not torch.allclose(w[32000], w[32001])  # sampled rows, not one mean


def test_works_when_other_weights_are_4bit(toks, tmp_path):
    base, ext = toks
    tiny().save_pretrained(tmp_path / "m")
    q = AutoModelForCausalLM.from_pretrained(tmp_path / "m", quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    assert type(q.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    s = resize_and_init(q, base, ext)
    assert s["new_rows"] == 32064
    assert type(q.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert q(torch.tensor([[1, 32003]])).logits.shape == (1, 2, 32064)


def test_mismatched_model_or_tokenizer_is_a_clear_error(toks):
    base, ext = toks
    with pytest.raises(InputError, match="rows but the base tokenizer has 32,000"):
        resize_and_init(tiny(vocab=1000), base, ext)
    with pytest.raises(InputError, match="already has 32,064 rows"):
        resize_and_init(tiny(vocab=32064), base, ext)
    with pytest.raises(InputError, match="not an extension"):
        resize_and_init(tiny(), base, _ids_changed(ext))


def _ids_changed(ext: Path) -> Path:
    """An 'extension' whose piece 100 differs from the base: ids were not kept."""
    proto = load_proto(ext)
    proto.pieces[100].piece = "\u2581zzqx"  # a piece not in the vocabulary (a repeat would be refused on load)
    return write_hf_folder(proto, ext.parent / "bad")


def test_cli_writes_model_tokenizer_and_manifest(toks, tmp_path):
    base, ext = toks
    tiny().save_pretrained(tmp_path / "m")
    out = tmp_path / "out"
    assert main(["init-embeddings", "--model", str(tmp_path / "m"), "--base-tokenizer", str(base),
                 "--tokenizer", str(ext), "-o", str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape == (32064, 64)
    assert len(AutoTokenizer.from_pretrained(out)) == 32005
    assert read_manifest(out)["embeddings"]["rows_initialised"] == 5
    # the model folder has no tokenizer.model and none was named: a clear error
    assert main(["init-embeddings", "--model", str(tmp_path / "m"), "--tokenizer", str(ext), "-o", str(tmp_path / "o2")]) == 2
