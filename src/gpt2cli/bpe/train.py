"""Learning BPE merges from a corpus (paper section 2.2), streamed, with incremental pair counts.

Memory follows the number of distinct pre-tokens, not the corpus size: documents are cut into
pre-tokens by GPT-2's pattern and counted in batches across worker processes; merges are then learned
on the (pre-token, count) table.

Tie-breaking: among pairs with the highest count, the pair whose (left bytes, right bytes) is
lexicographically smallest merges first. The rule depends only on the bytes, not on id assignment,
so the same corpus gives the same merges on any machine and worker count.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from gpt2cli.bpe.tokenizer import Merge, Tokenizer, pretokenize
from gpt2cli.textutil import valid_unicode
from gpt2cli.workers import worker_pool

BATCH_CHARS = 1 << 18  # small batches keep the pickled texts in flight to a few MiB
_SHIFT = 32  # a pair of token ids (a, b) is the int a << _SHIFT | b
_LOW = (1 << _SHIFT) - 1


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
    """Pre-token counts of a stream of texts on ``workers`` cores: ``workers - 1`` forked processes
    count batches, two each in flight, and this process counts a batch itself whenever they are all
    busy (one process fewer than cores keeps the memory of the tree down; none idles)."""
    total: Counter[str] = Counter()
    report = on_batch or (lambda _chars: None)
    helpers = max(workers - 1, 0)
    with worker_pool(helpers) if helpers else contextlib.nullcontext() as pool:
        pending: dict[Any, int] = {}
        for batch in _batches(texts, batch_chars):
            for future in [f for f in pending if f.done()]:
                total.update(future.result())
                report(pending.pop(future))
            if pool is None or len(pending) >= 2 * helpers:
                total.update(count_pretokens(batch))
                report(sum(map(len, batch)))
            else:
                pending[pool.submit(count_pretokens, batch)] = sum(map(len, batch))
        for future in list(pending):
            total.update(future.result())
            report(pending.pop(future))
    counts: Counter[bytes] = Counter()
    while total:  # popping frees each str as its bytes are made: the table is not held twice
        piece, n = total.popitem()
        counts[piece.encode("utf-8")] = n
    return counts


def _merge_word(
    word: list[int], a: int, b: int, new: int, n: int, delta: dict[int, int], where: dict[int, list[int]], w: int
) -> None:
    """Merge every (a, b) of word ``w`` into ``new`` in place, left to right.

    Adds to ``delta`` the change of every pair count other than (a, b) itself, weighted by the word's count
    ``n``, looking only at the neighbours of each merge, and indexes the word under the pairs it gains.
    """
    last = len(word) - 1
    starts: list[int] = []
    i = 0
    while True:
        try:
            i = word.index(a, i, last)  # an (a, b) starts before the last token
        except ValueError:
            break
        if word[i + 1] != b:
            i += 1
            continue
        if i:
            merged_before = bool(starts) and starts[-1] == i - 2
            prev = new if merged_before else word[i - 1]
            if not merged_before:  # else (b, a) already went as the right neighbour of the previous merge
                delta[prev << _SHIFT | a] -= n
            key = prev << _SHIFT | new
            delta[key] += n
            _index(where, key, w)
        if i + 2 <= last:
            after = word[i + 2]
            delta[b << _SHIFT | after] -= n
            if not (after == a and i + 3 <= last and word[i + 3] == b):  # else the next merge pairs with us
                key = new << _SHIFT | after
                delta[key] += n
                _index(where, key, w)
        starts.append(i)
        i += 2
    if len(starts) == 1:
        word[starts[0] : starts[0] + 2] = (new,)
    elif starts:  # one pass over the word: a shift per merge would be quadratic in a run of a million
        merged: list[int] = []
        kept = 0
        for i in starts:
            merged += word[kept:i]
            merged.append(new)
            kept = i + 2
        merged += word[kept:]
        word[:] = merged


def _index(where: dict[int, list[int]], key: int, w: int) -> None:
    """Word ``w`` holds pair ``key``; words are indexed one at a time, so a repeat is the last entry."""
    seen = where[key]
    if not seen or seen[-1] != w:
        seen.append(w)


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
    Memory is kept small because it bounds the trainer's: a pair is one int key, the index holds a list
    of word numbers per pair (new entries only for pairs a merge creates), pairs whose count falls to
    zero are dropped, and the heap is rebuilt when stale entries outnumber live ones.
    """
    token_bytes = [bytes([i]) for i in range(256)]
    words: list[list[int]] = []
    counts: list[int] = []
    for word, n in word_counts.items():
        if len(word) > 1:
            words.append(list(word))
            counts.append(n)
    pair_counts: dict[int, int] = defaultdict(int)
    where: dict[int, list[int]] = defaultdict(list)
    for w, (word, n) in enumerate(zip(words, counts, strict=True)):
        for a, b in itertools.pairwise(word):
            key = a << _SHIFT | b
            pair_counts[key] += n
            seen = where[key]
            if not seen or seen[-1] != w:
                seen.append(w)
    pair_counts = dict(pair_counts)

    def queue() -> list[tuple[int, bytes, bytes, int]]:
        heap = [(-n, token_bytes[k >> _SHIFT], token_bytes[k & _LOW], k) for k, n in pair_counts.items()]
        heapq.heapify(heap)
        return heap

    heap = queue()
    merges: list[Merge] = []
    while len(merges) < num_merges and heap:
        neg, left, right, key = heapq.heappop(heap)
        current = pair_counts.get(key, 0)
        if current != -neg:
            if 0 < current < -neg:  # the count fell since this entry was pushed: re-queue at its value
                heapq.heappush(heap, (-current, left, right, key))
            continue  # (a higher count was pushed when it rose)
        if current < min_frequency:
            break
        a, b, new = key >> _SHIFT, key & _LOW, len(token_bytes)
        token_bytes.append(left + right)
        merges.append((left, right))
        delta: dict[int, int] = defaultdict(int)
        for w in where.pop(key):  # (some entries are left from earlier merges of the word: nothing to do)
            _merge_word(words[w], a, b, new, counts[w], delta, where, w)
        del pair_counts[key]
        for k, d in delta.items():
            if d and k != key:
                count = pair_counts.get(k, 0) + d
                if count > 0:
                    pair_counts[k] = count
                    if d > 0:
                        heapq.heappush(heap, (-count, token_bytes[k >> _SHIFT], token_bytes[k & _LOW], k))
                else:  # no word holds the pair any more
                    del pair_counts[k]
                    where.pop(k, None)
        if len(heap) > 2 * len(pair_counts) + 4096:
            heap = queue()
        if on_merge:
            on_merge(len(merges))
    return merges


def bytes_per_token(tokenizer: Tokenizer, texts: Iterable[str]) -> tuple[float, int, int]:
    n_bytes = n_tokens = 0
    for batch in _batches(texts, BATCH_CHARS):
        n_bytes += sum(len(t.encode("utf-8")) for t in batch)
        n_tokens += sum(map(len, tokenizer.encode_batch(batch)))
    return (n_bytes / n_tokens if n_tokens else 0.0), n_bytes, n_tokens
