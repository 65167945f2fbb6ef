"""Per-document filters of the `gpt2 dedupe` stage: WebText's "heuristic cleaning".

The paper removed all Wikipedia documents (they are common in evaluation sets) and left non-English pages
out; it gives no other rule. The rest follows the open reproductions and the best-documented web-text rules:
OpenWebText's minimum length (128 tokens) and Gopher's quality rules (Rae et al. 2021, appendix A.1.1:
word counts, mean word length, symbol ratios, bullet and ellipsis lines, stop words, repetition).

Every filter is a pure function of its inputs that returns ``None`` to keep a document or a short reason
string to drop it (``"quality:symbol_ratio"``): reasons name the rule so that a stage can count and show
examples per rule. Every threshold is a field of :class:`QualityConfig`.

The repetition rules work on integer arrays (one 64-bit hash per word, n-gram hashes built by a rolling
polynomial, duplicates found with ``np.unique``) so that a typical web page costs well under a millisecond.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from itertools import filterfalse
from urllib.parse import unquote

import numpy as np
import regex

from gpt2cli.scrape.extract import _STOPWORD_SETS
from gpt2cli.scrape.urls import host_of

__all__ = [
    "DEFAULT_WIKIPEDIA_DOMAINS",
    "LANGUAGES",
    "QualityConfig",
    "document_reason",
    "english_score",
    "language_reason",
    "language_score",
    "language_scores",
    "length_reason",
    "quality_reason",
    "wikipedia_reason",
]

# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class QualityConfig:
    """Every threshold of the per-document filters. Defaults, and why:

    * ``min_words=100``: OpenWebText dropped documents under 128 tokens; English prose averages about 1.3
      GPT-2 BPE tokens per whitespace word, so 100 words is that cut-off without a tokenizer.
      ``max_words=100_000``: Gopher's upper bound (longer "documents" are dumps, logs, concatenations).
    * ``min_language_score=0.5``: see :func:`language_score`; English articles score 0.8-0.9, English with
      code or tables 0.6-0.8, other languages below 0.1.
    * ``max_hash_ratio=0.1``, ``max_ellipsis_ratio=0.1``: Gopher ("#" or "..." per word above 0.1:
      hashtag spam, truncated teasers).
    * ``min_alpha_word_share=0.8``: Gopher (80% of words must contain a letter: tables of numbers, code).
    * ``min_mean_word_length=3``, ``max_mean_word_length=10``: Gopher (character soup, URL lists).
    * ``max_bullet_line_share=0.9``, ``max_ellipsis_line_share=0.3``: Gopher (link lists, snippet pages).
    * ``min_stopwords=2``: Gopher (at least two of the, be, to, of, and, that, have, with); English only.
    * ``max_dup_line_share=0.3``, ``max_dup_para_share=0.3`` (by count) and ``max_dup_line_char_share=0.2``,
      ``max_dup_para_char_share=0.2`` (by characters): Gopher's repeated-lines/paragraphs rules.
    * ``max_top_ngram_share``: Gopher's 0.20/0.18/0.16 for the most frequent 2/3/4-gram's character share.
    * ``max_dup_ngram_share``: Gopher's 0.15/0.14/0.13/0.12/0.11/0.10 for the share of characters inside
      repeated 5..10-grams.
    * ``max_boilerplate_share=0.2``: lines of page furniture (cookie/JavaScript notices, "all rights reserved",
      sign-up prompts) may be a small part of an article, not a fifth of it; any "lorem ipsum" drops the
      page (C4's rule: placeholder text).
    """

    min_words: int = 100
    max_words: int = 100_000
    min_language_score: float = 0.5
    max_hash_ratio: float = 0.1
    max_ellipsis_ratio: float = 0.1
    min_alpha_word_share: float = 0.8
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_bullet_line_share: float = 0.9
    max_ellipsis_line_share: float = 0.3
    min_stopwords: int = 2
    max_dup_line_share: float = 0.3
    max_dup_para_share: float = 0.3
    max_dup_line_char_share: float = 0.2
    max_dup_para_char_share: float = 0.2
    max_top_ngram_share: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    max_dup_ngram_share: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10),
    )  # fmt: skip
    max_boilerplate_share: float = 0.2


DEFAULT_CONFIG = QualityConfig()

# --------------------------------------------------------------------------------------------- Wikipedia

# Hosts whose pages are Wikipedia articles or copies of them; a host matches itself and every subdomain
# (en.wikipedia.org, en.m.wikipedia.org, www.wikiwand.com). Wikimedia's sister projects (Wiktionary,
# Wikisource, ...) are not Wikipedia and stay, except wikimedia.org itself (Commons, Meta: Wikipedia's
# media descriptions and project pages).
DEFAULT_WIKIPEDIA_DOMAINS: frozenset[str] = frozenset(
    {
        "wikipedia.org", "wikipedia.com", "wikipedia.net", "wikipedia.de", "wikimedia.org",
        "wikiwand.com",                          # Wikipedia with another skin
        "wikizero.com", "wikizero.org", "wiki2.org", "wiki2.info",  # mirrors
        "wikimili.com", "wikiless.org",          # a mirror, a privacy front end
        "dbpedia.org",                           # Wikipedia's infoboxes and abstracts
        "infogalactic.com",                      # a 2016 fork of the whole English Wikipedia
        "everybodywiki.com",                     # articles deleted from (or copied out of) Wikipedia
        "encyclopedia.thefreedictionary.com",    # the Free Dictionary's copy of Wikipedia (only that subdomain)
        "en-academic.com", "enacademic.com",     # Academic's copy of English Wikipedia
        "wiki.kidzsearch.com", "wikiredia.com", "justapedia.org",
    }
)  # fmt: skip
# Services that wrap another page's URL in their own: the wrapped URL is what decides.
_WRAPPERS = frozenset({"archive.org", "archive.is", "archive.today", "archive.ph", "archive.li", "archive.fo",
                       "archive.md", "archive.vn", "webcache.googleusercontent.com", "cachedview.nl"})  # fmt: skip
_EMBEDDED_HOST = re.compile(r"(?:https?:/+|[/=:])([a-z0-9.-]+\.[a-z]{2,})", re.IGNORECASE)


def _clean_host(host: str) -> str:
    """``" WWW.En.M.Wikipedia.ORG.:443 "`` -> ``"en.m.wikipedia.org"``."""
    host = host.strip().lower()
    if "://" in host or "/" in host:
        host = host_of(host if "://" in host else "http://" + host)
    host = host.rsplit("@", 1)[-1]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.strip(".")
    return host[4:] if host.startswith("www.") else host


def _matches(host: str, domains: frozenset[str]) -> bool:
    """``host`` is one of ``domains`` or a subdomain of one."""
    labels = host.split(".")
    return any(".".join(labels[i:]) in domains for i in range(len(labels) - 1))


def _is_wikipedia_host(host: str, domains: frozenset[str]) -> bool:
    if not host:
        return False
    if _matches(host, domains):
        return True
    # Google Translate's proxy spells the host with dashes: en-m-wikipedia-org.translate.goog
    if host.endswith(".translate.goog"):
        return _matches(host.split(".", 1)[0].replace("--", "\0").replace("-", ".").replace("\0", "-"), domains)
    return False


def wikipedia_reason(
    url: str | None, domain: str | None = None, domains: frozenset[str] = DEFAULT_WIKIPEDIA_DOMAINS
) -> str | None:
    """``"wikipedia"`` when the URL's host or the given domain is Wikipedia or a mirror of it, else None.

    Both are checked since either can be missing or wrong in a dump (Reddit's ``domain`` field is the
    submitted host; the URL may be a redirect). Case, ports, credentials, a trailing dot, ``www.`` and mobile
    hosts (``en.m.wikipedia.org``) do not matter; an archive or cache copy of a Wikipedia page counts too.
    """
    hosts = []
    if domain:
        hosts.append(_clean_host(domain))
    if url:
        url = url.strip()
        if "://" not in url[:12]:
            url = "http://" + url.lstrip("/")
        hosts.append(_clean_host(host_of(url)))
    if any(_is_wikipedia_host(h, domains) for h in hosts):
        return "wikipedia"
    if url and any(_matches(h, _WRAPPERS) for h in hosts if h):
        rest = unquote(url.split("://", 1)[-1].split("/", 1)[-1])
        if any(_is_wikipedia_host(_clean_host(m), domains) for m in _EMBEDDED_HOST.findall(rest)):
            return "wikipedia"
    return None


# --------------------------------------------------------------------------------------------- length

_SPACE_RUN = re.compile(r"\s+")


def length_reason(
    text: str, config: QualityConfig | None = None, *, min_words: int | None = None, max_words: int | None = None
) -> str | None:
    """``"length:too_short"``/``"length:too_long"`` by whitespace-separated words (no tokenizer needed).

    Keywords override the config's thresholds.
    """
    config = config or DEFAULT_CONFIG
    low = config.min_words if min_words is None else min_words
    high = config.max_words if max_words is None else max_words
    words = len(text.split()) if len(text) < 2_000_000 else sum(1 for _ in _SPACE_RUN.finditer(" " + text + " ")) - 1
    if words < low:
        return "length:too_short"
    if words > high:
        return "length:too_long"
    return None


# --------------------------------------------------------------------------------------------- language

LANGUAGES: tuple[str, ...] = tuple(_STOPWORD_SETS)
# Letters outside the Latin script: a text written mostly in them is none of the table's languages.
_NON_LATIN = regex.compile(r"[\p{L}--\p{Latin}]", regex.V1)
# The function-word share at which a text counts as fully "in" a language: about half what English prose
# has with the extractor's 47-word English list (0.27-0.35 on the sample articles).
_SATURATION = 0.15
_SAMPLE_CHARS = 30_000
_EDGE_PUNCT = ".,;:!?\"'()[]{}<>*_-\u2018\u2019\u201c\u201d\u00ab\u00bb\u2026\u2013\u2014\u00bf\u00a1"


def _language_sample(text: str) -> str:
    """At most 30,000 characters: the head and tail of long documents (a cost bound, and both ends count)."""
    if len(text) <= _SAMPLE_CHARS:
        return text
    half = _SAMPLE_CHARS // 2
    return text[:half] + "\n" + text[-half:]


def language_scores(text: str) -> dict[str, float]:
    """A confidence in [0, 1] that ``text`` is written in each language of the stopword table.

    The method is the one of :func:`gpt2cli.scrape.extract.guess_language`, made a score: ``t``, the share
    of the text's words that are the language's function words, against ``o``, the highest share of any other
    language. The score is ``t / (t + o)`` (function words of which language dominate) times
    ``min(1, t / 0.15)`` (are there enough function words at all: lists, keyword spam and languages outside
    the table have few of any), times the share of letters in the Latin script. Function words are the most
    frequent words of every language and survive numbers, names and code, which plain word counts do not.
    """
    sample = _language_sample(text)
    # Whitespace words with edge punctuation stripped: str.split is C speed, a regex tokenizer 5x slower.
    words = [w.strip(_EDGE_PUNCT) for w in sample.lower().split()]
    if len(words) < 5:
        return dict.fromkeys(LANGUAGES, 0.0)
    freq = Counter(words)
    n = len(words)
    shares = {lang: sum(freq[w] for w in stops if w in freq) / n for lang, stops in _STOPWORD_SETS.items()}
    latin = 1.0
    if not sample.isascii():
        chars = sum(map(len, words)) or 1
        latin = max(0.0, 1.0 - len(_NON_LATIN.findall(sample)) / chars)
    scores = {}
    for lang, t in shares.items():
        other = max(v for k, v in shares.items() if k != lang)
        scores[lang] = (t / (t + other) if t else 0.0) * min(1.0, t / _SATURATION) * latin
    return scores


def language_score(text: str, lang: str = "en") -> float:
    """The confidence that ``text`` is in ``lang`` (see :func:`language_scores`)."""
    if lang not in _STOPWORD_SETS:
        raise ValueError(f"no function-word profile for language {lang!r}; known: {', '.join(LANGUAGES)}")
    return language_scores(text)[lang]


def english_score(text: str) -> float:
    """The confidence that ``text`` is English, in [0, 1]: above 0.8 for English prose, under 0.1 for
    French, German, Spanish and the other profiled languages."""
    return language_score(text, "en")


def language_reason(
    text: str, lang: str = "en", config: QualityConfig | None = None, *, min_score: float | None = None
) -> str | None:
    """``"language:<guess>"`` when ``text`` scores under the threshold for ``lang``; the guess is the best
    scoring language of the table, or ``unknown`` when none scores 0.5 (WebText left non-English pages out)."""
    threshold = (config or DEFAULT_CONFIG).min_language_score if min_score is None else min_score
    if lang not in _STOPWORD_SETS:
        raise ValueError(f"no function-word profile for language {lang!r}; known: {', '.join(LANGUAGES)}")
    scores = language_scores(text)
    if scores[lang] >= threshold:
        return None
    best = max(scores, key=scores.__getitem__)
    return f"language:{best if scores[best] >= 0.5 and best != lang else 'unknown'}"


# --------------------------------------------------------------------------------------------- quality

_NON_ALPHA_WORD = re.compile(r"(?<!\S)(?:[^\w\s]|[\d_])+(?!\S)")  # whitespace-separated tokens without a letter
# Lines opening with a bullet: the usual glyphs, and the ASCII and dash stand-ins of plain-text lists.
_BULLETS = "\u2022\u2023\u2043\u2219\u25aa\u25ab\u25cf\u25cb\u25e6\u25a0\u25a1\u27a2\u25ba\u2013\u2014\u00b7*>-"
_BULLET = re.compile(f"^[{re.escape(_BULLETS)}]", re.MULTILINE)
_ELLIPSIS_END = re.compile(r"(?:\.\.\.|\u2026)$", re.MULTILINE)
_GOPHER_STOPWORDS = tuple(
    re.compile(rf"\b{word}\b", re.IGNORECASE) for word in ("the", "and", "to", "of", "with", "that", "be", "have")
)
_LOREM = re.compile(r"lorem ipsum", re.IGNORECASE)
# Lines of page furniture: notices that the page needs something, legal footers, sign-up and sharing prompts.
_BOILERPLATE = re.compile(
    r"(?:javascript (?:is|must be|needs to be) (?:disabled|enabled|turned on)|(?:enable|turn on|activate) "
    r"(?:javascript|cookies)|cookies? (?:are|is) (?:disabled|required|blocked)|(?:this site|we) uses? cookies|"
    r"accept (?:all )?cookies|cookie (?:policy|settings|preferences)|your browser (?:does not|doesn't) support|"
    r"(?:update|upgrade) your browser|all rights reserved|terms (?:of (?:use|service)|and conditions)|"
    r"privacy policy|(?:sign up|subscribe) (?:for|to) (?:our|the) newsletter|(?:log|sign) in to (?:comment|"
    r"continue|view)|are you a robot|verify (?:that )?you are (?:a )?human|checking your browser|access denied|"
    r"(?:404|page) not found|share (?:this|on) (?:facebook|twitter|article|story|page)|skip to (?:main )?content"
    r")",
)  # matched against lower-cased lines
# Every phrase above contains one of these.
_BOILERPLATE_ANCHORS = ("javascript", "cookie", "browser", "rights reserved", "terms ", "privacy", "newsletter",
                        " in to ", "robot", "human", "access denied", "not found", "share ", "skip to")  # fmt: skip
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the rolling n-gram hash (2**64 / golden ratio)


def _word_hashes(words: list[str]) -> np.ndarray:
    """One 64-bit hash per word (Python's string hash: only equality matters, within one call)."""
    return np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)


def _boilerplate_chars(body: str, lines: list[str]) -> int:
    """Characters in the lines that hold a boilerplate phrase. Only lines containing an anchor word that occurs
    in the document (fast substring tests) meet the regex, which spares it almost every line."""
    low_body = body.lower()
    anchors = [anchor for anchor in _BOILERPLATE_ANCHORS if anchor in low_body]
    if not anchors:
        return 0
    total = 0
    for line in lines:
        low = line.lower()
        if any(anchor in low for anchor in anchors) and _BOILERPLATE.search(low):
            total += len(line)
    return total


def _repeated_share(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier item, share of the characters in those repeats)."""
    seen: set[str] = set()
    dup_items = dup_chars = total_chars = 0
    for item in items:
        total_chars += len(item)
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_items / len(items), (dup_chars / total_chars if total_chars else 0.0)


def _repeats(grams: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(mask of the positions whose value occurs more than once, the highest count, a position holding it)."""
    order = np.argsort(grams)
    ordered = grams[order]
    same = ordered[1:] == ordered[:-1]
    repeated = np.zeros(grams.size, dtype=bool)
    repeated[1:] = same
    repeated[:-1] |= same
    mask = np.empty_like(repeated)
    mask[order] = repeated
    starts = np.flatnonzero(np.concatenate(([True], ~same)))  # where each run of equal values begins
    runs = np.diff(np.append(starts, grams.size))
    best = int(np.argmax(runs))
    return mask, int(runs[best]), int(order[starts[best]])


def _ngram_reason(words: list[str], config: QualityConfig) -> str | None:
    """Gopher's n-gram repetition rules over word hashes, vectorized.

    The words covered by repeated (n+1)-grams are a subset of those covered by repeated n-grams, so once the
    covered share is under every threshold still to check, the longer n-grams are skipped: typical articles
    stop after the 5-grams.
    """
    n_words = len(words)
    ids = _word_hashes(words)
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=n_words)
    total = int(lengths.sum())
    if not total:
        return None
    top = dict(config.max_top_ngram_share)
    dup = dict(config.max_dup_ngram_share)
    longest = min(max([*top, *dup, 1]), n_words)
    cum = np.concatenate(([0], np.cumsum(lengths)))
    grams = ids
    covered_share = 1.0
    top_count = n_words  # bounds the count of the most frequent n-gram: it cannot grow with n
    with np.errstate(over="ignore"):
        for n in range(2, longest + 1):
            grams = grams[:-1] * _MIX + ids[n - 1 :]  # hash of words[i:i+n], wrapping modulo 2**64
            # the covered share can only shrink with n: stop checking once it is under every remaining limit
            dup_limits = [limit for m, limit in dup.items() if m >= n]
            dup_due = bool(dup_limits) and covered_share > min(dup_limits)
            if not dup_due and not any(m >= n for m in top):
                break
            # the top n-gram's share is at most (top count so far) x (longest n words) / total
            top_due = n in top and top_count * int((cum[n:] - cum[:-n]).max()) / total > top[n]
            if not top_due and not (n in dup and dup_due):
                continue
            mask, count, where = _repeats(grams)
            top_count = count
            if top_due and count > 1 and count * int(cum[where + n] - cum[where]) / total > top[n]:
                return f"quality:top_{n}gram"
            if n in dup and dup_due:
                starts = np.flatnonzero(mask)
                # words covered by some repeated n-gram: +1 where one starts, -1 where it ends
                cover = np.bincount(starts, minlength=n_words + 1) - np.bincount(starts + n, minlength=n_words + 1)
                covered_share = int(lengths[np.cumsum(cover[:-1]) > 0].sum()) / total
                if covered_share > dup[n]:
                    return f"quality:dup_{n}gram"
    return None


