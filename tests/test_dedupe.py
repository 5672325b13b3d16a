import json

import numpy as np
import polars as pl
import pytest

from zhdata.cli import main
from zhdata.dedupe import DedupeOptions, run_dedupe
from zhdata.manifest import Manifest

POOL = list("天地玄黄宇宙洪荒日月盈昃辰宿列张寒来暑往秋收冬藏闰余成岁律吕调阳云腾致雨露结为霜金生丽水玉出昆冈")


def _shards(tmp_path, shards):
    d = tmp_path / "in"
    d.mkdir()
    for k, texts in enumerate(shards):
        pl.DataFrame({"id": [f"s{k}-{i}" for i in range(len(texts))], "text": texts,
                      "source": "t"}).write_parquet(d / f"part-{k:05d}-0000.parquet")
    Manifest("zhdata clean", {}).write(d)
    return d


def _texts(seed, n, length=300):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(POOL, length)) for _ in range(n)]


def test_exact_and_near_duplicates_across_shards(tmp_path):
    base = _texts(0, 6)
    near = base[1][:150] + "某" + base[1][151:]
    spaced = "  ".join(base[3][i:i + 20] for i in range(0, 300, 20)) + "。"  # same text, other spacing/punctuation
    d = _shards(tmp_path, [base[:3], [base[3], near, base[4]], [spaced, base[5], base[0]]])
    out = tmp_path / "out"
    m = run_dedupe(d, out, DedupeOptions(), progress=False)
    kept = pl.concat([pl.read_parquet(f) for f in sorted(out.glob("part-*.parquet"))])
    assert kept["id"].to_list() == ["s0-0", "s0-1", "s0-2", "s1-0", "s1-2", "s2-1"]
    c = m.counts
    assert c.records_in == 9 and c.records_out == 6
    assert c.dropped == {"near_duplicate": 1, "exact_duplicate": 2}
    cl = pl.read_parquet(out / "clusters.parquet").sort("id")
    assert cl.filter(pl.col("id") == "s1-1").row(0, named=True) | {} == {
        "id": "s1-1", "cluster": "s0-1", "cluster_size": 2, "kept": False, "reason": "near_duplicate", "shard": "part-00001-0000.parquet"}
    assert set(cl.filter(pl.col("kept"))["id"]) == {"s0-0", "s0-1", "s1-0"}
    assert len(cl) == 6
    assert json.loads((out / "manifest.json").read_text())["counts"]["records_out"] == 6


def test_taiwan_and_mainland_versions_of_a_page_are_duplicates(tmp_path):
    from zhdata.normalize import normalize_text
    mainland = ("这个软件通过网络连接服务器，程序员用鼠标和打印机调试程序。随着时间推移，信息越来越多。"
                "软件的网络接口和服务器的信息由程序员维护，鼠标和打印机的驱动程序也随着版本更新。") * 3
    taiwan = normalize_text("這個軟體通過網路連接伺服器，程式設計師用滑鼠和印表機除錯程式。隨著時間推移，資訊越來越多。"
                            "軟體的網路介面和伺服器的資訊由程式設計師維護，滑鼠和印表機的驅動程式也隨著版本更新。" * 3)
    d = _shards(tmp_path, [[mainland, taiwan, _texts(3, 1)[0]]])
    m = run_dedupe(d, tmp_path / "o1", DedupeOptions(), progress=False)
    assert m.counts.records_out == 2 and sum(m.counts.dropped.values()) == 1
    assert pl.read_parquet(tmp_path / "o1" / "part-00000-0000.parquet")["id"].to_list() == ["s0-0", "s0-2"]
    assert m.to_dict()["params"]["mainland_key"] is True
    plain = run_dedupe(d, tmp_path / "o2", DedupeOptions(mainland_key=False), progress=False)
    assert plain.counts.records_out == 3  # the old key: the phrasing keeps them apart


def test_verify_rejects_loose_candidates(tmp_path):
    a = _texts(1, 1, 400)[0]
    b = a[:300] + "".join(_texts(2, 1, 100)[0])  # 5-gram Jaccard about 0.6
    d = _shards(tmp_path, [[a, b]])
    loose = DedupeOptions(threshold=0.9, bands=32, rows=4, verify=False)  # candidate at Jaccard ~0.4 and up
    assert run_dedupe(d, tmp_path / "o1", loose, progress=False).counts.records_out == 1
    verified = DedupeOptions(threshold=0.9, bands=32, rows=4)  # verification is the default
    assert run_dedupe(d, tmp_path / "o2", verified, progress=False).counts.records_out == 2
    assert not list((tmp_path / "o2" / ".parts").glob("verify-sets*"))  # the spilled n-gram sets are removed


