"""The state a run leaves for the next: what duplicate detection needs of every document that passed the filters,
on disk, so that a merge joins shards screened elsewhere and --incremental adds documents to a corpus without
screening or hashing the old ones again. One format for all three, read and written here only.

A state directory holds the documents that passed the filters, sorted by `order`: docs.parquet (the row as
JSON with the normalized text, order, score, key, url, snippet), signatures.npy (uint32, one row per doc),
shingles.u64 (raw little-endian uint64, written as it comes) + shingle_offsets.npy (CSR: doc i's sorted
shingle hashes), edges.npy (verified duplicate pairs, as indices into the docs) and screen.json (the filter
steps' report and the input counts).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt2cli.dedupe.minhash import HASH_VERSION, MinHasher
from gpt2cli.errors import Gpt2Error

STATE = "dedupe-state"  # an artifact's directory that holds its state
STATE_FILES = ("docs.parquet", "signatures.npy", "shingles.u64", "shingle_offsets.npy", "edges.npy", "screen.json")
_DOC_SCHEMA_FIELDS = (("row", "string"), ("order", "int64"), ("score", "int64"), ("key", "binary"),
                      ("url", "string"), ("snippet", "string"))  # fmt: skip


@dataclass
class Doc:
    """A document that passed the filters, as the duplicate steps need it; its text stays on disk."""

    order: int  # position in the input stream: "earliest" for the keeper rule, and the output order
    score: int | None
    key: bytes  # exact-duplicate key of the normalized text
    url: str | None
    snippet: str  # the start of the text, for the report's examples
    shingles: np.ndarray  # a view of the memory-mapped shingle file


class StateWriter:
    """Writes a state directory document by document; only the offsets and signatures stay in memory."""

    def __init__(self, directory: Path, num_perm: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        directory.mkdir(parents=True)
        self.directory, self.num_perm = directory, num_perm
        self.schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in _DOC_SCHEMA_FIELDS])
        # a file object, not a path: pyarrow refuses a path that is not UTF-8 (a --home named so)
        self.docs_file = open(directory / "docs.parquet", "wb")  # noqa: SIM115 (closed in close())
        self.docs = pq.ParquetWriter(self.docs_file, self.schema)
        self.shingles = open(directory / "shingles.u64", "wb")  # noqa: SIM115 (closed in close())
        self.offsets, self.signatures, self.pending = [0], [], []

    def add(self, row_json: str, doc: Doc, signature: np.ndarray) -> None:
        self.pending.append({"row": row_json, "order": doc.order, "score": doc.score, "key": doc.key, "url": doc.url,
                             "snippet": doc.snippet})  # fmt: skip
        self.shingles.write(np.ascontiguousarray(doc.shingles, "<u8").tobytes())
        self.offsets.append(self.offsets[-1] + len(doc.shingles))
        self.signatures.append(np.asarray(signature, np.uint32))
        if len(self.pending) >= 1024:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            self.docs.write_table(pa.Table.from_pylist(self.pending, schema=self.schema))
            self.pending = []

    def close(self, edges: Sequence[tuple[int, int]], screen: dict[str, Any]) -> None:
        self._flush()
        self.docs.close()
        self.docs_file.close()
        self.shingles.close()
        n = len(self.offsets) - 1
        _save(self.directory / "shingle_offsets.npy", np.asarray(self.offsets, np.int64))
        sigs = np.stack(self.signatures) if n else np.zeros((0, self.num_perm), np.uint32)
        _save(self.directory / "signatures.npy", sigs)
        _save(self.directory / "edges.npy", np.asarray(edges, np.int64).reshape(-1, 2))
        screen = {**screen, "hash_version": HASH_VERSION}  # which permutations made signatures.npy
        (self.directory / "screen.json").write_text(json.dumps(screen, ensure_ascii=False, default=str))


def _save(path: Path, array: np.ndarray) -> None:
    try:
        np.save(path, array)
    except OSError as e:  # numpy's short write ("18304 requested and 15328 written") names no file and no reason
        raise Gpt2Error(f"cannot write {path}: {e.strerror if e.errno else f'{e} (a full disk?)'}") from None


@dataclass
class State:
    directory: Path
    docs: list[Doc]
    signatures: np.ndarray
    edges: list[tuple[int, int]]
    screen: dict[str, Any]

    def rows(self) -> Iterator[tuple[int, str]]:
        """(order, row JSON) of every document, in order, streamed from disk."""
        import pyarrow.parquet as pq

        with open(self.directory / "docs.parquet", "rb") as f:  # a file object: the home's name may not be UTF-8
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024, columns=["order", "row"], use_threads=False):
                yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)


def has_state(directory: Path) -> bool:
    """Whether ``directory`` holds a state this release reads (a release before it wrote other files)."""
    return all((directory / name).is_file() for name in STATE_FILES)


def open_state(directory: Path, what: str) -> State:
    import pyarrow.parquet as pq

    if not has_state(directory):
        raise Gpt2Error(f"{what} has no deduplication state of this version; rebuild it without --incremental")
    path = directory / "shingles.u64"
    values = np.memmap(path, "<u8", mode="r") if path.stat().st_size else np.zeros(0, "<u8")
    offsets = np.load(directory / "shingle_offsets.npy")
    with open(directory / "docs.parquet", "rb") as f:  # a file object: the home's name may not be UTF-8
        meta = (
            pq.ParquetFile(f).read(columns=["order", "score", "key", "url", "snippet"], use_threads=False).to_pydict()
        )
    docs = [
        Doc(order, score, key, url, snippet, values[offsets[i] : offsets[i + 1]])
        for i, (order, score, key, url, snippet) in enumerate(
            zip(meta["order"], meta["score"], meta["key"], meta["url"], meta["snippet"], strict=True)
        )
    ]
    edges = [tuple(e) for e in np.load(directory / "edges.npy").tolist()]
    screen = json.loads((directory / "screen.json").read_text())
    signatures = np.load(directory / "signatures.npy")
    if screen.get("hash_version", 1) != HASH_VERSION:  # made by an older release: re-sign the saved shingles
        signatures = MinHasher(signatures.shape[1]).signatures_csr(values, offsets)
    return State(directory, docs, signatures, edges, screen)  # type: ignore[arg-type]
