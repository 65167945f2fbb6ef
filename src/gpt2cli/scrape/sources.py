"""Where Reddit submissions come from: Pushshift / Arctic Shift dumps, plain URL lists, Reddit's Data API.

Every source yields the same :class:`Submission` records, so the WebText filters never care which one
fed them. Dumps are huge (tens of GB a month uncompressed), so they are streamed line by line; bad
records are counted in a ``stats`` Counter and skipped, because one broken line in a month of data
must not end a run that took hours.
"""

from __future__ import annotations

import bz2
import collections
import gzip
import io
import json
import logging
import lzma
import math
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import requests
import zstandard

from gpt2cli.artifacts import check_regular_file, distinct_files
from gpt2cli.errors import Gpt2Error, UsageError

log = logging.getLogger(__name__)

# File names read from a directory: submission dumps (RS_*), compressed, plain NDJSON or without a suffix (Pushshift's
# RS_2017-12). Given explicitly, any file is read.
DUMP_PREFIX = "RS_"
DUMP_SUFFIXES = (".zst", ".bz2", ".xz", ".gz", ".ndjson", ".jsonl", ".json")
_CHUNK = 1 << 16
URL_LIST_SOURCE = "urls:"  # the source of a URL list's entries: links without karma, taken as given


@dataclass(frozen=True)
class Submission:
    """One Reddit submission (a link post, or a self post the filters will drop), from any source."""

    id: str | None
    url: str
    score: int | None  # None: unknown (URL lists), never "zero"
    subreddit: str | None
    created_utc: int | None
    is_self: bool
    over_18: bool
    domain: str | None
    title: str | None
    source: str  # dump file name, "api:r/NAME" or "urls:FILE"


# ---------------------------------------------------------------------------------------------- records


def submission_from_record(
    obj: dict[str, Any], source: str, stats: Counter[str], *, escaped: bool = False
) -> Submission | None:
    """A Submission from a dump or API record; None (counted) when it has no usable url.

    ``escaped``: the record's url and title hold ``&``, ``<`` and ``>`` as ``&amp;``, ``&lt;`` and ``&gt;``, as
    Pushshift's submission dumps store them (the API with ``raw_json=1`` sends them as they are); they are turned
    back, so ``?a=1&amp;b=2`` is the link ``?a=1&b=2`` and not one with an ``amp;b`` parameter.

    Numbers arrive as ints, floats or strings (old dumps), or null; a string that parses is used, one that
    does not becomes None. Each case is counted as ``{field}_from_string``, ``{field}_invalid`` or
    ``{field}_missing`` (missing or null) so a run's summary shows how clean its input was.

    JSON's lone-surrogate escapes (``"\\ud800"``) decode to text that no UTF-8 store takes: the url, id and
    subreddit go into the frontier and documents.parquet, so a record with one there is skipped (``bad_unicode``);
    the title and domain are never stored, so one there only makes that field None (``{field}_invalid``).
    Fields a Submission does not carry are never read, so they do not matter.
    """
    url = obj.get("url")
    if not isinstance(url, str) or not url.strip():
        stats["missing_url"] += 1
        return None
    id_, subreddit = _text(obj.get("id")), _text(obj.get("subreddit"))
    if not all(_encodable(text) for text in (url, id_, subreddit)):
        stats["bad_unicode"] += 1
        return None
    title = _unstored_text(obj, "title", stats)
    if escaped:
        url, title = _unescape(url), title and _unescape(title)
    return Submission(
        id=id_,
        url=url.strip(),
        score=_number(obj, "score", stats),
        subreddit=subreddit,
        created_utc=_number(obj, "created_utc", stats),
        is_self=_flag(obj.get("is_self")),
        over_18=_flag(obj.get("over_18")),
        domain=_unstored_text(obj, "domain", stats),
        title=title,
        source=source,
    )


