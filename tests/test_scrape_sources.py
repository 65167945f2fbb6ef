"""The link side of `gpt2 scrape-reddit`: URL normalization, submission sources, WebText's link filters."""

from __future__ import annotations

import base64
import bz2
import datetime as dt
import gzip
import io
import json
import lzma
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import zstandard

from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.scrape.filters import LinkFilters, blocked_host, collect_links, parse_day, url_extension
from gpt2cli.scrape.sources import RedditAPI, Submission, iter_dumps, parse_listing, read_dump, read_url_list
from gpt2cli.scrape.urls import host_of, normalize_url, registered_domain
from tests.conftest import shared_data

# ------------------------------------------------------------------------------------------------- urls


@pytest.mark.parametrize(
    "spelling",
    [
        "http://example.com/news/story?id=7&page=2",
        "HTTP://EXAMPLE.COM/news/story?id=7&page=2",
        "http://example.com:80/news/story?id=7&page=2",
        "http://example.com/news/story/?id=7&page=2",
        "http://example.com/news/story?page=2&id=7",
        "http://example.com/news/story?id=7&page=2#comments",
        "http://example.com/news/story?id=7&utm_source=reddit&page=2&utm_medium=social",
        "http://example.com/news/story?fbclid=IwAR0x&id=7&page=2&gclid=abc&mc_cid=1&mc_eid=2&ref_src=twsrc",
        "http://example.com/%6Eews/./old/../story?id=%37&page=2",
        "  http://example.com/news/story?id=7&page=2\n",
        "http://user:pw@Example.com./news/story?id=7&page=2",
        "http://example.com/news/story?id=7&&page=2",
    ],
)
def test_spellings_of_one_url_normalize_equal(spelling: str) -> None:
    assert normalize_url(spelling) == "http://example.com/news/story?id=7&page=2"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.com", "http://example.com/"),
        ("https://example.com:443/", "https://example.com/"),
        ("https://example.com:80/", "https://example.com:80/"),  # not the default port of https
        ("http://example.com:8080/a/", "http://example.com:8080/a"),
        ("https://example.com/", "https://example.com/"),  # https and http stay distinct
        ("http://bücher.de/Straße", "http://xn--bcher-kva.de/Stra%C3%9Fe"),
        ("http://XN--BCHER-KVA.de/Stra%c3%9fe", "http://xn--bcher-kva.de/Stra%C3%9Fe"),
        ("http://例え.jp/", "http://xn--r8jz45g.jp/"),
        ("http://example.com/a b", "http://example.com/a%20b"),
        ("http://example.com/a%2fb%7e", "http://example.com/a%2Fb~"),
        ("http://example.com/100%", "http://example.com/100%25"),
        ("http://example.com/?UTM_Source=x&q=a+b", "http://example.com/?q=a+b"),
        ("http://example.com/?ref=front", "http://example.com/?ref=front"),  # "ref" alone can be content
        ("http://[2001:DB8::1]:80/x", "http://[2001:db8::1]/x"),
        ("http://192.168.0.1/x", "http://192.168.0.1/x"),
        ("http://example.com/a/..", "http://example.com/"),
    ],
)
def test_normalize_url_details(url: str, expected: str) -> None:
    assert normalize_url(url) == expected
    assert normalize_url(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "   ",
        "not a url",
        "example.com/page",
        "ftp://example.com/file",
        "javascript:alert(1)",
        "mailto:someone@example.com",
        "http://",
        "http:///path",
        "http://exa mple.com/",
        "http://a..b.com/",
        "http://-bad-.com/",
        "http://example.com:99999/",
        "http://example.com:port/",
        "http://[::1/",
        "http://example.com/\x00",
        "http://" + "a" * 64 + ".com/",
    ],
)
def test_garbage_is_none(garbage: str) -> None:
    assert normalize_url(garbage) is None


def test_host_and_registered_domain() -> None:
    assert host_of("HTTP://News.BBC.co.uk:8080/x") == "news.bbc.co.uk"
    assert host_of("http://bücher.de/") == "xn--bcher-kva.de"
    assert host_of("nonsense") == ""
    assert registered_domain("news.bbc.co.uk") == "bbc.co.uk"
    assert registered_domain("www.abc.net.au") == "abc.net.au"
    assert registered_domain("a.b.example.com") == "example.com"
    assert registered_domain("Example.COM.") == "example.com"
    assert registered_domain("co.uk") == "co.uk"
    assert registered_domain("localhost") == "localhost"
    assert registered_domain("10.0.0.1") == "10.0.0.1"
    assert registered_domain("someone.blogspot.com") == "blogspot.com"  # private suffixes: documented


# ------------------------------------------------------------------------------------- real Reddit data


def test_real_pushshift_dumps_match_their_readme() -> None:
    folder = shared_data("reddit", "pushshift")
    for name, records, karma3 in (("RS_v2_2005-06.xz", 103, 83), ("RS_v2_2005-07.xz", 1079, 757)):
        stats: Counter[str] = Counter()
        subs = list(read_dump(folder / name, stats))
        assert len(subs) == records == stats["records"] == stats["lines"]
        assert sum(s.score is not None and s.score >= 3 for s in subs) == karma3
        assert set(stats) == {"files", "lines", "records"}  # clean data: nothing else counted
        assert all(s.source == name and s.subreddit == "reddit.com" and not s.is_self for s in subs)
        assert all(isinstance(s.created_utc, int) and s.id for s in subs)
        assert not any("&amp;" in s.url for s in subs)  # Pushshift's escaping undone (2005-07 has 159 such URLs)
    stats = Counter()
    assert len(list(iter_dumps([folder], stats))) == 103 + 1079
    assert stats["files"] == 2


