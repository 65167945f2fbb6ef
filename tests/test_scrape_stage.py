from __future__ import annotations

import html
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gpt2cli.artifacts import Store
from gpt2cli.scrape.frontier import Frontier
from tests.conftest import SAMPLE, run_cli, run_queued_behind

REDDIT = SAMPLE.parent / "reddit"
NOVEMBER, JANUARY, WARC = REDDIT / "RS_2017-11.zst", REDDIT / "RS_2018-01.zst", REDDIT / "pages.warc.gz"


def rows(home: Path, ref: str = "raw-docs") -> list[dict]:
    return pq.read_table(Store(home).resolve(ref).file("documents.parquet")).to_pylist()


def test_replay_of_the_embedded_sample(home: Path):
    result = run_cli(home, "scrape-reddit", "--dump", str(NOVEMBER), "--replay", str(WARC), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    # every case of the sample is counted
    for key in ("filtered_self", "filtered_over_18", "filtered_domain", "filtered_extension", "filtered_score",
                "bad_json", "missing_url", "score_from_string", "failed_http_404", "replay_http_500",
                "failed_not_archived"):  # fmt: skip
        assert summary.get(key, 0) >= 1, key
    # the 500 may pass: left pending for a live run (a replay of the same archive would find it again)
    assert summary["links_pending"] == 1 and "retry_due_at" not in summary
    docs = rows(home)
    assert len(docs) == summary["documents"] > 150
    assert sum(len(d["text"]) for d in docs) > 800_000
    # one URL in five spellings is one document whose score is the sum (1 each)
    (blight,) = [d for d in docs if "tomato-blight" in d["url"]]
    assert blight["score"] == 5 and len(blight["reddit_ids"]) == 5
    assert {"fr", "es", "de"} <= {d["language"] for d in docs}
    assert any(d["domain"] == "en.wikipedia.org" for d in docs)  # removed later, by dedupe
    assert all(d["text"].strip() and d["extractor_version"] for d in docs)
    assert not any("cookies to improve your experience" in d["text"] for d in docs)
    # Parquet that datasets reads
    import datasets

    loaded = datasets.load_dataset("parquet", data_files=str(Store(home).resolve("raw-docs").file("documents.parquet")))
    assert loaded["train"].num_rows == len(docs)
    # the same run again reuses the version; a new month fetches only new URLs and records its parent
    again = run_cli(home, "scrape-reddit", "--dump", str(NOVEMBER), "--replay", str(WARC), "--json")
    assert json.loads(again.stdout)["reused"] is True
    refresh = run_cli(home, "scrape-reddit", "--dump", str(NOVEMBER), "--dump", str(JANUARY), "--replay", str(WARC),
                      "--json")  # fmt: skip
    out = json.loads(refresh.stdout)
    assert out["ref"] == "raw-docs@v2" and out["summary"]["links_new"] == 3
    assert Store(home).resolve("raw-docs@v2").parent["ref"] == "raw-docs@v1"
    cutoff = run_cli(home, "scrape-reddit", "--dump", str(NOVEMBER), "--dump", str(JANUARY), "--replay", str(WARC),
                     "--until", "2017-12-31", "--json")  # fmt: skip
    assert json.loads(cutoff.stdout)["summary"]["filtered_date"] == 3


def test_a_run_killed_after_adding_its_links_counts_them_when_run_again(gpt2, home: Path, monkeypatch):
    """The links a killed run put in the frontier are still this build's: the rerun's summary says they are new,
    as an uninterrupted run's does."""
    args = ["scrape-reddit", "--dump", str(NOVEMBER), "--replay", str(WARC), "--json"]

    def killed(*_: object) -> int:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("gpt2cli.scrape.stage._write_parquet", killed)
        assert gpt2(*args).code == 130
    rerun = json.loads(gpt2(*args).out)
    fresh = run_cli(home.parent / "fresh", *args)
    assert fresh.returncode == 0, fresh.stderr
    assert rerun["summary"]["links_new"] == json.loads(fresh.stdout)["summary"]["links_new"] > 250
    forced = json.loads(gpt2(*args, "--force").out)  # published: a rebuild adds nothing new to the crawl
    assert forced["ref"] == "raw-docs@v2" and forced["summary"]["links_new"] == 0


def test_a_version_made_under_other_scrape_rules_is_rebuilt(gpt2, monkeypatch):
    """Same inputs and options under other link-reading or replay rules give other documents: not reused."""
    args = ["scrape-reddit", "--dump", str(NOVEMBER), "--replay", str(WARC), "--json"]
    assert json.loads(gpt2(*args).out)["reused"] is False
    assert json.loads(gpt2(*args).out)["reused"] is True
    monkeypatch.setattr("gpt2cli.scrape.stage.SCRAPE_RULES_VERSION", 99)
    again = json.loads(gpt2(*args).out)
    assert (again["ref"], again["reused"]) == ("raw-docs@v2", False)


def test_a_queued_scrape_follows_the_version_the_run_before_it_published(home: Path):
    """The version a scrape follows (its parent) is chosen once the lock is held: a run that waited behind another
    records the version that one published, not the one before it (none here)."""
    code, out, err = run_queued_behind(
        home,
        "raw-docs",
        ["scrape-reddit", "--dump", str(NOVEMBER), "--replay", str(WARC)],
        ["scrape-reddit", "--dump", str(NOVEMBER), "--dump", str(JANUARY), "--replay", str(WARC), "--json"],
    )
    assert code == 0, err
    assert json.loads(out)["ref"] == "raw-docs@v2"
    assert Store(home).resolve("raw-docs@v2").parent["ref"] == "raw-docs@v1"


def test_a_dump_folder_is_its_submission_dumps(home: Path, tmp_path: Path):
    """The inputs recorded are the files read: a note or the WARC beside the dumps neither joins the identity
    nor counts twice, so adding one reuses the version."""
    folder = tmp_path / "dumps"
    folder.mkdir()
    shutil.copy(NOVEMBER, folder)
    shutil.copy(WARC, folder)
    (folder / "notes.txt").write_text("where these came from\n")
    args = ["scrape-reddit", "--dump", str(folder), "--replay", str(folder / WARC.name), "--json"]
    first = run_cli(home, *args)
    assert first.returncode == 0, first.stderr
    inputs = Store(home).resolve(json.loads(first.stdout)["ref"]).inputs
    assert [Path(i["path"]).name for i in inputs] == [NOVEMBER.name, WARC.name]
    (folder / "more-notes.txt").write_text("and more\n")
    again = json.loads(run_cli(home, *args).stdout)
    assert again["reused"] and again["ref"] == json.loads(first.stdout)["ref"]


def test_a_dump_removed_or_swapped_after_it_was_checksummed_fails_the_scrape(gpt2, tmp_path: Path, monkeypatch):
    """What the build reads is what was checksummed: a dump gone from its folder by then fails it (exit 1, not a
    usage error: the user named the folder), and a symlink swapped to another dump is not followed."""
    from gpt2cli.artifacts import Store

    folder = tmp_path / "dumps"
    folder.mkdir()
    shutil.copy(NOVEMBER, folder)
    current = tmp_path / "RS_current.zst"
    current.symlink_to(folder / NOVEMBER.name)
    produce = Store.produce

    def meanwhile(change):
        def run(self, *args, **kwargs):
            change()
            return produce(self, *args, **kwargs)

        return run

    november = json.loads(gpt2("scrape-reddit", "--dump", str(NOVEMBER), "--replay", str(WARC), "--json").out)
    with monkeypatch.context() as m:  # a sync job swaps the link to the new month after the checksums
        swap = tmp_path / "swap"
        swap.symlink_to(JANUARY)
        m.setattr(Store, "produce", meanwhile(lambda: swap.replace(current)))
        swapped = gpt2("scrape-reddit", "--dump", str(current), "--replay", str(WARC), "--json", "--force")
    assert swapped.code == 0, swapped.err
    seen = json.loads(swapped.out)["summary"]["submissions_seen"]
    assert seen == november["summary"]["submissions_seen"]  # November's, as checksummed: not January's
    args = ["scrape-reddit", "--dump", str(folder), "--replay", str(WARC), "--json"]
    with monkeypatch.context() as m:
        m.setattr(Store, "produce", meanwhile(lambda: (folder / NOVEMBER.name).unlink()))
        removed = gpt2(*args, "--force")
    assert removed.code == 1
    assert f"input {folder / NOVEMBER.name} became unreadable while raw-docs read it" in removed.err


def test_bad_input(home: Path, tmp_path: Path):
    assert run_cli(home, "scrape-reddit").returncode == 2
    missing = run_cli(home, "scrape-reddit", "--dump", str(tmp_path / "RS_2099-01.zst"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert run_cli(home, "scrape-reddit", "--dump", str(NOVEMBER), "--until", "yesterday").returncode == 2


@pytest.mark.parametrize(
    "args",
    [
        ["scrape-reddit", "--dump", "/dev/stdin"],
        ["scrape-reddit", "--urls", "/dev/stdin"],
        ["train-bpe", "--input", "/dev/stdin"],
        ["dedupe", "--input", "/dev/stdin"],
    ],
)
def test_a_pipe_is_refused_as_an_input(home: Path, args: list[str]):
    """Inputs are checksummed, then read, then read again on resume: a pipe gives its bytes once."""
    result = run_cli(home, *args, input='{"url": "http://example.com/", "text": "a document"}\n')
    option = "input" if args[0] != "scrape-reddit" else args[1]
    assert result.returncode == 2 and result.stderr.splitlines()[-1] == (
        f"gpt2: error: {option} /dev/stdin is a pipe: inputs are checksummed, read, and read again on resume; "
        "save it to a file first"
    )


@pytest.mark.parametrize(
    "option",
    [
        ["--per-host-interval", "-5"],
        ["--per-host-interval", "nan"],
        ["--per-host-interval", "inf"],
        ["--per-host-interval", "1e308"],  # finite, and past any sleep the OS takes
        ["--user-agent", "bot\r\nX-Injected: 1"],
        ["--limit", "-3"],
        ["--time-filter", "decade"],  # without --subreddit, as with it
        ["--subreddit", "science", "--time-filter", "decade"],
    ],
)
def test_bad_option_values_are_usage_errors(gpt2, option: list[str]):
    """Checked before any link is read, each as one line: a NaN interval would silently end the politeness."""
    result = gpt2("scrape-reddit", "--dump", str(NOVEMBER), "--replay", str(WARC), *option)
    assert result.code == 2 and result.err.startswith(f"gpt2: error: {option[-2]} ") and result.err.count("\n") == 1


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_no_document_error_names_a_damaged_dump(gpt2, tmp_path: Path, damage: str):
    """A dump of random bytes used to say "0 submissions; 0 filtered out; 0 links kept" and nothing of why."""
    dump = tmp_path / "RS_2017-11.zst"
    blob = NOVEMBER.read_bytes()
    dump.write_bytes(os.urandom(4096) if damage == "corrupt" else blob[: len(blob) // 2])
    result = gpt2("scrape-reddit", "--dump", str(dump), "--replay", str(WARC), "--min-score", "1000000")
    (error,) = [line for line in result.err.splitlines() if line.startswith("gpt2: error:")]
    assert result.code == 1 and f"submissions (1 dump file {damage}, read up to the damage)" in error, error


def test_no_document_error_carries_its_counts(gpt2):
    """No summary is printed when nothing is published: the one-line error must say why by itself."""
    result = gpt2("scrape-reddit", "--dump", str(NOVEMBER), "--replay", str(WARC), "--min-score", "1000000")
    (error,) = [line for line in result.err.splitlines() if "error" in line]
    assert result.code == 1 and error.startswith("gpt2: error: no document was extracted: 317 submissions (")
    assert "malformed records skipped" in error and "filtered out (score " in error and error.endswith("; 0 links kept")


class _Site:
    """Pages on 127.0.0.1, each answered by ``answer(path, hits)`` as (status, reason phrase or None, content type,
    body), with a count of hits per path."""

    def __init__(self, answer: Callable[[str, Counter[str]], tuple[int, str | None, str, bytes]]):
        self.hits: Counter[str] = Counter()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.hits[self.path] += 1
                status, reason, ctype, body = answer(self.path, site.hits)
                self.send_response(status, reason)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _articles(delay: float) -> _Site:
    """Article pages (/page/K, the sample's texts), each answered after ``delay``; /private/ is disallowed."""
    texts = [p.read_text(encoding="utf-8").split("\n", 3)[3] for p in sorted(SAMPLE.glob("*.txt"))]

    def answer(path: str, hits: Counter[str]) -> tuple[int, str | None, str, bytes]:
        if path == "/robots.txt":
            return 200, None, "text/plain", b"User-agent: *\nDisallow: /private/\n"
        time.sleep(delay)
        k = int(path.rsplit("/", 1)[-1]) if path.startswith("/page/") else 0
        paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in texts[k % len(texts)].split("\n\n"))
        body = (f"<html><body><nav><a href='/'>Home</a></nav><article><h1>Page {k}</h1>{paragraphs}"
                f"</article><footer>Footer</footer></body></html>").encode()  # fmt: skip
        return 200, None, "text/html; charset=utf-8", body

    return _Site(answer)


def test_live_crawl_survives_kill_9(home: Path, tmp_path: Path):
    site = _articles(0.05)
    try:
        urls = tmp_path / "urls.txt"
        urls.write_text("\n".join([f"{site.base}/page/{i}" for i in range(40)] + [f"{site.base}/private/x"]) + "\n")
        args = ["scrape-reddit", "--urls", str(urls), "--allow-private-network", "--per-host-interval", "0.02",
                "--json"]  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpt2cli", *args],
            env={**os.environ, "GPT2_HOME": str(home)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while sum(n for p, n in site.hits.items() if p.startswith("/page/")) < 10:
            assert proc.poll() is None and time.time() < deadline, "the crawl ended before it could be killed"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (home / "raw-docs" / "v1").exists()
        done = run_cli(home, *args)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)["summary"]
        docs = rows(home)
        assert len(docs) == 40 and summary["failed_robots"] == 1
        # a page archived before the kill is never fetched again; at most the in-flight ones are repeated
        repeated = [p for p, n in site.hits.items() if p.startswith("/page/") and n > 1]
        assert len(repeated) <= 2, repeated
        assert site.hits["/private/x"] == 0
    finally:
        site.close()


def test_pending_rows_of_another_run_do_not_starve_new_links(home: Path, tmp_path: Path):
    """A killed run leaves its links pending; a later run with other links still fetches every one of its own."""
    site = _articles(0)
    try:
        with Frontier(home / "raw-docs" / ".crawl" / "frontier.sqlite") as frontier:  # what the killed run left
            frontier.add((u, u, {}) for u in [f"{site.base}/page/{i}" for i in range(5, 15)])
        new = tmp_path / "new.txt"
        new.write_text("".join(f"{site.base}/page/{i}\n" for i in range(5)))
        args = ["--allow-private-network", "--per-host-interval", "0", "--min-score", "0", "--json"]
        result = run_cli(home, "scrape-reddit", "--urls", str(new), *args)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["summary"]["fetched"] == 5 and len(rows(home)) == 5
        assert not any(site.hits[f"/page/{i}"] for i in range(5, 15))
        old = tmp_path / "old.txt"  # the killed run's links, rerun: their rows are claimed and fetched
        old.write_text("".join(f"{site.base}/page/{i}\n" for i in range(5, 15)))
        result = run_cli(home, "scrape-reddit", "--urls", str(old), *args)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["summary"]["fetched"] == 10 and len(rows(home)) == 10
    finally:
        site.close()


LIVE = ("--allow-private-network", "--per-host-interval", "0", "--json")


@pytest.fixture
def three_pages(tmp_path: Path) -> Iterator[Path]:
    """A URL list of three pages served on 127.0.0.1."""
    site = _articles(0)
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"{site.base}/page/{i}\n" for i in range(3)))
    yield urls
    site.close()


def test_links_missing_from_a_replay_are_fetched_by_a_later_live_crawl(home: Path, three_pages: Path):
    """--replay marks what its archive lacks as not archived: a statement on the archive, not on the web."""
    replayed = run_cli(home, "scrape-reddit", "--urls", str(three_pages), "--replay", str(WARC), "--json")
    assert replayed.returncode == 1 and "no document was extracted" in replayed.stderr
    assert "3 links kept; 0 fetched; 3 failed (not_archived 3); 0 pending" in replayed.stderr
    live = run_cli(home, "scrape-reddit", "--urls", str(three_pages), *LIVE)
    assert live.returncode == 0, live.stderr
    summary = json.loads(live.stdout)["summary"]
    assert summary["fetched"] == 3 and summary["frontier_failed"] == 0 and len(rows(home)) == 3


def test_pages_a_replay_supplied_are_in_a_later_live_crawl(home: Path, three_pages: Path, tmp_path: Path):
    """A replay reads another archive; the live crawl's version must hold those pages too, so it fetches them."""
    archived = tmp_path / "archived"
    assert run_cli(archived, "scrape-reddit", "--urls", str(three_pages), *LIVE).returncode == 0
    (warc,) = (archived / "raw-docs" / ".crawl" / "warc").glob("*.warc.gz")
    replayed = run_cli(home, "scrape-reddit", "--urls", str(three_pages), "--replay", str(warc), "--json")
    assert replayed.returncode == 0 and len(rows(home)) == 3, replayed.stderr
    live = run_cli(home, "scrape-reddit", "--urls", str(three_pages), *LIVE)
    assert live.returncode == 0, live.stderr
    assert json.loads(live.stdout)["summary"]["fetched"] == 3 and len(rows(home, "raw-docs@v2")) == 3


def test_a_damaged_crawl_archive_is_fetched_again(home: Path, three_pages: Path):
    assert run_cli(home, "scrape-reddit", "--urls", str(three_pages), *LIVE).returncode == 0
    (warc,) = (home / "raw-docs" / ".crawl" / "warc").glob("*.warc.gz")
    warc.write_bytes(bytes(warc.stat().st_size))  # zeros where every record was
    damaged = run_cli(home, "scrape-reddit", "--urls", str(three_pages), *LIVE, "--force")
    assert damaged.returncode == 1 and "3 pending" in damaged.stderr, damaged.stderr
    again = run_cli(home, "scrape-reddit", "--urls", str(three_pages), *LIVE, "--force")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["summary"]["fetched"] == 3 and len(rows(home, "raw-docs@v2")) == 3


def test_a_crawl_archive_cut_short_loses_only_its_tail(home: Path, three_pages: Path):
    """A WARC shorter than its committed records (a bad copy, a disk fault) used to stop every later run: the pages
    whose records it lost are fetched again, the others read back, and new records never take the lost offsets."""
    assert run_cli(home, "scrape-reddit", "--urls", str(three_pages), *LIVE).returncode == 0
    (warc,) = (home / "raw-docs" / ".crawl" / "warc").glob("*.warc.gz")
    warc.write_bytes(warc.read_bytes()[:-100])  # the last record's tail
    again = run_cli(home, "scrape-reddit", "--urls", str(three_pages), *LIVE, "--force")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)["summary"]
    assert (summary["warc_lost"], summary["fetched"]) == (1, 1), summary
    assert sorted(d["final_url"] for d in rows(home, "raw-docs@v2")) == sorted(three_pages.read_text().split())
    assert [d["text"] for d in rows(home, "raw-docs@v2")] == [d["text"] for d in rows(home, "raw-docs@v1")]


@pytest.mark.parametrize("kind", ["garbage", "text", "blank", "directory", "dump"])
def test_unreadable_replay_is_a_usage_error_before_anything_is_marked(home: Path, tmp_path: Path, kind: str):
    """A wrong --replay path must not mark every link of the run as not archived. warcio reads text as a record
    of the old ARC format (and random bytes often so): that is no WARC either."""
    replay = {"directory": tmp_path, "dump": NOVEMBER}.get(kind, tmp_path / "pages.warc.gz")
    content = {"garbage": bytes(range(256)) * 16, "text": b"garbage " * 512, "blank": b"\r\n" * 8}
    (tmp_path / "pages.warc.gz").write_bytes(content.get(kind, b"x"))
    result = run_cli(home, "scrape-reddit", "--dump", str(NOVEMBER), "--replay", str(replay))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("gpt2: error: --replay ") and result.stderr.count("\n") == 1
    assert not (home / "raw-docs" / ".crawl" / "frontier.sqlite").exists()


def test_a_dump_whose_name_is_not_utf8_publishes(home: Path, tmp_path: Path):
    """File names are bytes; the manifest is UTF-8 JSON: the stray byte is a \\u escape that reads back as the
    same name."""
    site = _articles(0)
    try:
        dump = tmp_path / os.fsdecode(b"RS_\xff.ndjson")
        dump.write_text("".join(json.dumps({"id": str(i), "url": f"{site.base}/page/{i}", "score": 5}) + "\n"
                                for i in range(2)))  # fmt: skip
        result = run_cli(home, "scrape-reddit", "--dump", str(dump), "--allow-private-network", "--per-host-interval",
                         "0", "--json")  # fmt: skip
        assert result.returncode == 0, result.stderr
        manifest = json.loads((home / "raw-docs" / "v1" / "manifest.json").read_text(encoding="utf-8"))
        assert os.fsencode(manifest["inputs"][0]["path"]) == os.fsencode(dump.resolve())
        assert os.fsencode(manifest["params"]["sources"]["dumps"][0]).endswith(b"/RS_\xff.ndjson")
        assert str(dump) in manifest["command"]
        assert len(rows(home)) == 2
    finally:
        site.close()


def test_a_home_whose_name_is_not_utf8_publishes(three_pages: Path, tmp_path: Path):
    """pyarrow takes no path that is not UTF-8: documents.parquet is written, and dedupe reads it, as a file."""
    home = tmp_path / os.fsdecode(b"hh\xe9")
    scraped = run_cli(home, "scrape-reddit", "--urls", str(three_pages), *LIVE)
    assert scraped.returncode == 0, scraped.stderr
    with open(Store(home).resolve("raw-docs").file("documents.parquet"), "rb") as f:
        assert pq.read_table(f).num_rows == 3
    deduped = run_cli(home, "dedupe", "--workers", "1", "--json")
    assert deduped.returncode == 0, deduped.stderr
    assert json.loads(deduped.stdout)["summary"]["documents"] == 3


def test_the_same_dump_named_another_way_is_reused(home: Path, tmp_path: Path):
    site = _articles(0)
    try:
        lines = [json.dumps({"id": str(i), "url": f"{site.base}/page/{i}", "score": 5}) + "\n" for i in range(2)]
        (tmp_path / "RS.ndjson").write_text("".join(lines))
        options = ["--allow-private-network", "--per-host-interval", "0", "--json"]
        names = ("RS.ndjson", str(tmp_path / "RS.ndjson"), "./RS.ndjson")
        runs = [run_cli(home, "scrape-reddit", "--dump", name, *options, cwd=tmp_path) for name in names]
        assert [json.loads(r.stdout)["reused"] for r in runs] == [False, True, True], [r.stderr for r in runs]
    finally:
        site.close()


@pytest.mark.parametrize("name", ["RS_v2_2005-06.xz"])
def test_real_dump_links(home: Path, name: str, tmp_path: Path):
    from tests.conftest import shared_data

    dump = shared_data("reddit", "pushshift", name)
    empty_warc = tmp_path / "none.warc.gz"
    empty_warc.write_bytes(b"")
    result = run_cli(home, "scrape-reddit", "--dump", str(dump), "--replay", str(empty_warc), "--json")
    # nothing is archived, so no document: a clear failure, with the link counts in the log
    assert result.returncode == 1 and "no document was extracted" in result.stderr
    assert "Traceback" not in result.stderr


def _tricky(flaky: int = 0) -> _Site:
    """Pages that test the crawl's edges: a non-ASCII path, a Latin-1 page labelled only by its header, a
    text/plain page, and pages that fail with 503 (``/down`` always, ``/flaky`` the first ``flaky`` times)."""
    article = " ".join(["The council heard the residents' case for a new cycle lane along the river."] * 6)

    def answer(path: str, hits: Counter[str]) -> tuple[int, str | None, str, bytes]:
        if path == "/latin1":
            return 200, None, "text/html; charset=iso-8859-1", f"<p>Café. {article}</p>".encode("latin-1")
        if path == "/notes.txt":
            return 200, None, "text/plain", f"A <note>.\n\n{article}".encode()
        if path == "/down" or (path == "/flaky" and hits["/flaky"] <= flaky):
            return 503, "\u00c9chec", "text/html", b""  # a Latin-1 reason phrase as well
        if path not in ("/caf%C3%A9", "/flaky"):
            return 404, None, "text/html", b"missing"
        return 200, None, "text/html; charset=utf-8", f"<html><body><p>{article}</p></body></html>".encode()

    return _Site(answer)


def test_iri_links_charsets_and_plain_text_pages(home: Path, tmp_path: Path):
    """An IRI link (as dumps hold them) is fetched, archived and extracted, in this run and the next; a page's
    charset comes from its Content-Type header; a text/plain page is text."""
    site = _tricky()
    try:
        urls = tmp_path / "urls.txt"
        urls.write_text(f"{site.base}/café\n{site.base}/latin1\n{site.base}/notes.txt\n", encoding="utf-8")
        for _ in range(2):
            result = run_cli(home, "scrape-reddit", "--urls", str(urls), "--min-score", "0", *LIVE, "--force")
            assert result.returncode == 0, result.stderr
        docs = {d["final_url"]: d for d in rows(home)}
        assert set(docs) == {f"{site.base}/caf%C3%A9", f"{site.base}/latin1", f"{site.base}/notes.txt"}
        assert docs[f"{site.base}/latin1"]["text"].startswith("Café. The council")
        assert docs[f"{site.base}/notes.txt"]["text"].startswith("A <note>.\n\nThe council")
        assert site.hits["/caf%C3%A9"] == 1  # archived once, read back from the WARC by the second run
    finally:
        site.close()


def test_pending_links_are_retried_when_due_then_given_up(home: Path, tmp_path: Path, monkeypatch):
    """A rerun with the same inputs rebuilds while links it left pending are due (it would otherwise reuse its
    version and never retry them), and a link that keeps failing is failed for good after MAX_RUNS_PER_URL runs."""
    from gpt2cli.scrape import stage
    from gpt2cli.scrape.fetch import FetchConfig
    from gpt2cli.scrape.filters import LinkFilters

    monkeypatch.setattr(stage, "RETRY_BASE_S", 0.0)  # due at once, instead of 10 minutes later
    monkeypatch.setattr(stage, "MAX_RUNS_PER_URL", 3)
    site = _tricky(flaky=1)
    try:
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(f"{site.base}/{p}\n" for p in ("latin1", "flaky", "down")))
        store = Store(home)

        def run() -> tuple[str, bool, dict]:
            published = stage.scrape_reddit(
                store,
                sources=stage.LinkSources(url_files=(urls,)),
                filters=LinkFilters(min_score=0),
                fetch=FetchConfig(retries=0, per_host_interval_s=0, allow_private_network=True),
            )
            return published.artifact.ref, published.reused, published.artifact.summary

        ref, reused, summary = run()
        assert (ref, summary["documents"], summary["links_pending"]) == ("raw-docs@v1", 1, 2)
        ref, reused, summary = run()  # /flaky now answers; /down still fails (2 runs of 3)
        assert (ref, reused, summary["documents"], summary["links_pending"]) == ("raw-docs@v2", False, 2, 1)
        ref, reused, summary = run()  # /down's third run: failed for good
        assert (ref, summary["links_pending"], summary["failed_http_503"]) == ("raw-docs@v3", 0, 1)
        assert "retry_due_at" not in summary
        ref, reused, _ = run()
        assert (ref, reused) == ("raw-docs@v3", True) and site.hits["/down"] == 3 and site.hits["/flaky"] == 2
    finally:
        site.close()


