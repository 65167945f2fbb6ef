"""Main-text extraction from HTML pages: the role Dragnet/Newspaper played when WebText was built.

The algorithm, in four steps:

1. **Decode and parse.** Bytes are decoded with the charset the page declares (BOM, ``<meta charset>``,
   ``http-equiv``), else a detected one, else UTF-8 with replacement; lxml parses the result.
2. **Clean.** Elements that never hold article prose go (scripts, forms' controls, ``nav``/``aside``/
   ``footer``, hidden elements, ARIA landmarks such as ``navigation`` or ``complementary``), and so do
   elements whose class/id names boilerplate (comments, share bars, cookie notices, related articles, ads...)
   unless they hold the article itself (they contain the page's ``h1``, ``main`` or ``articleBody``).
3. **Pick the container.** Every paragraph-like block scores by its length and commas; the score flows to its
   ancestors with decaying weight, is adjusted by class/id hints and multiplied by one minus the link density.
   The best container is kept, and its siblings join when they score close to it or look like prose.
4. **Render.** The container is walked in document order into blocks (paragraphs, headings, list items,
   blockquotes, preformatted text); link-heavy blocks, stock phrases ("Advertisement", "Read more") and
   short non-sentence lines at the edges of the article (bylines, datelines, tags) are dropped.

Everything is a pure function of the input. ``EXTRACTOR_VERSION`` goes into each scraped row: bump it whenever
the output for some page can change, so that corpora built by different versions can be told apart.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import lxml.etree

Element = lxml.etree._Element

EXTRACTOR_VERSION = "2"  # 2: the HTTP header's charset first; text/plain pages as text

__all__ = [
    "EXTRACTOR_VERSION",
    "Extracted",
    "codec_for",
    "decode_html",
    "extract",
    "extract_plain",
    "extract_text",
    "guess_language",
    "word_f1",
]


@dataclass(frozen=True)
class Extracted:
    """What a page yields: its title, its main text (blocks separated by blank lines) and a language guess."""

    title: str
    text: str
    language: str | None
    url: str | None = None
    encoding: str | None = None  # how bytes input was decoded; None for str input
    version: str = EXTRACTOR_VERSION

    @property
    def words(self) -> int:
        """Whitespace-separated words of the text: what length filters downstream look at."""
        return len(self.text.split())


# --------------------------------------------------------------------------------------------- decoding

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# What browsers actually use for these labels (WHATWG Encoding standard): pages labelled latin-1 are cp1252.
_CHARSET_ALIASES = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "us-ascii": "cp1252",
                    "ascii": "cp1252", "iso8859-1": "cp1252", "x-sjis": "shift_jis", "gb2312": "gb18030",
                    "gbk": "gb18030", "utf8": "utf-8", "unicode": "utf-8"}  # fmt: skip


def codec_for(label: bytes | str) -> str | None:
    """A Python codec name for a charset label, or None when Python does not know it."""
    name = (label.decode("ascii", "ignore") if isinstance(label, bytes) else label).strip().lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_html(data: bytes, charset: str | None = None) -> tuple[str, str]:
    """Decode a page's bytes; returns (text, codec used). ``charset``: the HTTP Content-Type header's.

    In the HTML Standard's order, a byte-order mark, then the header's charset, then a ``<meta>`` one; a declared
    charset is used when the bytes decode cleanly with it (pages often declare one thing and send another, so a
    declaration that fails is not trusted); then UTF-8; then charset-normalizer's guess; then the first
    declaration, or UTF-8, with replacement characters, which never fails.
    """
    for bom, name in _BOMS:
        if data.startswith(bom):
            return data.decode(name, "replace"), name
    match = _META_CHARSET.search(data[:8192])
    declarations = [codec_for(label) for label in (charset, match.group(1) if match else None) if label]
    # a UTF-16 label on bytes without NULs (ASCII-readable markup) is wrong: they are ASCII-compatible
    utf16 = b"\x00" in data[:256]
    declared = [c if utf16 or not c.startswith("utf-16") else "utf-8" for c in declarations if c]
    for codec in declared:
        try:
            return data.decode(codec), codec
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data[:200_000]).best()
        if best is not None and best.encoding:
            return data.decode(best.encoding, "replace"), codec_for(best.encoding) or best.encoding
    except Exception:  # detection is best effort: any failure falls through to UTF-8
        pass
    fallback = declared[0] if declared else "utf-8"
    return data.decode(fallback, "replace"), fallback


# --------------------------------------------------------------------------------------------- parsing

# Plain lxml.etree elements: lxml.html's custom element classes cost a lookup per node, and nothing here needs them.
# huge_tree lifts libxml2's nesting limit of 256, past which it silently drops the rest of the page.
_PARSER = lxml.etree.HTMLParser(remove_comments=True, remove_pis=True, recover=True, no_network=True, huge_tree=True)
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*>", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _parse(text: str) -> Element | None:
    """The page's root element, or None when there is nothing to parse."""
    text = _CONTROL.sub("", _XML_DECL.sub("", text, count=1))
    if not text.strip():
        return None
    try:
        root = lxml.etree.fromstring(text, parser=_PARSER)
    except (lxml.etree.LxmlError, ValueError, TypeError):
        return None
    return root if root is not None and isinstance(root.tag, str) else None


