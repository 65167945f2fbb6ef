"""The `gpt2 scrape-reddit` stage: Reddit links -> filtered, deduplicated URLs -> pages -> main text.

Crawl state lives next to the artifacts, in ``$GPT2_HOME/raw-docs/.crawl/``: the SQLite frontier (every URL
with its status, attempts, error, archive location) and the WARC files of raw responses. It outlives any
single run, so a killed run continues where it stopped and a later run with new links fetches only the
URLs never fetched before. A published `raw-docs` version holds the documents of the links this run
collected (fetched now or earlier) and names the previous version as its parent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gpt2cli.artifacts import Artifact, Draft, Published, Store, check_regular_file, distinct_files, file_input
from gpt2cli.console import progress
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.iterutil import batched
from gpt2cli.scrape.extract import EXTRACTOR_VERSION, extract, extract_plain
from gpt2cli.scrape.fetch import (
    FetchConfig,
    Fetcher,
    FetchResult,
    RedirectChain,
    RedirectError,
    accepted_type,
    failed_status,
    split_content_type,
    wire_url,
)
from gpt2cli.scrape.filters import Link, LinkFilters, collect_links
from gpt2cli.scrape.frontier import Frontier
from gpt2cli.scrape.sources import TIME_FILTERS, RedditAPI, Submission, dump_files, iter_dumps, read_url_list
from gpt2cli.scrape.urls import host_of, normalize_url
from gpt2cli.scrape.warc import (
    ArchivedResponse,
    WarcArchive,
    complete_length,
    iter_responses,
    read_record_at,
    unreadable_reason,
)

log = logging.getLogger(__name__)

DOCUMENTS = "documents.parquet"
FRONTIER = "frontier.sqlite"
# Part of a version's identity: bump it when the same inputs and options give other documents, so a version an
# older release made is rebuilt rather than reused. 2: dumps' escaped URLs undone, replays judged as live fetches.
SCRAPE_RULES_VERSION = 2
# A page that failed in a way that may pass (timeouts, 5xx, robots.txt unreachable) is tried again by later runs,
# 10 minutes after the first, then 20, 40, ... (or its Retry-After), and failed for good after this many runs.
MAX_RUNS_PER_URL = 8
RETRY_BASE_S = 600.0
RETRY_DUE = "retry_due_at"  # summary key: when the version's earliest pending link may be tried again
UNREADABLE = "warc_unreadable"  # why a page fetched and archived is pending again, or failed


@dataclass(frozen=True)
class LinkSources:
    dumps: tuple[Path, ...] = ()
    subreddits: tuple[str, ...] = ()
    url_files: tuple[Path, ...] = ()
    replays: tuple[Path, ...] = ()
    api_sort: str = "top"
    api_time_filter: str = "all"
    api_limit: int | None = None
    user_agent: str = "gpt2cli/0.1 (WebText-style link collection; https://example.invalid/gpt2cli)"

    def validate(self) -> None:
        if not (self.dumps or self.subreddits or self.url_files):
            raise UsageError("no link source: give --dump, --subreddit or --urls (and --replay to fetch from a WARC)")
        for option, paths in (("--dump", self.dumps), ("--urls", self.url_files), ("--replay", self.replays)):
            for path in map(Path, paths):
                if not path.is_dir():
                    check_regular_file(path, option)
        for path in self.replays:
            if (problem := unreadable_reason(Path(path))) is not None:
                raise UsageError(f"--replay {path}: {problem}")
        if self.api_sort not in ("top", "new"):
            raise UsageError(f"--sort must be top or new, got {self.api_sort!r}")
        if self.api_time_filter not in TIME_FILTERS:  # checked with or without --subreddit: a typo is a typo
            raise UsageError(f"--time-filter must be one of {', '.join(TIME_FILTERS)}, got {self.api_time_filter!r}")
        if self.api_limit is not None and self.api_limit < 1:
            raise UsageError(f"--limit must be at least 1, got {self.api_limit}")


def _submissions(sources: LinkSources, stats: Counter[str]) -> Iterator[Submission]:
    yield from iter_dumps([Path(p) for p in sources.dumps], stats)
    for path in sources.url_files:
        yield from read_url_list(Path(path), stats)
    if sources.subreddits:
        api = RedditAPI(user_agent=sources.user_agent)
        for name in sources.subreddits:
            yield from api.listing(name, sources.api_sort, sources.api_time_filter, sources.api_limit)


def _input_files(sources: LinkSources) -> list[Path]:
    """The files the run reads, once each: a dump folder's submission dumps, not the notes or WARCs beside them."""
    return distinct_files([*dump_files(sources.dumps), *map(Path, sources.url_files), *map(Path, sources.replays)])


