"""Build the embedded Reddit sample: submission dumps in the real schema and a WARC of the linked pages.

    .venv/bin/python data/sample/build_reddit_sample.py        # rewrites data/sample/reddit/

Everything comes from text written for this project (data/sample/articles/, the short foreign-language
pieces below) or installed with Python (docstrings of the standard library and the language reference
topics of ``pydoc_data``, rendered as documentation pages). Output is deterministic for a given Python version:

- ``reddit/RS_2017-11.zst`` and ``reddit/RS_2018-01.zst``: NDJSON submissions compressed with zstd and a long
  window, like the Pushshift / Arctic Shift dumps;
- ``reddit/pages.warc.gz``: request and response records for the pages those links point to.

The sample holds every case the pipeline must handle: low-score, NSFW and self posts, media links, dead
links (404, 500, not archived), one URL in several spellings, exact and near-duplicate pages, Wikipedia
pages, non-English pages, boilerplate-heavy pages, malformed dump lines, and links after WebText's
December 2017 cut-off.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import importlib
import inspect
import io
import json
import random
import re
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).parent
OUT = HERE / "reddit"
WARC_DATE = "2018-02-01T00:00:00Z"
SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc_data", "lib2to3"}

FOREIGN = {
    "fr": (
        "Le marché couvert rouvre ses portes après deux ans de travaux",
        "https://journal-du-quai.example/ville/2017/11/marche-couvert-reouverture",
        [
            "Après deux années de chantier, le marché couvert de la place des Tilleuls a rouvert samedi matin. "
            "Dès sept heures, une longue file s'était formée devant les grilles, et les premiers clients sont "
            "repartis avec des paniers pleins de fromages, de pain et de légumes d'hiver.",
            "La mairie a profité des travaux pour refaire la toiture, qui laissait passer l'eau depuis des "
            "années, et pour installer un système de chauffage par le sol. « Nous voulions garder l'esprit du "
            "lieu tout en le rendant agréable toute l'année », explique l'adjointe chargée du commerce.",
            "Les commerçants, eux, sont partagés. Certains saluent des étals plus grands et mieux éclairés, "
            "d'autres regrettent des loyers qui ont augmenté de près de quinze pour cent. Une boulangère "
            "installée ici depuis trente ans résume : « C'est plus beau, mais il faudra que les clients "
            "reviennent vraiment, sinon nous ne tiendrons pas. »",
            "Le marché sera ouvert du mardi au dimanche, de sept heures à treize heures, et jusqu'à dix-neuf "
            "heures le vendredi. Une fête d'inauguration avec des concerts est prévue le mois prochain.",
        ],
    ),
    "es": (
        "La biblioteca del barrio estrena un club de lectura para adolescentes",
        "https://noticias-del-valle.example/cultura/2017/11/club-lectura-adolescentes",
        [
            "La biblioteca municipal del barrio de San Roque ha puesto en marcha un club de lectura dirigido a "
            "jóvenes de entre trece y diecisiete años. La primera reunión, celebrada el martes por la tarde, "
            "reunió a veintidós participantes, muchos más de los que esperaban los organizadores.",
            "La idea surgió de los propios usuarios. «Venían a estudiar todos los días y nos preguntaban qué "
            "podían leer después de los libros del instituto», cuenta la bibliotecaria responsable del "
            "proyecto. El club se reunirá cada dos semanas y los títulos se elegirán por votación.",
            "El primer libro escogido es una novela de aventuras ambientada en el mar, y la biblioteca ha "
            "comprado diez ejemplares más para que nadie tenga que esperar. Los participantes también podrán "
            "proponer películas relacionadas con las lecturas para una sesión de cine al final del trimestre.",
        ],
    ),
    "de": (
        "Neue Radwege entlang des Kanals sollen im Frühjahr fertig sein",
        "https://stadtanzeiger-nord.example/verkehr/2017/11/radwege-kanal",
        [
            "Die Bauarbeiten für den neuen Radweg entlang des alten Kanals kommen schneller voran als geplant. "
            "Nach Angaben der Stadtverwaltung sollen die ersten vier Kilometer bereits im April freigegeben "
            "werden, zwei Monate früher als ursprünglich angekündigt.",
            "Der Weg wird drei Meter breit und nachts beleuchtet. An zwei Stellen entstehen neue Brücken, damit "
            "Radfahrer die vielbefahrenen Straßen nicht mehr überqueren müssen. Anwohner hatten sich lange über "
            "gefährliche Kreuzungen beschwert.",
            "Kritik kommt von Anglern, die um ihre Plätze am Ufer fürchten. Die Stadt verspricht, drei neue "
            "Stege zu bauen und die bestehenden Zugänge zum Wasser zu erhalten.",
        ],
    ),
}


def read_article(path: Path) -> tuple[str, str, list[str]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    title = lines[0].removeprefix("Title: ").strip()
    url = lines[1].removeprefix("URL: ").strip()
    blocks = [b.strip("\n") for b in "\n".join(lines[3:]).split("\n\n") if b.strip()]
    return title, url, blocks


def block_html(block: str) -> str:
    """A paragraph, a heading followed by text, a list or a code sample, from one block of plain text."""
    lines = block.split("\n")
    out: list[str] = []
    items: list[str] = []
    code: list[str] = []

    def flush() -> None:
        if items:
            out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
            items.clear()
        if code:
            out.append("<pre><code>" + html.escape("\n".join(code)) + "</code></pre>")
            code.clear()

    for k, line in enumerate(lines):
        if line.startswith("    "):
            code.append(line[4:])
            continue
        if re.match(r"^(- |\* |\d+[.)] )", line):
            if code:
                flush()
            items.append(re.sub(r"^(- |\* |\d+[.)] )", "", line))
            continue
        flush()
        heading = k == 0 and len(lines) > 1 and len(line) < 70 and not line.endswith((".", ":", "?", "!"))
        out.append(f"<h2>{html.escape(line)}</h2>" if heading else f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def page_html(title: str, blocks: list[str], site: str, rng: random.Random, heavy: bool = False, lang: str = "en") -> str:
    """A web page around an article: navigation, cookie notice, share widget, related links, comments, footer."""
    nav = "".join(f'<li><a href="/{s.lower()}">{s}</a></li>' for s in ("News", "Sports", "Opinion", "Weather", "Contact"))
    if heavy:
        nav += "".join(f'<li><a href="/topic/{i}">Topic {i}</a></li>' for i in range(40))
    related = "".join(f'<li><a href="/story/{rng.randrange(10**6)}">Related story number {i + 1}</a></li>' for i in range(6))
    comments = ""
    if heavy:
        comments = "".join(
            f'<div class="comment"><span class="author">reader{i}</span><p>Great piece, thanks for sharing! '
            f"I have been following this for a while and point {i} is spot on.</p></div>"
            for i in range(12)
        )
    body = "\n".join(block_html(b) for b in blocks)
    cookie = (
        '<div class="cookie-banner" id="cookie-consent"><p>We use cookies to improve your experience. By using this '
        'site you accept our <a href="/privacy">privacy policy</a>.</p><button>Accept all</button></div>'
    )
    newsletter = (
        '<div class="newsletter-signup"><h3>Get our newsletter</h3><form><input type="email" placeholder="Email">'
        "<button>Subscribe</button></form></div>"
        if heavy
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="{lang}"><head><meta charset="utf-8"><title>{html.escape(title)} | {site}</title>
<script>window.dataLayer = window.dataLayer || []; function track(){{}}</script>
<style>body{{font-family:serif}} .cookie-banner{{position:fixed}}</style></head>
<body>{cookie}
<header class="site-header"><a class="logo" href="/">{site}</a><nav class="main-nav"><ul>{nav}</ul></nav></header>
<main><article class="post">
<h1 class="entry-title">{html.escape(title)}</h1>
<p class="byline">By Staff Writer · {rng.randint(2, 9)} min read</p>
<div class="entry-content">
{body}
</div>
<div class="share-buttons"><a href="#">Share on Facebook</a> <a href="#">Tweet</a> <a href="#">Email</a></div>
</article>
<aside class="sidebar"><h3>Most read</h3><ul>{related}</ul>{newsletter}</aside>
<section id="comments" class="comments"><h3>Comments</h3>{comments}</section>
</main>
<footer class="site-footer"><p>© 2017 {site}. All rights reserved.</p><a href="/about">About us</a> <a href="/ads">Advertise</a></footer>
</body></html>"""