def test_real_dumps_through_the_filters() -> None:
    stats: Counter[str] = Counter()
    links = collect_links(iter_dumps([shared_data("reddit", "pushshift")], stats), LinkFilters(), stats)
    assert stats["submissions_seen"] == 1182
    assert len(links) == stats["links_kept"] > 0
    assert all(link.score is not None and link.score >= 3 for link in links.values())
    assert not any(blocked_host(host_of(url), LinkFilters().domain_blocklist) for url in links)
    assert sum(v for k, v in stats.items() if k.startswith("filtered_")) + stats["links_kept"] <= 1182
    # 2005 is before the cut-off; a cut-off before June 2005 drops everything by date
    early: Counter[str] = Counter()
    before_2005 = LinkFilters(until=dt.date(2004, 12, 31))
    assert not collect_links(iter_dumps([shared_data("reddit", "pushshift")], early), before_2005, early)
    assert early["filtered_date"] == 1182


@pytest.mark.parametrize(
    ("name", "non_self", "after"),
    [
        ("reddit_top_all_limit100_2016-03-01.json", 81, "t3_3hidw9"),
        ("reddit_hot_limit100_2016-03-01.json", 72, "t3_48a6f9"),
        ("reddit_domain_youtube.com_top_all_limit100_2016-11-16.json", 100, "t3_2hxpvh"),
    ],
)
def test_real_api_listings(name: str, non_self: int, after: str) -> None:
    obj = json.loads(shared_data("reddit", "api-listings", name).read_text(encoding="utf-8"))
    subs, cursor = parse_listing(obj, source="api:r/all")
    assert len(subs) == 100 and cursor == after
    assert sum(not s.is_self for s in subs) == non_self
    assert all(isinstance(s.created_utc, int) and s.created_utc > 1.1e9 for s in subs)  # float in the JSON
    assert all(s.id and s.subreddit and s.score is not None and s.source == "api:r/all" for s in subs)
    if "youtube" in name:
        stats: Counter[str] = Counter()
        assert collect_links(subs, LinkFilters(), stats) == {}
        assert stats["filtered_domain"] + stats["filtered_over_18"] == 100


def test_parse_listing_rejects_other_answers_and_skips_other_things() -> None:
    with pytest.raises(Gpt2Error, match="not a Reddit Listing"):
        parse_listing({"error": 403, "message": "Forbidden"})
    children = [
        {"kind": "t1", "data": {"url": "http://a.com/"}},
        {"kind": "t3", "data": {"id": "x", "url": "http://b.com/", "score": "5", "created_utc": 1.5e9}},
        {"kind": "t3", "data": {"id": "y"}},
        "junk",
    ]
    subs, after = parse_listing({"kind": "Listing", "data": {"children": children, "after": None}})
    assert after is None
    assert [(s.id, s.url, s.score, s.created_utc) for s in subs] == [("x", "http://b.com/", 5, 1_500_000_000)]


# ------------------------------------------------------------------------------------------ dump files


def _records(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"r{i}", "url": f"http://site{i % 7}.com/page/{i}", "score": i % 5, "subreddit": "news",
         "created_utc": 1_500_000_000 + i, "is_self": False, "over_18": False, "domain": f"site{i % 7}.com",
         "title": f"story {i}"}
        for i in range(n)
    ]  # fmt: skip


