"""The `gpt2 train-bpe` stage: a corpus artifact (or files) in, a `tokenizer` artifact out."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from gpt2cli.artifacts import Published, Store
from gpt2cli.bpe.tokenizer import Tokenizer
from gpt2cli.bpe.train import bytes_per_token, count_corpus, learn_merges
from gpt2cli.console import progress
from gpt2cli.documents import DocumentSource, open_documents
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.workers import usable_workers

log = logging.getLogger(__name__)


def train_bpe(
    store: Store,
    *,
    corpus: str | None,
    inputs: list[Path],
    vocab_size: int,
    min_frequency: int,
    val_fraction: float | None,
    workers: int,
    force: bool,
    wait: bool,
) -> Published:
    """The `gpt2 train-bpe` stage: corpus in, `tokenizer` artifact out."""
    if vocab_size < 257:
        raise UsageError(f"--vocab-size must be at least 257 (256 bytes + <|endoftext|>), got {vocab_size}")
    if min_frequency < 1:
        raise UsageError(f"--min-frequency must be at least 1, got {min_frequency}")
    if workers < 0:
        raise UsageError(f"--workers must be at least 0 (0: all cores), got {workers}")
    source = open_documents(store, corpus, inputs, val_fraction)
    params = {"vocab_size": vocab_size, "min_frequency": min_frequency, "val_fraction": source.val_fraction}

    def build(draft: Any) -> dict[str, Any]:
        return _train(draft.dir, source, vocab_size, min_frequency, usable_workers(workers))

    return store.produce("tokenizer", params=params, inputs=source.inputs, build=build, force=force, wait=wait)


def _train(out: Path, source: DocumentSource, vocab_size: int, min_frequency: int, workers: int) -> dict[str, Any]:
    started = time.time()
    with progress("counting pre-tokens", unit="chars") as bar:
        counts = count_corpus((d.text for d in source if d.split == "train"), workers, bar.advance)
    stats = dict(source.stats)
    if not counts:
        skipped = source.skipped()
        if stats.get("val"):
            how = "the corpus puts" if source.has_split_column else f"--val-fraction {source.val_fraction} puts"
            skipped += f"; {how} all {stats['val']} documents in the validation split"
        raise Gpt2Error(f"the corpus has no training text ({skipped})")
    counted = time.time()
    num_merges = vocab_size - 257
    with progress("learning merges", total=num_merges, unit="merges") as bar:
        merges = learn_merges(counts, num_merges, min_frequency=min_frequency, on_merge=lambda _: bar.advance())
    if len(merges) < num_merges:
        log.warning(
            "stopped at %d merges: no pair occurs %d times any more (vocabulary %d, asked %d)",
            len(merges),
            min_frequency,
            len(merges) + 257,
            vocab_size,
        )
    trained = time.time()
    learned = Tokenizer.from_merges(merges)
    learned.save(out)
    tokenizer = Tokenizer.load(out)  # what every later stage will read: never publish files that read back otherwise
    if (tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens) != (
        learned.vocab,
        learned.merges,
        learned.special_tokens,
    ):
        raise Gpt2Error(f"the tokenizer files written to {out} read back as a different tokenizer")
    held_out = [d.text for d in source if d.split == "val"]
    bpt, val_bytes, val_tokens = bytes_per_token(tokenizer, held_out)
    engine_agrees = all(tokenizer.encode(t) == tokenizer.encode_reference(t) for t in held_out[:200])
    return {
        "vocab_size": tokenizer.vocab_size,
        "merges": len(merges),
        "distinct_pretokens": len(counts),
        "train_documents": stats.get("train", 0),
        "val_documents": stats.get("val", 0),
        "malformed_records": stats.get("malformed", 0),
        "empty_records": stats.get("empty", 0),
        "val_bytes": val_bytes,
        "val_tokens": val_tokens,
        "val_bytes_per_token": round(bpt, 4),
        "engine_matches_reference_on_val": engine_agrees,
        "count_seconds": round(counted - started, 3),
        "merge_seconds": round(trained - counted, 3),
        "train_seconds": round(trained - started, 3),
    }
