import json
import re

import polars as pl
import pytest

from zhdata.cli import main
from zhdata.clean import CleanOptions, run_clean

GOOD = "这是一段正常的中文文本，内容比较充实，没有什么问题。\n第二行也是正常的句子，长度合适。"


def _corpus(tmp_path, n=40):
    recs = []
    for i in range(n):
        recs.append({"id": f"doc{i}", "text": f"第{i}篇。" + GOOD, "lang": "zh", "meta": {"k": i}})
    recs.append({"text": "短"})  # too short, no id
    recs.append({"id": "trad", "text": "這是繁體中文的文件，應該被轉換為簡體中文，內容也足夠長。\n第二行繼續寫一些文字。"})
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return p


def _read(out):
    return pl.concat([pl.read_parquet(f) for f in sorted(out.glob("*.parquet"))])


def test_clean_cli_writes_shards_and_manifest_that_adds_up(tmp_path, capsys):
    src = _corpus(tmp_path)
    out = tmp_path / "out"
    assert main(["clean", str(src), "-o", str(out), "--workers", "1", "--keep-fields", "lang,meta", "--no-progress"]) == 0
    df = _read(out)
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert c["records_in"] == 42 and c["records_out"] == len(df) == 41
    assert c["dropped"] == {"too_short": 1}
    assert c["records_in"] == c["records_out"] + c["dropped_total"]
    assert m["inputs"][0]["sha256"] and m["inputs"][0]["size"] == src.stat().st_size
    assert df.columns == ["id", "text", "source", "lang", "meta"]
    assert df["id"].to_list()[:3] == ["doc0", "doc1", "doc2"]
    assert df.filter(pl.col("id") == "trad")["text"][0].startswith("这是繁体中文的文件")
    assert json.loads(df["meta"][1]) == {"k": 1}
    assert c["modified"]["convert"] == 1
    assert "records in 42" in capsys.readouterr().out


def test_ids_generated_from_file_and_line(tmp_path):
    p = tmp_path / "noid.txt"
    p.write_text(GOOD.replace("\n", " ") + "\n\n" + GOOD.replace("\n", " ") + "甲\n", encoding="utf-8")
    out = tmp_path / "o"
    run_clean([p], out, CleanOptions(), progress=False)
    assert _read(out)["id"].to_list() == ["noid.txt:1", "noid.txt:3"]


def test_parallel_output_equals_serial_and_is_ordered(tmp_path):
    src = _corpus(tmp_path, n=400)
    a, b = tmp_path / "a", tmp_path / "b"
    run_clean([src], a, CleanOptions(), workers=1, piece_mb=0, progress=False)
    # piece_mb=0 gives one piece per line: many shards
    run_clean([src], b, CleanOptions(), workers=2, piece_mb=0, progress=False)
    assert _read(a).equals(_read(b))
    assert len(list(a.glob("*.parquet"))) > 10


def test_resume_skips_finished_shards_and_refuses_other_params(tmp_path):
    src = _corpus(tmp_path, n=50)
    out = tmp_path / "o"
    run_clean([src], out, CleanOptions(), piece_mb=0, progress=False)
    shards = sorted(out.glob("*.parquet"))
    victim = shards[3]
    victim.unlink()
    stamps = {s: s.stat().st_mtime_ns for s in shards if s != victim}
    m = run_clean([src], out, CleanOptions(), piece_mb=0, progress=False)
    assert victim.exists() and all(s.stat().st_mtime_ns == t for s, t in stamps.items())
    assert m.counts.records_in == 52
    with pytest.raises(Exception, match="options differ: text_field 'text' → 'body'"):
        run_clean([src], out, CleanOptions(text_field="body"), piece_mb=0, progress=False)
    with src.open("a", encoding="utf-8") as f:  # a changed input is another run, not a resume
        f.write(json.dumps({"text": GOOD}, ensure_ascii=False) + "\n")
    with pytest.raises(Exception, match="in.jsonl changed"):
        run_clean([src], out, CleanOptions(), piece_mb=0, progress=False)


def test_stats_mode_writes_nothing(tmp_path, capsys):
    src = _corpus(tmp_path)
    assert main(["clean", str(src), "--stats", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "too_short" in out and "records in 42" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


OK_LINE = (json.dumps({"text": GOOD}, ensure_ascii=False) + "\n").encode()


@pytest.mark.parametrize("content,problem,reason", [
    (OK_LINE + b'{"text": broken\n', r"in\.jsonl:2: malformed JSON", "malformed_json"),
    (OK_LINE + b'{"body": "x"}\n', r"in\.jsonl:2: no field 'text'", "missing_text_field"),
    (OK_LINE + b'{"text": 42}\n', r"in\.jsonl:2: field 'text' is int", "non_string_text"),
    (OK_LINE + '{"text": "中文"}'.encode("gbk") + b"\n", r"in\.jsonl:2: invalid UTF-8", "invalid_utf8"),
    (OK_LINE + b'[1, 2]\n', r"in\.jsonl:2: record is a JSON list", "not_an_object"),
])
def test_bad_input_stops_with_location_or_is_counted(tmp_path, capsys, content, problem, reason):
    p = tmp_path / "in.jsonl"
    p.write_bytes(content)
    assert main(["clean", str(p), "-o", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search(problem, err), err
    assert "Traceback" not in err
    out = tmp_path / "o2"
    assert main(["clean", str(p), "-o", str(out), "--no-progress", "--on-error", "skip"]) == 0
    m = json.loads((out / "manifest.json").read_text())["counts"]
    assert m["records_in"] == 2 and m["records_out"] == 1 and m["dropped"] == {reason: 1}


def test_empty_file_is_an_error_or_a_warning(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "empty.jsonl").write_bytes(b"")
    (tmp_path / "d" / "ok.jsonl").write_text(json.dumps({"text": GOOD}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["clean", str(tmp_path / "d"), "-o", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "empty.jsonl: empty file" in capsys.readouterr().err
    assert main(["clean", str(tmp_path / "d"), "-o", str(tmp_path / "o2"), "--no-progress", "--on-error", "skip"]) == 0
    m = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert any("empty.jsonl" in w for w in m["warnings"]) and m["counts"]["records_out"] == 1


def test_no_input_or_output_is_a_clear_error(capsys):
    assert main(["clean", "-o", "x"]) == 2
    assert "no input given" in capsys.readouterr().err


def test_builtin_sample(tmp_path):
    out = tmp_path / "s"
    assert main(["clean", "--sample", "-o", str(out), "--no-progress", "--workers", "1"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert c["records_in"] > 3000 and c["records_in"] == c["records_out"] + c["dropped_total"]
    assert c["modified"]["convert"] > 1000  # the sample holds Traditional poetry
    text = "".join(_read(out)["text"].to_list())
    assert "\r" not in text and "\u3000" not in text


def test_blocklist_file_from_the_command_line(tmp_path):
    src = tmp_path / "in.jsonl"
    bad = "赌博网站欢迎你，赌博赌博，这里有最好的服务。\n第二行还是赌博广告的内容。"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in (GOOD, bad)), encoding="utf-8")
    words = tmp_path / "block.txt"
    words.write_text("# one word per line\n赌博\n\n", encoding="utf-8")
    out = tmp_path / "o"
    assert main(["clean", str(src), "-o", str(out), "--blocklist", str(words), "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["dropped"] == {"blocklisted": 1} and m["params"]["filters"]["blocklist"] == 1