def test_a_link_with_an_upper_case_scheme_is_archived_once_and_read_back(gpt2, home: Path, tmp_path: Path):
    """``HTTP://`` used to be archived so, which warcio reads as no HTTP record: the page was fetched by every run
    and never published."""
    site = _articles(0)
    try:
        urls = tmp_path / "urls.txt"
        urls.write_text(site.base.replace("http://", "HTTP://") + "/page/1\n")
        for _ in range(2):
            result = gpt2("scrape-reddit", "--urls", str(urls), *LIVE, "--force")
            assert result.code == 0, result.err
        assert [d["final_url"] for d in rows(home)] == [f"{site.base}/page/1"] and site.hits["/page/1"] == 1
    finally:
        site.close()


def test_a_record_never_read_back_is_failed_after_max_runs(home: Path, tmp_path: Path, monkeypatch):
    """A page archived but unreadable goes back to pending with that reason; it is not fetched by every run forever."""
    from gpt2cli.scrape import stage
    from gpt2cli.scrape.fetch import FetchConfig
    from gpt2cli.scrape.filters import LinkFilters

    monkeypatch.setattr(stage, "MAX_RUNS_PER_URL", 2)
    read = stage.read_record_at

    def unreadable_page_1(path: Path, offset: int, length: int | None = None):
        record = read(path, offset, length)
        if record.url.endswith("/page/1"):
            raise ValueError("no response record")
        return record

    monkeypatch.setattr(stage, "read_record_at", unreadable_page_1)
    site = _articles(0)
    try:
        urls = tmp_path / "urls.txt"
        urls.write_text(f"{site.base}/page/0\n{site.base}/page/1\n")

        def run() -> tuple[str, bool, dict]:
            published = stage.scrape_reddit(
                Store(home),
                sources=stage.LinkSources(url_files=(urls,)),
                filters=LinkFilters(min_score=0),
                fetch=FetchConfig(per_host_interval_s=0, allow_private_network=True),
            )
            return published.artifact.ref, published.reused, published.artifact.summary

        ref, _, summary = run()
        assert (ref, summary["documents"], summary["links_pending"]) == ("raw-docs@v1", 1, 1)
        with Frontier(home / "raw-docs" / ".crawl" / "frontier.sqlite") as frontier:
            assert frontier.get(f"{site.base}/page/1").last_error == "warc_unreadable"
        ref, _, summary = run()  # due again at once: fetched a second time, and given up
        assert (ref, summary["links_pending"], summary["failed_warc_unreadable"]) == ("raw-docs@v2", 0, 1)
        assert run()[:2] == ("raw-docs@v2", True) and site.hits["/page/1"] == 2
    finally:
        site.close()


