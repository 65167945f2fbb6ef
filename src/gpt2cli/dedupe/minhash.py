"""Near-duplicate detection for `gpt2 dedupe`: word 5-gram shingles, MinHash signatures, banded LSH, exact
Jaccard verification and union-find clusters.

WebText (paper section 2.1) says only that it de-duplicated; the open reproductions are specific: OpenWebText
ran LSH over 5-gram sets and removed documents with similarity > 0.5, OpenWebText2 MinHashLSH over 5-grams at
threshold 0.5. **Default threshold: 0.5** (``DEFAULT_THRESHOLD``) on the Jaccard similarity of word 5-gram
sets, to match those reproductions: a document sharing half of its distinct 5-grams with another is the same
article re-hosted or re-wrapped (syndication, boilerplate, page chrome), while independent articles on the
same story share only a few percent. Pairs are verified with the exact Jaccard, so a pair counts as a
duplicate when J >= threshold and LSH never yields false positives, only (few) false negatives near it.

Definitions, chosen to be stable across runs, processes and platforms (signatures are saved and compared
with later runs, so none of this may depend on ``PYTHONHASHSEED``, byte order or the numpy RNG):

* **Shingles.** ``text.lower()``, word tokens ``regex`` ``\\w+``; every distinct run of ``n`` consecutive
  words (a text with fewer than ``n`` words is one shingle of all its words; no words, no shingle). A
  shingle's hash is a 64-bit function of its words only: each word is hashed as the polynomial
  ``sum(c_j * B**j) mod 2**64`` over its Unicode code points, plus its length, through the MurmurHash3
  64-bit finalizer ``fmix64``; the shingle is ``fmix64(sum(w_i * M**i) + m) mod 2**64`` over its ``m``
  word hashes. All of it is uint64 numpy arithmetic, vectorized over a whole batch of texts (hashing each
  5-gram string with blake2b in Python costs ~1 us a shingle, more than the rest of the pipeline).
* **Permutations.** ``h_k(x) = (u(x) + k * v(x)) mod 2**32`` for ``k = 0 .. num_perm - 1``, where ``u`` and
  ``v`` are the low and high 32 bits of ``fmix64(x XOR key)`` (``v`` made odd) and ``key`` is a 64-bit number
  derived from the seed with blake2b; signatures are uint32 (``EMPTY`` = 2**32 - 1 for a document without
  shingles). All ``num_perm`` values of a block of shingles are built in ``log2(num_perm)`` doubling steps,
  each ONE uint32 addition per value (rows ``[m, 2m)`` = rows ``[0, m)`` + ``m * v``, wrapping mod 2**32):
  a third of the work of the usual ``(a_k x + b_k) mod p`` (which needs a reduction after every addition)
  and ~1.6x faster overall. Why the values behave as independent permutations: ``(u, v)`` is a keyed
  pseudo-random function of the shingle, and for permutations ``j != k`` the pair ``(h_j, h_k)`` is a
  bijection of ``(u, v)`` when ``k - j`` is odd; when it is even only the lowest bits of ``h_k - h_j`` are
  tied, and those decide a minimum only after a tie in all the bits above them. Measured (and tested): the
  Jaccard estimate's spread is the binomial ``sqrt(J (1 - J) / num_perm)`` of independent permutations.
  ``MinHasher.hash_values`` gives the ``h_k`` of shingles directly; the tests check signatures against it.
* **Bands.** A band's ``r`` values are hashed to a 64-bit key (polynomial over the values seeded by the
  band number, then ``fmix64``); a bucket is the documents sharing a key in a band (see `LSHIndex`). A key
  collision can only add a candidate, and every candidate is verified with the exact Jaccard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import regex

DEFAULT_THRESHOLD = 0.5
DEFAULT_NUM_PERM = 128
DEFAULT_LSH_RECALL = 0.99  # of the pairs at exactly the threshold; more similar ones are found more surely
DEFAULT_NGRAM = 5
EMPTY = np.uint32(0xFFFFFFFF)  # signature of a document without shingles (the largest uint32)
# Bumped whenever a shingle hash, permutation or band key would change: saved indexes carry it.
HASH_VERSION = 2

_WORD = regex.compile(r"\w+")
_U64 = np.uint64
_MASK64 = (1 << 64) - 1
_CHAR_BASE = 0x9E3779B97F4A7C15  # odd: powers are units mod 2**64
_WORD_BASE = 0xC2B2AE3D27D4EB4F
_BAND_BASE = 0x165667B19E3779F9
_LENGTH_MIX = 0x27D4EB2F165667C5
_LOW32 = np.uint64(0xFFFFFFFF)
_BLOCK = 2048  # shingles per signature block: (num_perm x block) uint32 stays in L2


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (every input bit affects every output bit); wraps mod 2**64."""
    h = h ^ (h >> _U64(33))
    h *= _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    h *= _U64(0xC4CEB9FE1A85EC53)
    h ^= h >> _U64(33)
    return h


