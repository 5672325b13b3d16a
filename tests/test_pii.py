import json
from pathlib import Path

import polars as pl
import pytest

from zhdata.cli import main
from zhdata.pii import PII_TYPES, Pii, find_and_redact, luhn, valid_id_number

FX = Path(__file__).parent / "fixtures" / "web"


def _planted():
    return [tuple(line.split("\t")) for line in (FX / "pii_planted.txt").read_text(encoding="utf-8").splitlines()]


def _ordinary():
    return (FX / "pii_ordinary.txt").read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("kind,text", _planted())
def test_each_planted_type_is_found_and_replaced_by_its_placeholder(kind, text):
    out, counts = find_and_redact(text)
    assert {t for t, n in counts.items() if n} == {kind}
    assert out.count(f"<{kind.upper()}>") == counts[kind] >= 1
    assert not any(ch.isdigit() for ch in out.split(f"<{kind.upper()}>")[0][-3:]), out  # nothing left of it before


def test_exact_redactions():
    assert find_and_redact("电话：010-62751234，传真：(021)87654321。")[0] == "电话：<PHONE>，传真：<PHONE>。"
    assert find_and_redact("卡号 6217 0012 3456 7890 122，户名李明")[0] == "卡号 <BANK_CARD>，户名李明"
    assert find_and_redact("預約電話：23456789，請")[0] == "預約電話：<PHONE>，請"  # the phone word stays
    assert find_and_redact("地址 ::1 与 10.0.0.1。")[0] == "地址 <IP> 与 <IP>。"


@pytest.mark.parametrize("text", _ordinary())
def test_ordinary_numbers_survive(text):
    # dates, prices, versions that look like IPv4, order numbers, 18 digits with a wrong check digit, ISBNs,
    # counts, times, coordinates
    assert find_and_redact(text) == (text, dict.fromkeys(PII_TYPES, 0))


def test_checksums():
    assert valid_id_number("11010519491231002X") and valid_id_number("11010519491231002x")
    assert not valid_id_number("110105194912310021")  # check character wrong
    assert not valid_id_number("110105194913310028")  # month 13
    assert luhn("4111111111111111") and not luhn("4111111111111112")
    assert find_and_redact("卡号 4111111111111112 无效")[1]["bank_card"] == 0
    assert find_and_redact("单号 9111111111111111")[1]["bank_card"] == 0  # Luhn-valid, but no card issuer starts 9


def test_modes_and_counts_per_type():
    texts = pl.Series([t for _, t in _planted()] + _ordinary())
    n = len(_planted())
    out, counts, reason, changed = Pii("redact").apply(texts)
    assert reason.null_count() == len(texts)
    assert changed == {f"pii_{t}": sum(k == t for k, _ in _planted()) for t in PII_TYPES}
    assert out.to_list()[n:] == _ordinary() and counts[n:].sum_horizontal().sum() == 0
    assert counts["pii_phone"].to_list()[:n] == [find_and_redact(t)[1]["phone"] for _, t in _planted()]
    out, counts, reason, changed = Pii("drop").apply(texts)
    assert out.to_list() == texts.to_list() and changed == {}
    assert reason.to_list() == [f"pii_{k}" for k, _ in _planted()] + [None] * len(_ordinary())
    out, counts, reason, changed = Pii("keep").apply(texts)
    assert out.to_list() == texts.to_list() and counts["pii_email"].null_count() == len(texts) and changed == {}
    with pytest.raises(ValueError, match="unknown --pii mode"):
        Pii("mask")


def test_clean_cli_redacts_by_default_and_drops_on_request(tmp_path):
    body = "这是一段正常的中文文本，内容比较充实，没有什么问题。\n"
    docs = [body + t for _, t in _planted()] + [body + t for t in _ordinary()]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(docs)),
                   encoding="utf-8")
    out = tmp_path / "o"
    assert main(["clean", str(src), "-o", str(out), "--no-progress", "--workers", "1"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["params"]["pii"] == "redact"
    assert {k: v for k, v in m["counts"]["modified"].items() if k.startswith("pii_")} == {
        "pii_email": 2, "pii_phone": 7, "pii_id_number": 2, "pii_bank_card": 2, "pii_ip": 3}
    text = "".join(pl.read_parquet(next(out.glob("*.parquet")))["text"])
    assert "13912345678" not in text and "11010519491231002X" not in text and "<ID_NUMBER>" in text
    assert "¥1,299.00" in text and "1.2.3.4" in text and "202310011234567890" in text
    out = tmp_path / "d"
    assert main(["clean", str(src), "-o", str(out), "--no-progress", "--workers", "1", "--pii", "drop"]) == 0
    c = json.loads((out / "manifest.json").read_text())["counts"]
    assert c["dropped"] == {"pii_email": 2, "pii_phone": 7, "pii_id_number": 2, "pii_bank_card": 2, "pii_ip": 3}
    assert c["records_out"] == len(_ordinary())


def test_the_candidate_filter_misses_nothing_the_full_scan_finds():
    """Only candidate documents reach the full scan: an address opening with `::` is found alone in its document
    as it is beside other personal data."""
    texts = ["地址 ::1 结束", "服务器 ::a:b 已停用", "映射 ::ffff:c000:280 地址", "无 :: 地址", *[t for _, t in _planted()]]
    out, counts = Pii("redact").scan(pl.Series(texts))
    assert out.to_list() == [find_and_redact(t)[0] for t in texts]
    assert counts["pii_ip"].to_list()[:4] == [1, 1, 1, 0]