def _archive(folder: Path, answers: dict[str, tuple[int, dict[str, str], bytes]]) -> Path:
    """A WARC of one response per URL: (status, headers, body)."""
    from gpt2cli.scrape.warc import WarcArchive

    with WarcArchive(folder, prefix="replay") as archive:
        for url, (status, headers, body) in answers.items():
            archive.write_response(url=url, status=status, reason="", headers=headers, body=body)
    (warc,) = folder.glob("*.warc.gz")
    return warc


ARTICLE = f"<html><body><p>{'The council heard the case for a new cycle lane. ' * 8}</p></body></html>".encode()
HTML = {"Content-Type": "text/html; charset=utf-8"}


def test_a_replay_follows_archived_redirects_and_takes_pages_only(gpt2, home: Path, tmp_path: Path):
    """A replay judges an archived answer as a live fetch does: a redirect leads to its target's record (within the
    hop limit, no loops), a body that is not HTML-like is no page. A 301 used to be a page without text, and an
    application/octet-stream body a document."""
    site = "http://news.test"
    answers = {
        f"{site}/old": (301, {"Location": "/c1"}, b""),  # 5 hops to /new: followed
        **{f"{site}/c{i}": (302, {"Location": f"/c{i + 1}" if i < 4 else "/new"}, b"") for i in range(1, 5)},
        f"{site}/d0": (301, {"Location": f"{site}/old"}, b""),  # 6 hops: one too many
        f"{site}/new": (200, HTML, ARTICLE),
        f"{site}/blob": (200, {"Content-Type": "application/octet-stream"}, ARTICLE),
        f"{site}/untyped": (200, {}, ARTICLE),  # sniffed as HTML
        f"{site}/gone": (302, {"Location": f"{site}/elsewhere"}, b""),
        f"{site}/loop": (302, {"Location": f"{site}/loop2"}, b""),
        f"{site}/loop2": (302, {"Location": f"{site}/loop"}, b""),
    }
    warc = _archive(tmp_path / "archive", answers)
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"{site}/{path}\n" for path in ("old", "d0", "blob", "untyped", "gone", "loop")))
    result = gpt2("scrape-reddit", "--urls", str(urls), "--replay", str(warc), "--json")
    assert result.code == 0, result.err
    docs = {d["url"]: d for d in rows(home)}
    assert {url: d["final_url"] for url, d in docs.items()} == {f"{site}/old": f"{site}/new",
                                                                 f"{site}/untyped": f"{site}/untyped"}  # fmt: skip
    assert docs[f"{site}/old"]["text"].startswith("The council heard")
    summary = json.loads(result.out)["summary"]
    assert {k: v for k, v in summary.items() if k.startswith("failed_")} == {
        "failed_too_many_redirects": 1, "failed_not_html": 1, "failed_not_archived": 1, "failed_redirect_loop": 1,
    }  # fmt: skip
    # the index holds what the links' chains reach, not every record of the archives (a pass per hop)
    from collections import Counter

    from gpt2cli.scrape.stage import _archive_index

    index = _archive_index([warc], [f"{site}/old", f"{site}/blob"], 5, Counter())
    assert set(index.exact) == {f"{site}/{p}" for p in ("old", "blob", "c1", "c2", "c3", "c4", "new")}