# --------------------------------------------------------------------------------------------- cleaning

# Elements that never hold article prose, with their content.
_DROP_TAGS = {"script", "style", "noscript", "template", "iframe", "svg", "canvas", "object", "embed", "video",
              "audio", "map", "button", "input", "select", "textarea", "label", "option", "nav", "aside",
              "footer", "dialog", "menu", "figcaption", "head", "link", "meta", "title"}  # fmt: skip
_DROP_ROLES = {"navigation", "banner", "contentinfo", "complementary", "menu", "menubar", "dialog", "alertdialog",
               "search", "toolbar", "tablist", "alert", "status"}  # fmt: skip
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)

# Class/id words that mark boilerplate. Strong ones are removed even next to a positive word
# ("article-comments", "post-share"); weak ones only when no positive word is present.
_STRONG_NEG = re.compile(
    r"comment|disqus|share|sharing|social|newsletter|subscri|cookie|consent|gdpr|related|recommend|outbrain|"
    r"taboola|sponsor|advert|promo|breadcrumb|paywall|signup|sign-up|login|popup|modal|most-?popular|trending|"
    r"read-?more|more-?stories|also-?read|jump-?link|skip-?link|print-?only|sr-only|visually-?hidden|"
    r"screen-?reader",
    re.IGNORECASE,
)
_WEAK_NEG = re.compile(
    r"sidebar|side-bar|widget|masthead|navbar|menu|footer|header|pagination|pager|toolbar|tooltip|banner|"
    r"gallery|slideshow|carousel|caption|credit|credits|byline|dateline|timestamp|author|bio|tag|tags|topics|"
    r"keywords|meta|rail|nav|ad|ads|adslot|adunit|dfp|video|podcast|rollover|popover|hovercard",
    re.IGNORECASE,
)
_POSITIVE = re.compile(
    r"article|body|content|entry|main|post|story|text|prose|blog|news|page|column|hentry|instapaper",
    re.IGNORECASE,
)
# Words of a class/id: split at punctuation and at camelCase humps ("InlineImage-embedCaption" -> ..., "Caption").
_HINT_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
# Whole class names that hide an element (CSS frameworks).
_HIDDEN_CLASSES = {"hidden", "d-none", "is-hidden", "hide", "invisible", "visuallyhidden"}


def _hints(el: Element) -> str:
    """The class and id of an element as one string."""
    return f"{el.get('class') or ''} {el.get('id') or ''}".strip()


