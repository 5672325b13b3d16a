"""A SentencePiece model that repeats a piece is refused, naming both ids, by every command that reads one
(a converted vocabulary would silently miss an id while the model claims all its pieces)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tokenizer.audit import audit
from tokenizer.cli import main
from tokenizer.spm import load_proto, save_proto
from zhdata.errors import InputError

MIXTRAL = Path(__file__).parents[1] / "tokenizer" / "data" / "mixtral-8x7b-v0.1.model"
TEXT = Path(__file__).parent / "fixtures" / "tokenizers" / "text"


@pytest.fixture(scope="module")
def dup(tmp_path_factory) -> tuple[Path, str]:
    proto = load_proto(MIXTRAL)
    piece = proto.pieces[400].piece
    proto.pieces[500].piece = piece  # piece 500 now repeats piece 400; the model still has 32,000 pieces
    return save_proto(proto, tmp_path_factory.mktemp("dup") / "dup.model"), piece


def _refused(capsys, argv: list[str], dup: tuple[Path, str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{dup[0]}: piece 500 {dup[1]!r} repeats piece 400" in err and "Traceback" not in err


def test_load_proto_refuses_a_repeated_piece(dup, tmp_path):
    with pytest.raises(InputError, match=r"dup.model: piece 500 '.*' repeats piece 400"):
        load_proto(dup[0])
    folder = tmp_path / "folder"  # also inside a tokenizer folder
    folder.mkdir()
    shutil.copy(dup[0], folder / "tokenizer.model")
    with pytest.raises(InputError, match=r"tokenizer.model: piece 500 '.*' repeats piece 400"):
        load_proto(folder)


def test_convert_extend_audit_report_refuse_it(dup, tmp_path, capsys):
    _refused(capsys, ["convert", str(dup[0]), "-o", str(tmp_path / "c")], dup)
    assert not (tmp_path / "c" / "tokenizer.json").exists()
    _refused(capsys, ["extend", "--base", str(dup[0]), "--corpus", str(TEXT / "zh_laws.jsonl"), "--add", "10",
                      "-o", str(tmp_path / "e1")], dup)
    _refused(capsys, ["extend", "--base", str(MIXTRAL), "--pieces", str(dup[0]), "--add", "10", "-o", str(tmp_path / "e2")], dup)
    _refused(capsys, ["audit", str(dup[0])], dup)
    with pytest.raises(InputError, match="repeats piece 400"):
        audit(dup[0])
    _refused(capsys, ["report", "--tokenizer", f"dup={dup[0]}", "--corpus", f"zh={TEXT / 'zh_laws.jsonl'}",
                      "-o", str(tmp_path / "r"), "--max-chars", "1000"], dup)
    assert not (tmp_path / "r" / "report.json").exists()