def stdlib_pages(limit_chars: int) -> list[tuple[str, str, list[str]]]:
    """Documentation pages written from the docstrings of the standard library installed with Python."""
    pages: list[tuple[str, str, list[str]]] = []
    total = 0
    for name in sorted(m for m in sys.stdlib_module_names if not m.startswith("_") and m not in SKIP_MODULES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # platform-specific modules
            continue
        blocks = [p for p in (inspect.getdoc(module) or "").split("\n\n") if p.strip()]
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            paragraphs = [p for p in doc.split("\n\n") if p.strip()]
            blocks.append(attr + "\n" + paragraphs[0])
            blocks.extend(paragraphs[1:])
            if inspect.isclass(obj):
                for meth, fn in sorted(vars(obj).items()):
                    if not meth.startswith("_") and inspect.isfunction(fn) and (d := inspect.getdoc(fn)):
                        blocks.append(f"{attr}.{meth}\n" + d.replace("\n\n", "\n"))
        size = sum(map(len, blocks))
        if size < 300:
            continue
        summary = (inspect.getdoc(module) or name).split("\n")[0][:80]
        pages.append((f"{name} — {summary}", f"https://pyref-notes.example/3/library/{name}.html", blocks))
        total += size
        if total >= limit_chars:
            break
    return pages


def reference_pages() -> list[tuple[str, str, list[str]]]:
    """Pages of the language reference that ships with Python (pydoc_data.topics)."""
    from pydoc_data.topics import topics

    pages = []
    for name, text in sorted(topics.items()):
        lines = text.split("\n")
        title = lines[0].strip() or name
        body = "\n".join(line for line in lines[2:] if not set(line.strip()) <= {"*", "=", "-"})
        blocks = [b.strip("\n") for b in re.split(r"\n\s*\n", body) if b.strip()]
        blocks = [b if b.startswith("   ") else " ".join(b.split()) for b in blocks]  # reflow prose, keep code
        blocks = [("    " + b.strip().replace("\n", "\n    ")) if b.startswith("   ") else b for b in blocks]
        pages.append((title, f"https://pyref-notes.example/3/reference/{name}.html", blocks))
    return pages


def warc_records(pages: list[tuple[str, int, str, bytes]]) -> bytes:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=True)
    for url, status, content_type, body in pages:
        rid = hashlib.sha1(url.encode()).hexdigest()
        host = re.sub(r"^https?://([^/]+).*$", r"\1", url)
        request = writer.create_warc_record(
            url,
            "request",
            payload=io.BytesIO(b""),
            http_headers=StatusAndHeaders(f"GET {url} HTTP/1.1", [("Host", host), ("User-Agent", "gpt2cli-sample")],
                                          is_http_request=True),  # fmt: skip
            warc_headers_dict={"WARC-Date": WARC_DATE, "WARC-Record-ID": f"<urn:uuid:{rid[:8]}-{rid[8:12]}-0000-0000-{rid[12:24]}>"},
        )
        reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}[status]
        response = writer.create_warc_record(
            url,
            "response",
            payload=io.BytesIO(body),
            http_headers=StatusAndHeaders(f"{status} {reason}", [("Content-Type", content_type),
                                                                  ("Content-Length", str(len(body)))],
                                          protocol="HTTP/1.1"),  # fmt: skip
            warc_headers_dict={"WARC-Date": WARC_DATE, "WARC-Record-ID": f"<urn:uuid:{rid[:8]}-{rid[8:12]}-0001-0000-{rid[12:24]}>"},
        )
        writer.write_record(request)
        writer.write_record(response)
    return buffer.getvalue()