def test_a_replay_finds_redirect_targets_exactly_then_as_spelled_otherwise(gpt2, home: Path, tmp_path: Path):
    """``/dir`` redirecting to ``/dir/`` is one normalized URL but two records: the redirect leads to the page, not
    back to itself as a loop. A target the archive spells otherwise (``https://www.news.test`` recorded with its
    slash, a default port, lower-case escapes) is still found by its normalized URL."""
    site = "http://news.test"
    warc = _archive(tmp_path / "archive", {
        f"{site}/dir": (301, {"Location": f"{site}/dir/"}, b""),
        f"{site}/dir/": (200, HTML, ARTICLE),
        f"{site}/a": (301, {"Location": "https://www.news.test"}, b""),
        "https://www.news.test/": (200, HTML, ARTICLE),
        f"{site}/b": (302, {"Location": "http://news.test:80/pb"}, b""),
        f"{site}/pb": (200, HTML, ARTICLE),
    })  # fmt: skip
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"{site}/{p}\n" for p in ("dir", "a", "b")))
    result = gpt2("scrape-reddit", "--urls", str(urls), "--replay", str(warc), "--json")
    assert result.code == 0, result.err
    docs = {d["url"]: d["final_url"] for d in rows(home)}
    assert docs == {f"{site}/dir": f"{site}/dir/", f"{site}/a": "https://www.news.test/", f"{site}/b": f"{site}/pb"}


