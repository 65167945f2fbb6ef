"""Fetching the pages Reddit links point to: politely, within hard limits, and never into private networks.

Politeness: one request at a time per host, each starting `per_host_interval_s` (or the host's robots.txt
Crawl-delay, capped) after the previous one to that host ended, whichever task sent it: a page, a redirect hop or a
robots.txt fetch. robots.txt obeyed, a descriptive User-Agent, Retry-After honoured.

Limits: a connect and a read timeout per socket operation, plus a hard `page_deadline_s` per page: a
watchdog shuts the socket down when it passes, so a server trickling bytes (or headers) forever cannot
hold a worker. Bodies are streamed and dropped past `max_bytes` (measured after decompression, so a gzip
bomb is cut off too). Only http/https; redirects are followed by hand, up to `max_redirects`, with loops
detected.

Server-side request forgery: links come from strangers, so a link to 127.0.0.1, 10.x, 169.254.169.254
(cloud metadata), fc00::/7 ... must not be fetched. The check is done where the socket is opened: our
urllib3 connection classes resolve the host once, refuse if ANY address is forbidden, then connect to
those very addresses (Host header and TLS SNI keep the name). There is no gap between checking and
connecting for a DNS-rebinding server to exploit, and every redirect hop and robots.txt fetch goes
through the same path. Proxies from the environment are ignored (`trust_env = False`) as they would
connect on our behalf unchecked.

robots.txt (RFC 9309): fetched once per origin and cached for the Fetcher's life. 2xx: parsed (protego: the
longest matching rule wins, `*` and `$` patterns; a file over `robots_max_bytes` is parsed up to there); 4xx
(including 401/403): no rules, all allowed; 5xx, 429, timeouts and connection errors: the site is treated
as fully disallowed for this run (error "robots_unreachable", retryable, so the frontier tries the URL in
a later run).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
from protego import Protego
from requests.adapters import HTTPAdapter
from requests.utils import requote_uri
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import create_connection
from urllib3.util.request import ACCEPT_ENCODING

from gpt2cli import __version__
from gpt2cli.errors import UsageError
from gpt2cli.scrape.extract import codec_for

MIB = 1 << 20
# the content codings urllib3 decodes here: it offers those it can (br and zstd when their modules are installed)
_DECODED_CODINGS = frozenset({"identity", "x-gzip", *ACCEPT_ENCODING.split(",")})
MAX_INTERVAL_S = 86_400.0  # a day between two requests to one host: beyond that no crawl finishes
ACCEPTED_TYPES = ("text/html", "application/xhtml+xml", "text/plain")
USER_AGENT = (
    f"gpt2cli/{__version__} (WebText reproduction crawler for research; fetches each linked page once; "
    "honours robots.txt)"
)
REDIRECT_CODES = (301, 302, 303, 307, 308)

Resolver = Callable[[str, int], list[str]]


@dataclass(frozen=True)
class FetchConfig:
    """How the crawler behaves; the defaults suit a crawl of millions of distinct sites."""

    concurrency: int = 32
    per_host_interval_s: float = 1.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 20.0
    page_deadline_s: float = 60.0  # total per page, redirects and body included
    max_bytes: int = 5 * MIB
    max_redirects: int = 5
    retries: int = 3  # further attempts after the first, for connection errors, timeouts, 5xx and 429
    backoff_base_s: float = 2.0  # delay before retry k (0-based): base * 2**k
    retry_after_cap_s: float = 120.0  # a longer Retry-After ends this run's attempts (the frontier waits)
    max_crawl_delay_s: float = 30.0
    user_agent: str = USER_AGENT
    obey_robots: bool = True
    allow_private_network: bool = False
    accepted_types: tuple[str, ...] = ACCEPTED_TYPES
    robots_max_bytes: int = 512 * 1024

    def validate(self) -> None:
        """The settings a user types: a NaN or negative interval would silently drop the politeness delay, a
        line break in the User-Agent would make every request fail as if the sites were down."""
        if not (math.isfinite(self.per_host_interval_s) and 0 <= self.per_host_interval_s <= MAX_INTERVAL_S):
            raise UsageError(
                f"--per-host-interval must be a number of seconds in [0, {MAX_INTERVAL_S:g}], "
                f"got {self.per_host_interval_s}"
            )
        if not self.user_agent.strip() or not all(" " <= c <= "~" for c in self.user_agent):
            raise UsageError(f"--user-agent must be printable ASCII on one line, got {self.user_agent!r}")


@dataclass
class FetchResult:
    """What one URL gave: a body, or a short error key ("robots", "timeout", "http_404", ...)."""

    url: str
    final_url: str | None = None
    status: int | None = None
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    body: bytes | None = None
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None
    request_headers: dict[str, str] = field(default_factory=dict)
    fetched_at: float = 0.0
    charset: str | None = None
    attempts: int = 1
    protocol: str = "HTTP/1.1"  # the response's HTTP version, as the archive records it

    @property
    def ok(self) -> bool:
        return self.error is None and self.body is not None


class PrivateAddressError(Exception):
    """A host resolved to an address we refuse to connect to (not an OSError: urllib3 must not wrap it)."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} resolves to forbidden address {address}")
        self.host = host
        self.address = address