def scrape_reddit(
    store: Store,
    *,
    sources: LinkSources,
    filters: LinkFilters,
    fetch: FetchConfig,
    force: bool = False,
    wait: bool = False,
) -> Published:
    sources.validate()
    fetch.validate()
    # the files checksummed here are the ones the build reads: a folder's dumps listed once (not newer arrivals),
    # and each file by the path it resolved to (not what a symlink swapped meanwhile names)
    resolved = {name: tuple(Path(p).resolve() for p in files)
                for name, files in (("dumps", dump_files(sources.dumps)), ("url_files", sources.url_files),
                                    ("replays", sources.replays))}  # fmt: skip
    listed = replace(sources, **resolved)
    inputs = [file_input(p) for p in _input_files(listed)]
    # absolute: the same files named another way (./data, /srv/data) are the same build
    paths = {
        name: [str(Path(p).resolve()) for p in getattr(sources, name)] for name in ("dumps", "url_files", "replays")
    }
    params: dict[str, Any] = {
        "sources": {**asdict(sources), **paths},
        "filters": asdict(filters),
        "fetch": asdict(fetch),
        "extractor_version": EXTRACTOR_VERSION,
        "rules_version": SCRAPE_RULES_VERSION,
    }
    if sources.subreddits:
        params["pulled_at"] = dt.datetime.now(dt.timezone.utc).isoformat()  # API listings change: never reuse

    drafts: list[str] = []

    def build(draft: Draft) -> dict[str, Any]:
        drafts.append(draft.dir.name)
        return _build(store, draft, listed, filters, fetch)

    with store.lock("raw-docs", wait=wait):  # the version this one follows is the newest once this run holds the lock
        published = store.produce("raw-docs", params=params, inputs=inputs, build=build, force=force, wait=wait,
                                  parent=store.latest("raw-docs"), stale=_retries_due)  # fmt: skip
        if drafts:  # published: the links it added are counted; a rebuild (--force, retries due) adds anew
            with Frontier(_crawl_dir(store) / FRONTIER) as frontier:
                frontier.forget_build(drafts[-1])
        return published


def _crawl_dir(store: Store) -> Path:
    """The crawl every scrape of this home continues: its frontier and its WARC archive."""
    return store.home / "raw-docs" / ".crawl"


def _retries_due(existing: Artifact) -> str | None:
    """Why a version built from the same inputs is not the answer: links it left pending may be tried now."""
    due = existing.summary.get(RETRY_DUE)
    if due is None or dt.datetime.fromisoformat(due.replace("Z", "+00:00")).timestamp() > time.time():
        return None
    return f"{existing.summary.get('links_pending', 'some')} of its links are due for another try"