@functools.lru_cache(maxsize=8192)
def _classify(hints: str) -> tuple[bool, bool, bool]:
    """(strong negative, weak negative, positive) for a class/id string; cached, since pages repeat classes.

    Weak words must match a whole word of a name: "ad" is a word of "ad-slot", not of "read" or "header".
    Framework classes that hide an element count as strong.
    """
    strong = bool(_STRONG_NEG.search(hints)) or any(tok.lower() in _HIDDEN_CLASSES for tok in hints.split())
    weak = any(_WEAK_NEG.fullmatch(word.lower()) for word in _HINT_WORDS.findall(hints))
    return strong, weak, bool(_POSITIVE.search(hints))


def _is_hidden(el: Element) -> bool:
    """Hidden by attribute or inline style: browsers do not show it, so it is not part of the article."""
    if el.get("hidden") is not None or el.get("aria-hidden") == "true":
        return True
    style = el.get("style")
    return bool(style and _HIDDEN_STYLE.search(style))


def _holds_article(el: Element) -> bool:
    """Whether an element wraps the article itself (so a boilerplate-sounding class must not remove it)."""
    if el.tag in ("body", "html", "main", "article") or el.get("itemprop") == "articleBody":
        return True
    for sub in el.iter("h1", "main", "article"):
        if sub is not el:
            return True
    return any(True for _ in el.iterfind('.//*[@itemprop="articleBody"]'))


def _much_prose(el: Element) -> bool:
    """Over 1,000 characters of text, under a third of it in links: more than captions and rails ever hold."""
    size = len(_text(el))
    return size > 1000 and _link_chars(el) < size / 3


def _clean(root: Element) -> None:
    """Remove (in place) everything that cannot be article text."""
    doomed = []
    for el in root.iter():
        tag = el.tag
        if not isinstance(tag, str):  # comments, processing instructions, entities
            doomed.append(el)
            continue
        tag = tag.lower()
        if tag in _DROP_TAGS:
            doomed.append(el)
            continue
        if tag in ("body", "html"):
            continue
        if _is_hidden(el) or (el.get("role") or "").lower() in _DROP_ROLES:
            doomed.append(el)
            continue
        if tag == "form" and sum(1 for _ in el.iter("p")) < 3:
            doomed.append(el)
            continue
        hints = _hints(el)
        if not hints:
            continue
        strong, weak, positive = _classify(hints)
        if weak and not strong and not positive and _much_prose(el):
            continue  # a caption or rail this long is a mislabelled wrapper (or broken nesting), not boilerplate
        if (strong or (weak and not positive)) and not _holds_article(el):
            doomed.append(el)
    for el in doomed:
        _drop(el)


