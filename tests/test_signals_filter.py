import json
from pathlib import Path

import polars as pl
import pytest

from zhdata.clean import SIGNALS, CleanOptions, clean_frame, run_clean
from zhdata.cli import main
from zhdata.filters import Filters
from zhdata.langid import LangFilter
from zhdata.pii import Pii

FX = Path(__file__).parent / "fixtures" / "web"
GOOD = "这是一段正常的中文文本，内容比较充实，没有什么问题。\n第二行也是正常的句子，长度合适。"


def _docs():
    """Documents that pass, and ones that fail each filter, the language test or carry personal data."""
    ja = [t for k, t in (line.split("\t") for line in (FX / "lang_snippets.txt").read_text(encoding="utf-8").splitlines()) if k == "ja"]
    return [f"第{i}篇。" + GOOD for i in range(6)] + [
        "短文", "English text only, nothing Chinese in it at all, " * 3, "\n".join("一二三四五六七八九十百千万亿兆京垓秭穰沟涧"),
        "哈" * 60, ja[0] + ja[1], GOOD + "\n联系电话：13912345678", (FX / "news.html").read_text(encoding="utf-8"),
        (FX / "ls.1.zh.roff").read_text(encoding="utf-8"), GOOD + "\n作者邮箱 someone@example.com 欢迎来信。"]


def _write(tmp_path, docs):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(docs)),
                   encoding="utf-8")
    return src


def _ids(out):
    return sorted(pl.concat([pl.read_parquet(f) for f in sorted(Path(out).glob("*.parquet"))])["id"].to_list())


def test_signal_columns_hold_what_each_step_decided_on():
    opts = CleanOptions(signals_only=True, pii=Pii("drop"), lang=LangFilter(("zh",), 0.5))
    docs = _docs()
    df, reason, _, _ = clean_frame(pl.DataFrame({"id": [str(i) for i in range(len(docs))], "text": docs}), opts)
    assert len(df) == len(docs) and set(SIGNALS) - {"block_hits", "quality"} <= set(df.columns)
    assert df["reason"].to_list() == reason.to_list()
    assert reason.to_list()[:6] == [None] * 6
    assert reason.to_list()[6:11] == ["too_short", "low_chinese_ratio", "short_lines", "repetitive", "wrong_language"]
    assert reason[11] == "pii_phone" and df["pii_phone"][11] == 1 and df["pii_email"][14] == 1
    assert df["lang"][10] == "ja" and df["lang"][0] == "zh" and df["lang_score"][0] > 0.9
    assert df["markup"].to_list()[12:14] == ["html", "roff"] and df["markup_frac"][12] > 0.5
    # each measure equals what the filter decided with
    assert df["chars"][6] < 20 and df["chinese_ratio"][7] < 0.3 and df["avg_line_chars"][8] < 5
    assert df["dup_ngram_frac"][9] > 0.5
    # the default pipeline drops exactly those rows
    kept, r2, _, _ = clean_frame(pl.DataFrame({"id": [str(i) for i in range(len(docs))], "text": docs}),
                                 CleanOptions(pii=Pii("drop"), lang=LangFilter(("zh",), 0.5)))
    assert r2.to_list() == reason.to_list() and "chars" not in kept.columns


@pytest.mark.parametrize("flags", [[], ["--pii", "drop", "--lang", "zh", "--min-lang-score", "0.5"],
                                   ["--min-chars", "30", "--max-dup-ngram-frac", "0.2", "--blocklist", "BLOCK"]])
