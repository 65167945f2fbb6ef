"""Reading evaluation files: a test set that cannot be read whole is an error naming the file and line,
never a silent skip, because a shorter test set changes the reported score."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gpt2cli.errors import Gpt2Error


def read_lines(path: Path | str) -> list[str]:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise Gpt2Error(f"cannot read {path}: {e}") from None


def jsonl_rows(path: Path | str) -> Iterator[tuple[str, Any]]:
    """(``path:line``, parsed value) of every non-blank line of a JSON Lines file."""
    for lineno, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except ValueError as e:
            raise Gpt2Error(f"{path}:{lineno}: not JSON ({e})") from None
