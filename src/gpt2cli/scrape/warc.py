"""Raw HTTP responses archived as WARC (ISO 28500), one gzip member per record, with warcio.

Why WARC: the extraction can be rerun (`--replay`) with a better extractor without touching the web again,
and the files open in any WARC tool. Files are `PREFIX-00000.warc.gz`, `PREFIX-00001.warc.gz`, ... rolled
over at `max_bytes`. Each fetch writes a request record then its response record; `write_response`
returns where the response record lies, and returns only once both are flushed and fsynced, so the
frontier can mark the URL done knowing the bytes are on disk.

What is stored: the final response of a redirect chain (WARC-Target-URI is the final URL; the URL that
was asked for is in `WARC-X-Requested-URI`). The body is stored decoded (as the fetcher read it, after
Content-Encoding and chunking), so those headers are renamed `X-Archive-Orig-*` and Content-Length is set
to the stored length: a reader then gets the body the headers describe.
"""

from __future__ import annotations

import io
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from gpt2cli import __version__ as _VERSION

GIB = 1 << 30
_RENAMED = {"content-encoding", "transfer-encoding", "content-length"}


@dataclass(frozen=True)
class WarcLocation:
    """Where a response record lies: enough to read it back with one seek."""

    file: str
    offset: int
    length: int