_ESCAPES = {"&amp;": "&", "&lt;": "<", "&gt;": ">"}
_ESCAPED = re.compile("|".join(_ESCAPES))


def _unescape(text: str) -> str:
    """Reddit's escaping of ``&``, ``<`` and ``>`` undone, and nothing else: ``html.unescape`` would also read
    ``&para=1`` or ``&copy=2`` in a query string as the entities they start with."""
    return _ESCAPED.sub(lambda m: _ESCAPES[m.group()], text)


# The largest integer a JSON number carries exactly; a score or timestamp beyond it is garbage, and keeping it
# would overflow the int64 columns of documents.parquet.
_MAX_NUMBER = 2**53


def _number(obj: dict[str, Any], field: str, stats: Counter[str]) -> int | None:
    value = obj.get(field)
    if value is None:
        stats[f"{field}_missing"] += 1
        return None
    number = _as_int(value)
    if number is None or abs(number) > _MAX_NUMBER:
        stats[f"{field}_invalid"] += 1
        return None
    if isinstance(value, str):
        stats[f"{field}_from_string"] += 1
    return number


def _as_int(value: Any) -> int | None:
    """An int from a JSON int, a finite float or a numeric string; None otherwise (JSON true is not a score)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return int(text)
    except ValueError:  # not an integer, or more digits than int() converts
        pass
    try:
        as_float = float(text)
    except ValueError:
        return None
    return int(as_float) if math.isfinite(as_float) else None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _encodable(text: str | None) -> bool:
    """Whether ``text`` encodes as UTF-8, i.e. holds no lone surrogate."""
    try:
        (text or "").encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unstored_text(obj: dict[str, Any], field: str, stats: Counter[str]) -> str | None:
    """The text of a field the stage reads but never stores; None (counted) when it would not encode, so that
    every string of a Submission is safe to store wherever a later use takes it."""
    text = _text(obj.get(field))
    if _encodable(text):
        return text
    stats[f"{field}_invalid"] += 1
    return None


def _flag(value: Any) -> bool:
    """Booleans as the dumps spell them: true/false, 1/0, "true"/"false"; missing or null is False."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "t", "yes")
    return bool(value) if isinstance(value, (bool, int)) else False


# ------------------------------------------------------------------------------------------------ dumps


class _Decoder(Protocol):
    """One compressed stream's decoder, as ``bz2.BZ2Decompressor`` and ``lzma.LZMADecompressor`` offer it."""

    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


class _ZstdFrame:
    """One zstd frame's decoder behind the stdlib's interface. zstandard's ``decompressobj`` takes no output
    bound, so it decodes all the input it is given and never holds output back (``needs_input`` stays true)."""

    needs_input = True

    def __init__(self, dctx: zstandard.ZstdDecompressor) -> None:
        self._obj = dctx.decompressobj()

    @property
    def eof(self) -> bool:
        return self._obj.eof

    @property
    def unused_data(self) -> bytes:
        return self._obj.unused_data

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        return self._obj.decompress(data)


