"""Bloom filters of word 8-grams: the paper's memorization check (section 4, Table 6).

GPT-2's authors put every 8-gram of WebText's training text in Bloom filters, with text normalized to
lower-case alphanumeric words separated by single spaces and a false-positive rate of at most 1e-8, and
reported what share of each test set's 8-grams the filter contains. :func:`ngram_items` is that
normalization, :class:`BloomFilter` the filter and :func:`overlap_report` the Table 6 figure.

The filter is a packed numpy bit array; each item is hashed once (128-bit BLAKE2b) and its k bit positions
come from the two 64-bit halves by double hashing (Kirsch & Mitzenmacher 2006: g_i = h1 + i * h2 mod m),
which keeps the false-positive rate of k independent hashes at a fraction of the cost.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from gpt2cli.dedupe.normalize import normalize_text
from gpt2cli.iterutil import batched

__all__ = ["BloomFilter", "build_ngram_bloom", "ngram_items", "optimal_size", "overlap_report"]

_CHUNK = 1 << 16  # items hashed per batch: bounds the (items x k) position array to a few MB
_ALNUM = re.compile(r"[^\W_]+")  # runs of letters and digits, any script


def optimal_size(n: int, p: float) -> tuple[int, int]:
    """Bits m and hash count k for ``n`` items at false-positive rate ``p``:
    m = ceil(-n ln p / (ln 2)^2), k = round(m / n * ln 2), the sizes that minimize m for a given p."""
    if n < 1:
        raise ValueError("a Bloom filter needs a capacity of at least one item")
    if not 0 < p < 1:
        raise ValueError("the false-positive rate must be between 0 and 1")
    m = math.ceil(-n * math.log(p) / math.log(2) ** 2)
    k = max(1, round(m / n * math.log(2)))
    return m, k


def _digests(items: Sequence[str | bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The two 64-bit halves of each item's 128-bit BLAKE2b hash."""
    blob = b"".join(
        hashlib.blake2b(
            item.encode("utf-8", "surrogatepass") if isinstance(item, str) else item, digest_size=16
        ).digest()
        for item in items
    )
    halves = np.frombuffer(blob, dtype="<u8").reshape(-1, 2)
    return halves[:, 0], halves[:, 1]