def _build(
    store: Store, draft: Draft, sources: LinkSources, filters: LinkFilters, fetch: FetchConfig
) -> dict[str, Any]:
    out = draft.dir
    stats: Counter[str] = Counter()
    draft.inputs_read([p for p in (*sources.dumps, *sources.url_files) if not p.is_file()])  # removed since listed
    links = collect_links(_submissions(sources, stats), filters, stats)
    draft.inputs_read([*sources.dumps, *sources.url_files])  # a URL list appended to during a long crawl is fine
    log.info("%d links kept of %d submissions", len(links), stats["submissions_seen"])
    crawl = _crawl_dir(store)
    crawl.mkdir(parents=True, exist_ok=True)
    with Frontier(crawl / FRONTIER) as frontier:
        added = ((url, link.original_url, _link_meta(link)) for url, link in links.items())
        stats["links_new"] = frontier.add(added, build=out.name)  # the draft's name: the build's fingerprint
        if sources.replays:
            documents = _replay(frontier, [Path(p) for p in sources.replays], links, fetch, stats)
        else:
            frontier.requeue("not_archived")  # a replay's verdict; the live web may well have the page
            frontier.reopen()  # pages a replay supplied from an archive that is not this crawl's
            stats["warc_lost"] += _reopen_lost(frontier, crawl / "warc")
            archive = WarcArchive(crawl / "warc", prefix="crawl", committed=frontier.warc_committed_ends())
            try:
                _crawl(frontier, archive, Fetcher(fetch), links, stats)
            finally:
                archive.close()
            documents = _archived_documents(frontier, crawl / "warc", links, stats)
        n_docs = _write_parquet(out / DOCUMENTS, documents)
        counts, tally, due = frontier.counts(), frontier.tally(links), frontier.next_due(links)
        if not n_docs:
            raise Gpt2Error(f"no document was extracted: {_why_no_documents(stats, tally)}")
    stats["documents"] = n_docs
    summary: dict[str, Any] = dict(sorted(stats.items()))
    summary.update({f"frontier_{k}": v for k, v in counts.items()})  # the whole crawl's, every run's links
    summary.update({k: v for k, v in sorted(tally.items()) if k.startswith("failed_")})  # this run's links
    summary["links_pending"] = tally["pending"]
    if due is not None and not sources.replays:  # a replay of the same archives would find the same failures
        summary[RETRY_DUE] = _iso(due)
    return summary


def _why_no_documents(stats: Counter[str], tally: Counter[str]) -> str:
    """The counts that explain an empty result, for its one-line error (no summary is printed then)."""
    malformed = sum(stats[k] for k in ("bad_json", "not_object", "missing_url", "bad_unicode"))
    notes = [f"{malformed} malformed records skipped"] if malformed else []
    for key, damage in (("corrupt_files", "corrupt"), ("truncated_files", "truncated")):
        if stats[key]:
            notes.append(f"{stats[key]} dump file{'s' if stats[key] > 1 else ''} {damage}, read up to the damage")
    filtered = _reasons(stats, "filtered")
    parts = [f"{stats['submissions_seen']} submissions" + (f" ({'; '.join(notes)})" if notes else "")]
    parts.append(f"{sum(filtered.values())} filtered out" + (f" ({_top(filtered)})" if filtered else ""))
    parts.append(f"{stats['links_kept']} links kept")
    if stats["links_kept"]:
        parts.append(
            f"{tally['done']} fetched" + (f" ({stats['empty_text']} without text)" if stats["empty_text"] else "")
        )
        for status, why in (("failed", ""), ("pending", ", to retry in a later run")):
            reasons = _reasons(tally, status)
            parts.append(f"{tally[status]} {status}" + (f" ({_top(reasons)}{why})" if reasons else ""))
    return "; ".join(parts)


def _reasons(counts: Counter[str], prefix: str) -> Counter[str]:
    return Counter({k.removeprefix(f"{prefix}_"): n for k, n in counts.items() if k.startswith(f"{prefix}_") and n})


def _top(counts: Counter[str], n: int = 4) -> str:
    """The `n` commonest reasons and their counts, "and K more" for the rest."""
    shown = ", ".join(f"{reason} {count}" for reason, count in counts.most_common(n))
    return shown + (f", and {len(counts) - n} more" if len(counts) > n else "")


def _link_meta(link: Link) -> dict[str, Any]:
    return {"score": link.score, "ids": list(link.submission_ids), "subreddits": list(link.subreddits)}


