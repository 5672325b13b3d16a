import json

import pytest

from zhdata.manifest import Counts, Manifest, file_sha256


def test_manifest_records_inputs_counts_and_checks_sum(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"abc")
    m = Manifest("zhdata test", {"x": 1})
    m.add_inputs([src])
    m.counts.merge(Counts(10, 7))
    m.counts.dropped.update({"too_short": 2, "malformed_json": 1})
    path = m.write(tmp_path / "out")
    d = json.loads(path.read_text())
    assert d["inputs"][0]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert d["inputs"][0]["size"] == 3
    assert d["counts"]["records_in"] == 10 and d["counts"]["dropped_total"] == 3
    assert "polars" in d["versions"] and d["params"] == {"x": 1}
    assert file_sha256(src) == d["inputs"][0]["sha256"]


def test_manifest_refuses_counts_that_do_not_add_up(tmp_path):
    m = Manifest("zhdata test", {})
    m.counts.merge(Counts(10, 7))
    m.counts.dropped["too_short"] = 2
    with pytest.raises(AssertionError, match="do not add up"):
        m.write(tmp_path)
    m.source("a").merge(Counts(1, 0))
    m.counts.dropped["too_short"] = 3
    with pytest.raises(AssertionError, match="source 'a'"):
        m.write(tmp_path)


def test_cli_params_are_plain_json_values():
    import argparse
    from pathlib import Path

    from zhdata.manifest import cli_params
    args = argparse.Namespace(corpus=[Path("a"), "b"], add=3, ratio=0.5, flag=True, out=Path("o"), none=None, func=print)
    assert cli_params(args) == {"corpus": ["a", "b"], "add": 3, "ratio": 0.5, "flag": True, "out": "o", "none": None}
