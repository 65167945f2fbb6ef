"""Reading evaluation files: a test set that cannot be read whole is an error naming the file and line,
never a silent skip, because a shorter test set changes the reported score."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gpt2cli.errors import Gpt2Error


def read_bytes(path: Path | str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise Gpt2Error(f"cannot read {path}: {e}") from None


def read_text(path: Path | str) -> str:
    """The whole file as UTF-8; an undecodable byte is an error naming the file and offset, not a traceback.
    So is a NUL byte: no test set holds one, and a file of them (a preallocated or damaged copy) would
    otherwise be scored as text."""
    data = read_bytes(path)
    if (nul := data.find(b"\0")) >= 0:
        raise Gpt2Error(f"cannot read {path}: a NUL byte at offset {nul} (not a text file)")
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0  # one copy of WikiText-2's test file
    try:
        return data[bom:].decode("utf-8")  # the mark is no text
    except UnicodeDecodeError as e:
        bad = data[bom + e.start : bom + e.end]
        raise Gpt2Error(f"cannot read {path}: 'utf-8' codec can't decode {bad!r} at byte {bom + e.start}") from None


def text_lines(text: str) -> list[str]:
    """The lines of ``text``, split at "\\n" alone, without an empty one after a final "\\n". The formats read here
    (JSON Lines, CBT, plain-text WMT, the word-level language-modelling files) end a line there and only there;
    ``str.splitlines`` also breaks at U+2028, U+0085, \\x0c and others, which a JSON string or a line of text may
    hold (the hub writer's own ``ensure_ascii=False`` JSON Lines do)."""
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read_lines(path: Path | str) -> list[str]:
    """The file's ``text_lines``, each without a "\\r" before its "\\n" (a file saved with CRLF line ends)."""
    return [line.removesuffix("\r") for line in text_lines(read_text(path))]


def jsonl_rows(path: Path | str) -> Iterator[tuple[str, Any]]:
    """(``path:line``, parsed value) of every non-blank line of a JSON Lines file."""
    for lineno, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than the parser goes
            raise Gpt2Error(f"{path}:{lineno}: not JSON ({e})") from None
