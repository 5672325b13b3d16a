"""Resume keys on content: a changed input is another run, refused by name, never resumed over; --overwrite
never deletes an input; an output folder inside an input folder is named as such."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import polars as pl
import pytest

from zhdata.clean import CleanOptions, run_clean
from zhdata.dedupe import DedupeOptions, run_dedupe
from zhdata.errors import InputError
from zhdata.pack.packer import PackOptions, pack
from zhdata.pack.pretrain import PretrainEncoder
from zhdata.pack.store import SplitWriter

from test_clean import GOOD, _corpus
from test_pack_pt import real_texts, tok_dir, write_shards  # noqa: F401 (tok_dir is a fixture)

PT = dict(mode="pt", block_size=128, val_fraction=0.2, progress=False)


def _crash_after(monkeypatch, shard: str) -> None:
    """Make the next pack die while writing the tokens of `shard` (after the shards before it are done)."""
    real_encode, real_append = PretrainEncoder.encode, SplitWriter.append
    seen: list[str] = []

    def encode(self, records, path, *a):
        seen.append(Path(path).name)
        return real_encode(self, records, path, *a)

    def append(self, *a):
        real_append(self, *a)
        if seen[-1] == shard:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(PretrainEncoder, "encode", encode)
    monkeypatch.setattr(SplitWriter, "append", append)


def _same_pack(a: Path, b: Path) -> None:
    for f in sorted(a.glob("*.bin")):
        assert (b / f.name).read_bytes() == f.read_bytes(), f.name
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["counts"] == mb["counts"] and ma["pack"] == mb["pack"]
    assert [i["sha256"] for i in ma["inputs"]] == [i["sha256"] for i in mb["inputs"]]


@pytest.mark.parametrize("change", ["append_line", "replace_shard"])
def test_pack_does_not_resume_over_a_changed_input(change, tok_dir, tmp_path, monkeypatch):
    texts = real_texts(4)
    inp = tmp_path / "in"
    inp.mkdir()
    for k in range(3):
        (inp / f"shard-{k}.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                                                      for t in texts[k::3]), encoding="utf-8")
    out = tmp_path / "out"
    with monkeypatch.context() as mp:
        _crash_after(mp, "shard-2.jsonl")
        with pytest.raises(RuntimeError):
            pack([inp], tok_dir, out, PackOptions(**PT))
    packed = inp / "shard-0.jsonl"  # finished before the crash
    if change == "append_line":
        with packed.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"text": "追加的一行。"}, ensure_ascii=False) + "\n")
    else:
        packed.write_text((inp / "shard-1.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(InputError, match=f"input {packed} changed"):
        pack([inp], tok_dir, out, PackOptions(**PT))
    pack([inp], tok_dir, out, PackOptions(**PT, overwrite=True))
    pack([inp], tok_dir, tmp_path / "fresh", PackOptions(**PT))
    _same_pack(tmp_path / "fresh", out)


def test_pack_resumes_an_unchanged_input(tok_dir, tmp_path, monkeypatch):
    inp = write_shards(tmp_path / "in", real_texts(4), 3)
    with monkeypatch.context() as mp:
        _crash_after(mp, "shard-001.parquet")
        with pytest.raises(RuntimeError):
            pack([inp], tok_dir, tmp_path / "out", PackOptions(**PT))
    done = json.loads((tmp_path / "out" / "progress.json").read_text())["done"]
    assert [Path(k).name for k in done] == ["shard-000.parquet#0"]
    pack([inp], tok_dir, tmp_path / "out", PackOptions(**PT))
    pack([inp], tok_dir, tmp_path / "fresh", PackOptions(**PT))
    _same_pack(tmp_path / "fresh", tmp_path / "out")


def test_clean_does_not_resume_over_a_file_edited_in_place_with_size_and_mtime_restored(tmp_path):
    src = _corpus(tmp_path, n=20)
    out = tmp_path / "o"
    run_clean([src], out, CleanOptions(), piece_mb=0, progress=False)
    st = src.stat()
    text = src.read_text(encoding="utf-8")
    src.write_text(text.replace("第3篇", "第9篇", 1), encoding="utf-8")  # same size
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(InputError, match="in.jsonl changed \\(its content differs\\)"):
        run_clean([src], out, CleanOptions(), piece_mb=0, progress=False)
    run_clean([src], out, CleanOptions(), piece_mb=0, overwrite=True, progress=False)
    texts = pl.concat([pl.read_parquet(f) for f in sorted(out.glob("*.parquet"))])["text"].to_list()
    assert sum(t.startswith("第9篇") for t in texts) == 2 and not any(t.startswith("第3篇") for t in texts)


def test_dedupe_does_not_resume_over_a_replaced_shard(tmp_path):
    d = tmp_path / "clean"
    src = _corpus(tmp_path, n=20)
    run_clean([src], d, CleanOptions(), piece_mb=0, progress=False)
    run_dedupe(d, tmp_path / "o", DedupeOptions(), progress=False)
    shard = sorted(d.glob("*.parquet"))[2]
    pl.read_parquet(shard).with_columns(text=pl.lit(GOOD)).write_parquet(shard)  # the clean manifest is unchanged
    with pytest.raises(InputError, match=f"input {shard} changed"):
        run_dedupe(d, tmp_path / "o", DedupeOptions(), progress=False)


@pytest.mark.parametrize("command", ["clean", "dedupe", "pack"])
def test_overwrite_into_the_input_folder_is_refused_before_anything_is_deleted(command, tok_dir, tmp_path):
    clean = tmp_path / "clean"
    run_clean([_corpus(tmp_path, n=20)], clean, CleanOptions(), piece_mb=0, progress=False)
    before = {p.name: p.read_bytes() for p in clean.iterdir() if p.is_file()}
    run = {"clean": lambda: run_clean([clean], clean, CleanOptions(), overwrite=True, progress=False),
           "dedupe": lambda: run_dedupe(clean, clean, DedupeOptions(), overwrite=True, progress=False),
           "pack": lambda: pack([clean], tok_dir, clean, PackOptions(**PT, overwrite=True))}[command]
    with pytest.raises(InputError, match="the output folder is the input"):
        run()
    assert {p.name: p.read_bytes() for p in clean.iterdir() if p.is_file()} == before


def test_output_folder_inside_the_input_folder_is_named_as_such(tmp_path):
    src = _corpus(tmp_path, n=5)
    with pytest.raises(InputError, match="lies inside the input folder"):
        run_clean([tmp_path], tmp_path / "out", CleanOptions(), progress=False)
    assert not (tmp_path / "out").exists()
    src.unlink()


def test_instruct_and_quickstart_refuse_an_output_folder_holding_or_inside_their_inputs(tmp_path, capsys):
    from train.cli import main as train_main
    from zhdata.cli import main as zhdata_main

    inp = tmp_path / "in"
    inp.mkdir()
    src = inp / "belle_alpaca.json"
    src.write_bytes((Path(__file__).parent / "fixtures" / "instruct" / "belle_alpaca.json").read_bytes())
    assert zhdata_main(["instruct", str(inp), "-o", str(inp / "sft")]) == 2
    assert "lies inside the input folder" in capsys.readouterr().err
    assert zhdata_main(["instruct", str(src), "-o", str(inp)]) == 2
    assert "the output folder holds the input" in capsys.readouterr().err
    assert train_main(["quickstart", "--input", str(inp), "-o", str(inp), "--overwrite"]) == 2
    assert "the output folder is the input" in capsys.readouterr().err
    assert sorted(p.name for p in inp.iterdir()) == ["belle_alpaca.json"]


def _fail_on_call(monkeypatch, owner, name: str, n: int, err: int) -> None:
    """Make the n-th call of owner.name fail with OSError(err) (the first n-1 calls write as usual)."""
    real, calls = getattr(owner, name), []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            raise OSError(err, os.strerror(err))
        return real(*a, **kw)

    monkeypatch.setattr(owner, name, flaky)


def _frames(d: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(f) for f in sorted(d.glob("part-*.parquet"))])


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_clean_and_dedupe_stop_on_a_full_or_read_only_disk_with_one_line_and_resume(err, tmp_path, monkeypatch, capsys):
    from zhdata.cli import main

    src = tmp_path / "in"
    src.mkdir()
    lines = _corpus(tmp_path, n=10).read_text(encoding="utf-8").splitlines(keepends=True)
    for k in range(6):  # a shard per file
        (src / f"f{k}.jsonl").write_text("".join(ln.replace("第", f"卷{k}第") for ln in lines), encoding="utf-8")
    common = ["--workers", "1", "--no-progress"]
    assert main(["clean", str(src), "-o", str(tmp_path / "fresh"), *common]) == 0
    assert main(["dedupe", str(tmp_path / "fresh"), "-o", str(tmp_path / "fresh-dd"), "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    with monkeypatch.context() as mp:
        _fail_on_call(mp, pl.DataFrame, "write_parquet", 5, err)
        assert main(["clean", str(src), "-o", str(out), *common]) == 2
    msg = capsys.readouterr().err.strip()
    assert msg.splitlines() == [msg] and msg.startswith(f"zhdata clean: error: {out}: cannot write the output here: {os.strerror(err)}")
    assert len(list(out.glob("part-*.parquet"))) == 4 and not (out / "manifest.json").exists()
    assert main(["clean", str(src), "-o", str(out), *common]) == 0
    assert _frames(out).equals(_frames(tmp_path / "fresh"))
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (out, tmp_path / "fresh"))
    assert a["counts"] == b["counts"]

    dd = tmp_path / "dd"
    with monkeypatch.context() as mp:
        _fail_on_call(mp, pl.DataFrame, "write_parquet", 3, err)
        assert main(["dedupe", str(out), "-o", str(dd), "--workers", "1", "--no-progress"]) == 2
    assert f"{dd}: cannot write the output here" in capsys.readouterr().err
    assert main(["dedupe", str(out), "-o", str(dd), "--workers", "1", "--no-progress"]) == 0
    assert _frames(dd).equals(_frames(tmp_path / "fresh-dd"))


def test_pack_stops_on_a_full_disk_with_one_line_and_resumes(tok_dir, tmp_path, monkeypatch, capsys):
    from zhdata.cli import main

    inp = write_shards(tmp_path / "in", real_texts(4), 3)
    argv = ["pack", str(inp), "--tokenizer", str(tok_dir), "--mode", "pt", "-q", "--block-size", "128"]
    assert main([*argv, "-o", str(tmp_path / "fresh")]) == 0
    out = tmp_path / "out"
    with monkeypatch.context() as mp:
        _fail_on_call(mp, SplitWriter, "append", 3, errno.ENOSPC)
        assert main([*argv, "-o", str(out)]) == 2
    assert f"{out}: cannot write the output here: {os.strerror(errno.ENOSPC)}" in capsys.readouterr().err
    assert (out / "progress.json").exists() and not (out / "manifest.json").exists()
    assert main([*argv, "-o", str(out)]) == 0
    _same_pack(tmp_path / "fresh", out)


def test_run_difference_names_what_changed():
    from zhdata.shards import run_difference

    old = {"inputs": [["a", "1"], ["b", "2"]], "min_chars": 20}
    assert run_difference(old, {**old, "inputs": [["a", "1"], ["b", "3"], ["c", "4"]]}) == \
        "input b changed (its content differs); input c is new"
    assert run_difference(old, {**old, "inputs": [["b", "2"], ["a", "1"]]}) == "the list of inputs differs"
    assert run_difference({**old, "inputs": ["a#0", "b#0"]}, old) == "its inputs were recorded by an older version of zh-adapt"
    assert run_difference(old, {**old, "min_chars": 30}) == "options differ: min_chars 20 → 30"