@dataclass
class ArchivedResponse:
    """One archived HTTP response, as `--replay` needs it."""

    url: str
    status: int
    headers: dict[str, str]
    content_type: str | None
    body: bytes
    date: str | None
    requested_url: str | None = None
    warc_file: str | None = None
    offset: int | None = None

    def header(self, name: str) -> str | None:
        """The value of HTTP header ``name``, whatever its case."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


def _archive_headers(headers: Iterable[tuple[str, str]], body_length: int) -> list[tuple[str, str]]:
    """Headers that describe the stored (decoded) body; the originals of changed ones keep an X- name."""
    out = []
    for name, value in headers:
        if name.lower() in _RENAMED:
            out.append((f"X-Archive-Orig-{name}", value))
        else:
            out.append((name, value))
    out.append(("Content-Length", str(body_length)))
    return out


def _ascii(text: str) -> str:
    return "".join(c for c in text if " " <= c <= "~")


class WarcArchive:
    """Append-only, crash-safe WARC writer over numbered files in one directory."""

    def __init__(
        self,
        directory: Path,
        prefix: str,
        max_bytes: int = GIB,
        committed: Mapping[str, int] | None = None,
    ) -> None:
        """Open the archive, repairing what a crash may have left.

        `committed` (Frontier.warc_committed_ends) gives each file's committed length: files are cut back to
        it, dropping records no done URL points at. Without it the last file is scanned and cut after its
        last complete record (a torn record from a kill mid-write is removed).
        """
        self.directory = Path(directory)
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self.repaired: dict[str, int] = {}  # file -> bytes cut off on open
        files = self.files()
        if committed is not None:
            for path in files:
                self._truncate(path, committed.get(path.name, 0))
        elif files:
            self._truncate(files[-1], complete_length(files[-1]))
        self._index = self._index_of(files[-1]) if files else 0
        self._writer_file: io.BufferedWriter | None = None

    # -- files --------------------------------------------------------------------------------------------

    def files(self) -> list[Path]:
        pattern = re.compile(rf"^{re.escape(self.prefix)}-(\d{{5,}})\.warc\.gz$")
        found = [p for p in self.directory.iterdir() if pattern.match(p.name)]
        return sorted(found, key=self._index_of)

    def _index_of(self, path: Path) -> int:
        return int(path.name[len(self.prefix) + 1 :].split(".", 1)[0])

    def _path(self, index: int) -> Path:
        return self.directory / f"{self.prefix}-{index:05d}.warc.gz"

    def _truncate(self, path: Path, length: int) -> None:
        size = path.stat().st_size
        if size < length:
            raise OSError(f"{path} is {size} bytes but records up to byte {length} were committed")
        if size > length:
            with open(path, "r+b") as f:
                f.truncate(length)
                f.flush()
                os.fsync(f.fileno())
            self.repaired[path.name] = size - length

    def _open_current(self) -> io.BufferedWriter:
        if self._writer_file is not None and self._writer_file.tell() < self.max_bytes:
            return self._writer_file
        if self._writer_file is not None:
            self._writer_file.close()
            self._index += 1
        path = self._path(self._index)
        while path.exists() and path.stat().st_size >= self.max_bytes:
            self._index += 1
            path = self._path(self._index)
        created = not path.exists()
        f = open(path, "ab")  # noqa: SIM115 - kept open across writes, closed by close()
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            writer = WARCWriter(f, gzip=True, warc_version="1.1")
            info = {"software": f"gpt2cli/{_VERSION}", "format": "WARC File Format 1.1"}
            writer.write_record(writer.create_warcinfo_record(path.name, info))
            f.flush()
            os.fsync(f.fileno())
        if created:
            _fsync_dir(self.directory)
        self._writer_file = f
        return f

    # -- writing ------------------------------------------------------------------------------------------

    def write_response(
        self,
        *,
        url: str,
        status: int,
        reason: str,
        headers: Iterable[tuple[str, str]] | Mapping[str, str],
        body: bytes,
        request_headers: Iterable[tuple[str, str]] | Mapping[str, str] = (),
        requested_url: str | None = None,
        protocol: str = "HTTP/1.1",
    ) -> WarcLocation:
        """Append a request + response record pair and fsync them; returns the response record's place. ``url``
        is the URI requested on the wire (ASCII); a status line's reason phrase is kept in its ASCII characters
        (a WARC's HTTP head is ASCII; the phrase means nothing to a reader)."""
        f = self._open_current()
        start = f.tell()
        writer = WARCWriter(f, gzip=True, warc_version="1.1")
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        req_list = list(request_headers.items() if isinstance(request_headers, Mapping) else request_headers)
        if not any(k.lower() == "host" for k, _ in req_list):
            req_list.insert(0, ("Host", parts.netloc))
        resp_list = list(headers.items() if isinstance(headers, Mapping) else headers)
        extra = {"WARC-X-Requested-URI": requested_url} if requested_url and requested_url != url else {}
        try:
            request = writer.create_warc_record(
                url,
                "request",
                payload=io.BytesIO(b""),
                length=0,
                http_headers=StatusAndHeaders(f"GET {target} HTTP/1.1", req_list, is_http_request=True),
            )
            writer.write_record(request)
            offset = f.tell()
            response = writer.create_warc_record(
                url,
                "response",
                payload=io.BytesIO(body),
                length=len(body),
                warc_headers_dict={
                    "WARC-Concurrent-To": request.rec_headers.get_header("WARC-Record-ID"),
                    **extra,
                },
                http_headers=StatusAndHeaders(
                    f"{status} {_ascii(reason)}".strip(), _archive_headers(resp_list, len(body)), protocol=protocol
                ),
            )
            writer.write_record(response)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            # Leave no partial pair behind (disk full, ...): the file ends where it ended before.
            f.flush()
            f.truncate(start)
            f.seek(start)
            raise
        return WarcLocation(self._path(self._index).name, offset, f.tell() - offset)

    def close(self) -> None:
        if self._writer_file is not None:
            self._writer_file.close()
            self._writer_file = None

    def __enter__(self) -> WarcArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- reading ------------------------------------------------------------------------------------------------


def complete_length(path: Path, chunk: int = 1 << 20) -> int:
    """Bytes of `path` up to the end of its last complete gzip member (= record; 0 if none).

    Walks the members with zlib rather than parsing records: a member cut short by a kill has no gzip
    trailer, which zlib reports exactly, whereas a record reader may hand back a short body silently.
    """
    end = 0  # file offset where the current member starts
    with open(path, "rb") as f:
        d = zlib.decompressobj(wbits=31)
        consumed = 0  # bytes fed to the current member's decompressor
        pending = b""
        while True:
            data = pending or f.read(chunk)
            pending = b""
            if not data:
                return end
            try:
                d.decompress(data)
                while d.unconsumed_tail:
                    d.decompress(d.unconsumed_tail)
            except zlib.error:
                return end
            if d.eof:
                used = len(data) - len(d.unused_data)
                end += consumed + used
                consumed = 0
                pending = d.unused_data
                d = zlib.decompressobj(wbits=31)
            else:
                consumed += len(data)


def read_record_at(path: Path, offset: int, length: int | None = None) -> ArchivedResponse:
    """The response record at a frontier row's (warc_file, warc_offset, warc_length); without a length, the one
    starting at ``offset`` (a replay's index of the records :func:`iter_responses` read)."""
    with open(path, "rb") as f:
        f.seek(offset)
        if length is not None:
            data = f.read(length)
            if len(data) != length:
                raise ValueError(f"{path}: record at {offset} is truncated")
        for response in _responses(f if length is None else io.BytesIO(data), path.name, Counter(), base=offset):
            return response
    raise ValueError(f"{path}: no response record at offset {offset}")


def unreadable_reason(path: Path) -> str | None:
    """Why ``path`` is no WARC file to replay (not a file, unreadable, another format), or None.

    Damage after the first record only ends that file's replay (see :func:`iter_responses`); a path that
    is wrong from its first byte is a mistake to report before a replay records anything. An empty file
    is an archive of nothing.
    """
    path = Path(path)
    if not path.is_file():
        return "not a file"
    try:
        with open(path, "rb") as f:
            first = next(iter(ArchiveIterator(f)), None)
    except OSError as e:
        return e.strerror or str(e)
    except Exception:  # warcio's ArchiveLoadFailed, or a codec error of a broken first gzip member
        return "not a WARC file"
    # warcio reads a text file as a record of the old ARC format, and blank lines as a record of no type
    if first is not None and (not str(first.format).startswith("warc") or not first.rec_type):
        return "not a WARC file"
    return None


def iter_responses(paths: Iterable[Path], stats: Counter[str] | None = None) -> Iterator[ArchivedResponse]:
    """Every response record of the given WARC files, in order; other record types are skipped.

    A damaged or truncated file ends its own iteration cleanly: `stats["errors"]` is incremented (and
    `stats["responses"]`, `stats["skipped"]` count the rest) rather than an exception stopping a replay.
    """
    stats = stats if stats is not None else Counter()
    for path in paths:
        path = Path(path)
        try:
            # warcio reads a gzip member cut short without complaint: stop at the last complete one instead
            end = complete_length(path) if path.name.endswith(".gz") else path.stat().st_size
            if end < path.stat().st_size:
                stats["errors"] += 1
            with open(path, "rb") as f:
                yield from _responses(_Bounded(f, end), str(path), stats)
        except OSError:
            stats["errors"] += 1


class _Bounded(io.RawIOBase):
    """The first ``limit`` bytes of a file."""

    def __init__(self, f: io.BufferedIOBase, limit: int):
        self.f, self.left = f, limit

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self.f.read(size)
        self.left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _responses(f: io.BufferedIOBase, name: str, stats: Counter[str], base: int = 0) -> Iterator[ArchivedResponse]:
    it = ArchiveIterator(f)
    while True:
        try:
            record = next(it)
            if record.rec_type != "response" or record.http_headers is None:
                stats["skipped"] += 1
                continue
            body = record.content_stream().read()
            offset = base + it.get_record_offset()
        except StopIteration:
            return
        except Exception:  # torn gzip member, bad headers: the rest is unreadable
            stats["errors"] += 1
            return
        stats["responses"] += 1
        http = record.http_headers
        headers = {k: v for k, v in http.headers}
        yield ArchivedResponse(
            url=record.rec_headers.get_header("WARC-Target-URI"),
            status=int(http.get_statuscode() or 0),
            headers=headers,
            content_type=http.get_header("Content-Type"),
            body=body,
            date=record.rec_headers.get_header("WARC-Date"),
            requested_url=record.rec_headers.get_header("WARC-X-Requested-URI"),
            warc_file=name,
            offset=offset,
        )