def _ndjson(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def _zstd_long(data: bytes, frames: int = 1) -> bytes:
    """zstd as Pushshift writes it: streamed (no content size), a 256 MiB window (zstd --long=28)."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=28)
    out = io.BytesIO()
    step = -(-len(data) // frames)
    for start in range(0, len(data), step):
        with zstandard.ZstdCompressor(compression_params=params).stream_writer(out, closefd=False) as writer:
            for i in range(start, min(start + step, len(data)), 4096):
                writer.write(data[i : min(i + 4096, start + step)])
    return out.getvalue()


def test_zstd_with_a_long_window_streams(tmp_path: Path) -> None:
    records = _records(3000)
    blob = _zstd_long(_ndjson(records))
    assert zstandard.get_frame_parameters(blob).window_size == 2**28
    with pytest.raises(zstandard.ZstdError):  # the default decoder refuses: max_window_size matters
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
    path = tmp_path / "RS_2017-12.zst"
    path.write_bytes(blob)
    stats: Counter[str] = Counter()
    subs = list(read_dump(path, stats))
    assert [s.id for s in subs] == [r["id"] for r in records]
    assert subs[5] == Submission("r5", "http://site5.com/page/5", 0, "news", 1_500_000_005, False, False,
                                 "site5.com", "story 5", "RS_2017-12.zst")  # fmt: skip
    assert stats == Counter(files=1, lines=3000, records=3000)


def test_zstd_with_several_frames(tmp_path: Path) -> None:
    path = tmp_path / "RS_2017-11.zst"
    path.write_bytes(_zstd_long(_ndjson(_records(900)), frames=3))
    stats: Counter[str] = Counter()
    assert len(list(read_dump(path, stats))) == 900
    assert "truncated_files" not in stats


@pytest.mark.parametrize("suffix", [".bz2", ".gz", ".xz", ".ndjson", ".jsonl", ".json", ""])
def test_other_compressions_and_plain(tmp_path: Path, suffix: str) -> None:
    data = _ndjson(_records(50))
    compress = {".bz2": bz2.compress, ".gz": gzip.compress, ".xz": lzma.compress}.get(suffix, lambda b: b)
    path = tmp_path / f"RS_2010-01{suffix}"
    path.write_bytes(compress(data))
    stats: Counter[str] = Counter()
    assert [s.url for s in read_dump(path, stats)] == [r["url"] for r in _records(50)]
    assert stats["records"] == 50


@pytest.mark.parametrize("suffix", [".zst", ".xz", ".gz", ".bz2"])
def test_truncated_file_keeps_what_was_read(tmp_path: Path, suffix: str) -> None:
    data = _ndjson(_records(20_000))
    xz = lambda b: lzma.compress(b, preset=1)  # noqa: E731
    compress = {".zst": _zstd_long, ".bz2": bz2.compress, ".gz": gzip.compress, ".xz": xz}[suffix]
    blob = compress(data)
    path = tmp_path / f"RS_cut{suffix}"
    path.write_bytes(blob[: len(blob) * 3 // 4])
    stats: Counter[str] = Counter()
    subs = list(read_dump(path, stats))  # never raises
    assert stats["truncated_files"] == 1
    assert 0 < len(subs) < 20_000
    assert [s.id for s in subs] == [f"r{i}" for i in range(len(subs))]  # a prefix, in order


def test_dump_urls_and_titles_are_unescaped_as_pushshift_escapes_them(tmp_path: Path) -> None:
    """Pushshift stores ``&``, ``<`` and ``>`` of a url and title as entities: ``?a=1&amp;b=2`` is the link
    ``?a=1&b=2`` (one link, its karma summed; no ``amp;utm_source`` parameter left), and nothing else is unescaped."""
    records = [
        {"id": "a", "url": "http://example.com/story?a=1&amp;b=2&amp;utm_source=reddit", "score": 2,
         "title": "Q&amp;A: &lt;live&gt; &amp;amp;"},
        {"id": "b", "url": "http://example.com/story?a=1&b=2", "score": 1, "title": "Q&A"},
        {"id": "c", "url": "http://example.com/list?x=1&para=2&copy=3&amp;lt;", "score": 5},
    ]  # fmt: skip
    path = tmp_path / "RS_2017-12.zst"
    path.write_bytes(_zstd_long(_ndjson(records)))
    stats: Counter[str] = Counter()
    subs = list(read_dump(path, stats))
    assert [(s.url, s.title) for s in subs] == [
        ("http://example.com/story?a=1&b=2&utm_source=reddit", "Q&A: <live> &amp;"),
        ("http://example.com/story?a=1&b=2", "Q&A"),
        ("http://example.com/list?x=1&para=2&copy=3&lt;", None),
    ]
    links = collect_links(subs, LinkFilters(), stats)
    assert links["http://example.com/story?a=1&b=2"].score == 3  # 2 + 1: one link, kept
    # Reddit's API with raw_json=1 sends them unescaped: what it sends is the link
    listing = {"kind": "Listing", "data": {"children": [{"kind": "t3", "data": records[0]}], "after": None}}
    assert parse_listing(listing)[0][0].url == records[0]["url"]


def test_corrupt_file_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "RS_bad.gz"
    path.write_bytes(b"this is not gzip at all\n" * 10)
    stats: Counter[str] = Counter()
    assert list(read_dump(path, stats)) == []
    assert stats["corrupt_files"] == 1


def _zstd_frames(*parts: bytes) -> bytes:
    """One real zstd frame (content checksum included) per part, concatenated."""
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
    return b"".join(compressor.compress(part) for part in parts)


_JUNK = b"\x00" * 16 + bytes(range(1, 256)) * 4  # zero bytes, then what no compressor starts a stream with
_COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    ".zst": _zstd_frames,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".gz": gzip.compress,
}


@pytest.mark.parametrize("suffix", list(_COMPRESSORS))
def test_junk_after_the_last_stream_is_counted_and_what_precedes_it_kept(tmp_path: Path, suffix: str) -> None:
    """Junk after a complete stream is damage like any other: counted as a corrupt file, every record before it
    kept (bz2 and xz used to drop it silently, zstd to drop the records of the chunk that held it)."""
    records = _records(300)
    path = tmp_path / f"RS_junk{suffix}"
    path.write_bytes(_COMPRESSORS[suffix](_ndjson(records)) + _JUNK)
    stats: Counter[str] = Counter()
    assert [s.id for s in read_dump(path, stats)] == [r["id"] for r in records]
    assert stats["corrupt_files"] == 1 and "truncated_files" not in stats


@pytest.mark.parametrize("suffix", list(_COMPRESSORS))
def test_concatenated_streams_and_zero_padding_are_read_whole(tmp_path: Path, suffix: str) -> None:
    """Several streams in one file (pbzip2, pixz, zstd's frames) are one dump; NUL padding between or after them
    (xz's stream padding, a file rounded up to a block) is no damage."""
    records = _records(90)
    compress = _COMPRESSORS[suffix]
    parts = [compress(_ndjson(records[i : i + 30])) for i in range(0, 90, 30)]
    path = tmp_path / f"RS_multi{suffix}"
    path.write_bytes(parts[0] + parts[1] + b"\x00" * 8 + parts[2] + b"\x00" * 12)
    stats: Counter[str] = Counter()
    assert [s.id for s in read_dump(path, stats)] == [r["id"] for r in records]
    assert stats == Counter(files=1, lines=90, records=90)


def test_zstd_complete_frames_before_damage_are_kept(tmp_path: Path) -> None:
    """Small frames share one read of the file: the damaged one must not take the good ones before it along."""
    records = _records(400)
    frames = [_ndjson(records[i : i + 100]) for i in range(0, 400, 100)]
    damaged = bytearray(_zstd_frames(frames[2]))
    damaged[len(damaged) // 2 : len(damaged) // 2 + 40] = bytes(range(1, 41))
    path = tmp_path / "RS_damaged.zst"
    path.write_bytes(_zstd_frames(frames[0], frames[1]) + bytes(damaged) + _zstd_frames(frames[3]))
    assert path.stat().st_size < 1 << 16  # all four frames in one read
    stats: Counter[str] = Counter()
    ids = [s.id for s in read_dump(path, stats)]
    assert ids[:200] == [r["id"] for r in records[:200]]
    assert not set(ids) & {r["id"] for r in records[300:]}  # nothing after the damage
    assert stats["corrupt_files"] == 1


def test_zstd_one_big_frame_then_junk_keeps_all_its_records(tmp_path: Path) -> None:
    rng = random.Random(0)
    records = [{**r, "title": rng.randbytes(16).hex()} for r in _records(20_000)]  # titles zstd cannot shrink
    blob = _zstd_frames(_ndjson(records))
    assert len(blob) > 3 << 16  # the frame spans several reads; its end shares the last one with the junk
    path = tmp_path / "RS_big.zst"
    path.write_bytes(blob + _JUNK)
    stats: Counter[str] = Counter()
    assert [s.id for s in read_dump(path, stats)] == [r["id"] for r in records]
    assert stats["corrupt_files"] == 1


def test_malformed_records_are_counted_never_fatal(tmp_path: Path) -> None:
    lines = [
        '{"id": "a", "url": "http://a.com/", "score": 10, "created_utc": 1500000000}',
        "{not json",
        "[1, 2, 3]",
        '"a string"',
        "",
        '{"id": "b", "score": 5}',
        '{"id": "c", "url": "", "score": 5}',
        '{"id": "d", "url": null}',
        '{"id": "e", "url": 42}',
        '{"id": "f", "url": "http://f.com/", "score": "12", "created_utc": "1135987200"}',
        '{"id": "g", "url": "http://g.com/", "score": null, "created_utc": null}',
        '{"id": "h", "url": "http://h.com/", "score": "lots", "created_utc": "yesterday"}',
        '{"id": "i", "url": "http://i.com/", "score": 7.0, "created_utc": 1500000000.9, "is_self": "false"}',
        '{"id": "j", "url": "http://j.com/", "score": true, "over_18": "true", "is_self": null}',
        '{"id": 123, "url": "  http://k.com/  ", "score": " 3 ", "created_utc": "1.5e9"}',
        '{"id": "l", "url": "http://l.com/\\u00e9", "title": "caf\\u00e9"}',
    ]
    path = tmp_path / "messy.jsonl"
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe garbage bytes\n")
    stats: Counter[str] = Counter()
    subs = {s.id: s for s in read_dump(path, stats)}
    assert list(subs) == ["a", "f", "g", "h", "i", "j", "123", "l"]
    assert (subs["f"].score, subs["f"].created_utc) == (12, 1135987200)
    assert (subs["g"].score, subs["g"].created_utc) == (None, None)
    assert (subs["h"].score, subs["h"].created_utc) == (None, None)
    assert (subs["i"].score, subs["i"].created_utc, subs["i"].is_self) == (7, 1500000000, False)
    assert (subs["j"].score, subs["j"].over_18, subs["j"].is_self) == (None, True, False)
    assert (subs["123"].url, subs["123"].score, subs["123"].created_utc) == ("http://k.com/", 3, 1_500_000_000)
    assert subs["l"].title == "café"
    assert stats["bad_json"] == 2  # "{not json" and the undecodable bytes
    assert stats["not_object"] == 2
    assert stats["missing_url"] == 4
    assert stats["score_from_string"] == 2 and stats["created_utc_from_string"] == 2
    assert stats["score_invalid"] == 2  # "lots" and true
    assert stats["created_utc_invalid"] == 1
    assert stats["score_missing"] == 2 and stats["created_utc_missing"] == 3  # null or absent
    assert stats["records"] == 8 and stats["lines"] == len([line for line in lines if line]) + 1


def test_pathological_records_are_counted_never_fatal(tmp_path: Path) -> None:
    """Lines that break the JSON parser or the int64 columns downstream are counted, not a traceback."""
    lines = [
        "[" * 200_000,  # RecursionError inside json.loads
        '{"id": "n", "url": "http://n.com/", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"id": "d", "url": "http://d.com/", "score": ' + "9" * 5000 + "}",  # past int()'s 4300 digits
        '{"id": "s", "url": "http://s.com/", "score": "' + "9" * 5000 + '", "created_utc": "' + "1" * 5000 + '"}',
        '{"id": "b", "url": "http://b.com/", "score": 1e300, "created_utc": 99999999999999999999999999}',
        '{"id": "t", "url": "http://t.com/", "score": "abc", "created_utc": [1], "subreddit": {"a": 1}}',
        '{"id": "u", "url": 12345, "score": 5}',
        '{"id": "k", "url": "http://k.com/", "score": 4, "created_utc": 1500000000}',
    ]
    path = tmp_path / "RS_bad.ndjson"
    path.write_text("\n".join(lines) + "\n")
    stats: Counter[str] = Counter()
    subs = {s.id: s for s in read_dump(path, stats)}
    assert list(subs) == ["s", "b", "t", "k"]
    assert all(s.score is None and s.created_utc is None for s in (subs["s"], subs["b"], subs["t"]))
    assert subs["t"].subreddit is None and (subs["k"].score, subs["k"].created_utc) == (4, 1_500_000_000)
    assert stats["bad_json"] == 3 and stats["missing_url"] == 1
    assert stats["score_invalid"] == 3 and stats["created_utc_invalid"] == 3


def test_lone_surrogates_are_counted_never_stored(tmp_path: Path) -> None:
    """JSON's lone-surrogate escapes decode to text no UTF-8 store accepts (SQLite, Parquet): a record that
    would carry one into the frontier or documents.parquet is skipped as ``bad_unicode``; one in a field the
    stage never stores (title, domain) only loses that field; one in a field never read does not matter."""
    lines = [
        r'{"id": "a", "url": "http://a.com/\ud800", "score": 5}',
        r'{"id": "b\udc80", "url": "http://b.com/", "score": 5}',
        r'{"id": "c", "url": "http://c.com/", "subreddit": "news\ud83d", "score": 5}',
        r'{"id": "d", "url": "http://d.com/", "title": "caf\udce9", "domain": "d\ud800.com", "score": 5}',
        r'{"id": "e", "url": "http://e.com/", "selftext": "\udfff", "author": "\ud800", "score": 5}',
        r'{"id": "f", "url": "http://f.com/\ud83d\ude00", "title": "\ud83d\ude00", "score": 5}',
    ]
    path = tmp_path / "RS_surrogates.ndjson"
    path.write_text("\n".join(lines) + "\n")
    stats: Counter[str] = Counter()
    subs = {s.id: s for s in read_dump(path, stats)}
    assert list(subs) == ["d", "e", "f"]
    assert (subs["d"].title, subs["d"].domain) == (None, None)
    assert subs["f"].url == "http://f.com/\U0001f600" and subs["f"].title == "\U0001f600"  # a valid pair
    assert stats["bad_unicode"] == 3 and stats["records"] == 3
    assert stats["title_invalid"] == 1 and stats["domain_invalid"] == 1
    for sub in subs.values():
        for value in vars(sub).values():
            if isinstance(value, str):
                value.encode("utf-8")
    listing = {"kind": "t3", "data": {"id": "x", "url": "http://x.com/\ud800"}}
    assert parse_listing({"kind": "Listing", "data": {"children": [listing], "after": None}}) == ([], None)


def test_summed_score_stays_in_int64() -> None:
    """documents.parquet stores the summed score as int64: a flood of huge scores saturates, never overflows."""
    subs = [_sub("http://big.com/", 2**53, id=str(i)) for i in range(2000)]
    links = collect_links(subs, LinkFilters(), Counter())
    assert links["http://big.com/"].score == 2**63 - 1


def test_directory_input(tmp_path: Path) -> None:
    (tmp_path / "2005" / "sub").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "2005" / "RS_2005-07.xz").write_bytes(lzma.compress(_ndjson(_records(3))))
    (tmp_path / "2005" / "sub" / "RS_2005-08.bz2").write_bytes(bz2.compress(_ndjson(_records(4))))
    (tmp_path / "RS_2005-06").write_bytes(_ndjson(_records(2)))  # Pushshift's suffix-less plain dumps
    (tmp_path / "README.txt").write_text("not a dump\n")
    (tmp_path / "notes").write_text("not a dump either\n")
    (tmp_path / ".hidden" / "RS_2005-09.jsonl").write_bytes(_ndjson(_records(5)))
    stats: Counter[str] = Counter()
    sources = [s.source for s in iter_dumps([tmp_path], stats)]
    assert sources == ["RS_2005-07.xz"] * 3 + ["RS_2005-08.bz2"] * 4 + ["RS_2005-06"] * 2  # sorted by path
    assert stats["files"] == 3
    with pytest.raises(UsageError, match="missing does not exist"):
        list(iter_dumps([tmp_path / "missing"], Counter()))


def test_a_folder_gives_only_its_submission_dumps(tmp_path: Path) -> None:
    """A folder of dumps holds more than submissions (RC_* comment dumps, the WARC archive of the pages, other
    NDJSON): only RS_* files are read from it; a file named explicitly is read whatever its name."""
    (tmp_path / "RS_2005-06.gz").write_bytes(gzip.compress(_ndjson(_records(2))))
    (tmp_path / "RC_2005-06.gz").write_bytes(gzip.compress(_ndjson(_records(3))))
    (tmp_path / "RC_2005-07").write_bytes(_ndjson(_records(3)))
    (tmp_path / "RS_2005-06.gz.md5").write_text("0" * 32 + "\n")
    (tmp_path / "pages.warc.gz").write_bytes(gzip.compress(b"WARC/1.0\r\nWARC-Type: response\r\n\r\n"))
    (tmp_path / "links.json").write_bytes(_ndjson(_records(4)))
    stats: Counter[str] = Counter()
    assert [s.source for s in iter_dumps([tmp_path], stats)] == ["RS_2005-06.gz"] * 2
    assert stats["files"] == 1 and not stats["bad_json"]
    assert [s.source for s in iter_dumps([tmp_path / "links.json"], Counter())] == ["links.json"] * 4


def test_url_list(tmp_path: Path) -> None:
    path = tmp_path / "links.txt"
    path.write_text("# OpenWebText-style list\n\nhttp://a.com/x\n  https://b.org/y\tcomment\n# end\n")
    stats: Counter[str] = Counter()
    subs = list(read_url_list(path, stats))
    assert [s.url for s in subs] == ["http://a.com/x", "https://b.org/y"]
    assert all(s.score is None and s.id is None and s.source == "urls:links.txt" for s in subs)
    assert stats["urls_listed"] == 2


# ---------------------------------------------------------------------------------------------- filters


def _sub(url: str, score: int | None = 5, **kw: Any) -> Submission:
    base = {"id": None, "subreddit": "news", "created_utc": 1_500_000_000, "is_self": False, "over_18": False,
            "domain": None, "title": None, "source": "test"}  # fmt: skip
    return Submission(url=url, score=score, **{**base, **kw})


def test_every_filter_reason_is_counted() -> None:
    subs = [
        _sub("http://keep.com/a", 10, id="k1"),
        _sub("https://www.reddit.com/r/news/comments/abc/", 50, id="s1", is_self=True),
        _sub("https://www.reddit.com/r/x/comments/def/", 50, id="s2", domain="self.x"),
        _sub("http://porn.example/", 50, id="n1", over_18=True),
        _sub("http://fine.com/b", 50, id="sr", subreddit="GoneWild"),
        _sub("http://late.com/", 50, id="d1", created_utc=1514764800),  # 2018-01-01T00:00Z
        _sub("ftp://files.com/x", 50, id="u1"),
        _sub("not a url", 50, id="u2"),
        _sub("https://i.imgur.com/x.png", 50, id="m1"),
        _sub("https://m.youtube.com/watch?v=1", 50, id="m2"),
        _sub("https://x.com/status/1", 50, id="m3"),
        _sub("http://news.com/photo.JPG", 50, id="e1"),
        _sub("http://news.com/paper.pdf?download=1", 50, id="e2"),
        _sub("http://low.com/", 2, id="l1"),
        _sub("http://unknown.com/", None, id="q1", source="urls:list.txt"),
        _sub("http://unparsed.com/", None, id="q2"),  # a dump record whose score did not parse
        _sub("http://keep.com/a", 10, id="k1"),  # the same submission again (overlapping dumps)
    ]
    stats: Counter[str] = Counter()
    links = collect_links(subs, LinkFilters(until=dt.date(2017, 12, 31)), stats)
    assert list(links) == ["http://keep.com/a", "http://unknown.com/"]
    assert links["http://keep.com/a"].score == 10 and links["http://unknown.com/"].score is None
    assert stats == Counter(
        submissions_seen=17,
        filtered_self=2,
        filtered_over_18=1,
        filtered_subreddit=1,
        filtered_date=1,
        filtered_bad_url=2,
        filtered_domain=3,
        filtered_extension=2,
        duplicate_submissions=1,
        links_seen=4,
        filtered_score=1,
        filtered_score_unknown=1,
        links_unknown_score=1,
        links_kept=2,
    )


def test_score_is_summed_per_url_across_spellings() -> None:
    subs = [
        _sub("http://Example.com/story/?utm_source=reddit", 1, id="a", subreddit="news", created_utc=300, source="f1"),
        _sub("http://example.com:80/story#top", 1, id="b", subreddit="worldnews", created_utc=100, source="f2"),
        _sub("http://example.com/story", 1, id="c", subreddit="news", created_utc=200, source="f1"),
        _sub("http://example.com/story", None, id="d", source="urls:list.txt"),
        _sub("http://other.com/", 1, id="e"),
        _sub("http://other.com/", 1, id="f"),
    ]
    stats: Counter[str] = Counter()
    links = collect_links(subs, LinkFilters(), stats)
    assert list(links) == ["http://example.com/story"]  # 1+1+1 = 3 passes; other.com's 2 does not
    link = links["http://example.com/story"]
    assert link.original_url == "http://Example.com/story/?utm_source=reddit"
    assert (link.score, link.submission_ids, link.subreddits) == (3, ["a", "b", "c", "d"], ["news", "worldnews"])
    assert link.created_utc == 100 and link.sources == ["f1", "f2", "urls:list.txt"]
    assert stats["filtered_score"] == 1 and stats["links_kept"] == 1


def test_filters_are_configurable() -> None:
    subs = [
        _sub("https://www.youtube.com/watch?v=1", 1, is_self=False),
        _sub("http://a.com/x.jpg", 1, over_18=True),
        _sub("http://b.com/", 1, subreddit="gonewild", is_self=True),
    ]
    everything = LinkFilters(min_score=0, drop_self=False, drop_over_18=False, subreddit_blocklist=frozenset(),
                             domain_blocklist=frozenset(), extension_blocklist=frozenset())  # fmt: skip
    assert len(collect_links(subs, everything, Counter())) == 3
    custom = replace(everything, domain_blocklist=frozenset({"A.com."}), extension_blocklist=frozenset({".JPG"}))
    stats: Counter[str] = Counter()
    assert list(collect_links(subs, custom, stats)) == ["https://www.youtube.com/watch?v=1", "http://b.com/"]
    assert stats["filtered_domain"] == 1  # domains, extensions and subreddits compare lower-cased


def test_dates_are_inclusive_utc_days() -> None:
    day = 1514678400  # 2017-12-31T00:00:00Z
    filters = LinkFilters(since=dt.date(2017, 12, 31), until=parse_day("2017-12-31"))
    subs = [
        _sub("http://a.com/1", created_utc=day - 1),
        _sub("http://a.com/2", created_utc=day),
        _sub("http://a.com/3", created_utc=day + 86399),
        _sub("http://a.com/4", created_utc=day + 86400),
        _sub("http://a.com/5", created_utc=None),  # unknown date: kept
    ]
    stats: Counter[str] = Counter()
    assert list(collect_links(subs, filters, stats)) == ["http://a.com/2", "http://a.com/3", "http://a.com/5"]
    assert stats["filtered_date"] == 2
    with pytest.raises(UsageError):
        LinkFilters(since=dt.date(2018, 1, 1), until=dt.date(2017, 1, 1))
    with pytest.raises(UsageError):
        parse_day("Dec 2017")


def test_host_and_extension_helpers() -> None:
    blocklist = LinkFilters().domain_blocklist
    assert blocked_host("old.reddit.com", blocklist) and blocked_host("youtu.be", blocklist)
    assert not blocked_host("notreddit.com", blocklist) and not blocked_host("imgur.com.example.org", blocklist)
    assert url_extension("http://a.com/x/Photo.JPEG") == "jpeg"
    assert url_extension("http://a.com/") == url_extension("http://a.com/v1.2/") == ""


# ------------------------------------------------------------------------------------------ Reddit API


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: str


@dataclass
class FakeReddit:
    """A local stand-in for reddit.com: ``answer(request)`` gives (status, headers, JSON body)."""

    url: str
    answer: Callable[[Seen], tuple[int, dict[str, str], Any]] = lambda seen: (404, {}, {})
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
def reddit() -> Iterator[FakeReddit]:
    fake = FakeReddit(url="")

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            seen = Seen(self.command, parts.path, parse_qs(parts.query), dict(self.headers),
                        self.rfile.read(length).decode())  # fmt: skip
            fake.seen.append(seen)
            status, headers, body = fake.answer(seen)
            payload = json.dumps(body).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _reply

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


class FakeTime:
    """sleep() records and advances clock(), so rate limiting is tested without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def _page(start: int, n: int, after: str | None) -> dict[str, Any]:
    children = [{"kind": "t3", "data": {"id": f"p{i}", "url": f"http://site.com/{i}", "score": i,
                 "subreddit": "science", "created_utc": 1.5e9 + i, "is_self": False, "over_18": False}}
                for i in range(start, start + n)]  # fmt: skip
    return {"kind": "Listing", "data": {"children": children, "after": after, "before": None}}


def _paged(seen: Seen) -> tuple[int, dict[str, str], Any]:
    """250 submissions in pages of up to ``limit``, cursors ``t3_p<last index>``."""
    start = int(seen.query["after"][0].removeprefix("t3_p")) + 1 if "after" in seen.query else 0
    n = min(int(seen.query["limit"][0]), 250 - start)
    return 200, {}, _page(start, n, f"t3_p{start + n - 1}" if start + n < 250 else None)


def _api(fake: FakeReddit, clock: FakeTime, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> RedditAPI:
    monkeypatch.delenv("REDDIT_CLIENT_ID", raising=False)
    monkeypatch.delenv("REDDIT_CLIENT_SECRET", raising=False)
    session = requests.Session()
    session.trust_env = False  # no proxy for 127.0.0.1
    return RedditAPI("gpt2cli-tests/1.0 (by u/nobody)", base_url=fake.url + "/oauth",
                     auth_url=fake.url + "/api/v1/access_token", session=session, sleep=clock.sleep,
                     clock=clock.clock, public_url=fake.url, **kw)  # fmt: skip


def test_api_paginates_with_after_and_sends_user_agent(reddit: FakeReddit, monkeypatch: pytest.MonkeyPatch) -> None:
    reddit.answer = _paged
    clock = FakeTime()
    api = _api(reddit, clock, monkeypatch)
    subs = list(api.listing("r/science", "top", "year"))
    assert [s.id for s in subs] == [f"p{i}" for i in range(250)]
    assert all(s.source == "api:r/science" and isinstance(s.created_utc, int) for s in subs)
    assert [s.path for s in reddit.seen] == ["/r/science/top.json"] * 3  # unauthenticated: www.reddit.com
    assert [s.query.get("after") for s in reddit.seen] == [None, ["t3_p99"], ["t3_p199"]]
    assert all(s.query["limit"] == ["100"] and s.query["t"] == ["year"] for s in reddit.seen)
    assert all(s.headers["User-Agent"] == "gpt2cli-tests/1.0 (by u/nobody)" for s in reddit.seen)
    assert "Authorization" not in reddit.seen[0].headers and clock.sleeps == []
    reddit.seen.clear()
    assert len(list(api.listing("science", "new", limit=150))) == 150
    assert [s.query["limit"] for s in reddit.seen] == [["100"], ["50"]]
    assert "t" not in reddit.seen[0].query and reddit.seen[0].path == "/r/science/new.json"


def test_api_oauth_token(reddit: FakeReddit, monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(seen: Seen) -> tuple[int, dict[str, str], Any]:
        if seen.path == "/api/v1/access_token":
            return 200, {}, {"access_token": "tok123", "token_type": "bearer", "expires_in": 86400}
        return _paged(seen)

    reddit.answer = answer
    clock = FakeTime()
    session = _api(reddit, clock, monkeypatch).session
    monkeypatch.setenv("REDDIT_CLIENT_ID", "my-id")  # credentials come from the environment
    monkeypatch.setenv("REDDIT_CLIENT_SECRET", "my-secret")
    api = RedditAPI("gpt2cli-tests/1.0", base_url=reddit.url + "/oauth", auth_url=reddit.url + "/api/v1/access_token",
                    session=session, sleep=clock.sleep, clock=clock.clock, public_url=reddit.url)  # fmt: skip
    assert api.authenticated and api.per_minute == 100
    assert len(list(api.listing("science", limit=120))) == 120
    token, *gets = reddit.seen
    assert token.method == "POST" and token.path == "/api/v1/access_token"
    assert token.headers["Authorization"] == "Basic " + base64.b64encode(b"my-id:my-secret").decode()
    assert parse_qs(token.body) == {"grant_type": ["client_credentials"]}
    assert token.headers["User-Agent"] == "gpt2cli-tests/1.0"
    assert [g.path for g in gets] == ["/oauth/r/science/top"] * 2  # one token for both pages
    assert all(g.headers["Authorization"] == "bearer tok123" for g in gets)


def test_api_renews_a_rejected_token(reddit: FakeReddit, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = iter(["old", "new"])

    def answer(seen: Seen) -> tuple[int, dict[str, str], Any]:
        if seen.path == "/api/v1/access_token":
            return 200, {}, {"access_token": next(tokens), "expires_in": 3600}
        if seen.headers["Authorization"] == "bearer old":
            return 401, {}, {"message": "Unauthorized"}
        return 200, {}, _page(0, 2, None)

    reddit.answer = answer
    clock = FakeTime()
    api = _api(reddit, clock, monkeypatch, client_id="id", client_secret="secret")
    assert len(list(api.listing("science"))) == 2
    assert [s.path for s in reddit.seen] == ["/api/v1/access_token", "/oauth/r/science/top"] * 2
    reddit.answer = lambda seen: (401, {}, {"error": "invalid_client"})  # bad credentials
    with pytest.raises(Gpt2Error, match="token refused"):
        list(_api(reddit, clock, monkeypatch, client_id="id", client_secret="bad").listing("science"))


def test_api_sleeps_when_the_server_budget_is_spent(reddit: FakeReddit, monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(seen: Seen) -> tuple[int, dict[str, str], Any]:
        status, _, body = _paged(seen)
        spent = "after" not in seen.query
        return status, {"X-Ratelimit-Remaining": "0" if spent else "9.0", "X-Ratelimit-Reset": "42",
                        "X-Ratelimit-Used": "10"}, body  # fmt: skip

    reddit.answer = answer
    clock = FakeTime()
    assert len(list(_api(reddit, clock, monkeypatch).listing("science"))) == 250
    assert clock.sleeps == [42.0]  # once, before the second request; not again after it


def test_api_client_side_cap(reddit: FakeReddit, monkeypatch: pytest.MonkeyPatch) -> None:
    reddit.answer = lambda seen: (200, {}, _page(0, 1, "t3_more"))  # an endless listing
    clock = FakeTime()
    api = _api(reddit, clock, monkeypatch)
    assert len(list(api.listing("science", limit=25))) == 25  # 25 requests at 10 a minute, no time passing
    assert clock.sleeps == [60.0, 60.0]


def test_api_retries_429_honouring_retry_after(reddit: FakeReddit, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter()

    def answer(seen: Seen) -> tuple[int, dict[str, str], Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            return 429, {"Retry-After": "7"}, {"message": "Too Many Requests", "error": 429}
        if calls["n"] == 2:
            return 503, {}, {"message": "busy"}
        return 200, {}, _page(0, 3, None)

    reddit.answer = answer
    clock = FakeTime()
    assert len(list(_api(reddit, clock, monkeypatch).listing("science"))) == 3
    assert clock.sleeps == [7.0, 2.0]  # Retry-After, then exponential backoff (1, 2, 4, ... s)


def test_api_gives_up_with_one_line(reddit: FakeReddit, monkeypatch: pytest.MonkeyPatch) -> None:
    reddit.answer = lambda seen: (500, {}, {"message": "oops"})
    clock = FakeTime()
    with pytest.raises(Gpt2Error, match=r"failed after 4 attempts \(HTTP 500\)") as failure:
        list(_api(reddit, clock, monkeypatch, max_retries=3).listing("science"))
    assert "\n" not in str(failure.value) and len(reddit.seen) == 4 and clock.sleeps == [1.0, 2.0, 4.0]
    reddit.answer = lambda seen: (403, {}, {"reason": "private"})
    with pytest.raises(Gpt2Error, match="HTTP 403"):
        list(_api(reddit, clock, monkeypatch).listing("secret"))


def test_api_usage_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="User-Agent"):
        RedditAPI("  ")
    api = RedditAPI("gpt2cli-tests/1.0", client_id="", client_secret="")
    for args in (("bad name!",), ("science", "hot"), ("science", "top", "decade")):
        with pytest.raises(UsageError):
            list(api.listing(*args))