class _Powers:
    """B**i mod 2**64 for i < length, grown on demand (word lengths are small, so this stays tiny)."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.table = np.ones(1, np.uint64)

    def upto(self, length: int) -> np.ndarray:
        if length > len(self.table):
            size = max(length, 2 * len(self.table), 64)
            table = np.full(size, self.base, np.uint64)
            table[0] = 1
            self.table = np.cumprod(table, dtype=np.uint64)  # integer cumprod wraps mod 2**64
        return self.table[:length]


_CHAR_POW = _Powers(_CHAR_BASE)


def shingle_batch(texts: Iterable[str], n: int = DEFAULT_NGRAM) -> tuple[np.ndarray, np.ndarray]:
    """The distinct word n-gram hashes of many texts at once, as CSR: ``values[offsets[i]:offsets[i+1]]`` are
    text i's sorted, distinct uint64 shingle hashes. One vectorized pass over the batch, because per-text numpy
    calls would cost more than the hashing itself for paragraph-sized documents."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    words: list[str] = []
    counts: list[int] = []
    for text in texts:
        found = _WORD.findall(text.lower())
        words.extend(found)
        counts.append(len(found))
    n_docs = len(counts)
    if not words:
        return np.zeros(0, np.uint64), np.zeros(n_docs + 1, np.int64)
    word_hash = _word_hashes(words)
    count = np.asarray(counts, np.int64)
    first_word = np.cumsum(count) - count
    per_doc = np.where(count >= n, count - n + 1, np.minimum(count, 1))  # shingles per document
    width = np.minimum(count, n)  # words per shingle
    total = int(per_doc.sum())
    doc_of = np.repeat(np.arange(n_docs), per_doc)
    shingle_first = np.cumsum(per_doc) - per_doc
    start = first_word[doc_of] + (np.arange(total) - shingle_first[doc_of])
    m = width[doc_of]
    acc = np.zeros(total, np.uint64)
    factor = np.uint64(1)
    for i in range(n):  # over the n-gram's word positions, vectorized over every shingle of the batch
        inside = i < m
        acc += np.where(inside, word_hash[np.minimum(start + i, len(words) - 1)] * factor, _U64(0))
        factor = np.uint64((int(factor) * _WORD_BASE) & _MASK64)
    hashes = _fmix64(acc + m.astype(np.uint64))
    # distinct per document: sort by (document, hash), drop repeats
    order = np.lexsort((hashes, doc_of))
    hashes, doc_of = hashes[order], doc_of[order]
    keep = np.ones(total, bool)
    keep[1:] = (hashes[1:] != hashes[:-1]) | (doc_of[1:] != doc_of[:-1])
    values = hashes[keep]
    offsets = np.zeros(n_docs + 1, np.int64)
    np.cumsum(np.bincount(doc_of[keep], minlength=n_docs), out=offsets[1:])
    return values, offsets


