"""The crawler against a local HTTP server: politeness, limits, SSRF guard, frontier, WARC, kill -9."""

from __future__ import annotations

import gzip
import ipaddress
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path

import pytest

from gpt2cli.scrape import fetch as fetch_mod
from gpt2cli.scrape.fetch import (
    FetchConfig,
    Fetcher,
    FetchResult,
    backoff_delay,
    is_forbidden_address,
    parse_retry_after,
    split_content_type,
    wire_url,
)
from gpt2cli.scrape.frontier import Frontier
from gpt2cli.scrape.warc import WarcArchive, complete_length, iter_responses, read_record_at


def page_html(path: str) -> bytes:
    return f"<html><head><title>{path}</title></head><body><p>Page {path}.</p></body></html>".encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "text/html; charset=utf-8", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        srv = self.server
        path = self.path
        with srv.lock:
            srv.hits[path] += 1
            srv.log.append((time.monotonic(), self.headers.get("Host", "").split(":")[0], path))
            n = srv.hits[path]
        try:
            host = self.headers.get("Host", "").split(":")[0]
            if path == "/robots.txt":
                self._send(200, ROBOTS.get(host.split(".")[0], b"User-agent: *\nDisallow: /private\n"), "text/plain")
            elif path == "/ok/caf%C3%A9" or path.startswith("/rfc/"):
                self._send(200, page_html(path))
            elif path == "/utf8-redirect":  # the Location's bytes are UTF-8, as servers send them
                self._raw(b"HTTP/1.1 302 Found\r\nLocation: /ok/caf\xc3\xa9#top\r\nContent-Length: 0\r\n\r\n")
            elif path == "/odd-reason":
                self.send_response(200, "\u00d6K")  # the status line is Latin-1 on the wire
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page_html(path))))
                self.end_headers()
                self.wfile.write(page_html(path))
            elif path == "/http10":
                self._raw(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n" + page_html(path))
            elif path == "/untyped":  # no Content-Type: sniffed
                self._raw(b"HTTP/1.1 200 OK\r\nContent-Length: 31\r\n\r\n<!DOCTYPE html><p>untyped page.")
            elif path == "/untyped-binary":
                self._raw(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n\x89PNG\r\n\x1a\n")
            elif path == "/many-headers":  # over http.client's 100: the same on every try
                self._raw(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"Content-Length: 0\r\n\r\n")
            elif path == "/long-header":
                self._raw(b"HTTP/1.1 200 OK\r\nX-A: " + b"b" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n")
            elif path == "/not-http":
                self._raw(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            elif path == "/hang-up":  # a closed connection may be transient: retried
                self.close_connection = True
            elif path == "/brotli":  # not asked for, not decodable here
                self._send(200, b"\x1b\x03\x00\xf8\xa5", Content_Encoding="br")
            elif path.startswith("/page/"):
                with srv.lock:
                    srv.active += 1
                    srv.max_active = max(srv.max_active, srv.active)
                time.sleep(srv.page_delay)
                with srv.lock:
                    srv.active -= 1
                self._send(200, page_html(path))
            elif path == "/flaky":
                self._send(500, b"oops") if n == 1 else self._send(200, page_html(path))
            elif path == "/ratelimited":
                self._send(429, b"slow down", Retry_After="1") if n == 1 else self._send(200, page_html(path))
            elif path == "/slow":
                time.sleep(1.5)
                self._send(200, page_html(path))
            elif path == "/trickle":
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                while not srv.stopping.is_set():
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            elif path == "/huge":  # no Content-Length: the size is only known by reading
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Connection", "close")
                self.end_headers()
                for _ in range(64):
                    self.wfile.write(b"y" * 65536)
            elif path == "/gzipped":
                body = gzip.compress(page_html(path))
                self._send(200, body, Content_Encoding="gzip")
            elif path == "/always429":
                self._send(429, b"slow down", Retry_After="1")
            elif path == "/image":
                self._send(200, b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png")
            elif path == "/loop-a":
                self._send(302, b"", Location="/loop-b")
            elif path == "/loop-b":
                self._send(301, b"", Location="/loop-a")
            elif path == "/hop":
                self._send(302, b"", Location="/page/target")
            elif path.startswith("/to?"):
                self._send(302, b"", Location=path[4:])
            else:
                self._send(404, b"not found")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _raw(self, response: bytes) -> None:
        self.wfile.write(response)
        self.close_connection = True


# robots.txt by the first label of the host name
ROBOTS = {
    # RFC 9309: the longest match wins, whatever the order; `*` and `$` patterns
    "rfc": b"User-agent: *\nAllow: /\nDisallow: /rfc/private\nDisallow: /*.php$\nDisallow: /*?session=\n",
    # over robots_max_bytes: the rules in its first part still count (RFC 9309 section 2.5)
    "big": b"User-agent: *\nDisallow: /rfc/private\n" + b"# padding\n" * 70_000,
    "slow": b"User-agent: *\nCrawl-delay: 0.6\n",
    # a byte-order mark before the first rule, as editors on Windows write it
    "bom": b"\xef\xbb\xbfUser-agent: *\nDisallow: /private\n",
}


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.log: list[tuple[float, str, str]] = []
        self.stopping = threading.Event()
        self.page_delay = 0.0
        self.active = self.max_active = 0

    @property
    def port(self) -> int:
        return self.server_address[1]


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.stopping.set()
    srv.shutdown()
    srv.server_close()


def local_resolver(host: str, port: int) -> list[str]:
    """Names of the tests: *.test are our server; evil.test has a private address among public ones."""
    try:
        ipaddress.ip_address(host)
        return [host]  # a literal resolves to itself, as with getaddrinfo
    except ValueError:
        pass
    if host == "evil.test":
        return ["93.184.216.34", "10.0.0.7"]
    if host == "metadata.test":
        return ["169.254.169.254"]
    if host.endswith(".test") or host == "127.0.0.1":
        return ["127.0.0.1"]
    raise OSError(f"unknown test host {host}")


def fast(**kw: object) -> FetchConfig:
    base: dict[str, object] = dict(
        concurrency=4,
        per_host_interval_s=0.0,
        connect_timeout_s=1.0,
        read_timeout_s=0.5,
        page_deadline_s=3.0,
        max_bytes=256 * 1024,
        retries=2,
        backoff_base_s=0.05,
        retry_after_cap_s=5.0,
        allow_private_network=True,
        obey_robots=False,
    )
    base.update(kw)
    return FetchConfig(**base)  # type: ignore[arg-type]


def fetcher(**kw: object) -> Fetcher:
    return Fetcher(fast(**kw), resolver=local_resolver)


def many(f: Fetcher, urls: list[str]) -> dict[str, FetchResult]:
    out: dict[str, FetchResult] = {}
    main = threading.get_ident()

    def on_result(r: FetchResult) -> None:
        assert threading.get_ident() == main  # the caller's thread: WARC + frontier need no locks
        out[r.url] = r

    f.fetch_many(urls, on_result)
    assert len(out) == len(urls)
    return out


# -- pure helpers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "224.0.0.1",
     "100.64.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "ff02::1",
     "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1", "2002:a00:1::", "64:ff9b::a00:1", "::127.0.0.1",
     "not-an-ip"],
)  # fmt: skip
def test_forbidden_addresses(address: str) -> None:
    assert is_forbidden_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert not is_forbidden_address(address)


def test_helpers() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 10) == pytest.approx(10)
    cfg = FetchConfig(backoff_base_s=2.0, retry_after_cap_s=60)
    assert [backoff_delay(k, cfg, None) for k in range(3)] == [2.0, 4.0, 8.0]
    assert backoff_delay(0, cfg, 30.0) == 30.0
    assert backoff_delay(0, cfg, 3600.0) is None
    assert split_content_type('text/HTML; Charset="ISO-8859-1"') == ("text/html", "iso-8859-1")
    assert split_content_type(None) == (None, None)


# -- fetching -----------------------------------------------------------------------------------------------


def test_fetch_outcomes(server: Server) -> None:
    base = f"http://site.test:{server.port}"
    f = fetcher(max_bytes=200_000)
    urls = [f"{base}/{p}" for p in ("page/1", "missing", "flaky", "image", "huge", "loop-a", "hop", "gzipped")]
    res = many(f, urls)
    ok = res[f"{base}/page/1"]
    assert ok.ok and ok.status == 200 and ok.body == page_html("/page/1") and ok.charset == "utf-8"
    assert ok.content_type == "text/html" and ok.request_headers["User-Agent"].startswith("gpt2cli/")
    assert (res[f"{base}/missing"].error, res[f"{base}/missing"].retryable) == ("http_404", False)
    flaky = res[f"{base}/flaky"]
    assert flaky.ok and flaky.attempts == 2 and server.hits["/flaky"] == 2
    assert res[f"{base}/image"].error == "not_html" and res[f"{base}/image"].body is None
    assert res[f"{base}/huge"].error == "too_large"
    assert res[f"{base}/loop-a"].error == "redirect_loop"
    hop = res[f"{base}/hop"]
    assert hop.ok and hop.final_url == f"{base}/page/target"
    assert res[f"{base}/gzipped"].body == page_html("/gzipped")


def test_retry_after_then_success(server: Server) -> None:
    start = time.monotonic()
    res = many(fetcher(), [f"http://127.0.0.1:{server.port}/ratelimited"])
    r = next(iter(res.values()))
    assert r.ok and r.attempts == 2 and time.monotonic() - start >= 1.0


def test_retry_after_beyond_cap_is_left_to_the_frontier(server: Server) -> None:
    r = fetcher().fetch(f"http://127.0.0.1:{server.port}/ratelimited")
    assert (r.error, r.retryable, r.retry_after) == ("http_429", True, 1.0)
    res = many(fetcher(retry_after_cap_s=0.5), [f"http://127.0.0.1:{server.port}/always429"])
    r = next(iter(res.values()))
    assert (r.error, r.retry_after, r.attempts, server.hits["/always429"]) == ("http_429", 1.0, 1, 1)


def test_slow_and_trickling_servers_are_cut_off(server: Server) -> None:
    f = fetcher(retries=0, read_timeout_s=0.3, page_deadline_s=1.0)
    start = time.monotonic()
    slow = f.fetch(f"http://127.0.0.1:{server.port}/slow")
    assert (slow.error, slow.retryable) == ("timeout", True)
    assert time.monotonic() - start < 1.4
    start = time.monotonic()
    trickle = f.fetch(f"http://127.0.0.1:{server.port}/trickle")  # each byte within read timeout, forever
    elapsed = time.monotonic() - start
    assert (trickle.error, trickle.body) == ("deadline", None)
    assert 0.9 < elapsed < 2.5


def test_non_http_schemes_refused() -> None:
    assert fetcher().fetch("ftp://example.com/x").error == "bad_scheme"
    assert fetcher().fetch("file:///etc/passwd").error == "bad_scheme"


def test_private_addresses_refused(server: Server) -> None:
    f = fetcher(allow_private_network=False)
    for url in (f"http://127.0.0.1:{server.port}/page/1", f"http://evil.test:{server.port}/page/1",
                "http://metadata.test/latest/meta-data", f"http://[::1]:{server.port}/"):  # fmt: skip
        r = f.fetch(url)
        assert (r.error, r.retryable) == ("private_address", False), url
    assert server.hits["/page/1"] == 0


def test_redirect_to_private_address_refused(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # Treat our server's address as public, so the first hop connects and only the redirect is refused.
    real = fetch_mod.is_forbidden_address
    monkeypatch.setattr(fetch_mod, "is_forbidden_address", lambda a: a != "127.0.0.1" and real(a))
    f = fetcher(allow_private_network=False)
    base = f"http://public.test:{server.port}"
    assert f.fetch(f"{base}/page/ok").ok
    for target in (f"http://127.0.0.2:{server.port}/page/1", "http://metadata.test/", "http://evil.test/x"):
        r = f.fetch(f"{base}/to?{target}")
        assert r.error == "private_address", target
        assert server.hits[f"/to?{target}"] == 1
    assert server.hits["/page/1"] == 0


def test_system_resolver_checked(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    f = Fetcher(fast(allow_private_network=False))  # the real resolver
    assert f.fetch(f"http://localhost:{server.port}/page/1").error == "private_address"
    real = socket.getaddrinfo

    def fake(host: str, *args: object, **kwargs: object):
        if host == "intranet.example":
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:4700::1", 80, 0, 0)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.168.0.10", 80))]  # fmt: skip
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    assert f.fetch("http://intranet.example/").error == "private_address"
    assert server.hits["/page/1"] == 0


def test_dns_rebinding_checked_at_connect(server: Server) -> None:
    """The address that is checked is the one connected to: a resolver that answers differently each
    time (public, then private) is refused at the connection, whatever it said before."""
    answers = iter([["127.0.0.1"], ["10.0.0.1"]] * 10)
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    f = Fetcher(fast(allow_private_network=False), resolver=rebinding)
    r = f.fetch(f"http://rebind.test:{server.port}/page/1")
    assert r.error == "private_address" and len(calls) == 1  # one resolution per connection, checked


def test_robots_obeyed_and_fetched_once(server: Server) -> None:
    base = f"http://site.test:{server.port}"
    f = fetcher(obey_robots=True)
    urls = [f"{base}/page/{i}" for i in range(5)] + [f"{base}/private/secret"]
    res = many(f, urls)
    assert res[f"{base}/private/secret"].error == "robots"
    assert all(res[u].ok for u in urls[:5])
    assert server.hits["/robots.txt"] == 1 and server.hits["/private/secret"] == 0
    assert f.fetch(f"{base}/private/other").error == "robots" and server.hits["/robots.txt"] == 1


def test_robots_failures(server: Server) -> None:
    # A site without robots.txt (404) allows everything.
    r = fetcher(obey_robots=True).fetch(f"http://127.0.0.1:{server.port}/page/x")
    assert r.ok or r.error is None
    # A site whose robots.txt cannot be read (5xx, timeout, connection) is off limits for this run.
    f = fetcher(obey_robots=True)
    f.robots._fetch_text = lambda url: FetchResult(url=url, status=503, error="http_503", retryable=True)
    r = f.fetch(f"http://other.test:{server.port}/page/y")
    assert (r.error, r.retryable) == ("robots_unreachable", True)
    assert server.hits["/page/y"] == 0


def test_politeness(server: Server) -> None:
    server.page_delay = 0.2
    f = fetcher(per_host_interval_s=0.4, concurrency=4)
    urls = [f"http://{h}.test:{server.port}/page/{h}{i}" for i in range(3) for h in ("a", "b")]
    start = time.monotonic()
    res = many(f, urls)
    assert all(r.ok for r in res.values())
    starts: dict[str, list[float]] = defaultdict(list)
    for t, host, _ in server.log:
        starts[host].append(t - start)
    for host in ("a.test", "b.test"):
        gaps = [b - a for a, b in zip(starts[host], starts[host][1:], strict=False)]
        assert len(starts[host]) == 3 and min(gaps) >= 0.38, (host, starts[host])
    # Hosts proceed in parallel (one host never has two requests in flight, by the gaps above).
    assert server.max_active == 2
    assert time.monotonic() - start < 2.0  # one host after the other would take > 2.2 s


def test_robots_rules_as_rfc_9309_reads_them(server: Server) -> None:
    base = f"http://rfc.test:{server.port}"
    paths = ["/rfc/private/x", "/rfc/page.php", "/rfc/page.php5", "/rfc/list?session=1", "/rfc/list?page=1"]
    res = many(fetcher(obey_robots=True), [base + p for p in paths])
    assert [res[base + p].error for p in paths] == ["robots", "robots", None, "robots", None]
    big = fetcher(obey_robots=True, robots_max_bytes=64 * 1024)
    assert big.fetch(f"http://big.test:{server.port}/rfc/private/y").error == "robots"
    assert big.fetch(f"http://big.test:{server.port}/rfc/open").ok
    assert server.hits["/rfc/private/x"] == server.hits["/rfc/private/y"] == 0


def test_crawl_delay_spaces_the_first_page_after_robots_txt(server: Server) -> None:
    urls = [f"http://slow.test:{server.port}/page/{i}" for i in range(2)]
    assert all(r.ok for r in many(fetcher(obey_robots=True), urls).values())
    times = [t for t, host, _ in server.log if host == "slow.test"]
    assert len(times) == 3 and min(b - a for a, b in pairwise(times)) >= 0.55, times


def test_robots_txt_with_a_byte_order_mark_is_obeyed(server: Server) -> None:
    assert fetcher(obey_robots=True).fetch(f"http://bom.test:{server.port}/private/x").error == "robots"
    assert server.hits["/robots.txt"] == 1 and server.hits["/private/x"] == 0


def test_every_request_to_a_host_starts_an_interval_after_the_last_one_ended(server: Server) -> None:
    """Six hosts redirecting to one, that host's robots.txt and a page of its own: each request to it waits the
    interval from the end of the previous one, whichever task sent it (the redirects used to arrive within ms, and
    a page right after its host's robots.txt or a slow page)."""
    server.page_delay = 0.1
    target = f"http://target.test:{server.port}"
    urls = [f"http://r{i}.test:{server.port}/to?{target}/page/{i}" for i in range(6)] + [f"{target}/page/own"]
    f = fetcher(per_host_interval_s=0.2, concurrency=8, obey_robots=True, page_deadline_s=10.0)
    assert all(r.ok for r in many(f, urls).values())
    arrivals = [(t, path) for t, host, path in server.log if host == "target.test"]
    assert sorted(path for _, path in arrivals) == sorted(
        ["/robots.txt", "/page/own"] + [f"/page/{i}" for i in range(6)]
    )
    for (before, path), (after, _) in pairwise(arrivals):
        took = server.page_delay if path.startswith("/page/") else 0.0
        assert after - before >= took + 0.2 - 0.01, (path, after - before)
    assert server.max_active == 1


def test_a_page_whose_deadline_runs_out_waiting_for_its_host_is_retried(server: Server) -> None:
    """Links of many hosts redirecting to one queue for that host's turn; one whose deadline passes in the queue
    sent nothing wrong: it fails as `host_busy`, retryable (a later try or run fetches it), not for good."""
    server.page_delay = 0.3
    target = f"http://target.test:{server.port}"
    urls = [f"http://r{i}.test:{server.port}/to?{target}/page/{i}" for i in range(6)]
    f = fetcher(per_host_interval_s=0.2, concurrency=8, page_deadline_s=1.2, retries=0)
    results = many(f, urls).values()
    waited = [r for r in results if not r.ok]
    assert waited and all((r.error, r.retryable) == ("host_busy", True) for r in waited)
    assert sum(r.ok for r in results) >= 1


def test_robots_txt_fetched_on_the_way_is_not_the_pages_time(server: Server) -> None:
    """A redirect to a new origin fetches its robots.txt, which waits behind our own slow request to that host:
    the page's clock is paused meanwhile (it used to run, failing the page for good as `deadline`)."""
    other = Server()
    threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        server.page_delay, other.page_delay = 0.8, 0.3
        f = fetcher(obey_robots=True, page_deadline_s=1.0, per_host_interval_s=0.1, retries=0, read_timeout_s=2.0)
        slow = f"http://target.test:{server.port}/page/1"
        hop = f"http://r.test:{server.port}/to?http://target.test:{other.port}/page/2"
        f.robots.ensure(slow)
        f.robots.ensure(hop)
        results: dict[str, FetchResult] = {}
        first = threading.Thread(target=lambda: results.update({slow: f.fetch(slow)}))
        first.start()
        time.sleep(0.1)  # the slow page holds target.test's turn
        results[hop] = f.fetch(hop)
        first.join()
        assert results[slow].ok and results[hop].ok, (results[hop].error, results[hop].retryable)
    finally:
        other.stopping.set()
        other.shutdown()


def test_wire_urls_have_lower_case_schemes_and_hosts(server: Server) -> None:
    """An archive reader takes a record of ``HTTP://...`` for one without HTTP headers: the page would be fetched
    again by every run and never read back."""
    assert wire_url("HTTP://User:Pw@Site.TEST:80/Path/?Q=A#Frag") == "http://User:Pw@site.test:80/Path/?Q=A"
    r = fetcher().fetch(f"HTTP://SITE.test:{server.port}/hop")
    assert r.ok and r.final_url == f"http://site.test:{server.port}/page/target"


def test_redirect_hops_are_spaced_like_requests(server: Server) -> None:
    assert fetcher(per_host_interval_s=0.3).fetch(f"http://site.test:{server.port}/hop").ok
    (first, _, _), (second, _, _) = server.log
    assert second - first >= 0.28


def test_links_that_are_iris_and_utf8_locations(server: Server) -> None:
    """Dumps hold IRIs (non-ASCII paths) and servers send Location headers in UTF-8: what goes on the wire and
    into the archive is the percent-encoded URI, without its fragment."""
    base = f"http://site.test:{server.port}"
    for url in (f"{base}/ok/café", f"{base}/ok/caf%C3%A9#section", f"{base}/utf8-redirect"):
        r = fetcher().fetch(url)
        assert r.ok and r.final_url == f"{base}/ok/caf%C3%A9", (url, r.error, r.final_url)
    assert server.hits["/ok/caf%C3%A9"] == 3 and list(server.hits) == ["/ok/caf%C3%A9", "/utf8-redirect"]


def test_responses_without_or_with_odd_heads(server: Server, tmp_path: Path) -> None:
    base = f"http://site.test:{server.port}"
    res = many(fetcher(), [f"{base}/{p}" for p in ("untyped", "untyped-binary", "brotli", "http10", "odd-reason")])
    untyped = res[f"{base}/untyped"]
    assert untyped.ok and untyped.content_type == "text/html"
    assert res[f"{base}/untyped-binary"].error == "not_html"
    assert res[f"{base}/brotli"].error == "bad_encoding"  # stored compressed, it would be extracted as junk
    assert res[f"{base}/http10"].protocol == "HTTP/1.0" and res[f"{base}/odd-reason"].reason == "\u00d6K"
    broken = many(fetcher(), [f"{base}/{p}" for p in ("many-headers", "long-header", "not-http", "hang-up")])
    outcomes = {url.rsplit("/", 1)[1]: (r.error, r.retryable) for url, r in broken.items()}
    assert outcomes == {
        "many-headers": ("bad_response", False),  # a server that answers so answers so next time too
        "long-header": ("bad_response", False),
        "not-http": ("bad_response", False),
        "hang-up": ("connection", True),
    }
    with WarcArchive(tmp_path, prefix="t") as archive:
        for path in ("http10", "odd-reason"):
            r = res[f"{base}/{path}"]
            archive.write_response(url=r.final_url, status=200, reason=r.reason, headers=r.headers, body=r.body,
                                   protocol=r.protocol)  # fmt: skip
    stats: Counter[str] = Counter()
    back = list(iter_responses(sorted(tmp_path.glob("*.warc.gz")), stats))
    assert [(b.url, b.status, b.body) for b in back] == [(r.final_url, 200, r.body) for r in res.values()][-2:]
    assert not stats["errors"]
    raw = gzip.decompress(next(tmp_path.glob("*.warc.gz")).read_bytes())
    assert b"\r\nHTTP/1.0 200 OK\r\n" in raw and b"\r\nHTTP/1.1 200 K\r\n" in raw


# -- frontier -----------------------------------------------------------------------------------------------


def test_frontier_cycle(tmp_path: Path) -> None:
    fr = Frontier(tmp_path / "frontier.sqlite")
    triples = [(f"http://x.test/{i}", f"http://X.test/{i}#f", {"score": i}) for i in range(5)]
    assert fr.add(triples) == 5
    assert fr.add([*triples, ("http://x.test/5", "http://x.test/5", {})]) == 1
    assert fr.counts() == {"pending": 6, "done": 0, "failed": 0, "total": 6}
    rows = fr.claim(3, now=time.time())
    assert [r.url for r in rows] == [f"http://x.test/{i}" for i in range(3)] and rows[0].meta == {"score": 0}
    assert [r.url for r in fr.claim(10, now=time.time())] == [f"http://x.test/{i}" for i in range(3, 6)]
    assert fr.mark_done(rows[0].url, http_status=200, warc_file="a.warc.gz", warc_offset=0, warc_length=10)
    assert not fr.mark_done(rows[0].url, http_status=200)  # done stays done
    fr.mark_failed(rows[1].url, "http_404", None)
    fr.mark_failed(rows[2].url, "timeout", retry_at=time.time() + 3600)
    assert fr.counts() == {"pending": 4, "done": 1, "failed": 1, "total": 6}
    fr.close()
    fr = Frontier(tmp_path / "frontier.sqlite")  # a new process: nothing in flight, the retry not yet due
    assert [r.url for r in fr.claim(10, now=time.time())] == [f"http://x.test/{i}" for i in range(3, 6)]
    assert rows[2].url in [r.url for r in fr.claim(10, now=time.time() + 7200)]
    urls = [f"http://x.test/{i}" for i in range(6)]
    assert fr.tally(urls) == Counter({"pending": 4, "pending_timeout": 1, "done": 1, "failed": 1, "failed_http_404": 1})
    assert fr.next_due(urls) == 0.0 and fr.next_due([rows[2].url]) > time.time() + 3000
    assert fr.next_due([rows[0].url]) is None  # done: nothing to retry
    done = list(fr.done_rows())
    assert len(done) == 1 and done[0].http_status == 200 and done[0].attempts == 1
    assert fr.get(rows[2].url).attempts == 1 and fr.get(rows[2].url).last_error == "timeout"
    assert fr.warc_committed_ends() == {"a.warc.gz": 10}


def test_a_build_rerun_after_a_kill_counts_the_links_it_added_before(tmp_path: Path) -> None:
    """links_new of a build killed after adding some of its links, then run again, equals an uninterrupted
    build's; another build of the same links finds none new."""
    triples = [(f"http://x.test/{i}", f"http://x.test/{i}", {}) for i in range(25)]
    with Frontier(tmp_path / "frontier.sqlite") as fr:
        assert fr.add(triples[:5]) == 5  # an earlier build's
        assert fr.add(triples[:15], batch=4, build="b1") == 10  # killed after adding the first 15
    with Frontier(tmp_path / "frontier.sqlite") as fr:
        assert fr.add(triples, batch=4, build="b1") == 20
        assert fr.add(triples, build="b1") == 20 and fr.add(triples, build="b2") == 0
        assert fr.counts()["total"] == 25


def test_sqlite_errors_of_the_crawl_state_are_one_line_naming_its_file(tmp_path: Path) -> None:
    """A damaged file, or a full disk under a write: SQLite's error, not its traceback."""
    from gpt2cli.errors import Gpt2Error

    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(b"not a database, " * 512)
    with pytest.raises(Gpt2Error, match=rf"^crawl state {damaged}: file is not a database$"):
        Frontier(damaged)
    path = tmp_path / "frontier.sqlite"
    with pytest.raises(Gpt2Error, match=rf"^crawl state {path}: database or disk is full$"), Frontier(path) as fr:
        fr._db.execute("PRAGMA max_page_count = 1")  # as full as a disk can be
        fr.add([(f"http://x.test/{i}", f"http://x.test/{i}", {"title": "t" * 100}) for i in range(100)])


# -- WARC ---------------------------------------------------------------------------------------------------


def write_pages(archive: WarcArchive, n: int, start: int = 0):
    locs = []
    for i in range(start, start + n):
        url = f"http://x.test/p{i}"
        locs.append(
            archive.write_response(
                url=url, status=200, reason="OK", body=page_html(f"/p{i}"),
                headers={"Content-Type": "text/html", "Content-Encoding": "gzip", "Content-Length": "5"},
                request_headers={"User-Agent": "t"}, requested_url=url + "?orig",
            )
        )  # fmt: skip
    return locs


def test_warc_roundtrip_rollover_and_torn_record(tmp_path: Path) -> None:
    archive = WarcArchive(tmp_path, "crawl", max_bytes=2000)
    locs = write_pages(archive, 8)
    archive.close()
    files = archive.files()
    assert len(files) > 1 and files[0].name == "crawl-00000.warc.gz"
    stats: Counter[str] = Counter()
    got = list(iter_responses(files, stats))
    assert [r.url for r in got] == [f"http://x.test/p{i}" for i in range(8)]
    assert all(r.body == page_html(f"/p{i}") and r.status == 200 for i, r in enumerate(got))
    assert got[0].headers["X-Archive-Orig-Content-Encoding"] == "gzip" and got[0].content_type == "text/html"
    assert got[0].requested_url == "http://x.test/p0?orig" and stats["errors"] == 0
    for i, loc in enumerate(locs):
        assert read_record_at(tmp_path / loc.file, loc.offset, loc.length).body == page_html(f"/p{i}")

    last = files[-1]
    good = last.stat().st_size
    with open(last, "ab") as f:  # a kill mid-write: half a gzip member
        f.write(gzip.compress(b"WARC/1.1\r\nWARC-Type: response\r\n" + os.urandom(500))[:200])
    stats = Counter()
    assert len(list(iter_responses([last], stats))) >= 1 and stats["errors"] == 1  # no exception
    assert complete_length(last) == good
    archive = WarcArchive(tmp_path, "crawl", max_bytes=2000)
    assert last.stat().st_size == good and archive.repaired == {last.name: 200}
    write_pages(archive, 2, start=8)
    archive.close()
    assert [r.url for r in iter_responses(archive.files())][-3:] == [f"http://x.test/p{i}" for i in (7, 8, 9)]


def test_warc_cut_back_to_committed(tmp_path: Path) -> None:
    archive = WarcArchive(tmp_path, "c")
    locs = write_pages(archive, 3)
    archive.close()
    committed = {locs[1].file: locs[1].offset + locs[1].length}  # the third was never marked done
    archive = WarcArchive(tmp_path, "c", committed=committed)
    archive.close()
    assert [r.url for r in iter_responses(archive.files())] == ["http://x.test/p0", "http://x.test/p1"]


def test_iter_responses_on_garbage(tmp_path: Path) -> None:
    (tmp_path / "bad.warc.gz").write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(100))
    stats: Counter[str] = Counter()
    assert list(iter_responses([tmp_path / "bad.warc.gz", tmp_path / "absent.warc.gz"], stats)) == []
    assert stats["errors"] == 2