class RedirectError(Exception):
    """A redirect chain that ends in no page: "redirect_loop" or "too_many_redirects"."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class RedirectChain:
    """The URLs of one page's redirects, as a live fetch and a replay of an archive both follow them: at most
    `limit` hops, none back to a URL already asked for."""

    def __init__(self, url: str, limit: int) -> None:
        self.url = wire_url(url)
        self.limit = limit
        self._seen = {self.url}

    def follow(self, status: int, location: str | None) -> str | None:
        """The URL to ask next when an answer with `status` and `location` is a redirect, else None (the answer is
        the page); raises RedirectError when the chain may go no further."""
        if status not in REDIRECT_CODES or not location:
            return None
        target = wire_url(urljoin(self.url, _utf8_location(location.strip())))
        if target in self._seen:
            raise RedirectError("redirect_loop")
        if len(self._seen) > self.limit:
            raise RedirectError("too_many_redirects")
        self._seen.add(target)
        self.url = target
        return target


# -- pure helpers -------------------------------------------------------------------------------------------


def is_forbidden_address(address: str) -> bool:
    """True for any address a public crawler must not reach: private, loopback, link-local, multicast,
    reserved, unspecified, shared (100.64/10), and IPv6 forms embedding one of those (IPv4-mapped,
    IPv4-compatible, 6to4, Teredo, NAT64)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d to the kernel
            return is_forbidden_address(str(ip.ipv4_mapped))
        embedded: list[ipaddress.IPv4Address] = []
        if ip.sixtofour is not None:
            embedded.append(ip.sixtofour)
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        if ip in ipaddress.IPv6Network("64:ff9b::/96") or ip in ipaddress.IPv6Network("::/96"):
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if any(is_forbidden_address(str(v4)) for v4 in embedded):
            return True
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
        or not ip.is_global
    )


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6), in the resolver's order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, config: FetchConfig, retry_after: float | None) -> float | None:
    """Delay before retrying after failed attempt number `attempt` (0-based), or None to stop retrying
    in this run (a Retry-After beyond the cap: the frontier schedules it instead)."""
    if retry_after is not None and retry_after > config.retry_after_cap_s:
        return None
    delay = config.backoff_base_s * (2**attempt)
    return max(delay, retry_after or 0.0)


def split_content_type(value: str | None) -> tuple[str | None, str | None]:
    """(media type in lower case, charset parameter) of a Content-Type header."""
    if not value:
        return None, None
    parts = [p.strip() for p in value.split(";")]
    media = parts[0].lower() or None
    charset = None
    for param in parts[1:]:
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip():
            charset = val.strip().strip("\"'").lower()
    return media, charset


def failed_status(
    status: int, retry_after: str | None = None, now: float | None = None
) -> tuple[str, bool, float | None] | None:
    """(error key, whether a later try may pass, the seconds its Retry-After header asks to wait from ``now``) of a
    final answer that is not a page; None for a 2xx."""
    if 200 <= status < 300:
        return None
    wait = parse_retry_after(retry_after, now) if status in (429, 503) else None
    return f"http_{status}", status in (408, 429) or status >= 500, wait


