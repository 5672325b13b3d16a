"""`tokenizer.folder.copy_tokenizer_files`: the one copy of a tokenizer folder beside a model (runs, merges,
initialised embeddings, demonstration models use it)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from tokenizer.convert import write_hf_folder
from tokenizer.folder import TOKENIZER_FILES, copy_tokenizer_files
from tokenizer.spm import load_proto
from train.demo_model import make_demo_model

MIXTRAL = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"


def test_copies_every_tokenizer_file_and_nothing_else(tmp_path):
    src = write_hf_folder(load_proto(MIXTRAL), tmp_path / "tok")
    (src / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")  # transformers 5 keeps templates apart
    (src / "config.json").write_text("{}")
    (src / "manifest.json").write_text("{}")
    copied = copy_tokenizer_files(src, tmp_path / "a" / "b")
    names = {p.name for p in copied}
    assert names == {p.name for p in src.iterdir() if p.name in TOKENIZER_FILES}
    assert names >= {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "chat_template.jinja"}
    assert {p.name for p in (tmp_path / "a" / "b").iterdir()} == names
    assert all((tmp_path / "a" / "b" / n).read_bytes() == (src / n).read_bytes() for n in names)
    demo = make_demo_model(src, tmp_path / "demo", layers=1, hidden=16, experts=2, top_k=1, heads=2, kv_heads=1)
    assert {n for n in names} <= {p.name for p in demo.iterdir()}
    assert AutoTokenizer.from_pretrained(demo)("你好").input_ids == AutoTokenizer.from_pretrained(src)("你好").input_ids