def _crawl(
    frontier: Frontier, archive: WarcArchive, fetcher: Fetcher, links: dict[str, Link], stats: Counter[str]
) -> None:
    """Fetch this run's pending links; each success is in the WARC (fsynced) before the frontier says done."""
    pending = frontier.claim(len(links), time.time(), among=links)
    if not pending:
        return
    by_requested = {row.original_url: row for row in pending}
    with progress("fetching", total=len(pending), unit="pages") as bar:

        def on_result(result: FetchResult) -> None:
            row = by_requested.get(result.url)
            url = row.url if row else normalize_url(result.url) or result.url
            bar.advance()
            if not result.ok:
                stats[f"fetch_{result.error}"] += 1
                _mark_failed(frontier, url, result)
                return
            body = result.body or b""
            where = archive.write_response(
                url=result.final_url or result.url,
                status=result.status or 200,
                reason=result.reason,
                headers=result.headers,
                body=body,
                request_headers=result.request_headers,
                requested_url=wire_url(result.url),
                protocol=result.protocol,
            )
            frontier.mark_done(
                url,
                fetched_at=_iso(result.fetched_at),
                http_status=result.status,
                final_url=result.final_url or result.url,
                content_type=result.content_type,
                content_sha256=hashlib.sha256(body).hexdigest(),
                warc_file=where.file,
                warc_offset=where.offset,
                warc_length=where.length,
            )
            stats["fetched"] += 1

        fetcher.fetch_many([row.original_url for row in pending], on_result)


def _mark_failed(frontier: Frontier, url: str, result: FetchResult) -> None:
    """Record a failed fetch, live or replayed: one that may pass is tried by later runs, 10 minutes after the
    failing answer came, then 20, 40, ... (or its Retry-After), until MAX_RUNS_PER_URL runs have tried it."""
    row = frontier.get(url)
    runs = (row.attempts if row else 0) + 1  # runs that have tried it, this one included
    retry_at = None
    if result.retryable and runs < MAX_RUNS_PER_URL:
        retry_at = result.fetched_at + max(result.retry_after or 0.0, RETRY_BASE_S * 2 ** (runs - 1))
    frontier.mark_failed(url, result.error or "unknown", retry_at)


def _reopen_lost(frontier: Frontier, warc_dir: Path) -> int:
    """Put back to pending the pages whose records a crawl WARC lost (the file cut short or gone: a disk fault, a
    bad copy), before anything is appended: a new record would take their offsets, and be read back as theirs.
    The file is then cut after its last complete record, and those pages are fetched again."""
    lost: list[str] = []
    for name, end in frontier.warc_committed_ends().items():
        path = warc_dir / name
        size = path.stat().st_size if path.exists() else 0
        if size < end:
            intact = complete_length(path) if path.exists() else 0
            log.warning("%s lost records past byte %d (%d bytes of %d committed): fetching them again",
                        path, intact, size, end)  # fmt: skip
            lost += frontier.done_beyond(name, intact)
    return frontier.reopen(lost)


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _replay(
    frontier: Frontier, warcs: list[Path], links: dict[str, Link], fetch: FetchConfig, stats: Counter[str]
) -> Iterator[dict[str, Any]]:
    """Pages from archived responses instead of the network (the embedded sample, re-extraction), by the live
    fetch's rules: redirects followed within the archives, accepted content types only, and a failure that may
    pass left pending for a live run, scheduled from when the archived answer came."""
    warc_stats: Counter[str] = Counter()
    archived = _archive_index(warcs, links.keys(), fetch.max_redirects, warc_stats)
    stats["warc_errors"] += warc_stats.get("errors", 0)
    for url in [u for u in archived.normalized if u in links] + [u for u in links if u not in archived.normalized]:
        result, response = _archived_fetch(archived, url, fetch)
        if not result.ok or response is None:
            stats[f"replay_{result.error}"] += 1
            _mark_failed(frontier, url, result)
            continue
        frontier.mark_done(
            url,
            fetched_at=response.date,
            http_status=response.status,
            final_url=response.url,
            content_type=response.content_type,
            content_sha256=hashlib.sha256(response.body).hexdigest(),
            warc_file=str(Path(response.warc_file).resolve()) if response.warc_file else None,
            warc_offset=response.offset,
        )
        stats["replayed"] += 1
        if (doc := _document(links[url], response.url, response.status, response.content_type, response.date,
                             response.body, stats)) is not None:  # fmt: skip
            yield doc


