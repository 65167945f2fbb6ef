"""Small text helpers shared by stages."""


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
