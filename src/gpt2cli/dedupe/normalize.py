"""Text normalization before filtering and de-duplication.

Scraped text arrives with the defects of the web: mojibake (UTF-8 read as cp1252, "cafÃ©"), decomposed
accents, non-breaking spaces, runs of blanks and empty lines left by removed markup. Fixing them first makes
the filters see the text a reader would, and makes copies that differ only in such defects exact duplicates.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import ftfy

__all__ = ["normalize_text", "text_key"]

# ftfy's repairs, minus the ones that change well-formed text: curly quotes are kept (GPT-2's byte-level BPE
# saw them in WebText, and uncurling is a style change, not a repair). ``explain=False`` skips bookkeeping.
_FTFY = ftfy.TextFixerConfig(uncurl_quotes=False, normalization="NFC", explain=False)
# Line and paragraph separators other than "\n" (ftfy folds most; these cover text it left alone).
_LINE_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85\x0b\x0c]")
_HSPACE = re.compile(r"[^\S\n]+")  # any whitespace except a newline: spaces, tabs, NBSP, thin spaces...
_BLANK_LINES = re.compile(r"\n{3,}")
_ANY_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Repaired, NFC-composed text with tidy whitespace: single spaces inside lines, no blanks at line ends,
    at most one blank line between paragraphs, none at either end.

    Indentation is collapsed too (a code block loses it): the filters and duplicate checks must not depend on
    layout, and prose is what this corpus is for.
    """
    text = ftfy.fix_text(text, _FTFY)
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    text = _HSPACE.sub(" ", _LINE_BREAKS.sub("\n", text))
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def text_key(text: str) -> bytes:
    """The exact-duplicate key of a document: the 16-byte BLAKE2b digest of its NFC, case-folded text with
    every run of whitespace (line breaks included) made one space.

    Meant for :func:`normalize_text` output, so it does not repeat ftfy's (slow) repairs; case and layout are
    folded here because two copies of an article differing only in them are the same document to a model.
    16 bytes make an accidental collision among billions of documents negligible (~2**-64 per pair).
    """
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    folded = _ANY_SPACE.sub(" ", text.casefold()).strip()
    return hashlib.blake2b(folded.encode("utf-8", "surrogatepass"), digest_size=16).digest()
