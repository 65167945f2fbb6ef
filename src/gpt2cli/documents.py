"""Documents in and out of stages: a corpus artifact, or text / JSONL / Parquet files given with --input.

A corpus artifact (made by `gpt2 dedupe`) holds Parquet files with a ``text`` column and a ``split``
column (``train`` / ``val``). Plain files have no split: a document goes to ``val`` when the hash of its
text falls below ``--val-fraction``, so a document keeps its split across runs and corpus refreshes.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Union

from gpt2cli.artifacts import Artifact, Store, artifact_input, check_regular_file, distinct_files, file_input
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.textutil import valid_unicode

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".text", ".md"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
PARQUET_SUFFIXES = {".parquet"}
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Document:
    text: str
    split: str


DEFAULT_VAL_FRACTION = 0.01  # of --input documents held out by train-bpe and tokenize


def split_for(text: str, val_fraction: float) -> str:
    """``val`` for a stable pseudo-random ``val_fraction`` of texts, decided by the text's own hash."""
    if val_fraction <= 0:
        return "train"
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
    return "val" if h < val_fraction * 2**64 else "train"


def expand_inputs(paths: Sequence[Path]) -> list[Path]:
    """Files named directly, and the supported files under each directory, in a stable order.

    A directory's hidden files and folders (``.ipynb_checkpoints/``, macOS's ``._name`` AppleDouble files) are
    not documents and are skipped; a hidden file named directly is read. A file reached twice (named twice,
    inside a directory also given, or through a link) is read once: twice would count its documents twice.
    """
    supported = TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in supported
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            check_regular_file(path)
            if path.suffix.lower() not in supported:
                raise UsageError(f"{path}: unsupported input type; use .txt/.md, .jsonl/.ndjson or .parquet")
            files.append(path)
    if not files:
        raise UsageError(f"no .txt, .jsonl or .parquet files in {', '.join(map(str, paths))}")
    return distinct_files(files)


class Malformed(NamedTuple):
    """A record that cannot be read, counted under ``reason`` (``malformed`` or ``invalid_utf8``) and skipped;
    ``where`` (``file:line``) is for messages."""

    reason: str
    where: str


Record = Union[dict[str, Any], Malformed]


def read_as(path: Path) -> str:
    """How a file's bytes become records, decided by its name: ``jsonl``, ``parquet`` or ``text`` (one document)."""
    suffix = path.suffix.lower()
    return "jsonl" if suffix in JSONL_SUFFIXES else "parquet" if suffix in PARQUET_SUFFIXES else "text"


def document_input(path: Path) -> dict[str, Any]:
    """A manifest input for a file of documents: the same bytes read another way are another input."""
    return {**file_input(path), "read_as": read_as(path)}


def read_records(
    files: Sequence[Path], columns: Sequence[str] | None = None, owns: Callable[[int], bool] = lambda _: True
) -> Iterator[tuple[int, Path, Record]]:
    """(number, file, record) for the records of ``files``, in order: a text file is one record ``{"text": ...}``,
    a JSONL line one JSON object, a Parquet row one row (its ``columns`` that exist; all when None).

    The one reader of --input files, so that every stage takes the same inputs. Records are numbered across
    files from 0 (blank lines are not records); a record ``owns`` rejects is numbered but not parsed, so that
    the shards of an input agree on the numbers. A record that is not UTF-8 or not a JSON object comes as
    :class:`Malformed`; a file that cannot be read at all is an error naming it. A UTF-8 byte order mark at
    the start of a file (Windows editors write one) is not part of its first record.
    """
    record = -1
    for path in files:
        kind = read_as(path)
        if kind == "jsonl":
            with _open(path) as f:
                for lineno, raw in enumerate(f, 1):
                    if lineno == 1:
                        raw = raw.removeprefix(codecs.BOM_UTF8)
                    if not raw.strip():
                        continue
                    record += 1
                    if owns(record):
                        yield record, path, _json_record(raw, f"{path}:{lineno}")
        elif kind == "parquet":
            for row in _parquet_rows(path, columns):
                record += 1
                if owns(record):
                    yield record, path, row
        else:
            record += 1
            if owns(record):
                with _open(path) as f:
                    yield record, path, _text_record(f.read().removeprefix(codecs.BOM_UTF8), str(path))


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as e:
        raise Gpt2Error(f"cannot read {path}: {e.strerror or e}") from None