def test_default_bands_are_recall_oriented_when_verified():
    assert DedupeOptions().resolved().bands * DedupeOptions().resolved().rows <= 128
    assert (DedupeOptions().resolved().bands, DedupeOptions().resolved().rows) == (16, 8)
    assert (DedupeOptions(verify=False).resolved().bands, DedupeOptions(verify=False).resolved().rows) == (9, 13)
    # 16 x 8 finds a pair at Jaccard 0.8 with probability 0.95, 9 x 13 with 0.47


def test_parallel_signatures_equal_serial(tmp_path):
    d = _shards(tmp_path, [_texts(3, 20), _texts(3, 20)[:10] + _texts(4, 10)])
    m1 = run_dedupe(d, tmp_path / "o1", DedupeOptions(), workers=1, progress=False)
    m2 = run_dedupe(d, tmp_path / "o2", DedupeOptions(), workers=2, progress=False)
    assert m1.counts.to_dict() == m2.counts.to_dict() and m1.counts.records_out == 30
    assert pl.read_parquet(tmp_path / "o1" / "clusters.parquet").equals(pl.read_parquet(tmp_path / "o2" / "clusters.parquet"))


def test_bad_inputs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["dedupe", str(tmp_path / "empty"), "-o", str(tmp_path / "o")]) == 2
    assert "no .parquet shards" in capsys.readouterr().err
    d = tmp_path / "nomani"
    d.mkdir()
    pl.DataFrame({"text": ["x"]}).write_parquet(d / "a.parquet")
    assert main(["dedupe", str(d), "-o", str(tmp_path / "o")]) == 2
    assert "did not finish" in capsys.readouterr().err
    Manifest("t", {}).write(d)
    assert main(["dedupe", str(d), "-o", str(tmp_path / "o"), "--text-field", "body"]) == 2
    assert "no column 'body'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dedupe", str(d)])  # -o is required


def test_rerun_resumes_and_a_changed_input_run_is_refused(tmp_path):
    d = _shards(tmp_path, [_texts(5, 10)])
    out = tmp_path / "o"
    first = run_dedupe(d, out, DedupeOptions(), progress=False)
    again = run_dedupe(d, out, DedupeOptions(), progress=False)  # signatures come from the cache
    assert first.counts.to_dict() == again.counts.to_dict()
    Manifest("zhdata clean", {"another": "run"}).write(d)
    with pytest.raises(Exception, match="manifest.json changed"):
        run_dedupe(d, out, DedupeOptions(), progress=False)


def test_read_texts_of_rows_reads_their_row_groups_only(tmp_path, monkeypatch):
    """The verifier's read: the texts at any rows, in the order asked, across row groups, and a row group that
    holds none of them is never decoded (a null there would otherwise be an error)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from zhdata import dedupe

    texts = _texts(5, 50, length=20)
    col = pa.array(texts[:40] + [None] * 10, type=pa.string())  # rows 40-49, the last group, hold nulls
    pq.write_table(pa.table({"text": col}), tmp_path / "s.parquet", row_group_size=10)
    rows = np.array([33, 2, 17, 0, 39, 2])
    assert dedupe.read_texts(tmp_path / "s.parquet", "text", rows) == [texts[i] for i in rows.tolist()]
    assert dedupe.read_texts(tmp_path / "s.parquet", "text", np.array([], dtype=np.int64)) == []
    with pytest.raises(dedupe.InputError, match=":41: column .text. holds nulls"):
        dedupe.read_texts(tmp_path / "s.parquet", "text", np.array([1, 41]))
    with pytest.raises(dedupe.InputError, match="no column 'body'"):
        dedupe.read_texts(tmp_path / "s.parquet", "body", rows)


def test_shards_are_written_in_row_groups_of_bounded_size(tmp_path, monkeypatch):
    """A finished shard holds row groups of about ROW_GROUP_BYTES, the same rows in order."""
    import pyarrow.parquet as pq

    from zhdata import shards

    frame = pl.DataFrame({"id": [str(i) for i in range(1000)], "text": _texts(6, 1000, length=100)})
    monkeypatch.setattr(shards, "ROW_GROUP_BYTES", frame.estimated_size() // 8)
    state = shards.ShardState(tmp_path)
    state.start({"x": 1})
    state.finish("part", frame, {"n": 1000})
    pf = pq.ParquetFile(tmp_path / "part.parquet")
    assert 8 <= pf.num_row_groups <= 9
    assert pl.read_parquet(tmp_path / "part.parquet").equals(frame)
