"""The crawl frontier: every URL to fetch and what became of it, in one SQLite file (WAL mode).

Why SQLite: each state change is one committed transaction, so a crawl killed with `kill -9` at any moment
loses at most its in-flight fetches. Those rows are still `pending` and the next run retries them; a row
marked `done` is never handed out again; the URL is the primary key, so nothing is lost or duplicated.

A frontier is owned by one process at a time (the stage holds the artifact lock); rows claimed by this
process are remembered in memory only, so a crash releases them without any lease to wait out.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2cli.errors import Gpt2Error
from gpt2cli.iterutil import batched

STATUSES = ("pending", "done", "failed")
_IN_CHUNK = 500  # URLs per `IN (...)` query, well under SQLite's limit on bound parameters

_SCHEMA = """
CREATE TABLE IF NOT EXISTS urls (
    url TEXT PRIMARY KEY,
    original_url TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    fetched_at REAL,
    http_status INTEGER,
    final_url TEXT,
    content_type TEXT,
    content_sha256 TEXT,
    warc_file TEXT,
    warc_offset INTEGER,
    warc_length INTEGER
);
CREATE INDEX IF NOT EXISTS urls_status ON urls (status);
CREATE TABLE IF NOT EXISTS additions (
    build TEXT PRIMARY KEY,
    links INTEGER NOT NULL
);
"""

# The columns mark_done accepts, besides the status it sets.
RESULT_FIELDS = (
    "fetched_at",
    "http_status",
    "final_url",
    "content_type",
    "content_sha256",
    "warc_file",
    "warc_offset",
    "warc_length",
)
_COLUMNS = ("url", "original_url", "meta", "status", "attempts", "last_error", "next_attempt_at", *RESULT_FIELDS)


@dataclass
class Row:
    """One URL of the frontier, as stored."""

    url: str
    original_url: str
    meta: dict[str, Any] = field(default_factory=dict)
    status: str = "pending"
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: float = 0.0
    fetched_at: float | None = None
    http_status: int | None = None
    final_url: str | None = None
    content_type: str | None = None
    content_sha256: str | None = None
    warc_file: str | None = None
    warc_offset: int | None = None
    warc_length: int | None = None


def _row(values: tuple[Any, ...]) -> Row:
    data = dict(zip(_COLUMNS, values, strict=True))
    data["meta"] = json.loads(data["meta"] or "{}")
    return Row(**data)


class Frontier:
    """The crawl state of one scrape: `add` URLs, `claim` the due ones, `mark_done` / `mark_failed` each."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: every write below opens its own transaction and commits it before returning.
        try:
            self._db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives any process crash; only an OS crash can drop the last commits, which
            # then look like in-flight fetches (pending, retried) and the WARC is cut back to match.
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._transaction():
                for statement in _statements(_SCHEMA):
                    self._db.execute(statement)
        except sqlite3.Error as e:
            raise self._error(e) from None
        self._claimed: set[str] = set()

    def _error(self, error: sqlite3.Error) -> Gpt2Error:
        """SQLite's errors (a full disk, a damaged file) as one line naming the crawl state's file."""
        return Gpt2Error(f"crawl state {self.path}: {error}")

    # -- transactions -------------------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Frontier:
        return self

    def __exit__(self, exc_type: object, error: object, traceback: object) -> None:
        self.close()
        if isinstance(error, sqlite3.Error):
            raise self._error(error) from None

    # -- writes -------------------------------------------------------------------------------------------

    def add(
        self, urls_with_meta: Iterable[tuple[str, str, dict[str, Any]]], batch: int = 10_000, build: str | None = None
    ) -> int:
        """Insert (normalized url, original url, metadata) triples; existing URLs are left untouched.

        Returns how many were new. Committed in batches: a crash mid-add keeps whole batches, and adding
        the same list again fills in the rest (idempotent). With ``build`` (what identifies a build: a rerun of
        a killed one has the same), the count is kept with each batch, so the rerun returns the links new to the
        frontier when that build first added them, as an uninterrupted build would, not only those it adds.
        """
        new = 0
        chunk: list[tuple[str, str, str]] = []

        def flush() -> int:
            with self._transaction():
                before = self._db.total_changes
                self._db.executemany("INSERT OR IGNORE INTO urls (url, original_url, meta) VALUES (?, ?, ?)", chunk)
                added = self._db.total_changes - before
                if build is not None:
                    self._db.execute("INSERT INTO additions (build, links) VALUES (?, ?) ON CONFLICT (build) DO "
                                     "UPDATE SET links = links + excluded.links", (build, added))  # fmt: skip
                return added

        for url, original, meta in urls_with_meta:
            chunk.append((url, original, json.dumps(meta or {}, sort_keys=True, ensure_ascii=False)))
            if len(chunk) >= batch:
                new += flush()
                chunk = []
        if chunk or build is not None:
            new += flush()
        if build is not None:
            return int(self._db.execute("SELECT links FROM additions WHERE build = ?", (build,)).fetchone()[0])
        return new

    def forget_build(self, build: str) -> None:
        """The build published: its count is spent, and a rebuild of the same inputs adds to the crawl anew."""
        with self._transaction():
            self._db.execute("DELETE FROM additions WHERE build = ?", (build,))

    def claim(self, limit: int, now: float, among: Collection[str] | None = None) -> list[Row]:
        """Up to `limit` pending URLs due at `now` (next_attempt_at <= now), in the order they were added.

        With `among`, only those URLs: a run fetches its own links, and the pending rows other runs left
        behind (killed, or with other links) must not use up its claim. Claimed rows stay `pending` on disk
        (a crash simply leaves them to the next run) and are not handed out again by this object until they
        are marked.
        """
        select = f"SELECT rowid, {', '.join(_COLUMNS)} FROM urls WHERE status = 'pending' AND next_attempt_at <= ?"
        if among is None:
            found = self._db.execute(f"{select} ORDER BY rowid LIMIT ?", (now, limit + len(self._claimed))).fetchall()
        else:
            found = sorted(self._among(f"{select} AND url IN", (now,), among))
        out = [r for r in (_row(values[1:]) for values in found) if r.url not in self._claimed][:limit]
        self._claimed.update(r.url for r in out)
        return out

    def release(self, urls: Iterable[str]) -> None:
        """Forget claims that will not be fetched in this run (e.g. the crawl stops early)."""
        self._claimed.difference_update(urls)

    def mark_done(self, url: str, **result: Any) -> bool:
        """Record a successful fetch (fields of RESULT_FIELDS). False when the URL was already done."""
        unknown = set(result) - set(RESULT_FIELDS)
        if unknown:
            raise TypeError(f"unknown result fields: {sorted(unknown)}")
        cols = "".join(f", {k} = ?" for k in result)
        with self._transaction():
            cur = self._db.execute(
                f"UPDATE urls SET status = 'done', attempts = attempts + 1, last_error = NULL{cols} "
                "WHERE url = ? AND status != 'done'",
                (*result.values(), url),
            )
        self._claimed.discard(url)
        return cur.rowcount == 1

    def mark_failed(self, url: str, error: str, retry_at: float | None) -> None:
        """Record a failed attempt: retried from `retry_at`, or failed for good when retry_at is None."""
        status, due = ("failed", 0.0) if retry_at is None else ("pending", retry_at)
        with self._transaction():
            self._db.execute(
                "UPDATE urls SET status = ?, attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                "WHERE url = ? AND status != 'done'",
                (status, error, due, url),
            )
        self._claimed.discard(url)

    def requeue(self, error: str) -> int:
        """Put the URLs failed with `error` back to pending, due now; returns how many.

        For verdicts that hold for one kind of run only: `--replay` fails the links its archives lack as
        "not_archived", which says nothing of what a live crawl will find.
        """
        with self._transaction():
            cur = self._db.execute(
                "UPDATE urls SET status = 'pending', next_attempt_at = 0 WHERE status = 'failed' AND last_error = ?",
                (error,),
            )
        return cur.rowcount

    def reopen(self, urls: Iterable[str] | None = None, *, error: str | None = None, for_good: bool = False) -> int:
        """Put `done` rows back to pending, due now; returns how many. `urls`: pages whose archived record is
        lost or damaged. None: every page this crawl's WARCs do not hold (a `--replay` supplied it from
        another archive), which a live crawl must fetch to archive and extract it itself. `error`: why, as the
        row's last error; `for_good`: failed for good instead (a page fetched as often as a failure is tried)."""
        status = "failed" if for_good else "pending"
        with self._transaction():
            reopen = "UPDATE urls SET status = ?, last_error = ?, next_attempt_at = 0 WHERE status = 'done' AND "
            if urls is None:
                return self._db.execute(reopen + "warc_length IS NULL", (status, error)).rowcount
            return sum(self._db.execute(reopen + "url = ?", (status, error, url)).rowcount for url in urls)

    # -- reads --------------------------------------------------------------------------------------------

    def get(self, url: str) -> Row | None:
        row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM urls WHERE url = ?", (url,)).fetchone()
        return _row(row) if row else None

    def counts(self) -> dict[str, int]:
        """Rows per status (every status present, zero or not) and the total."""
        out = dict.fromkeys(STATUSES, 0)
        for status, n in self._db.execute("SELECT status, COUNT(*) FROM urls GROUP BY status"):
            out[status] = n
        out["total"] = sum(out[s] for s in STATUSES)
        return out

    def next_due(self, among: Collection[str]) -> float | None:
        """When the earliest of the pending ``among`` URLs becomes due (None when none is pending)."""
        dues = [due for (due,) in self._among("SELECT next_attempt_at FROM urls WHERE status = 'pending' AND url IN",
                                              (), among)]  # fmt: skip
        return min(dues, default=None)

    def done_rows(self) -> Iterator[Row]:
        """Every fetched URL, in the order they were added (streamed, not loaded at once)."""
        cur = self._db.cursor()
        cur.execute(f"SELECT {', '.join(_COLUMNS)} FROM urls WHERE status = 'done' ORDER BY rowid")
        for row in cur:
            yield _row(row)

    def tally(self, urls: Collection[str]) -> Counter[str]:
        """What became of `urls`: how many are in each status, and "<status>_<error>" per last error."""
        out: Counter[str] = Counter()
        for status, error in self._among("SELECT status, last_error FROM urls WHERE url IN", (), urls):
            out[status] += 1
            if error:
                out[f"{status}_{error}"] += 1
        return out

    def _among(self, query: str, params: tuple[Any, ...], urls: Iterable[str]) -> Iterator[tuple[Any, ...]]:
        """The rows of `query` (ending in "url IN") for `urls`, asked in chunks of bound parameters."""
        for chunk in batched(urls, _IN_CHUNK):
            yield from self._db.execute(f"{query} ({', '.join('?' * len(chunk))})", (*params, *chunk))

    def done_beyond(self, warc_file: str, end: int) -> list[str]:
        """The done URLs whose record in ``warc_file`` does not lie wholly within its first ``end`` bytes."""
        return [url for (url,) in self._db.execute(
            "SELECT url FROM urls WHERE status = 'done' AND warc_file = ? AND warc_offset + warc_length > ?",
            (warc_file, end),
        )]  # fmt: skip

    def warc_committed_ends(self) -> dict[str, int]:
        """Per WARC file, the end of the last record a done row points at: the file's committed length.

        WarcArchive cuts its files back to these lengths on reopen, dropping records written after the
        last committed URL (a crash between the WARC fsync and the frontier commit), so replaying the
        archive never yields a page twice.
        """
        return dict(
            self._db.execute(
                "SELECT warc_file, MAX(warc_offset + warc_length) FROM urls "
                "WHERE status = 'done' AND warc_file IS NOT NULL GROUP BY warc_file"
            ).fetchall()
        )


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one state change, all or nothing."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if not exc_type:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:  # SQLite rolls back by itself after some errors (a full disk): the error stays
            self.db.execute("ROLLBACK")