@dataclass
class _ArchiveIndex:
    """Where the first archived response lies for each URL a replay looks for: the links and the redirect targets
    their chains reach. Every record found is listed under its URLs normalized (how links are matched, and the
    fallback for a target the archive spells otherwise: ``https://host`` recorded as ``https://host/``) and exact
    (how a target is matched first: ``/dir`` redirecting to ``/dir/`` is one normalized URL, but two records)."""

    normalized: dict[str, tuple[Path, int]]
    exact: dict[str, tuple[Path, int]]

    def add(self, response: ArchivedResponse, where: tuple[Path, int]) -> None:
        for url in (response.requested_url, response.url):
            if url is not None:
                self.exact.setdefault(wire_url(url), where)
                if (normalized := normalize_url(url)) is not None:
                    self.normalized.setdefault(normalized, where)

    def target(self, url: str, visited: Collection[tuple[Path, int]]) -> tuple[Path, int] | None:
        """A redirect target's record: the exact URL's, else the normalized one's, never one the chain visited."""
        for where in (self.exact.get(url), self.normalized.get(normalize_url(url) or url)):
            if where is not None and where not in visited:
                return where
        return None


def _archive_index(warcs: list[Path], links: Collection[str], max_redirects: int, stats: Counter[str]) -> _ArchiveIndex:
    """One pass over the archives, then one more per hop while redirects lead to URLs not yet found, each indexing
    only the records it looks for: an index of every record of a large archive would not fit in memory."""
    found = _ArchiveIndex({}, {})
    files: dict[str, Path] = {}
    wanted_normalized, wanted_exact, searched = set(links), set[str](), set[str]()
    for hop in range(max_redirects + 1):
        targets: set[str] = set()
        for response in iter_responses(warcs, stats if hop == 0 else Counter()):  # damage counted once
            if response.warc_file is None or response.offset is None:
                continue
            urls = [u for u in (response.requested_url, response.url) if u is not None]
            if not any(normalize_url(u) in wanted_normalized or (wanted_exact and wire_url(u) in wanted_exact)
                       for u in urls):  # fmt: skip
                continue
            where = (files.setdefault(response.warc_file, Path(response.warc_file)), response.offset)
            found.add(response, where)
            if (target := _redirect_target(response, max_redirects)) is not None:
                targets.add(target)
        searched |= wanted_exact
        wanted_exact = targets - found.exact.keys() - searched
        wanted_normalized = {n for t in wanted_exact if (n := normalize_url(t)) is not None} - found.normalized.keys()
        if not wanted_exact:
            break
    return found


def _redirect_target(response: ArchivedResponse, max_redirects: int) -> str | None:
    """The exact URL an archived redirect points to; None for a page, or for a redirect to itself."""
    try:
        return RedirectChain(response.url, max_redirects).follow(response.status, response.header("Location"))
    except RedirectError:
        return None


def _archived_fetch(
    archived: _ArchiveIndex, url: str, fetch: FetchConfig
) -> tuple[FetchResult, ArchivedResponse | None]:
    """What a live fetch of ``url`` gives, from the archives: redirects followed within them ("not_archived" when
    they lack a URL of the chain), the same rules for the final answer, and the archived answer it ended at."""
    result = FetchResult(url=url, error="not_archived", fetched_at=time.time())
    chain: RedirectChain | None = None
    target: str | None = url
    visited: list[tuple[Path, int] | None] = []
    while target is not None:
        where = archived.target(target, visited) if chain else archived.normalized.get(normalize_url(target) or target)
        visited.append(where)
        response = _read_archived(where)
        if response is None:
            return result, None
        chain = chain or RedirectChain(response.url, fetch.max_redirects)
        result.final_url, result.status, result.content_type = response.url, response.status, response.content_type
        result.fetched_at = _timestamp(response.date) or result.fetched_at
        try:
            target = chain.follow(response.status, response.header("Location"))
        except RedirectError as e:
            result.error = e.key
            return result, response
    if (failure := failed_status(response.status, response.header("Retry-After"), result.fetched_at)) is not None:
        result.error, result.retryable, result.retry_after = failure
    elif not accepted_type(split_content_type(response.content_type)[0], response.body, fetch.accepted_types):
        result.error = "not_html"
    else:
        result.error, result.body = None, response.body
    return result, response


