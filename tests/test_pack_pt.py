"""zhdata pack --mode pt: exact tokens, document boundaries, stable split, resume, large vocabularies, the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from tokenizer.convert import convert_sentencepiece
from zhdata.cli import main as zhdata_main
from zhdata.pack import PackedDataset, collate_packed
from zhdata.pack.packer import PackOptions, pack
from zhdata.pack.pretrain import PretrainEncoder
from zhdata.pack.store import SplitWriter
from zhdata.errors import InputError

FIX = Path(__file__).parent / "fixtures" / "tokenizers"
MIXTRAL = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"
EOS, BOS = 2, 1


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    return convert_sentencepiece(MIXTRAL, tmp_path_factory.mktemp("tok") / "mixtral")


def real_texts(n_per_file: int = 15) -> list[str]:
    texts = []
    for name in ("zh_novels.jsonl", "zh_laws.jsonl", "en_c4.jsonl"):
        lines = (FIX / "text" / name).read_text(encoding="utf-8").splitlines()[:n_per_file]
        texts += [json.loads(x)["text"][:3000] for x in lines]
    return texts + ["混合 text 123 😀\n\t end", "  leading spaces", "單字"]


def write_shards(folder: Path, texts: list[str], n_shards: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n_shards):
        part = texts[k::n_shards]
        pq.write_table(pa.table({"id": [f"{k}-{i}" for i in range(len(part))], "text": part, "source": ["t"] * len(part)}),
                       folder / f"shard-{k:03d}.parquet")
    return folder


def stream(ds: PackedDataset) -> np.ndarray:
    return np.concatenate([ds[i]["input_ids"].numpy() for i in range(len(ds))]) if len(ds) else np.empty(0, np.int64)


def docs_of(tokens: np.ndarray) -> list[list[int]]:
    """Split a token stream after every EOS (EOS never occurs inside an encoded text)."""
    cuts = np.flatnonzero(tokens == EOS) + 1
    return [t.tolist() for t in np.split(tokens, cuts) if len(t)]


def test_unpacked_tokens_equal_encoding_of_every_document_in_order(tok_dir, tmp_path):
    texts = real_texts() + ["", "   "]  # blank documents are dropped and counted
    inp = write_shards(tmp_path / "in", texts)
    m = pack([inp], tok_dir, tmp_path / "out", PackOptions(mode="pt", block_size=256, val_fraction=0.3, progress=False))
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    files = sorted(inp.glob("*.parquet"))
    in_order = [t for f in files for t in pq.read_table(f)["text"].to_pylist() if t.strip()]
    expected = [[BOS] + tok.encode(t, add_special_tokens=False).ids + [EOS] for t in in_order]

    train, val = (docs_of(stream(PackedDataset(tmp_path / "out", s))) for s in ("train", "val"))
    assert len(train) + len(val) == len(expected) and train and val
    # train and val are each in input order and together are exactly the documents: an order-keeping partition
    it, iv = 0, 0
    for doc in expected:
        if it < len(train) and train[it] == doc:
            it += 1
        else:
            assert val[iv] == doc
            iv += 1
    assert m.counts.records_in == len(texts) and m.counts.dropped["empty_text"] == 2
    p = m.extra["pack"]
    assert p["tokens"] == sum(map(len, expected)) and p["dtype"] == "uint16"
    assert p["text_tokens"] == sum(len(d) - 2 for d in expected)
    assert p["chars"] == sum(map(len, in_order))
    assert m.extra["tokenizer"]["vocab_size"] == 32000 and len(m.extra["tokenizer"]["fingerprint"]) == 64


def test_blocks_restart_positions_at_document_starts_and_mask_cross_document_labels(tok_dir, tmp_path):
    inp = write_shards(tmp_path / "in", real_texts(8), n_shards=2)
    pack([inp], tok_dir, tmp_path / "out", PackOptions(mode="pt", block_size=100, val_fraction=0, progress=False))
    ds = PackedDataset(tmp_path / "out", "train")
    assert isinstance(ds._open()["tokens"], np.memmap)  # random access through a memory map, nothing loaded
    n_tokens = ds.manifest["pack"]["tokens"]
    assert len(ds) == -(-n_tokens // 100)
    prev_last = None
    saw_multi = False
    for i in range(len(ds)):
        x = ds[i]
        ids, pos, seg, lab = (x[k].numpy() for k in ("input_ids", "position_ids", "segment_ids", "labels"))
        assert len(ids) == (100 if i < len(ds) - 1 else n_tokens - 100 * i)
        starts = np.zeros(len(ids), bool)
        starts[0] = True
        starts[1:] = ids[:-1] == EOS  # a document starts right after an EOS
        assert np.array_equal(pos == 0, starts)
        assert np.array_equal(seg, np.cumsum(starts) - 1)
        assert np.all(pos[~starts] == pos[np.flatnonzero(~starts) - 1] + 1)
        assert np.array_equal(lab == -100, starts & (np.arange(len(ids)) > 0))
        assert np.array_equal(lab[lab != -100], ids[lab != -100])
        if prev_last is not None and prev_last == EOS:
            assert ids[0] == BOS  # a block right after a document's end starts the next document
        prev_last = ids[-1]
        saw_multi |= seg.max() > 0
    assert saw_multi
    batch = collate_packed([ds[0], ds[len(ds) - 1]], pad_id=0)
    short = len(ds[len(ds) - 1]["input_ids"])
    assert batch["input_ids"].shape == (2, 100)
    assert batch["attention_mask"][1].sum() == short and batch["attention_mask"][0].all()
    assert (batch["labels"][1, short:] == -100).all() and (batch["position_ids"][1, short:] == 0).all()


def test_validation_split_is_stable_across_runs_and_sharding(tok_dir, tmp_path):
    texts = [f"第{i}篇文档。" + "内容" * (i % 9) for i in range(300)]
    opts = dict(mode="pt", block_size=64, val_fraction=0.2, progress=False)
    pack([write_shards(tmp_path / "a", texts, 3)], tok_dir, tmp_path / "oa", PackOptions(**opts))
    pack([write_shards(tmp_path / "a", texts, 3)], tok_dir, tmp_path / "ob", PackOptions(**opts, overwrite=True))
    for kind in ("tokens", "docs", "blocks"):
        assert (tmp_path / "oa" / f"val.{kind}.bin").read_bytes() == (tmp_path / "ob" / f"val.{kind}.bin").read_bytes()
    shuffled = texts[:]
    random.Random(1).shuffle(shuffled)
    pack([write_shards(tmp_path / "c", shuffled, 5)], tok_dir, tmp_path / "oc", PackOptions(**opts))
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))

    def val_texts(out: Path) -> set[str]:
        return {tok.decode(d) for d in docs_of(stream(PackedDataset(out, "val")))}

    va, vc = val_texts(tmp_path / "oa"), val_texts(tmp_path / "oc")
    assert va == vc  # the split follows the document, not its position or shard
    assert 0.1 < len(va) / len(texts) < 0.3
    assert va <= set(texts)


def test_interrupted_run_resumes_and_equals_a_clean_run(tok_dir, tmp_path, monkeypatch):
    inp = write_shards(tmp_path / "in", real_texts(6), n_shards=3)
    opts = dict(mode="pt", block_size=128, val_fraction=0.2, progress=False)
    pack([inp], tok_dir, tmp_path / "clean", PackOptions(**opts))
    real_encode, real_append = PretrainEncoder.encode, SplitWriter.append
    seen: list[str] = []

    def encode(self, records, path, *a):
        seen.append(Path(path).name)
        return real_encode(self, records, path, *a)

    def append_then_crash(self, *a):
        real_append(self, *a)  # tokens of the third shard reach the files, then the process dies
        if seen[-1] == "shard-002.parquet":
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(PretrainEncoder, "encode", encode)
    monkeypatch.setattr(SplitWriter, "append", append_then_crash)
    with pytest.raises(RuntimeError):
        pack([inp], tok_dir, tmp_path / "out", PackOptions(**opts))
    assert (tmp_path / "out" / "progress.json").exists() and not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(InputError, match="block_size 128 → 64"):
        pack([inp], tok_dir, tmp_path / "out", PackOptions(**{**opts, "block_size": 64}))
    monkeypatch.setattr(SplitWriter, "append", real_append)
    seen.clear()
    m = pack([inp], tok_dir, tmp_path / "out", PackOptions(**opts))
    assert seen == ["shard-002.parquet"]  # finished shards are skipped; the crashed one's partial tokens were cut off
    for f in sorted((tmp_path / "clean").glob("*.bin")):
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes(), f.name
    clean = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    assert m.counts.to_dict() == clean["counts"] and m.extra["pack"] == clean["pack"]
    assert not (tmp_path / "out" / "progress.json").exists()


def test_vocabulary_over_65536_is_stored_as_uint32(tmp_path):
    from tokenizers import models, pre_tokenizers

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, 70_000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    d = tmp_path / "bigtok"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>", "add_bos_token": False}))
    texts = ["w69999 w5 w65536", "w3 w70000 w65535"]
    inp = write_shards(tmp_path / "in", texts, 1)
    m = pack([inp], d, tmp_path / "out", PackOptions(mode="pt", block_size=16, val_fraction=0, progress=False))
    assert m.extra["pack"]["dtype"] == "uint32"
    assert stream(PackedDataset(tmp_path / "out")).tolist() == [69999, 5, 65536, 1, 3, 2, 65535, 1]


def test_cli_packs_and_reports_bad_input_cleanly(tok_dir, tmp_path, capsys):
    inp = write_shards(tmp_path / "in", real_texts(3), 1)
    out = tmp_path / "out"
    assert zhdata_main(["pack", str(inp), "--tokenizer", str(tok_dir), "-o", str(out), "--mode", "pt", "-q", "--no-bos"]) == 0
    assert "packed" in capsys.readouterr().out
    ds = PackedDataset(out, tokenizer=tok_dir)
    assert ds.tokenizer_fingerprint == ds.manifest["tokenizer"]["fingerprint"] and ds[0]["input_ids"][0] != BOS
    with pytest.raises(InputError, match="packed with tokenizer"):
        PackedDataset(out, tokenizer="0" * 64)

    def err(*argv: str) -> str:
        assert zhdata_main(["pack", *argv]) == 2
        return capsys.readouterr().err

    common = ["--mode", "pt", "-q"]
    (tmp_path / "empty").mkdir()
    assert "holds no JSONL" in err(str(tmp_path / "empty"), "--tokenizer", str(tok_dir), "-o", str(tmp_path / "o1"), *common)
    assert "nope: tokenizer folder does not exist" in err(str(inp), "--tokenizer", str(tmp_path / "nope"), "-o", str(tmp_path / "o2"), *common)
    assert "tokenizer convert" in err(str(inp), "--tokenizer", str(MIXTRAL), "-o", str(tmp_path / "o3"), *common)
    assert "empty: not a tokenizer folder (no tokenizer.json in it)" in err(str(inp), "--tokenizer", str(tmp_path / "empty"), "-o", str(tmp_path / "o4"), *common)
    e = err(str(inp), "--tokenizer", str(tok_dir), "-o", str(tmp_path / "o5"), "--block-size", "65536", *common)
    assert "larger than the model's context of 32768" in e
    e = err(str(inp), "--tokenizer", str(tok_dir), "-o", str(tmp_path / "o6"), "--block-size", "1024", "--max-context", "512", *common)
    assert "--max-context" in e
    assert "already holds a finished pack" in err(str(inp), "--tokenizer", str(tok_dir), "-o", str(out), *common)
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": " "}) + "\n")
    assert "no document could be packed" in err(str(tmp_path / "blank.jsonl"), "--tokenizer", str(tok_dir), "-o", str(tmp_path / "o7"), *common)


def test_dataset_pickles_without_its_memory_maps_and_works_in_dataloader_workers(tok_dir, tmp_path):
    import pickle

    import torch

    inp = write_shards(tmp_path / "in", real_texts(4), 1)
    pack([inp], tok_dir, tmp_path / "out", PackOptions(mode="pt", block_size=64, val_fraction=0, progress=False))
    ds = PackedDataset(tmp_path / "out")
    first = ds[0]["input_ids"]
    blob = pickle.dumps(ds)
    assert len(blob) < 4096  # the maps are reopened in the worker, not copied
    assert torch.equal(pickle.loads(blob)[0]["input_ids"], first)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate_packed)
    batches = list(loader)
    assert sum(len(b["input_ids"]) for b in batches) == len(ds)
    assert torch.equal(batches[0]["input_ids"][0], first)