def _text_record(raw: bytes, where: str) -> Record:
    try:
        return {"text": raw.decode("utf-8")}
    except UnicodeDecodeError:
        log.warning("%s: not UTF-8; skipped", where)
        return Malformed("invalid_utf8", where)


def _json_record(raw: bytes, where: str) -> Record:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        log.warning("%s: not UTF-8; skipped", where)
        return Malformed("invalid_utf8", where)
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # bad JSON, an integer past Python's digit limit, nesting past the stack
        return Malformed("malformed", where)
    return obj if isinstance(obj, dict) else Malformed("malformed", where)


def _parquet_rows(path: Path, columns: Sequence[str] | None, batch_rows: int = 1024) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _open(path) as f:  # a file object: pyarrow refuses a path whose name is not UTF-8
        try:
            parquet = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as e:  # pyarrow raises several types for a damaged file
            raise Gpt2Error(f"{path}: not a readable Parquet file ({e})") from None
        names = parquet.schema_arrow.names
        if "text" not in names:
            raise Gpt2Error(f"{path}: Parquet file has no 'text' column (columns: {names})")
        batches = parquet.iter_batches(
            batch_size=batch_rows, columns=[c for c in columns if c in names] if columns else None, use_threads=False
        )
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as e:  # a damaged page is found only when it is read
                raise Gpt2Error(f"{path}: damaged Parquet file ({e})") from None
            if batch is None:
                return
            yield from batch.to_pylist()


@dataclass
class DocumentSource:
    """Where a stage's documents come from, and the manifest entries that identify them."""

    inputs: list[dict[str, Any]]
    files: list[Path]
    val_fraction: float
    has_split_column: bool
    stats: Counter[str] = field(default_factory=Counter)

    def skipped(self) -> str:
        """The records the last pass skipped, for the message of a run left with no documents."""
        return f"{self.stats.get('malformed', 0)} malformed, {self.stats.get('empty', 0)} empty records"

    def __iter__(self) -> Iterator[Document]:
        self.stats.clear()
        for _, _, row in read_records(self.files, columns=("text", "split")):
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str):  # not UTF-8, not JSON, or no text
                self.stats["malformed"] += 1
                continue
            if not text.strip():
                self.stats["empty"] += 1
                continue
            text = valid_unicode(text)
            split = row.get("split") if self.has_split_column else None
            if split not in SPLITS:
                split = split_for(text, self.val_fraction)
            self.stats[split] += 1
            yield Document(text, split)


def check_val_fraction(val_fraction: float | None) -> None:
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}")


def check_document_options(
    corpus_ref: str | None, input_paths: Sequence[Path] | None, val_fraction: float | None
) -> None:
    """What `open_documents` refuses before reading anything; `gpt2 refresh` checks it before its first stage."""
    check_val_fraction(val_fraction)
    if input_paths and corpus_ref:
        raise UsageError("give either --corpus or --input, not both")
    if not input_paths and val_fraction is not None:
        raise UsageError(
            "--val-fraction splits --input documents; a corpus keeps the split `gpt2 dedupe --val-fraction` gave it"
        )


def open_documents(
    store: Store, corpus_ref: str | None, input_paths: Sequence[Path], val_fraction: float | None
) -> DocumentSource:
    """The documents a stage reads: ``--input`` files if given, else the corpus artifact (default: the current one).
    ``val_fraction`` (None: not given) splits ``--input`` documents only; given with a corpus it is refused rather
    than recorded in a manifest it has no effect on (a changed value would rebuild identical shards)."""
    check_document_options(corpus_ref, input_paths, val_fraction)
    if input_paths:
        files = expand_inputs([Path(p) for p in input_paths])
        share = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        return DocumentSource([document_input(p) for p in files], files, share, has_split_column=False)
    corpus: Artifact = store.resolve(corpus_ref or "corpus", "corpus", option="--corpus")
    # the documents are the top-level Parquet files; subfolders hold a stage's own state
    files = [corpus.file(f["path"]) for f in corpus.manifest["files"] if re.fullmatch(r"[^/]+\.parquet", f["path"])]
    if not files:
        raise Gpt2Error(f"{corpus.ref} holds no Parquet documents")
    return DocumentSource([artifact_input(corpus)], files, DEFAULT_VAL_FRACTION, has_split_column=True)