def _read_archived(where: tuple[Path, int] | None) -> ArchivedResponse | None:
    """The record at ``where`` (file, offset), None when there is none (or it cannot be read back)."""
    if where is None:
        return None
    try:
        return read_record_at(*where)
    except (OSError, ValueError):
        return None


def _timestamp(date: str | None) -> float | None:
    """Seconds since the epoch of a WARC-Date (ISO 8601, UTC), None when absent or unreadable."""
    try:
        return dt.datetime.fromisoformat((date or "").replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _archived_documents(
    frontier: Frontier, warc_dir: Path, links: dict[str, Link], stats: Counter[str]
) -> Iterator[dict[str, Any]]:
    """This run's pages from the crawl's WARCs; a record that cannot be read back goes back to pending, and is failed
    for good once MAX_RUNS_PER_URL runs have fetched it (a record no run can read back is not fetched forever)."""
    damaged: list[str] = []
    unreadable: list[str] = []
    for row in frontier.done_rows():
        link = links.get(row.url)
        if link is None or row.warc_file is None or row.warc_offset is None or row.warc_length is None:
            continue
        try:
            response = read_record_at(warc_dir / row.warc_file, row.warc_offset, row.warc_length)
        except (OSError, ValueError) as e:  # the crawl's WARC lost or damaged: the next run fetches it again
            given_up = row.attempts >= MAX_RUNS_PER_URL
            then = f"failed after {row.attempts} fetches" if given_up else "it is fetched again in the next run"
            log.warning("%s: archived record unreadable (%s); %s", row.url, e, then)
            (unreadable if given_up else damaged).append(row.url)
            continue
        doc = _document(link, row.final_url or row.url, row.http_status, response.content_type, row.fetched_at,
                        response.body, stats)  # fmt: skip
        if doc is not None:
            yield doc
    stats["warc_damaged"] += frontier.reopen(damaged, error=UNREADABLE)
    stats["warc_damaged"] += frontier.reopen(unreadable, error=UNREADABLE, for_good=True)


def _document(link: Link, final_url: str, status: int | None, content_type: str | None, fetched_at: str | None,
              body: bytes, stats: Counter[str]) -> dict[str, Any] | None:  # fmt: skip
    """The row of one archived page; ``content_type``: the response's Content-Type header (its charset counts)."""
    media, charset = split_content_type(content_type)
    read = extract_plain if media == "text/plain" else extract
    page = read(body, url=final_url, charset=charset)
    if not page.text.strip():
        stats["empty_text"] += 1
        return None
    return {
        "url": link.url,
        "final_url": final_url,
        "domain": host_of(final_url),
        "reddit_ids": list(link.submission_ids),
        "subreddits": list(link.subreddits),
        "score": link.score,
        "created_utc": link.created_utc,
        "fetched_at": fetched_at,
        "http_status": status,
        "content_type": media,
        "title": page.title,
        "text": page.text,
        "language": page.language,
        "extractor_version": EXTRACTOR_VERSION,
    }


def _write_parquet(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("url", pa.string()),
            ("final_url", pa.string()),
            ("domain", pa.string()),
            ("reddit_ids", pa.list_(pa.string())),
            ("subreddits", pa.list_(pa.string())),
            ("score", pa.int64()),
            ("created_utc", pa.int64()),
            ("fetched_at", pa.string()),
            ("http_status", pa.int32()),
            ("content_type", pa.string()),
            ("title", pa.string()),
            ("text", pa.string()),
            ("language", pa.string()),
            ("extractor_version", pa.string()),
        ]
    )
    count = 0
    # an empty file still has the schema; a file object, as pyarrow refuses a path that is not UTF-8
    with open(path, "wb") as f, pq.ParquetWriter(f, schema) as writer:
        for batch in batched(rows, 256):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count
