"""Main-text extraction: gpt2cli's `extract_text` vs trafilatura vs readability-lxml on the same real pages.

The pages are ../shared/data/extraction-dev (45 news/blog articles with gold article text, from
scrapinghub/article-extraction-benchmark). Each extractor gets the same decoded page (UTF-8 str) and its URL:

* ours: `gpt2cli.scrape.extract.extract_text(html, url)`;
* trafilatura: `trafilatura.extract(html, url=url, include_comments=False, include_tables=True)`;
* readability: `readability.Document(html).summary(html_partial=True)`, then the text of that HTML
  (`lxml.html.fromstring(...).text_content()`).

Score per page: precision / recall / F1 of the bag of lower-cased word tokens (``\\w+``, counts included) of the
extracted text against the gold text (`gpt2cli.scrape.extract.word_f1`), then mean and median over pages.
Speed: pages/s over the whole set, best of ``--repeats`` passes, one process, decompression and decoding excluded.
A side that raises on a page scores 0 there and the error is counted.

Run from the repository root:

    .venv/bin/python benchmarks/bench_extract.py                 # all three, 3 speed repeats
    .venv/bin/python benchmarks/bench_extract.py --only ours --worst 10   # iterate on ours, list its worst pages
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "extraction-dev"
sys.path.insert(0, str(REPO / "src"))

from gpt2cli.scrape.extract import EXTRACTOR_VERSION, extract_text, word_f1  # noqa: E402

Extractor = Callable[[str, str], str]


def ours(html: str, url: str) -> str:
    return extract_text(html, url)


def trafilatura_side(html: str, url: str) -> str:
    import trafilatura

    return trafilatura.extract(html, url=url, include_comments=False, include_tables=True) or ""


def readability_side(html: str, url: str) -> str:
    import lxml.html
    from readability import Document

    summary = Document(html, url=url).summary(html_partial=True)
    return lxml.html.fromstring(summary).text_content() if summary.strip() else ""


SIDES: dict[str, Extractor] = {"ours": ours, "trafilatura": trafilatura_side, "readability": readability_side}


def load(data: Path) -> list[tuple[str, str, str, str]]:
    """(id, url, html, gold) for every page of the set."""
    truth = json.loads((data / "ground-truth.json").read_text(encoding="utf-8"))
    pages = []
    for page_id, item in sorted(truth.items()):
        html = gzip.decompress((data / "html" / f"{page_id}.html.gz").read_bytes()).decode("utf-8", "replace")
        pages.append((page_id, item.get("url", ""), html, item["articleBody"]))
    return pages


def run_side(fn: Extractor, pages: list[tuple[str, str, str, str]], repeats: int) -> dict:
    scores, errors, outputs = [], 0, []
    best = float("inf")
    for rep in range(repeats):
        start = time.perf_counter()
        for _, url, html, _ in pages:
            try:
                text = fn(html, url)
            except Exception:
                text = None
            if rep == 0:
                outputs.append(text)
        best = min(best, time.perf_counter() - start)
    for (_, _, _, gold), text in zip(pages, outputs, strict=True):
        if text is None:
            errors += 1
            text = ""
        scores.append(word_f1(text, gold))
    p, r, f = (list(col) for col in zip(*scores, strict=True))
    return {
        "f1_mean": statistics.mean(f), "f1_median": statistics.median(f),
        "precision_mean": statistics.mean(p), "precision_median": statistics.median(p),
        "recall_mean": statistics.mean(r), "recall_median": statistics.median(r),
        "pages_per_s": len(pages) / best, "errors": errors, "per_page": f, "per_page_pr": list(zip(p, r, strict=True)),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="extraction-dev folder (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per extractor; the best counts")
    parser.add_argument("--only", choices=sorted(SIDES), action="append", help="run only these extractors")
    parser.add_argument("--worst", type=int, default=0, help="also list ours' N worst pages")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if not (args.data / "ground-truth.json").exists():
        print(f"bench_extract: error: {args.data} has no ground-truth.json", file=sys.stderr)
        return 2
    pages = load(args.data)
    names = args.only or list(SIDES)
    results = {}
    for name in names:
        try:
            results[name] = run_side(SIDES[name], pages, args.repeats)
        except ImportError as e:
            print(f"bench_extract: skipping {name}: {e}", file=sys.stderr)
    if args.json:
        print(json.dumps({k: {m: v for m, v in r.items() if not m.startswith("per_page")} for k, r in results.items()}))
        return 0
    print(
        f"extraction-dev: {len(pages)} pages, python {platform.python_version()}, ours = extractor v{EXTRACTOR_VERSION}"
    )
    print(f"{'extractor':<12} {'F1 mean':>8} {'F1 med':>7} {'P mean':>7} {'R mean':>7} {'pages/s':>8} {'errors':>6}")
    for name, r in results.items():
        print(
            f"{name:<12} {r['f1_mean']:>8.3f} {r['f1_median']:>7.3f} {r['precision_mean']:>7.3f} "
            f"{r['recall_mean']:>7.3f} {r['pages_per_s']:>8.1f} {r['errors']:>6d}"
        )
    if "ours" in results:
        mine = results["ours"]
        for name, r in results.items():
            if name != "ours":
                print(
                    f"ours / {name}: F1 mean {mine['f1_mean'] / r['f1_mean']:.3f}x, "
                    f"speed {mine['pages_per_s'] / r['pages_per_s']:.2f}x"
                )
        if args.worst:
            ranked = sorted(zip(mine["per_page"], mine["per_page_pr"], pages, strict=True), key=lambda x: x[0])
            for f, (p, r), (page_id, url, _, _) in ranked[: args.worst]:
                print(f"  F1 {f:.3f} P {p:.3f} R {r:.3f}  {page_id[:12]}  {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