def quality_reason(text: str, config: QualityConfig | None = None) -> str | None:
    """The first Gopher-style rule ``text`` fails, as ``"quality:<rule>"``, or None.

    Rules, cheapest first: ``lorem_ipsum``, ``hash_ratio``, ``ellipsis_ratio``, ``alpha_words``,
    ``mean_word_length``, ``stopwords``, ``bullet_lines``, ``ellipsis_lines``, ``boilerplate``, ``dup_paragraphs``,
    ``dup_paragraph_chars``, ``dup_lines``, ``dup_line_chars``, ``top_<n>gram``, ``dup_<n>gram``. Paragraphs come
    before lines: a repeated paragraph repeats its lines too, so the other order would never name it.
    """
    config = config or DEFAULT_CONFIG
    words = text.split()
    n_words = len(words)
    if not n_words:
        return "quality:empty"
    if _LOREM.search(text):
        return "quality:lorem_ipsum"
    if text.count("#") / n_words > config.max_hash_ratio:
        return "quality:hash_ratio"
    if (text.count("...") + text.count("\u2026")) / n_words > config.max_ellipsis_ratio:
        return "quality:ellipsis_ratio"
    # only words that are not all letters can lack one: the regex runs on those few
    maybe = " ".join(filterfalse(str.isalpha, words))
    if 1 - len(_NON_ALPHA_WORD.findall(maybe)) / n_words < config.min_alpha_word_share:
        return "quality:alpha_words"
    mean_length = sum(map(len, words)) / n_words
    if not config.min_mean_word_length <= mean_length <= config.max_mean_word_length:
        return "quality:mean_word_length"
    if config.min_stopwords > 0:
        found = 0  # a search per stop word, stopping at its first hit (near the start in English)
        for pattern in _GOPHER_STOPWORDS:
            found += pattern.search(text) is not None
            if found >= config.min_stopwords:
                break
        else:
            return "quality:stopwords"
    lines = [line for line in (raw.strip() for raw in text.split("\n")) if line]
    n_lines = len(lines)
    body = "\n".join(lines)
    if len(_BULLET.findall(body)) / n_lines > config.max_bullet_line_share:
        return "quality:bullet_lines"
    if len(_ELLIPSIS_END.findall(body)) / n_lines > config.max_ellipsis_line_share:
        return "quality:ellipsis_lines"
    if _boilerplate_chars(body, lines) / len(body) > config.max_boilerplate_share:
        return "quality:boilerplate"
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    para_share, para_chars = _repeated_share(paragraphs)
    if para_share > config.max_dup_para_share:
        return "quality:dup_paragraphs"
    if para_chars > config.max_dup_para_char_share:
        return "quality:dup_paragraph_chars"
    line_share, line_chars = _repeated_share(lines)
    if line_share > config.max_dup_line_share:
        return "quality:dup_lines"
    if line_chars > config.max_dup_line_char_share:
        return "quality:dup_line_chars"
    return _ngram_reason(words, config)


def document_reason(
    text: str,
    url: str | None = None,
    domain: str | None = None,
    lang: str | None = "en",
    config: QualityConfig | None = None,
) -> str | None:
    """All the filters in the stage's order (Wikipedia, length, language, quality): the first reason, or None.

    ``text`` should be :func:`gpt2cli.dedupe.normalize.normalize_text` output; ``lang=None`` keeps every
    language.
    """
    config = config or DEFAULT_CONFIG
    return (
        wikipedia_reason(url, domain)
        or length_reason(text, config)
        or (language_reason(text, lang, config) if lang else None)
        or quality_reason(text, config)
    )