def accepted_type(media: str | None, body: bytes | None, accepted: tuple[str, ...]) -> bool:
    """Whether an answer is a page to extract: its declared media type is accepted, or it declares none and its
    body (None: not read yet) looks like HTML, as a browser sniffs it."""
    if media is not None:
        return media in accepted
    return body is None or _looks_like_html(body)


def host_key(url: str) -> str:
    """The politeness key of a URL: its host name, whatever the scheme and port."""
    return (urlsplit(url).hostname or "").lower()


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), "", "", ""))


# -- guarded connections ------------------------------------------------------------------------------------


class _Attempt:
    """The state of one page fetch, visible to the connection classes through a thread-local."""

    def __init__(self, resolver: Resolver, allow_private: bool, deadline: float) -> None:
        self.resolver = resolver
        self.allow_private = allow_private
        self.deadline = deadline
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._watchdog: threading.Timer | None = None

    def start_clock(self, seconds: float) -> None:
        """Expire the fetch once ``seconds`` more of it have passed (its watchdog)."""
        self.deadline = time.monotonic() + seconds
        self._watchdog = threading.Timer(max(seconds, 0.0), self.expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def stop_clock(self) -> float:
        """Pause the watchdog; the seconds the fetch had left."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        return self.deadline - time.monotonic()

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            expired = self.expired
        if expired:
            _shutdown(sock)

    def expire(self) -> None:
        """Called by the watchdog at the deadline: unblock whatever read is waiting."""
        with self._lock:
            self.expired = True
            socks = list(self._socks)
        for sock in socks:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


_current = threading.local()
_STRICT = _Attempt(system_resolver, allow_private=False, deadline=float("inf"))


class _GuardedConnectionMixin:
    """Resolve once, refuse forbidden addresses, connect to the checked address (no DNS rebinding gap)."""

    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    _dns_host: str

    def _new_conn(self) -> socket.socket:
        attempt: _Attempt = getattr(_current, "attempt", None) or _STRICT
        try:
            addresses = attempt.resolver(self._dns_host, self.port)
        except OSError as e:
            raise NameResolutionError(self.host, self, e) from e  # type: ignore[arg-type]
        if not addresses:
            raise NameResolutionError(self.host, self, socket.gaierror("no addresses"))  # type: ignore[arg-type]
        if not attempt.allow_private:
            for address in addresses:
                if is_forbidden_address(address):
                    raise PrivateAddressError(self.host, address)
        last: OSError | None = None
        for address in addresses:
            try:
                sock = create_connection(
                    (address.split("%", 1)[0], self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as e:
                raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from e
            except OSError as e:
                last = e
                continue
            attempt.register(sock)
            return sock
        raise NewConnectionError(self, f"failed to connect to {self.host}: {last}")  # type: ignore[arg-type]


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _NoReuseMixin:
    """Never keep a connection: each request gets a new, checked one registered with its own watchdog
    (a crawler rarely asks one host twice within a keep-alive window anyway)."""

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            conn.close()


class _GuardedHTTPPool(_NoReuseMixin, HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(_NoReuseMixin, HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose every connection goes through the address check."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


def _find(exc: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` in exc's chain (causes, contexts, urllib3 reasons, wrapped args)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kind):
            return e
        linked = [e.__cause__, e.__context__, getattr(e, "reason", None), *getattr(e, "args", ())]
        stack.extend(x for x in linked if isinstance(x, BaseException))
    return None


def _malformed_head(exc: BaseException) -> bool:
    """Whether the server's answer is not an HTTP head http.client accepts (not HTTP, over 100 header lines, a
    line over 64 KiB): the same server answers the same way next time, unlike a connection it closed early."""
    found = _find(exc, http.client.HTTPException)
    return found is not None and not isinstance(found, (http.client.RemoteDisconnected, http.client.IncompleteRead))


# -- robots.txt ---------------------------------------------------------------------------------------------


@dataclass
class _Robots:
    parser: Protego | None  # None: no rules (allow all) or unreachable
    unreachable: str | None = None  # error key when the site is disallowed for this run


class RobotsCache:
    """robots.txt per origin, fetched once (concurrent callers for one origin wait for the first)."""

    def __init__(self, fetch_text: Callable[[str], FetchResult], user_agent: str) -> None:
        self._fetch_text = fetch_text
        self._user_agent = user_agent
        self._entries: dict[str, _Robots] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.fetches = 0

    def cached(self, url: str) -> bool:
        return origin_of(url) in self._entries

    def ensure(self, url: str) -> _Robots:
        origin = origin_of(url)
        entry = self._entries.get(origin)
        if entry is not None:
            return entry
        with self._lock:
            lock = self._locks.setdefault(origin, threading.Lock())
        with lock:
            entry = self._entries.get(origin)
            if entry is None:
                self.fetches += 1
                entry = self._load(origin)
                if entry.unreachable != "host_busy":  # our own queue, not the site's answer: asked again
                    self._entries[origin] = entry
        return entry

    def _load(self, origin: str) -> _Robots:
        result = self._fetch_text(origin + "/robots.txt")
        if result.error is None and result.body is not None and result.status and 200 <= result.status < 300:
            text = result.body.decode(codec_for(result.charset or "utf-8") or "utf-8", errors="replace")
            return _Robots(Protego.parse(text.removeprefix("\ufeff")))  # a byte-order mark would hide the first line
        if result.status is not None and 400 <= result.status < 500 and result.status != 429:
            return _Robots(None)  # RFC 9309 "unavailable": no restrictions
        key = result.error if result.error in ("private_address", "host_busy") else "robots_unreachable"
        return _Robots(None, unreachable=key)

    def check(self, url: str) -> str | None:
        """None when `url` may be fetched, else the error key ("robots", "robots_unreachable", ...)."""
        entry = self.ensure(url)
        if entry.unreachable:
            return entry.unreachable
        if entry.parser is not None and not entry.parser.can_fetch(url, self._user_agent):
            return "robots"
        return None

    def crawl_delay(self, url: str) -> float | None:
        entry = self._entries.get(origin_of(url))
        if entry is None or entry.parser is None:
            return None
        delay = entry.parser.crawl_delay(self._user_agent)
        return float(delay) if delay is not None else None


# -- the fetcher --------------------------------------------------------------------------------------------


class _HostClock:
    """Turns at each host, shared by every worker: one request at a time, each starting an interval after the
    previous one ended, so a redirect hop or robots.txt fetch from one task spaces the next request of another."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._busy: set[str] = set()
        self._ended: dict[str, float] = {}

    def next_start(self, host: str, interval: float) -> float:
        """The monotonic time from which a request to `host` may start (once no other is in flight)."""
        with self._changed:
            return self._ended.get(host, -math.inf) + interval

    @contextlib.contextmanager
    def turn(self, host: str, interval: float, deadline: float) -> Iterator[bool]:
        """Hold `host`'s turn while the block sends its request and reads the answer; False when the turn does not
        come before `deadline` (monotonic)."""
        ours = False
        with self._changed:
            while (now := time.monotonic()) < deadline:
                start = self._ended.get(host, -math.inf) + interval
                if host not in self._busy and now >= start:
                    self._busy.add(host)
                    ours = True
                    break
                self._changed.wait((deadline if host in self._busy else min(start, deadline)) - now)
        try:
            yield ours
        finally:
            if ours:
                with self._changed:
                    self._busy.discard(host)
                    self._ended[host] = time.monotonic()
                    self._changed.notify_all()


