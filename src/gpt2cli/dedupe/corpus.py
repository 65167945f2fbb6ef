"""The corpus artifact's files, apart from the stage: the stage writes them, and --incremental and `gpt2 eval`
(--overlap-with) look for its Bloom filter without importing the stage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

CORPUS = "documents-00000.parquet"
BLOOM = "bloom-8gram.npz"


class CorpusWriter:
    """The corpus Parquet, written in batches as the documents stream by."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa

        self.path, self.rows, self.writer, self.file = path, [], None, None
        self.schema = pa.schema([("text", pa.string()), ("url", pa.string()), ("domain", pa.string()),
                                 ("title", pa.string()), ("score", pa.int64()), ("raw_docs", pa.string()),
                                 ("split", pa.string())])  # fmt: skip

    def __enter__(self) -> CorpusWriter:
        import pyarrow.parquet as pq

        self.file = open(self.path, "wb")  # a file object, closed in __exit__: pyarrow refuses non-UTF-8 paths
        self.writer = pq.ParquetWriter(self.file, self.schema)
        return self

    def add(self, row: dict[str, Any], score: int | None, split: str) -> None:
        self.rows.append({"text": row["text"], "url": row.get("url"), "domain": row.get("domain"),
                          "title": row.get("title"), "score": score, "raw_docs": row.get("raw_docs"),
                          "split": split})  # fmt: skip
        if len(self.rows) >= 1024:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows and self.writer is not None:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def __exit__(self, *exc: object) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()


class CorpusTexts:
    """The texts of a corpus file's ``split``, re-iterable (the Bloom filter reads them twice: to size, then to
    fill)."""

    def __init__(self, path: Path, split: str) -> None:
        self.path, self.split = path, split

    def __iter__(self) -> Iterator[str]:
        import pyarrow.parquet as pq

        with open(self.path, "rb") as f:  # a file object: pyarrow refuses a path that is not UTF-8
            for batch in pq.ParquetFile(f).iter_batches(columns=["text", "split"], use_threads=False):
                texts, splits = batch.column(0).to_pylist(), batch.column(1).to_pylist()
                yield from (text for text, split in zip(texts, splits, strict=True) if split == self.split)