def _word_hashes(words: list[str]) -> np.ndarray:
    """fmix64(poly(code points) + length * C) for every word, from one UTF-32 buffer of the space-joined words
    (``\\w`` never matches a space, so spaces delimit words exactly)."""
    joined = " ".join(words)
    cps = np.frombuffer(joined.encode("utf-32-le"), dtype="<u4").astype(np.uint64)
    spaces = np.flatnonzero(cps == 32)
    starts = np.concatenate(([0], spaces + 1))
    ends = np.concatenate((spaces, [len(cps)]))
    lengths = ends - starts
    # offset of each code point inside its word: position minus the start of the word it belongs to
    word_of = np.zeros(len(cps), np.int64)
    word_of[spaces] = 1
    np.cumsum(word_of, out=word_of)
    inner = np.arange(len(cps)) - starts[word_of]
    cps[spaces] = 0
    terms = cps * _CHAR_POW.upto(int(lengths.max()) + 1)[inner]
    poly = np.add.reduceat(terms, starts)  # a word is never empty, so every segment is non-empty
    return _fmix64(poly + lengths.astype(np.uint64) * _U64(_LENGTH_MIX))


def shingles(text: str, n: int = DEFAULT_NGRAM) -> np.ndarray:
    """Sorted distinct uint64 hashes of the word n-grams of ``text`` (see the module docstring)."""
    values, _ = shingle_batch([text], n)
    return values


