"""WebText's link selection: outbound links of Reddit submissions with at least 3 karma.

The paper (section 2.1) gives the karma threshold, the December-2017 cut-off and a subreddit blocklist;
the rest (self posts, NSFW posts, media/social hosts, non-HTML files) is what every open reproduction
drops because it yields no article text (see PAPER.md). Each default is WebText's; every one is a field
of :class:`LinkFilters`.

Submission-level filters run first, in the order of ``REASONS``, and each dropped submission is counted
under its first failing reason. Karma is then summed per normalized URL (OpenWebText2's rule: a link
posted twice with 2 karma each has 4) and the threshold applies to the sum.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from posixpath import splitext
from urllib.parse import unquote, urlsplit

from gpt2cli.errors import UsageError
from gpt2cli.scrape.sources import URL_LIST_SOURCE, Submission
from gpt2cli.scrape.urls import host_of, normalize_url

# Hosts whose pages are media, social posts or Reddit itself: no article to extract. A host matches when
# it is one of these or a subdomain of one (i.imgur.com, m.youtube.com, old.reddit.com).
DEFAULT_DOMAIN_BLOCKLIST: frozenset[str] = frozenset(
    {
        "reddit.com", "redd.it", "redditmedia.com", "reddituploads.com", "redditstatic.com",
        "imgur.com", "gfycat.com", "giphy.com", "tenor.com", "flickr.com", "flic.kr", "photobucket.com",
        "tinypic.com", "imageshack.us", "500px.com", "deviantart.com", "pinterest.com", "tumblr.com",
        "youtube.com", "youtu.be", "vimeo.com", "dailymotion.com", "twitch.tv", "liveleak.com",
        "streamable.com", "vid.me", "vine.co", "tiktok.com",
        "twitter.com", "x.com", "t.co", "facebook.com", "fb.com", "fb.me", "instagram.com", "snapchat.com",
        "soundcloud.com", "spotify.com", "bandcamp.com",
    }
)  # fmt: skip

# Path extensions of files that are not web pages (images, video, audio, documents, archives, binaries).
DEFAULT_EXTENSION_BLOCKLIST: frozenset[str] = frozenset(
    {
        "jpg", "jpeg", "png", "gif", "gifv", "webp", "bmp", "svg", "tif", "tiff", "ico", "heic",
        "mp4", "webm", "mov", "avi", "mkv", "flv", "wmv", "m4v", "mpg", "mpeg",
        "mp3", "wav", "ogg", "flac", "m4a", "aac",
        "pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "epub",
        "zip", "rar", "7z", "gz", "tgz", "bz2", "xz", "tar", "iso", "dmg",
        "exe", "msi", "apk", "deb", "rpm", "bin", "jar", "torrent",
    }
)  # fmt: skip

# A short list of explicit and hateful subreddits (compared case-insensitively). The paper names no list;
# over_18 catches most explicit communities, this catches the best-known ones that were not marked.
DEFAULT_SUBREDDIT_BLOCKLIST: frozenset[str] = frozenset(
    {
        "gonewild", "nsfw", "nsfw_gif", "realgirls", "porn", "pornpics", "hentai", "rule34", "cumsluts",
        "watchpeopledie", "gore", "spacedicks", "jailbait", "fatpeoplehate", "coontown", "beatingwomen",
        "incels", "the_donald",
    }
)  # fmt: skip

# Submission-level reasons, in the order they are checked; each is counted as "filtered_<reason>".
REASONS = ("self", "over_18", "subreddit", "date", "bad_url", "domain", "extension")
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class LinkFilters:
    """Which submissions and links to keep; the defaults are WebText's.

    ``since``/``until`` are UTC days, both inclusive (``until=2017-12-31`` is the paper's cut-off); a
    submission of unknown date (URL lists) is kept, since nothing says it is out of range. Block lists
    are compared lower-cased; pass an empty frozenset to switch one off.
    """

    min_score: int = 3
    drop_self: bool = True
    drop_over_18: bool = True
    subreddit_blocklist: frozenset[str] = DEFAULT_SUBREDDIT_BLOCKLIST
    domain_blocklist: frozenset[str] = DEFAULT_DOMAIN_BLOCKLIST
    extension_blocklist: frozenset[str] = DEFAULT_EXTENSION_BLOCKLIST
    since: dt.date | None = None
    until: dt.date | None = None

    def __post_init__(self) -> None:
        lower = {
            "subreddit_blocklist": frozenset(s.strip().lower().removeprefix("r/") for s in self.subreddit_blocklist),
            "domain_blocklist": frozenset(d.strip().lower().strip(".") for d in self.domain_blocklist),
            "extension_blocklist": frozenset(e.strip().lower().lstrip(".") for e in self.extension_blocklist),
        }
        for name, value in lower.items():
            object.__setattr__(self, name, value)
        if self.since and self.until and self.since > self.until:
            raise UsageError(f"--since {self.since} is after --until {self.until}")

    def reason(self, submission: Submission, normalized: str | None) -> str | None:
        """The first reason (one of REASONS) ``submission`` is dropped for, or None when it passes."""
        if self.drop_self and (submission.is_self or (submission.domain or "").lower().startswith("self.")):
            return "self"
        if self.drop_over_18 and submission.over_18:
            return "over_18"
        if submission.subreddit and submission.subreddit.lower() in self.subreddit_blocklist:
            return "subreddit"
        if not self._in_dates(submission.created_utc):
            return "date"
        if normalized is None:
            return "bad_url"
        if blocked_host(host_of(normalized), self.domain_blocklist):
            return "domain"
        if url_extension(normalized) in self.extension_blocklist:
            return "extension"
        return None

    def _in_dates(self, created_utc: int | None) -> bool:
        if created_utc is None or (self.since is None and self.until is None):
            return True
        if self.since is not None and created_utc < _day_start(self.since):
            return False
        return self.until is None or created_utc < _day_start(self.until + dt.timedelta(days=1))


@dataclass
class Link:
    """One distinct (normalized) URL and the submissions that linked it.

    ``score`` is the sum of the known scores; None when no submission's score is known (URL lists), and
    such a link passes the karma filter: a URL list is taken to be pre-filtered.
    """

    url: str  # normalized
    original_url: str  # as first seen
    score: int | None
    submission_ids: list[str] = field(default_factory=list)
    subreddits: list[str] = field(default_factory=list)  # distinct, in order of first appearance
    created_utc: int | None = None  # earliest
    sources: list[str] = field(default_factory=list)  # distinct


def collect_links(submissions: Iterable[Submission], filters: LinkFilters, stats: Counter[str]) -> dict[str, Link]:
    """The links that pass ``filters``, keyed by normalized URL, in order of first appearance.

    Counts ``submissions_seen``, ``filtered_<reason>`` per dropped submission (REASONS),
    ``duplicate_submissions`` (a submission id already counted for its URL: overlapping dumps; the first
    copy's score is kept), ``links_seen`` (distinct URLs before the karma filter), ``filtered_score``
    (URLs whose summed karma is under ``min_score``), ``filtered_score_unknown`` (URLs from dumps or the API
    whose score is unknown: they show no karma), ``links_unknown_score`` (URLs from URL lists, which have no
    scores and are taken as given) and ``links_kept``.
    Memory grows with the number of distinct URLs, not of submissions.
    """
    links: dict[str, Link] = {}
    ids: dict[str, set[str]] = {}  # per URL, for the duplicate check without scanning lists
    for submission in submissions:
        stats["submissions_seen"] += 1
        normalized = normalize_url(submission.url)
        reason = filters.reason(submission, normalized)
        if reason is not None:
            stats[f"filtered_{reason}"] += 1
            continue
        assert normalized is not None
        link = links.get(normalized)
        if link is None:
            link = links[normalized] = Link(url=normalized, original_url=submission.url, score=None)
            ids[normalized] = set()
        if submission.id is not None:
            if submission.id in ids[normalized]:
                stats["duplicate_submissions"] += 1
                continue
            ids[normalized].add(submission.id)
        _add(link, submission)
    stats["links_seen"] += len(links)
    kept: dict[str, Link] = {}
    for url, link in links.items():
        if link.score is not None and link.score < filters.min_score:
            stats["filtered_score"] += 1
            continue
        if link.score is None:
            if not any(source.startswith(URL_LIST_SOURCE) for source in link.sources):
                stats["filtered_score_unknown"] += 1  # a dump's record whose score did not parse: no karma shown
                continue
            stats["links_unknown_score"] += 1
        kept[url] = link
    stats["links_kept"] += len(kept)
    return kept


def _add(link: Link, submission: Submission) -> None:
    if submission.score is not None:  # saturated: a flood of absurd scores must not overflow Parquet's int64
        link.score = max(-_INT64_MAX, min(_INT64_MAX, (link.score or 0) + submission.score))
    if submission.id is not None:
        link.submission_ids.append(submission.id)
    if submission.subreddit and submission.subreddit not in link.subreddits:
        link.subreddits.append(submission.subreddit)
    if submission.created_utc is not None and (link.created_utc is None or submission.created_utc < link.created_utc):
        link.created_utc = submission.created_utc
    if submission.source not in link.sources:
        link.sources.append(submission.source)


def blocked_host(host: str, blocklist: frozenset[str]) -> bool:
    """Whether ``host`` is a blocked domain or a subdomain of one (``m.youtube.com`` of ``youtube.com``)."""
    labels = host.lower().rstrip(".").split(".")
    return any(".".join(labels[i:]) in blocklist for i in range(len(labels)))


def url_extension(url: str) -> str:
    """The lower-cased extension of a URL's last path segment (``/a/b.JPG`` -> ``jpg``), or ``""``."""
    return splitext(unquote(urlsplit(url).path))[1].lower().lstrip(".")


def parse_day(text: str) -> dt.date:
    """A ``YYYY-MM-DD`` day for ``--since``/``--until``; a usage error otherwise."""
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _day_start(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())