# -- kill -9 ------------------------------------------------------------------------------------------------


def crawl(workdir: Path, port: int) -> None:
    """The crawl loop the stage runs: claim, fetch, archive, mark. Run in a child process by the test."""
    frontier = Frontier(workdir / "frontier.sqlite")
    archive = WarcArchive(workdir / "warc", "crawl", max_bytes=8000, committed=frontier.warc_committed_ends())
    f = Fetcher(fast(concurrency=3), resolver=local_resolver)

    def on_result(r: FetchResult) -> None:
        if r.ok and r.status is not None and r.body is not None:
            loc = archive.write_response(
                url=r.final_url or r.url, status=r.status, reason=r.reason, headers=r.headers, body=r.body,
                request_headers=r.request_headers, requested_url=r.url,
            )  # fmt: skip
            frontier.mark_done(r.url, http_status=r.status, fetched_at=r.fetched_at, warc_file=loc.file,
                               warc_offset=loc.offset, warc_length=loc.length)  # fmt: skip
        else:
            frontier.mark_failed(r.url, r.error or "unknown", None)

    while rows := frontier.claim(6, now=time.time()):
        f.fetch_many([r.url for r in rows], on_result)
    archive.close()


def test_kill_9_mid_crawl_then_resume(server: Server, tmp_path: Path) -> None:
    n = 60
    server.page_delay = 0.02
    urls = [f"http://127.0.0.1:{server.port}/page/{i}" for i in range(n)]
    with Frontier(tmp_path / "frontier.sqlite") as fr:
        fr.add((u, u, {"i": i}) for i, u in enumerate(urls))
    cmd = [sys.executable, __file__, str(tmp_path), str(server.port)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(cmd, env=env)
    db = sqlite3.connect(tmp_path / "frontier.sqlite", timeout=10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        (done,) = db.execute("SELECT COUNT(*) FROM urls WHERE status = 'done'").fetchone()
        if done >= 15:
            break
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done_at_kill = {u for (u,) in db.execute("SELECT url FROM urls WHERE status = 'done'")}
    db.close()
    assert 15 <= len(done_at_kill) < n, "the child finished before it was killed"
    hits_at_kill = Counter(server.hits)

    assert subprocess.run(cmd, env=env, timeout=60).returncode == 0
    with Frontier(tmp_path / "frontier.sqlite") as fr:
        assert fr.counts() == {"pending": 0, "done": n, "failed": 0, "total": n}
        rows = list(fr.done_rows())
    assert sorted(r.url for r in rows) == sorted(urls)
    for r in rows:  # every done URL's record is where the frontier says
        rec = read_record_at(tmp_path / "warc" / r.warc_file, r.warc_offset, r.warc_length)
        assert rec.url == r.url and rec.body == page_html(urllib_path(r.url))
    for url in done_at_kill:  # fetched once, never again after success
        assert server.hits[urllib_path(url)] == hits_at_kill[urllib_path(url)] == 1
    assert max(server.hits[urllib_path(u)] for u in urls) <= 2  # at most the in-flight ones twice
    stats: Counter[str] = Counter()
    replayed = [r.url for r in iter_responses(sorted((tmp_path / "warc").iterdir()), stats)]
    assert sorted(replayed) == sorted(urls) and stats["errors"] == 0  # no torn or duplicate records


def urllib_path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


if __name__ == "__main__":
    crawl(Path(sys.argv[1]), int(sys.argv[2]))
