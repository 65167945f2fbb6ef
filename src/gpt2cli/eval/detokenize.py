"""De-tokenizers that undo the evaluation datasets' tokenization artifacts before scoring (paper section 3).

GPT-2 reads raw text, so scoring " , " and " @-@ " would charge it for artifacts it never saw; the paper
removed them with "invertible de-tokenizers". What cannot be undone stays as is and is documented here:

* ``<unk>`` is kept literally in both WikiText and PTB: the original words are lost, and dropping the token
  would shorten the text while the word count (the perplexity's denominator) still includes it.
* PTB stays lower-case and keeps ``N`` for numbers (no way to recover the case or the digits).

Every function is pure and works line by line, so the number of lines (and the one ``<eos>`` per line of
the word-level count) is preserved.
"""

from __future__ import annotations

import re

# Contractions split off by the tokenizers: WikiText writes "don 't", PTB writes "do n't".
_CONTRACTION = re.compile(r" (n't|'t|'s|'re|'ve|'ll|'d|'m)(?= |$)", re.IGNORECASE)
_ATTACHES_BEFORE = frozenset({".", ",", ";", ":", "!", "?", "%", ")", "]", "}", "..."})  # to the word before
_ATTACHES_AFTER = frozenset({"(", "[", "{", "$"})  # to the word after
_PLURAL_POSSESSIVE = re.compile(r"(?<=[A-Za-z]s) '(?= |$)")  # "the ships ' crews" -> "the ships' crews"
_WIKI_HEADING = re.compile(r"((?:= )+)(.*?)((?: =)+)")
_WIKI_ARTICLE = re.compile(r"^ = [^=].* = $")  # " = Title = ": one "=" on each side starts an article
_LINE = re.compile(r"[^\n]*\n|[^\n]+")  # a line with its "\n", or the last one without


def _join_tokens(line: str) -> str:
    """Punctuation and closing brackets join the token before, opening brackets and ``$`` the token after;
    straight double quotes alternate on a line, the odd ones opening (joined to the token after) and the even
    ones closing (joined to the token before). One pass over the tokens, so that a quote between punctuation
    (``, " In Safe Hands " .``) or after a bracket still pairs, and so do brackets in a row (``( (``)."""
    tokens = line.split(" ")
    out: list[str] = []
    quote_opens = True
    joins_next = False
    for i, token in enumerate(tokens):
        opens = False
        if token == '"':  # an opening quote at the end of the line closes what came before
            opens = (quote_opens or not out) and (i + 1 < len(tokens) or not out)
            quote_opens = not opens
        if out and (joins_next or token in _ATTACHES_BEFORE or (token == '"' and not opens)):
            out[-1] += token
        else:
            out.append(token)
        joins_next = opens or token in _ATTACHES_AFTER
    return " ".join(out)


def _detokenize_words(line: str) -> str:
    """Spacing rules shared by the datasets, on one stripped line of space-separated tokens."""
    line = _CONTRACTION.sub(r"\1", line)
    line = _PLURAL_POSSESSIVE.sub("'", line)
    return _join_tokens(line)


def _wikitext_line(line: str) -> str:
    line = line.strip()
    heading = _WIKI_HEADING.fullmatch(line)
    if heading and heading.group(1).count("=") == heading.group(3).count("=") and heading.group(2):
        marks = "=" * heading.group(1).count("=")
        return f"{marks} {_wikitext_line(heading.group(2))} {marks}"
    line = line.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    return _detokenize_words(line)


def wikitext_detokenize(text: str) -> str:
    """WikiText ``*.tokens`` text as plain prose, line by line.

    ``@-@``/``@,@``/``@.@`` are joined (``1 @,@ 000`` -> ``1,000``); punctuation, closing brackets and
    contractions are attached to the word before, opening brackets and ``$`` to the word after, straight
    double quotes are paired; headings ``= = Section = =`` become ``== Section ==`` (MediaWiki style, still
    one line); the format's leading/trailing space of every line goes, blank lines (``" "``) become empty.
    ``<unk>`` is kept literally (see the module docstring).
    """
    return "\n".join(_wikitext_line(line) for line in text.split("\n"))


def ptb_detokenize(text: str) -> str:
    """Mikolov's PTB text with the spacing artifacts undone, line by line (one sentence per line).

    Contractions are rejoined (``was n't`` -> ``wasn't``, ``it 's`` -> ``it's``), ``$ N`` -> ``$N``,
    ``N %`` -> ``N%`` and the format's leading/trailing spaces are stripped. Lower-case, ``N`` and
    ``<unk>`` are kept: they cannot be inverted.
    """
    return "\n".join(_detokenize_words(line.strip()) for line in text.split("\n"))


def split_wikitext_articles(text: str) -> list[str]:
    """WikiText split into articles, each starting at its `` = Title = `` line (one ``=`` on each side).

    Lossless: ``"".join(split_wikitext_articles(t)) == t``; lines before the first title (the file's
    leading blank line) belong to the first article. Useful to score articles as separate documents. Lines end at
    "\\n" alone, as in ``wikitext_detokenize`` (not at the U+2028 or \\x0c a line may hold).
    """
    articles: list[str] = []
    current: list[str] = []
    for line in _LINE.findall(text):
        if _WIKI_ARTICLE.match(line.rstrip("\r\n")) and any(not x.isspace() for x in current):
            articles.append("".join(current))
            current = []
        current.append(line)
    if current:
        articles.append("".join(current))
    return articles