class _Streams(io.RawIOBase):
    """Concatenated compressed streams (zstd frames, bz2 or xz streams) read as one, with every kind of damage
    raised, and raised only once all the output decoded before it has been read.

    The stdlib's bz2 and lzma readers silently drop junk after the last stream (and a stream after xz's NUL
    padding); ``ZstdDecompressor.stream_reader`` silently ends a truncated file (zstandard 0.25). Here a file
    that ends inside a stream raises EOFError, and bytes after a stream that do not start another raise the
    codec's error. Each step makes one decoder call on at most one chunk, so the output of complete streams is
    handed out before the decoder sees what follows them. NUL bytes between or after streams are padding, as
    gzip and xz allow: no stream starts with one.
    """

    def __init__(self, raw: IO[bytes], new_decoder: Callable[[], _Decoder]) -> None:
        self._raw = raw
        self._new_decoder = new_decoder
        self._decoder: _Decoder | None = None  # None between streams
        self._input = b""  # read from the file, not yet given to a decoder
        self._out = b""
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._pos >= len(self._out):
            if self._eof:
                return 0
            self._out, self._pos = self._decode(), 0
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._out) - self._pos)
        view[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def _decode(self) -> bytes:
        """The next piece of output, maybe empty; sets ``_eof`` after the last stream."""
        decoder = self._decoder or self._next_stream()
        if decoder is None:
            self._eof = True
            return b""
        data = b""
        if decoder.needs_input:
            data, self._input = self._input or self._raw.read(_CHUNK), b""
            if not data:
                raise EOFError("the file ends inside a compressed stream (truncated)")
        out = decoder.decompress(data, _CHUNK)  # the bound keeps a decompression bomb out of memory
        if decoder.eof:
            self._input, self._decoder = decoder.unused_data, None
        return out

    def _next_stream(self) -> _Decoder | None:
        """A decoder for the next stream; None when nothing but padding follows the last one."""
        data = self._input.lstrip(b"\0")
        while not data:
            data = self._raw.read(_CHUNK)
            if not data:
                return None
            data = data.lstrip(b"\0")
        self._input, self._decoder = data, self._new_decoder()
        return self._decoder

    def close(self) -> None:
        self._raw.close()
        super().close()


def _stream_decoders(suffix: str) -> Callable[[], _Decoder] | None:
    """A maker of one decoder per stream for a file with ``suffix``; None for the formats :class:`_Streams` does
    not read (gzip's reader already counts junk after its last member as damage)."""
    if suffix == ".bz2":
        return bz2.BZ2Decompressor
    if suffix == ".xz":
        return lzma.LZMADecompressor
    if suffix == ".zst":
        dctx = zstandard.ZstdDecompressor(max_window_size=2**31)  # Pushshift uses --long=31
        return lambda: _ZstdFrame(dctx)
    return None


def open_text(path: Path) -> IO[str]:
    """A text stream of ``path``, decompressed by suffix (.zst, .bz2, .xz, .gz; anything else is plain).

    Undecodable bytes become U+FFFD instead of failing: the JSON parser then sees them as text.
    """
    suffix = path.suffix.lower()
    new_decoder = _stream_decoders(suffix)
    try:
        if new_decoder is not None:
            streams = _Streams(open(path, "rb"), new_decoder)  # noqa: SIM115 (closed by the returned stream)
            return io.TextIOWrapper(io.BufferedReader(streams, _CHUNK), encoding="utf-8", errors="replace")
        if suffix == ".gz":
            return gzip.open(path, "rt", encoding="utf-8", errors="replace")
        return open(path, encoding="utf-8", errors="replace")
    except OSError as e:
        raise Gpt2Error(f"cannot read {path}: {e.strerror or e}") from None


# What a broken compressed stream raises part-way: EOFError at a premature end (truncation), the
# codec's own error for corrupt data.
_STREAM_ERRORS = (EOFError, OSError, lzma.LZMAError, zlib.error, zstandard.ZstdError)


def read_dump(path: Path, stats: Counter[str]) -> Iterator[Submission]:
    """The submissions of one NDJSON dump (Pushshift, Arctic Shift), streamed.

    Counts ``files``, ``lines``, ``bad_json``, ``not_object``, ``missing_url``, ``bad_unicode`` and the field
    problems of :func:`submission_from_record`; ``records`` are the submissions yielded. A compressed file that ends
    early (``truncated_files``) or turns corrupt (``corrupt_files``) keeps what was read before the damage.
    """
    path = Path(path)
    stats["files"] += 1
    with open_text(path) as stream:
        lines = iter(stream)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                break
            except EOFError as e:
                stats["truncated_files"] += 1
                log.warning("%s: truncated (%s); keeping the records before the cut", path, e)
                break
            except _STREAM_ERRORS as e:
                stats["corrupt_files"] += 1
                log.warning("%s: corrupt compressed data (%s); keeping the records before it", path, e)
                break
            if not line.strip():
                continue
            stats["lines"] += 1
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):  # JSONDecodeError, huge integers, nesting deeper than the stack
                stats["bad_json"] += 1
                continue
            if not isinstance(obj, dict):
                stats["not_object"] += 1
                continue
            submission = submission_from_record(obj, path.name, stats, escaped=True)
            if submission is not None:
                stats["records"] += 1
                yield submission


