from __future__ import annotations

import codecs
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt2cli.documents import expand_inputs, read_records


def test_a_byte_order_mark_is_not_part_of_the_first_record(tmp_path: Path):
    """Windows editors start UTF-8 files with a BOM; the first JSONL record must not be lost as malformed, nor a
    text file's document start with U+FEFF."""
    jsonl, text = tmp_path / "docs.jsonl", tmp_path / "doc.txt"
    jsonl.write_bytes(codecs.BOM_UTF8 + b"".join(json.dumps({"text": t}).encode() + b"\n" for t in ("one", "two")))
    text.write_bytes(codecs.BOM_UTF8 + b"three")
    assert [row for _, _, row in read_records([jsonl, text])] == [{"text": "one"}, {"text": "two"}, {"text": "three"}]


def test_folders_skip_hidden_files_and_folders(tmp_path: Path):
    """Jupyter's checkpoints and macOS's AppleDouble ``._name`` files are not documents; a hidden file named
    directly is read, and so is a hidden folder named directly."""
    folder = tmp_path / ".data"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    (folder / "sub").mkdir()
    for name in ("a.txt", "sub/b.jsonl", "._a.txt", ".notes.md", ".ipynb_checkpoints/a-checkpoint.txt"):
        (folder / name).write_text('{"text": "x"}\n')
    assert expand_inputs([folder]) == [folder / "a.txt", folder / "sub" / "b.jsonl"]
    assert expand_inputs([folder / "._a.txt"]) == [folder / "._a.txt"]


def test_a_file_reached_twice_is_read_once(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    folder = tmp_path / "docs"
    folder.mkdir()
    a, b = folder / "a.txt", folder / "b.jsonl"
    a.write_text("one")
    b.write_text('{"text": "two"}\n')
    (tmp_path / "link.txt").symlink_to(a)
    os.link(b, tmp_path / "hard.jsonl")
    given = [a, folder, tmp_path / "link.txt", tmp_path / "hard.jsonl", Path(str(b)), a]
    assert expand_inputs(given) == [a, b]
    assert len([r for r in caplog.records if "given already: read once" in r.getMessage()]) == 5
    assert [row for _, _, row in read_records(expand_inputs(given))] == [{"text": "one"}, {"text": "two"}]


def test_a_parquet_file_whose_name_is_not_utf8_is_read(tmp_path: Path):
    """pyarrow takes no path that is not UTF-8; file names are bytes, so the reader hands it an open file."""
    path = tmp_path / os.fsdecode(b"caf\xe9.parquet")
    with open(path, "wb") as f:
        pq.write_table(pa.table({"text": ["one", "two"]}), f)
    assert [row for _, _, row in read_records([path])] == [{"text": "one"}, {"text": "two"}]