@dataclass
class _Task:
    url: str
    attempts: int = 0


def _default_session() -> requests.Session:
    return requests.Session()


class Fetcher:
    """Fetches pages: `fetch` one (one attempt, what workers run), `fetch_many` a batch politely."""

    def __init__(
        self,
        config: FetchConfig | None = None,
        session_factory: Callable[[], requests.Session] = _default_session,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.config = config or FetchConfig()
        self._session_factory = session_factory
        self._resolver = resolver
        self._local = threading.local()
        self.robots = RobotsCache(self._fetch_robots, self.config.user_agent)
        self._hosts = _HostClock()

    # -- one page -----------------------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._session_factory()
            session.trust_env = False  # environment proxies would connect for us, past the address check
            adapter = GuardedAdapter(max_retries=0, pool_maxsize=4)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def fetch(self, url: str) -> FetchResult:
        """One attempt at `url` (redirects followed); never raises. Retries are the caller's (fetch_many)."""
        return self._attempt(url, robots=self.config.obey_robots, accept_any_type=False)

    def _fetch_robots(self, url: str) -> FetchResult:
        """robots.txt, cut at ``robots_max_bytes`` rather than refused: RFC 9309 has crawlers parse at least 500
        KiB of a longer file, not treat the site as unreachable."""
        return self._attempt(url, robots=False, accept_any_type=True, max_bytes=self.config.robots_max_bytes,
                             cut=True)  # fmt: skip

    def _attempt(
        self, url: str, *, robots: bool, accept_any_type: bool, max_bytes: int | None = None, cut: bool = False
    ) -> FetchResult:
        cfg = self.config
        attempt = _Attempt(self._resolver, cfg.allow_private_network, time.monotonic() + cfg.page_deadline_s)
        previous = getattr(_current, "attempt", None)
        _current.attempt = attempt
        attempt.start_clock(cfg.page_deadline_s)
        result = FetchResult(url=url)
        try:
            self._follow(result, attempt, robots, accept_any_type, max_bytes or cfg.max_bytes, cut)
        except Exception as e:  # a worker must report, never die
            self._classify(result, e, attempt)
        finally:
            attempt.stop_clock()
            _current.attempt = previous
        if result.error is not None:
            result.body = None
        if not result.fetched_at:
            result.fetched_at = time.time()
        return result

    def _follow(
        self, result: FetchResult, attempt: _Attempt, robots: bool, any_type: bool, max_bytes: int, cut: bool
    ) -> None:
        cfg = self.config
        chain = RedirectChain(result.url, cfg.max_redirects)
        while True:
            current = result.final_url = chain.url
            parts = urlsplit(current)
            if parts.scheme.lower() not in ("http", "https"):
                result.error = "bad_scheme"
                return
            if not parts.hostname:
                result.error = "bad_url"
                return
            # robots.txt (a fetch of its own) and the wait for the host's turn behind our own requests are not the
            # page's time: its clock is paused, and a turn that does not come within a page deadline leaves the
            # link to a later try
            left = attempt.stop_clock()
            if robots:
                refused = self.robots.check(current)
                if refused:
                    result.error = refused
                    result.retryable = refused in ("robots_unreachable", "host_busy")
                    return
            with self._hosts.turn(
                parts.hostname, self._interval(current), time.monotonic() + cfg.page_deadline_s
            ) as ours:
                if not ours:
                    result.error, result.retryable = "host_busy", True
                    return
                attempt.start_clock(left)
                if attempt.expired or left <= 0:
                    result.error, result.retryable = "deadline", False
                    return
                if not self._request(result, chain, attempt, any_type, max_bytes, cut):
                    return

    def _request(
        self, result: FetchResult, chain: RedirectChain, attempt: _Attempt, any_type: bool, max_bytes: int, cut: bool
    ) -> bool:
        """Ask for ``chain.url`` and read the answer into ``result``; True when it redirects (to ``chain.url``)."""
        cfg = self.config
        headers = {
            "User-Agent": cfg.user_agent,
            "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.1",
            "Accept-Encoding": ACCEPT_ENCODING,
            "Connection": "close",  # a fresh, checked and watched connection for every request
        }
        response = self._session().get(
            chain.url,
            headers=headers,
            timeout=(cfg.connect_timeout_s, cfg.read_timeout_s),
            allow_redirects=False,
            stream=True,
        )
        with response:
            result.status = response.status_code
            result.reason = response.reason or ""
            result.protocol = "HTTP/1.0" if getattr(response.raw, "version", 11) == 10 else "HTTP/1.1"
            result.headers = dict(response.headers)
            result.request_headers = dict(response.request.headers)
            result.fetched_at = time.time()
            try:
                if chain.follow(response.status_code, response.headers.get("Location")) is not None:
                    return True
            except RedirectError as e:
                result.error = e.key
                return False
            self._read(result, response, attempt, any_type, max_bytes, cut)
            return False

    def _read(
        self,
        result: FetchResult,
        response: requests.Response,
        attempt: _Attempt,
        any_type: bool,
        max_bytes: int,
        cut: bool,
    ) -> None:
        status = response.status_code
        if (failure := failed_status(status, response.headers.get("Retry-After"))) is not None:
            result.error, result.retryable, result.retry_after = failure
            return
        media, charset = split_content_type(response.headers.get("Content-Type"))
        result.content_type, result.charset = media, charset
        if not any_type and not accepted_type(media, None, self.config.accepted_types):
            result.error = "not_html"
            return
        codings = {c.strip().lower() for c in response.headers.get("Content-Encoding", "").split(",")} - {""}
        if codings - _DECODED_CODINGS:  # sent anyway, and not decoded: the body would be stored compressed
            result.error = "bad_encoding"
            return
        declared = response.headers.get("Content-Length")
        if not cut and declared and declared.strip().isdigit() and int(declared) > max_bytes:
            result.error = "too_large"
            return
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_content(64 * 1024):
            total += len(chunk)
            if total > max_bytes and cut:
                chunks.append(chunk[: len(chunk) - (total - max_bytes)])
                break
            if total > max_bytes:
                result.error = "too_large"
                return
            if attempt.expired or time.monotonic() > attempt.deadline:
                result.error = "deadline"
                return
            chunks.append(chunk)
        if attempt.expired:  # the watchdog cut the stream: what we have is incomplete
            result.error = "deadline"
            return
        result.body = b"".join(chunks)
        if media is None and not any_type:  # no Content-Type: a browser sniffs; so do we, for HTML alone
            if not accepted_type(media, result.body, self.config.accepted_types):
                result.error, result.body = "not_html", None
                return
            result.content_type = "text/html"

    @staticmethod
    def _classify(result: FetchResult, e: Exception, attempt: _Attempt) -> None:
        """Map an exception to an error key and whether trying again later may help."""
        if _find(e, PrivateAddressError) is not None:
            result.error, result.retryable = "private_address", False
        elif attempt.expired:
            result.error, result.retryable = "deadline", False
        elif isinstance(e, requests.Timeout) or _find(e, TimeoutError) is not None:
            result.error, result.retryable = "timeout", True
        elif _find(e, NameResolutionError) is not None:
            result.error, result.retryable = "dns", True
        elif isinstance(e, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
            result.error, result.retryable = "bad_url", False
        elif isinstance(e, requests.exceptions.ContentDecodingError):
            result.error, result.retryable = "bad_encoding", False
        elif _malformed_head(e):
            result.error, result.retryable = "bad_response", False
        elif isinstance(e, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, OSError)):
            result.error, result.retryable = "connection", True
        else:
            result.error, result.retryable = f"error_{type(e).__name__}", False

    # -- many pages ---------------------------------------------------------------------------------------

    def _interval(self, url: str) -> float:
        delay = self.robots.crawl_delay(url) if self.config.obey_robots else None
        if delay is None:
            return self.config.per_host_interval_s
        return max(self.config.per_host_interval_s, min(delay, self.config.max_crawl_delay_s))

    def fetch_many(self, urls: Iterable[str], on_result: Callable[[FetchResult], None]) -> None:
        """Fetch every URL once (with retries), calling `on_result` in this thread for each final result.

        `concurrency` workers run at once; a host gets one task at a time, started once its last request (robots.txt
        or another task's redirect hop included) ended an interval ago, while other hosts proceed meanwhile. URLs are
        read from `urls` lazily, a bounded window at a time. `on_result` runs in the calling thread, so it
        may write the WARC and the frontier without locks; if it raises, fetching stops and it propagates.
        """
        cfg = self.config
        source = iter(urls)
        exhausted = False
        window = max(64, cfg.concurrency * 16)
        queues: dict[str, deque[_Task]] = {}
        backoff_until: dict[str, float] = {}  # a retry's delay
        busy: set[str] = set()

        def start_at(host: str) -> float:
            url = queues[host][0].url
            return max(backoff_until.get(host, 0.0), self._hosts.next_start(host, self._interval(url)))

        queued = 0
        with ThreadPoolExecutor(max_workers=max(1, cfg.concurrency), thread_name_prefix="fetch") as pool:
            inflight: dict[Future[Any], tuple[str, _Task]] = {}
            robots_for: set[Future[Any]] = set()
            while True:
                while not exhausted and queued < window:
                    try:
                        url = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    queues.setdefault(host_key(wire_url(url)), deque()).append(_Task(url))  # as the clock keys it
                    queued += 1
                now = time.monotonic()
                for host in list(queues):
                    if len(inflight) >= cfg.concurrency:
                        break
                    if host in busy or start_at(host) > now:
                        continue
                    head = queues[host][0]
                    if cfg.obey_robots and not self.robots.cached(head.url):
                        future = pool.submit(self.robots.ensure, head.url)
                        inflight[future] = (host, head)
                        robots_for.add(future)
                    else:
                        queues[host].popleft()
                        queued -= 1
                        if not queues[host]:
                            del queues[host]
                        inflight[pool.submit(self.fetch, head.url)] = (host, head)
                    busy.add(host)
                if not inflight and not queues and exhausted:
                    return
                waits = [start_at(h) - now for h in queues if h not in busy]
                timeout = max(0.0, min(waits)) if waits and len(inflight) < cfg.concurrency else None
                if not inflight:
                    time.sleep(timeout or 0.0)
                    continue
                done, _ = wait(inflight, timeout=timeout, return_when=FIRST_COMPLETED)
                for future in done:
                    host, task = inflight.pop(future)
                    busy.discard(host)
                    if future in robots_for:  # now the host's Crawl-delay is known: it spaces the next request too
                        robots_for.discard(future)
                        future.result()
                        continue
                    result: FetchResult = future.result()
                    result.attempts = task.attempts + 1
                    # robots_unreachable is cached for the run: only a later run (the frontier) can retry it.
                    retry = result.retryable and result.error != "robots_unreachable"
                    delay = backoff_delay(task.attempts, cfg, result.retry_after) if retry else None
                    if delay is not None and task.attempts < cfg.retries:
                        task.attempts += 1
                        queues.setdefault(host, deque()).appendleft(task)
                        queued += 1
                        backoff_until[host] = time.monotonic() + delay
                        continue
                    on_result(result)


_SCHEME_AND_AUTHORITY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(?:([^/?#@]*)@)?([^/?#]*)")


def wire_url(url: str) -> str:
    """``url`` as it goes on the wire and into the archive: without its fragment, scheme and host in lower case (an
    archive reader takes ``HTTP://`` for no HTTP record), and what a URI cannot hold (non-ASCII, spaces: links in
    dumps are often IRIs) percent-encoded as UTF-8, existing escapes kept."""
    url = url.split("#", 1)[0]
    if found := _SCHEME_AND_AUTHORITY.match(url):
        scheme, userinfo, host = found.groups()
        url = f"{scheme.lower()}://{userinfo + '@' if userinfo is not None else ''}{host.lower()}{url[found.end() :]}"
    return requote_uri(url)


def _utf8_location(location: str) -> str:
    """A Location header as the server meant it: http.client decodes header bytes as Latin-1, and servers send
    UTF-8; bytes that are not UTF-8 stay as decoded."""
    try:
        return location.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return location


_HTML_START = re.compile(
    rb"\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body|title|meta|p|div|h1|table)[\s>/]", re.I | re.S
)


def _looks_like_html(body: bytes) -> bool:
    """The HTML Standard's sniffing of a body sent without a Content-Type, reduced to its HTML patterns."""
    return _HTML_START.match(body[:1024].removeprefix(b"\xef\xbb\xbf")) is not None