def dump_files(paths: Iterable[Path]) -> list[Path]:
    """Files to read: each path given, whatever its name, or a directory's submission dumps (``RS_*`` files,
    recursively, sorted by path): a folder of dumps also holds comment dumps (``RC_*``), WARC archives, notes.

    A path that does not exist is a usage error (exit 2): a typo must not silently yield no links.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                    and _is_dump_name(p.name)
                )
            )
        else:
            check_regular_file(path, "--dump")
            files.append(path)
    return distinct_files(files)


def _is_dump_name(name: str) -> bool:
    return name.startswith(DUMP_PREFIX) and (name.lower().endswith(DUMP_SUFFIXES) or "." not in name)


def iter_dumps(paths: Iterable[Path], stats: Counter[str]) -> Iterator[Submission]:
    """The submissions of every dump in ``paths`` (files or directories, see :func:`dump_files`)."""
    for file in dump_files(paths):
        yield from read_dump(file, stats)


def read_url_list(path: Path, stats: Counter[str]) -> Iterator[Submission]:
    """Links from a file of one URL per line (``#`` comments and blank lines ignored), score unknown.

    Only the first whitespace-separated field of a line is the URL, so ``URL<TAB>anything`` lists work.
    Counts ``files`` and ``urls_listed``.
    """
    path = Path(path)
    stats["files"] += 1
    source = f"{URL_LIST_SOURCE}{path.name}"
    with open_text(path) as stream:
        for line in stream:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            stats["urls_listed"] += 1
            yield Submission(
                id=None,
                url=text.split()[0],
                score=None,
                subreddit=None,
                created_utc=None,
                is_self=False,
                over_18=False,
                domain=None,
                title=None,
                source=source,
            )


# -------------------------------------------------------------------------------------------------- API


def parse_listing(obj: dict[str, Any], source: str = "api") -> tuple[list[Submission], str | None]:
    """The submissions of a Reddit ``Listing`` of ``t3`` things and its ``after`` cursor (None at the end).

    Things of other kinds and links without a url are skipped; a response that is not a Listing raises
    Gpt2Error, since it means the API answered something else (an error page, a changed format).
    """
    data = obj.get("data") if isinstance(obj, dict) and obj.get("kind") == "Listing" else None
    children = data.get("children") if isinstance(data, dict) else None
    if not isinstance(children, list):
        raise Gpt2Error(f"{source}: the response is not a Reddit Listing")
    stats: Counter[str] = Counter()
    submissions = [
        submission
        for child in children
        if isinstance(child, dict) and child.get("kind") == "t3" and isinstance(child.get("data"), dict)
        for submission in [submission_from_record(child["data"], source, stats)]
        if submission is not None
    ]
    after = data.get("after")
    return submissions, after if isinstance(after, str) and after else None


PUBLIC_URL = "https://www.reddit.com"
OAUTH_URL = "https://oauth.reddit.com"
AUTH_URL = "https://www.reddit.com/api/v1/access_token"
TIME_FILTERS = ("hour", "day", "week", "month", "year", "all")
_SUBREDDIT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+]{0,49}")
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_PAGE = 100  # Reddit's largest page


class RedditAPI:
    """Reddit's Data API for listings, within its rate limits.

    With ``client_id``/``client_secret`` (or $REDDIT_CLIENT_ID/$REDDIT_CLIENT_SECRET) it takes an
    application-only OAuth token (client-credentials grant) and queries ``base_url`` at up to 100 queries
    a minute; without, it queries ``public_url`` (``/r/NAME/top.json``) at up to 10. Reddit's own
    ``X-Ratelimit-*`` headers win when stricter: the client sleeps until the reset when none remain.
    ``sleep`` and ``clock`` are injectable so tests run instantly.
    """

    def __init__(
        self,
        user_agent: str,
        base_url: str = OAUTH_URL,
        auth_url: str = AUTH_URL,
        client_id: str | None = None,
        client_secret: str | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        *,
        public_url: str = PUBLIC_URL,
        max_retries: int = 5,
        timeout: float = 30.0,
    ) -> None:
        if not user_agent or not user_agent.strip():
            raise UsageError("Reddit's API needs a descriptive User-Agent (e.g. 'gpt2cli/0.1 by u/NAME')")
        self.user_agent = user_agent.strip()
        self.client_id = client_id if client_id is not None else os.environ.get("REDDIT_CLIENT_ID") or None
        self.client_secret = (
            client_secret if client_secret is not None else os.environ.get("REDDIT_CLIENT_SECRET") or None
        )
        self.authenticated = bool(self.client_id and self.client_secret)
        self.base_url = (base_url if self.authenticated else public_url).rstrip("/")
        self.auth_url = auth_url
        self.per_minute = 100 if self.authenticated else 10
        self.session = session or requests.Session()
        self.sleep = sleep
        self.clock = clock
        self.max_retries = max_retries
        self.timeout = timeout
        self._token: str | None = None
        self._token_expires = 0.0
        self._sent: collections.deque[float] = collections.deque()  # request times in the last minute
        self._not_before = 0.0  # set from X-Ratelimit-Reset when the server's budget is spent

    # -- public

    def listing(
        self,
        subreddit: str,
        sort: Literal["top", "new"] = "top",
        time_filter: str = "all",
        limit: int | None = None,
    ) -> Iterator[Submission]:
        """Submissions of ``r/subreddit`` sorted by ``sort``, page by page (``after``), up to ``limit``.

        Reddit serves at most about 1,000 items of a listing; the iteration ends where it does.
        """
        name = subreddit.strip().removeprefix("/").removeprefix("r/")
        if not _SUBREDDIT.fullmatch(name):
            raise UsageError(f"not a subreddit name: {subreddit!r}")
        if sort not in ("top", "new"):
            raise UsageError(f"listing sort must be 'top' or 'new', not {sort!r}")
        if time_filter not in TIME_FILTERS:
            raise UsageError(f"time filter must be one of {', '.join(TIME_FILTERS)}, not {time_filter!r}")
        if limit is not None and limit < 0:
            raise UsageError(f"limit must be >= 0, not {limit}")
        source = f"api:r/{name}"
        path = f"/r/{name}/{sort}" + ("" if self.authenticated else ".json")
        yielded, after = 0, None
        while limit is None or yielded < limit:
            params: dict[str, str | int] = {"limit": _PAGE if limit is None else min(_PAGE, limit - yielded)}
            params["raw_json"] = 1
            if sort == "top":
                params["t"] = time_filter
            if after:
                params["after"] = after
                params["count"] = yielded
            submissions, after = parse_listing(self.get_json(path, params), source)
            for submission in submissions[: None if limit is None else limit - yielded]:
                yield submission
                yielded += 1
            if not after or not submissions:
                return

    def get_json(self, path: str, params: dict[str, str | int]) -> Any:
        """GET ``base_url + path`` as JSON, rate-limited, retrying 429/5xx and network errors with backoff."""
        url = self.base_url + path
        failure = ""
        for attempt in range(self.max_retries + 1):
            self._wait_for_budget()
            headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
            if self.authenticated:
                headers["Authorization"] = f"bearer {self._access_token()}"
            try:
                response = self.session.get(url, params=params, headers=headers, timeout=self.timeout)
            except requests.RequestException as e:
                failure = f"{type(e).__name__}: {e}".splitlines()[0]
                delay = None
            else:
                self._read_rate_headers(response)
                if response.status_code == 401 and self.authenticated and attempt == 0:
                    self._token = None  # expired or revoked early: one fresh token, then give up
                    failure = "HTTP 401"
                    continue
                if response.status_code in _RETRY_STATUS:
                    failure = f"HTTP {response.status_code}"
                    delay = _retry_after(response)
                elif not response.ok:
                    raise Gpt2Error(f"reddit API: GET {url} answered HTTP {response.status_code} {response.reason}")
                else:
                    try:
                        return response.json()
                    except ValueError:
                        raise Gpt2Error(f"reddit API: GET {url} did not answer JSON") from None
            if attempt < self.max_retries:
                wait = delay if delay is not None else min(60.0, 2.0**attempt)
                log.info("reddit API: %s from %s; retrying in %.0f s", failure, url, wait)
                self.sleep(wait)
        raise Gpt2Error(f"reddit API: GET {url} failed after {self.max_retries + 1} attempts ({failure})")

    # -- internals

    def _access_token(self) -> str:
        """An application-only OAuth token, fetched once and renewed a minute before it expires."""
        if self._token and self.clock() < self._token_expires:
            return self._token
        self._wait_for_budget()
        try:
            response = self.session.post(
                self.auth_url,
                auth=(self.client_id or "", self.client_secret or ""),
                data={"grant_type": "client_credentials"},
                headers={"User-Agent": self.user_agent},
                timeout=self.timeout,
            )
        except requests.RequestException as e:
            raise Gpt2Error(f"reddit API: token request failed: {type(e).__name__}: {e}".splitlines()[0]) from None
        if response.status_code in (400, 401, 403):
            raise Gpt2Error(f"reddit API: token refused (HTTP {response.status_code}); check REDDIT_CLIENT_ID/SECRET")
        try:
            body = response.json()
            token = body["access_token"]
            expires_in = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise Gpt2Error(f"reddit API: no access token in the answer (HTTP {response.status_code})") from None
        if not isinstance(token, str) or not token:
            raise Gpt2Error("reddit API: empty access token")
        self._token = token
        self._token_expires = self.clock() + max(0.0, expires_in - 60.0)
        return token

    def _wait_for_budget(self) -> None:
        """Sleep as long as the server's reset says, and keep within ``per_minute`` requests a minute."""
        now = self.clock()
        if now < self._not_before:
            self._pause(self._not_before - now, "X-Ratelimit-Remaining is 0")
            now = self.clock()
        while self._sent and now - self._sent[0] >= 60.0:
            self._sent.popleft()
        if len(self._sent) >= self.per_minute:
            self._pause(60.0 - (now - self._sent[0]), f"{self.per_minute} queries a minute")
            now = self.clock()
            while self._sent and now - self._sent[0] >= 60.0:
                self._sent.popleft()
        self._sent.append(now)

    def _pause(self, seconds: float, why: str) -> None:
        if seconds > 0:
            log.info("reddit API: waiting %.1f s (%s)", seconds, why)
            self.sleep(seconds)

    def _read_rate_headers(self, response: requests.Response) -> None:
        remaining = _float_header(response, "X-Ratelimit-Remaining")
        reset = _float_header(response, "X-Ratelimit-Reset")
        used = _float_header(response, "X-Ratelimit-Used")
        if remaining is not None and remaining < 1:
            self._not_before = self.clock() + (reset if reset is not None else 60.0)
        log.debug("reddit API: rate limit used=%s remaining=%s reset=%s", used, remaining, reset)


def _float_header(response: requests.Response, name: str) -> float | None:
    try:
        value = float(response.headers.get(name, ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _retry_after(response: requests.Response) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date), at most 10 minutes."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return min(600.0, max(0.0, seconds)) if math.isfinite(seconds) else None
