"""Bad input through the one reader (issue 11): encodings, lone surrogates, huge lines, unreadable files and
folders, files of unknown format in folders; each ends in a counted reason or a clear one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import zhdata.fs as zfs
import zhdata.readers as readers
from tokenizer.cli import main as tok_main
from tokenizer.convert import convert_sentencepiece
from zhdata.cli import main
from zhdata.errors import ErrorPolicy, InputError
from zhdata.readers import ReadOptions, guess_encoding, iter_records, plan_pieces

MIXTRAL = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"
SIMPLIFIED = ["这是一个关于中国历史的故事，我们来看看他们说了什么。", "今天的天气很好，我们一起去公园散步吧。"]
TRADITIONAL = ["這是一個關於中國歷史的故事，我們來看看他們說了什麼。", "今天的天氣很好，我們一起去公園散步吧。"]


def _lines(texts):
    return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def _texts(out: Path) -> list[str]:
    return pl.concat([pl.read_parquet(f) for f in sorted(out.glob("*.parquet"))])["text"].to_list()


# --- encodings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding,texts", [("gb18030", SIMPLIFIED), ("big5", TRADITIONAL), ("utf-16", SIMPLIFIED),
                                            ("utf-8-sig", TRADITIONAL)])
def test_encoding_flag_and_auto_read_real_chinese_encodings(tmp_path, encoding, texts):
    p = tmp_path / "a.jsonl"
    p.write_bytes(_lines(texts * 20).encode(encoding))
    for enc in (encoding, "auto"):
        got = [r["text"] for _, r in iter_records(p, read=ReadOptions(enc))]
        assert got == texts * 20, enc
    if encoding in ("gb18030", "big5"):  # what UTF-8 makes of them: a clear error that names the way out
        with pytest.raises(InputError, match=r"a\.jsonl:1: invalid UTF-8 .*--encoding gb18030, big5 or auto"):
            list(iter_records(p))


def test_auto_rule_bom_then_utf8_then_gb18030_or_big5():
    assert guess_encoding(b'{"text": "plain ascii"}\n') == "utf-8"
    assert guess_encoding("中文".encode()[:-1]) == "utf-8"  # a character cut at the end of the block is still UTF-8
    assert guess_encoding("\ufeff中文".encode()) == "utf-8-sig"
    assert guess_encoding("中文".encode("utf-16")) == "utf-16"
    assert guess_encoding("".join(SIMPLIFIED).encode("gbk")) == "gb18030"
    assert guess_encoding("".join(TRADITIONAL).encode("big5")) == "big5"


def test_split_pieces_and_plain_text_in_gb18030(tmp_path):
    lines = [f"{SIMPLIFIED[i % 2]}第{i}行" for i in range(400)]
    p = tmp_path / "a.txt"
    p.write_bytes(("\r\n".join(lines) + "\r\n").encode("gb18030"))
    pieces = plan_pieces([p], target_bytes=2048, read=ReadOptions("auto"))
    assert len(pieces) > 5 and {pc.encoding for pc in pieces} == {"gb18030"}
    got = [(n, t) for pc in pieces for n, t in iter_records(pc, read=ReadOptions("auto"))]
    assert got == list(enumerate(lines, 1))


def test_clean_cli_with_encoding(tmp_path):
    p = tmp_path / "big5.jsonl"
    p.write_bytes(_lines(TRADITIONAL).encode("big5"))
    assert main(["clean", str(p), "-o", str(tmp_path / "o"), "--encoding", "auto", "--min-chars", "5", "--workers", "1",
                 "--no-progress"]) == 0
    assert _texts(tmp_path / "o") == SIMPLIFIED  # read as Big5, then converted t2s
    assert _manifest(tmp_path / "o")["params"]["encoding"] == "auto"


# --- lone surrogates -----------------------------------------------------------------------------------------

SURROGATE_LINE = '{"text": "坏\\ud800的文本", "messages": [{"role": "user", "content": "问\\udc00"}]}\n'


def _with_surrogate(path: Path, good: list[dict]) -> Path:
    body = [json.dumps(r, ensure_ascii=False) + "\n" for r in good]
    path.write_text(body[0] + SURROGATE_LINE + "".join(body[1:]), encoding="utf-8")
    return path


def test_lone_surrogate_is_invalid_unicode_in_clean(tmp_path, capsys):
    p = _with_surrogate(tmp_path / "s.jsonl", [{"text": t} for t in SIMPLIFIED])
    assert main(["clean", str(p), "-o", str(tmp_path / "stop"), "--workers", "1", "--no-progress"]) == 2
    assert "s.jsonl:2: lone surrogate" in capsys.readouterr().err
    out = tmp_path / "skip"
    assert main(["clean", str(p), "-o", str(out), "--workers", "1", "--no-progress", "--on-error", "skip",
                 "--min-chars", "5"]) == 0
    c = _manifest(out)["counts"]
    assert c["dropped"] == {"invalid_unicode": 1} and c["records_in"] == 3 and c["records_out"] == 2
    # a valid pair (an emoji written as two escapes) is not a lone surrogate
    ok = tmp_path / "pair.jsonl"
    ok.write_text('{"text": "表情\\ud83d\\ude00"}\n', encoding="utf-8")
    assert [r["text"] for _, r in iter_records(ok)] == ["表情😀"]


def test_lone_surrogate_is_invalid_unicode_in_instruct(tmp_path, capsys):
    good = [{"messages": [{"role": "user", "content": f"问题{i}：{t}"}, {"role": "assistant", "content": f"回答{i}：{t}"}]}
            for i, t in enumerate(SIMPLIFIED)]
    p = _with_surrogate(tmp_path / "s.jsonl", good)
    assert main(["instruct", str(p), "-o", str(tmp_path / "stop")]) == 2
    assert "s.jsonl:2: lone surrogate" in capsys.readouterr().err
    out = tmp_path / "skip"
    assert main(["instruct", str(p), "-o", str(out), "--on-error", "skip"]) == 0
    c = _manifest(out)["counts"]
    assert c["dropped"] == {"invalid_unicode": 1} and c["records_out"] == 2


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return convert_sentencepiece(MIXTRAL, tmp_path_factory.mktemp("tok") / "mixtral")


def test_lone_surrogate_is_invalid_unicode_in_pack(tmp_path, tok_dir, capsys):
    p = _with_surrogate(tmp_path / "s.jsonl", [{"text": t} for t in SIMPLIFIED])
    common = ["--tokenizer", str(tok_dir), "--mode", "pt", "--block-size", "64", "--val-fraction", "0", "-q"]
    assert main(["pack", str(p), "-o", str(tmp_path / "stop"), *common]) == 2
    assert "s.jsonl:2: lone surrogate" in capsys.readouterr().err
    out = tmp_path / "skip"
    assert main(["pack", str(p), "-o", str(out), *common, "--on-error", "skip"]) == 0
    c = _manifest(out)["counts"]
    assert c["dropped"] == {"invalid_unicode": 1} and c["records_out"] == 2


def test_lone_surrogate_is_invalid_unicode_in_tokenizer_training(tmp_path, capsys):
    lines = [json.dumps({"text": "中文训练文本第%d行，内容足够长以便训练分词模型。" % i}, ensure_ascii=False) for i in range(30)]
    p = tmp_path / "s.jsonl"
    p.write_text(lines[0] + "\n" + SURROGATE_LINE + "\n".join(lines[1:]) + "\n", encoding="utf-8")
    assert tok_main(["train", "--corpus", str(p), "--vocab-size", "300", "-o", str(tmp_path / "stop")]) == 2
    assert "s.jsonl:2: lone surrogate" in capsys.readouterr().err
    assert tok_main(["train", "--corpus", str(p), "--vocab-size", "300", "-o", str(tmp_path / "t"), "--on-error", "skip"]) == 0
    c = _manifest(tmp_path / "t")["counts"]
    assert c["dropped"] == {"invalid_unicode": 1} and c["records_in"] == 31


def test_lone_surrogate_is_invalid_unicode_in_tokenizer_extend(tmp_path, capsys):
    lines = [json.dumps({"text": "中文训练文本第%d行，内容足够长以便训练分词模型。" % i}, ensure_ascii=False) for i in range(60)]
    p = tmp_path / "s.jsonl"
    p.write_text(lines[0] + "\n" + SURROGATE_LINE + "\n".join(lines[1:]) + "\n", encoding="utf-8")
    common = ["extend", "--base", str(MIXTRAL), "--corpus", str(p), "--add", "10",
              "--zh-vocab-size", "300", "--threads", "1"]
    assert tok_main([*common, "-o", str(tmp_path / "stop")]) == 2
    assert "s.jsonl:2: lone surrogate" in capsys.readouterr().err
    assert tok_main([*common, "-o", str(tmp_path / "t"), "--on-error", "skip"]) == 0  # the check texts too
    c = _manifest(tmp_path / "t")["counts"]
    assert c["dropped"] == {"invalid_unicode": 1} and c["records_in"] == 61


def test_lone_surrogate_in_a_json_array_names_the_record(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('[{"text": "好"}, {"text": "坏\\udfff"}, {"text": "表情\\ud83d\\ude00"}]', encoding="utf-8")
    with pytest.raises(InputError, match=r"a\.json:2: lone surrogate"):
        list(iter_records(p))
    pol = ErrorPolicy("skip")
    assert [r["text"] for _, r in iter_records(p, policy=pol)] == ["好", "表情😀"] and pol.skipped == {"invalid_unicode": 1}


# --- bounded memory: --max-record-mb -------------------------------------------------------------------------


def _with_huge_line(path: Path, mb: int = 3) -> Path:
    huge = json.dumps({"text": "长" * ((mb << 20) // 3)}, ensure_ascii=False)  # ~mb MB of UTF-8
    path.write_text(_lines(SIMPLIFIED[:1]) + huge + "\n" + _lines(SIMPLIFIED[1:]), encoding="utf-8")
    return path


def test_record_too_large_is_counted_not_read_whole(tmp_path, monkeypatch):
    p = _with_huge_line(tmp_path / "h.jsonl")
    assert p.stat().st_size > 3 << 20
    pol = ErrorPolicy("stop")  # a drop by a limit, not an error: counted in both modes
    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(readers.json, "loads", lambda s: parsed.append(len(s)) or real_loads(s))
    got = [(n, r["text"]) for _, pc in [(0, pc) for pc in plan_pieces([p], target_bytes=1 << 20)]
           for n, r in iter_records(pc, policy=pol, read=ReadOptions(max_record_mb=1))]
    assert got == [(1, SIMPLIFIED[0]), (3, SIMPLIFIED[1])]
    assert pol.skipped == {"record_too_large": 1} and max(parsed) < 1000  # the huge line was never parsed
    assert "h.jsonl:2: record longer than 1 MB" in pol.examples[0]


def test_record_too_large_in_clean_and_pack(tmp_path, tok_dir):
    p = _with_huge_line(tmp_path / "h.jsonl")
    out = tmp_path / "clean"
    assert main(["clean", str(p), "-o", str(out), "--max-record-mb", "1", "--min-chars", "5", "--workers", "1",
                 "--no-progress"]) == 0
    c = _manifest(out)["counts"]
    assert c["dropped"] == {"record_too_large": 1} and c["records_in"] == 3 and _texts(out) == SIMPLIFIED
    out = tmp_path / "pack"
    assert main(["pack", str(p), "-o", str(out), "--tokenizer", str(tok_dir), "--mode", "pt", "--block-size", "64",
                 "--max-record-mb", "1", "-q"]) == 0
    c = _manifest(out)["counts"]
    assert c["dropped"] == {"record_too_large": 1} and c["records_in"] == 3 and c["records_out"] == 2


def test_parquet_row_over_the_limit(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "a.parquet"
    texts = [SIMPLIFIED[0], "长" * (1 << 20), SIMPLIFIED[1]]  # the middle row is 3 MB
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": texts}), p)
    pol = ErrorPolicy("stop")
    got = [(n, r["id"]) for n, r in iter_records(p, policy=pol, read=ReadOptions(max_record_mb=1))]
    assert got == [(1, "a"), (3, "c")] and pol.skipped == {"record_too_large": 1}
    assert [n for n, _ in iter_records(p)] == [1, 2, 3]  # under the default limit


def test_whole_text_file_over_the_limit(tmp_path):
    p = tmp_path / "book.txt"
    p.write_text("长" * (1 << 20), encoding="utf-8")  # 3 MB as one document
    pol = ErrorPolicy("skip")
    assert list(iter_records(p, policy=pol, text_unit="file", read=ReadOptions(max_record_mb=1))) == []
    assert pol.skipped == {"record_too_large": 1}


# --- files and folders ---------------------------------------------------------------------------------------


def test_folder_with_files_of_unknown_format_is_refused_or_listed(tmp_path, capsys):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.jsonl").write_text(_lines(SIMPLIFIED), encoding="utf-8")
    (d / "b.csv").write_text("text\n中文\n", encoding="utf-8")
    (d / "c.jsonl.bz2").write_bytes(b"BZh9")
    (d / "README.md").write_text("about the data\n", encoding="utf-8")  # documentation is passed over
    assert main(["clean", str(d), "-o", str(tmp_path / "o"), "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "2 file(s) of unknown format" in err and "b.csv" in err and "c.jsonl.bz2" in err and "README" not in err
    out = tmp_path / "skip"
    assert main(["clean", str(d), "-o", str(out), "--workers", "1", "--no-progress", "--on-error", "skip",
                 "--min-chars", "5"]) == 0
    warnings = _manifest(out)["warnings"]
    assert any("b.csv" in w for w in warnings) and any("c.jsonl.bz2" in w for w in warnings)
    assert _texts(out) == SIMPLIFIED


def test_unreadable_file_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    p = tmp_path / "locked.jsonl"
    p.write_text(_lines(SIMPLIFIED), encoding="utf-8")
    real_open = open

    def deny(path, *a, **k):  # root ignores file modes, so refuse the way the OS does for other users
        if Path(path) == p:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(zfs, "open", deny, raising=False)
    assert main(["clean", str(p), "-o", str(tmp_path / "o"), "--workers", "1", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"zhdata clean: error: {p}: cannot read (permission denied)"
    assert main(["instruct", str(p), "-o", str(tmp_path / "i")]) == 2
    assert f"{p}: cannot read (permission denied)" in capsys.readouterr().err


def test_unreadable_folder_is_not_an_empty_folder(tmp_path, capsys, monkeypatch):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a.jsonl").write_text(_lines(SIMPLIFIED), encoding="utf-8")
    real_scandir = zfs.scandir

    def deny(path):
        if Path(path) == d / "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(zfs, "scandir", deny)
    assert main(["clean", str(d), "-o", str(tmp_path / "o"), "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{d / 'sub'}: cannot read the folder (permission denied)" in err and "holds no" not in err


def test_a_folder_where_a_file_is_expected(tmp_path):
    d = tmp_path / "x.jsonl"
    d.mkdir()
    (d / "a.jsonl").write_text(_lines(SIMPLIFIED), encoding="utf-8")
    with pytest.raises(InputError, match="cannot read"):
        list(iter_records(d))


# --- misleading messages -------------------------------------------------------------------------------------


def test_tiny_chinese_corpus_is_too_small_not_unchinese(tmp_path, capsys):
    p = tmp_path / "tiny.jsonl"
    p.write_text(_lines(["中文" * 30 + "abc"]), encoding="utf-8")  # 63 characters, 95% Han
    assert tok_main(["train", "--corpus", str(p), "--vocab-size", "300", "-o", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "too small" in err and "almost no Chinese" not in err


def test_instruct_keep_field_named_like_an_output_column(tmp_path, capsys):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"id": 7, "instruction": "你好", "output": "你好！"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["instruct", str(p), "-o", str(tmp_path / "o"), "--keep", "id"]) == 2
    assert "kept field 'id' has the name of an output column" in capsys.readouterr().err


# --- one option on every reader ------------------------------------------------------------------------------


@pytest.mark.parametrize("prog,command", [("zhdata", "clean"), ("zhdata", "instruct"), ("zhdata", "pack"),
                                          ("tokenizer", "train"), ("tokenizer", "extend"), ("tokenizer", "audit"),
                                          ("tokenizer", "report"), ("tokenizer", "convert"), ("train", "eval"),
                                          ("train", "experts")])
def test_every_command_that_reads_text_takes_encoding_and_max_record_mb(prog, command, capsys):
    from importlib import import_module

    with pytest.raises(SystemExit) as e:
        import_module(f"{prog}.cli").main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--encoding" in out and "--max-record-mb" in out and "auto" in out


def test_a_json_array_over_the_record_limit_is_refused_with_its_name(tmp_path):
    from zhdata.errors import InputError
    from zhdata.readers import ReadOptions, iter_records

    path = tmp_path / "big.json"
    path.write_text(json.dumps([{"text": "长" * 300} for _ in range(10)], ensure_ascii=False), encoding="utf-8")
    assert len(list(iter_records(path, read=ReadOptions(max_record_mb=0.01)))) == 10  # 10 KiB: under the limit
    with pytest.raises(InputError, match=r"big\.json: a JSON array over --max-record-mb 0\.001 MB .*JSON Lines"):
        list(iter_records(path, read=ReadOptions(max_record_mb=0.001)))


def test_a_file_that_grows_between_plan_and_read_is_refused(tmp_path):
    from zhdata.errors import InputError
    from zhdata.readers import iter_records, plan_pieces

    path = tmp_path / "growing.jsonl"
    path.write_text('{"text": "一"}\n{"text": "二"}\n', encoding="utf-8")
    pieces = plan_pieces([path], target_bytes=8)
    assert len(pieces) == 2 and [r["text"] for p in pieces for _, r in iter_records(p)] == ["一", "二"]
    with path.open("a", encoding="utf-8") as f:  # another process appends while the run reads
        f.write('{"text": "三"}\n')
    with pytest.raises(InputError, match=r"growing\.jsonl: changed while this run read it \(32 bytes when the run was "
                                         r"planned, 48 now\)"):
        list(iter_records(pieces[1]))