class BloomFilter:
    """A set that answers "maybe present" or "surely absent" in ~m/n bits per item.

    ``BloomFilter(n, p)`` sizes the filter for ``n`` items at false-positive rate ``p`` (the paper's p is
    1e-8: about 38 bits and 27 hashes per item). Items are strings (UTF-8) or bytes.
    """

    def __init__(self, n: int, p: float = 1e-8) -> None:
        self.m, self.k = optimal_size(n, p)
        self.capacity = n
        self.target_rate = p
        self.bits = np.zeros((self.m + 7) // 8, dtype=np.uint8)

    @classmethod
    def from_bits(cls, m: int, k: int, bits: np.ndarray, capacity: int = 0, target_rate: float = 0.0) -> BloomFilter:
        """A filter with given size, hash count and bit array (what :meth:`load` reads)."""
        if m < 1 or k < 1 or bits.dtype != np.uint8 or bits.shape != ((m + 7) // 8,):
            raise ValueError(f"inconsistent Bloom filter: m={m}, k={k}, {bits.dtype} bits of shape {bits.shape}")
        bloom = cls.__new__(cls)
        bloom.m, bloom.k, bloom.bits = int(m), int(k), bits
        bloom.capacity, bloom.target_rate = int(capacity), float(target_rate)
        return bloom

    def _positions(self, items: Sequence[str | bytes]) -> np.ndarray:
        """(len(items), k) bit positions: h1 + i*h2 mod m, with both halves reduced mod m first so that the
        products fit in 64 bits for any m below 2**57.

        The step h2 is moved to the next value coprime with m: a step sharing a factor g with m cycles after
        m/g positions, and a small cycle puts several of the k probes on one bit (m = 231 and h2 = 77 probe
        only 3 bits), which multiplies the false-positive rate.
        """
        h1, h2 = _digests(items)
        m = np.uint64(self.m)
        h1, h2 = h1 % m, h2 % m
        shared = np.gcd(h2, m) != 1
        while shared.any():  # a few rounds at most: coprime values are dense (m / phi(m) is small)
            h2[shared] = (h2[shared] + np.uint64(1)) % m
            shared = np.gcd(h2, m) != 1
        steps = np.arange(self.k, dtype=np.uint64)
        return (h1[:, None] + steps[None, :] * h2[:, None]) % m

    def add_many(self, items: Iterable[str | bytes]) -> None:
        """Add every item (any iterable: consumed in batches)."""
        for batch in batched(items, _CHUNK):
            pos = self._positions(batch).ravel()
            np.bitwise_or.at(self.bits, pos >> np.uint64(3), np.left_shift(1, pos & np.uint64(7)).astype(np.uint8))

    def add(self, item: str | bytes) -> None:
        """Add one item."""
        self.add_many([item])

    def contains_many(self, items: Iterable[str | bytes]) -> np.ndarray:
        """A bool per item: True when it may be in the set (false positives at the filter's rate), False when it
        surely is not."""
        out = []
        for batch in batched(items, _CHUNK):
            pos = self._positions(batch)
            bit = (self.bits[pos >> np.uint64(3)] >> (pos & np.uint64(7)).astype(np.uint8)) & 1
            out.append(bit.all(axis=1))
        return np.concatenate(out) if out else np.zeros(0, dtype=bool)

    def __contains__(self, item: str | bytes) -> bool:
        return bool(self.contains_many([item])[0])

    def fill_ratio(self) -> float:
        """The share of bits set."""
        ones = int(np.unpackbits(self.bits, count=self.m).sum(dtype=np.int64)) if self.m else 0
        return ones / self.m

    def false_positive_rate(self) -> float:
        """The current false-positive rate, estimated from the bits set: (share of ones)^k. Exact in expectation
        for uniform hashes; it grows past the target rate when more than the capacity has been added."""
        return self.fill_ratio() ** self.k

    def approx_len(self) -> int:
        """The number of distinct items added, estimated from the bits set (Swamidass & Baldi 2007)."""
        zeros = 1.0 - self.fill_ratio()
        if zeros <= 0:
            return self.capacity
        return round(-self.m / self.k * math.log(zeros))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an ``.npz`` with m, k, the packed bits and the sizing parameters (no pickled objects), at
        exactly ``path``."""
        buffer = io.BytesIO()
        np.savez(buffer, m=np.int64(self.m), k=np.int64(self.k), bits=self.bits,
                 capacity=np.int64(self.capacity), target_rate=np.float64(self.target_rate))  # fmt: skip
        Path(path).write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BloomFilter:
        """Read what :meth:`save` wrote."""
        with np.load(path, allow_pickle=False) as data:
            return cls.from_bits(
                int(data["m"]), int(data["k"]), data["bits"].copy(),
                int(data["capacity"]) if "capacity" in data else 0,
                float(data["target_rate"]) if "target_rate" in data else 0.0,
            )  # fmt: skip

    def __repr__(self) -> str:
        return f"BloomFilter(m={self.m}, k={self.k}, capacity={self.capacity}, target_rate={self.target_rate:g})"


def ngram_items(text: str, n: int = 8) -> list[str]:
    """Every word n-gram of ``text`` (with repeats, in order) under the paper's normalization: lower-case
    alphanumeric words separated by single spaces. Punctuation and other symbols separate words ("don't"
    is "don t"); letters and digits of every script count, so non-English text is not erased."""
    words = _ALNUM.findall(text.lower())
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def build_ngram_bloom(texts: Iterable[str], n: int = 8, p: float = 1e-8) -> BloomFilter:
    """A filter holding every n-gram of ``texts``, sized for their number at rate ``p``: ``texts`` is iterated
    twice (count, then add), so pass a list or a re-iterable stream."""
    count = sum(max(0, len(_ALNUM.findall(text.lower())) - n + 1) for text in texts)
    bloom = BloomFilter(max(1, count), p)
    for text in texts:
        bloom.add_many(ngram_items(text, n))
    return bloom


def overlap_report(bloom: BloomFilter, texts: Iterable[str], n: int = 8) -> dict[str, float | int]:
    """Table 6's figure for ``texts`` (a test set) against ``bloom`` (a training set's n-grams): the number of
    n-grams of the texts, counting repeats (each text on its own: no n-gram spans two texts), how many the
    filter contains, and that as a percentage. Each text is normalized as the corpus's documents were: the same
    words with decomposed accents or fullwidth letters must be found."""
    total = found = 0
    for text in texts:
        items = ngram_items(normalize_text(text), n)
        if items:
            total += len(items)
            found += int(bloom.contains_many(items).sum())
    return {"ngrams": total, "found": found, "percent": 100.0 * found / total if total else 0.0}
