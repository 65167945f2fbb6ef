"""Token shards: a corpus encoded once into flat, memory-mappable token files that pretraining reads.

File format (little-endian): a 32-byte header — magic ``GPT2TOK\\0``, format version (u32), bytes per
token (u32: 2 for uint16, 4 for uint32 when the vocabulary exceeds 65,536 tokens), token count (u64), vocabulary
size (u64) — then the tokens. Every document is *preceded* by ``<|endoftext|>``, so each document,
the first included, starts the way unconditional samples start (from ``<|endoftext|>``).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt2cli.artifacts import Artifact, Published, Store, artifact_input, write_atomic
from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.console import progress
from gpt2cli.documents import SPLITS, DocumentSource, check_val_fraction, open_documents
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.iterutil import batched

log = logging.getLogger(__name__)

MAGIC = b"GPT2TOK\0"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQQ")


def dtype_for(vocab_size: int) -> np.dtype[Any]:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class TokenShard:
    """A read-only view of one token file."""

    path: Path
    count: int
    vocab_size: int
    dtype: np.dtype[Any]

    @classmethod
    def open(cls, path: Path) -> TokenShard:
        with open(path, "rb") as f:
            raw = f.read(HEADER.size)
        if len(raw) < HEADER.size:
            raise Gpt2Error(f"{path}: too short to be a token shard")
        magic, version, itemsize, count, vocab_size = HEADER.unpack(raw)
        if magic != MAGIC or version != FORMAT_VERSION or itemsize not in (2, 4):
            raise Gpt2Error(f"{path}: not a gpt2cli token shard (format {version})")
        expected = HEADER.size + count * itemsize
        if path.stat().st_size != expected:
            raise Gpt2Error(f"{path}: holds {path.stat().st_size} bytes, its header promises {expected}")
        return cls(path, count, vocab_size, np.dtype(np.uint16 if itemsize == 2 else np.uint32))

    def tokens(self) -> np.memmap[Any, np.dtype[Any]]:
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=HEADER.size, shape=(self.count,))


class _ShardWriter:
    """Appends tokens after a placeholder header; ``finish`` writes the real header."""

    def __init__(self, path: Path, vocab_size: int, resume_count: int):
        self.path, self.vocab_size = path, vocab_size
        self.dtype = dtype_for(vocab_size)
        self.count = resume_count
        mode = "r+b" if resume_count or path.exists() else "wb"
        self.file = open(path, mode)  # noqa: SIM115 (closed by finish)
        if mode == "wb":
            self.file.write(HEADER.pack(MAGIC, FORMAT_VERSION, self.dtype.itemsize, 0, vocab_size))
        # drop anything written after the last checkpoint of a killed run
        self.file.truncate(HEADER.size + resume_count * self.dtype.itemsize)
        self.file.seek(0, 2)

    def write(self, ids: np.ndarray[Any, Any]) -> None:
        self.file.write(ids.astype(self.dtype, copy=False).tobytes())
        self.count += len(ids)

    def flush(self) -> None:
        """On disk before the checkpoint that counts these tokens: a crash must not leave it promising more."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def finish(self) -> None:
        self.file.seek(0)
        self.file.write(HEADER.pack(MAGIC, FORMAT_VERSION, self.dtype.itemsize, self.count, self.vocab_size))
        self.file.close()


MAX_BATCH_DOCS = 10_000_000  # documents tokenized in memory between two checkpoints


def check_tokenize_options(batch_docs: int, val_fraction: float | None) -> None:
    if not 1 <= batch_docs <= MAX_BATCH_DOCS:
        raise UsageError(f"--batch-docs must be in 1..{MAX_BATCH_DOCS:_}, got {batch_docs}")
    check_val_fraction(val_fraction)


