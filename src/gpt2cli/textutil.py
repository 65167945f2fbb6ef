"""Small text helpers shared by stages."""

from __future__ import annotations

import os
from typing import Any


def valid_unicode(text: str) -> str:
    """``text`` with lone surrogates (from JSON ``\\ud800`` escapes, say) replaced by U+FFFD.

    A lone surrogate has no UTF-8 form, so every byte-level stage would fail on it; valid surrogate pairs
    are joined into the character they stand for.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def valid_unicode_in(value: Any) -> Any:
    """A record parsed from JSON with ``valid_unicode`` applied to every string in it, keys included."""
    if isinstance(value, str):
        return valid_unicode(value)
    if isinstance(value, list):
        return [valid_unicode_in(v) for v in value]
    if isinstance(value, dict):
        return {valid_unicode_in(k): valid_unicode_in(v) for k, v in value.items()}
    return value


def utf8_name(path: str | os.PathLike[str]) -> str:
    """``path`` as valid UTF-8 text, for string columns (Parquet's): a file name's bytes that are not UTF-8, held
    by Python as lone surrogates, become ``\\xNN`` escapes instead of failing the write."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