def test_an_archived_failure_that_may_pass_is_fetched_by_a_later_live_run(home: Path, tmp_path: Path, monkeypatch):
    """A 503 (or 429, another 5xx) in an archive says the page was down then: it is left pending, and a live run
    fetches it. It used to be failed for good, so no live run ever tried it."""
    from gpt2cli.scrape import stage
    from gpt2cli.scrape.fetch import FetchConfig
    from gpt2cli.scrape.filters import LinkFilters

    monkeypatch.setattr(stage, "RETRY_BASE_S", 0.0)  # due at once, instead of 10 minutes after the archived answer
    site = _articles(0)
    try:
        warc = _archive(tmp_path / "archive", {f"{site.base}/page/0": (503, HTML, b"down"),
                                               f"{site.base}/page/1": (200, HTML, ARTICLE)})  # fmt: skip
        urls = tmp_path / "urls.txt"
        urls.write_text(f"{site.base}/page/0\n{site.base}/page/1\n")

        def run(*replays: Path) -> dict:
            return stage.scrape_reddit(
                Store(home),
                sources=stage.LinkSources(url_files=(urls,), replays=replays),
                filters=LinkFilters(min_score=0),
                fetch=FetchConfig(per_host_interval_s=0, allow_private_network=True),
            ).artifact.summary

        replayed = run(warc)
        assert (replayed["documents"], replayed["links_pending"], replayed["replay_http_503"]) == (1, 1, 1)
        live = run()
        assert (live["documents"], live["links_pending"], live.get("failed_http_503")) == (2, 0, None)
        assert site.hits["/page/0"] == 1
    finally:
        site.close()
