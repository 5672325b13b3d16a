"""The fastText quality model: trained by `zhdata quality train`, scored by `zhdata clean --quality-model`."""

import gzip
import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytest.importorskip("fasttext", reason="the quality extra (fasttext-numpy2-wheel) is not installed")

from zhdata.cli import main  # noqa: E402
from zhdata.clean import CleanOptions, clean_frame  # noqa: E402
from zhdata.quality import Quality, _auc, tokens  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "zhdata" / "sample"
_NAV = ["首页", "新闻中心", "体育", "财经", "科技", "娱乐", "汽车", "房产", "登录", "注册", "更多", "返回顶部"]
_BOILER = ["版权所有 © 2023 示例网 京ICP备00000000号", "关于我们 | 联系我们 | 隐私政策 | 网站地图", "扫码下载客户端，阅读更多精彩内容",
           "广告：点击领取新人优惠券，满一百减二十", "请登录后发表评论", "上一篇 下一篇 相关阅读 热门排行", "分享到：微信 微博 QQ空间",
           "本站招聘编辑若干名，待遇从优", "点击查看原文 >>", "责任编辑：小明 来源：网络", "免责声明：本文仅代表作者观点"]


def _paragraphs() -> list[str]:
    """Real paragraphs (PRC laws and the classic novels of the built-in sample), 40 characters or more."""
    out = []
    for name in ("laws_zh_cn.jsonl.gz", "classical_novels_zh.jsonl.gz"):
        with gzip.open(SAMPLE / name, "rt", encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"]
                out += [p.strip() for p in text.replace("\r", "").split("\n") if len(p.strip()) >= 40 and not p.startswith("#")]
    return out


def _shuffled(p: str, rng: random.Random) -> str:
    chars = list(p)
    rng.shuffle(chars)
    return "".join(chars)


def _boilerplate(rng: random.Random) -> str:
    lines = [" ".join(rng.sample(_NAV, rng.randint(4, 8)))] + rng.sample(_BOILER, rng.randint(3, 6))
    return "\n".join(lines)


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained on half the paragraphs (positive) against their shuffles and boilerplate (negative)."""
    tmp = tmp_path_factory.mktemp("quality")
    paras = _paragraphs()
    rng = random.Random(0)
    rng.shuffle(paras)
    train, held = paras[: len(paras) // 2], paras[len(paras) // 2:]
    neg = [_shuffled(p, rng) for p in train[: len(train) // 2]] + [_boilerplate(rng) for _ in range(len(train) // 2)]
    pos_f, neg_f = _jsonl(tmp / "pos.jsonl", train), _jsonl(tmp / "neg.jsonl", neg)
    out = tmp / "model"
    assert main(["quality", "train", "--positive", str(pos_f), "--negative", str(neg_f), "-o", str(out),
                 "--threads", "1", "--epoch", "10", "--bucket", "50000", "--no-progress"]) == 0
    return tmp, out, held


def test_model_ranks_clean_text_above_shuffled_and_boilerplate(trained):
    tmp, out, held = trained
    rng = random.Random(1)  # other shuffles and other boilerplate than the training ones
    q = Quality.from_path(str(out))
    clean = q.score(pl.Series(held)).to_numpy()
    shuffled = q.score(pl.Series([_shuffled(p, rng) for p in held])).to_numpy()
    boiler = q.score(pl.Series([_boilerplate(rng) for _ in range(200)])).to_numpy()
    assert _auc(clean, shuffled) > 0.97 and _auc(clean, boiler) > 0.97
    assert np.median(clean) > 0.8 > 0.2 > max(np.median(shuffled), np.median(boiler))
    # the manifest measured the model on documents it did not train on, and counts every document
    m = json.loads((out / "manifest.json").read_text())
    assert m["validation"]["auc"] > 0.97 and m["validation"]["documents"]["positive"] > 0
    for k in ("positive", "negative"):
        c = m["sources"][k]
        assert c["records_in"] == c["records_out"] + c["dropped_total"]
    assert m["counts"]["records_out"] == sum(m["training_documents"].values()) + sum(m["validation"]["documents"].values())
    td = m["training_documents"]  # the classes balanced: the larger thinned to about the smaller's size
    assert abs(td["positive"] - td["negative"]) <= 0.05 * td["positive"]


def test_clean_scores_and_filters_by_quality(trained, tmp_path):
    _, out, held = trained
    rng = random.Random(2)
    docs = held[:20] + [_shuffled(p, rng) for p in held[20:40]]
    src = _jsonl(tmp_path / "in.jsonl", docs)
    assert main(["clean", str(src), "-o", str(tmp_path / "sig"), "--signals-only", "--quality-model", str(out),
                 "--min-quality", "0.5", "--no-progress"]) == 0
    sig = pl.read_parquet(next((tmp_path / "sig").glob("*.parquet")))
    assert sig["quality"].is_between(0, 1).all()
    assert (sig["quality"][:20] > sig["quality"][20:].max()).sum() >= 18
    assert ((sig["quality"] < 0.5) == (sig["reason"] == "low_quality")).all()
    sm = json.loads((tmp_path / "sig" / "manifest.json").read_text())
    assert "quality >= 0.5" in sm["where"] and sm["params"]["quality"]["sha256"]
    assert main(["clean", str(src), "-o", str(tmp_path / "kept"), "--quality-model", str(out / "quality.bin"),
                 "--min-quality", "0.5", "--no-progress"]) == 0
    m = json.loads((tmp_path / "kept" / "manifest.json").read_text())
    assert m["counts"]["dropped"].get("low_quality", 0) == int((sig["quality"] < 0.5).sum()) >= 18
    assert main(["filter", str(tmp_path / "sig"), "--where", sm["where"], "-o", str(tmp_path / "f"), "--no-progress"]) == 0
    assert pl.read_parquet(next((tmp_path / "f").glob("*.parquet"))).equals(
        pl.read_parquet(next((tmp_path / "kept").glob("*.parquet"))))
    # no model: no quality column, nothing scored
    df, _, _, _ = clean_frame(pl.DataFrame({"id": ["a"], "text": [held[0]]}), CleanOptions(signals_only=True))
    assert "quality" not in df.columns


def test_tokens_are_characters_and_white_space_runs():
    assert tokens(pl.Series(["第一条 Py3\n\n 为了，规范 ", " "])) == ["第 一 条 ▁ p y 3 ▁ 为 了 ， 规 范", "▁"]


def test_bad_quality_inputs_are_one_line_errors(tmp_path, capsys, trained):
    _, out, _ = trained
    src = _jsonl(tmp_path / "in.jsonl", ["这是一段正常的中文文本，内容比较充实，没有什么问题。"])
    not_model = tmp_path / "x.bin"
    not_model.write_bytes(b"not a model")
    cases = [(["clean", str(src), "-o", str(tmp_path / "a"), "--min-quality", "0.5"], "--min-quality needs --quality-model"),
             (["clean", str(src), "-o", str(tmp_path / "b"), "--quality-model", str(tmp_path)], "no quality model here"),
             (["clean", str(src), "-o", str(tmp_path / "c"), "--quality-model", str(not_model)], "not a fastText model"),
             (["quality", "train", "--positive", str(src), "--negative", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "d")], "none.jsonl"),
             (["quality", "train", "--positive", str(src), "--negative", str(src), "-o", str(tmp_path / "e"), "--valid-frac", "1"], "--valid-frac")]
    for argv, msg in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
