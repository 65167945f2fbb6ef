"""Crawl throughput: pages/s fetched (politely) and extracted, against a local server with injected latency.

The server answers on every loopback address (127.0.0.K are distinct hosts to the crawler), each response
delayed by ``--latency``; the crawl must start each request to a host ``--interval`` seconds after the previous
one to it ended. The best possible rate is therefore min(hosts / (interval + latency), concurrency / latency); the
script prints the rate reached, that bound, and the extraction rate on the fetched pages.

    .venv/bin/python benchmarks/bench_scrape.py
    .venv/bin/python benchmarks/bench_scrape.py --hosts 64 --pages 1280 --latency 0.3 --concurrency 32
"""

from __future__ import annotations

import argparse
import html
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from gpt2cli.scrape.extract import extract
from gpt2cli.scrape.fetch import FetchConfig, Fetcher

ARTICLES = Path(__file__).parent.parent / "data" / "sample" / "articles"


def serve(latency: float) -> tuple[ThreadingHTTPServer, int]:
    texts = [p.read_text(encoding="utf-8").split("\n", 3)[3] for p in sorted(ARTICLES.glob("*.txt"))]
    pages = [
        ("<html><head><title>t</title></head><body><nav><a href='/'>Home</a> <a href='/a'>About</a></nav><article>"
         + "".join(f"<p>{html.escape(p)}</p>" for p in t.split("\n\n"))
         + "</article><footer>(c) site</footer></body></html>").encode()
        for t in texts
    ]  # fmt: skip

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            time.sleep(latency)
            if self.path == "/robots.txt":
                body, ctype = b"User-agent: *\nAllow: /\n", "text/plain"
            else:
                body, ctype = pages[hash(self.path) % len(pages)], "text/html; charset=utf-8"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=40)
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    server, port = serve(args.latency)
    urls = [f"http://127.0.0.{1 + i % args.hosts}:{port}/page/{i}" for i in range(args.pages)]
    config = FetchConfig(concurrency=args.concurrency, per_host_interval_s=args.interval, allow_private_network=True)
    bodies: list[bytes] = []
    errors: list[str] = []

    def on_result(result) -> None:
        (bodies.append(result.body) if result.ok else errors.append(result.error or "?"))

    started = time.perf_counter()
    Fetcher(config).fetch_many(urls, on_result)
    fetch_s = time.perf_counter() - started
    started = time.perf_counter()
    words = sum(len(extract(b).text.split()) for b in bodies)
    extract_s = time.perf_counter() - started
    server.shutdown()
    # each host also serves its robots.txt, one request like the others: every request to a host starts the
    # interval after the previous one to it ended
    bound = min(args.hosts / (args.interval + args.latency), args.concurrency / args.latency)
    per_host = args.pages / args.hosts + 1
    ideal_s = max(
        per_host * args.latency + (per_host - 1) * args.interval, args.pages / (args.concurrency / args.latency)
    )
    print(f"{args.pages} pages on {args.hosts} hosts, latency {args.latency}s, interval {args.interval}s, "
          f"concurrency {args.concurrency}")  # fmt: skip
    print(f"fetched {len(bodies)} ok, {len(errors)} failed in {fetch_s:.1f} s: {len(bodies) / fetch_s:.1f} pages/s "
          f"(bound {bound:.1f} pages/s; ideal time {ideal_s:.1f} s with robots.txt)")  # fmt: skip
    print(
        f"extracted {len(bodies)} pages ({words:,} words) in {extract_s:.2f} s: {len(bodies) / extract_s:.1f} pages/s"
    )


if __name__ == "__main__":
    main()
