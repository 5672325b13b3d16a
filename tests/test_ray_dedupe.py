"""`zhdata dedupe --engine ray`: the distributed global step gives the local engine's output byte for byte."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from zhdata.cli import main

from test_dedupe import _shards, _texts


def _corpus(tmp_path):
    """Five shards with planted duplicates spread over them: exact copies (one with other spacing and punctuation),
    near copies (a few characters changed), a chain of edits (a ~ b, b's own edit c too far from b at 0.8), and a pair
    that shares bands but not enough n-grams."""
    base = _texts(10, 40, 300)
    rng = np.random.default_rng(3)

    def edit(text, k):
        chars = list(text)
        for i in rng.choice(len(chars), k, replace=False):
            chars[i] = "某"
        return "".join(chars)

    spaced = "  ".join(base[3][i:i + 20] for i in range(0, 300, 20)) + "。"
    chain_b = base[7][:280] + _texts(11, 1, 20)[0]
    chain_c = chain_b[:260] + _texts(12, 1, 40)[0]
    loose = base[9][:200] + _texts(13, 1, 100)[0]  # Jaccard ~0.5: a candidate under loose bands, rejected by verification
    shards = [base[0:8], [base[8], base[0], edit(base[1], 3), base[9], base[10]] + base[11:16],
              [spaced, chain_b, base[16], edit(base[2], 2)] + base[17:24], [chain_c, loose, base[2]] + base[24:32],
              base[32:40] + [base[0], edit(base[5], 4)]]
    return _shards(tmp_path, shards)


def _outputs(out):
    files = {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}
    m = json.loads((out / "manifest.json").read_text())
    return files, {k: v for k, v in m.items() if k not in ("started", "elapsed_s", "engine", "versions")}


@pytest.mark.parametrize("flags", [[], ["--bands", "32", "--rows", "4", "--threshold", "0.9", "--no-exact"]],
                         ids=["default", "loose-bands-verified-near-only"])
def test_ray_dedupe_equals_local_byte_for_byte(ray_cluster, tmp_path, monkeypatch, flags):
    import zhdata.engine.ray_dedupe as rd

    monkeypatch.setattr(rd, "ROWS_PER_PARTITION", 200)  # many shuffle partitions: keys of one band split over tasks
    src = _corpus(tmp_path)
    common = ["--no-progress", "--workers", "2", *flags]
    assert main(["dedupe", str(src), "-o", str(tmp_path / "local"), *common]) == 0
    assert main(["dedupe", str(src), "-o", str(tmp_path / "ray"), "--engine", "ray", "--ray-address", ray_cluster, *common]) == 0
    (lf, lm), (rf, rm) = _outputs(tmp_path / "local"), _outputs(tmp_path / "ray")
    assert sorted(lf) == sorted(rf) and "clusters.parquet" in lf
    for name in lf:
        assert rf[name] == lf[name], name
    assert rm == lm
    m = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert m["engine"]["engine"] == "ray"
    if not flags:  # planted: 4 exact copies (one differently spaced), 3 edited copies and the first link of the chain
        assert m["counts"]["dropped"] == {"exact_duplicate": 4, "near_duplicate": 4}


def test_shards_grouped_and_partitions_capped_give_the_same_output(ray_cluster, tmp_path, monkeypatch):
    """Past MAX_TASKS shards, a task of the global step takes several shards (here 2 and 3 of the 5) and the
    partitions are capped: the same clusters and files as the local engine."""
    import zhdata.engine.ray_dedupe as rd

    assert [list(g) for g in rd.shard_groups(5, 2)] == [[0, 1], [2, 3, 4]]
    assert [list(g) for g in rd.shard_groups(3, 512)] == [[0], [1], [2]]
    monkeypatch.setattr(rd, "ROWS_PER_PARTITION", 200)  # would make 6 partitions: capped at 2
    monkeypatch.setattr(rd, "MAX_TASKS", 2)
    src = _corpus(tmp_path)
    common = ["--no-progress", "--workers", "2"]
    assert main(["dedupe", str(src), "-o", str(tmp_path / "local"), *common]) == 0
    assert main(["dedupe", str(src), "-o", str(tmp_path / "ray"), "--engine", "ray", "--ray-address", ray_cluster, *common]) == 0
    (lf, lm), (rf, rm) = _outputs(tmp_path / "local"), _outputs(tmp_path / "ray")
    assert lf == rf and rm == lm
    assert lm["counts"]["dropped"] == {"exact_duplicate": 4, "near_duplicate": 4}


def test_a_worker_killed_in_the_global_step_is_retried_to_the_same_output(ray_cluster, tmp_path, monkeypatch):
    import zhdata.engine.ray_dedupe as rd

    monkeypatch.setattr(rd, "ROWS_PER_PARTITION", 200)  # several candidate-link partitions: the second one dies
    src = _corpus(tmp_path)
    common = ["--no-progress", "--workers", "2"]
    assert main(["dedupe", str(src), "-o", str(tmp_path / "local"), *common]) == 0
    marker = tmp_path / "killed"
    monkeypatch.setenv("ZHDATA_FAULT_KILL_ONCE", f"links:1:{marker}")
    assert main(["dedupe", str(src), "-o", str(tmp_path / "ray"), "--engine", "ray", *common]) == 0
    pid = int(marker.read_text())  # the worker linking partition 1 died (SIGKILL) with its links made, not handed in
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    (lf, lm), (rf, rm) = _outputs(tmp_path / "local"), _outputs(tmp_path / "ray")
    assert lf == rf and rm == lm
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["counts"]["dropped"] == {
        "exact_duplicate": 4, "near_duplicate": 4}