def _seeded(seed: int, name: str) -> int:
    digest = hashlib.blake2b(f"gpt2cli-minhash/{seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class MinHasher:
    """MinHash signatures of shingle-hash sets: ``num_perm`` hashes ``(u(x) + k v(x)) mod 2**32`` (see the module
    docstring), a uint32 minimum each. Same ``num_perm`` and ``seed`` give the same signatures on any machine."""

    def __init__(self, num_perm: int = DEFAULT_NUM_PERM, seed: int = 1) -> None:
        if num_perm < 1:
            raise ValueError(f"num_perm must be >= 1, got {num_perm}")
        self.num_perm = num_perm
        self.seed = seed
        self.key = np.uint64(_seeded(seed, "key"))

    def _uv(self, shingle_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mixed = _fmix64(np.asarray(shingle_hashes, np.uint64) ^ self.key)
        return (mixed & _LOW32).astype(np.uint32), ((mixed >> _U64(32)) | _U64(1)).astype(np.uint32)

    def hash_values(self, shingle_hashes: np.ndarray) -> np.ndarray:
        """(len, num_perm) uint32: every permutation's value of every shingle, computed plainly (for tests)."""
        u, v = self._uv(shingle_hashes)
        k = np.arange(self.num_perm, dtype=np.uint64)
        return ((u.astype(np.uint64)[:, None] + k[None, :] * v.astype(np.uint64)[:, None]) & _LOW32).astype(np.uint32)

    def signature(self, shingle_hashes: np.ndarray) -> np.ndarray:
        """The (num_perm,) uint32 signature of one shingle set."""
        return self.signatures([shingle_hashes])[0]

    def signatures(self, shingle_arrays: Sequence[np.ndarray]) -> np.ndarray:
        """(len(shingle_arrays), num_perm) uint32 signatures; duplicates inside an array do not matter."""
        lengths = np.fromiter((len(s) for s in shingle_arrays), np.int64, len(shingle_arrays))
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.concatenate([np.asarray(s, np.uint64) for s in shingle_arrays]) if len(lengths) else []
        return self.signatures_csr(np.asarray(values, np.uint64), offsets)

    def signatures_csr(self, values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Signatures of documents given as CSR (``values[offsets[i]:offsets[i+1]]`` is document i's shingles),
        the layout `shingle_batch` returns; blocks of shingles span document boundaries so small documents
        still make large numpy operations."""
        n_docs = len(offsets) - 1
        k = self.num_perm
        out = np.full((n_docs, k), EMPTY, np.uint32)
        total = len(values)
        if total == 0:
            return out
        u, v = self._uv(values)
        doc_of = np.repeat(np.arange(n_docs), np.diff(offsets))
        grid = np.empty((k, min(_BLOCK, total)), np.uint32)
        for lo in range(0, total, _BLOCK):
            hi = min(lo + _BLOCK, total)
            g = grid[:, : hi - lo]
            g[0] = u[lo:hi]
            step = v[lo:hi].copy()  # m * v mod 2**32 for the rows filled so far, m
            filled = 1
            while filled < k:  # rows [filled, 2 * filled) = rows [0, filled) + filled * v, wrapping
                m = min(filled, k - filled)
                np.add(g[:m], step, out=g[filled : filled + m])
                filled += m
                step += step
            docs = doc_of[lo:hi]
            starts = np.flatnonzero(np.concatenate(([True], docs[1:] != docs[:-1])))
            mins = np.minimum.reduceat(g, starts, axis=1).T
            ids = docs[starts]
            out[ids] = np.minimum(out[ids], mins)
        return out


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The MinHash estimate: the fraction of permutations whose minima agree."""
    return float(np.mean(np.asarray(sig_a) == np.asarray(sig_b)))


def jaccard(a_shingles: np.ndarray, b_shingles: np.ndarray) -> float:
    """Exact Jaccard similarity of two distinct-hash arrays (as `shingles` returns); 0.0 when both are empty,
    since documents without words are never near-duplicates of anything."""
    a, b = np.asarray(a_shingles), np.asarray(b_shingles)
    if a.size == 0 and b.size == 0:
        return 0.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def candidate_probability(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """The chance that two documents of this Jaccard share a band: the LSH S-curve ``1 - (1 - s**r)**b``."""
    return 1.0 - (1.0 - np.asarray(similarity, float) ** rows) ** bands


def lsh_params(threshold: float, num_perm: int, recall: float = DEFAULT_LSH_RECALL) -> tuple[int, int]:
    """Bands and rows (b * r <= num_perm) that make a pair at exactly ``threshold`` a candidate with probability
    at least ``recall`` (and a more similar pair more surely), with the fewest candidates below it (the least
    S-curve area under the threshold). Candidates are verified by their true Jaccard, so one below the
    threshold costs a check while a missed pair is a duplicate left in the corpus: hence recall first, rather
    than the usual equal weighting of both errors (25 x 5 at 0.5 and 128, which finds 55% of the pairs at 0.5
    and 72% at 0.55). When no split reaches ``recall`` (few permutations), the one that comes closest."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if not 0.0 < recall < 1.0:
        raise ValueError(f"recall must be in (0, 1), got {recall}")
    pairs = [(b, r) for r in range(1, num_perm + 1) for b in range(1, num_perm // r + 1)]
    bands = np.array([b for b, _ in pairs], float)[:, None]
    rows = np.array([r for _, r in pairs], float)[:, None]
    at_threshold = candidate_probability(threshold, bands, rows)[:, 0]
    below = np.linspace(0.0, threshold, 1001)[None, :]
    false_candidates = candidate_probability(below, bands, rows).mean(axis=1)
    enough = at_threshold >= recall
    # the first minimum: deterministic
    best = np.argmin(np.where(enough, false_candidates, np.inf)) if enough.any() else np.argmax(at_threshold)
    return pairs[int(best)]


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n_docs, bands) uint64 keys: band i's ``rows`` signature values hashed, seeded by i."""
    sigs = np.atleast_2d(np.asarray(signatures))
    if sigs.shape[1] < bands * rows:
        raise ValueError(f"signatures have {sigs.shape[1]} values, bands x rows needs {bands * rows}")
    values = sigs[:, : bands * rows].astype(np.uint64).reshape(len(sigs), bands, rows)
    h = np.broadcast_to(_fmix64(np.arange(1, bands + 1, dtype=np.uint64) * _U64(_LENGTH_MIX)), (len(sigs), bands))
    h = h.copy()
    for j in range(rows):  # over the rows of a band, vectorized over documents and bands
        h *= _U64(_BAND_BASE)
        h += values[:, :, j]
    return _fmix64(h)


class LSHIndex:
    """Banded LSH over MinHash signatures. A bucket is the set of documents with one band key; the buckets are
    kept as per-band sorted arrays of keys (``argsort`` along the document axis, all bands at once) rather
    than dicts: a CPython dict insert per (document, band) costs ~200 ns, which at 25 bands is more than
    computing the signature. Lookups are ``searchsorted``; pairs come from runs of equal keys. Documents can be
    added in batches at any time (the next query or pair listing sees all of them), and the index saves to
    ``.npz`` (ids and band keys, no pickle) so a later run can dedupe new documents against an old corpus
    without recomputing it."""

    def __init__(self, bands: int, rows: int) -> None:
        if bands < 1 or rows < 1:
            raise ValueError(f"bands and rows must be >= 1, got {bands}, {rows}")
        self.bands, self.rows = bands, rows
        self._ids = np.zeros(0, np.int64)
        self._keys = np.zeros((0, bands), np.uint64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._seen: set[int] = set()
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (keys, ids), each (bands, n), sorted per band

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, doc_ids: Sequence[int] | np.ndarray, signatures: np.ndarray) -> None:
        """Index documents by their signatures; ids must be new to the index and in [0, 2**31)."""
        ids = np.asarray(doc_ids, np.int64).reshape(-1)
        keys = band_hashes(signatures, self.bands, self.rows) if len(ids) else np.zeros((0, self.bands), np.uint64)
        if len(keys) != len(ids):
            raise ValueError(f"{len(ids)} ids for {len(keys)} signatures")
        self._add_keys(ids, keys)

    def _add_keys(self, ids: np.ndarray, keys: np.ndarray) -> None:
        if len(ids) and (ids.min() < 0 or ids.max() >= 1 << 31):
            raise ValueError("document ids must be in [0, 2**31)")
        id_list = ids.tolist()
        if len(set(id_list)) != len(id_list) or not self._seen.isdisjoint(id_list):
            raise ValueError("document ids must be unique within the index")
        self._seen.update(id_list)
        self._pending.append((ids, keys))
        self._sorted = None

    def _flush(self) -> tuple[np.ndarray, np.ndarray]:
        if self._pending:
            self._ids = np.concatenate([self._ids, *(i for i, _ in self._pending)])
            self._keys = np.concatenate([self._keys, *(k for _, k in self._pending)])
            self._pending = []
        if self._sorted is None:
            by_band = np.ascontiguousarray(self._keys.T)
            order = np.argsort(by_band, axis=1)  # each band on its own; order inside a bucket does not matter
            self._sorted = np.take_along_axis(by_band, order, axis=1), self._ids[order]
        return self._sorted

    def candidates(self, signature: np.ndarray) -> set[int]:
        """Ids of indexed documents sharing at least one band with ``signature``."""
        keys = band_hashes(np.asarray(signature).reshape(1, -1), self.bands, self.rows)[0]
        sorted_keys, sorted_ids = self._flush()
        found: set[int] = set()
        for band in range(self.bands):
            row = sorted_keys[band]
            lo, hi = np.searchsorted(row, keys[band], "left"), np.searchsorted(row, keys[band], "right")
            found.update(sorted_ids[band, lo:hi].tolist())
        return found

    def candidate_pairs(self) -> Iterator[tuple[int, int]]:
        """Every pair (i, j), i < j, of indexed documents sharing a band bucket, each once, in sorted order."""
        sorted_keys, sorted_ids = self._flush()
        n = sorted_keys.shape[1]
        if n < 2:
            return
        keys, ids = sorted_keys.ravel(), sorted_ids.ravel()  # band after band
        new_run = np.ones(len(keys), bool)
        new_run[1:] = keys[1:] != keys[:-1]
        new_run[::n] = True  # a bucket never spans two bands
        starts = np.flatnonzero(new_run)
        lengths = np.diff(np.append(starts, len(keys)))
        multi = lengths >= 2
        starts, lengths = starts[multi], lengths[multi]
        # element i of a run of length L pairs with the L - 1 - i after it
        offset = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        position = np.repeat(starts, lengths) + offset
        partners = np.repeat(lengths, lengths) - offset - 1
        left = np.repeat(position, partners)
        right = left + 1 + (np.arange(len(left)) - np.repeat(np.cumsum(partners) - partners, partners))
        a, b = ids[left], ids[right]
        codes = np.unique((np.minimum(a, b) << 32) | np.maximum(a, b))
        for code in codes.tolist():
            yield code >> 32, code & 0xFFFFFFFF

    def save(self, path: str | Path) -> None:
        """Write ids and band keys to ``path`` (.npz), with the hash version and band shape."""
        self._flush()
        ids, keys = self._ids, self._keys
        meta = json.dumps({"hash_version": HASH_VERSION, "bands": self.bands, "rows": self.rows})
        with open(path, "wb") as f:
            np.savez(f, ids=ids, keys=keys, meta=np.array(meta))

    @classmethod
    def load(cls, path: str | Path) -> LSHIndex:
        """An index saved by `save`; refuses files written with other hash definitions."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("hash_version") != HASH_VERSION:
                raise ValueError(f"{path}: LSH index hash version {meta.get('hash_version')}, expected {HASH_VERSION}")
            index = cls(int(meta["bands"]), int(meta["rows"]))
            index._add_keys(data["ids"].astype(np.int64), data["keys"].astype(np.uint64))
        return index


class UnionFind:
    """Disjoint sets over 0..n-1 (path halving, union by size): duplicate pairs to transitive clusters."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, i: int, j: int) -> int:
        ri, rj = self.find(i), self.find(j)
        if ri == rj:
            return ri
        if self.size[ri] < self.size[rj]:
            ri, rj = rj, ri
        self.parent[rj] = ri
        self.size[ri] += self.size[rj]
        return ri

    def groups(self, min_size: int = 1) -> list[list[int]]:
        """Sorted members of every set with at least ``min_size`` members, ordered by smallest member."""
        members: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            members.setdefault(self.find(i), []).append(i)
        return [m for m in members.values() if len(m) >= min_size]


def near_duplicate_clusters(
    shingle_arrays: Sequence[np.ndarray],
    threshold: float = DEFAULT_THRESHOLD,
    num_perm: int = DEFAULT_NUM_PERM,
    seed: int = 1,
    params: tuple[int, int] | None = None,
) -> list[list[int]]:
    """Clusters (each sorted, two or more documents, ordered by first member) of documents linked by verified
    pairs with exact Jaccard >= threshold: LSH proposes candidates, `jaccard` decides, union-find closes them
    transitively. Documents without shingles are never clustered."""
    bands, rows = params or lsh_params(threshold, num_perm)
    sigs = MinHasher(num_perm, seed).signatures(shingle_arrays)
    nonempty = np.flatnonzero([len(s) > 0 for s in shingle_arrays]) if len(shingle_arrays) else np.zeros(0, int)
    index = LSHIndex(bands, rows)
    index.add(nonempty, sigs[nonempty])
    groups = UnionFind(len(shingle_arrays))
    for i, j in index.candidate_pairs():
        if jaccard(shingle_arrays[i], shingle_arrays[j]) >= threshold:
            groups.union(i, j)
    return groups.groups(min_size=2)


def choose_keepers(
    clusters: Iterable[Sequence[int]],
    scores: Sequence[float | None] | Mapping[int, float | None],
    order: Sequence[int] | Mapping[int, int] | None = None,
) -> set[int]:
    """One document to keep per cluster: the highest score (Reddit karma; None counts lowest), then the
    earliest (smallest ``order``, e.g. crawl position; the document id when ``order`` is None), then the
    smallest id, so reruns keep the same one. Documents outside every cluster are not in the result."""

    def rank(i: int) -> tuple[int, float, int, int]:  # smallest wins
        score = scores[i]
        known = score is not None
        return (0 if known else 1, -float(score) if known else 0.0, i if order is None else order[i], i)

    return {min(cluster, key=rank) for cluster in clusters if len(cluster)}
