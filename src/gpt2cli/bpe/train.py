"""Learning BPE merges from a corpus (paper section 2.2), streamed, with incremental pair counts.

Memory follows the number of distinct pre-tokens, not the corpus size: documents are cut into
pre-tokens by GPT-2's pattern and counted in batches across worker processes; merges are then learned
on the (pre-token, count) table.

Tie-breaking: among pairs with the highest count, the pair whose (left bytes, right bytes) is
lexicographically smallest merges first. The rule depends only on the bytes, not on id assignment,
so the same corpus gives the same merges on any machine and worker count.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from gpt2cli.artifacts import Published, Store
from gpt2cli.bpe.tokenizer import Merge, Tokenizer, pretokenize
from gpt2cli.console import progress
from gpt2cli.documents import DocumentSource, open_documents
from gpt2cli.errors import Gpt2Error, UsageError
from gpt2cli.textutil import valid_unicode

log = logging.getLogger(__name__)

BATCH_CHARS = 1 << 20


def count_pretokens(texts: Iterable[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(pretokenize(valid_unicode(text)))
    return counts


def _batches(texts: Iterable[str], chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def count_corpus(
    texts: Iterable[str],
    workers: int,
    on_batch: Callable[[int], None] | None = None,
    batch_chars: int = BATCH_CHARS,
) -> Counter[bytes]:
    """Pre-token counts of a stream of texts, with at most ``2 * workers`` batches in flight."""
    total: Counter[str] = Counter()
    report = on_batch or (lambda _chars: None)
    if workers <= 1:
        for batch in _batches(texts, batch_chars):
            total.update(count_pretokens(batch))
            report(sum(map(len, batch)))
    else:
        with ProcessPoolExecutor(workers) as pool:
            pending: dict[Any, int] = {}
            for batch in _batches(texts, batch_chars):
                if len(pending) >= 2 * workers:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        total.update(future.result())
                        report(pending.pop(future))
                pending[pool.submit(count_pretokens, batch)] = sum(map(len, batch))
            for future in list(pending):
                total.update(future.result())
                report(pending.pop(future))
    return Counter({piece.encode("utf-8"): n for piece, n in total.items()})


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[int]:
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def learn_merges(
    word_counts: Mapping[bytes, int],
    num_merges: int,
    *,
    min_frequency: int = 2,
    on_merge: Callable[[int], None] | None = None,
) -> list[Merge]:
    """Up to ``num_merges`` merges, most frequent pair first (ties: smallest bytes), stopping early when
    no pair occurs ``min_frequency`` times.

    Pair counts are kept up to date incrementally: a merge touches only the words that contain its pair
    (found through an index), and a heap with lazy invalidation yields the next most frequent pair.
    """
    token_bytes = [bytes([i]) for i in range(256)]
    words: list[list[int]] = []
    counts: list[int] = []
    for word, n in word_counts.items():
        if len(word) > 1:
            words.append(list(word))
            counts.append(n)
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for i, (word, n) in enumerate(zip(words, counts, strict=True)):
        for pair in itertools.pairwise(word):
            pair_counts[pair] += n
            where[pair].add(i)
    heap = [(-n, token_bytes[a], token_bytes[b], a, b) for (a, b), n in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[Merge] = []
    while len(merges) < num_merges and heap:
        neg, left, right, a, b = heapq.heappop(heap)
        current = pair_counts.get((a, b), 0)
        if current != -neg:
            if 0 < current < -neg:  # the count fell since this entry was pushed: re-queue at its value
                heapq.heappush(heap, (-current, left, right, a, b))
            continue  # (a higher count was pushed when it rose)
        if current < min_frequency:
            break
        new = len(token_bytes)
        token_bytes.append(left + right)
        merges.append((left, right))
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for i in where.pop((a, b)):
            word = words[i]
            merged = _merge_word(word, a, b, new)
            if len(merged) == len(word):
                continue  # index entry left from an earlier merge of this word
            n = counts[i]
            for pair in itertools.pairwise(word):
                delta[pair] -= n
            for pair in itertools.pairwise(merged):
                delta[pair] += n
                where[pair].add(i)
            words[i] = merged
        for pair, d in delta.items():
            if d:
                pair_counts[pair] += d
                if d > 0:
                    heapq.heappush(heap, (-pair_counts[pair], token_bytes[pair[0]], token_bytes[pair[1]], *pair))
        pair_counts.pop((a, b), None)
        if on_merge:
            on_merge(len(merges))
    return merges


def bytes_per_token(tokenizer: Tokenizer, texts: Iterable[str]) -> tuple[float, int, int]:
    n_bytes = n_tokens = 0
    for batch in _batches(texts, BATCH_CHARS):
        n_bytes += sum(len(t.encode("utf-8")) for t in batch)
        n_tokens += sum(map(len, tokenizer.encode_batch(batch)))
    return (n_bytes / n_tokens if n_tokens else 0.0), n_bytes, n_tokens


def train_bpe(
    store: Store,
    *,
    corpus: str | None,
    inputs: list[Path],
    vocab_size: int,
    min_frequency: int,
    val_fraction: float,
    workers: int,
    force: bool,
    wait: bool,
) -> Published:
    """The `gpt2 train-bpe` stage: corpus in, `tokenizer` artifact out."""
    if vocab_size < 257:
        raise UsageError(f"--vocab-size must be at least 257 (256 bytes + <|endoftext|>), got {vocab_size}")
    source = open_documents(store, corpus, inputs, val_fraction)
    params = {"vocab_size": vocab_size, "min_frequency": min_frequency, "val_fraction": val_fraction}

    def build(draft: Any) -> dict[str, Any]:
        return _train(draft.dir, source, vocab_size, min_frequency, workers or os.cpu_count() or 1)

    return store.produce("tokenizer", params=params, inputs=source.inputs, build=build, force=force, wait=wait)


def _train(out: Path, source: DocumentSource, vocab_size: int, min_frequency: int, workers: int) -> dict[str, Any]:
    started = time.time()
    with progress("counting pre-tokens", unit="chars") as bar:
        counts = count_corpus((d.text for d in source if d.split == "train"), workers, bar.advance)
    stats = dict(source.stats)
    if not counts:
        skipped = f"{stats.get('malformed', 0)} malformed, {stats.get('empty', 0)} empty records"
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
    tokenizer = Tokenizer.from_merges(merges)
    tokenizer.save(out)
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
