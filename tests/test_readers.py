import gzip
import json
import lzma

import pytest
import zstandard

from zhdata.errors import ErrorPolicy, InputError
from zhdata.readers import expand_inputs, iter_records, plan_pieces


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("suffix,compress", [
    ("", lambda b: b), (".gz", gzip.compress), (".xz", lzma.compress),
    (".zst", lambda b: zstandard.ZstdCompressor().compress(b)),
])
def test_jsonl_plain_and_compressed(tmp_path, suffix, compress):
    data = "".join(json.dumps({"text": f"第{i}行"}, ensure_ascii=False) + "\n" for i in range(5)).encode()
    p = _write(tmp_path / f"a.jsonl{suffix}", compress(data))
    recs = list(iter_records(p))
    assert [r["text"] for _, r in recs] == [f"第{i}行" for i in range(5)]
    assert [n for n, _ in recs] == [1, 2, 3, 4, 5]


def test_json_array_and_json_that_is_jsonl(tmp_path):
    arr = _write(tmp_path / "arr.json", json.dumps([{"text": "甲"}, {"text": "乙"}]).encode())
    jl = _write(tmp_path / "lines.json", b'{"text": "\\u4e19"}\n{"text": "\\u4e01"}\n')
    assert [r["text"] for _, r in iter_records(arr)] == ["甲", "乙"]
    assert [r["text"] for _, r in iter_records(jl)] == ["丙", "丁"]


def test_text_lines_and_whole_file(tmp_path):
    p = _write(tmp_path / "t.txt", "一行\r\n\n二行\n".encode())
    assert list(iter_records(p)) == [(1, "一行"), (3, "二行")]
    assert list(iter_records(p, text_unit="file")) == [(1, "一行\r\n\n二行\n")]


def test_parquet(tmp_path):
    import polars as pl
    p = tmp_path / "x.parquet"
    pl.DataFrame({"text": ["子", "丑"], "id": ["a", "b"]}).write_parquet(p)
    assert [(n, r["id"]) for n, r in iter_records(p)] == [(1, "a"), (2, "b")]


def test_malformed_json_names_file_and_line(tmp_path):
    p = _write(tmp_path / "bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: malformed JSON"):
        list(iter_records(p))
    pol = ErrorPolicy("skip")
    assert [r["text"] for _, r in iter_records(p, policy=pol)] == ["ok"]
    assert pol.skipped == {"malformed_json": 1}


def test_invalid_utf8_names_line(tmp_path):
    p = _write(tmp_path / "gbk.jsonl", b'{"text": "ok"}\n' + '{"text": "中文"}'.encode("gbk") + b"\n")
    with pytest.raises(InputError, match=r"gbk\.jsonl:2: invalid UTF-8"):
        list(iter_records(p))
    pol = ErrorPolicy("skip")
    assert len(list(iter_records(p, policy=pol))) == 1 and pol.skipped == {"invalid_utf8": 1}


def test_empty_file(tmp_path):
    p = _write(tmp_path / "empty.jsonl", b"\n  \n")
    with pytest.raises(InputError, match="empty file"):
        list(iter_records(p))
    pol = ErrorPolicy("skip")
    assert list(iter_records(p, policy=pol)) == [] and pol.empty_files == [str(p)]


def test_broken_json_array_reports_line(tmp_path):
    p = _write(tmp_path / "arr.json", b'[\n{"text": "a"},\n{"text": }\n]')
    with pytest.raises(InputError, match=r"arr\.json:3: malformed JSON array"):
        list(iter_records(p))


def test_pieces_cover_file_exactly_with_line_numbers(tmp_path):
    lines = [json.dumps({"text": "字" * (i % 50 + 1)}) for i in range(2000)]
    p = _write(tmp_path / "big.jsonl", ("\n".join(lines) + "\n").encode())
    pieces = plan_pieces([p], target_bytes=4096)
    assert len(pieces) > 5
    got = [(n, r["text"]) for pc in pieces for n, r in iter_records(pc)]
    assert got == [(i + 1, json.loads(line)["text"]) for i, line in enumerate(lines)]


def test_expand_inputs_folder_and_unknown(tmp_path):
    (tmp_path / "d").mkdir()
    _write(tmp_path / "d" / "b.jsonl", b'{"text":"x"}\n')
    _write(tmp_path / "d" / "a.txt", b"x\n")
    _write(tmp_path / "d" / "notes.md", b"x\n")
    (tmp_path / "d" / ".parts").mkdir()
    _write(tmp_path / "d" / ".parts" / "plan.json", b"{}")
    _write(tmp_path / "d" / "manifest.json", b"{}")
    assert [p.name for p in expand_inputs([tmp_path / "d"])] == ["a.txt", "b.jsonl"]
    with pytest.raises(InputError, match="cannot tell the format"):
        expand_inputs([tmp_path / "d" / "notes.md"])
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([tmp_path / "missing"])


def test_input_error_survives_pickling():
    import pickle
    e = pickle.loads(pickle.dumps(InputError("a.jsonl", 3, "bad", "fix it")))
    assert str(e) == "a.jsonl:3: bad (fix it)" and e.where == 3