def submission(rng: random.Random, url: str, title: str, when: dt.datetime, **fields) -> dict:
    sid = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(6))
    subreddit = fields.pop("subreddit", rng.choice(["news", "technology", "science", "cooking", "sports", "history"]))
    host = re.sub(r"^https?://([^/:]+).*$", r"\1", url).lower()
    record = {
        "id": sid,
        "url": url,
        "title": title,
        "score": rng.randint(3, 400),
        "num_comments": rng.randint(0, 120),
        "created_utc": int(when.timestamp()),
        "retrieved_on": int(when.timestamp()) + 86400 * 30,
        "is_self": False,
        "over_18": False,
        "domain": host,
        "subreddit": subreddit,
        "subreddit_id": "t5_" + hashlib.sha1(subreddit.encode()).hexdigest()[:5],
        "permalink": f"/r/{subreddit}/comments/{sid}/",
        "author": f"user_{rng.randrange(10**5)}",
        "selftext": "",
    }
    record.update(fields)
    return record


def main() -> None:
    import zstandard

    rng = random.Random(2017)
    OUT.mkdir(exist_ok=True)
    articles = [read_article(p) for p in sorted((HERE / "articles").glob("*.txt"))]
    archived: list[tuple[str, int, str, bytes]] = []
    november: list[dict] = []
    january: list[dict] = []
    t0 = dt.datetime(2017, 11, 1, tzinfo=dt.timezone.utc)

    def when(month_start: dt.datetime = t0) -> dt.datetime:
        return month_start + dt.timedelta(seconds=rng.randrange(29 * 86400))

    def archive(url: str, title: str, blocks: list[str], heavy: bool = False, lang: str = "en") -> None:
        site = re.sub(r"^https?://([^/]+).*$", r"\1", url)
        archived.append((url, 200, "text/html; charset=utf-8", page_html(title, blocks, site, rng, heavy, lang).encode()))

    # Articles: most linked once or twice; four of them only by low-score submissions; the last three are
    # posted after WebText's cut-off (January 2018 dump).
    for k, (title, url, blocks) in enumerate(articles):
        archive(url, title, blocks, heavy=k % 5 == 0)
        if k == 2:
            continue  # linked only through the five spellings below
        if k in (5, 11, 19, 27):
            november.append(submission(rng, url, title, when(), score=rng.randint(0, 2)))  # low score
        elif k >= len(articles) - 3:
            january.append(submission(rng, url, title, when(dt.datetime(2018, 1, 1, tzinfo=dt.timezone.utc))))
        else:
            for _ in range(1 + k % 2):
                november.append(submission(rng, url, title, when()))
    # One URL in several spellings, each with score 1: only the sum over spellings passes the threshold.
    title, url, _ = articles[2]
    host = re.sub(r"^https://([^/]+)/.*$", r"\1", url)
    for spelling in (url.replace(host, host.upper()), url + "/", url + "?utm_source=reddit&utm_medium=social",
                     url + "#comments", url.replace(host, host + ":443")):  # fmt: skip
        november.append(submission(rng, spelling, title, when(), score=1))
    # Exact duplicate (a mirror serving the same page) and a near duplicate (syndicated, edited a little).
    title, url, blocks = articles[1]
    mirror = "https://mirror-news.example/syndication/" + url.rsplit("/", 1)[-1]
    archived.append((mirror, 200, "text/html; charset=utf-8", next(b for u, _, _, b in archived if u == url)))
    november.append(submission(rng, mirror, title, when()))
    title, url, blocks = articles[0]
    near = "https://regional-wire.example/stories/" + url.rsplit("/", 1)[-1]
    edited = blocks[:-1] + [blocks[-1].replace(".", ", according to the regional wire.", 1)]
    archive(near, title, edited)
    november.append(submission(rng, near, title, when()))
    # Non-English pages.
    for lang, (title, url, paragraphs) in FOREIGN.items():
        archive(url, title, paragraphs, lang=lang)
        november.append(submission(rng, url, title, when(), subreddit="europe"))
    # Wikipedia pages (the dedupe stage removes them) written from standard-library docstrings.
    docs = stdlib_pages(limit_chars=1_500_000)
    for title, _, blocks in docs[:2]:
        name = title.split(" ")[0]
        wiki = f"https://en.wikipedia.org/wiki/{name.capitalize()}_(Python_module)"
        archive(wiki, title, blocks[:12])
        november.append(submission(rng, wiki, title, when(), subreddit="learnpython"))
    # Documentation pages: the bulk of the sample's text.
    for title, url, blocks in docs[2:] + reference_pages():
        archive(url, title, blocks, heavy=rng.random() < 0.2)
        november.append(submission(rng, url, title, when(), subreddit="Python"))
    # Links that the filters drop: NSFW, self posts, media, a blocked subreddit.
    title, url, _ = articles[3]
    november.append(submission(rng, url + "?nsfw", "Not safe for work", when(), over_18=True))
    for _ in range(3):
        sid_text = "Asking the community for advice about a garden shed"
        rec = submission(rng, "", sid_text, when(), is_self=True, selftext="Long text post body.", domain="self.askreddit")
        rec["url"] = "https://www.reddit.com" + rec["permalink"]
        november.append(rec)
    for media in ("https://i.imgur.com/a1B2c3D.jpg", "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
                  "https://files.harbor-gazette.example/reports/budget-2017.pdf", "https://v.redd.it/abc123"):  # fmt: skip
        november.append(submission(rng, media, "A picture, a video or a document", when(), subreddit="pics"))
    # Dead links: archived errors, and one that was never archived.
    for status, url in ((404, "https://harbor-gazette.example/2017/11/moved-story"),
                        (500, "https://valleytimes.example/broken/page")):  # fmt: skip
        archived.append((url, status, "text/html", f"<html><body><h1>{status}</h1></body></html>".encode()))
        november.append(submission(rng, url, "A story that is gone", when()))
    november.append(submission(rng, "https://gone-forever.example/never/archived", "Never archived", when()))
    rng.shuffle(november)
    # Malformed records, as real dumps have: broken JSON, a string where a number should be, a null url.
    lines = [json.dumps(r, ensure_ascii=False) for r in november]
    lines.insert(7, '{"id": "broken", "url": "https://harbor-gazette.example/x", "score": ')
    lines.insert(20, json.dumps({**november[0], "id": "strnum", "score": str(november[0]["score"])}))
    lines.insert(30, json.dumps({**november[1], "id": "nullurl", "url": None}))

    def zst(records: list[str]) -> bytes:
        params = zstandard.ZstdCompressionParameters.from_level(19, window_log=27)  # a long window, as real dumps
        return zstandard.ZstdCompressor(compression_params=params).compress(("\n".join(records) + "\n").encode())

    (OUT / "RS_2017-11.zst").write_bytes(zst(lines))
    (OUT / "RS_2018-01.zst").write_bytes(zst([json.dumps(r, ensure_ascii=False) for r in january]))
    (OUT / "pages.warc.gz").write_bytes(warc_records(archived))
    text_chars = sum(len(b) for _, _, _, b in archived)
    print(f"{len(november)} + {len(january)} submissions, {len(archived)} archived responses, "
          f"{text_chars:,} bytes of HTML, Python {sys.version.split()[0]}")  # fmt: skip


if __name__ == "__main__":
    main()