def tokenize_corpus(
    store: Store,
    *,
    tokenizer_ref: str,
    corpus: str | None,
    inputs: list[Path],
    val_fraction: float | None,
    force: bool,
    wait: bool,
    batch_docs: int = 512,
) -> Published:
    """The `gpt2 tokenize` stage: corpus + tokenizer in, `tokens` artifact out.

    Progress is checkpointed after every ``batch_docs`` documents, so a killed run resumes where it stopped.
    The checkpoint counts documents, not batches, so a resumed run may use another ``batch_docs``.
    """
    check_tokenize_options(batch_docs, val_fraction)
    tokenizer_artifact = store.resolve(tokenizer_ref, "tokenizer", option="--tokenizer")
    source = open_documents(store, corpus, inputs, val_fraction)
    tokenizer = Tokenizer.load(tokenizer_artifact)
    params = {"val_fraction": source.val_fraction, "eot": "prepended"}

    def build(draft: Any) -> dict[str, Any]:
        state_path = draft.dir / ".work" / "state.json"
        state = json.loads(state_path.read_text()) if draft.resumed and state_path.exists() else {}
        counts = state.get("tokens", dict.fromkeys(SPLITS, 0))
        docs = state.get("documents", dict.fromkeys(SPLITS, 0))
        n_bytes = state.get("bytes", dict.fromkeys(SPLITS, 0))
        done = sum(docs.values())  # documents already in the shards, whatever the batch size that wrote them
        if done:
            log.info("resuming after %d documents", done)
        writers = {s: _ShardWriter(draft.dir / f"{s}.bin", tokenizer.vocab_size, counts[s]) for s in SPLITS}
        eot = np.array([tokenizer.eot_id])
        with progress("tokenizing", unit="docs") as bar:
            for batch in batched(itertools.islice(source, done, None), batch_docs):
                for doc, ids in zip(batch, tokenizer.encode_batch([d.text for d in batch]), strict=True):
                    writers[doc.split].write(np.concatenate([eot, np.asarray(ids, dtype=np.int64)]))
                    docs[doc.split] += 1
                    n_bytes[doc.split] += len(doc.text.encode("utf-8"))
                for w in writers.values():
                    w.flush()
                counts = {s: w.count for s, w in writers.items()}
                state = {"tokens": counts, "documents": docs, "bytes": n_bytes}
                state_path.parent.mkdir(exist_ok=True)
                write_atomic(state_path, json.dumps(state).encode())
                bar.advance(len(batch))
        for w in writers.values():
            w.finish()
        if not sum(docs.values()):
            raise Gpt2Error(f"the corpus is empty: no documents to tokenize ({source.skipped()})")
        if not docs["train"]:
            raise Gpt2Error("no document landed in the train split; lower --val-fraction")
        return {
            "tokenizer": tokenizer_artifact.ref,
            "vocab_size": tokenizer.vocab_size,
            "dtype": str(dtype_for(tokenizer.vocab_size)),
            **{f"{s}_documents": docs[s] for s in SPLITS},
            **{f"{s}_tokens": counts[s] for s in SPLITS},
            **{f"{s}_bytes_per_token": round(n_bytes[s] / max(counts[s] - docs[s], 1), 4) for s in SPLITS},
            "malformed_records": source.stats.get("malformed", 0),
            "empty_records": source.stats.get("empty", 0),
        }

    result = store.produce(
        "tokens",
        params=params,
        inputs=[artifact_input(tokenizer_artifact), *source.inputs],
        build=build,
        force=force,
        wait=wait,
        resumable=True,
    )
    if not result.artifact.summary.get("val_documents"):  # said again when the version is reused
        log.warning("%s", _empty_validation_warning(result.artifact, source))
    return result


def _empty_validation_warning(tokens: Artifact, source: DocumentSource) -> str:
    """Why the validation split came out empty, and how to get one; pretraining then has no validation loss."""
    head = f"{tokens.ref} has no validation split (0 of {tokens.summary.get('train_documents', 0):,} documents)"
    tail = "`gpt2 pretrain` on these tokens computes no validation loss"
    if source.has_split_column:
        corpus = source.inputs[0]["ref"]
        return (
            f"{head}: {corpus} has no `val` documents; {tail}; rebuild the corpus with a larger `dedupe --val-fraction`"
        )
    val_fraction = source.val_fraction
    if val_fraction <= 0:
        return f"{head}: --val-fraction is 0; {tail}; give a --val-fraction (e.g. 0.1) to hold documents out"
    return (
        f"{head}: a document is held out when the hash of its text falls under --val-fraction {val_fraction:g}, "
        f"so fewer than about {math.ceil(1 / val_fraction):,} documents (1/fraction) often give none; {tail}; "
        "raise --val-fraction (e.g. 0.1)"
    )


def validation_gap(tokens: Artifact, seq_len: int) -> str | None:
    """Why training on ``tokens`` with ``seq_len``-token sequences yields no validation loss, and how to get one;
    None when it yields one.

    An evaluation batch needs ``seq_len + 1`` tokens: a sequence and its targets.
    """
    val_tokens = int(tokens.summary.get("val_tokens") or 0)
    if not val_tokens:
        why = f"{tokens.ref} has no validation split (0 validation documents)"
    elif val_tokens < seq_len + 1:
        why = f"the {val_tokens:,} validation tokens of {tokens.ref} are too few for one {seq_len}-token sequence"
    else:
        return None
    corpus = next((i["ref"] for i in tokens.inputs if str(i.get("ref", "")).startswith("corpus@")), None)
    if corpus is not None:  # a corpus has its own split: tokenize's --val-fraction does not move its documents
        return f"{why}; for one, rebuild {corpus} with a larger `gpt2 dedupe --val-fraction` and re-tokenize"
    return f"{why}; for one, re-tokenize with a larger --val-fraction"