def test_filter_with_the_manifest_expression_reproduces_clean(tmp_path, flags):
    block = tmp_path / "block.txt"
    block.write_text("正常\n", encoding="utf-8")
    flags = [str(block) if f == "BLOCK" else f for f in flags]
    src = _write(tmp_path, _docs())
    assert main(["clean", str(src), "-o", str(tmp_path / "clean"), "--no-progress", *flags]) == 0
    assert main(["clean", str(src), "-o", str(tmp_path / "sig"), "--no-progress", "--signals-only", *flags]) == 0
    sm = json.loads((tmp_path / "sig" / "manifest.json").read_text())
    assert sm["counts"]["records_out"] == sm["counts"]["records_in"] == len(_docs())
    cm = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    assert sm["would_drop"] == cm["counts"]["dropped"]
    where = sm["where"]
    assert main(["filter", str(tmp_path / "sig"), "--where", where, "-o", str(tmp_path / "f"), "--no-progress"]) == 0
    assert _ids(tmp_path / "f") == _ids(tmp_path / "clean")
    f = pl.read_parquet(next((tmp_path / "f").glob("*.parquet")))
    c = pl.read_parquet(next((tmp_path / "clean").glob("*.parquet")))
    assert f.equals(c)  # same columns, same text, same order
    fm = json.loads((tmp_path / "f" / "manifest.json").read_text())["counts"]
    assert fm["records_in"] == len(_docs()) and fm["dropped"] == {"where": sum(cm["counts"]["dropped"].values())}


def test_filter_thresholds_chosen_later_and_bad_expressions(tmp_path, capsys):
    src = _write(tmp_path, _docs())
    assert main(["clean", str(src), "-o", str(tmp_path / "sig"), "--no-progress", "--signals-only"]) == 0
    assert main(["filter", str(tmp_path / "sig"), "--where", "chinese_ratio > 0.6 and dup_ngram_frac < 0.3 and markup IS NULL",
                 "-o", str(tmp_path / "f"), "--no-progress", "--keep-signals"]) == 0
    df = pl.read_parquet(next((tmp_path / "f").glob("*.parquet")))
    assert len(df) > 0 and df["chinese_ratio"].min() > 0.6 and df["markup"].null_count() == len(df)
    for bad, msg in [("chinese_ratio >", "cannot parse"), ("nonsense_col > 1", "names a column"),
                     ("chars + 1", "is not a condition"), ("__import__('os').system('true')", "")]:
        assert main(["filter", str(tmp_path / "sig"), "--where", bad, "-o", str(tmp_path / "g"), "--no-progress",
                     "--overwrite"]) == 2, bad
        err = capsys.readouterr().err
        assert "zhdata filter: error: --where" in err and msg in err and "Traceback" not in err
    assert main(["clean", str(src), "-o", str(tmp_path / "plain"), "--no-progress"]) == 0
    assert main(["filter", str(tmp_path / "plain"), "--where", "chars > 1", "-o", str(tmp_path / "h"), "--no-progress"]) == 2
    assert "not a `zhdata clean --signals-only` output" in capsys.readouterr().err


def test_filter_resumes_and_refuses_its_input_as_output(tmp_path, capsys):
    src = _write(tmp_path, _docs() * 3)
    sig = tmp_path / "sig"
    run_clean([src], sig, CleanOptions(signals_only=True), piece_mb=0, progress=False)  # a shard per line
    out = tmp_path / "f"
    assert main(["filter", str(sig), "--where", "reason IS NULL", "-o", str(out), "--no-progress"]) == 0
    shards = sorted(out.glob("*.parquet"))
    assert len(shards) > 3
    shards[1].unlink()
    stamps = {s: s.stat().st_mtime_ns for s in shards if s != shards[1]}
    assert main(["filter", str(sig), "--where", "reason IS NULL", "-o", str(out), "--no-progress"]) == 0
    assert shards[1].exists() and all(s.stat().st_mtime_ns == t for s, t in stamps.items())
    assert main(["filter", str(sig), "--where", "chars > 1", "-o", str(out), "--no-progress"]) == 2
    assert "zhdata filter: error:" in capsys.readouterr().err  # another expression is another run
    assert main(["filter", str(sig), "--where", "chars > 1", "-o", str(sig), "--no-progress", "--overwrite"]) == 2
    assert "the output folder is the input" in capsys.readouterr().err
    assert len(list(sig.glob("*.parquet"))) == len(shards)  # nothing of the input deleted
