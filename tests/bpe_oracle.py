"""Brute-force BPE training for tests: recount every pair after each merge, same tie rule as the trainer."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping


def brute_force_merges(word_counts: Mapping[bytes, int], num_merges: int, min_frequency: int = 2):
    words = {tuple(bytes([b]) for b in w): n for w, n in word_counts.items()}
    merges = []
    while len(merges) < num_merges:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, n in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p[0], p[1]))
        if pairs[best] < min_frequency:
            break
        merges.append(best)
        merged_words: Counter[tuple[bytes, ...]] = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged_words[tuple(out)] += n
        words = merged_words
    return merges