def _drop(el: Element) -> None:
    """Remove an element and its content, keeping the text that follows it (its tail)."""
    parent = el.getparent()
    if parent is None:
        return
    tail = el.tail
    if tail and tail.strip():
        prev = el.getprevious()
        if prev is not None:
            prev.tail = (prev.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail
    parent.remove(el)


# --------------------------------------------------------------------------------------------- scoring

_BLOCK_TAGS = {"p", "div", "section", "article", "main", "header", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul",
               "ol", "dl", "dt", "dd", "blockquote", "pre", "table", "tr", "tbody", "thead", "tfoot", "caption",
               "figure", "hr", "body", "center", "address", "details", "summary", "hgroup", "fieldset",
               "form"}  # fmt: skip
_PARAGRAPH_TAGS = {"p", "pre", "td", "blockquote", "dd"}
_WS = re.compile(r"\s+")
_COMMAS = re.compile("[,\u060c\u3001\uff0c]")  # Latin, Arabic, ideographic and full-width commas


def _text(el: Element) -> str:
    """All text inside an element, whitespace collapsed."""
    return " ".join("".join(el.itertext()).split())


def _link_chars(el: Element) -> int:
    """Characters of text that sit inside links: menus and teaser lists are mostly links, prose is not."""
    return sum(len(_text(a)) for a in el.iter("a"))


def _own_text(el: Element) -> str:
    """Text directly in an element and its inline children, not in child blocks (a div used as a paragraph)."""
    parts = [el.text or ""]
    for child in el:
        tag = child.tag if isinstance(child.tag, str) else ""
        if tag not in _BLOCK_TAGS:
            parts.append("".join(child.itertext()))
        parts.append(child.tail or "")
    return " ".join("".join(parts).split())


def _class_weight(el: Element) -> float:
    """Prior from markup: schema.org articleBody and article-ish names up, boilerplate names down."""
    weight = 0.0
    if el.get("itemprop") == "articleBody":
        weight += 50
    hints = _hints(el)
    if hints:
        strong, weak, positive = _classify(hints)
        if positive:
            weight += 25
        if strong or weak:
            weight -= 25
    tag = el.tag
    if tag == "article":
        weight += 10
    elif tag in ("div", "section", "main"):
        weight += 5
    elif tag in ("td", "blockquote", "pre"):
        weight += 3
    elif tag in ("form", "ul", "ol", "dl"):
        weight -= 3
    return weight


def _paragraphs(body: Element) -> Iterator[tuple[Element, str]]:
    """Paragraph-like elements with their text: real paragraphs and divs that directly hold prose."""
    for el in body.iter():
        tag = el.tag
        if not isinstance(tag, str):
            continue
        if tag in _PARAGRAPH_TAGS:
            if tag == "td" and any(True for _ in el.iter("p", "div", "table")):
                continue  # a layout cell: its paragraphs score themselves
            text = _text(el)
        elif tag in ("div", "section", "article", "span", "font", "li"):
            text = _own_text(el)
        else:
            continue
        if len(text) >= 25:
            yield el, text


def _score_candidates(body: Element) -> dict[Element, float]:
    """Container scores: paragraph scores summed into ancestors (1, 1/2, then 1/(3*level)), then link-adjusted."""
    scores: dict[Element, float] = {}
    for para, text in _paragraphs(body):
        if para.tag == "li" and len(text) < 100:
            continue  # short list items are menus and teasers far more often than prose
        value = 1 + len(_COMMAS.findall(text)) + min(len(text) / 100, 3)
        node, level = para.getparent(), 0
        while node is not None and level < 5:
            if node not in scores:
                scores[node] = _class_weight(node)
            scores[node] += value / (1 if level == 0 else 2 if level == 1 else 3 * level)
            if node is body:
                break
            node, level = node.getparent(), level + 1
    for node in scores:
        total = len(_text(node))
        if total:
            scores[node] *= 1 - _link_chars(node) / total
    return scores


def _main_container(body: Element) -> list[Element]:
    """The best-scoring container, plus siblings that belong with it, in document order."""
    scores = _score_candidates(body)
    if not scores:
        return [body]
    top = max(scores, key=scores.__getitem__)
    best = scores[top]
    # A container whose parent scores nearly as well is a fragment of the article (the text is split into
    # several sibling divs by ads or images): climb to the parent.
    parent = top.getparent()
    while parent is not None and parent is not body.getparent() and scores.get(parent, 0) >= best * 0.95:
        top, best = parent, max(best, scores[parent])
        parent = top.getparent()
    if top.tag in ("body", "html"):
        return [top]
    parent = top.getparent()
    if parent is None:
        return [top]
    threshold = max(10.0, best * 0.2)
    kept = []
    top_hints = top.get("class") or ""
    for sib in parent:
        if sib is top:
            kept.append(sib)
            continue
        if not isinstance(sib.tag, str):
            continue
        score = scores.get(sib, 0.0)
        if top_hints and sib.get("class") == top_hints:
            score += best * 0.2  # same markup as the winner: a continuation of the same text
        if score >= threshold:
            kept.append(sib)
            continue
        if sib.tag == "p":
            text = _text(sib)
            density = _link_chars(sib) / len(text) if text else 1
            if (len(text) > 80 and density < 0.25) or (0 < len(text) <= 80 and density == 0 and _sentence(text)):
                kept.append(sib)
    return _with_continuations(body, kept, top, scores)


def _with_continuations(
    body: Element, kept: list[Element], top: Element, scores: dict[Element, float]
) -> list[Element]:
    """Add the other chunks of an article split across the page (ads or image rails between them).

    Such chunks carry the same tag and class as the winner, but sit under different parents, so sibling
    inclusion misses them. Only chunks that hold scored prose join, never ones inside or around kept parts.
    """
    klass = top.get("class")
    if not klass:
        return kept
    chunks = [el for el in body.iter(top.tag) if el.get("class") == klass and scores.get(el, 0.0) >= 5]
    if len(chunks) < 2:
        return kept
    taken = set(kept)
    extra = []
    for chunk in chunks:
        if chunk in taken:
            continue
        related = False
        for anc in chunk.iterancestors():
            if anc in taken:
                related = True
                break
        if not related and not any(chunk in set(k.iterancestors()) for k in kept):
            extra.append(chunk)
    if not extra:
        return kept
    order = {el: i for i, el in enumerate(body.iter())}
    return sorted(kept + extra, key=order.__getitem__)


def _sentence(text: str) -> bool:
    """Whether a line reads as prose: it ends like a sentence."""
    return text.rstrip().endswith((".", "!", "?", ".”", '."', "?”", "!”", ":", "。", "…", ")"))


# --------------------------------------------------------------------------------------------- rendering

_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
# Whole lines that are page furniture, not prose (matched only on short blocks, edge punctuation stripped).
_BOILERPLATE_LINE = re.compile(
    r"^(adverts?|advertisements?|sponsored|.{0,60}requires javascript.{0,60}|.{0,80}getty images|related|"
    r"related (articles?|stories|posts|content)|read more|read next|see also|more from .{0,40}|"
    r"share( this)?( article| story| post)?|share on .{0,20}|tweet|email|print|"
    r"click here.{0,60}|continue reading.{0,40}|subscribe.{0,60}|sign up.{0,60}|follow us.{0,60}|"
    r"(image|photo|picture|video)( credits?)?: .{0,80}|\u00a9.{0,80}|copyright .{0,80}|all rights reserved.*|"
    r"loading\.*|comments?|\d+ comments?|leave a (comment|reply)|skip to .{0,30}|back to top|"
    r"story continues below.{0,20}|article continues below.{0,20}|scroll to continue.{0,20}|"
    r"this (article|story) (was|is) (originally )?published.{0,120}|updated:? .{0,60}|posted:? .{0,60}|"
    r"published:? .{0,60}|by [^.!?]{0,60}|tags?:.*|filed under:?.*|topics?:.*)$",
    re.IGNORECASE,
)
_EDGE_PUNCT = " .:|-\u2013\u2014\u2022\u00b7"


@dataclass
class _Block:
    kind: str  # "p", "h", "li", "quote", "pre"
    text: str
    link_chars: int


def _layout_cell(cell: Element) -> bool:
    """A table cell used for page layout (it holds blocks or long text), not a cell of a data table."""
    return any(c.tag in _BLOCK_TAGS or c.tag == "br" for c in cell) or len(_text(cell)) > 150


class _Renderer:
    """Walks a container in document order and cuts its text into blocks at block-level tags.

    Table cells are inline (a row reads as one line) unless they hold blocks themselves (layout tables).
    """

    def __init__(self) -> None:
        self.blocks: list[_Block] = []
        self.parts: list[str] = []
        self.links = 0
        self.kind = "p"
        self.last_br = False  # the last thing seen was a <br>: a second one in a row ends the paragraph

    def flush(self) -> None:
        raw = "".join(self.parts)
        if self.kind == "pre":
            text = "\n".join(line.rstrip() for line in raw.strip("\n").splitlines()).strip("\n")
        else:
            lines = (" ".join(line.split()) for line in raw.split("\n"))
            text = "\n".join(line for line in lines if line)
        if text.strip():
            self.blocks.append(_Block(self.kind, text, self.links))
        self.parts, self.links, self.last_br = [], 0, False

    def add(self, text: str, kind: str, in_link: bool) -> None:
        if not self.parts:
            self.kind = kind
        if text.strip():
            self.last_br = False
        self.parts.append(text)
        if in_link:
            self.links += len(text.strip())

    def walk(self, el: Element, kind: str = "p", in_link: bool = False) -> None:
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag == "br":
            if self.last_br:
                self.flush()
            else:
                self.add("\n", kind, False)
                self.last_br = True
        else:
            block = tag in _BLOCK_TAGS or (tag in ("td", "th") and _layout_cell(el))
            inner = kind
            if block:
                self.flush()
                if tag in _HEADINGS:
                    inner = "h"
                elif tag in ("li", "dt", "dd") and kind != "quote":
                    inner = "li"
                elif tag == "blockquote":
                    inner = "quote"
                elif tag == "pre":
                    inner = "pre"
            elif tag in ("td", "th"):
                self.add(" ", kind, False)
            link = in_link or tag == "a"
            if el.text:
                self.add(el.text, inner, link)
            for child in el:
                self.walk(child, inner, link)
            if block:
                self.flush()
        if el.tail:
            self.add(el.tail, kind, in_link)


def _render(containers: list[Element]) -> list[_Block]:
    renderer = _Renderer()
    for container in containers:
        renderer.walk(container)
        renderer.flush()
    return renderer.blocks


def _keep(block: _Block) -> bool:
    """Whether a block is article text rather than a link list, a widget label or a stock phrase."""
    text = block.text
    size = len(text)
    density = block.link_chars / size if size else 1.0
    if density > 0.5 and not (block.kind == "p" and size > 300 and density < 0.7):
        return False
    if size < 120 and _BOILERPLATE_LINE.match(text.strip(_EDGE_PUNCT)):
        return False
    return not (block.kind == "li" and density > 0.3)


def _edge_noise(block: _Block) -> bool:
    """Short lines that frame an article (bylines, dates, kickers, tags): dropped at the start and end."""
    words = len(block.text.split())
    if block.kind == "h":
        return words <= 3 or not any(c.islower() for c in block.text)
    return words < 8 and not _sentence(block.text)


# Calls to action and contact lines that close articles ("Follow her on Twitter", "Sign up for our newsletter").
_PROMO = re.compile(
    r"subscribe|newsletter|sign up|signup|follow (us|him|her|me|them)|on (twitter|facebook|instagram)|"
    r"(can|may) be reached|contact (us|him|her|the author)|in your inbox|download (our|the) app|"
    r"all rights reserved|©|copyright \d{4}",
    re.IGNORECASE,
)


def _select(blocks: list[_Block], title: str) -> list[_Block]:
    """The blocks of the article proper: boilerplate lines out, framing lines and closing promos trimmed."""
    seen: set[str] = set()
    kept = []
    for block in blocks:
        if not _keep(block):
            continue
        if len(block.text) > 100:
            if block.text in seen:
                continue  # the same paragraph twice: a template repeating itself (pull quotes, mobile copies)
            seen.add(block.text)
        kept.append(block)
    blocks = kept
    norm_title = _WS.sub(" ", title).strip().lower()
    blocks = [b for b in blocks if not (b.kind == "h" and norm_title and b.text.lower() in norm_title)]
    while blocks and (_edge_noise(blocks[0]) or (blocks[0].kind == "h" and len(blocks) > 1 and blocks[1].kind == "h")):
        blocks.pop(0)
    for _ in range(3):  # trailing calls to action, at most three deep
        while blocks and (_edge_noise(blocks[-1]) or blocks[-1].kind == "h"):
            blocks.pop()
        if blocks and len(blocks[-1].text) < 250 and _PROMO.search(blocks[-1].text):
            blocks.pop()
    return blocks


def _join(blocks: list[_Block]) -> str:
    """Blocks separated by blank lines; consecutive list items one per line."""
    out: list[str] = []
    previous = ""
    for block in blocks:
        if out:
            out.append("\n" if block.kind == "li" and previous == "li" else "\n\n")
        out.append(block.text)
        previous = block.kind
    return "".join(out)


# --------------------------------------------------------------------------------------------- title

_TITLE_SEPARATOR = re.compile("\\s+[|\\-\u2013\u2014:\u00bb\u00b7]\\s+")


def _title(root: Element) -> str:
    """The page's headline: og:title, else the first h1 when <title> contains it, else <title> minus the site."""
    for meta in root.iter("meta"):
        if (meta.get("property") or meta.get("name") or "").lower() in ("og:title", "twitter:title"):
            content = _WS.sub(" ", meta.get("content") or "").strip()
            if content:
                return content
    title_el = root.find(".//title")
    title = _text(title_el) if title_el is not None else ""
    h1 = next((t for t in (_text(h) for h in root.iter("h1")) if t), "")
    if h1 and (not title or h1.lower() in title.lower()):
        return h1
    parts = _TITLE_SEPARATOR.split(title)
    if len(parts) > 1:
        return max(parts, key=len)
    return title


# --------------------------------------------------------------------------------------------- language

# Frequent function words per language, chosen to overlap little between the languages.
_STOPWORDS = {
    "en": "the of and to in is that for it with as was on be by this are not or have from at which but had "
    "has they you were their would been there will what when who more if about can said its we he she",
    "fr": "le la les des et est une dans que qui pour pas sur au aux du ce il elle sont avec plus par ont mais "
    "cette ou été nous vous leur ses son comme être fait tout",
    "de": "der die und das ist nicht zu den von mit sich des auf für im dem ein eine auch es an als wie bei "
    "oder nach wird aus sind einer hat noch werden wir sie ich",
    "es": "el la los las y en que del se por con una para es al lo como más pero sus le ha ya está son "
    "también fue muy sobre entre este esta cuando",
    "it": "il di che la e per un una non del della sono gli le da si con ha alla nel anche come più ma dei "
    "questo delle essere è ci sul nella",
    "pt": "o a os as de do da dos das e que em um uma para com não por no na se mais ao é foi como mas "
    "também são pelo pela nos seu sua isso",
    "nl": "de het een en van in is dat op te zijn met voor niet aan er ook als bij maar om door dan wordt "
    "nog uit werd naar heeft hij ze wij",
    "sv": "och att det som en på är av för med till den har de inte om ett men var jag sig från så kan "
    "eller vid när också",
    "id": "yang dan di dari ini itu untuk dengan tidak ada dalam akan pada juga ke karena oleh saya kita "
    "mereka atau sudah bisa lebih",
    "pl": "i w na się z nie do to że jest o jak po ale co tak przez dla od są jego może już tylko",
}
_STOPWORD_SETS = {lang: frozenset(words.split()) for lang, words in _STOPWORDS.items()}
_WORD = re.compile("[^\\W\\d_]+(?:['\u2019][^\\W\\d_]+)?")  # words, with English-style apostrophes
# Scripts that identify a language (or nearly) by themselves. Kana is checked before CJK ideographs, which
# Japanese uses too; Cyrillic is taken as Russian (by far the most frequent) unless Ukrainian letters show.
_SCRIPTS = (
    ("ja", re.compile(r"[\u3040-\u30ff]")),
    ("ko", re.compile(r"[\uac00-\ud7af]")),
    ("zh", re.compile(r"[\u4e00-\u9fff]")),
    ("ru", re.compile(r"[\u0400-\u04ff]")),
    ("ar", re.compile(r"[\u0600-\u06ff]")),
    ("he", re.compile(r"[\u0590-\u05ff]")),
    ("el", re.compile(r"[\u0370-\u03ff]")),
    ("th", re.compile(r"[\u0e00-\u0e7f]")),
    ("hi", re.compile(r"[\u0900-\u097f]")),
)
_LETTER = re.compile(r"[^\W\d_]")


def guess_language(text: str) -> str | None:
    """An ISO 639-1 guess from the writing system, then from the share of each language's function words.

    Good enough to tell English pages from others (WebText is English-only in practice), not a general
    language identifier: languages outside the small table, and short texts, come back as None.
    """
    sample = text[:10_000]
    letters = len(_LETTER.findall(sample))
    if letters < 20:
        return None
    counts = {lang: len(pattern.findall(sample)) for lang, pattern in _SCRIPTS}
    if counts["ja"] > 0.05 * letters:
        counts["ja"] += counts["zh"]
    script, count = max(counts.items(), key=lambda item: item[1])
    if count > 0.4 * letters:
        if script == "ru" and any(c in "іїєґІЇЄҐ" for c in sample):
            return "uk"
        return script
    words = [w.lower() for w in _WORD.findall(sample)]
    if len(words) < 5:
        return None
    freq = Counter(words)
    shares = sorted(
        ((sum(freq[w] for w in stops) / len(words), lang) for lang, stops in _STOPWORD_SETS.items()), reverse=True
    )
    (best, lang), (second, _) = shares[0], shares[1]
    if best < 0.08 or best < second * 1.3:
        return None
    return lang


# --------------------------------------------------------------------------------------------- public API


def extract(html: str | bytes, url: str | None = None, charset: str | None = None) -> Extracted:
    """Title, main text and language of a page (``charset``: the HTTP header's, for bytes). Never raises on bad
    input: it yields empty text instead."""
    encoding = None
    if isinstance(html, bytes):
        html, encoding = decode_html(html, charset)
    if not isinstance(html, str):
        return Extracted("", "", None, url, encoding)
    root = _parse(html)
    if root is None:
        return Extracted("", "", None, url, encoding)
    title = _title(root)
    try:
        text = _main_text(root, title)
    except RecursionError:  # absurdly deep nesting: the page's paragraphs, flat, are the best we can do
        text = "\n\n".join(t for t in (_text(p) for p in root.iter("p")) if len(t.split()) >= 8)
    if not _looks_like_text(text):
        text = ""
    language = guess_language(text or title)
    return Extracted(title, text, language, url, encoding)


def _main_text(root: Element, title: str) -> str:
    _clean(root)
    body = root.find("body")
    if body is None:
        body = root
    text = _join(_select(_render(_main_container(body)), title))
    if len(text) < 200:
        # The container may be wrong on pages with little prose: fall back to every paragraph of the page.
        fallback = _join(_select([b for b in _render([body]) if b.kind != "li"], title))
        if len(fallback) > 2 * len(text) + 100:
            text = fallback
    return text


def _looks_like_text(text: str) -> bool:
    """False for binary junk decoded as text: mostly non-letters, or riddled with replacement characters."""
    chars = len(text) - text.count(" ") - text.count("\n")
    if not chars:
        return False
    letters = len(_LETTER.findall(text))
    return letters >= 0.5 * chars and text.count("\ufffd") <= 0.02 * chars


def extract_plain(data: bytes, url: str | None = None, charset: str | None = None) -> Extracted:
    """A ``text/plain`` page: its text as sent, a paragraph per blank-line-separated block with its hard line
    breaks joined (there is no markup: a ``<`` is text, and no boilerplate can be told from content)."""
    text, encoding = decode_html(data, charset)
    blocks = (" ".join(block.split()) for block in _BLANK_LINES.split(_CONTROL.sub("", text)))
    text = "\n\n".join(b for b in blocks if b)
    if not _looks_like_text(text):
        text = ""
    return Extracted("", text, guess_language(text), url, encoding)


_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


def extract_text(html: str | bytes, url: str | None = None) -> str:
    """Just the main text of a page (``extract(...).text``)."""
    return extract(html, url).text


# --------------------------------------------------------------------------------------------- scoring helper

_SCORE_TOKEN = re.compile(r"\w+")


def word_f1(extracted: str, gold: str) -> tuple[float, float, float]:
    """(precision, recall, F1) of the bag of lower-cased word tokens, counts included: the usual way
    main-text extraction is scored against gold text. Both empty scores 1; one empty scores 0."""
    got = Counter(_SCORE_TOKEN.findall(extracted.lower()))
    want = Counter(_SCORE_TOKEN.findall(gold.lower()))
    if not got and not want:
        return 1.0, 1.0, 1.0
    common = sum((got & want).values())
    if not common:
        return 0.0, 0.0, 0.0
    precision = common / sum(got.values())
    recall = common / sum(want.values())
    return precision, recall, 2 * precision * recall / (precision + recall)
